// The x86-64 JIT. Each eBPF function becomes a native function in one piece of code that goes into a
// packed BPF-kind text allocation, written through the allocator's write view (never an rwx page).
//
// Registers (as Linux's JIT, so helper arguments r1-r5 are already where the System V ABI wants them):
//
//   r0 rax  r1 rdi  r2 rsi  r3 rdx  r4 rcx  r5 r8  r6 rbx  r7 r13  r8 r14  r9 r15  r10 rbp
//   r12 = the run context block; r9, r10, r11 = scratch
//
// The eBPF stack is a separate buffer (8 frames of 512 bytes) that rbp walks down on local calls, so
// the native stack holds only return addresses and saved registers, out of the program's reach.
//
//   entry(r1, r2, block): save callee-saved, r12 = block, remember rsp, rbp = stack top, call main
//   fault:                rsp = remembered rsp, r0 = 0, restore and return (the block says why)
//
// Memory accesses are bounds-checked inline against the stack, the context memory and the program's
// map regions, then out of line (a call into the runtime that faults the run); an r10-relative access with a constant offset inside the
// frame needs no check. `JITOptions(boundsChecks: false)` drops the checks for trusted programs.

import ExecMem

public struct JITOptions: Sendable {
    /// Check every memory access (the default). Off only for programs the host trusts.
    public var boundsChecks: Bool
    public init(boundsChecks: Bool = true) { self.boundsChecks = boundsChecks }
}

enum BPFJIT {
    static let map: [X86Reg] = [.rax, .rdi, .rsi, .rdx, .rcx, .r8, .rbx, .r13, .r14, .r15, .rbp]
    static let context = X86Reg.r12

    /// Compiles `program` and installs it in the allocator.
    static func compile(_ program: BPFProgram, allocator: ExecMemAllocator, options: JITOptions) throws(BPFError) -> JITCode {
        let primary = (allocator.primaryBase, allocator.primaryBase + UInt(allocator.primarySize))
        // First pass: call sites decided by what the whole primary range reaches, so the size does not
        // depend on where the code lands.
        var first = Compiler(program: program, options: options, base: nil, primary: primary)
        var code = first.compile()
        var allocation: Allocation
        do throws(ExecMemError) { allocation = try allocator.allocate(.bpf, size: code.count, alignment: 16) } catch { throw .allocator(error) }
        for _ in 0..<3 {
            var compiler = Compiler(program: program, options: options, base: allocation.address, primary: primary)
            let final = compiler.compile()
            if final.count == allocation.size { code = final; break }
            // Landed outside the primary range and some calls changed form: size again.
            try? allocator.free(allocation)
            do throws(ExecMemError) { allocation = try allocator.allocate(.bpf, size: final.count, alignment: 16) } catch { throw .allocator(error) }
            code = final
        }
        guard code.count == allocation.size else {
            try? allocator.free(allocation)
            throw .allocator(.badSize(size: code.count, kind: .bpf, reason: "JIT code size did not settle"))
        }
        do throws(ExecMemError) {
            try allocator.write(code, to: allocation)
        } catch {
            try? allocator.free(allocation)
            throw .allocator(error)
        }
        allocator.makeVisible()
        return JITCode(allocator: allocator, allocation: allocation)
    }
}

/// One compilation: emits the entry stub, every function, the out-of-line stubs, then fixes jumps.
struct Compiler {
    let program: BPFProgram
    let options: JITOptions
    /// Where the code will run, once known; nil in the sizing pass.
    let base: UInt?
    let primary: (UInt, UInt)
    var e = X86Emitter()
    /// Native offset of each eBPF instruction.
    var offsets: [Int]
    var jumps: [(field: Int, target: Int)] = []
    var calls: [(field: Int, function: Int)] = []
    /// Cold paths: (field of the jump to it, fault kind or nil to keep the one a helper set, index).
    var cold: [(field: Int, fault: RunFault?, index: Int)] = []
    var faultStub = 0, unwindStub = 0, slowCheckStub = 0
    var faultJumps: [Int] = [], unwindJumps: [Int] = [], slowCheckCalls: [Int] = []

