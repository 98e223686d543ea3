// What each instruction does to the verifier's state: ALU on scalars and pointers, loads and stores
// (the one access rule: an access may touch only the region its pointer was derived from; proven
// accesses need no run-time check), and helper calls (arguments checked against the helper's
// prototype, r1-r5 unreadable afterwards).

extension Analysis {
    mutating func transferLddw(_ s: inout AbstractState, _ d: BPFDecoded, at i: Int) {
        let raw = program[i]
        switch raw.src {
        case 1: s[d.dst] = .mapHandle(Int(raw.imm))
        case 2: s[d.dst] = .pointer(.map(Int(raw.imm)), .constant(UInt64(UInt32(bitPattern: program[i + 1].imm))))
        default: s[d.dst] = .constant(UInt64(bitPattern: d.imm))
        }
    }

    mutating func transfer(_ s: inout AbstractState, _ d: BPFDecoded, at i: Int) throws(BPFError) {
        switch d.operation {
        case let .alu(op, wide, register):
            let b = register ? try read(s, d.src, at: i) : .constant(wide ? d.operand : UInt64(UInt32(truncatingIfNeeded: d.imm)))
            if op == .mov {
                s[d.dst] = wide ? b : (b.bounds.map { .scalar(Bounds.alu32(.mov, .unknown, $0), length: false) } ?? .scalar(.width(32), length: false))
                return
            }
            let a = try read(s, d.dst, at: i)
            s[d.dst] = alu(op, wide: wide, a, b)
        case let .movsx(bits, wide):
            let v = try read(s, d.src, at: i)
            s[d.dst] = .scalar(Self.signExtend(v.bounds ?? .unknown, bits: Int(bits), wide: wide), length: false)
        case let .endian(bits, swap):
            let v = try read(s, d.dst, at: i)
            if !swap && bits == 64 { return }  // le64 is no operation here
            guard let b = v.bounds else { s[d.dst] = .scalar(.width(Int(bits)), length: false); return }
            if let c = b.constant {
                let r = swap ? (bits == 16 ? UInt64(UInt16(truncatingIfNeeded: c).byteSwapped) : bits == 32 ? UInt64(UInt32(truncatingIfNeeded: c).byteSwapped) : c.byteSwapped)
                    : c & ((1 << UInt64(bits)) - 1)
                s[d.dst] = .constant(r)
            } else {
                s[d.dst] = .scalar(!swap && b.umax <= Bounds.width(Int(bits)).umax ? b : .width(Int(bits)), length: false)
            }
        case .callHelper:
            try callHelper(&s, d, at: i)
        case let .load(size, signed):
            let a = try access(s, base: d.src, d, at: i, write: false)
            code[i].access = a
            remember(&s, a, base: d.src, d)
            var value: AbstractValue = .scalar(signed ? .signed(-(1 << Int64(size * 8 - 1)), (1 << Int64(size * 8 - 1)) - 1) : .width(Int(size) * 8), length: false)
            if a.region == .stack, size == 8, let off = stackOffset(s, d.src, d), let spilled = s.stack.spill(at: off) { value = spilled }
            s[d.dst] = value
        case let .store(size, register):
            let v: AbstractValue = register ? try read(s, d.src, at: i) : .constant(UInt64(bitPattern: d.imm))
            let a = try access(s, base: d.dst, d, at: i, write: true)
            code[i].access = a
            remember(&s, a, base: d.dst, d)
            if a.region == .stack { stackWrite(&s, base: d.dst, d, spill: size == 8 && register ? v : nil) }
        case let .atomic(op, size):
            let v = try read(s, d.src, at: i)
            if op == .cmpxchg { _ = try read(s, 0, at: i) }
            guard v.bounds != nil else { throw fail(i, "an atomic operand must be a number, r\(d.src) is \(v.described)") }
            let a = try access(s, base: d.dst, d, at: i, write: true, atomic: true)
            code[i].access = a
            remember(&s, a, base: d.dst, d)
            if a.region == .stack { stackWrite(&s, base: d.dst, d, spill: nil) }
            let old = AbstractValue.scalar(.width(Int(size) * 8), length: false)
            switch op {
            case .cmpxchg: s[0] = old
            case .xchg, .rmw(_, fetch: true): s[d.src] = old
            default: break
            }
        default:
            break
        }
    }

    // MARK: - ALU

