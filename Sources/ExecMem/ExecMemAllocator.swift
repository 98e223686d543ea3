// The allocator: Linux's execmem_alloc/execmem_free for one process. Memory comes from one range
// near the host executable, in 2 MiB blocks typed text, rodata, data or ro-after-init; small requests
// are packed into 64-byte chunks of shared blocks (bpf_prog_pack), large ones take runs of blocks.
//
// Locking: one lock per type (an arena) covers its blocks, bitmaps and records; the hot path takes
// it once and makes no system call while a block has room. The pool lock is taken, after an arena
// lock, only to claim or return slots.

import ExecMemSystem
import Synchronization

public final class ExecMemAllocator: Sendable {
    public let configuration: ExecMemConfiguration
    public let backend: any ExecMemBackend
    /// The executable the primary range was placed near, when it was found.
    public let hostImage: HostImage?
    /// The primary range, fixed for the allocator's life.
    public let primaryBase: UInt
    public let primarySize: Int

    let arenas: [Arena]
    let pool: Mutex<Pool>
    let serials = Atomic<UInt64>(1)

    final class Arena: Sendable {
        let type: ExecMemType
        let state: Mutex<ArenaState>
        init(type: ExecMemType) {
            self.type = type
            state = Mutex(ArenaState())
        }
    }

    struct ArenaState {
        /// Every run of this type, by base address.
        var blocks: [UInt: Block] = [:]
        /// Free extents of packed blocks, per range (0 primary, 1 fallback).
        var free = [FreeExtents(), FreeExtents()]
        var kinds = [KindCounters](repeating: KindCounters(), count: ExecMemKind.allCases.count)
        var collapseFailures = 0
    }

    struct KindCounters {
        var allocations = 0
        var requestedBytes = 0
        var usedBytes = 0
    }

    /// Reserves the primary range (nothing is committed yet).
    ///
    /// - Parameter backend: overrides the backing the configuration names (the simulator's model).
    public init(_ configuration: ExecMemConfiguration = .init(), backend: (any ExecMemBackend)? = nil) throws(ExecMemError) {
        try configuration.validate()
        self.configuration = configuration
        self.backend = backend ?? Self.makeBackend(configuration)
        var rng: any RandomNumberGenerator = configuration.randomSeed.map { SplitMix64(state: $0) } ?? SystemRandomNumberGenerator()
        let placed = try RangePlacer.place(size: configuration.rangeSize, placement: configuration.placement,
                                           backend: self.backend, rng: &rng)
        primaryBase = placed.base
        primarySize = configuration.rangeSize
        hostImage = HostImage.current()
        pool = Mutex(Pool(ranges: [RangeState(index: 0, base: placed.base, size: configuration.rangeSize, note: placed.note)]))
        arenas = ExecMemType.allCases.map { Arena(type: $0) }
        Membarrier.register()
    }

    deinit {
        for arena in arenas {
            arena.state.withLock { s in
                for block in s.blocks.values { backend.decommit(block.run) }
            }
        }
        pool.withLock { p in for r in p.ranges { backend.release(base: r.base, size: r.size) } }
    }

    static func makeBackend(_ c: ExecMemConfiguration) -> any ExecMemBackend {
        switch c.backing {
        case .memfd: MemfdBackend(writeMode: c.writeView, collapse: c.collapseHugePages)
        case .hugetlb: MemfdBackend(hugeTLB: true, writeMode: c.writeView)
        case .anonymous: AnonymousBackend(collapse: c.collapseHugePages)
        }
    }

    // MARK: - Allocation

