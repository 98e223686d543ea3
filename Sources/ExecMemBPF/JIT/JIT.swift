// The x86-64 JIT. Each eBPF function becomes a native function in one piece of code that goes into a
// packed BPF-kind text allocation, written through the allocator's write view (never an rwx page).
// It translates the verifier's decoded form, and trusts what the verifier proved: a proven access
// is one plain `mov`; the rest get one check against the one region their pointer came from.
//
// Registers (as Linux's JIT, so helper arguments r1-r5 are already where the System V ABI wants them):
//
//   r0 rax  r1 rdi  r2 rsi  r3 rdx  r4 rcx  r5 r8  r6 rbx  r7 r13  r8 r14  r9 r15  r10 rbp
//   r12 = the run context block; r9 = budget units left; r10, r11 = scratch
//
// The eBPF stack is a separate buffer (8 frames of 512 bytes) that rbp walks down on local calls, so
// the native stack holds only return addresses and saved registers, out of the program's reach.
// Functions have no prologue: a local call saves r6-r10 itself, so a jump to a function's first
// instruction is an ordinary jump (it cannot unbalance the native stack).
//
//   entry(r1, r2, block): save callee-saved, r12 = block, remember rsp, rbp = stack top, call main
//   loop header:          [jmp header] pad: sub r9, W; jb budget-fault; header: ...
//                         (back edges go to the pad, so straight-line code pays nothing)
//   fault:                rsp = remembered rsp, r0 = 0, restore and return (the block says why)
//
// Every piece is named in the code registry and described to the unwinder (JIT+Frames.swift).

import ExecMem
import Glibc

/// How the JIT compiles one program. A value type; the defaults are the safe ones.
public struct JITOptions: Sendable {
    /// Check the accesses the verifier could not prove (the default). Off only for programs the
    /// host trusts: an unproven access then goes unchecked.
    public var boundsChecks: Bool
    /// Charge the instruction budget at back edges and calls (the default). Off only for programs
    /// the host trusts to end (and to measure what the budget costs): such a run is unbounded on the
    /// JIT, while the interpreter still charges.
    public var budget: Bool
    /// Options; the defaults check everything.
    public init(boundsChecks: Bool = true, budget: Bool = true) { self.boundsChecks = boundsChecks; self.budget = budget }
}

enum BPFJIT {
    static let map: [X86Reg] = [.rax, .rdi, .rsi, .rdx, .rcx, .r8, .rbx, .r13, .r14, .r15, .rbp]
    static let context = X86Reg.r12
    static let budget = X86Reg.r9

    /// Compiles `program` and installs it in the allocator.
    static func compile(_ program: BPFProgram, allocator: ExecMemAllocator, options: JITOptions) throws(BPFError) -> JITCode {
        let primary = (allocator.primaryBase, allocator.primaryBase + UInt(allocator.primarySize))
        // Helper calls are `call rel32` when the whole primary range reaches the helper, so the size
        // does not depend on where in the range the code lands.
        var compiler = Compiler(program: program, options: options, primary: primary, indirect: false)
        var emitter = compiler.compile()
        var size = emitter.link(base: nil).bytes.count
        var allocation = try allocate(allocator, size)
        if !allocator.isInPrimaryRange(allocation.address) {
            // Out of the primary range (its fallback): call every helper through a register.
            try? allocator.free(allocation)
            compiler = Compiler(program: program, options: options, primary: primary, indirect: true)
            emitter = compiler.compile()
            size = emitter.link(base: nil).bytes.count
            allocation = try allocate(allocator, size)
        }
        let (code, position) = emitter.link(base: allocation.address)
        do throws(ExecMemError) {
            try allocator.write(code, to: allocation)
        } catch {
            try? allocator.free(allocation)
            throw .allocator(error)
        }
        allocator.makeVisible()
        let pieces = compiler.registrations(at: allocation.address, size: code.count, position: position)
        return JITCode(allocator: allocator, allocation: allocation, registrations: pieces)
    }

    static func allocate(_ allocator: ExecMemAllocator, _ size: Int) throws(BPFError) -> Allocation {
        do throws(ExecMemError) { return try allocator.allocate(.bpf, size: size, alignment: 16) } catch { throw .allocator(error) }
    }

