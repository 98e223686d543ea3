// Value ranges for the verifier: what a 64-bit register may hold, as an unsigned and a signed
// interval that both hold at once (Linux's umin/umax/smin/smax, without tnums). Every operation
// here over-approximates: the concrete result of the instruction on any values inside the operands'
// bounds lies inside the result's bounds. Constants are evaluated with the interpreter's own ALU, so
// a constant result is exact.

struct Bounds: Equatable, Sendable {
    var umin: UInt64
    var umax: UInt64
    var smin: Int64
    var smax: Int64

    static let unknown = Bounds(umin: 0, umax: .max, smin: .min, smax: .max)

    static func constant(_ v: UInt64) -> Bounds {
        Bounds(umin: v, umax: v, smin: Int64(bitPattern: v), smax: Int64(bitPattern: v))
    }

    /// `[lo, hi]` unsigned; the signed bounds follow from it.
    static func unsigned(_ lo: UInt64, _ hi: UInt64) -> Bounds {
        var b = Bounds(umin: lo, umax: hi, smin: .min, smax: .max)
        _ = b.normalize()
        return b
    }

    /// `[lo, hi]` signed; the unsigned bounds follow from it.
    static func signed(_ lo: Int64, _ hi: Int64) -> Bounds {
        var b = Bounds(umin: 0, umax: .max, smin: lo, smax: hi)
        _ = b.normalize()
        return b
    }

    /// Values of `bits` bits, zero-extended.
    static func width(_ bits: Int) -> Bounds { bits >= 64 ? .unknown : .unsigned(0, (1 << UInt64(bits)) - 1) }

    var constant: UInt64? { umin == umax ? umin : nil }
    var isEmpty: Bool { umin > umax || smin > smax }
    /// Every value fits in 32 bits (so ALU32 and JMP32 see the same numbers as ALU64 and JMP).
    var fits32: Bool { umax <= UInt64(UInt32.max) }

    /// Tightens each pair of bounds with what the other pair implies; false when no value is left.
    mutating func normalize() -> Bool {
        if umin > umax || smin > smax { return false }
        if smin >= 0 {  // all non-negative: the signed range is an unsigned one too
            umin = max(umin, UInt64(smin)); umax = min(umax, UInt64(smax))
        } else if smax < 0 {  // all negative: they are the top half, unsigned
            umin = max(umin, UInt64(bitPattern: smin)); umax = min(umax, UInt64(bitPattern: smax))
        }
        if umax <= UInt64(Int64.max) {
            smin = max(smin, Int64(umin)); smax = min(smax, Int64(umax))
        } else if umin > UInt64(Int64.max) {
            smin = max(smin, Int64(bitPattern: umin)); smax = min(smax, Int64(bitPattern: umax))
        }
        return umin <= umax && smin <= smax
    }

    func union(_ o: Bounds) -> Bounds {
        Bounds(umin: min(umin, o.umin), umax: max(umax, o.umax), smin: min(smin, o.smin), smax: max(smax, o.smax))
    }

    func contains(_ o: Bounds) -> Bool { umin <= o.umin && o.umax <= umax && smin <= o.smin && o.smax <= smax }

    /// Widening at a loop header: a bound that moved jumps to the next threshold outward.
    func widened(to o: Bounds, thresholds t: Thresholds) -> Bounds {
        var w = union(o)
        if o.umax > umax { w.umax = t.unsignedAbove(o.umax) }
        if o.umin < umin { w.umin = t.unsignedBelow(o.umin) }
        if o.smax > smax { w.smax = t.signedAbove(o.smax) }
        if o.smin < smin { w.smin = t.signedBelow(o.smin) }
        _ = w.normalize()
        return w
    }
}

/// Constants the program compares against, and their neighbours: where widened bounds stop.
struct Thresholds: Sendable {
    var unsigned: [UInt64]
    var signed: [Int64]

    /// No thresholds: a widened bound goes straight to its limit.
    static let none = Thresholds(unsigned: [], signed: [])
    private init(unsigned: [UInt64], signed: [Int64]) { self.unsigned = unsigned; self.signed = signed }

