// Statistics per type and kind, and the invariant checker tests call after every step.
//
// Huge-page coverage is read back from /proc/self/smaps (through the backend, so the simulator can
// answer from its model): the share of committed bytes the kernel really maps with 2 MiB entries.

import ExecMemSystem

public struct TypeStatistics: Sendable, Codable, Equatable {
    public var type: ExecMemType
    /// 2 MiB blocks committed: packed blocks plus the blocks of large runs.
    public var blocks = 0
    public var packedBlocks = 0
    public var largeRuns = 0
    /// Sealed ro-after-init allocations.
    public var sealedAllocations = 0
    public var allocations = 0
    /// Committed bytes (blocks x 2 MiB).
    public var reservedBytes = 0
    /// Bytes held by live allocations (whole chunks, whole blocks for large runs).
    public var usedBytes = 0
    /// Bytes callers asked for.
    public var requestedBytes = 0
    /// Free bytes in packed blocks.
    public var freeBytes = 0
    /// Bytes of fresh packed blocks still being prepared (filled and collapsed) off the allocation
    /// path: neither used nor free yet; they become free when the preparation is adopted
    /// (`ExecMemAllocator.settle()` adopts all of it).
    public var preparingBytes = 0
    /// The longest free stretch in any packed block, in bytes.
    public var largestFreeRun = 0
    /// 1 - largestFreeRun / freeBytes: 0 when the free space is one stretch.
    public var fragmentation = 0.0
    /// Committed bytes the kernel maps with 2 MiB entries (smaps), and their share.
    public var hugeMappedBytes = 0
    public var hugePageCoverage = 0.0
    /// Runs whose collapse to 2 MiB pages failed.
    public var collapseFailures = 0
}

public struct KindStatistics: Sendable, Codable, Equatable {
    public var kind: ExecMemKind
    public var type: ExecMemType
    public var allocations: Int
    public var requestedBytes: Int
    public var usedBytes: Int
}

public struct RangeStatistics: Sendable, Codable, Equatable {
    public var name: String
    public var base: UInt
    public var size: Int
    public var committedBlocks: Int
    public var placement: String
    /// Whether the whole range reaches the whole executable image with rel32.
    public var reachesExecutable: Bool
}

public struct ExecMemStatistics: Sendable, Codable {
    public var backend: String
    public var layout: String
    public var types: [TypeStatistics]
    public var kinds: [KindStatistics]
    public var ranges: [RangeStatistics]
    public var notes: [String]

    public subscript(_ type: ExecMemType) -> TypeStatistics { types[type.rawValue] }
    public subscript(_ kind: ExecMemKind) -> KindStatistics { kinds.first { $0.kind == kind }! }

    /// Sums over all types.
    public var total: TypeStatistics {
        var t = TypeStatistics(type: .text)
        for s in types {
            t.blocks += s.blocks; t.packedBlocks += s.packedBlocks; t.largeRuns += s.largeRuns
            t.sealedAllocations += s.sealedAllocations; t.allocations += s.allocations
            t.reservedBytes += s.reservedBytes; t.usedBytes += s.usedBytes; t.requestedBytes += s.requestedBytes
            t.freeBytes += s.freeBytes; t.preparingBytes += s.preparingBytes; t.largestFreeRun = max(t.largestFreeRun, s.largestFreeRun)
            t.hugeMappedBytes += s.hugeMappedBytes; t.collapseFailures += s.collapseFailures
        }
        t.hugePageCoverage = t.reservedBytes == 0 ? 0 : Double(t.hugeMappedBytes) / Double(t.reservedBytes)
        t.fragmentation = t.freeBytes == 0 ? 0 : 1 - Double(t.largestFreeRun) / Double(t.freeBytes)
        return t
    }
}

