// The interpreter: the reference engine the JIT is tested against. Every memory access is checked
// against what the run may touch (stack, context memory, map regions) before it happens; a failed
// check stops the run with an error naming the instruction.
//
// Semantics follow RFC 9669: ALU32 results are zero-extended; shifts mask their count; division by
// zero gives 0 and modulo by zero leaves the dividend (its low 32 bits for ALU32); signed division of
// the minimum by -1 gives the minimum and the remainder 0. Local calls keep r6-r9 and r10 for the
// caller and give the callee a fresh 512-byte frame.

import Atomics

extension BPFProgram {
    func interpret(memory: UnsafeMutableRawBufferPointer?) throws(BPFError) -> UInt64 {
        let run = RunContext.acquire()
        run.begin(self, memory: memory)
        defer { run.end() }
        let result: UInt64? = run.asCurrent {
            instructions.withUnsafeBufferPointer { code in execute(code, run: run, r1: UInt64(UInt(bitPattern: memory?.baseAddress)), r2: UInt64(memory?.count ?? 0)) }
        }
        if let e = run.error() { throw e }
        return result!
    }

    private struct Frame {
        var returnTo: Int
        var saved: (UInt64, UInt64, UInt64, UInt64, UInt64)  // r6-r9, r10
    }

    /// Runs to exit; nil when the run faulted (the context says why).
    private func execute(_ code: UnsafeBufferPointer<BPFInstruction>, run: RunContext, r1: UInt64, r2: UInt64) -> UInt64? {
        var r = [UInt64](repeating: 0, count: 11)
        r[1] = r1; r[2] = r2; r[10] = run.stackTop
        var frames: [Frame] = []
        var pc = 0

        @inline(__always) func check(_ address: UInt64, _ size: Int, write: Bool, _ at: Int) -> UnsafeMutableRawPointer? {
            guard run.accessible(address, size, write: write), let p = UnsafeMutableRawPointer(bitPattern: UInt(address)) else {
                run.fault(.outOfBounds, index: at, address: address, size: size)
                return nil
            }
            return p
        }
        @inline(__always) func load(_ p: UnsafeMutableRawPointer, _ size: Int) -> UInt64 {
            switch size {
            case 1: UInt64(p.load(as: UInt8.self))
            case 2: UInt64(p.loadUnaligned(as: UInt16.self))
            case 4: UInt64(p.loadUnaligned(as: UInt32.self))
            default: p.loadUnaligned(as: UInt64.self)
            }
        }
        @inline(__always) func store(_ p: UnsafeMutableRawPointer, _ size: Int, _ v: UInt64) {
            switch size {
            case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
            case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: v), toByteOffset: 0, as: UInt16.self)
            case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: v), toByteOffset: 0, as: UInt32.self)
            default: p.storeBytes(of: v, toByteOffset: 0, as: UInt64.self)
            }
        }

        while true {
            let i = code[pc]
            let at = pc
            pc += 1
            let d = Int(i.dst), s = Int(i.src)
            let imm = UInt64(bitPattern: Int64(i.imm))
            switch i.instructionClass {
            case BPF.ALU64, BPF.ALU:
                let wide = i.instructionClass == BPF.ALU64
                let op = i.opcode & 0xF0
                if op == BPF.END {
                    let v = r[d]
                    if !wide && i.opcode & BPF.X == 0 {  // to little-endian: truncate
                        r[d] = i.imm == 16 ? v & 0xFFFF : i.imm == 32 ? v & 0xFFFF_FFFF : v
                    } else {  // to big-endian, or bswap
                        r[d] = i.imm == 16 ? UInt64(UInt16(truncatingIfNeeded: v).byteSwapped)
                            : i.imm == 32 ? UInt64(UInt32(truncatingIfNeeded: v).byteSwapped) : v.byteSwapped
                    }
                    continue
                }
                let b = i.opcode & BPF.X != 0 ? r[s] : imm
                let x = i.opcode & BPF.X != 0
                r[d] = wide ? alu(op, r[d], b, i.offset, fromRegister: x, signed: Int64.self)
                    : UInt64(alu(op, UInt32(truncatingIfNeeded: r[d]), UInt32(truncatingIfNeeded: b), i.offset, fromRegister: x, signed: Int32.self))
            case BPF.JMP, BPF.JMP32:
                let op = i.opcode & 0xF0
                if i.opcode == BPF.JMP | BPF.EXIT {
                    guard let f = frames.popLast() else { return r[0] }
                    (r[6], r[7], r[8], r[9], r[10]) = f.saved
                    pc = f.returnTo
                    continue
                }
                if i.opcode == BPF.JMP | BPF.JA { pc += Int(i.offset); continue }
                if i.opcode == BPF.JMP32 | BPF.JA { pc += Int(i.imm); continue }
                if op == BPF.CALL {
                    if i.opcode == BPF.JMP | BPF.CALL && i.src == BPF.callLocal {
                        guard frames.count + 1 < BPF.maxCallDepth else { run.fault(.callDepth, index: at); return nil }
                        frames.append(Frame(returnTo: pc, saved: (r[6], r[7], r[8], r[9], r[10])))
                        r[10] -= UInt64(BPF.stackSize)
                        pc += Int(i.imm)
                        continue
                    }
                    let number = i.opcode == BPF.CALLX ? Int32(truncatingIfNeeded: Int64(bitPattern: r[d])) : i.imm
                    guard let h = helpers[number], i.opcode != BPF.CALLX || Int64(bitPattern: r[d]) == Int64(number) else {
                        run.fault(.unknownHelper, index: at, address: r[d]); return nil
                    }
                    r[0] = h.call(r[1], r[2], r[3], r[4], r[5])
                    if run.get(.fault) != 0 { run.set(.faultIndex, UInt64(at)); return nil }
                    if h.unwindsOnZero && r[0] == 0 { run.set(.unwound, 1); return 0 }
                    continue
                }
                let b = i.opcode & BPF.X != 0 ? r[s] : imm
                let taken = i.instructionClass == BPF.JMP
                    ? compare(op, r[d], b)
                    : compare(op, UInt64(UInt32(truncatingIfNeeded: r[d])), UInt64(UInt32(truncatingIfNeeded: b)), narrow: true)
                if taken { pc += Int(i.offset) }
            case BPF.LD:  // lddw
                r[d] = UInt64(UInt32(bitPattern: i.imm)) | UInt64(UInt32(bitPattern: code[pc].imm)) << 32
                pc += 1
            case BPF.LDX:
                let size = BPF.sizeBytes(i.opcode)
                let address = r[s] &+ UInt64(bitPattern: Int64(i.offset))
                guard let p = check(address, size, write: false, at) else { return nil }
                let v = load(p, size)
                if i.opcode & 0xE0 == BPF.MEMSX {
                    r[d] = size == 1 ? UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: v)))
                        : size == 2 ? UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: v))) : UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: v)))
                } else {
                    r[d] = v
                }
            case BPF.ST:
                let size = BPF.sizeBytes(i.opcode)
                guard let p = check(r[d] &+ UInt64(bitPattern: Int64(i.offset)), size, write: true, at) else { return nil }
                store(p, size, imm)
            default:  // STX
                let size = BPF.sizeBytes(i.opcode)
                let address = r[d] &+ UInt64(bitPattern: Int64(i.offset))
                guard let p = check(address, size, write: true, at) else { return nil }
                if i.opcode & 0xE0 == BPF.ATOMIC {
                    guard address % UInt64(size) == 0 else { run.fault(.misalignedAtomic, index: at, address: address, size: size); return nil }
                    atomic(i.imm, p, size, &r, s)
                } else {
                    store(p, size, r[s])
                }
            }
        }
    }

    private func atomic(_ op: Int32, _ p: UnsafeMutableRawPointer, _ size: Int, _ r: inout [UInt64], _ s: Int) {
        if size == 8 { atomic(op, p, UInt64.self, &r, s) } else { atomic(op, p, UInt32.self, &r, s) }
    }

    /// An atomic at the width of `T`; fetched values come back zero-extended.
    private func atomic<T: FixedWidthInteger & UnsignedInteger & AtomicValue>(_ op: Int32, _ p: UnsafeMutableRawPointer, _: T.Type,
                                                                               _ r: inout [UInt64], _ s: Int)
    where T.AtomicRepresentation.Value == T, T: AtomicInteger {
        let a = UnsafeAtomic<T>(at: p.assumingMemoryBound(to: T.AtomicRepresentation.self))
        let v = T(truncatingIfNeeded: r[s])
        switch op {
        case BPF.CMPXCHG:
            r[0] = UInt64(a.compareExchange(expected: T(truncatingIfNeeded: r[0]), desired: v, ordering: .sequentiallyConsistent).original)
        case BPF.XCHG:
            r[s] = UInt64(a.exchange(v, ordering: .sequentiallyConsistent))
        default:
            let old: T
            switch op & ~BPF.FETCH {
            case 0x00: old = a.loadThenWrappingIncrement(by: v, ordering: .sequentiallyConsistent)
            case 0x40: old = a.loadThenBitwiseOr(with: v, ordering: .sequentiallyConsistent)
            case 0x50: old = a.loadThenBitwiseAnd(with: v, ordering: .sequentiallyConsistent)
            default: old = a.loadThenBitwiseXor(with: v, ordering: .sequentiallyConsistent)
            }
            if op & BPF.FETCH != 0 { r[s] = UInt64(old) }
        }
    }
}

