// The JIT's frames: the entry stub, local calls and the out-of-line paths, where each changes the
// native stack, and what the code registry and the unwinder are told about them.
//
// One compilation is three registrations (and one block's worth of FDEs in the unwinder):
//
//   [entry stub ][main][F1][F2]...[fault stubs][exit path]
//    bpf_jit_entry_<tag>_<name>   (.jitStub)   push rbp rbx r12 r13 r14 r15; call main; pop...; ret
//    bpf_prog_<tag>_<name>        (.bpfProgram) main; subprograms as symbols bpf_prog_<subtag>_F
//    bpf_jit_fault_<tag>_<name>   (.jitStub)   per-instruction fault stubs; bpf_jit_exit_... the
//                                              shared path that records the fault and returns
//
// Frames, as the unwinder sees them:
//
//   entry stub   CFA = rsp + 8 .. 56 as it pushes; rbp at CFA-16, rbx -24, r12 -32, r13 -40, r14 -48,
//                r15 -56; the host's callee-saved registers are recovered from there.
//   function f   called with `n` registers pushed before its return address (the caller's r6-r9
//                that f writes, padded to an odd count): CFA = rsp + 8 + 8n, return address at
//                CFA - 8 - 8n, saved register i at CFA - 8(i+1). The callee owns those pushes, so at
//                the call instruction's last byte (where return addresses look up) the caller's
//                CFA is back at its own level; everywhere else the pushes count as the caller's.
//   fault stubs  their function's frame.
//   exit path    the entry stub's frame, found through the rsp the entry stub left in the run
//                block (CFA = [r12 + entryRsp] + 56): the eBPF frames below it are being dropped.
//
// r10 (rbp) in eBPF frames is the eBPF frame pointer, not a host value, and is not described.

import ExecMem

/// Emission offsets where the native stack changes, filled in as the compiler emits.
struct JITLayout {
    /// After each push of the entry stub's callee-saved registers.
    var entryPushes: [Int] = []
    /// Main's pushes when main is also a local-call target: after `sub rsp, 8`, then after each push.
    var entryMainPushes: [Int] = []
    var entryCallEnd = 0
    /// After `add rsp` (main's pushes dropped), when there were any.
    var entryDrop = 0
    var entryPops: [Int] = []
    var entryEnd = 0
    /// Where each function's code (its first budget pad, if any) begins.
    var functionStarts: [Int] = []
    var calls: [LocalCall] = []
    var bodyEnd = 0
    var coldStubs: [(start: Int, function: Int)] = []
    var exitStart = 0
    var end = 0

    struct LocalCall {
        var function: Int
        var pushes: [Int] = []
        var callEnd = 0
        var pops: [Int] = []
    }
}

extension Compiler {
    // MARK: - Entry, local calls, exits

    /// `uint64_t entry(uint64_t r1, uint64_t r2, uint64_t *block)`.
    mutating func entryStub() {
        for r in Self.entrySaved { e.push(r); layout.entryPushes.append(e.count) }  // rsp = 8 mod 16 now
        e.mov(block, .rdx)
        // Main called locally somewhere: enter it as a local call does, with its pushes (plus 8 for
        // alignment), so its frame has one shape.
        let mainSaved = mainIsCalled ? savedRegisters(forCallTo: 0) : []
        if !mainSaved.isEmpty {
            e.aluImm(5, .rsp, 8, wide: true); layout.entryMainPushes.append(e.count)
            for r in mainSaved { e.push(r); layout.entryMainPushes.append(e.count) }
        }
        e.store(.rsp, base: block, disp: RunContext.Field.entryRsp.offset, size: 8)
        e.load(.rbp, base: block, disp: RunContext.Field.stackHi.offset, size: 8)
        e.load(BPFJIT.budget, base: block, disp: RunContext.Field.budget.offset, size: 8)
        for r in [X86Reg.rax, .rdx, .rcx, .r8, .rbx, .r13, .r14, .r15] { e.alu(0x31, r, r, wide: false) }  // r0, r3-r9 = 0
        e.call(labels[0])  // main's body runs with rsp = 0 mod 16
        layout.entryCallEnd = e.count
        e.bind(returnPath)
        if !mainSaved.isEmpty {
            e.aluImm(0, .rsp, Int32(8 + 8 * mainSaved.count), wide: true)
            layout.entryDrop = e.count
        }
        for r in Self.entrySaved.reversed() { e.pop(r); layout.entryPops.append(e.count) }
        e.ret()
        layout.entryEnd = e.count
    }

    static let entrySaved: [X86Reg] = [.rbp, .rbx, .r12, .r13, .r14, .r15]

    /// Whether some local call targets instruction 0.
    var mainIsCalled: Bool { code.contains { $0.operation == .callLocal && $0.target == 0 } }

    /// What a local call to `target` pushes before its return address: the caller's r6-r9 that the
    /// callee writes (deeper calls save their own), padded with r11 to an odd count so the callee
    /// runs with rsp 16-byte aligned. The same for every call of one function, so its frame has one
    /// shape.
    func savedRegisters(forCallTo target: Int) -> [X86Reg] {
        let written = writes[target] ?? 0x3FF
        var saved: [X86Reg] = [6, 7, 8, 9].filter { written & (1 << $0) != 0 }.map { BPFJIT.map[$0] }
        if saved.count % 2 == 0 { saved.append(.r11) }
        return saved
    }

