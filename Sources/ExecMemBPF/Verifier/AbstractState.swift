// What the verifier knows at one point of a program: for each register, whether it was written and
// what it holds (a scalar in some bounds, or a pointer into one region at some offsets, or a map
// handle), and for the current function's 512-byte stack frame, which bytes were written on every
// path and which 8-byte slots hold a spilled register. Joining two states keeps only what both
// know, so a fact that survives a join holds on every path into that point.

/// What one register holds.
enum AbstractValue: Equatable, Sendable {
    /// Never written on some path: reading it is an error (it may hold host values in JIT code).
    case uninitialized
    /// A number. `length`: exactly the run's context length (r2 at entry, or a copy of it).
    case scalar(Bounds, length: Bool)
    /// An address `region base + offset`, offset within the bounds (signed). For the stack the base is
    /// this function's r10; callers' frames are at offsets 0 and above.
    case pointer(BPFRegion, Bounds)
    /// A map, by index in the program's map list (what `lddw map[N]` loads).
    case mapHandle(Int)
    /// What `bpf_map_lookup_elem` returned: a pointer to a value of map N, or 0. `id` names the call
    /// that made it so that a null test of one copy applies to all copies; 0 when that is unknown.
    case mapValueOrNull(Int, id: Int)

    static let unknownScalar = AbstractValue.scalar(.unknown, length: false)
    static func constant(_ v: UInt64) -> AbstractValue { .scalar(.constant(v), length: false) }

    var isInitialized: Bool {
        if case .uninitialized = self { return false }
        return true
    }

    var bounds: Bounds? {
        if case let .scalar(b, _) = self { return b }
        return nil
    }

    /// The value as another function sees it: a lookup result's id names a call of this function's
    /// own, and two calls of one function would otherwise hand back results with the same id (a null
    /// test of one would then narrow the other).
    var crossingFunctions: AbstractValue {
        if case let .mapValueOrNull(m, _) = self { return .mapValueOrNull(m, id: 0) }
        return self
    }

    func join(_ o: AbstractValue) -> AbstractValue {
        switch (self, o) {
        case (.uninitialized, _), (_, .uninitialized): return .uninitialized
        case let (.scalar(a, la), .scalar(b, lb)): return .scalar(a.union(b), length: la && lb)
        case let (.pointer(r, a), .pointer(q, b)) where r == q: return .pointer(r, a.union(b))
        case let (.mapHandle(a), .mapHandle(b)) where a == b: return self
        case let (.mapValueOrNull(m, i), .mapValueOrNull(n, j)) where m == n: return .mapValueOrNull(m, id: i == j ? i : 0)
        case let (.mapValueOrNull(m, _), .pointer(.map(n), b)) where m == n && b.constant == 0: return .mapValueOrNull(m, id: 0)
        case let (.pointer(.map(n), b), .mapValueOrNull(m, _)) where m == n && b.constant == 0: return .mapValueOrNull(m, id: 0)
        case let (.mapValueOrNull(m, _), .scalar(b, _)) where b.constant == 0: return .mapValueOrNull(m, id: 0)
        case let (.scalar(b, _), .mapValueOrNull(m, _)) where b.constant == 0: return .mapValueOrNull(m, id: 0)
        default: return .unknownScalar
        }
    }

    func widened(to o: AbstractValue, thresholds t: Thresholds) -> AbstractValue {
        switch (self, o) {
        case let (.scalar(a, la), .scalar(b, lb)): return .scalar(a.widened(to: b, thresholds: t), length: la && lb)
        case let (.pointer(r, a), .pointer(q, b)) where r == q: return .pointer(r, a.widened(to: b, thresholds: t))
        default: return join(o)
        }
    }

    /// For messages: what the register holds.
    var described: String {
        switch self {
        case .uninitialized: "not initialized"
        case let .scalar(b, _): b.constant.map { "the number \(Int64(bitPattern: $0))" } ?? "a number"
        case let .pointer(r, _): "a pointer to \(r.described)"
        case let .mapHandle(m): "map \(m)"
        case let .mapValueOrNull(m, _): "a value of map \(m) or null (test it against 0 first)"
        }
    }
}

