// Instruction probes (Linux's kprobes): a probe at any instruction boundary of a function, in one
// of two forms.
//
// Jump probes (optimized kprobes): the instructions under the first 5 bytes at the probe are
// displaced: copied into an out-of-line slot (probes kind, within rel32 of the function) with
// RIP-relative operands and relative branches re-aimed, short branches widened to rel32. The probe
// becomes `jmp slot` (the rest of the displaced bytes int3). Refused, with the instruction named:
// traps, loop/jrcxz (no rel32 form), 16-bit branches, a call that is not the last displaced
// instruction (its return address would land inside the patch), the flow ending before 5 bytes, a
// jump from anywhere in the function to inside the displaced bytes, and displacing more than one
// instruction in a function with an indirect jump through a register (a jump table whose targets
// the decoder cannot see). Before the bytes change, every other thread is interrupted once (the
// sweep) and one standing between two displaced instructions is moved into the slot.
//
// Trap probes (plain kprobes): a lasting int3 on the probed instruction only; the SIGTRAP handler
// sends the thread to a slot holding that one instruction. Nothing but the first byte changes, so
// no thread can be caught between displaced instructions; a hit costs a signal.
//
// Either slot saves every register and the extended state (XSAVE), calls the handler with the
// registers, restores them (with the handler's changes), runs the displaced instruction(s) and
// jumps back. `.automatic` uses a jump where it is safe and a trap otherwise: when the jump plan is
// refused, or it displaces several instructions while some thread blocks the sweep's signal
// (libdispatch's workers, and threads they start, do).
//
// Each slot is `execmem_probe_<function>+0x<offset>` in the code registry while it exists, with
// call-frame information that unwinds it as the probed function at the probed instruction (see
// ProbeSlot.prologue), so a handler's backtrace reaches the function's callers.

import CExecMemProbeRuntime
import ExecMem
import ExecMemSystem
import Synchronization

public typealias ProbeRegisters = cem_probe_registers

/// A Swift probe handler: the probed address and the registers (writable).
public typealias ProbeHandler = @Sendable (_ address: UInt, _ registers: UnsafeMutablePointer<ProbeRegisters>) -> Void
/// A C probe handler: (context, registers).
public typealias CProbeHandler = @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<ProbeRegisters>?) -> Void

final class ProbeBox: Sendable {
    let handler: ProbeHandler
    let address: UInt
    init(_ handler: @escaping ProbeHandler, _ address: UInt) { self.handler = handler; self.address = address }
}

private let swiftProbe: CProbeHandler = { context, registers in
    let box = Unmanaged<ProbeBox>.fromOpaque(context!).takeUnretainedValue()
    box.handler(box.address, registers!)
}

public struct InstructionProbe: Hashable, Sendable {
    public let id: Int
    public let address: UInt
    /// How many bytes (whole instructions) the probe displaced.
    public let displacedBytes: Int
    /// A trap probe (int3) rather than a jump.
    public let isTrap: Bool
}

/// How a probe is placed.
public enum ProbeMode: Sendable, Equatable {
    /// A jump where that is safe, a trap otherwise (see the file's header).
    case automatic
    /// Always a trap: one instruction displaced, a signal per hit.
    case trap
    /// Always a jump, without checking threads the sweep cannot reach: only for code that no other
    /// thread runs while the probe is placed or removed.
    case jump
}

/// What a probe at an address would displace, decided before anything is written.
public struct ProbePlan: Sendable {
    public struct Displaced: Sendable {
        public var address: UInt
        public var instruction: X86Instruction
        public var bytes: [UInt8]
    }
    public var address: UInt
    public var displaced: [Displaced]
    public var length: Int { displaced.reduce(0) { $0 + $1.instruction.length } }

