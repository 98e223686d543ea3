// An arena: everything the allocator knows about one type's blocks, kept in value types under the
// type's lock. Blocks live in an array indexed by slot (range * 1024 + slot), so finding the block of
// an address is arithmetic; per chunk, a block keeps one word saying what starts there (an
// allocation's record, or a free extent's place in its bin), so free and allocate never hash.
//
//   packed block, 2 MiB = 32,768 chunks of 64 B
//   +------+------+------+------+------+-----------------------------+
//   | A    | A    | free | B    | free |  ...  int3 (text) or zero   |
//   +------+------+------+------+------+-----------------------------+
//   bitmap  1      1      0      1      0
//   meta    rec 0  -      ext   rec 1  ext
//
// Free space is kept as extents (maximal runs of free chunks) binned by size, per block, a segregated
// fit in the manner of TLSF: bin k holds extents of [2^k, 2^(k+1)) chunks, k = 0 ... 15, and a 16-bit
// mask per block says which bins are non-empty. Allocation walks the packed blocks in address order
// and takes from the first block's smallest bin whose extents all fit, so live allocations gather in
// the lowest blocks and the highest drain and go back; free merges with free neighbours found by two
// word scans of the bitmap. Neither depends on the number of live allocations.
//
// Invariants (checked by `ExecMemAllocator.checkInvariants`):
//   - a packed block's set bits are exactly its records' chunks, and `usedChunks` counts them;
//   - each maximal free run of a packed block is exactly one extent, found through `meta` at its start;
//   - free chunks hold the type's fill byte (int3 for text, zero otherwise);
//   - chunks at and past `readyChunks` (a fresh block's part still being prepared off the allocation
//     path, see ExecMemAllocator+Finish.swift) are clear, in no extent, and `finishing` is set;
//   - a sealed record's pages are r-- (ro-after-init only; its records are whole pages);
//   - `openCount > 0` exactly when `openView` is set.

struct BlockRecord {
    var id: UInt64
    var size: Int
    var chunks: Int32
    var kind: ExecMemKind
    var sealed: Bool
}

struct BlockState {
    let id: Int
    let range: Int
    let slot: Int
    let serial: UInt64
    /// As the backend committed it; replaced by the finished run once `finishing` is done.
    var run: CommittedRun
    let chunkCount: Int
    /// Chunks from the start that are prepared (hold the fill byte) and so may be handed out; the rest
    /// joins the free space when the block's preparation finishes.
    var readyChunks: Int
    /// The rest of the block's preparation, while it is pending or finished but not yet adopted.
    var finishing: PendingFinish?
    var bitmap: ChunkBitmap
    /// Per chunk of a packed block: `allocationTag | record slot`, `extentTag | bin | position`, or 0.
    var meta: [UInt32]
    var records: [BlockRecord] = []
    var freeRecordSlots: [UInt32] = []
    var liveRecords = 0
    var usedChunks = 0
    /// Write views open on this run (single writes and batches), and the view's address.
    var openCount = 0
    var openView: UInt = 0

    init(id: Int, range: Int, slot: Int, serial: UInt64, run: CommittedRun) {
        self.id = id
        self.range = range
        self.slot = slot
        self.serial = serial
        self.run = run
        chunkCount = run.length >> ExecMemGeometry.chunkShift
        readyChunks = run.preparedLength >> ExecMemGeometry.chunkShift
        let packed = run.length == ExecMemGeometry.blockSize
        bitmap = ChunkBitmap(count: packed ? chunkCount : 0)
        meta = packed ? [UInt32](repeating: 0, count: chunkCount) : []
    }

    /// The placeholder in slots where no run starts.
    static let uncommitted = BlockState(id: -1, range: 0, slot: 0, serial: 0, run: CommittedRun(address: 0, length: 0, type: .text, hugeMapped: false))