    mutating func callLocal(_ d: BPFDecoded, at index: Int) {
        // One frame deeper: rbp - 512 must stay at or above the floor; then pay for the callee.
        e.lea(.r11, base: .rbp, disp: Int32(-BPF.stackSize))
        e.aluMemory(0x3B, .r11, base: block, disp: RunContext.Field.callFloor.offset)
        e.jcc(.below, coldLabel(.fault(.callDepth, index: index, restore: .none)))
        if options.budget {
            e.aluImm(5, BPFJIT.budget, Int32(truncatingIfNeeded: d.charge), wide: true)
            e.jcc(.below, coldLabel(.fault(.budget, index: index, restore: .none)))
        }
        // r10 comes back by arithmetic.
        let saved = savedRegisters(forCallTo: Int(d.target))
        var site = JITLayout.LocalCall(function: functionIndex(of: index))
        for r in saved { e.push(r); site.pushes.append(e.count) }
        e.mov(.rbp, .r11)
        e.call(labels[Int(d.target)])
        site.callEnd = e.count
        e.lea(.rbp, base: .rbp, disp: Int32(BPF.stackSize))
        for r in saved.reversed() { e.pop(r); site.pops.append(e.count) }
        layout.calls.append(site)
    }

    func functionIndex(of instruction: Int) -> Int {
        let starts = program.verified.functions
        var lo = 0, hi = starts.count
        while lo < hi { let m = (lo + hi) / 2; if starts[m] <= instruction { lo = m + 1 } else { hi = m } }
        return max(lo - 1, 0)
    }

    mutating func outOfLine() {
        for c in cold {
            e.bind(c.label)
            switch c.kind {
            case let .fault(f, index, restore):
                layout.coldStubs.append((e.count, functionIndex(of: index)))
                switch restore {
                case .none: break
                case .addMemLo: e.aluMemory(0x03, .r11, base: block, disp: RunContext.Field.memLo.offset)
                case .addR10: e.alu(0x01, .r11, .r10, wide: true)
                case let .lea(r, disp): e.lea(.r11, base: r, disp: disp)
                }
                e.movImm32(.r10, Int32(index << 8 | Int(f.rawValue)))
                e.jmp(faultCommon)
            case let .helperFault(index):
                layout.coldStubs.append((e.count, functionIndex(of: index)))
                e.movImm32(.r10, Int32(index))
                e.jmp(helperFaultCommon)
            }
        }
        // r10 = index << 8 | fault, r11 = address: record them and leave.
        layout.exitStart = e.count
        e.bind(faultCommon)
        e.store(.r11, base: block, disp: RunContext.Field.faultAddress.offset, size: 8)
        e.store(.rbp, base: block, disp: RunContext.Field.faultFrame.offset, size: 8)
        e.mov(.r11, .r10)
        e.aluImm(4, .r11, 0xFF, wide: true)
        e.store(.r11, base: block, disp: RunContext.Field.fault.offset, size: 8)
        e.shift(5, .r10, count: 8, wide: true)
        e.bind(helperFaultCommon)
        e.store(.r10, base: block, disp: RunContext.Field.faultIndex.offset, size: 8)
        let leave = e.newLabel()
        e.jmp(leave)
        // A helper asked to unwind: return 0 at once.
        e.bind(unwind)
        e.storeImm64(base: block, disp: RunContext.Field.unwound.offset, 1)
        // Drop every eBPF frame and return 0; the block says what happened.
        e.bind(leave)
        e.load(.rsp, base: block, disp: RunContext.Field.entryRsp.offset, size: 8)
        e.alu(0x31, .rax, .rax, wide: false)
        e.jmp(returnPath)
    }

    // MARK: - What the registry is told