    /// Decodes `function` and plans a probe at `address`, or says why not: a jump probe (at least
    /// 5 bytes displaced), or with `single` a trap probe (the one instruction).
    public static func make(at address: UInt, function: Range<UInt>, single: Bool = false) throws(ProbeError) -> ProbePlan {
        guard function.contains(address) else {
            throw .notAnInstruction(address: address, reason: "it is outside the function [\(hex(function.lowerBound)), \(hex(function.upperBound)))")
        }
        let code = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: function.lowerBound), count: function.count)
        var starts: [(UInt, X86Instruction)] = []
        var offset = 0
        while offset < code.count {
            let insn: X86Instruction
            do { insn = try X86Decoder.decode(UnsafeRawBufferPointer(rebasing: code[offset...])) } catch {
                // Bytes past the last instruction that decode (padding, data) end the walk, but only
                // after the probe's own instructions were seen.
                if function.lowerBound + UInt(offset) <= address {
                    throw .notAnInstruction(address: address, reason: "the function does not decode at \(hex(function.lowerBound + UInt(offset))): \(error)")
                }
                break
            }
            starts.append((function.lowerBound + UInt(offset), insn))
            offset += insn.length
        }
        guard let first = starts.firstIndex(where: { $0.0 == address }) else {
            let inside = starts.last { $0.0 < address }.map(\.0) ?? function.lowerBound
            throw .notAnInstruction(address: address, reason: "it is inside the instruction at \(hex(inside))")
        }
        var displaced: [Displaced] = []
        var length = 0
        for (a, insn) in starts[first...] {
            let bytes = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: a), count: insn.length))
            if insn.isTrap { throw .refused(address: address, instruction: a, reason: "is a trap (int3, ud2, hlt or int) and cannot be moved") }
            if insn.branch == .loop { throw .refused(address: address, instruction: a, reason: "is loop/jrcxz, which has no rel32 form") }
            if insn.branch != nil && insn.branchDisplacementSize == 2 { throw .refused(address: address, instruction: a, reason: "is a branch with a 16-bit displacement") }
            displaced.append(Displaced(address: a, instruction: insn, bytes: bytes))
            length += insn.length
            if length >= 5 || single { break }
            if insn.branch == .call {
                throw .refused(address: address, instruction: a, reason: "is a call inside the 5 bytes the jump needs: its return address would point into the patch")
            }
            if insn.endsFlow { throw .refused(address: address, instruction: a, reason: "ends the flow before 5 bytes could be displaced") }
        }
        if single { return ProbePlan(address: address, displaced: displaced) }
        guard length >= 5 else {
            throw .refused(address: address, instruction: displaced.last?.address ?? address, reason: "is the function's last instruction, before 5 bytes could be displaced")
        }
        let end = address + UInt(length)
        for (a, insn) in starts {
            if let target = branchTarget(a, insn), target > address, target < end {
                throw .refused(address: address, instruction: a, reason: "jumps to \(hex(target)), inside the \(length) displaced bytes")
            }
            if displaced.count > 1, isRegisterIndirectJump(a, insn) {
                throw .refused(address: address, instruction: a, reason: "is an indirect jump (a jump table?) whose targets cannot be seen, and the probe would displace \(displaced.count) instructions")
            }
        }
        return ProbePlan(address: address, displaced: displaced)
    }

    /// The target of a relative branch at `a`.
    static func branchTarget(_ a: UInt, _ insn: X86Instruction) -> UInt? {
        guard insn.branch != nil else { return nil }
        let p = UnsafeRawPointer(bitPattern: a + UInt(insn.branchDisplacementOffset))!
        let d: Int = switch insn.branchDisplacementSize {
        case 1: Int(p.load(as: Int8.self))
        case 2: Int(p.loadUnaligned(as: Int16.self))
        default: Int(p.loadUnaligned(as: Int32.self))
        }
        return UInt(bitPattern: Int(bitPattern: a) + insn.length + d)
    }

    /// jmp through a register or a non-RIP-relative memory operand (FF /4 and FF /5).
    static func isRegisterIndirectJump(_ a: UInt, _ insn: X86Instruction) -> Bool {
        guard insn.endsFlow, insn.ripDisplacementOffset == nil else { return false }
        let b = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: a), count: insn.length)
        var i = 0
        while i < b.count, [0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67].contains(b[i]) || b[i] & 0xF0 == 0x40 { i += 1 }
        guard i + 1 < b.count, b[i] == 0xFF else { return false }
        let reg = (b[i + 1] >> 3) & 7
        return reg == 4 || reg == 5
    }

    /// The displaced instructions re-encoded to run at `base`; the offset of each one in the result.
    func relocated(at base: UInt) throws(ProbeError) -> (bytes: [UInt8], offsets: [Int]) {
        var out: [UInt8] = [], offsets: [Int] = []
        for d in displaced {
            offsets.append(out.count)
            let here = base + UInt(out.count)
            let insn = d.instruction
            var bytes = d.bytes
            if let target = ProbePlan.branchTarget(d.address, insn) {
                if insn.branchDisplacementSize == 1 {
                    // Widen: jmp rel8 -> E9 rel32, jcc rel8 -> 0F 8x rel32 (prefixes kept).
                    let op = insn.branchDisplacementOffset - 1
                    let prefix = Array(bytes[..<op])
                    let wide: [UInt8] = bytes[op] == 0xEB ? [0xE9] : [0x0F, 0x80 | (bytes[op] & 0x0F)]
                    let next = here + UInt(prefix.count + wide.count + 4)
                    guard let disp = Rel32.displacement(from: next, to: target) else { throw .outOfReach(address: address, target: target) }
                    bytes = prefix + wide
                    bytes.append32(disp)
                } else {
                    guard let disp = Rel32.displacement(from: here + UInt(insn.length), to: target) else { throw .outOfReach(address: address, target: target) }
                    withUnsafeBytes(of: disp.littleEndian) { bytes.replaceSubrange(insn.branchDisplacementOffset..<(insn.branchDisplacementOffset + 4), with: $0) }
                }
            } else if let r = insn.ripDisplacementOffset {
                let old = bytes[r..<(r + 4)].withUnsafeBytes { Int($0.loadUnaligned(as: Int32.self)) }
                let target = UInt(bitPattern: Int(bitPattern: d.address) + insn.length + old)
                guard let disp = Rel32.displacement(from: here + UInt(insn.length), to: target) else { throw .outOfReach(address: address, target: target) }
                withUnsafeBytes(of: disp.littleEndian) { bytes.replaceSubrange(r..<(r + 4), with: $0) }
            }
            out += bytes
        }
        return (out, offsets)
    }
}