    var isCommitted: Bool { id >= 0 }
    var base: UInt { run.address }
    var type: ExecMemType { run.type }
    var isLarge: Bool { run.length > ExecMemGeometry.blockSize }
    var isEmpty: Bool { liveRecords == 0 }
    var freeChunks: Int { chunkCount - usedChunks }

    /// The record slot of the allocation that starts at `chunk`, if one does.
    @inline(__always)
    func recordSlot(at chunk: Int) -> Int? {
        if isLarge { return chunk == 0 && liveRecords == 1 ? 0 : nil }
        let m = meta[chunk]
        return m & ArenaState.allocationTag != 0 ? Int(m & ~ArenaState.allocationTag) : nil
    }

    /// Every live record with its first chunk.
    var liveRecordList: [(start: Int, record: BlockRecord)] {
        if isLarge { return liveRecords == 1 ? [(0, records[0])] : [] }
        var out: [(Int, BlockRecord)] = []
        var i = bitmap.firstSet(from: 0, limit: chunkCount)
        while let c = i {
            if let r = recordSlot(at: c) {
                out.append((c, records[r]))
                i = bitmap.firstSet(from: c + Int(records[r].chunks), limit: chunkCount)
            } else {
                out.append((c, BlockRecord(id: 0, size: 0, chunks: 1, kind: .moduleText, sealed: false)))  // reported by the checker
                i = bitmap.firstSet(from: c + 1, limit: chunkCount)
            }
        }
        return out
    }
}

struct Extent {
    var start: Int32
    var length: Int32
}

struct KindCounters: Equatable {
    var allocations = 0
    var requestedBytes = 0
    var usedBytes = 0
}

struct ArenaState {
    static let binCount = ExecMemGeometry.blockShift - ExecMemGeometry.chunkShift + 1  // 16
    static let allocationTag: UInt32 = 1 << 31
    static let extentTag: UInt32 = 1 << 30
    static let binShift: UInt32 = 25
    static let positionMask: UInt32 = (1 << 25) - 1

    let type: ExecMemType
    /// Slots of the larger range: block id = range * slotsPerRange + slot.
    let slotsPerRange: Int
    /// Committed runs by the id of their first slot; `BlockState.uncommitted` elsewhere. The tables
    /// below are sized at the type's first commit, so a type never used costs nothing.
    var blocks: [BlockState] = []
    /// Slot id -> id of the run covering it, or -1.
    var owner: [Int32] = []
    /// Base of each range this arena has committed in (0 until then, so lookups never touch the
    /// tables before they exist).
    var rangeBase: [UInt] = [0, 0]
    var committed = Set<Int>()
    /// Free extents of packed blocks, per block and bin: `bins[id * binCount + bin]`.
    var bins: [[Extent]] = []
    /// Per block: bit k set when bin k holds an extent.
    var binMasks: [UInt16] = []
    /// Packed blocks of each range in address order: the order allocation tries them.
    var packedOrder: [[Int]] = [[], []]
    /// Blocks whose `finishing` is set, in commit order.
    var unfinished: [Int] = []
    var kinds = [KindCounters](repeating: KindCounters(), count: ExecMemKind.allCases.count)
    var collapseFailures = 0
    /// Allocation ids are `counter << 2 | type`, unique across the allocator.
    var nextCounter: UInt64 = 1
    var nextSerial: UInt64 = 1

    init(type: ExecMemType, slotsPerRange: Int) {
        self.type = type
        self.slotsPerRange = slotsPerRange
    }

    /// Sizes the tables, once, before the first commit.
    mutating func prepareTables() {
        guard blocks.isEmpty else { return }
        let ids = 2 * slotsPerRange
        blocks = [BlockState](repeating: .uncommitted, count: ids)
        owner = [Int32](repeating: -1, count: ids)
        bins = [[Extent]](repeating: [], count: ids * Self.binCount)
        binMasks = [UInt16](repeating: 0, count: ids)
    }