    /// Whether this CPU has BMI2 (`shlx`, `shrx`, `sarx`: shifts by any register, no rcx shuffle).
    static let hasBMI2: Bool = {
        let fd = open("/proc/cpuinfo", O_RDONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 8192)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return false }
        let text = String(decoding: buffer[0..<n], as: UTF8.self)
        return text.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").contains("bmi2") ?? false
    }()
}

/// One compilation: the entry stub, every function, the out-of-line stubs.
struct Compiler {
    let program: BPFProgram
    let code: [BPFDecoded]
    let options: JITOptions
    let primary: (UInt, UInt)
    /// Call helpers through a register (the code may land out of their rel32 reach).
    let indirect: Bool
    var e: X86Emitter
    /// Label of each instruction, and of each loop header's budget pad.
    var labels: [Int]
    var pads: [Int: Int] = [:]
    /// Out-of-line paths: (label, what to do there).
    var cold: [(label: Int, kind: Cold)] = []
    var faultCommon = 0, helperFaultCommon = 0, unwind = 0, returnPath = 0
    /// For each function start: the registers (bit n = rn) its own instructions write.
    var writes: [Int: UInt16] = [:]
    /// Instructions some jump or call lands on.
    var isTarget: [Bool]
    /// Where the frames change, for the call-frame information (JIT+Frames.swift).
    var layout = JITLayout()

    enum Cold {
        /// Record `fault` at `index` (r11 holds the address; `restore` says how to rebuild it).
        case fault(RunFault, index: Int, restore: Restore)
        /// A helper set the fault: record where.
        case helperFault(index: Int)
    }

    /// How a cold path turns r11 back into the faulting address.
    enum Restore {
        case none
        case addMemLo
        case addR10
        case lea(X86Reg, Int32)
    }

    init(program: BPFProgram, options: JITOptions, primary: (UInt, UInt), indirect: Bool) {
        self.program = program
        code = program.verified.code
        self.options = options
        self.primary = primary
        self.indirect = indirect
        e = X86Emitter(capacity: code.count * 12 + 256)
        labels = []
        labels.reserveCapacity(code.count + 1)
        for _ in 0...code.count { labels.append(e.newLabel()) }
        for t in program.verified.loopHeaders.keys { pads[t] = e.newLabel() }
        faultCommon = e.newLabel(); helperFaultCommon = e.newLabel(); unwind = e.newLabel(); returnPath = e.newLabel()
        isTarget = [Bool](repeating: false, count: code.count + 1)
        let starts = program.verified.functions
        for (f, start) in starts.enumerated() {
            let end = f + 1 < starts.count ? starts[f + 1] : code.count
            var mask: UInt16 = 0
            for d in code[start..<end] {
                switch d.operation {
                case .alu, .movsx, .endian, .lddw, .load: mask |= 1 << UInt16(d.dst)
                case .atomic(.cmpxchg, _): mask |= 1
                case .atomic(.xchg, _), .atomic(.rmw(_, fetch: true), _): mask |= 1 << UInt16(d.src)
                case .jump, .callLocal: isTarget[Int(d.target)] = true
                default: break
                }
            }
            writes[start] = mask
        }
    }

    static func reg(_ r: UInt8) -> X86Reg { BPFJIT.map[Int(r)] }
    var block: X86Reg { BPFJIT.context }