public final class InstructionProbes: @unchecked Sendable {
    public let allocator: ExecMemAllocator
    public let poker: TextPoker

    struct Record {
        var probe: InstructionProbe
        var slot: Allocation
        var original: [UInt8]
        var box: Unmanaged<ProbeBox>?
        /// `execmem_probe_<function>+<offset>` in the code registry, until the slot is freed.
        var name: CodeHandle
    }
    struct State {
        var probes: [Int: Record] = [:]
        var byAddress: [UInt: Int] = [:]
        var nextID = 1
        var retired = Retired<ProbeBox>()
    }
    let state = Mutex(State())

    public init(allocator: ExecMemAllocator, poker: TextPoker? = nil) {
        self.allocator = allocator
        self.poker = poker ?? TextPoker(allocators: [allocator])
        self.poker.add(allocator)
    }

    deinit {
        for p in state.withLock({ Array($0.probes.values.map(\.probe)) }) { try? remove(p) }
        reclaim()
    }

    /// Places a probe at `address`, an instruction boundary of the code in `function`.
    @discardableResult
    public func probe(_ address: UInt, function: Range<UInt>, mode: ProbeMode = .automatic, handler: @escaping ProbeHandler) throws(ProbeError) -> InstructionProbe {
        let box = Unmanaged.passRetained(ProbeBox(handler, address))
        do throws(ProbeError) {
            return try install(address, function: function, mode: mode, handler: unsafeBitCast(swiftProbe, to: UInt.self),
                               context: UInt(bitPattern: box.toOpaque()), box: box)
        } catch {
            box.release()
            throw error
        }
    }

    /// Places a probe whose C handler is called directly with (context, registers).
    @discardableResult
    public func probe(_ address: UInt, function: Range<UInt>, mode: ProbeMode = .automatic, c handler: CProbeHandler,
                      context: UnsafeMutableRawPointer? = nil) throws(ProbeError) -> InstructionProbe {
        try install(address, function: function, mode: mode, handler: unsafeBitCast(handler, to: UInt.self), context: UInt(bitPattern: context), box: nil)
    }