    func id(range r: Int, slot: Int) -> Int { r * slotsPerRange + slot }

    mutating func newAllocationID() -> UInt64 {
        defer { nextCounter += 1 }
        return nextCounter << 2 | UInt64(type.rawValue)
    }

    /// Whether `id` was handed out by this arena (live or not).
    func issued(_ id: UInt64) -> Bool { id & 3 == UInt64(type.rawValue) && id >> 2 >= 1 && id >> 2 < nextCounter }

    /// The id of the run covering `address`, if this arena has one there.
    @inline(__always)
    func blockID(covering address: UInt) -> Int? {
        for r in 0..<2 {
            let base = rangeBase[r]
            guard base != 0, address >= base else { continue }
            let slot = Int((address - base) >> UInt(ExecMemGeometry.blockShift))
            guard slot < slotsPerRange else { continue }
            let o = owner[r * slotsPerRange + slot]
            if o >= 0 { return Int(o) }
        }
        return nil
    }

    // MARK: - Extents

    @inline(__always)
    static func bin(_ length: Int) -> Int { Int.bitWidth - 1 - length.leadingZeroBitCount }

    mutating func insertExtent(_ id: Int, start: Int, length: Int) {
        let b = Self.bin(length), list = id * Self.binCount + b
        let position = bins[list].count
        bins[list].append(Extent(start: Int32(start), length: Int32(length)))
        binMasks[id] |= 1 << UInt16(b)
        blocks[id].meta[start] = Self.extentTag | UInt32(b) << Self.binShift | UInt32(position)
    }

    /// Removes the extent starting at `start` of block `id`; returns its length.
    @discardableResult
    mutating func removeExtent(_ id: Int, start: Int) -> Int {
        let m = blocks[id].meta[start]
        precondition(m & Self.extentTag != 0, "ExecMem: no free extent at chunk \(start) of block \(id)")
        let b = Int(m >> Self.binShift & 0xF), p = Int(m & Self.positionMask), list = id * Self.binCount + b
        let length = Int(bins[list][p].length)
        let last = bins[list].removeLast()
        if p < bins[list].count {
            bins[list][p] = last
            blocks[id].meta[Int(last.start)] = Self.extentTag | UInt32(b) << Self.binShift | UInt32(p)
        } else if p == 0 {
            binMasks[id] &= ~(1 << UInt16(b))
        }
        blocks[id].meta[start] = 0
        return length
    }

    /// Takes `chunks` chunks aligned to `alignment` chunks from range `r`: from the lowest block with
    /// a fitting extent, its smallest bin whose extents are all long enough (the bin below, where only
    /// some are, is tried last). Returns the block id and first chunk.
    mutating func takeChunks(_ chunks: Int, alignment: Int, range r: Int) -> (Int, Int)? {
        let floorBin = Self.bin(chunks)
        let firstFitting = chunks & (chunks - 1) == 0 ? floorBin : floorBin + 1
        let fitting: UInt16 = firstFitting < Self.binCount ? ~0 << UInt16(firstFitting) : 0
        let floorBit: UInt16 = firstFitting != floorBin ? 1 << UInt16(floorBin) : 0
        for id in packedOrder[r] {
            var mask = binMasks[id] & (fitting | floorBit)
            guard mask != 0 else { continue }
            // Fitting bins from the smallest up, then the floor bin.
            var candidates = mask & fitting
            if candidates == 0 { candidates = floorBit }
            while candidates != 0 {
                let b = candidates.trailingZeroBitCount, list = id * Self.binCount + b
                var p = bins[list].count - 1
                while p >= 0 {
                    let start = Int(bins[list][p].start), end = start + Int(bins[list][p].length)
                    let aligned = (start + alignment - 1) & ~(alignment - 1)
                    if aligned + chunks <= end {
                        removeExtent(id, start: start)
                        if aligned > start { insertExtent(id, start: start, length: aligned - start) }
                        if aligned + chunks < end { insertExtent(id, start: aligned + chunks, length: end - aligned - chunks) }
                        blocks[id].bitmap.assign(true, start: aligned, length: chunks)
                        blocks[id].usedChunks += chunks
                        return (id, aligned)
                    }
                    p -= 1
                }
                mask &= ~(1 << UInt16(b))
                candidates &= ~(1 << UInt16(b))
                if candidates == 0 && mask & floorBit != 0 && b != floorBin { candidates = floorBit }
            }
        }
        return nil
    }

