// The interpreter: the reference engine the JIT is tested against. It runs the verifier's decoded
// form and checks every memory access with the one access rule (`RunContext.allows`), even those the
// verifier proved in bounds: a proven access that fails is reported as a verifier bug, so the
// differential tests catch an unsound proof as a disagreement with the JIT, which trusts it.
//
// Semantics follow RFC 9669: ALU32 results are zero-extended; shifts mask their count; division by
// zero gives 0 and modulo by zero leaves the dividend (its low 32 bits for ALU32); signed division of
// the minimum by -1 gives the minimum and the remainder 0. Local calls keep r6-r9 and r10 for the
// caller and give the callee a fresh 512-byte frame. The budget is charged exactly where the JIT
// charges it (BPFDecoded.charge), so both engines stop at the same instruction.

import Atomics

extension BPFProgram {
    func interpret(memory: UnsafeMutableRawBufferPointer?, budget: UInt64) throws(BPFError) -> UInt64 {
        try RunContext.withContext { run throws(BPFError) in
            defer { run.end() }
            guard run.begin(self, memory: memory, budget: budget) else { throw run.error()! }
            let result: UInt64? = run.asCurrent {
                verified.code.withUnsafeBufferPointer { code in
                    execute(code, run: run, r1: UInt64(UInt(bitPattern: memory?.baseAddress)), r2: UInt64(memory?.count ?? 0))
                }
            }
            if run.get(.fault) != 0, let e = run.error() { throw e }
            return result!
        }
    }

    private struct Frame {
        var returnTo: Int
        var saved: (UInt64, UInt64, UInt64, UInt64, UInt64)  // r6-r9, r10
    }

