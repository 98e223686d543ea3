// One bit per 64-byte chunk of a 2 MiB block: set = allocated (bpf_prog_pack's bitmap). 32,768 bits,
// 512 words. Searches skip whole words of set or clear bits, so a full or empty stretch costs one
// comparison per 64 chunks.

public struct ChunkBitmap: Sendable {
    public static let wordBits = 64
    private(set) var words: [UInt64]
    public let count: Int

    public init(count: Int) {
        precondition(count % Self.wordBits == 0)
        self.count = count
        words = [UInt64](repeating: 0, count: count / Self.wordBits)
    }

    public subscript(bit: Int) -> Bool { words[bit >> 6] & (1 << UInt64(bit & 63)) != 0 }

    /// Index of the first set bit in `[from, limit)`, or nil.
    public func firstSet(from: Int, limit: Int) -> Int? {
        guard from < limit else { return nil }
        return words.withUnsafeBufferPointer { w in
            var i = from >> 6
            var word = w[i] & (~0 << UInt64(from & 63))
            while true {
                if word != 0 {
                    let bit = (i << 6) + word.trailingZeroBitCount
                    return bit < limit ? bit : nil
                }
                i += 1
                if i << 6 >= limit { return nil }
                word = w[i]
            }
        }
    }

    /// Index of the last set bit below `before`, or nil.
    public func lastSet(before: Int) -> Int? {
        guard before > 0 else { return nil }
        return words.withUnsafeBufferPointer { w in
            var i = (before - 1) >> 6
            let keep = (before - 1) & 63
            var word = w[i] & (keep == 63 ? ~0 : (UInt64(1) << UInt64(keep + 1)) - 1)
            while true {
                if word != 0 { return (i << 6) + 63 - word.leadingZeroBitCount }
                if i == 0 { return nil }
                i -= 1
                word = w[i]
            }
        }
    }

    /// Index of the first clear bit at or after `from`, or `count`.
    public func firstClear(from: Int) -> Int {
        guard from < count else { return count }
        return words.withUnsafeBufferPointer { w in
            var i = from >> 6
            var word = ~w[i] & (~0 << UInt64(from & 63))
            while true {
                if word != 0 { return (i << 6) + word.trailingZeroBitCount }
                i += 1
                if i == w.count { return count }
                word = ~w[i]
            }
        }
    }

    /// First index `>= from`, a multiple of `alignment`, starting `length` clear bits; nil if none.
    public func findClearRun(length: Int, alignment: Int, from: Int) -> Int? {
        var start = align(firstClear(from: from), alignment)
        while start + length <= count {
            guard let blocker = firstSet(from: start, limit: start + length) else { return start }
            start = align(firstClear(from: blocker + 1), alignment)
        }
        return nil
    }

    /// Sets or clears `[start, start + length)`.
    public mutating func assign(_ value: Bool, start: Int, length: Int) {
        precondition(start >= 0 && length > 0 && start + length <= count)
        let end = start + length
        words.withUnsafeMutableBufferPointer { w in
            var i = start
            while i < end {
                let word = i >> 6, lo = i & 63
                let n = min(64 - lo, end - i)
                let mask: UInt64 = (n == 64 ? ~0 : ((1 << UInt64(n)) - 1)) << UInt64(lo)
                if value { w[word] |= mask } else { w[word] &= ~mask }
                i += n
            }
        }
    }

    /// Whether all of `[start, start + length)` is set (or all clear when `value` is false).
    public func all(_ value: Bool, start: Int, length: Int) -> Bool {
        if value { return firstClear(from: start) >= start + length }
        return firstSet(from: start, limit: start + length) == nil
    }

    /// Number of set bits.
    public var population: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// Length of the longest stretch of clear bits.
    public var longestClearRun: Int {
        var best = 0, i = firstClear(from: 0)
        while i < count {
            let end = firstSet(from: i, limit: count) ?? count
            best = max(best, end - i)
            i = firstClear(from: end)
        }
        return best
    }

    @inline(__always)
    private func align(_ value: Int, _ alignment: Int) -> Int { (value + alignment - 1) & ~(alignment - 1) }
}