// MARK: - ALU and comparisons

/// One ALU operation at the width of `U` (UInt64 for ALU64, UInt32 for ALU), with `S` its signed twin.
@inline(__always)
func alu<U: FixedWidthInteger & UnsignedInteger, S: FixedWidthInteger & SignedInteger>(
    _ op: UInt8, _ a: U, _ b: U, _ offset: Int16, fromRegister: Bool, signed: S.Type
) -> U {
    let shift = b & U(U.bitWidth - 1)
    switch op {
    case BPF.ADD: return a &+ b
    case BPF.SUB: return a &- b
    case BPF.MUL: return a &* b
    case BPF.DIV:
        if b == 0 { return 0 }
        guard offset == 1 else { return a / b }
        let x = S(truncatingIfNeeded: a), y = S(truncatingIfNeeded: b)
        return U(truncatingIfNeeded: y == -1 ? 0 &- x : x / y)  // MIN / -1 wraps to MIN
    case BPF.OR: return a | b
    case BPF.AND: return a & b
    case BPF.LSH: return a << shift
    case BPF.RSH: return a >> shift
    case BPF.NEG: return 0 &- a
    case BPF.MOD:
        if b == 0 { return a }
        guard offset == 1 else { return a % b }
        let x = S(truncatingIfNeeded: a), y = S(truncatingIfNeeded: b)
        return y == -1 ? 0 : U(truncatingIfNeeded: x % y)
    case BPF.XOR: return a ^ b
    case BPF.MOV:
        guard fromRegister else { return b }
        switch offset {  // movsx
        case 8: return U(truncatingIfNeeded: Int64(Int8(truncatingIfNeeded: b)))
        case 16: return U(truncatingIfNeeded: Int64(Int16(truncatingIfNeeded: b)))
        case 32: return U(truncatingIfNeeded: Int64(Int32(truncatingIfNeeded: b)))
        default: return b
        }
    default: return U(truncatingIfNeeded: S(truncatingIfNeeded: a) >> S(truncatingIfNeeded: shift))  // ARSH
    }
}

@inline(__always)
func compare(_ op: UInt8, _ a: UInt64, _ b: UInt64, narrow: Bool = false) -> Bool {
    let sa = narrow ? Int64(Int32(truncatingIfNeeded: a)) : Int64(bitPattern: a)
    let sb = narrow ? Int64(Int32(truncatingIfNeeded: b)) : Int64(bitPattern: b)
    switch op {
    case BPF.JEQ: return a == b
    case BPF.JGT: return a > b
    case BPF.JGE: return a >= b
    case BPF.JSET: return a & b != 0
    case BPF.JNE: return a != b
    case BPF.JSGT: return sa > sb
    case BPF.JSGE: return sa >= sb
    case BPF.JLT: return a < b
    case BPF.JLE: return a <= b
    case BPF.JSLT: return sa < sb
    default: return sa <= sb  // JSLE
    }
}