    /// Runs to exit; nil when the run faulted (the context says why).
    private func execute(_ code: UnsafeBufferPointer<BPFDecoded>, run: RunContext, r1: UInt64, r2: UInt64) -> UInt64? {
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 11) { registers in
            let r = registers.baseAddress!
            r.initialize(repeating: 0, count: 11)
            r[1] = r1; r[2] = r2; r[10] = run.stackTop
            return withUnsafeTemporaryAllocation(of: Frame.self, capacity: BPF.maxCallDepth) { frames in
                execute(code, run: run, r, frames.baseAddress!)
            }
        }
    }

    /// The address of an access, if the access rule allows it; else the run faults.
    @inline(__always)
    private func address(_ base: UInt64, _ d: BPFDecoded, _ at: Int, _ run: RunContext, frame: UInt64) -> UnsafeMutableRawPointer? {
        let a = base &+ UInt64(bitPattern: Int64(d.offset))
        guard run.allows(d.access.region, a, d.size, frame: frame), let p = UnsafeMutableRawPointer(bitPattern: UInt(a)) else {
            run.fault(d.access.check == .proven ? .proofViolated : .outOfBounds, index: at, address: a, frame: frame)
            return nil
        }
        return p
    }

    private func execute(_ code: UnsafeBufferPointer<BPFDecoded>, run: RunContext, _ r: UnsafeMutablePointer<UInt64>,
                         _ frames: UnsafeMutablePointer<Frame>) -> UInt64? {
        var depth = 0
        var budget = run.get(.budget)
        var pc = 0
        while true {
            let d = code[pc]
            let at = pc
            pc += 1
            let dst = Int(d.dst), src = Int(d.src)
            switch d.operation {
            case let .alu(op, wide, register):
                let b = register ? r[src] : d.operand
                r[dst] = wide ? alu(op, r[dst], b, signed: Int64.self)
                    : UInt64(alu(op, UInt32(truncatingIfNeeded: r[dst]), UInt32(truncatingIfNeeded: b), signed: Int32.self))
            case let .movsx(bits, wide):
                let v = r[src]
                let x: Int64 = bits == 8 ? Int64(Int8(truncatingIfNeeded: v)) : bits == 16 ? Int64(Int16(truncatingIfNeeded: v)) : Int64(Int32(truncatingIfNeeded: v))
                r[dst] = wide ? UInt64(bitPattern: x) : UInt64(UInt32(truncatingIfNeeded: x))
            case let .endian(bits, swap):
                let v = r[dst]
                if swap {
                    r[dst] = bits == 16 ? UInt64(UInt16(truncatingIfNeeded: v).byteSwapped) : bits == 32 ? UInt64(UInt32(truncatingIfNeeded: v).byteSwapped) : v.byteSwapped
                } else {
                    r[dst] = bits == 16 ? v & 0xFFFF : bits == 32 ? v & 0xFFFF_FFFF : v
                }
            case let .jump(condition, wide, register):
                if let condition {
                    let b = register ? r[src] : d.operand
                    let taken = wide ? compare(condition, r[dst], b)
                        : compare(condition, UInt64(UInt32(truncatingIfNeeded: r[dst])), UInt64(UInt32(truncatingIfNeeded: b)), narrow: true)
                    guard taken else { continue }
                }
                if d.charge > 0 {  // a back edge: pay for another round of the loop
                    guard budget >= UInt64(d.charge) else { run.fault(.budget, index: Int(d.target)); return nil }
                    budget -= UInt64(d.charge)
                }
                pc = Int(d.target)
            case .exit:
                guard depth > 0 else { return r[0] }
                depth -= 1
                let f = frames[depth]
                (r[6], r[7], r[8], r[9], r[10]) = f.saved
                pc = f.returnTo
            case .callLocal:
                guard depth + 1 < BPF.maxCallDepth else { run.fault(.callDepth, index: at); return nil }
                guard budget >= UInt64(d.charge) else { run.fault(.budget, index: at); return nil }
                budget -= UInt64(d.charge)
                (frames + depth).initialize(to: Frame(returnTo: pc, saved: (r[6], r[7], r[8], r[9], r[10])))
                depth += 1
                r[10] -= UInt64(BPF.stackSize)
                pc = Int(d.target)
            case .callHelper:
                let h = helpers[Int32(truncatingIfNeeded: d.imm)]!
                run.set(.budget, budget)
                r[0] = h.call(r[1], r[2], r[3], r[4], r[5])
                if run.get(.fault) != 0 { run.set(.faultIndex, UInt64(at)); return nil }
                if h.unwindsOnZero && r[0] == 0 { run.set(.unwound, 1); return 0 }
            case .lddw:
                r[dst] = d.operand
                pc += 1
            case let .load(size, signed):
                guard let p = address(r[src], d, at, run, frame: r[10]) else { return nil }
                let v = load(p, Int(size))
                if signed {
                    r[dst] = size == 1 ? UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: v)))
                        : size == 2 ? UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: v))) : UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: v)))
                } else {
                    r[dst] = v
                }
            case let .store(size, register):
                guard let p = address(r[dst], d, at, run, frame: r[10]) else { return nil }
                store(p, Int(size), register ? r[src] : d.operand)
            case let .atomic(op, size):
                guard let p = address(r[dst], d, at, run, frame: r[10]) else { return nil }
                guard UInt(bitPattern: p) % UInt(size) == 0 else {
                    run.fault(.misalignedAtomic, index: at, address: UInt64(UInt(bitPattern: p))); return nil
                }
                atomic(op, p, Int(size), r, src)
            case .unreachable:
                run.fault(.unreachable, index: at)
                return nil
            }
        }
    }

    @inline(__always) private func load(_ p: UnsafeMutableRawPointer, _ size: Int) -> UInt64 {
        switch size {
        case 1: UInt64(p.load(as: UInt8.self))
        case 2: UInt64(p.loadUnaligned(as: UInt16.self))
        case 4: UInt64(p.loadUnaligned(as: UInt32.self))
        default: p.loadUnaligned(as: UInt64.self)
        }
    }

    @inline(__always) private func store(_ p: UnsafeMutableRawPointer, _ size: Int, _ v: UInt64) {
        switch size {
        case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
        case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: v), toByteOffset: 0, as: UInt16.self)
        case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: v), toByteOffset: 0, as: UInt32.self)
        default: p.storeBytes(of: v, toByteOffset: 0, as: UInt64.self)
        }
    }

    private func atomic(_ op: BPFAtomic, _ p: UnsafeMutableRawPointer, _ size: Int, _ r: UnsafeMutablePointer<UInt64>, _ s: Int) {
        if size == 8 { atomic(op, p, UInt64.self, r, s) } else { atomic(op, p, UInt32.self, r, s) }
    }

    /// An atomic at the width of `T`; fetched values come back zero-extended.
    private func atomic<T: FixedWidthInteger & UnsignedInteger & AtomicValue>(_ op: BPFAtomic, _ p: UnsafeMutableRawPointer, _: T.Type,
                                                                               _ r: UnsafeMutablePointer<UInt64>, _ s: Int)
    where T.AtomicRepresentation.Value == T, T: AtomicInteger {
        let a = UnsafeAtomic<T>(at: p.assumingMemoryBound(to: T.AtomicRepresentation.self))
        let v = T(truncatingIfNeeded: r[s])
        switch op {
        case .cmpxchg:
            r[0] = UInt64(a.compareExchange(expected: T(truncatingIfNeeded: r[0]), desired: v, ordering: .sequentiallyConsistent).original)
        case .xchg:
            r[s] = UInt64(a.exchange(v, ordering: .sequentiallyConsistent))
        case let .rmw(kind, fetch):
            let old: T
            switch kind {
            case .add: old = a.loadThenWrappingIncrement(by: v, ordering: .sequentiallyConsistent)
            case .or: old = a.loadThenBitwiseOr(with: v, ordering: .sequentiallyConsistent)
            case .and: old = a.loadThenBitwiseAnd(with: v, ordering: .sequentiallyConsistent)
            default: old = a.loadThenBitwiseXor(with: v, ordering: .sequentiallyConsistent)
            }
            if fetch { r[s] = UInt64(old) }
        }
    }
}

