// The allocator: Linux's execmem_alloc/execmem_free for one process. Memory comes from one range
// near the host executable, in 2 MiB blocks typed text, rodata, data or ro-after-init; small requests
// are packed into 64-byte chunks of shared blocks (bpf_prog_pack), large ones take runs of blocks.
//
// Locking: one lock per type (an arena) covers its blocks, bitmaps and records; the hot path takes
// it once and makes no system call while a block has room. The pool lock is taken, after an arena
// lock, only to claim or return slots. A fresh block's preparation beyond what its first allocation
// needs runs on `finisher`, a serial background queue that takes no arena lock
// (ExecMemAllocator+Finish.swift).

import Dispatch
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
    /// Finishes fresh blocks (fill and collapse) off the allocation path, one at a time.
    let finisher = DispatchQueue(label: "ExecMem.finish")

    /// One type's state behind its lock.
    final class Arena: Sendable {
        let state: Mutex<ArenaState>
        init(_ s: sending ArenaState) { state = Mutex(s) }

        @inline(__always)
        func withLock<R, E: Error>(_ body: (inout sending ArenaState) throws(E) -> sending R) throws(E) -> sending R {
            try state.withLock(body)
        }
    }

    /// Reserves the primary range (nothing is committed yet).
    ///
    /// - Parameter backend: overrides the backing the configuration names (the simulator's model).
    public init(_ configuration: ExecMemConfiguration = .init(), backend: (any ExecMemBackend)? = nil) throws(ExecMemError) {
        try configuration.validate()
        Membarrier.registerEarly()
        self.configuration = configuration
        self.backend = backend ?? Self.makeBackend(configuration)
        var rng: any RandomNumberGenerator = configuration.randomSeed.map { SplitMix64(state: $0) } ?? SystemRandomNumberGenerator()
        let placed = try RangePlacer.place(size: configuration.rangeSize, placement: configuration.placement,
                                           backend: self.backend, rng: &rng)
        primaryBase = placed.base
        primarySize = placed.size
        hostImage = placed.image ?? HostImage.current()
        pool = Mutex(Pool(ranges: [RangeState(index: 0, base: placed.base, size: placed.size, note: placed.note)]))
        arenas = ExecMemType.allCases.map { t in
            var s = ArenaState(type: t, slotsPerRange: max(configuration.rangeSize, configuration.fallbackSize) >> ExecMemGeometry.blockShift)
            return Arena(s)
        }
        if !configuration.codeSinks.isEmpty { CodeRegistry.shared.enable(configuration.codeSinks) }
    }

    deinit {
        for arena in arenas {
            arena.withLock { s in
                for id in s.committed {
                    s.blocks[id].finishing?.cancel()
                    let run = s.blocks[id].run
                    if s.type == .text { CodeRegistry.shared.unregister(overlapping: run.address, size: run.length) }
                    backend.decommit(run)
                }
            }
        }
        pool.withLock { p in for r in p.ranges { backend.release(base: r.base, size: r.size) } }
    }

    private static let sharedInstance = Mutex<ExecMemAllocator?>(nil)

    /// The process's default allocator (default configuration), created on first use. Clients that
    /// are not given an allocator share this one, so everything lands in one range near the
    /// executable instead of one range per client.
    public static func shared() throws(ExecMemError) -> ExecMemAllocator {
        let r: Result<ExecMemAllocator, ExecMemError> = sharedInstance.withLock { slot in
            if let a = slot { return .success(a) }
            do throws(ExecMemError) {
                let a = try ExecMemAllocator()
                slot = a
                return .success(a)
            } catch {
                return .failure(error)
            }
        }
        return try r.get()
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
    /// - Parameter alignment: a power of two up to 2 MiB; the kind's alignment and the type's granule
    ///   (64 B, or 4 KiB for ro-after-init) are minimums.
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
        return try arenas[k.type.rawValue].withLock { (s) throws(ExecMemError) -> Allocation in
            if size > ExecMemGeometry.blockSize {
                return try allocateLarge(&s, kind: kind, size: size, ranges: k.ranges)
            }
            let chunks = ((size + granule - 1) & ~(granule - 1)) >> ExecMemGeometry.chunkShift
            let alignChunks = align >> ExecMemGeometry.chunkShift
            for r in rangeOrder(k.ranges) {
                var found = s.takeChunks(chunks, alignment: alignChunks, range: r)
                if found == nil, !s.unfinished.isEmpty, finishPending(&s, range: r) {
                    found = s.takeChunks(chunks, alignment: alignChunks, range: r)
                }
                if found == nil, try commitRun(&s, range: r, slots: 1, prepare: chunks << ExecMemGeometry.chunkShift) != nil {
                    found = s.takeChunks(chunks, alignment: alignChunks, range: r)
                }
                if let (id, start) = found {
                    return record(&s, id, start: start, chunks: chunks, size: size, kind: kind)
                }
            }
            throw .rangeExhausted(kind: kind, type: k.type, size: size, ranges: rangeNames(k.ranges))
        }
    }

    private func allocateLarge(_ s: inout ArenaState, kind: ExecMemKind, size: Int, ranges: RangeChoice) throws(ExecMemError) -> Allocation {
        let slots = (size + ExecMemGeometry.blockSize - 1) >> ExecMemGeometry.blockShift
        for r in rangeOrder(ranges) {
            if let id = try commitRun(&s, range: r, slots: slots, prepare: slots << ExecMemGeometry.blockShift) {
                s.blocks[id].usedChunks = s.blocks[id].chunkCount
                return record(&s, id, start: 0, chunks: s.blocks[id].chunkCount, size: size, kind: kind)
            }
        }
        throw .rangeExhausted(kind: kind, type: s.type, size: size, ranges: rangeNames(ranges))
    }

    private func record(_ s: inout ArenaState, _ id: Int, start: Int, chunks: Int, size: Int, kind: ExecMemKind) -> Allocation {
        let allocationID = s.newAllocationID()
        let slot = s.addRecord(id, start: start, BlockRecord(id: allocationID, size: size, chunks: Int32(chunks), kind: kind, sealed: false))
        let capacity = chunks << ExecMemGeometry.chunkShift
        s.kinds[kind.rawValue].allocations += 1
        s.kinds[kind.rawValue].requestedBytes += size
        s.kinds[kind.rawValue].usedBytes += capacity
        return Allocation(address: s.blocks[id].base + UInt(start << ExecMemGeometry.chunkShift), size: size,
                          capacity: capacity, kind: kind, type: s.type, id: allocationID, slot: UInt32(slot))
    }

    private func rangeOrder(_ choice: RangeChoice) -> [Int] {
        switch choice {
        case .primaryThenFallback: configuration.fallbackSize > 0 ? [0, 1] : [0]
        case .primaryOnly: [0]
        case .fallbackOnly: configuration.fallbackSize > 0 ? [1] : []
        }
    }

    private func rangeNames(_ choice: RangeChoice) -> String {
        let sizes = pool.withLock { p in p.ranges.map(\.size) }
        return rangeOrder(choice).map { r in
            let size = r < sizes.count ? sizes[r] : configuration.fallbackSize
            return "the \(r == 0 ? "primary" : "fallback") range (\(size) bytes)"
        }.joined(separator: " and ")
    }

    /// Claims slots and commits a run, prepared at least `prepare` bytes from its start (the rest is
    /// queued); returns its id, or nil when the range has no room.
    private func commitRun(_ s: inout ArenaState, range r: Int, slots: Int, prepare: Int) throws(ExecMemError) -> Int? {
        let type = s.type
        let claim: (RangeState, Int)? = pool.withLock { p in
            if r == 1 && p.ranges.count == 1 {
                if p.fallbackFailed != nil { return nil }
                var rng: any RandomNumberGenerator = configuration.randomSeed.map { SplitMix64(state: $0 &+ 1) } ?? SystemRandomNumberGenerator()
                do throws(ExecMemError) {
                    let placed = try RangePlacer.place(size: configuration.fallbackSize, placement: configuration.fallbackPlacement,
                                                       backend: backend, rng: &rng)
                    p.ranges.append(RangeState(index: 1, base: placed.base, size: placed.size, note: placed.note))
                    p.notes.append("fallback range reserved at \(hex(placed.base)): \(placed.note)")
                } catch {
                    p.fallbackFailed = error.description
                    p.notes.append("fallback range unavailable: \(error)")
                    return nil
                }
            }
            guard let slot = p.claim(range: r, type: type, count: slots, layout: configuration.layout) else { return nil }
            return (p.ranges[r], slot)
        }
        guard let (range, slot) = claim else { return nil }
        let run: CommittedRun
        do throws(ExecMemError) {
            run = try backend.commit(rangeBase: range.base, rangeSize: range.size,
                                     offset: slot << ExecMemGeometry.blockShift,
                                     length: slots << ExecMemGeometry.blockShift, type: type, prepare: prepare)
        } catch {
            pool.withLock { $0.unclaim(range: r, slot: slot, count: slots) }
            throw error
        }
        noteCollapse(&s, run)
        s.prepareTables()
        let id = s.id(range: r, slot: slot)
        s.rangeBase[r] = range.base
        s.blocks[id] = BlockState(id: id, range: r, slot: slot, serial: s.nextSerial, run: run)
        s.nextSerial += 1
        for k in id..<(id + slots) { s.owner[k] = Int32(id) }
        s.committed.insert(id)
        if slots == 1 { s.addPackedBlock(id) }
        if run.finishPending { queueFinish(&s, id) }
        return id
    }

    // MARK: - Free

    /// Frees an allocation (execmem_free). Text is refilled with `int3`, other types zeroed. A handle
    /// that is no longer live is a double free; an address never handed out is a foreign pointer.
    public func free(_ allocation: Allocation) throws(ExecMemError) {
        // Nothing stays named, or registered with the unwinder, once its memory can be reused.
        if allocation.type == .text { CodeRegistry.shared.unregister(overlapping: allocation.address, size: allocation.size) }
        try arenas[allocation.type.rawValue].withLock { (s) throws(ExecMemError) in
            let (id, start, slot) = try liveRecord(s, allocation)
            let rec = s.removeRecord(id, start: start, slot: slot)
            let chunks = Int(rec.chunks)
            let bytes = chunks << ExecMemGeometry.chunkShift
            s.kinds[rec.kind.rawValue].allocations -= 1
            s.kinds[rec.kind.rawValue].requestedBytes -= rec.size
            s.kinds[rec.kind.rawValue].usedBytes -= bytes
            if s.blocks[id].isLarge {
                release(&s, id)
                return
            }
            let offset = start << ExecMemGeometry.chunkShift
            if rec.sealed { try backend.protect(s.blocks[id].run, offset: offset, length: bytes, .readWrite) }
            if backend.hasMemory {
                let fill = s.type.fillByte
                try withView(&s, id) { view in
                    UnsafeMutableRawPointer(bitPattern: view + UInt(offset))!.initializeMemory(as: UInt8.self, repeating: fill, count: bytes)
                }
            }
            s.giveChunks(id, start: start, chunks: chunks)
            if s.blocks[id].isEmpty { releaseSurplusEmptyBlocks(&s) }
        }
    }

    /// Frees the allocation that starts at `address` (execmem_free(ptr)), whatever its type.
    public func free(address: UInt) throws(ExecMemError) {
        if let a = allocation(at: address) { return try free(a) }
        guard let type = typeOfSlot(address) else {
            throw .foreignPointer(address: address, reason: inAnyRange(address)
                ? "inside the range, but not in a committed block" : "outside every ExecMem range")
        }
        let chunkFree = arenas[type.rawValue].withLock { s -> Bool in
            guard let id = s.blockID(covering: address), !s.blocks[id].isLarge else { return false }
            let offset = Int(address - s.blocks[id].base)
            let chunk = offset >> ExecMemGeometry.chunkShift
            return offset & (ExecMemGeometry.chunkSize - 1) == 0 && chunk < s.blocks[id].readyChunks && !s.blocks[id].bitmap[chunk]
        }
        if chunkFree { throw .doubleFree(address: address, kind: .moduleText, id: 0) }
        throw .foreignPointer(address: address, reason: "not the start of a live \(type) allocation")
    }

    /// The live allocation that starts at `address`, if any.
    public func allocation(at address: UInt) -> Allocation? {
        guard let type = typeOfSlot(address) else { return nil }
        return arenas[type.rawValue].withLock { s -> Allocation? in
            guard let id = s.blockID(covering: address) else { return nil }
            let block = s.blocks[id]
            let offset = Int(address - block.base)
            guard offset & (ExecMemGeometry.chunkSize - 1) == 0,
                  let slot = block.recordSlot(at: offset >> ExecMemGeometry.chunkShift) else { return nil }
            let rec = block.records[slot]
            return Allocation(address: address, size: rec.size, capacity: Int(rec.chunks) << ExecMemGeometry.chunkShift,
                              kind: rec.kind, type: type, id: rec.id, slot: UInt32(slot))
        }
    }

    /// The live allocation whose bytes include `address`, if any.
    public func allocation(containing address: UInt) -> Allocation? {
        guard let type = typeOfSlot(address) else { return nil }
        return arenas[type.rawValue].withLock { s -> Allocation? in
            guard let id = s.blockID(covering: address) else { return nil }
            let chunk = Int(address - s.blocks[id].base) >> ExecMemGeometry.chunkShift
            if s.blocks[id].isLarge {
                guard s.blocks[id].liveRecords == 1 else { return nil }
                let rec = s.blocks[id].records[0]
                return Allocation(address: s.blocks[id].base, size: rec.size, capacity: Int(rec.chunks) << ExecMemGeometry.chunkShift,
                                  kind: rec.kind, type: type, id: rec.id, slot: 0)
            }
            // Walk back over set chunks to the allocation's first one.
            guard s.blocks[id].bitmap[chunk] else { return nil }
            var c = chunk
            while true {
                if let slot = s.blocks[id].recordSlot(at: c) {
                    let rec = s.blocks[id].records[slot]
                    guard chunk < c + Int(rec.chunks) else { return nil }
                    return Allocation(address: s.blocks[id].base + UInt(c << ExecMemGeometry.chunkShift), size: rec.size,
                                      capacity: Int(rec.chunks) << ExecMemGeometry.chunkShift, kind: rec.kind, type: type, id: rec.id, slot: UInt32(slot))
                }
                guard c > 0 else { return nil }
                c -= 1
            }
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

    func inAnyRange(_ address: UInt) -> Bool {
        pool.withLock { p in p.ranges.contains { $0.contains(address) } }
    }

    /// Finds the live record an allocation handle names: (block id, first chunk, record slot). A handle
    /// this arena issued whose record is gone (or was reused) is a double free; anything else is foreign.
    func liveRecord(_ s: ArenaState, _ a: Allocation) throws(ExecMemError) -> (Int, Int, Int) {
        guard let id = s.blockID(covering: a.address) else {
            if inAnyRange(a.address) {
                if s.issued(a.id) && a.address & UInt(ExecMemGeometry.chunkSize - 1) == 0 {
                    throw .doubleFree(address: a.address, kind: a.kind, id: a.id)  // its block was released since
                }
                throw .foreignPointer(address: a.address, reason: "inside the range, but not in a committed \(a.type) block")
            }
            throw .foreignPointer(address: a.address, reason: "outside every ExecMem range")
        }
        let offset = Int(a.address - s.blocks[id].base)
        // The handle names its record slot: one load checks it (ids are never reused).
        let hinted = Int(a.slot)
        if hinted < s.blocks[id].records.count && s.blocks[id].records[hinted].id == a.id && offset & (ExecMemGeometry.chunkSize - 1) == 0 {
            return (id, offset >> ExecMemGeometry.chunkShift, hinted)
        }
        guard offset & (ExecMemGeometry.chunkSize - 1) == 0 else {
            throw .foreignPointer(address: a.address, reason: "not on a 64-byte chunk boundary of a \(a.type) block")
        }
        let start = offset >> ExecMemGeometry.chunkShift
        if let slot = s.blocks[id].recordSlot(at: start) {
            if s.blocks[id].records[slot].id == a.id { return (id, start, slot) }
            if s.issued(a.id) { throw .doubleFree(address: a.address, kind: a.kind, id: a.id) }  // freed, then reused
            throw .foreignPointer(address: a.address, reason: "the handle does not match the live allocation there")
        }
        if s.issued(a.id) && (s.blocks[id].isLarge || !s.blocks[id].bitmap[start]) {
            throw .doubleFree(address: a.address, kind: a.kind, id: a.id)
        }
        throw .foreignPointer(address: a.address, reason: "inside another allocation, not at its start")
    }

    /// Keeps `retainedEmptyBlocks` empty packed blocks per type; releases the rest, fallback and
    /// highest addresses first.
    private func releaseSurplusEmptyBlocks(_ s: inout ArenaState) {
        let empty = s.committed.filter { s.blocks[$0].isEmpty && !s.blocks[$0].isLarge && s.blocks[$0].openCount == 0 }
            .sorted(by: >)
        for id in empty.dropLast(configuration.retainedEmptyBlocks) { release(&s, id) }
    }

    /// Decommits a run and returns its slots.
    func release(_ s: inout ArenaState, _ id: Int) {
        cancelFinish(&s, id)
        let block = s.blocks[id]
        if block.openCount > 0 { backend.closeWriteView(block.run, view: block.openView) }
        if !block.isLarge { s.removePackedBlock(id) }
        let slots = block.run.length >> ExecMemGeometry.blockShift
        for k in id..<(id + slots) { s.owner[k] = -1 }
        s.blocks[id] = BlockState.uncommitted
        s.committed.remove(id)
        backend.decommit(block.run)
        pool.withLock { $0.unclaim(range: block.range, slot: block.slot, count: slots) }
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

    /// The type committed in each 2 MiB slot of each range (nil: free), for maps of the range.
    public var slotTypes: [[ExecMemType?]] {
        pool.withLock { p in p.ranges.map { r in r.slots.map { $0 == 0 ? nil : ExecMemType(rawValue: Int($0) - 1) } } }
    }

    /// What the allocator had to settle for: placement, collapse failures, a missing fallback.
    public var notes: [String] {
        pool.withLock { p in [p.ranges[0].note] + p.notes }
    }
}