    /// Allocates `size` bytes for `kind` (execmem_alloc). Text comes back filled with `int3`, every
    /// other type zeroed.
    ///
    /// - Parameter alignment: a power of two up to 2 MiB; the kind's alignment and 64 B are minimums.
    public func allocate(_ kind: ExecMemKind, size: Int, alignment: Int = 1) throws(ExecMemError) -> Allocation {
        let k = configuration.range(for: kind)
        if size <= 0 { throw .badSize(size: size, kind: kind, reason: "sizes start at 1 byte") }
        if size > configuration.rangeSize {
            throw .badSize(size: size, kind: kind, reason: "larger than the \(configuration.rangeSize)-byte range")
        }
        if alignment < 1 || alignment > ExecMemGeometry.blockSize || alignment & (alignment - 1) != 0 {
            throw .badAlignment(alignment: alignment, kind: kind)
        }
        let granule = k.type.granule
        let align = max(alignment, k.alignment, granule)
        let arena = arenas[k.type.rawValue]
        let id = serials.wrappingAdd(1, ordering: .relaxed).oldValue
        return try arena.state.withLock { (s) throws(ExecMemError) -> Allocation in
            if size > ExecMemGeometry.blockSize {
                return try allocateLarge(&s, kind: kind, type: k.type, size: size, ranges: k.ranges, id: id)
            }
            let chunks = ((size + granule - 1) & ~(granule - 1)) >> ExecMemGeometry.chunkShift
            let alignChunks = align >> ExecMemGeometry.chunkShift
            for r in rangeOrder(k.ranges) {
                var found = s.free[r].take(chunks: chunks, alignment: alignChunks)
                if found == nil, try commitRun(&s, type: k.type, range: r, slots: 1) != nil {
                    found = s.free[r].take(chunks: chunks, alignment: alignChunks)
                }
                if let (block, start) = found {
                    block.take(start: start, chunks: chunks)
                    return record(&s, block, start: start, chunks: chunks, size: size, kind: kind, id: id)
                }
            }
            throw .rangeExhausted(kind: kind, type: k.type, size: size, ranges: rangeNames(k.ranges))
        }
    }

    private func allocateLarge(_ s: inout ArenaState, kind: ExecMemKind, type: ExecMemType, size: Int,
                               ranges: RangeChoice, id: UInt64) throws(ExecMemError) -> Allocation {
        let slots = (size + ExecMemGeometry.blockSize - 1) >> ExecMemGeometry.blockShift
        for r in rangeOrder(ranges) {
            if let block = try commitRun(&s, type: type, range: r, slots: slots) {
                block.usedChunks = block.chunkCount
                return record(&s, block, start: 0, chunks: block.chunkCount, size: size, kind: kind, id: id)
            }
        }
        throw .rangeExhausted(kind: kind, type: type, size: size, ranges: rangeNames(ranges))
    }

    private func record(_ s: inout ArenaState, _ block: Block, start: Int, chunks: Int, size: Int,
                        kind: ExecMemKind, id: UInt64) -> Allocation {
        block.records[Int32(start)] = Block.Record(id: id, chunks: Int32(chunks), size: size, kind: kind, sealed: false)
        let capacity = chunks << ExecMemGeometry.chunkShift
        s.kinds[kind.rawValue].allocations += 1
        s.kinds[kind.rawValue].requestedBytes += size
        s.kinds[kind.rawValue].usedBytes += capacity
        return Allocation(address: block.base + UInt(start << ExecMemGeometry.chunkShift), size: size,
                          capacity: capacity, kind: kind, type: block.type, id: id)
    }

    private func rangeOrder(_ choice: RangeChoice) -> [Int] {
        switch choice {
        case .primaryThenFallback: configuration.fallbackSize > 0 ? [0, 1] : [0]
        case .primaryOnly: [0]
        case .fallbackOnly: configuration.fallbackSize > 0 ? [1] : []
        }
    }

    private func rangeNames(_ choice: RangeChoice) -> String {
        rangeOrder(choice).map { $0 == 0 ? "the primary range (\(primarySize) bytes)" : "the fallback range (\(configuration.fallbackSize) bytes)" }
            .joined(separator: " and ")
    }

    /// Claims slots and commits a run; nil when the range has no room.
    private func commitRun(_ s: inout ArenaState, type: ExecMemType, range r: Int, slots: Int) throws(ExecMemError) -> Block? {
        let claim: Result<(RangeState, Int)?, ExecMemError> = pool.withLock { p in
            if r == 1 && p.ranges.count == 1 {
                if p.fallbackFailed != nil { return .success(nil) }
                var rng: any RandomNumberGenerator = configuration.randomSeed.map { SplitMix64(state: $0 &+ 1) } ?? SystemRandomNumberGenerator()
                do throws(ExecMemError) {
                    let placed = try RangePlacer.place(size: configuration.fallbackSize, placement: configuration.fallbackPlacement,
                                                       backend: backend, rng: &rng)
                    p.ranges.append(RangeState(index: 1, base: placed.base, size: configuration.fallbackSize, note: placed.note))
                    p.notes.append("fallback range reserved at \(hexAddress(placed.base)): \(placed.note)")
                } catch {
                    p.fallbackFailed = error.description
                    p.notes.append("fallback range unavailable: \(error)")
                    return .success(nil)
                }
            }
            guard let slot = p.claim(range: r, type: type, count: slots, layout: configuration.layout) else { return .success(nil) }
            return .success((p.ranges[r], slot))
        }
        guard let (range, slot) = try claim.get() else { return nil }
        let run: CommittedRun
        do throws(ExecMemError) {
            run = try backend.commit(rangeBase: range.base, rangeSize: range.size,
                                     offset: slot << ExecMemGeometry.blockShift,
                                     length: slots << ExecMemGeometry.blockShift, type: type)
        } catch {
            pool.withLock { $0.unclaim(range: r, slot: slot, count: slots) }
            throw error
        }
        if !run.hugeMapped, let note = run.note {
            s.collapseFailures += 1
            if s.collapseFailures == 1 { pool.withLock { $0.notes.append("\(type) at \(hexAddress(run.address)): \(note)") } }
        }
        let block = Block(serial: serials.wrappingAdd(1, ordering: .relaxed).oldValue, range: r, slot: slot, run: run)
        s.blocks[block.base] = block
        if slots == 1 { s.free[r].insert(block, start: 0, length: block.chunkCount) }
        return block
    }