extension ExecMemAllocator {
    /// Current statistics. `readBack` reads 2 MiB mappings from the kernel (one pass over smaps).
    /// Blocks whose background preparation is done are adopted first; those still pending show as
    /// `preparingBytes`, and their pages as smaps shows them now (call `settle()` first to measure
    /// what the allocator ends up with).
    public func statistics(readBack: Bool = true) -> ExecMemStatistics {
        var types: [TypeStatistics] = []
        var kinds: [KindStatistics] = []
        var runs: [[CommittedRun]] = []
        for arena in arenas {
            arena.withLock { s in
                adoptFinished(&s)
                var t = TypeStatistics(type: s.type)
                for id in s.committed {
                    let block = s.blocks[id]
                    t.blocks += block.run.length >> ExecMemGeometry.blockShift
                    t.reservedBytes += block.run.length
                    t.allocations += block.liveRecords
                    t.usedBytes += block.usedChunks << ExecMemGeometry.chunkShift
                    for (_, rec) in block.liveRecordList {
                        t.requestedBytes += rec.size
                        if rec.sealed { t.sealedAllocations += 1 }
                    }
                    if block.isLarge {
                        t.largeRuns += 1
                    } else {
                        t.packedBlocks += 1
                        t.freeBytes += (block.readyChunks - block.usedChunks) << ExecMemGeometry.chunkShift
                        t.preparingBytes += (block.chunkCount - block.readyChunks) << ExecMemGeometry.chunkShift
                    }
                }
                for r in 0..<2 {
                    for id in s.packedOrder[r] {
                        for e in s.extents(of: id) { t.largestFreeRun = max(t.largestFreeRun, Int(e.length) << ExecMemGeometry.chunkShift) }
                    }
                }
                t.fragmentation = t.freeBytes == 0 ? 0 : 1 - Double(t.largestFreeRun) / Double(t.freeBytes)
                t.collapseFailures = s.collapseFailures
                types.append(t)
                runs.append(s.committed.map { s.blocks[$0].run })
                for kind in ExecMemKind.allCases where configuration.range(for: kind).type == s.type {
                    let c = s.kinds[kind.rawValue]
                    kinds.append(KindStatistics(kind: kind, type: s.type, allocations: c.allocations,
                                                requestedBytes: c.requestedBytes, usedBytes: c.usedBytes))
                }
            }
        }
        if readBack {
            let huge = backend.hugeMappedBytes(of: runs.flatMap { $0 })
            var i = 0
            for (t, typeRuns) in runs.enumerated() {
                types[t].hugeMappedBytes = huge[i..<(i + typeRuns.count)].reduce(0, +)
                i += typeRuns.count
                types[t].hugePageCoverage = types[t].reservedBytes == 0 ? 0 : Double(types[t].hugeMappedBytes) / Double(types[t].reservedBytes)
            }
        }
        kinds.sort { $0.kind.rawValue < $1.kind.rawValue }
        let (rangeStats, notes) = pool.withLock { p in
            (p.ranges.map { r in
                RangeStatistics(name: r.index == 0 ? "primary" : "fallback", base: r.base, size: r.size,
                                committedBlocks: r.committedSlots, placement: r.note,
                                reachesExecutable: hostImage.map { Rel32.reaches(r.base, r.end, $0.start, $0.end) } ?? false)
            }, [p.ranges[0].note] + p.notes)
        }
        let layout: String
        switch configuration.layout {
        case .typedBlocks: layout = "typed blocks from one pool"
        case let .splitRange(t, r, d, a): layout = "split range (text \(t), rodata \(r), data \(d), roAfterInit \(a))"
        }
        return ExecMemStatistics(backend: backend.name, layout: layout, types: types, kinds: kinds,
                                 ranges: rangeStats, notes: notes)
    }

    // MARK: - Invariants