    init(_ values: some Sequence<Int64>) {
        var all: [Int64] = [0, 1, -1, 512, -512, Int64(Int32.max), Int64(Int32.min), Int64(UInt32.max)]
        for v in values {
            all.append(v)
            if v != .max { all.append(v + 1) }
            if v != .min { all.append(v - 1) }
        }
        all.sort()
        signed = all.uniqued()
        var u = signed.map { UInt64(bitPattern: $0) }
        u.sort()
        unsigned = u.uniqued()
    }

    func unsignedAbove(_ v: UInt64) -> UInt64 { firstIndex(unsigned, { $0 >= v }).map { unsigned[$0] } ?? .max }
    func unsignedBelow(_ v: UInt64) -> UInt64 { lastIndex(unsigned, { $0 <= v }).map { unsigned[$0] } ?? 0 }
    func signedAbove(_ v: Int64) -> Int64 { firstIndex(signed, { $0 >= v }).map { signed[$0] } ?? .max }
    func signedBelow(_ v: Int64) -> Int64 { lastIndex(signed, { $0 <= v }).map { signed[$0] } ?? .min }

    /// Binary searches over a sorted array for the first element with `p` (p is monotone).
    private func firstIndex<T>(_ a: [T], _ p: (T) -> Bool) -> Int? {
        var lo = 0, hi = a.count
        while lo < hi { let m = (lo + hi) / 2; if p(a[m]) { hi = m } else { lo = m + 1 } }
        return lo < a.count ? lo : nil
    }

    private func lastIndex<T>(_ a: [T], _ p: (T) -> Bool) -> Int? {
        var lo = 0, hi = a.count
        while lo < hi { let m = (lo + hi) / 2; if p(a[m]) { lo = m + 1 } else { hi = m } }
        return lo > 0 ? lo - 1 : nil
    }
}

// MARK: - ALU on bounds

extension Bounds {
    /// The bounds of `a op b` at 64 bits (`offset` is the instruction's, for movsx forms).
    static func alu64(_ op: BPFALU, _ a: Bounds, _ b: Bounds) -> Bounds {
        if let x = a.constant, let y = b.constant, op != .mov {
            return .constant(aluExact(op, x, y, wide: true))
        }
        var r = Bounds.unknown
        switch op {
        case .mov: return b
        case .add:
            let (hi, o1) = a.umax.addingReportingOverflow(b.umax)
            if !o1 { r.umin = a.umin + b.umin; r.umax = hi }
            let (slo, o2) = a.smin.addingReportingOverflow(b.smin), (shi, o3) = a.smax.addingReportingOverflow(b.smax)
            if !o2 && !o3 { r.smin = slo; r.smax = shi }
        case .sub:
            if a.umin >= b.umax { r.umin = a.umin - b.umax; r.umax = a.umax - b.umin }
            let (slo, o1) = a.smin.subtractingReportingOverflow(b.smax), (shi, o2) = a.smax.subtractingReportingOverflow(b.smin)
            if !o1 && !o2 { r.smin = slo; r.smax = shi }
        case .mul:
            let (hi, o) = a.umax.multipliedReportingOverflow(by: b.umax)
            if !o { r.umin = a.umin * b.umin; r.umax = hi }
        case .and:
            r.umax = min(a.umax, b.umax)
            if a.smin >= 0 || b.smin >= 0 { r.smin = 0 }
        case .or:
            r.umin = max(a.umin, b.umin); r.umax = Self.allOnesCovering(max(a.umax, b.umax))
        case .xor:
            r.umax = Self.allOnesCovering(max(a.umax, b.umax))
        case .lsh:
            if let k = b.constant.map({ $0 & 63 }), a.umax <= UInt64.max >> k { r.umin = a.umin << k; r.umax = a.umax << k }
        case .rsh:
            if let k = b.constant.map({ $0 & 63 }) { r.umin = a.umin >> k; r.umax = a.umax >> k } else { r.umax = a.umax }
        case .arsh:
            if let k = b.constant.map({ $0 & 63 }) { r.smin = a.smin >> k; r.smax = a.smax >> k }
        case .div:  // x / 0 = 0; x / d <= x
            if let d = b.constant, d != 0 { r.umin = a.umin / d; r.umax = a.umax / d } else { r.umax = a.umax }
        case .mod:  // x % 0 = x; x % d < d
            if let d = b.constant, d != 0 { r.umax = min(a.umax, d - 1) } else { r.umax = a.umax }
        case .neg, .sdiv, .smod:
            break
        }
        _ = r.normalize()
        return r
    }