    mutating func compile() -> X86Emitter {
        entryStub()
        var i = 0
        var deadRun = false
        // Whether the code emitted last continues into what comes next (the budget pad of a loop
        // header must be jumped over then: only back edges pay it).
        var continues = false
        var function = 0
        let starts = program.verified.functions
        while i < code.count {
            while function < starts.count && starts[function] <= i {
                layout.functionStarts.append(e.count)
                function += 1
            }
            if let pad = pads[i], options.budget {
                if continues { e.jmp(labels[i]) }
                e.bind(pad)
                e.aluImm(5, BPFJIT.budget, Int32(truncatingIfNeeded: program.verified.loopHeaders[i]!), wide: true)
                e.jcc(.below, coldLabel(.fault(.budget, index: i, restore: .none)))
            }
            e.bind(labels[i])
            let d = code[i]
            if case .unreachable = d.operation {
                // Dead code: one trap for each run of it (no live jump lands inside one).
                if !deadRun { e.jmp(coldLabel(.fault(.unreachable, index: i, restore: .none))) }
                deadRun = true
                continues = false
                i += 1
                continue
            }
            deadRun = false
            // `jcc +1; ja T`: one inverted jump to T (the ja is its own instruction only if a jump
            // lands on it).
            if case let .jump(c?, wide, register) = d.operation, let inverse = c.negated, Int(d.target) == i + 2,
               i + 1 < code.count, case .jump(nil, _, _) = code[i + 1].operation, !isTarget[i + 1], pads[i + 1] == nil {
                var inverted = d
                inverted.operation = .jump(inverse, wide: wide, register: register)
                inverted.target = code[i + 1].target
                jump(inverted, at: i + 1, condition: inverse, wide: wide, register: register, dst: Self.reg(d.dst), src: Self.reg(d.src))
                e.bind(labels[i + 1])
                continues = true
                i += 2
                continue
            }
            switch d.operation {
            case .exit, .jump(nil, _, _): continues = false
            default: continues = true
            }
            translate(d, at: i)
            if d.operation == .lddw { e.bind(labels[i + 1]); i += 2 } else { i += 1 }
        }
        e.bind(labels[code.count])
        layout.bodyEnd = e.count
        outOfLine()
        layout.end = e.count
        return e
    }

    mutating func coldLabel(_ kind: Cold) -> Int {
        let l = e.newLabel()
        cold.append((l, kind))
        return l
    }

    // MARK: - Instructions

    mutating func translate(_ d: BPFDecoded, at index: Int) {
        let dst = Self.reg(d.dst), src = Self.reg(d.src)
        switch d.operation {
        case let .alu(op, wide, register):
            alu(op, d, dst: dst, src: src, wide: wide, register: register)
        case let .movsx(bits, wide):
            e.movsx(dst, src, bits: Int(bits), wide: wide)
        case let .endian(bits, swap):
            if !swap {  // to little-endian: truncate
                if bits == 16 { e.movzx(dst, dst, bits: 16) } else if bits == 32 { e.mov(dst, dst, wide: false) }
            } else {
                switch bits {
                case 16: e.rol16by8(dst); e.movzx(dst, dst, bits: 16)
                case 32: e.bswap(dst, wide: false)
                default: e.bswap(dst, wide: true)
                }
            }
        case let .jump(condition, wide, register):
            jump(d, at: index, condition: condition, wide: wide, register: register, dst: dst, src: src)
        case .exit:
            e.ret()
        case .callLocal:
            callLocal(d, at: index)
        case .callHelper:
            callHelper(d, at: index)
        case .lddw:
            if d.imm == 0 { e.alu(0x31, dst, dst, wide: false) } else { e.movImm(dst, d.operand) }
        case let .load(size, signed):
            let (base, disp) = address(d, base: src, at: index, write: false)
            e.load(dst, base: base, disp: disp, size: Int(size), signed: signed)
        case let .store(size, register):
            let (base, disp) = address(d, base: dst, at: index, write: true)
            if register { e.store(src, base: base, disp: disp, size: Int(size)) } else { e.storeImm(base: base, disp: disp, size: Int(size), Int32(truncatingIfNeeded: d.imm)) }
        case let .atomic(op, size):
            let (base, disp) = address(d, base: dst, at: index, write: true)
            atomic(op, d, base: base, disp: disp, src: src, size: Int(size), index: index)
        case .unreachable:
            break
        }
    }