    init(program: BPFProgram, options: JITOptions, base: UInt?, primary: (UInt, UInt)) {
        self.program = program; self.options = options; self.base = base; self.primary = primary
        offsets = [Int](repeating: 0, count: program.instructions.count + 1)
    }

    static func reg(_ r: UInt8) -> X86Reg { BPFJIT.map[Int(r)] }

    mutating func compile() -> [UInt8] {
        entryStub()
        let insns = program.instructions
        var i = 0
        while i < insns.count {
            offsets[i] = e.count
            if program.functions.contains(i) { e.aluImm(5, .rsp, 8, wide: true) }  // sub rsp, 8: align for calls
            i += translate(insns[i], at: i, next: i + 1 < insns.count ? insns[i + 1] : nil)
        }
        offsets[insns.count] = e.count
        outOfLineStubs()
        for j in jumps { e.patch(j.field, to: offsets[j.target]) }
        for c in calls { e.patch(c.field, to: offsets[c.function]) }
        for f in faultJumps { e.patch(f, to: faultStub) }
        for f in unwindJumps { e.patch(f, to: unwindStub) }
        for f in slowCheckCalls { e.patch(f, to: slowCheckStub) }
        return e.bytes
    }

    // MARK: - Entry and exits

    /// `uint64_t entry(uint64_t r1, uint64_t r2, uint64_t *block)`.
    mutating func entryStub() {
        for r in [X86Reg.rbp, .rbx, .r12, .r13, .r14, .r15] { e.push(r) }
        e.aluImm(5, .rsp, 8, wide: true)  // 6 pushes + return address: align to 16
        e.mov(BPFJIT.context, .rdx)
        e.store(.rsp, base: BPFJIT.context, disp: RunContext.Field.entryRsp.offset, size: 8)
        e.load(.rbp, base: BPFJIT.context, disp: RunContext.Field.stackHi.offset, size: 8)
        for r in [X86Reg.rax, .rdx, .rcx, .r8, .rbx, .r13, .r14, .r15] { e.alu(0x31, r, r, wide: false) }  // r0, r3-r9 = 0
        calls.append((e.call32(), 0))
        returnPath()
    }

    /// Restores the host's registers and returns rax.
    mutating func returnPath() {
        e.aluImm(0, .rsp, 8, wide: true)
        for r in [X86Reg.r15, .r14, .r13, .r12, .rbx, .rbp] { e.pop(r) }
        e.ret()
    }

    mutating func outOfLineStubs() {
        // Cold paths record the fault and join the fault stub.
        for c in cold {
            e.patch(c.field, to: e.count)
            if let f = c.fault { e.storeImm64(base: BPFJIT.context, disp: RunContext.Field.fault.offset, Int32(f.rawValue)) }
            e.storeImm64(base: BPFJIT.context, disp: RunContext.Field.faultIndex.offset, Int32(c.index))
            if c.fault == .misalignedAtomic { e.store(.r11, base: BPFJIT.context, disp: RunContext.Field.faultAddress.offset, size: 8) }
            faultJumps.append(e.jmp32())
        }
        // A helper asked to unwind: return 0 at once.
        unwindStub = e.count
        e.storeImm64(base: BPFJIT.context, disp: RunContext.Field.unwound.offset, 1)
        // The fault stub: drop every eBPF frame and return 0; the block says what happened.
        faultStub = e.count
        e.load(.rsp, base: BPFJIT.context, disp: RunContext.Field.entryRsp.offset, size: 8)
        e.alu(0x31, .rax, .rax, wide: false)
        returnPath()
        // Slow bounds check: r11 = address, r10 = index << 8 | size << 1 | write. Saves every
        // caller-saved register, asks the runtime, faults or returns.
        slowCheckStub = e.count
        let saved: [X86Reg] = [.rax, .rcx, .rdx, .rsi, .rdi, .r8, .r9, .r10, .r11]
        for r in saved { e.push(r) }  // entry rsp = 8 mod 16, + 72 = 0 mod 16
        e.mov(.rdi, BPFJIT.context)
        e.mov(.rsi, .r11)
        e.mov(.rdx, .r10)
        e.movImm(.rax, UInt64(UInt(bitPattern: unsafeBitCast(jitSlowCheck, to: UnsafeRawPointer.self))))
        e.callRegister(.rax)
        e.alu(0x85, .rax, .rax, wide: true)
        for r in saved.reversed() { e.pop(r) }  // pop does not change flags
        faultJumps.append(e.jcc32(.equal))
        e.ret()
    }