    // MARK: - Free

    /// Frees an allocation (execmem_free). Text is refilled with `int3`, other types zeroed. A handle
    /// that is no longer live is a double free; an address never handed out is a foreign pointer.
    public func free(_ allocation: Allocation) throws(ExecMemError) {
        try arenas[allocation.type.rawValue].state.withLock { (s) throws(ExecMemError) in
            let (block, start) = try liveRecord(s, allocation)
            let rec = block.records.removeValue(forKey: Int32(start))!
            let chunks = Int(rec.chunks)
            if rec.sealed {
                try backend.protect(block.run, offset: start << ExecMemGeometry.chunkShift,
                                    length: chunks << ExecMemGeometry.chunkShift, .readWrite)
            }
            s.kinds[rec.kind.rawValue].allocations -= 1
            s.kinds[rec.kind.rawValue].requestedBytes -= rec.size
            s.kinds[rec.kind.rawValue].usedBytes -= chunks << ExecMemGeometry.chunkShift
            if block.isLarge {
                release(&s, block)
                return
            }
            if backend.hasMemory {
                try withView(block) { (view) throws(ExecMemError) in
                    UnsafeMutableRawPointer(bitPattern: view + UInt(start << ExecMemGeometry.chunkShift))!
                        .initializeMemory(as: UInt8.self, repeating: block.type.fillByte, count: chunks << ExecMemGeometry.chunkShift)
                }
            }
            block.give(start: start, chunks: chunks, to: &s.free[block.range])
            if block.isEmpty { releaseSurplusEmptyBlocks(&s) }
        }
    }

    /// Frees the allocation that starts at `address` (execmem_free(ptr)), whatever its type.
    public func free(address: UInt) throws(ExecMemError) {
        if let a = allocation(at: address) { return try free(a) }
        guard let type = typeOfSlot(address) else {
            throw .foreignPointer(address: address, reason: inAnyRange(address)
                ? "inside the range, but not in a committed block" : "outside every ExecMem range")
        }
        let chunkFree = arenas[type.rawValue].state.withLock { s -> Bool in
            guard let block = runCovering(s, address), !block.isLarge else { return false }
            let offset = Int(address - block.base)
            return offset & (ExecMemGeometry.chunkSize - 1) == 0 && !block.bitmap[offset >> ExecMemGeometry.chunkShift]
        }
        if chunkFree { throw .doubleFree(address: address, kind: .moduleText, id: 0) }
        throw .foreignPointer(address: address, reason: "not the start of a live \(type) allocation")
    }

    /// The live allocation that starts at `address`, if any.
    public func allocation(at address: UInt) -> Allocation? {
        guard let type = typeOfSlot(address) else { return nil }
        return arenas[type.rawValue].state.withLock { s -> Allocation? in
            guard let block = runCovering(s, address) else { return nil }
            let offset = Int(address - block.base)
            guard offset & (ExecMemGeometry.chunkSize - 1) == 0,
                  let rec = block.records[Int32(offset >> ExecMemGeometry.chunkShift)] else { return nil }
            return Allocation(address: address, size: rec.size, capacity: Int(rec.chunks) << ExecMemGeometry.chunkShift,
                              kind: rec.kind, type: type, id: rec.id)
        }
    }

    /// The type whose block holds `address`, from the pool's slot table.
    func typeOfSlot(_ address: UInt) -> ExecMemType? {
        pool.withLock { p -> ExecMemType? in
            guard let r = p.ranges.first(where: { $0.contains(address) }) else { return nil }
            let tag = r.slots[Int((address - r.base) >> UInt(ExecMemGeometry.blockShift))]
            return tag == 0 ? nil : ExecMemType(rawValue: Int(tag) - 1)
        }
    }