    /// Checks an access the verifier did not prove, against its region; returns `[base + disp]`.
    mutating func address(_ d: BPFDecoded, base r: X86Reg, at index: Int, write: Bool) -> (X86Reg, Int32) {
        let disp = Int32(d.offset), size = d.size
        guard options.boundsChecks else { return (r, disp) }
        switch (d.access.check, d.access.region) {
        case (.proven, _):
            break
        case let (.contextEnd(end), _):
            // [r + disp] is memLo + a constant: the context must be at least `end` bytes.
            e.cmpMemoryImm(base: block, disp: RunContext.Field.memLen.offset, end)
            e.jcc(.below, coldLabel(.fault(.outOfBounds, index: index, restore: .lea(r, disp))))
        case (.region, .context):
            // offset = address - memLo, unsigned: one compare covers both ends.
            e.lea(.r11, base: r, disp: disp)
            e.aluMemory(0x2B, .r11, base: block, disp: RunContext.Field.memLo.offset)
            e.aluMemory(0x3B, .r11, base: block, disp: RunContext.Field.memLimit(size).offset)
            e.jcc(.aboveOrEqual, coldLabel(.fault(.outOfBounds, index: index, restore: .addMemLo)))
        case let (.region, .map(m)):
            let region = program.regions[m]
            e.lea(.r11, base: r, disp: disp)
            e.movImm(.r10, UInt64(region.start))
            e.alu(0x29, .r11, .r10, wide: true)
            let limit = UInt64(region.end - region.start) - UInt64(size)
            if let small = Int32(exactly: limit) {
                e.aluImm(7, .r11, small, wide: true)
            } else {
                e.movImm(.r10, limit); e.alu(0x39, .r11, .r10, wide: true); e.movImm(.r10, UInt64(region.start))
            }
            e.jcc(.above, coldLabel(.fault(.outOfBounds, index: index, restore: .addR10)))
        case (.region, .stack):
            // The live stack: from this frame's bottom to the top of the buffer.
            e.lea(.r11, base: r, disp: disp)
            e.lea(.r10, base: .rbp, disp: Int32(-BPF.stackSize))
            e.alu(0x39, .r11, .r10, wide: true)
            let fault = coldLabel(.fault(.outOfBounds, index: index, restore: .none))
            e.jcc(.below, fault)
            e.aluMemory(0x3B, .r11, base: block, disp: RunContext.Field.stackLimit(size).offset)
            e.jcc(.above, fault)
        }
        return (r, disp)
    }

    // MARK: - ALU

    mutating func alu(_ op: BPFALU, _ d: BPFDecoded, dst: X86Reg, src: X86Reg, wide: Bool, register: Bool) {
        let imm = Int32(truncatingIfNeeded: d.imm)
        let groupOne: (UInt8, UInt8)?
        switch op {
        case .add: groupOne = (0x01, 0)
        case .sub: groupOne = (0x29, 5)
        case .or: groupOne = (0x09, 1)
        case .and: groupOne = (0x21, 4)
        case .xor: groupOne = (0x31, 6)
        default: groupOne = nil
        }
        if let (rr, ext) = groupOne {
            if register {
                if op == .xor && dst == src { e.alu(0x31, dst, dst, wide: false); return }  // also zero-extends
                e.alu(rr, dst, src, wide: wide)
            } else if imm == 0 && op != .and {
                if !wide { e.mov(dst, dst, wide: false) }  // x op 0 = x (ALU32 still clears the top half)
            } else {
                e.aluImm(ext, dst, imm, wide: wide)
            }
            return
        }
        switch op {
        case .mov:
            if register {
                e.mov(dst, src, wide: wide)
            } else if imm == 0 {
                e.alu(0x31, dst, dst, wide: false)
            } else if wide {
                e.movImm(dst, UInt64(bitPattern: Int64(imm)))
            } else {
                e.movImm32(dst, imm)
            }
        case .mul:
            if register { e.imul(dst, src, wide: wide) } else { e.imulImm(dst, imm, wide: wide) }
        case .neg:
            e.group3(3, dst, wide: wide)
        case .lsh, .rsh, .arsh:
            shift(op, dst: dst, src: src, imm: imm, wide: wide, register: register)
        case .div, .sdiv, .mod, .smod:
            divide(op, dst: dst, src: src, imm: imm, wide: wide, register: register)
        default:
            break
        }
    }