    // MARK: - Instructions

    /// Emits one instruction; returns how many slots it used.
    mutating func translate(_ i: BPFInstruction, at index: Int, next: BPFInstruction?) -> Int {
        let dst = Self.reg(i.dst), src = Self.reg(i.src)
        let fromRegister = i.opcode & BPF.X != 0
        let op = i.opcode & 0xF0
        switch i.instructionClass {
        case BPF.ALU, BPF.ALU64:
            alu(i, dst: dst, src: src, op: op, fromRegister: fromRegister, wide: i.instructionClass == BPF.ALU64)
        case BPF.JMP, BPF.JMP32:
            jump(i, at: index, dst: dst, src: src, op: op, fromRegister: fromRegister)
        case BPF.LD:
            e.movImm(dst, UInt64(UInt32(bitPattern: i.imm)) | UInt64(UInt32(bitPattern: next!.imm)) << 32)
            offsets[index + 1] = e.count
            return 2
        case BPF.LDX:
            let size = BPF.sizeBytes(i.opcode)
            let (base, disp) = address(i.src, i.offset, size: size, write: false, index: index)
            e.load(dst, base: base, disp: disp, size: size, signed: i.opcode & 0xE0 == BPF.MEMSX)
        case BPF.ST:
            let size = BPF.sizeBytes(i.opcode)
            let (base, disp) = address(i.dst, i.offset, size: size, write: true, index: index)
            e.storeImm(base: base, disp: disp, size: size, i.imm)
        default:
            let size = BPF.sizeBytes(i.opcode)
            let (base, disp) = address(i.dst, i.offset, size: size, write: true, index: index)
            if i.opcode & 0xE0 == BPF.ATOMIC {
                atomic(i, base: base, disp: disp, src: src, size: size, index: index)
            } else {
                e.store(src, base: base, disp: disp, size: size)
            }
        }
        return 1
    }

    /// Where an access goes: `[rbp + off]` for a statically safe stack access, else `[r11]` after
    /// computing and checking the address.
    mutating func address(_ r: UInt8, _ offset: Int16, size: Int, write: Bool, index: Int) -> (X86Reg, Int32) {
        let off = Int(offset)
        if r == 10 && off >= -BPF.stackSize && off + size <= 0 { return (.rbp, Int32(off)) }
        e.lea(.r11, base: Self.reg(r), disp: Int32(off))
        guard options.boundsChecks else { return (.r11, 0) }
        let minus: [Int: RunContext.Field] = [1: .stackHiMinus1, 2: .stackHiMinus2, 4: .stackHiMinus4, 8: .stackHiMinus8]
        let memMinus: [Int: RunContext.Field] = [1: .memHiMinus1, 2: .memHiMinus2, 4: .memHiMinus4, 8: .memHiMinus8]
        // Stack: stackLo <= a <= stackHi - size.
        e.cmpMemory(.r11, base: BPFJIT.context, disp: RunContext.Field.stackLo.offset)
        let notStack = e.jcc32(.below)
        e.cmpMemory(.r11, base: BPFJIT.context, disp: minus[size]!.offset)
        let ok1 = e.jcc32(.belowOrEqual)
        e.patch(notStack, to: e.count)
        // Context memory: memLo <= a <= memHi - size.
        e.cmpMemory(.r11, base: BPFJIT.context, disp: RunContext.Field.memLo.offset)
        let notMemory = e.jcc32(.below)
        e.cmpMemory(.r11, base: BPFJIT.context, disp: memMinus[size]!.offset)
        let ok2 = e.jcc32(.belowOrEqual)
        e.patch(notMemory, to: e.count)
        // The program's map regions (fixed for its life), checked inline too.
        var oks = [ok1, ok2]
        for region in program.regions.prefix(8) where (region.writable || !write) && region.end - region.start >= UInt(size) {
            e.movImm(.r10, UInt64(region.start))
            e.alu(0x39, .r11, .r10, wide: true)
            let below = e.jcc32(.below)
            e.movImm(.r10, UInt64(region.end) - UInt64(size))
            e.alu(0x39, .r11, .r10, wide: true)
            oks.append(e.jcc32(.belowOrEqual))
            e.patch(below, to: e.count)
        }
        // Anything else: ask the runtime, which faults the run if it is not allowed.
        e.movImm32(.r10, Int32(index << 8 | size << 1 | (write ? 1 : 0)))
        slowCheckCalls.append(e.call32())
        for ok in oks { e.patch(ok, to: e.count) }
        return (.r11, 0)
    }