    /// The bounds of `a op b` at 32 bits, zero-extended to 64.
    static func alu32(_ op: BPFALU, _ a: Bounds, _ b: Bounds) -> Bounds {
        if let x = a.constant, let y = b.constant {
            return .constant(aluExact(op, x, y, wide: false))
        }
        let full = Bounds.width(32)
        if op == .mov { return b.fits32 ? b : full }
        // When both operands already fit in 32 bits and the 64-bit result does too, the two widths
        // agree (no bit above 31 is produced or consumed). Signed forms and shifts wider than 31
        // differ, so they get the full 32-bit range.
        guard a.fits32, b.fits32, ![.sdiv, .smod, .arsh, .neg].contains(op) else { return full }
        if op == .lsh || op == .rsh, let k = b.constant, k > 31 { return full }
        let r = alu64(op, a, b)
        return r.fits32 ? r : full
    }

    /// 2^k - 1 for the smallest k with v < 2^k.
    static func allOnesCovering(_ v: UInt64) -> UInt64 { v == 0 ? 0 : UInt64.max >> UInt64(v.leadingZeroBitCount) }
}

/// The interpreter's ALU on constants (one source of truth for what each operation computes).
func aluExact(_ op: BPFALU, _ a: UInt64, _ b: UInt64, wide: Bool) -> UInt64 {
    wide ? alu(op, a, b, signed: Int64.self)
        : UInt64(alu(op, UInt32(truncatingIfNeeded: a), UInt32(truncatingIfNeeded: b), signed: Int32.self))
}

// MARK: - Comparisons

extension Bounds {
    /// Narrows `a` and `b` to the values for which `a cond b` holds; nil when none do.
    static func refine(_ cond: BPFCondition, _ a: Bounds, _ b: Bounds) -> (Bounds, Bounds)? {
        var x = a, y = b
        switch cond {
        case .eq:
            x.umin = max(a.umin, b.umin); x.umax = min(a.umax, b.umax)
            x.smin = max(a.smin, b.smin); x.smax = min(a.smax, b.smax)
            y = x
        case .ne:
            if let c = b.constant { x = a.excluding(c) }
            if let c = a.constant { y = b.excluding(c) }
        case .gt:  // a > b
            guard b.umin < .max, a.umax > 0 else { return nil }
            x.umin = max(a.umin, b.umin + 1); y.umax = min(b.umax, a.umax - 1)
        case .ge:
            x.umin = max(a.umin, b.umin); y.umax = min(b.umax, a.umax)
        case .lt:
            guard let (bb, aa) = refine(.gt, b, a) else { return nil }
            x = aa; y = bb
        case .le:
            guard let (bb, aa) = refine(.ge, b, a) else { return nil }
            x = aa; y = bb
        case .sgt:
            guard b.smin < .max, a.smax > .min else { return nil }
            x.smin = max(a.smin, b.smin + 1); y.smax = min(b.smax, a.smax - 1)
        case .sge:
            x.smin = max(a.smin, b.smin); y.smax = min(b.smax, a.smax)
        case .slt:
            guard let (bb, aa) = refine(.sgt, b, a) else { return nil }
            x = aa; y = bb
        case .sle:
            guard let (bb, aa) = refine(.sge, b, a) else { return nil }
            x = aa; y = bb
        case .set:
            if let p = a.constant, let q = b.constant, p & q == 0 { return nil }
            if a.umax == 0 || b.umax == 0 { return nil }
        }
        guard x.normalize(), y.normalize() else { return nil }
        return (x, y)
    }

    /// The bounds without the single value `c` (only an end point can be removed).
    func excluding(_ c: UInt64) -> Bounds {
        var r = self
        if umin == c { if c == .max { r.umax = 0; r.umin = 1 } else { r.umin = c + 1 } }
        if umax == c && umin != umax { r.umax = c &- 1 }
        let s = Int64(bitPattern: c)
        if smin == s && s != .max { r.smin = s + 1 }
        if smax == s && smin != smax && s != .min { r.smax = s - 1 }
        return r
    }
}

extension Array where Element: Equatable {
    /// A sorted array without repeats.
    func uniqued() -> [Element] {
        var out: [Element] = []
        out.reserveCapacity(count)
        for x in self where out.last != x { out.append(x) }
        return out
    }
}