    private func install(_ address: UInt, function: Range<UInt>, mode: ProbeMode, handler: UInt, context: UInt,
                         box: Unmanaged<ProbeBox>?) throws(ProbeError) -> InstructionProbe {
        try CodeMemory.checkExecutable(function.lowerBound, count: function.count, allocators: [allocator])
        let r: Result<InstructionProbe, ProbeError> = state.withLock { s in
            do throws(ProbeError) {
                if let other = s.byAddress[address] { throw .siteInUse(address: address, by: "probe \(other)") }
                if mode != .trap {
                    do throws(ProbeError) {
                        let plan = try ProbePlan.make(at: address, function: function)
                        if mode == .automatic && plan.displaced.count > 1 && cem_threads_blocking_sweep() != 0 {
                            throw .refused(address: address, instruction: plan.displaced[1].address, reason: "would be displaced while threads that cannot be checked run")
                        }
                        return .success(try place(plan, function: function, trap: false, strict: mode == .automatic, handler: handler, context: context, box: box, &s))
                    } catch {
                        // A refused or unsafe jump becomes a trap, as an unoptimizable kprobe stays one.
                        // So does a jump whose sweep found a thread it cannot check (the patch was
                        // rolled back).
                        switch (mode, error) {
                        case (.automatic, .refused), (.automatic, .poke), (.automatic, .siteInUse): break
                        default: throw error
                        }
                    }
                }
                let plan = try ProbePlan.make(at: address, function: function, single: true)
                return .success(try place(plan, function: function, trap: true, strict: false, handler: handler, context: context, box: box, &s))
            } catch {
                return .failure(error)
            }
        }
        return try r.get()
    }

    /// Writes the slot and patches the probe in, as a jump or a trap.
    private func place(_ plan: ProbePlan, function: Range<UInt>, trap: Bool, strict: Bool, handler: UInt, context: UInt,
                       box: Unmanaged<ProbeBox>?, _ s: inout State) throws(ProbeError) -> InstructionProbe {
        let address = plan.address, end = address + UInt(plan.length)
        for rec in s.probes.values where rec.probe.address < end && address < rec.probe.address + UInt(rec.probe.displacedBytes) {
            throw .siteInUse(address: address, by: "probe \(rec.probe.id) at \(hex(rec.probe.address))")
        }
        let (prologue, slotFrame) = ProbeSlot.prologue(address: address, handler: handler, context: context)
        var cfi = slotFrame
        let slot: Allocation
        do throws(ExecMemError) { slot = try allocator.allocate(.probes, size: prologue.count + plan.length * 3 + 32, alignment: 64) } catch { throw .allocator(error) }
        do throws(ProbeError) {
            guard Rel32.reaches(function.lowerBound, function.upperBound, slot.address, slot.address + UInt(slot.capacity)) else {
                throw .outOfReach(address: address, target: slot.address)
            }
            let codeBase = slot.address + UInt(prologue.count)
            let (moved, offsets) = try plan.relocated(at: codeBase)
            var code = X86Code(bytes: prologue + moved)
            code.jump(from: slot.address, to: address + UInt(plan.length))
            // Each displaced instruction runs as the function would at its own address.
            for (d, o) in zip(plan.displaced, offsets) { cfi.advance(to: prologue.count + o); cfi.value(.returnAddress, is: UInt64(d.address) + 1) }
            cfi.advance(to: prologue.count + moved.count); cfi.value(.returnAddress, is: UInt64(end) + 1)
            do throws(ExecMemError) { try allocator.write(code.bytes, to: slot) } catch { throw .allocator(error) }
            allocator.makeVisible()
            if trap {
                // The handler must know the int3 before any thread can meet it. One byte is written
                // whole, so no sweep is needed.
                guard cem_trap_probe_add(UInt64(address), UInt64(slot.address)) == 0 else { throw .poke(address: address, reason: "out of memory") }
                do throws(ProbeError) { try poker.write([0xCC], at: address) } catch { _ = cem_trap_probe_remove(UInt64(address)); throw error }
                Membarrier.synchronize()
            } else {
                var patch = rel32Instruction(0xE9, from: address, to: slot.address)!
                patch += [UInt8](repeating: 0xCC, count: plan.length - 5)
                let moves = zip(plan.displaced, offsets).dropFirst().map { (from: $0.address, to: codeBase + UInt($1)) }
                try poker.patch([.init(address, patch, emulate: .jump(to: slot.address))], sweep: moves, everyThread: strict)
            }
        } catch {
            try? allocator.free(slot)
            throw error
        }
        let probe = InstructionProbe(id: s.nextID, address: address, displacedBytes: plan.length, isTrap: trap)
        s.nextID += 1
        let size = ProbeSlot.size(prologue: prologue.count, plan: plan, at: slot.address)
        let name = CodeRegistry.shared.register(CodeRegistration(
            name: ProbeNames.probe(address, function: function.lowerBound), kind: .probe, address: slot.address, size: size,
            unwind: .frames([CodeFrame(offset: 0, length: size, instructions: cfi.bytes)])))
        s.probes[probe.id] = Record(probe: probe, slot: slot, original: plan.displaced.flatMap(\.bytes), box: box, name: name)
        s.byAddress[address] = probe.id
        return probe
    }