    mutating func alu(_ i: BPFInstruction, dst: X86Reg, src: X86Reg, op: UInt8, fromRegister: Bool, wide: Bool) {
        let groupOne: [UInt8: (UInt8, UInt8)] = [BPF.ADD: (0x01, 0), BPF.SUB: (0x29, 5), BPF.OR: (0x09, 1), BPF.AND: (0x21, 4), BPF.XOR: (0x31, 6)]
        if let (rr, ext) = groupOne[op] {
            if fromRegister { e.alu(rr, dst, src, wide: wide) } else { e.aluImm(ext, dst, i.imm, wide: wide) }
            return
        }
        switch op {
        case BPF.MOV:
            if !fromRegister {
                if wide { e.movImm(dst, UInt64(bitPattern: Int64(i.imm))) } else { e.movImm32(dst, i.imm) }
            } else if i.offset != 0 {
                e.movsx(dst, src, bits: Int(i.offset), wide: wide)
            } else {
                e.mov(dst, src, wide: wide)
            }
        case BPF.MUL:
            if fromRegister { e.imul(dst, src, wide: wide) } else { e.imulImm(dst, i.imm, wide: wide) }
        case BPF.NEG:
            e.group3(3, dst, wide: wide)
        case BPF.LSH, BPF.RSH, BPF.ARSH:
            let ext: UInt8 = op == BPF.LSH ? 4 : op == BPF.RSH ? 5 : 7
            if !fromRegister {
                e.shift(ext, dst, count: UInt8(truncatingIfNeeded: i.imm) & (wide ? 63 : 31), wide: wide)
            } else if dst != .rcx {
                if src != .rcx { e.mov(.r11, .rcx); e.mov(.rcx, src) }
                e.shift(ext, dst, count: nil, wide: wide)
                if src != .rcx { e.mov(.rcx, .r11) }
            } else {
                e.mov(.r11, .rcx)
                if src != .rcx { e.mov(.rcx, src) }
                e.shift(ext, .r11, count: nil, wide: wide)
                e.mov(.rcx, .r11)
            }
        case BPF.DIV, BPF.MOD:
            divide(i, dst: dst, src: src, fromRegister: fromRegister, wide: wide, modulo: op == BPF.MOD)
        case BPF.END:
            let width = i.imm
            if !wide && i.opcode & BPF.X == 0 {  // to little-endian: truncate
                if width == 16 { e.movzx(dst, dst, bits: 16) } else if width == 32 { e.mov(dst, dst, wide: false) }
            } else {
                switch width {
                case 16: e.rol16by8(dst); e.movzx(dst, dst, bits: 16)
                case 32: e.bswap(dst, wide: false)
                default: e.bswap(dst, wide: true)
                }
            }
        default:  // ARSH handled above; nothing else reaches here after the verifier
            break
        }
    }