    /// Adds a committed packed block to the allocation order, with its prepared part as one extent.
    mutating func addPackedBlock(_ id: Int) {
        let r = blocks[id].range
        let i = packedOrder[r].firstIndex { $0 > id } ?? packedOrder[r].count
        packedOrder[r].insert(id, at: i)
        insertExtent(id, start: 0, length: blocks[id].readyChunks)
    }

    /// Makes chunks up to `ready` of a packed block free, merged with the free run that ends where
    /// the prepared part ended.
    mutating func extendPrepared(_ id: Int, to ready: Int) {
        let old = blocks[id].readyChunks
        guard ready > old else { return }
        blocks[id].readyChunks = ready
        guard !blocks[id].isLarge else { return }
        let bitmap = blocks[id].bitmap
        let left = old > 0 && !bitmap[old - 1] ? (bitmap.lastSet(before: old).map { $0 + 1 } ?? 0) : old
        if left < old { removeExtent(id, start: left) }
        insertExtent(id, start: left, length: ready - left)
    }

    /// Takes an empty packed block out of the allocation order before it is released.
    mutating func removePackedBlock(_ id: Int) {
        removeExtent(id, start: 0)
        packedOrder[blocks[id].range].removeAll { $0 == id }
    }

    /// Every extent of block `id`, for checks and statistics.
    func extents(of id: Int) -> [Extent] {
        (0..<Self.binCount).flatMap { bins[id * Self.binCount + $0] }
    }

    /// Returns chunks of a packed block, merged with free neighbours into one extent.
    mutating func giveChunks(_ id: Int, start: Int, chunks: Int) {
        blocks[id].bitmap.assign(false, start: start, length: chunks)
        blocks[id].usedChunks -= chunks
        let bitmap = blocks[id].bitmap, count = blocks[id].readyChunks
        let end = start + chunks
        let left = start > 0 && !bitmap[start - 1] ? (bitmap.lastSet(before: start).map { $0 + 1 } ?? 0) : start
        let right = end < count && !bitmap[end] ? (bitmap.firstSet(from: end, limit: count) ?? count) : end
        if left < start { removeExtent(id, start: left) }
        if right > end { removeExtent(id, start: end) }
        insertExtent(id, start: left, length: right - left)
    }

    // MARK: - Records

    /// Adds a record for an allocation starting at `start` of block `id`; returns its slot.
    mutating func addRecord(_ id: Int, start: Int, _ record: BlockRecord) -> Int {
        let slot: Int
        if let s = blocks[id].freeRecordSlots.popLast() {
            slot = Int(s)
            blocks[id].records[slot] = record
        } else {
            slot = blocks[id].records.count
            blocks[id].records.append(record)
        }
        blocks[id].liveRecords += 1
        if !blocks[id].isLarge { blocks[id].meta[start] = Self.allocationTag | UInt32(slot) }
        return slot
    }

    /// Removes the record in `slot` of block `id`, which starts at `start`, and returns it.
    mutating func removeRecord(_ id: Int, start: Int, slot: Int) -> BlockRecord {
        let record = blocks[id].records[slot]
        blocks[id].records[slot].id = 0  // a freed slot matches no handle
        blocks[id].liveRecords -= 1
        if blocks[id].isLarge { return record }
        blocks[id].freeRecordSlots.append(UInt32(slot))
        blocks[id].meta[start] = 0
        return record
    }
}