    /// The registrations of this compilation laid out at `base` (`position` maps emission offsets to
    /// final ones): the entry stub, the program with its subprograms, the out-of-line paths.
    func registrations(at base: UInt, size: Int, position: (Int) -> Int) -> [CodeRegistration] {
        let l = layout, names = BPFNames(program)
        let starts = l.functionStarts.map(position)
        let bodyStart = starts[0], bodyEnd = position(l.bodyEnd), exitStart = position(l.exitStart)
        // Frame words (pushes before the return address) of each function.
        let words = program.verified.functions.enumerated().map { f, start in
            f == 0 ? (mainIsCalled ? savedRegisters(forCallTo: 0) : []) : savedRegisters(forCallTo: start)
        }

        // The entry stub.
        var p = CFIProgram()
        for (k, at) in l.entryPushes.enumerated() {
            p.advance(to: position(at))
            p.cfaOffset(16 + 8 * k)
            p.saved(Self.dwarf(Self.entrySaved[k]), at: 16 + 8 * k)
        }
        let mainWords = words[0].count
        if mainWords > 0 {
            for (k, at) in l.entryMainPushes.enumerated() { p.advance(to: position(at)); p.cfaOffset(64 + 8 * k) }
            p.advance(to: position(l.entryCallEnd) - 1); p.cfaOffset(64)  // main owns its pushes
            p.advance(to: position(l.entryCallEnd)); p.cfaOffset(64 + 8 * mainWords)
            p.advance(to: position(l.entryDrop)); p.cfaOffset(56)
        }
        for (k, at) in l.entryPops.enumerated() {
            p.advance(to: position(at))
            p.cfaOffset(48 - 8 * k)
            p.restored(Self.dwarf(Self.entrySaved[Self.entrySaved.count - 1 - k]))
        }
        let entryEnd = position(l.entryEnd)

        // The functions.
        var frames: [CodeFrame] = [], symbols: [CodeSymbol] = []
        for f in starts.indices {
            let from = starts[f], to = f + 1 < starts.count ? starts[f + 1] : bodyEnd
            var p = Self.functionRules(words[f])
            let frameBase = 8 + 8 * words[f].count
            for site in l.calls where site.function == f {
                let m = site.pushes.count
                for (j, at) in site.pushes.enumerated() { p.advance(to: position(at) - from); p.cfaOffset(frameBase + 8 * (j + 1)) }
                p.advance(to: position(site.callEnd) - 1 - from); p.cfaOffset(frameBase)
                p.advance(to: position(site.callEnd) - from); p.cfaOffset(frameBase + 8 * m)
                for (j, at) in site.pops.enumerated() { p.advance(to: position(at) - from); p.cfaOffset(frameBase + 8 * (m - j - 1)) }
            }
            frames.append(CodeFrame(offset: from - bodyStart, length: to - from, instructions: p.bytes))
            symbols.append(CodeSymbol(name: f == 0 ? names.program : names.subprogram(f), address: base + UInt(from), size: to - from))
        }

        // Fault stubs, in runs of one function, then the exit path.
        var coldFrames: [CodeFrame] = []
        var k = 0
        while k < l.coldStubs.count {
            let f = l.coldStubs[k].function
            var j = k
            while j < l.coldStubs.count && l.coldStubs[j].function == f { j += 1 }
            let from = position(l.coldStubs[k].start), to = j < l.coldStubs.count ? position(l.coldStubs[j].start) : exitStart
            coldFrames.append(CodeFrame(offset: from - bodyEnd, length: to - from, instructions: Self.functionRules(words[f]).bytes))
            k = j
        }
        var exit = CFIProgram()
        exit.defineCFA(loadedFrom: .r12, offset: Int(RunContext.Field.entryRsp.offset), plus: 56 + (mainWords > 0 ? 8 + 8 * mainWords : 0))
        for (k, r) in Self.entrySaved.enumerated() { exit.saved(Self.dwarf(r), at: 16 + 8 * k) }
        coldFrames.append(CodeFrame(offset: exitStart - bodyEnd, length: size - exitStart, instructions: exit.bytes))
        var coldSymbols = [CodeSymbol(name: names.exit, address: base + UInt(exitStart), size: size - exitStart)]
        if exitStart > bodyEnd { coldSymbols.insert(CodeSymbol(name: names.fault, address: base + UInt(bodyEnd), size: exitStart - bodyEnd), at: 0) }
        // One registration per compilation, its pieces as symbols and frames (offsets from `base`):
        // every sink's cost is per registration, and perf's unwinding tables need the pieces together.
        func shifted(_ list: [CodeFrame], by d: Int) -> [CodeFrame] { list.map { CodeFrame(offset: $0.offset + d, length: $0.length, instructions: $0.instructions) } }
        let all = [CodeFrame(offset: 0, length: entryEnd, instructions: p.bytes)] + shifted(frames, by: bodyStart) + shifted(coldFrames, by: bodyEnd)
        return [CodeRegistration(name: names.program, kind: .bpfProgram, address: base, size: size, owner: "bpf",
                                 symbols: [CodeSymbol(name: names.entry, address: base, size: entryEnd)] + symbols + coldSymbols,
                                 unwind: .frames(all))]
    }

    /// A function's rules with `saved` pushed before its return address (see the file's header).
    static func functionRules(_ saved: [X86Reg]) -> CFIProgram {
        var p = CFIProgram()
        guard !saved.isEmpty else { return p }
        let frame = 8 + 8 * saved.count
        p.cfaOffset(frame)
        p.saved(.returnAddress, at: frame)
        for (i, r) in saved.enumerated() where r != .r11 { p.saved(dwarf(r), at: 8 * (i + 1)) }
        return p
    }

    static func dwarf(_ r: X86Reg) -> CFIProgram.Register {
        switch r {
        case .rax: .rax
        case .rcx: .rcx
        case .rdx: .rdx
        case .rbx: .rbx
        case .rsp: .rsp
        case .rbp: .rbp
        case .rsi: .rsi
        case .rdi: .rdi
        case .r8: .r8
        case .r9: .r9
        case .r10: .r10
        case .r11: .r11
        case .r12: .r12
        case .r13: .r13
        case .r14: .r14
        case .r15: .r15
        }
    }
}