    /// Division and modulo with RFC 9669's rules for zero and for the minimum divided by -1.
    mutating func divide(_ i: BPFInstruction, dst: X86Reg, src: X86Reg, fromRegister: Bool, wide: Bool, modulo: Bool) {
        let signed = i.offset == 1
        if fromRegister { e.mov(.r11, src, wide: wide) } else if wide { e.movImm(.r11, UInt64(bitPattern: Int64(i.imm))) } else { e.movImm32(.r11, i.imm) }
        e.alu(0x85, .r11, .r11, wide: wide)
        let nonzero = e.jcc32(.notEqual)
        // Divisor 0: quotient 0, remainder the dividend (its low half for 32 bits).
        if modulo { if !wide { e.mov(dst, dst, wide: false) } } else { e.alu(0x31, dst, dst, wide: false) }
        let done1 = e.jmp32()
        e.patch(nonzero, to: e.count)
        var done2: Int? = nil
        if signed {
            e.aluImm(7, .r11, -1, wide: wide)
            let normal = e.jcc32(.notEqual)
            // x / -1 = -x (wrapping), x % -1 = 0: avoids the #DE of MIN / -1.
            if modulo { e.alu(0x31, dst, dst, wide: false) } else { e.group3(3, dst, wide: wide) }
            done2 = e.jmp32()
            e.patch(normal, to: e.count)
        }
        e.mov(.r10, .rax)
        e.mov(.r9, .rdx)
        e.mov(.rax, dst, wide: wide)
        if signed {
            if wide { e.emit(0x48, 0x99) } else { e.emit(0x99) }  // cqo / cdq
            e.group3(7, .r11, wide: wide)
        } else {
            e.alu(0x31, .rdx, .rdx, wide: false)
            e.group3(6, .r11, wide: wide)
        }
        e.mov(.r11, modulo ? .rdx : .rax, wide: wide)
        e.mov(.rax, .r10)
        e.mov(.rdx, .r9)
        e.mov(dst, .r11, wide: wide)
        e.patch(done1, to: e.count)
        if let d = done2 { e.patch(d, to: e.count) }
    }

    mutating func jump(_ i: BPFInstruction, at index: Int, dst: X86Reg, src: X86Reg, op: UInt8, fromRegister: Bool) {
        let narrow = i.instructionClass == BPF.JMP32
        if i.opcode == BPF.JMP | BPF.EXIT {
            e.aluImm(0, .rsp, 8, wide: true)
            e.ret()
            return
        }
        if i.opcode == BPF.JMP | BPF.JA || i.opcode == BPF.JMP32 | BPF.JA {
            let delta = i.opcode == BPF.JMP | BPF.JA ? Int(i.offset) : Int(i.imm)
            jumps.append((e.jmp32(), index + 1 + delta))
            return
        }
        if op == BPF.CALL {
            call(i, at: index, dst: dst)
            return
        }
        if op == BPF.JSET {
            if fromRegister { e.alu(0x85, dst, src, wide: !narrow) } else { e.testImm(dst, i.imm, wide: !narrow) }
        } else if fromRegister {
            e.alu(0x39, dst, src, wide: !narrow)
        } else {
            e.aluImm(7, dst, i.imm, wide: !narrow)
        }
        let conditions: [UInt8: X86Condition] = [
            BPF.JEQ: .equal, BPF.JNE: .notEqual, BPF.JSET: .notEqual, BPF.JGT: .above, BPF.JGE: .aboveOrEqual,
            BPF.JLT: .below, BPF.JLE: .belowOrEqual, BPF.JSGT: .greater, BPF.JSGE: .greaterOrEqual,
            BPF.JSLT: .less, BPF.JSLE: .lessOrEqual,
        ]
        jumps.append((e.jcc32(conditions[op]!), index + 1 + Int(i.offset)))
    }

    mutating func call(_ i: BPFInstruction, at index: Int, dst: X86Reg) {
        if i.opcode == BPF.JMP | BPF.CALL && i.src == BPF.callLocal {
            // One frame deeper: rbp - 512 must stay at or above the floor.
            e.lea(.r11, base: .rbp, disp: Int32(-BPF.stackSize))
            e.cmpMemory(.r11, base: BPFJIT.context, disp: RunContext.Field.callFloor.offset)
            cold.append((e.jcc32(.below), .callDepth, index))
            for r in [X86Reg.rbx, .r13, .r14, .r15] { e.push(r) }
            e.mov(.rbp, .r11)
            calls.append((e.call32(), index + 1 + Int(i.imm)))
            e.lea(.rbp, base: .rbp, disp: Int32(BPF.stackSize))
            for r in [X86Reg.r15, .r14, .r13, .rbx] { e.pop(r) }
            return
        }
        let target: UInt
        var unwinds = false
        if i.opcode == BPF.CALLX {
            e.mov(.r9, dst)  // the helper number, for the dispatcher
            target = UInt(bitPattern: unsafeBitCast(jitCallX, to: UnsafeRawPointer.self))
        } else {
            let h = program.helpers[i.imm]!
            unwinds = h.unwindsOnZero
            if h.swiftIndex >= 0 { e.movImm(.r9, UInt64(h.swiftIndex)) }
            target = h.entryAddress
        }
        callHost(target)
        // A helper (or callx) that faulted the run: record where, and stop.
        e.cmpMemoryImm8(base: BPFJIT.context, disp: RunContext.Field.fault.offset, 0)
        cold.append((e.jcc32(.notEqual), nil, index))
        if i.opcode == BPF.CALLX {
            e.cmpMemoryImm8(base: BPFJIT.context, disp: RunContext.Field.unwound.offset, 0)
            unwindJumps.append(e.jcc32(.notEqual))
        } else if unwinds {
            e.alu(0x85, .rax, .rax, wide: true)
            unwindJumps.append(e.jcc32(.equal))
        }
    }