extension BPFRegion {
    var described: String {
        switch self {
        case .stack: "the stack"
        case .context: "the context"
        case let .map(m): "a value of map \(m)"
        }
    }
}

/// The current function's frame: 512 bytes below r10, as 64 slots of 8 bytes.
struct StackState: Equatable, Sendable {
    static let slots = BPF.stackSize / 8
    /// Bit k of word k / 64: byte `-512 + k` was written on every path.
    var written = SIMD8<UInt64>(repeating: 0)
    /// Slots holding an 8-byte spill of a register, sorted by slot (slot 0 is r10-512).
    var spills: [Spill] = []

    struct Spill: Equatable, Sendable {
        var slot: Int
        var value: AbstractValue
    }

    static func == (a: StackState, b: StackState) -> Bool {
        a.written == b.written && a.spills == b.spills
    }

    /// Byte index (0..<512) of frame offset `offset` (-512..<0).
    static func byte(_ offset: Int) -> Int { offset + BPF.stackSize }

    /// The bits of bytes `[offset, offset + size)` in word `w` (a mask).
    @inline(__always) static func mask(_ offset: Int, _ size: Int, word w: Int) -> UInt64 {
        let lo = max(byte(offset), w * 64), hi = min(byte(offset) + size, w * 64 + 64)
        guard lo < hi else { return 0 }
        let n = hi - lo
        return (n == 64 ? UInt64.max : (1 << UInt64(n)) - 1) << UInt64(lo - w * 64)
    }

    func isWritten(_ offset: Int, _ size: Int) -> Bool {
        for w in (byte(offset) >> 6)...((byte(offset) + size - 1) >> 6) {
            let m = Self.mask(offset, size, word: w)
            if written[w] & m != m { return false }
        }
        return true
    }

    mutating func markWritten(_ offset: Int, _ size: Int) {
        for w in (Self.byte(offset) >> 6)...((Self.byte(offset) + size - 1) >> 6) { written[w] |= Self.mask(offset, size, word: w) }
    }

    private func byte(_ offset: Int) -> Int { Self.byte(offset) }

    /// Index of the first spill at or after `slot` (spills are sorted).
    func firstSpill(atOrAfter slot: Int) -> Int {
        var lo = 0, hi = spills.count
        while lo < hi { let m = (lo + hi) / 2; if spills[m].slot < slot { lo = m + 1 } else { hi = m } }
        return lo
    }

    func spill(at offset: Int) -> AbstractValue? {
        guard offset & 7 == 0 else { return nil }
        let slot = Self.byte(offset) >> 3, k = firstSpill(atOrAfter: slot)
        return k < spills.count && spills[k].slot == slot ? spills[k].value : nil
    }

    /// Forgets spills overlapping `[lo, hi)` (frame offsets, clamped to the frame).
    mutating func clobber(_ lo: Int, _ hi: Int) {
        guard !spills.isEmpty else { return }
        let a = max(lo, -BPF.stackSize), b = min(hi, 0)
        guard a < b else { return }
        let first = firstSpill(atOrAfter: Self.byte(a) >> 3), end = firstSpill(atOrAfter: ((Self.byte(b) - 1) >> 3) + 1)
        if first < end { spills.removeSubrange(first..<end) }
    }

    mutating func setSpill(_ offset: Int, _ value: AbstractValue) {
        let slot = Self.byte(offset) >> 3, k = firstSpill(atOrAfter: slot)
        if k < spills.count && spills[k].slot == slot {
            if spills[k].value != value { spills[k].value = value }
        } else {
            spills.insert(Spill(slot: slot, value: value), at: k)
        }
    }

    func join(_ o: StackState, widen t: Thresholds?) -> StackState {
        var r = StackState()
        r.written = written & o.written
        guard !spills.isEmpty, !o.spills.isEmpty else { return r }
        var a = 0, b = 0  // both sorted by slot: one merge
        while a < spills.count && b < o.spills.count {
            let x = spills[a], y = o.spills[b]
            if x.slot < y.slot { a += 1; continue }
            if y.slot < x.slot { b += 1; continue }
            let v = x.value == y.value ? x.value : t.map { x.value.widened(to: y.value, thresholds: $0) } ?? x.value.join(y.value)
            if v.isInitialized { r.spills.append(Spill(slot: x.slot, value: v)) }
            a += 1; b += 1
        }
        return r
    }
}

