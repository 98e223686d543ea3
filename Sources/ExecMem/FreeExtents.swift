// The free space of a type's packed blocks as extents (maximal runs of free chunks), binned by size:
// a segregated fit in the manner of TLSF. Allocation takes an extent from the smallest bin whose
// extents are all large enough, so it never scans the bitmap; free merges the new extent with its
// free neighbours, found with two word scans of the block's bitmap. Both are O(1) in the number of
// allocations, which is what keeps the allocator's hot path flat at 10,000 live allocations.
//
//   bin k holds extents of length [2^k, 2^(k+1)) chunks; k = 0 ... 15 (32,768 chunks = 2 MiB)
//
// Invariants (checked by `ExecMemAllocator.checkInvariants`): every maximal free run of every packed
// block is exactly one extent, and `index` finds each extent at its bin and position.

struct FreeExtents {
    struct Extent {
        let block: Block
        let start: Int
        let length: Int
    }

    static let binCount = ExecMemGeometry.blockShift - ExecMemGeometry.chunkShift + 1  // 16
    private(set) var bins = [[Extent]](repeating: [], count: binCount)
    /// Extent key (block serial << 16 | start chunk) -> (bin, position in the bin).
    private var index: [UInt64: (bin: Int, position: Int)] = [:]

    @inline(__always)
    static func bin(_ length: Int) -> Int { Int.bitWidth - 1 - length.leadingZeroBitCount }

    @inline(__always)
    static func key(_ block: Block, _ start: Int) -> UInt64 { block.serial << 16 | UInt64(start) }

    var count: Int { index.count }

    mutating func insert(_ block: Block, start: Int, length: Int) {
        let b = Self.bin(length)
        index[Self.key(block, start)] = (b, bins[b].count)
        bins[b].append(Extent(block: block, start: start, length: length))
    }

    /// Removes the extent that starts at `start` of `block`; returns its length.
    @discardableResult
    mutating func remove(_ block: Block, start: Int) -> Int? {
        guard let (b, p) = index.removeValue(forKey: Self.key(block, start)) else { return nil }
        let length = bins[b][p].length
        let last = bins[b].removeLast()
        if p < bins[b].count {
            bins[b][p] = last
            index[Self.key(last.block, last.start)] = (b, p)
        }
        return length
    }

    /// Takes `chunks` chunks aligned to `alignment` chunks from some extent; returns the block and
    /// the first chunk, having reinserted what is left on either side.
    mutating func take(chunks: Int, alignment: Int) -> (Block, Int)? {
        let floorBin = Self.bin(chunks)
        let firstFitting = chunks & (chunks - 1) == 0 ? floorBin : floorBin + 1
        // Bins at or above `firstFitting` hold only extents long enough (barring alignment); the
        // floor bin is searched last, since only some of its extents fit.
        for b in Array(firstFitting..<Self.binCount) + [floorBin] {
            for p in stride(from: bins[b].count - 1, through: 0, by: -1) {
                let e = bins[b][p]
                let aligned = (e.start + alignment - 1) & ~(alignment - 1)
                guard aligned + chunks <= e.start + e.length else { continue }
                remove(e.block, start: e.start)
                if aligned > e.start { insert(e.block, start: e.start, length: aligned - e.start) }
                let end = aligned + chunks
                if end < e.start + e.length { insert(e.block, start: end, length: e.start + e.length - end) }
                return (e.block, aligned)
            }
        }
        return nil
    }

    /// The extent that starts at `start` of `block`, if any.
    func length(_ block: Block, start: Int) -> Int? {
        index[Self.key(block, start)].map { bins[$0.bin][$0.position].length }
    }

    /// Every extent, for invariant checks and statistics.
    var all: [Extent] { bins.flatMap { $0 } }
}
