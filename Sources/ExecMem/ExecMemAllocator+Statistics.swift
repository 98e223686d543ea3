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
            t.freeBytes += s.freeBytes; t.largestFreeRun = max(t.largestFreeRun, s.largestFreeRun)
            t.hugeMappedBytes += s.hugeMappedBytes; t.collapseFailures += s.collapseFailures
        }
        t.hugePageCoverage = t.reservedBytes == 0 ? 0 : Double(t.hugeMappedBytes) / Double(t.reservedBytes)
        t.fragmentation = t.freeBytes == 0 ? 0 : 1 - Double(t.largestFreeRun) / Double(t.freeBytes)
        return t
    }
}

extension ExecMemAllocator {
    /// Current statistics. `readBack` reads 2 MiB mappings from the kernel (one pass over smaps).
    public func statistics(readBack: Bool = true) -> ExecMemStatistics {
        var types: [TypeStatistics] = []
        var kinds: [KindStatistics] = []
        var runs: [[CommittedRun]] = []
        for arena in arenas {
            arena.state.withLock { s in
                var t = TypeStatistics(type: arena.type)
                var free = 0
                for block in s.blocks.values {
                    t.blocks += block.run.length >> ExecMemGeometry.blockShift
                    t.reservedBytes += block.run.length
                    t.allocations += block.records.count
                    t.usedBytes += block.usedChunks << ExecMemGeometry.chunkShift
                    t.requestedBytes += block.records.values.reduce(0) { $0 + $1.size }
                    t.sealedAllocations += block.records.values.reduce(0) { $0 + ($1.sealed ? 1 : 0) }
                    if block.isLarge {
                        t.largeRuns += 1
                    } else {
                        t.packedBlocks += 1
                        free += block.freeChunks << ExecMemGeometry.chunkShift
                        t.largestFreeRun = max(t.largestFreeRun, block.bitmap.longestClearRun << ExecMemGeometry.chunkShift)
                    }
                }
                t.freeBytes = free
                t.fragmentation = free == 0 ? 0 : 1 - Double(t.largestFreeRun) / Double(free)
                t.collapseFailures = s.collapseFailures
                types.append(t)
                runs.append(s.blocks.values.map(\.run))
                for kind in ExecMemKind.allCases where configuration.range(for: kind).type == arena.type {
                    let c = s.kinds[kind.rawValue]
                    kinds.append(KindStatistics(kind: kind, type: arena.type, allocations: c.allocations,
                                                requestedBytes: c.requestedBytes, usedBytes: c.usedBytes))
                }
            }
        }
        if readBack {
            let all = runs.flatMap { $0 }
            let huge = backend.hugeMappedBytes(of: all)
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
            arena.state.withLock { s in
                var perKind = [KindCounters](repeating: KindCounters(), count: ExecMemKind.allCases.count)
                for (base, block) in s.blocks {
                    let where_ = "\(arena.type) block \(hexAddress(base))"
                    if base != block.base || block.type != arena.type || !block.live { problems.append("\(where_): misfiled") }
                    if block.openCount != 0 { problems.append("\(where_): \(block.openCount) write views left open") }
                    owned.append((block.range, block.slot, block.run.length >> ExecMemGeometry.blockShift, arena.type))
                    var covered = 0
                    var spans: [(Int, Int)] = []
                    for (start, rec) in block.records {
                        if !ids.insert(rec.id).inserted { problems.append("\(where_): id \(rec.id) appears twice") }
                        let st = Int(start), n = Int(rec.chunks)
                        spans.append((st, n))
                        covered += n
                        if rec.size > n << ExecMemGeometry.chunkShift || rec.size <= 0 { problems.append("\(where_): record at chunk \(st) has size \(rec.size) for \(n) chunks") }
                        if st + n > block.chunkCount { problems.append("\(where_): record at chunk \(st) runs past the block") }
                        if !block.isLarge && !block.bitmap.all(true, start: st, length: n) { problems.append("\(where_): record at chunk \(st) not marked in the bitmap") }
                        if configuration.range(for: rec.kind).type != arena.type { problems.append("\(where_): \(rec.kind) record in a \(arena.type) block") }
                        perKind[rec.kind.rawValue].allocations += 1
                        perKind[rec.kind.rawValue].requestedBytes += rec.size
                        perKind[rec.kind.rawValue].usedBytes += n << ExecMemGeometry.chunkShift
                        if rec.sealed && arena.type != .roAfterInit { problems.append("\(where_): sealed \(arena.type) record") }
                        if (st << ExecMemGeometry.chunkShift) % arena.type.granule != 0 || (n << ExecMemGeometry.chunkShift) % arena.type.granule != 0 {
                            problems.append("\(where_): record at chunk \(st) is not whole \(arena.type.granule)-byte granules")
                        }
                    }
                    spans.sort { $0.0 < $1.0 }
                    for (a, b) in zip(spans, spans.dropFirst()) where a.0 + a.1 > b.0 {
                        problems.append("\(where_): records at chunks \(a.0) and \(b.0) overlap")
                    }
                    if covered != block.usedChunks { problems.append("\(where_): usedChunks \(block.usedChunks), records cover \(covered)") }
                    if block.isLarge {
                        if block.records.count != 1 || block.records[0] == nil { problems.append("\(where_): large run without its one allocation at the base") }
                    } else {
                        if block.bitmap.population != block.usedChunks { problems.append("\(where_): bitmap has \(block.bitmap.population) chunks set, usedChunks \(block.usedChunks)") }
                        var runs: [Int: Int] = [:]
                        var i = block.bitmap.firstClear(from: 0)
                        while i < block.chunkCount {
                            let end = block.bitmap.firstSet(from: i, limit: block.chunkCount) ?? block.chunkCount
                            runs[i] = end - i
                            i = block.bitmap.firstClear(from: end)
                        }
                        var extents: [Int: Int] = [:]
                        for e in s.free[block.range].all where e.block === block { extents[e.start] = e.length }
                        if runs != extents { problems.append("\(where_): free extents \(extents.count) do not match the bitmap's \(runs.count) free runs") }
                        for (start, length) in extents where s.free[block.range].length(block, start: start) != length {
                            problems.append("\(where_): extent at chunk \(start) not found through the index")
                        }
                        if deep && backend.hasMemory { problems += fillProblems(block, where_) }
                    }
                }
                for r in 0..<2 where s.free[r].all.contains(where: { s.blocks[$0.block.base] !== $0.block || $0.block.range != r }) {
                    problems.append("\(arena.type): free extents of range \(r) name a released or misfiled block")
                }
                for kind in ExecMemKind.allCases {
                    let a = perKind[kind.rawValue], b = s.kinds[kind.rawValue]
                    if a.allocations != b.allocations || a.requestedBytes != b.requestedBytes || a.usedBytes != b.usedBytes {
                        problems.append("\(kind): counters \(b) do not match records \(a)")
                    }
                }
            }
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

    /// Free chunks of `block` that do not hold the type's fill byte.
    private func fillProblems(_ block: Block, _ where_: String) -> [String] {
        let bytes = UnsafeRawPointer(bitPattern: block.base)!.assumingMemoryBound(to: UInt8.self)
        let fill = block.type.fillByte
        var i = block.bitmap.firstClear(from: 0)
        while i < block.chunkCount {
            let end = block.bitmap.firstSet(from: i, limit: block.chunkCount) ?? block.chunkCount
            for b in (i << ExecMemGeometry.chunkShift)..<(end << ExecMemGeometry.chunkShift) where bytes[b] != fill {
                return ["\(where_): free byte at offset \(b) is \(hex(UInt(bytes[b]))), not \(hex(UInt(fill)))"]
            }
            i = block.bitmap.firstClear(from: end)
        }
        return []
    }
}
