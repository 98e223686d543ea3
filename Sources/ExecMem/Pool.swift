// The block pool: which 2 MiB slots of each range are committed, and for which type. Both layout
// policies are a rule for where a type may take slots:
//
//   typedBlocks   one pool: text and rodata grow up from the base, data and ro-after-init down from
//                 the top, so the types meet in the middle instead of interleaving.
//   splitRange    fixed sub-ranges, from the base: | text | rodata | data | roAfterInit |
//
// The pool is touched only when a block is committed or released, under its own lock, always taken
// after an arena's lock (never the other way round).

struct RangeState {
    let index: Int
    let base: UInt
    let size: Int
    let note: String
    /// Per slot: 0 free, else type.rawValue + 1.
    var slots: [UInt8]

    init(index: Int, base: UInt, size: Int, note: String) {
        self.index = index
        self.base = base
        self.size = size
        self.note = note
        slots = [UInt8](repeating: 0, count: size >> ExecMemGeometry.blockShift)
    }

    var end: UInt { base + UInt(size) }
    func contains(_ address: UInt) -> Bool { address >= base && address < end }
    var committedSlots: Int { slots.reduce(0) { $0 + ($1 == 0 ? 0 : 1) } }
}

struct Pool {
    var ranges: [RangeState]
    /// Set once the fallback range was tried and could not be reserved.
    var fallbackFailed: String?
    var notes: [String] = []

    /// Slot window `type` may use in a range of `count` slots.
    static func window(for type: ExecMemType, slots count: Int, layout: LayoutPolicy) -> Range<Int> {
        guard case let .splitRange(t, r, d, a) = layout else { return 0..<count }
        var sizes = [t, r, d, a].map { max(1, Int($0 * Double(count))) }
        while sizes.reduce(0, +) > count, let i = sizes.indices.max(by: { sizes[$0] < sizes[$1] }) { sizes[i] -= 1 }
        let start = sizes[..<type.rawValue].reduce(0, +)
        return start..<(start + sizes[type.rawValue])
    }

    /// Claims `count` consecutive free slots for `type` in range `r`; returns the first slot.
    mutating func claim(range r: Int, type: ExecMemType, count: Int, layout: LayoutPolicy) -> Int? {
        let window = Pool.window(for: type, slots: ranges[r].slots.count, layout: layout)
        guard count <= window.count else { return nil }
        let topDown = layout == .typedBlocks && (type == .data || type == .roAfterInit)
        let starts = window.lowerBound...(window.upperBound - count)
        let order: [Int] = topDown ? starts.reversed() : Array(starts)
        var i = 0
        while i < order.count {
            let s = order[i]
            if let busy = (s..<(s + count)).first(where: { ranges[r].slots[$0] != 0 }) {
                // Skip every start that would include the busy slot.
                i += topDown ? s + count - busy : busy - s + 1
                continue
            }
            for k in s..<(s + count) { ranges[r].slots[k] = UInt8(type.rawValue + 1) }
            return s
        }
        return nil
    }

    mutating func unclaim(range r: Int, slot: Int, count: Int) {
        for k in slot..<(slot + count) { ranges[r].slots[k] = 0 }
    }
}