    /// `call rel32` when the target is in reach from wherever this code can land, else through r11.
    mutating func callHost(_ target: UInt) {
        // In the primary range (or not yet placed) the choice depends only on the range, so both
        // passes agree; elsewhere it depends on the exact site.
        let direct: Bool
        if let base, !isInPrimary(base) {
            direct = Rel32.displacement(from: base + UInt(e.count + 5), to: target) != nil
        } else {
            direct = reachableFromPrimary(target)
        }
        if direct {
            let field = e.call32()
            if let base { e.patch(field, displacement: Rel32.displacement(from: base + UInt(field + 4), to: target)!) }
        } else {
            e.movImm(.r11, UInt64(target))
            e.callRegister(.r11)
        }
    }

    func reachableFromPrimary(_ target: UInt) -> Bool { Rel32.reaches(primary.0, primary.1, target, target + 1) }
    func isInPrimary(_ a: UInt) -> Bool { a >= primary.0 && a < primary.1 }

    mutating func atomic(_ i: BPFInstruction, base: X86Reg, disp: Int32, src: X86Reg, size: Int, index: Int) {
        let wide = size == 8
        // Atomics must be naturally aligned, as in the interpreter.
        if base != .r11 { e.lea(.r11, base: base, disp: disp) }
        e.testImm(.r11, Int32(size - 1), wide: true)
        cold.append((e.jcc32(.notEqual), .misalignedAtomic, index))
        switch i.imm {
        case 0x00: e.memoryOp([0x01], base: .r11, disp: 0, src, wide: wide, lock: true)
        case 0x40: e.memoryOp([0x09], base: .r11, disp: 0, src, wide: wide, lock: true)
        case 0x50: e.memoryOp([0x21], base: .r11, disp: 0, src, wide: wide, lock: true)
        case 0xA0: e.memoryOp([0x31], base: .r11, disp: 0, src, wide: wide, lock: true)
        case 0x01: e.memoryOp([0x0F, 0xC1], base: .r11, disp: 0, src, wide: wide, lock: true)  // xadd: src = old
        case BPF.XCHG: e.memoryOp([0x87], base: .r11, disp: 0, src, wide: wide, lock: false)
        case BPF.CMPXCHG:
            e.memoryOp([0x0F, 0xB1], base: .r11, disp: 0, src, wide: wide, lock: true)
            if !wide { e.mov(.rax, .rax, wide: false) }  // r0 = the old value, zero-extended
        default:
            // Fetching and/or/xor: a compare-exchange loop on rax, keeping r0 in r10.
            let value: X86Reg = src == .rax ? .r10 : src
            e.mov(.r10, .rax)
            e.load(.rax, base: .r11, disp: 0, size: size)
            let retry = e.count
            e.mov(.r9, .rax, wide: wide)
            let rr: UInt8 = [0x41: 0x09, 0x51: 0x21, 0xA1: 0x31][i.imm]!
            e.alu(rr, .r9, value, wide: wide)
            e.memoryOp([0x0F, 0xB1], base: .r11, disp: 0, .r9, wide: wide, lock: true)
            let back = e.jcc32(.notEqual)
            e.patch(back, to: retry)
            e.mov(src, .rax, wide: wide)  // the old value
            if src != .rax { e.mov(.rax, .r10) }
        }
    }
}