    /// Walks every structure and returns what is wrong (empty when all holds). `deep` also reads every
    /// free chunk's bytes back from memory and checks they hold the type's fill byte.
    public func checkInvariants(deep: Bool = false) -> [String] {
        var problems: [String] = []
        var owned: [(range: Int, slot: Int, count: Int, type: ExecMemType)] = []
        var ids = Set<UInt64>()
        for arena in arenas {
            arena.withLock { s in problems += check(s, deep: deep, owned: &owned, ids: &ids) }
        }
        pool.withLock { p in
            var expected = p.ranges.map { [UInt8](repeating: 0, count: $0.slots.count) }
            for o in owned {
                for k in o.slot..<(o.slot + o.count) {
                    if expected[o.range][k] != 0 { problems.append("slot \(k) of range \(o.range) owned twice") }
                    expected[o.range][k] = UInt8(o.type.rawValue + 1)
                }
            }
            for r in p.ranges where expected[r.index] != r.slots {
                problems.append("range \(r.index): slot table does not match the committed blocks")
            }
        }
        return problems
    }

    private func check(_ s: ArenaState, deep: Bool, owned: inout [(range: Int, slot: Int, count: Int, type: ExecMemType)],
                       ids: inout Set<UInt64>) -> [String] {
        var problems: [String] = []
        var perKind = [KindCounters](repeating: KindCounters(), count: ExecMemKind.allCases.count)
        var extentCount = 0
        for id in s.committed {
            let block = s.blocks[id]
            guard block.isCommitted else { problems.append("\(s.type): committed id \(id) has no block"); continue }
            let where_ = "\(s.type) block \(hex(block.base))"
            let slots = block.run.length >> ExecMemGeometry.blockShift
            if block.id != id || block.type != s.type || s.rangeBase[block.range] + UInt(block.slot << ExecMemGeometry.blockShift) != block.base {
                problems.append("\(where_): misfiled")
            }
            if (id..<(id + slots)).contains(where: { s.owner[$0] != Int32(id) }) { problems.append("\(where_): owner table disagrees") }
            if block.openCount != 0 || block.openView != 0 { problems.append("\(where_): \(block.openCount) write views left open") }
            owned.append((block.range, block.slot, slots, s.type))
            var covered = 0
            let records = block.liveRecordList
            if records.count != block.liveRecords { problems.append("\(where_): \(records.count) records found, \(block.liveRecords) counted") }
            for (st, rec) in records {
                let n = Int(rec.chunks)
                covered += n
                if !ids.insert(rec.id).inserted { problems.append("\(where_): id \(rec.id) appears twice") }
                if !s.issued(rec.id) { problems.append("\(where_): chunk \(st) is set without a record of this arena") }
                if rec.size > n << ExecMemGeometry.chunkShift || rec.size <= 0 { problems.append("\(where_): record at chunk \(st) has size \(rec.size) for \(n) chunks") }
                if st + n > block.chunkCount { problems.append("\(where_): record at chunk \(st) runs past the block") }
                if !block.isLarge && !block.bitmap.all(true, start: st, length: min(n, block.chunkCount - st)) { problems.append("\(where_): record at chunk \(st) not marked in the bitmap") }
                if configuration.range(for: rec.kind).type != s.type { problems.append("\(where_): \(rec.kind) record in a \(s.type) block") }
                if rec.sealed && s.type != .roAfterInit { problems.append("\(where_): sealed \(s.type) record") }
                if (st << ExecMemGeometry.chunkShift) % s.type.granule != 0 || (n << ExecMemGeometry.chunkShift) % s.type.granule != 0 {
                    problems.append("\(where_): record at chunk \(st) is not whole \(s.type.granule)-byte granules")
                }
                perKind[rec.kind.rawValue].allocations += 1
                perKind[rec.kind.rawValue].requestedBytes += rec.size
                perKind[rec.kind.rawValue].usedBytes += n << ExecMemGeometry.chunkShift
            }
            if covered != block.usedChunks { problems.append("\(where_): usedChunks \(block.usedChunks), records cover \(covered)") }
            if block.isLarge {
                if block.liveRecords != 1 { problems.append("\(where_): large run without its one allocation") }
                continue
            }
            if block.bitmap.population != block.usedChunks { problems.append("\(where_): bitmap has \(block.bitmap.population) chunks set, usedChunks \(block.usedChunks)") }
            // Chunks still being prepared are in no extent and never handed out.
            let ready = block.readyChunks
            if ready < block.chunkCount {
                if block.finishing == nil && !block.run.finishPending && block.run.preparedLength == block.run.length {
                    problems.append("\(where_): \(block.chunkCount - ready) chunks unprepared with nothing to prepare them")
                }
                if block.bitmap.firstSet(from: ready, limit: block.chunkCount) != nil { problems.append("\(where_): a chunk past the prepared part is in use") }
            }
            if (block.finishing != nil) != s.unfinished.contains(id) { problems.append("\(where_): pending preparation not listed, or listed twice") }
            // Each maximal free run of the prepared part is one extent, found through `meta` at its start.
            var i = block.bitmap.firstClear(from: 0)
            while i < ready {
                let end = block.bitmap.firstSet(from: i, limit: ready) ?? ready
                let m = block.meta[i]
                let b = Int(m >> ArenaState.binShift & 0xF), p = Int(m & ArenaState.positionMask)
                let list = s.bins[id * ArenaState.binCount + b]
                if m & ArenaState.extentTag == 0 || p >= list.count || list[p].start != Int32(i)
                    || Int(list[p].length) != end - i || ArenaState.bin(end - i) != b || s.binMasks[id] & (1 << UInt16(b)) == 0 {
                    problems.append("\(where_): free run at chunk \(i) (\(end - i) chunks) has no matching extent")
                }
                extentCount += 1
                i = block.bitmap.firstClear(from: end)
            }
            let binned = s.extents(of: id).count
            if binned != extentCount { problems.append("\(where_): \(binned) extents binned, \(extentCount) free runs") }
            for b in 0..<ArenaState.binCount where (s.binMasks[id] >> UInt16(b) & 1 == 1) != !s.bins[id * ArenaState.binCount + b].isEmpty {
                problems.append("\(where_): bin mask disagrees with bin \(b)")
            }
            if !s.packedOrder[block.range].contains(id) { problems.append("\(where_): missing from the allocation order") }
            extentCount = 0
            if deep && backend.hasMemory { problems += fillProblems(block, where_) }
        }
        if s.unfinished.count != Set(s.unfinished).count || s.unfinished.contains(where: { !s.committed.contains($0) || s.blocks[$0].finishing == nil }) {
            problems.append("\(s.type): the list of pending preparations is wrong")
        }
        for r in 0..<2 {
            let order = s.packedOrder[r]
            if order != order.sorted() || order.contains(where: { !s.committed.contains($0) || s.blocks[$0].isLarge }) {
                problems.append("\(s.type): allocation order of range \(r) is wrong")
            }
        }
        for kind in ExecMemKind.allCases where perKind[kind.rawValue] != s.kinds[kind.rawValue] {
            problems.append("\(kind): counters \(s.kinds[kind.rawValue]) do not match records \(perKind[kind.rawValue])")
        }
        return problems
    }

    /// Free chunks of a packed block that do not hold the type's fill byte.
    private func fillProblems(_ block: BlockState, _ where_: String) -> [String] {
        let bytes = UnsafeRawPointer(bitPattern: block.base)!.assumingMemoryBound(to: UInt8.self)
        let fill = block.type.fillByte
        var i = block.bitmap.firstClear(from: 0)
        while i < block.readyChunks {
            let end = block.bitmap.firstSet(from: i, limit: block.readyChunks) ?? block.readyChunks
            for b in (i << ExecMemGeometry.chunkShift)..<(end << ExecMemGeometry.chunkShift) where bytes[b] != fill {
                return ["\(where_): free byte at offset \(b) is \(hex(UInt(bytes[b]))), not \(hex(UInt(fill)))"]
            }
            i = block.bitmap.firstClear(from: end)
        }
        return []
    }
}