    mutating func shift(_ op: BPFALU, dst: X86Reg, src: X86Reg, imm: Int32, wide: Bool, register: Bool) {
        let ext: UInt8 = op == .lsh ? 4 : op == .rsh ? 5 : 7
        if !register {
            let count = UInt8(truncatingIfNeeded: imm) & (wide ? 63 : 31)
            if count != 0 { e.shift(ext, dst, count: count, wide: wide) } else if !wide { e.mov(dst, dst, wide: false) }
        } else if BPFJIT.hasBMI2 {
            e.shiftX(op == .lsh ? 1 : op == .rsh ? 3 : 2, dst, dst, count: src, wide: wide)
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
    }

    /// Division and modulo with RFC 9669's rules for zero and for the minimum divided by -1; a
    /// constant divisor needs neither test.
    mutating func divide(_ op: BPFALU, dst: X86Reg, src: X86Reg, imm: Int32, wide: Bool, register: Bool) {
        let signed = op == .sdiv || op == .smod, modulo = op == .mod || op == .smod
        if !register {
            if imm == 0 {  // quotient 0, remainder the dividend (its low half for 32 bits)
                if modulo { if !wide { e.mov(dst, dst, wide: false) } } else { e.alu(0x31, dst, dst, wide: false) }
                return
            }
            if signed && imm == -1 {  // x / -1 = -x (wrapping), x % -1 = 0
                if modulo { e.alu(0x31, dst, dst, wide: false) } else { e.group3(3, dst, wide: wide) }
                return
            }
            let divisor = wide ? UInt64(bitPattern: Int64(imm)) : UInt64(UInt32(bitPattern: imm))
            if !signed && divisor.nonzeroBitCount == 1 {  // a power of two: shift or mask
                let k = UInt8(divisor.trailingZeroBitCount)
                if modulo {
                    if let mask = Int32(exactly: divisor - 1) { e.aluImm(4, dst, mask, wide: wide) } else { e.movImm(.r11, divisor - 1); e.alu(0x21, dst, .r11, wide: wide) }
                } else if k != 0 {
                    e.shift(5, dst, count: k, wide: wide)
                } else if !wide {
                    e.mov(dst, dst, wide: false)
                }
                return
            }
            e.movImm(.r11, divisor)
        } else {
            e.mov(.r11, src, wide: wide)
        }
        let done = e.newLabel()
        if register {
            e.alu(0x85, .r11, .r11, wide: wide)
            let nonzero = e.newLabel()
            e.jcc(.notEqual, nonzero)
            if modulo { if !wide { e.mov(dst, dst, wide: false) } } else { e.alu(0x31, dst, dst, wide: false) }
            e.jmp(done)
            e.bind(nonzero)
            if signed {
                e.aluImm(7, .r11, -1, wide: wide)
                let normal = e.newLabel()
                e.jcc(.notEqual, normal)
                if modulo { e.alu(0x31, dst, dst, wide: false) } else { e.group3(3, dst, wide: wide) }
                e.jmp(done)
                e.bind(normal)
            }
        }
        e.mov(.r10, .rax)
        e.store(.rdx, base: block, disp: RunContext.Field.spill.offset, size: 8)
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
        e.load(.rdx, base: block, disp: RunContext.Field.spill.offset, size: 8)
        e.mov(dst, .r11, wide: wide)
        e.bind(done)
    }

    // MARK: - Jumps and calls

    mutating func jump(_ d: BPFDecoded, at index: Int, condition: BPFCondition?, wide: Bool, register: Bool, dst: X86Reg, src: X86Reg) {
        let t = Int(d.target)
        let target = t <= index && options.budget ? pads[t]! : labels[t]
        guard let condition else {
            if t != index + 1 { e.jmp(target) }
            return
        }
        if t == index + 1 { return }  // taken or not, the next instruction
        let imm = Int32(truncatingIfNeeded: d.imm)
        if condition == .set {
            if register { e.alu(0x85, dst, src, wide: wide) } else { e.testImm(dst, imm, wide: wide) }
        } else if register {
            e.alu(0x39, dst, src, wide: wide)
        } else if imm == 0 {
            e.alu(0x85, dst, dst, wide: wide)  // test r, r: the flags of cmp r, 0
        } else {
            e.aluImm(7, dst, imm, wide: wide)
        }
        e.jcc(Self.x86(condition), target)
    }

    static func x86(_ c: BPFCondition) -> X86Condition {
        switch c {
        case .eq: .equal
        case .ne, .set: .notEqual
        case .gt: .above
        case .ge: .aboveOrEqual
        case .lt: .below
        case .le: .belowOrEqual
        case .sgt: .greater
        case .sge: .greaterOrEqual
        case .slt: .less
        case .sle: .lessOrEqual
        }
    }

    mutating func callHelper(_ d: BPFDecoded, at index: Int) {
        let h = program.helpers[Int32(truncatingIfNeeded: d.imm)]!
        e.store(BPFJIT.budget, base: block, disp: RunContext.Field.budget.offset, size: 8)
        if h.swiftIndex >= 0 { e.movImm(.r9, UInt64(h.swiftIndex)) }  // the dispatcher's sixth argument
        let target = h.entryAddress
        if !indirect && Rel32.reaches(primary.0, primary.1, target, target + 1) {
            e.callExternal(target)
        } else {
            e.movImm(.r11, UInt64(target))
            e.callRegister(.r11)
        }
        e.load(BPFJIT.budget, base: block, disp: RunContext.Field.budget.offset, size: 8)
        // A helper that faulted the run: record where, and stop.
        e.cmpMemoryImm(base: block, disp: RunContext.Field.fault.offset, 0)
        e.jcc(.notEqual, coldLabel(.helperFault(index: index)))
        if h.unwindsOnZero {
            e.alu(0x85, .rax, .rax, wide: true)
            e.jcc(.equal, unwind)
        }
    }

    mutating func atomic(_ op: BPFAtomic, _ d: BPFDecoded, base: X86Reg, disp: Int32, src: X86Reg, size: Int, index: Int) {
        let wide = size == 8
        // Atomics must be naturally aligned, as in the interpreter.
        e.lea(.r11, base: base, disp: disp)
        if !d.access.aligned {
            e.testLowByte(.r11, UInt8(size - 1))
            e.jcc(.notEqual, coldLabel(.fault(.misalignedAtomic, index: index, restore: .none)))
        }
        switch op {
        case .rmw(.add, false): e.memoryOp([0x01], base: .r11, disp: 0, src, wide: wide, lock: true)
        case .rmw(.or, false): e.memoryOp([0x09], base: .r11, disp: 0, src, wide: wide, lock: true)
        case .rmw(.and, false): e.memoryOp([0x21], base: .r11, disp: 0, src, wide: wide, lock: true)
        case .rmw(.xor, false): e.memoryOp([0x31], base: .r11, disp: 0, src, wide: wide, lock: true)
        case .rmw(.add, true): e.memoryOp([0x0F, 0xC1], base: .r11, disp: 0, src, wide: wide, lock: true)  // xadd: src = old
        case .xchg: e.memoryOp([0x87], base: .r11, disp: 0, src, wide: wide, lock: false)
        case .cmpxchg:
            e.memoryOp([0x0F, 0xB1], base: .r11, disp: 0, src, wide: wide, lock: true)
            if !wide { e.mov(.rax, .rax, wide: false) }  // r0 = the old value, zero-extended
        case let .rmw(kind, _):
            // Fetching and/or/xor: a compare-exchange loop on rax, keeping r0 in r10 and the
            // budget (r9) in the block while r9 is the scratch.
            let value: X86Reg = src == .rax ? .r10 : src
            e.store(.r9, base: block, disp: RunContext.Field.spill.offset, size: 8)
            e.mov(.r10, .rax)
            e.load(.rax, base: .r11, disp: 0, size: size)
            let retry = e.newLabel()
            e.bind(retry)
            e.mov(.r9, .rax, wide: wide)
            let rr: UInt8 = kind == .or ? 0x09 : kind == .and ? 0x21 : 0x31
            e.alu(rr, .r9, value, wide: wide)
            e.memoryOp([0x0F, 0xB1], base: .r11, disp: 0, .r9, wide: wide, lock: true)
            e.jcc(.notEqual, retry)
            e.mov(src, .rax, wide: wide)  // the old value
            if src != .rax { e.mov(.rax, .r10) }
            e.load(.r9, base: block, disp: RunContext.Field.spill.offset, size: 8)
        }
    }
}