    /// Puts the original instructions back; the slot is retired until `reclaim()`.
    public func remove(_ probe: InstructionProbe) throws(ProbeError) {
        let r: Result<Void, ProbeError> = state.withLock { s in
            guard let rec = s.probes[probe.id], rec.probe == probe else { return .failure(.unknownHook(id: probe.id)) }
            do throws(ProbeError) {
                if probe.isTrap {
                    // The original byte first; a thread that met the int3 before finds it gone and
                    // runs the instruction, so the handler's entry can go after.
                    try poker.write([rec.original[0]], at: probe.address)
                    Membarrier.synchronize()
                    _ = cem_trap_probe_remove(UInt64(probe.address))
                } else {
                    // A thread meeting the int3 meanwhile runs the slot, which still holds the same code.
                    try poker.patch(probe.address, with: rec.original, emulate: .jump(to: rec.slot.address))
                }
            } catch {
                return .failure(error)
            }
            s.probes[probe.id] = nil
            s.byAddress[probe.address] = nil
            s.retired.add(rec.slot, rec.box, name: rec.name)
            return .success(())
        }
        try r.get()
    }

    /// Bytes of register state the slot saves with XSAVE (0: FXSAVE's 512).
    public static var extendedStateBytes: Int { ProbeSlot.xsaveSize }

    public var probes: [InstructionProbe] { state.withLock { $0.probes.values.map(\.probe).sorted { $0.id < $1.id } } }

    /// Frees retired slots; only when no thread can still be inside one.
    @discardableResult
    public func reclaim() -> Int {
        state.withLock { $0.retired.take() }.free(in: allocator)
    }
}

/// The slot's register-saving prologue (everything up to the displaced instructions).
enum ProbeSlot {
    static let xsaveSize = Int(cem_xsave_size())

    /// Bytes the slot's code takes (prologue, relocated instructions, jump back).
    static func size(prologue: Int, plan: ProbePlan, at base: UInt) -> Int {
        guard let (moved, _) = try? plan.relocated(at: base + UInt(prologue)) else { return prologue }
        var c = X86Code(bytes: [UInt8](repeating: 0, count: prologue) + moved)
        c.jump(from: base, to: plan.address + UInt(plan.length))
        return c.bytes.count
    }