// MARK: - ALU and comparisons

/// One ALU operation at the width of `U` (UInt64 for ALU64, UInt32 for ALU), with `S` its signed twin.
@inline(__always)
func alu<U: FixedWidthInteger & UnsignedInteger, S: FixedWidthInteger & SignedInteger>(
    _ op: BPFALU, _ a: U, _ b: U, signed: S.Type
) -> U {
    let shift = b & U(U.bitWidth - 1)
    switch op {
    case .add: return a &+ b
    case .sub: return a &- b
    case .mul: return a &* b
    case .div: return b == 0 ? 0 : a / b
    case .sdiv:
        if b == 0 { return 0 }
        let x = S(truncatingIfNeeded: a), y = S(truncatingIfNeeded: b)
        return U(truncatingIfNeeded: y == -1 ? 0 &- x : x / y)  // MIN / -1 wraps to MIN
    case .or: return a | b
    case .and: return a & b
    case .lsh: return a << shift
    case .rsh: return a >> shift
    case .neg: return 0 &- a
    case .mod: return b == 0 ? a : a % b
    case .smod:
        if b == 0 { return a }
        let x = S(truncatingIfNeeded: a), y = S(truncatingIfNeeded: b)
        return y == -1 ? 0 : U(truncatingIfNeeded: x % y)
    case .xor: return a ^ b
    case .mov: return b
    case .arsh: return U(truncatingIfNeeded: S(truncatingIfNeeded: a) >> S(truncatingIfNeeded: shift))
    }
}

@inline(__always)
func compare(_ op: BPFCondition, _ a: UInt64, _ b: UInt64, narrow: Bool = false) -> Bool {
    let sa = narrow ? Int64(Int32(truncatingIfNeeded: a)) : Int64(bitPattern: a)
    let sb = narrow ? Int64(Int32(truncatingIfNeeded: b)) : Int64(bitPattern: b)
    switch op {
    case .eq: return a == b
    case .gt: return a > b
    case .ge: return a >= b
    case .set: return a & b != 0
    case .ne: return a != b
    case .sgt: return sa > sb
    case .sge: return sa >= sb
    case .lt: return a < b
    case .le: return a <= b
    case .slt: return sa < sb
    case .sle: return sa <= sb
    }
}