    func alu(_ op: BPFALU, wide: Bool, _ a: AbstractValue, _ b: AbstractValue) -> AbstractValue {
        switch (a, b) {
        case let (.scalar(x, _), .scalar(y, _)):
            return .scalar(wide ? Bounds.alu64(op, x, y) : Bounds.alu32(op, x, y), length: false)
        case let (.pointer(r, off), .scalar(y, _)) where wide && (op == .add || op == .sub):
            return .pointer(r, Bounds.alu64(op, off, y))
        case let (.scalar(x, _), .pointer(r, off)) where wide && op == .add:
            return .pointer(r, Bounds.alu64(.add, off, x))
        case let (.pointer(r, x), .pointer(q, y)) where wide && op == .sub && r == q && !r.isMap:
            // Stack and context offsets share one base; map offsets are from the start of *some*
            // value (two lookups may return different elements), so their difference is unknown.
            return .scalar(Bounds.alu64(.sub, x, y), length: false)
        default:
            // Anything else done to a pointer or map handle leaves a number, which is never memory.
            return .scalar(wide ? .unknown : .width(32), length: false)
        }
    }

    static func signExtend(_ b: Bounds, bits: Int, wide: Bool) -> Bounds {
        let lo = -(Int64(1) << Int64(bits - 1)), hi = (Int64(1) << Int64(bits - 1)) - 1
        if let c = b.constant {
            let v: Int64 = bits == 8 ? Int64(Int8(truncatingIfNeeded: c)) : bits == 16 ? Int64(Int16(truncatingIfNeeded: c)) : Int64(Int32(truncatingIfNeeded: c))
            return .constant(wide ? UInt64(bitPattern: v) : UInt64(UInt32(truncatingIfNeeded: v)))
        }
        if b.umax <= UInt64(hi) { return b }  // already a small non-negative number
        return wide ? .signed(lo, hi) : .width(32)
    }

    // MARK: - Memory

    /// The constant frame offset of `[r + d.offset]` when `r` points into this function's frame.
    func stackOffset(_ s: AbstractState, _ r: UInt8, _ d: BPFDecoded) -> Int? {
        guard case let .pointer(.stack, off) = s[r], let c = off.constant else { return nil }
        let (o, overflow) = Int64(bitPattern: c).addingReportingOverflow(Int64(d.offset))
        return !overflow && o >= -Int64(BPF.stackSize) && o <= -Int64(d.size) ? Int(o) : nil
    }

    /// What a write through `[base + offset]` into the stack does to the frame: an exact write marks
    /// its bytes written and may spill a register; any other forgets the spills it may overlap.
    func stackWrite(_ s: inout AbstractState, base: UInt8, _ d: BPFDecoded, spill: AbstractValue?) {
        if let off = stackOffset(s, base, d) {
            s.stack.markWritten(off, d.size)
            if let spill, off & 7 == 0 { s.stack.setSpill(off, spill) } else { s.stack.clobber(off, off + d.size) }
            return
        }
        guard case let .pointer(.stack, off) = s[base] else { return }
        let range = Self.shift(off, Int(d.offset))
        if range.smin > -Int64(Int32.max) && range.smax < Int64(Int32.max) {
            s.stack.clobber(Int(range.smin), Int(range.smax) + d.size)
        } else {
            s.stack.spills = []
        }
    }

    /// After a run-time check passed, the same bytes through the same register need none.
    func remember(_ s: inout AbstractState, _ a: BPFAccess, base: UInt8, _ d: BPFDecoded) {
        if a.check != .proven { s.markChecked(base, Int32(d.offset), Int32(d.offset) + Int32(d.size)) }
    }

    /// Checks an access through `[base + offset]` and decides how the engines check it.
    mutating func access(_ s: AbstractState, base: UInt8, _ d: BPFDecoded, at i: Int, write: Bool,
                         atomic: Bool = false) throws(BPFError) -> BPFAccess {
        let v = try read(s, base, at: i)
        let size = d.size
        guard case let .pointer(region, off) = v else {
            switch v {
            case .mapValueOrNull: throw fail(i, "r\(base) may be null: test it against 0 before the access")
            case .mapHandle: throw fail(i, "r\(base) is a map handle, not memory (look a value up with bpf_map_lookup_elem)")
            default: throw fail(i, "r\(base) is \(v.described), not a pointer: memory is reached only from r1 (the context), r10 (the stack) and map values")
            }
        }
        let range = Self.shift(off, Int(d.offset))
        let lo = range.smin, hi = range.smax
        let bounded = range.smin > Int64.min / 2 && range.smax < Int64.max / 2  // no overflow in what follows
        var check = BPFAccess.Check.region
        switch region {
        case .stack:
            if bounded && hi + Int64(size) <= -Int64(BPF.stackSize) {
                throw fail(i, "stack access at r10\(lo) is below the \(BPF.stackSize)-byte frame")
            }
            let own = bounded && lo >= -Int64(BPF.stackSize) && hi + Int64(size) <= 0
            if own { check = .proven }
            if (!write || atomic) && !(own && s.stack.isWritten(Int(lo), Int(hi - lo) + size)) { needsZeroedStack = true }
            // A write that may land in a caller's frame: callers forget their spilled registers.
            if write && !own { markWritesAbove(Int(functionOf[i])) }
        case .context:
            if bounded && hi + Int64(size) <= 0 { throw fail(i, "context access at offset \(lo) is before the context") }
            if bounded && lo >= 0 && UInt64(hi) + UInt64(size) <= s.contextLength {
                check = .proven
            } else if lo == hi && lo >= 0 && lo <= Int64(Int32.max) - Int64(size) {
                check = .contextEnd(Int32(lo) + Int32(size))
            }
        case let .map(m):
            let map = maps[m]
            if write && map.readOnly { throw fail(i, "map '\(map.name)' is read-only to programs") }
            if bounded && lo >= 0 && hi + Int64(size) <= Int64(map.valueSize) { check = .proven }
        }
        if check != .proven && s.isChecked(base, Int32(d.offset), Int32(d.offset) + Int32(size)) { check = .proven }
        // Natural alignment: frames and map values are 8-byte aligned; the context may be anything.
        let aligned = region != .context && lo == hi && bounded && lo % Int64(size) == 0
        return BPFAccess(region: region, check: check, aligned: aligned)
    }
}