    /// The prologue and its call-frame information. The slot runs in the probed function's frame,
    /// as if the function were still at the probed instruction: CFA = the thread's rsp there, the
    /// "return address" the probed address + 1 (so the unwinder looks up the function's own rules at
    /// the probed address, as for a call made there), and each register, once saved in the block,
    /// at its place in it. The block is 272 bytes below the CFA (the red zone, rflags, 17 words).
    static func prologue(address: UInt, handler: UInt, context: UInt) -> (bytes: [UInt8], cfi: CFIProgram) {
        var c = X86Code()
        var cfi = CFIProgram()
        cfi.defineCFA(.rsp, offset: 0)
        cfi.value(.returnAddress, is: UInt64(address) + 1)
        c.emit(0x48, 0x8D, 0x64, 0x24, 0x80)  // lea rsp, [rsp-128]: step over the red zone
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(128)
        c.emit(0x9C)  // pushfq
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(136)
        c.emit(0x48, 0x81, 0xEC); c.imm32(136)  // sub rsp, 136: 16 registers and rip
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(272)
        for r: UInt8 in 0..<16 where r != 4 {
            c.movRSP(store: true, r, Int32(r) * 8)
            cfi.advance(to: c.bytes.count); cfi.saved(dwarf(r), at: 272 - 8 * Int(r))
        }
        c.emit(0x48, 0x8D, 0x84, 0x24); c.imm32(136 + 8 + 128)  // lea rax, [rsp+272]: the thread's rsp
        c.movRSP(store: true, 0, 32)
        c.movabs(0, UInt64(address))
        c.movRSP(store: true, 0, 128)  // rip
        c.emit(0x48, 0x89, 0xE3)  // mov rbx, rsp
        cfi.advance(to: c.bytes.count); cfi.defineCFA(.rbx, offset: 272)
        if xsaveSize > 0 {
            c.emit(0x48, 0x81, 0xEC); c.imm32(Int32(xsaveSize))  // sub rsp, size
            c.emit(0x48, 0x83, 0xE4, 0xC0)  // and rsp, -64
            c.emit(0x31, 0xC0)  // xor eax, eax: zero the XSAVE header
            for k: Int32 in 0..<8 { c.movRSP(store: true, 0, 512 + k * 8) }
            c.emit(0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0xBA, 0xFF, 0xFF, 0xFF, 0xFF)  // mov eax, -1; mov edx, -1
            c.emit(0x48, 0x0F, 0xAE, 0x24, 0x24)  // xsave64 [rsp]
        } else {
            c.emit(0x48, 0x81, 0xEC); c.imm32(512)
            c.emit(0x48, 0x83, 0xE4, 0xF0)  // and rsp, -16
            c.emit(0x48, 0x0F, 0xAE, 0x04, 0x24)  // fxsave64 [rsp]
        }
        c.movabs(7, UInt64(context))  // rdi
        c.emit(0x48, 0x89, 0xDE)  // mov rsi, rbx
        c.movabs(0, UInt64(handler))
        c.emit(0xFF, 0xD0)  // call rax
        if xsaveSize > 0 {
            c.emit(0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0xBA, 0xFF, 0xFF, 0xFF, 0xFF)
            c.emit(0x48, 0x0F, 0xAE, 0x2C, 0x24)  // xrstor64 [rsp]
        } else {
            c.emit(0x48, 0x0F, 0xAE, 0x0C, 0x24)  // fxrstor64 [rsp]
        }
        c.emit(0x48, 0x89, 0xDC)  // mov rsp, rbx
        cfi.advance(to: c.bytes.count); cfi.defineCFA(.rsp, offset: 272)
        for r: UInt8 in 0..<16 where r != 4 {
            c.movRSP(store: false, r, Int32(r) * 8)
            cfi.advance(to: c.bytes.count); cfi.restored(dwarf(r))
        }
        c.emit(0x48, 0x8D, 0xA4, 0x24); c.imm32(136)  // lea rsp, [rsp+136]
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(136)
        c.emit(0x9D)  // popfq
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(128)
        c.emit(0x48, 0x8D, 0xA4, 0x24); c.imm32(128)  // lea rsp, [rsp+128]
        cfi.advance(to: c.bytes.count); cfi.cfaOffset(0)
        return (c.bytes, cfi)
    }

    /// DWARF's number for the register with x86 encoding `r` (rax 0, rcx 1, rdx 2, rbx 3, ...).
    static func dwarf(_ r: UInt8) -> CFIProgram.Register {
        let order: [CFIProgram.Register] = [.rax, .rcx, .rdx, .rbx, .rsp, .rbp, .rsi, .rdi, .r8, .r9, .r10, .r11, .r12, .r13, .r14, .r15]
        return order[Int(r)]
    }
}