    /// The run of this arena that covers `address`: a packed block starts at the address's block
    /// base, a large run at or below it.
    func runCovering(_ s: ArenaState, _ address: UInt) -> Block? {
        var base = address & ~ExecMemGeometry.blockMask
        for _ in 0..<(ExecMemGeometry.maxRangeSize >> ExecMemGeometry.blockShift) {
            if let block = s.blocks[base] {
                return address < block.base + UInt(block.run.length) ? block : nil
            }
            guard base >= UInt(ExecMemGeometry.blockSize) else { return nil }
            base -= UInt(ExecMemGeometry.blockSize)
        }
        return nil
    }

    func inAnyRange(_ address: UInt) -> Bool {
        pool.withLock { p in p.ranges.contains { $0.contains(address) } }
    }

    /// Finds the live record an allocation handle names, or says why there is none: a handle of this
    /// allocator whose record is gone (or was reused) is a double free; anything else is foreign.
    func liveRecord(_ s: ArenaState, _ a: Allocation) throws(ExecMemError) -> (Block, Int) {
        let issued = a.id > 0 && a.id < serials.load(ordering: .relaxed)
        guard let block = runCovering(s, a.address) else {
            if inAnyRange(a.address) {
                if issued && a.address & UInt(ExecMemGeometry.chunkSize - 1) == 0 {
                    throw .doubleFree(address: a.address, kind: a.kind, id: a.id)  // its block was released since
                }
                throw .foreignPointer(address: a.address, reason: "inside the range, but not in a committed \(a.type) block")
            }
            throw .foreignPointer(address: a.address, reason: "outside every ExecMem range")
        }
        let offset = Int(a.address - block.base)
        guard offset & (ExecMemGeometry.chunkSize - 1) == 0 else {
            throw .foreignPointer(address: a.address, reason: "not on a 64-byte chunk boundary of a \(a.type) block")
        }
        let start = offset >> ExecMemGeometry.chunkShift
        if let rec = block.records[Int32(start)] {
            if rec.id == a.id { return (block, start) }
            if issued { throw .doubleFree(address: a.address, kind: a.kind, id: a.id) }  // freed, then reused
            throw .foreignPointer(address: a.address, reason: "the handle does not match the live allocation there")
        }
        if issued && (block.isLarge || !block.bitmap[start]) {
            throw .doubleFree(address: a.address, kind: a.kind, id: a.id)
        }
        throw .foreignPointer(address: a.address, reason: "inside another allocation, not at its start")
    }

    /// Keeps `retainedEmptyBlocks` empty packed blocks per type; releases the rest, fallback and
    /// highest addresses first.
    private func releaseSurplusEmptyBlocks(_ s: inout ArenaState) {
        let empty = s.blocks.values.filter { !$0.isLarge && $0.isEmpty && $0.openCount == 0 }
            .sorted { ($0.range, $0.base) > ($1.range, $1.base) }
        for block in empty.dropLast(configuration.retainedEmptyBlocks) { release(&s, block) }
    }

    /// Decommits a run and returns its slots.
    func release(_ s: inout ArenaState, _ block: Block) {
        if block.openCount > 0 {
            backend.closeWriteView(block.run, view: block.openView)
            block.openCount = 0
            block.openView = 0
        }
        block.live = false
        s.blocks[block.base] = nil
        if !block.isLarge { s.free[block.range].remove(block, start: 0) }
        backend.decommit(block.run)
        pool.withLock { $0.unclaim(range: block.range, slot: block.slot, count: block.run.length >> ExecMemGeometry.blockShift) }
    }

    // MARK: - Ranges and reach

    /// Whether `address` lies in the primary range (near the executable, with the default placement).
    public func isInPrimaryRange(_ address: UInt) -> Bool {
        address >= primaryBase && address < primaryBase + UInt(primarySize)
    }

    /// Whether the primary range is within rel32 reach of the host executable's whole image.
    public var primaryReachesExecutable: Bool {
        guard let h = hostImage else { return false }
        return Rel32.reaches(primaryBase, primaryBase + UInt(primarySize), h.start, h.end)
    }

    /// The ranges reserved so far: the primary, then the fallback once it is used.
    public var ranges: [(base: UInt, size: Int, note: String)] {
        pool.withLock { p in p.ranges.map { ($0.base, $0.size, $0.note) } }
    }

    /// What the allocator had to settle for: placement, collapse failures, a missing fallback.
    public var notes: [String] {
        pool.withLock { p in [p.ranges[0].note] + p.notes }
    }
}