// MARK: - Helper calls

extension Analysis {
    mutating func callHelper(_ s: inout AbstractState, _ d: BPFDecoded, at i: Int) throws(BPFError) {
        var number = Int32(truncatingIfNeeded: d.imm)
        if program[i].opcode == BPF.CALLX {
            let v = try read(s, d.dst, at: i)
            guard let c = v.bounds?.constant, let n = Int32(exactly: Int64(bitPattern: c)) else {
                throw fail(i, "callx needs a register whose value the verifier knows (a helper number); r\(d.dst) is \(v.described)")
            }
            number = n
            code[i].imm = Int64(n)
        }
        guard let h = helpers[number] else { throw fail(i, "call to unknown helper \(number)") }
        var map: Int? = nil
        var passesStack = false
        for (k, argument) in h.prototype.arguments.enumerated() {
            let r = UInt8(k + 1)
            let v = try read(s, r, at: i)
            switch argument {
            case .value:
                if case .pointer(.stack, _) = v { passesStack = true }
            case .map:
                guard case let .mapHandle(m) = v else { throw fail(i, "\(h.name): r\(r) must be a map (lddw map[N]), is \(v.described)") }
                map = m
            case .mapKey, .mapValue:
                guard let m = map else { throw fail(i, "\(h.name): its prototype names a key or value before the map") }
                let size = argument == .mapKey ? maps[m].keySize : maps[m].valueSize
                try helperMemory(s, v, size: size, register: r, what: argument == .mapKey ? "key" : "value", helper: h.name, at: i)
            }
        }
        switch h.prototype.result {
        case .number:
            s[0] = .unknownScalar
        case .mapValueOrNull:
            guard map != nil else { throw fail(i, "\(h.name): its prototype returns a map value but takes no map") }
            // Older copies from this call site can no longer be told apart from the new one.
            s.mapValues { v in if case let .mapValueOrNull(m, id) = v, id == i + 1 { return .mapValueOrNull(m, id: 0) }; return v }
            s[0] = .mapValueOrNull(map ?? 0, id: i + 1)
        }
        for r: UInt8 in 1...5 { s[r] = .uninitialized }
        if passesStack {
            // The helper may read any of it (so it must hold no stale bytes) and write any of it.
            needsZeroedStack = true
            s.stack.spills = []
            markWritesAbove(Int(functionOf[i]))
        }
    }

    /// A pointer a helper reads `size` bytes through: proven within its region.
    mutating func helperMemory(_ s: AbstractState, _ v: AbstractValue, size: Int, register r: UInt8, what: String, helper: String,
                               at i: Int) throws(BPFError) {
        guard case let .pointer(region, off) = v else { throw fail(i, "\(helper): the \(what) r\(r) must point to memory, is \(v.described)") }
        let lo = off.smin, hi = off.smax
        let bounded = lo > Int64.min / 2 && hi < Int64.max / 2
        var ok = false
        switch region {
        case .stack:
            ok = bounded && lo >= -Int64(BPF.stackSize) && hi + Int64(size) <= 0
            if ok && !s.stack.isWritten(Int(lo), Int(hi - lo) + size) { needsZeroedStack = true }
        case .context:
            ok = bounded && lo >= 0 && UInt64(hi) + UInt64(size) <= s.contextLength
        case let .map(m):
            ok = bounded && lo >= 0 && hi + Int64(size) <= Int64(maps[m].valueSize)
        }
        guard ok else {
            let hint = region == .context ? " (test the context length in r2 first)" : region == .stack ? " (it must lie in this function's frame)" : ""
            throw fail(i, "\(helper): the \(size)-byte \(what) at r\(r) is not proven within \(region.described)\(hint)")
        }
    }
}