/// The whole state at one program point.
struct AbstractState: Equatable, Sendable {
    /// r0-r10; r10 is always the frame pointer.
    var registers: [AbstractValue]
    var stack = StackState()
    /// The context is proven at least this long (from tests of the length in r2).
    var contextLength: UInt64 = 0
    /// Accesses already checked at run time on every path here, through registers unchanged since:
    /// `[r + lo, r + hi)` lies in r's region, so a later access inside it needs no check.
    var checked: [Window] = []

    struct Window: Equatable, Sendable {
        var register: UInt8
        var lo: Int32
        var hi: Int32
    }

    init(registers: [AbstractValue]) { self.registers = registers }

    static func == (a: AbstractState, b: AbstractState) -> Bool {
        guard a.contextLength == b.contextLength, a.checked == b.checked else { return false }
        for k in 0..<11 where a.registers[k] != b.registers[k] { return false }
        return a.stack == b.stack
    }

    /// A register; writing one forgets the checked windows through it.
    subscript(_ r: UInt8) -> AbstractValue {
        get { registers[Int(r)] }
        set {
            registers[Int(r)] = newValue
            if !checked.isEmpty { checked.removeAll { $0.register == r } }
        }
    }

    /// Whether `[r + lo, r + hi)` was checked already.
    func isChecked(_ r: UInt8, _ lo: Int32, _ hi: Int32) -> Bool {
        checked.contains { $0.register == r && $0.lo <= lo && hi <= $0.hi }
    }

    /// Records that `[r + lo, r + hi)` passed its check (merged with a window it touches).
    mutating func markChecked(_ r: UInt8, _ lo: Int32, _ hi: Int32) {
        if let k = checked.firstIndex(where: { $0.register == r && $0.lo <= hi && lo <= $0.hi }) {
            checked[k].lo = min(checked[k].lo, lo); checked[k].hi = max(checked[k].hi, hi)
        } else if checked.count < 16 {
            checked.append(Window(register: r, lo: lo, hi: hi))
        }
    }

    /// Main's state at entry: r1 the context, r2 its length, the others 0 (both engines clear them).
    static var entry: AbstractState {
        var regs = [AbstractValue](repeating: .constant(0), count: 11)
        regs[1] = .pointer(.context, .constant(0))
        regs[2] = .scalar(.unknown, length: true)
        regs[10] = .pointer(.stack, .constant(0))
        return AbstractState(registers: regs)
    }

    /// Joins `o` into this state; returns whether anything changed.
    mutating func join(_ o: borrowing AbstractState, widen t: Thresholds?) -> Bool {
        var changed = false
        for k in 0..<11 where registers[k] != o.registers[k] {
            let v = t.map { registers[k].widened(to: o.registers[k], thresholds: $0) } ?? registers[k].join(o.registers[k])
            if v != registers[k] { registers[k] = v; changed = true }
        }
        if stack != o.stack {
            let joined = stack.join(o.stack, widen: t)
            if joined != stack { stack = joined; changed = true }
        }
        if o.contextLength < contextLength { contextLength = o.contextLength; changed = true }
        if checked != o.checked {
            let kept = checked.compactMap { w -> Window? in
                // What both paths checked: the overlap of windows through the same register.
                guard let v = o.checked.first(where: { $0.register == w.register && $0.lo < w.hi && w.lo < $0.hi }) else { return nil }
                return Window(register: w.register, lo: max(w.lo, v.lo), hi: min(w.hi, v.hi))
            }
            if kept != checked { checked = kept; changed = true }
        }
        return changed
    }

    /// Applies `f` to every register and spill (for null-test propagation and call clean-up).
    mutating func mapValues(_ f: (AbstractValue) -> AbstractValue) {
        for k in 0..<10 { registers[k] = f(registers[k]) }
        for k in stack.spills.indices { stack.spills[k].value = f(stack.spills[k].value) }
    }

    /// Initialized registers as a bit mask (bit n = rn).
    var readableMask: UInt16 {
        var m: UInt16 = 0
        for k in 0..<11 where registers[k].isInitialized { m |= 1 << UInt16(k) }
        return m
    }
}
