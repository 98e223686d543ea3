// Where a range goes. By default within rel32 reach of the host executable, so generated code calls
// host functions with a plain `call rel32` (LuaJIT, V8 and .NET place code the same way), at a random
// 2 MiB-aligned base among the holes /proc/self/maps shows. The reach condition: the span from the
// lowest to the highest byte of range and image together stays below 2^31, so every displacement
// between the two fits a signed 32-bit field. When no hole of the asked size is left in reach (several
// allocators in one process, a crowded address space), the default placement keeps reach and gives up
// size: it takes the largest hole in reach of at least `minimumNearSize`, and only below that goes
// anywhere. Reach is the property callers build on; overflow goes to the fallback range.

import ExecMemSystem

/// rel32 arithmetic, for callers that emit `call`/`jmp rel32` or RIP-relative operands.
public enum Rel32 {
    /// The displacement a rel32 field needs to go from `next` (the address after the instruction)
    /// to `target`, or nil when it does not fit.
    public static func displacement(from next: UInt, to target: UInt) -> Int32? {
        let d = Int64(bitPattern: UInt64(target)) &- Int64(bitPattern: UInt64(next))
        return Int32(exactly: d)
    }

    /// Whether every byte of `[aStart, aEnd)` reaches every byte of `[bStart, bEnd)` with rel32.
    public static func reaches(_ aStart: UInt, _ aEnd: UInt, _ bStart: UInt, _ bEnd: UInt) -> Bool {
        max(aEnd, bEnd) - min(aStart, bStart) <= UInt(Int32.max)
    }
}

/// The host executable's image, as /proc/self/maps shows it.
public struct HostImage: Sendable, Codable, Equatable {
    public let path: String
    public let start: UInt
    public let end: UInt
    public let textStart: UInt
    public let textEnd: UInt

    /// Reads /proc/self/maps; nil when the executable's mappings cannot be found.
    public static func current() -> HostImage? {
        guard let maps = try? ProcMaps.read() else { return nil }
        return find(in: maps)
    }

    static func find(in maps: [MapsEntry]) -> HostImage? {
        let image = ProcMaps.executableImage(in: maps)
        guard let first = image.first, let last = image.last else { return nil }
        let text = image.filter(\.isExecutable)
        return HostImage(path: first.path, start: first.start, end: last.end,
                         textStart: text.first?.start ?? first.start, textEnd: text.last?.end ?? last.end)
    }
}

/// A small, seedable generator (SplitMix64): pins the randomized base in tests, and drives the
/// deterministic workloads of the demo and benchmarks.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum RangePlacer {
    static let block = UInt(ExecMemGeometry.blockSize)
    /// Room left above `[heap]` for brk to grow, so the range never blocks malloc's heap.
    static let heapHeadroom: UInt = 256 << 20
    /// Lowest address considered (above mmap_min_addr and the null page region).
    static let lowest: UInt = 1 << 24
    /// The smallest range the default placement shrinks to before giving up reach: one block per type.
    static let minimumNearSize = 4 * ExecMemGeometry.blockSize

    /// Where a range went, how large it is (the default placement may shrink it), and why; and the
    /// executable's image when placing it read the maps anyway.
    struct Placed {
        let base: UInt
        let size: Int
        let note: String
        var image: HostImage? = nil
    }

    /// Reserves a range and says where and why.
    static func place(size: Int, placement: Placement, backend: any ExecMemBackend,
                      rng: inout some RandomNumberGenerator) throws(ExecMemError) -> Placed {
        func anywhere(_ why: String) throws(ExecMemError) -> Placed {
            Placed(base: try backend.reserve(size: size, at: nil), size: size, note: why)
        }
        switch placement {
        case .anywhere:
            return try anywhere("anywhere (kernel's choice)")
        case let .hint(address):
            let aligned = (address + block - 1) & ~(block - 1)
            do throws(ExecMemError) {
                return Placed(base: try backend.reserve(size: size, at: aligned), size: size,
                              note: "at the caller's hint \(hex(aligned))")
            } catch {
                throw .placementFailed("cannot reserve \(size) bytes at the hint \(hex(aligned)): \(error)")
            }
        case let .near(start, end):
            for _ in 0..<8 {
                guard let maps = try? ProcMaps.read() else { break }
                let target = HostImage(path: "target", start: start, end: end, textStart: start, textEnd: end)
                if let base = pick(nearCandidates(size: size, image: target, maps: maps), &rng),
                   let got = try? backend.reserve(size: size, at: base) {
                    return Placed(base: got, size: size, note: "within rel32 of \(hex(start))-\(hex(end)) (random base)")
                }
            }
            throw .placementFailed("no hole of \(size) bytes within rel32 reach of \(hex(start))-\(hex(end))")
        case .nearExecutable:
            for _ in 0..<8 {
                guard let maps = try? ProcMaps.read(), let image = HostImage.find(in: maps) else {
                    return try anywhere("anywhere: the executable's mappings were not found")
                }
                var want = size
                var candidates = nearCandidates(size: want, image: image, maps: maps)
                if candidates.isEmpty, let fit = largestNearFit(atMost: size, image: image, maps: maps) {
                    want = fit
                    candidates = nearCandidates(size: want, image: image, maps: maps)
                }
                guard let base = pick(candidates, &rng) else {
                    return try anywhere("anywhere: no hole of even \(min(size, minimumNearSize) >> 20) MiB within rel32 reach of \(image.path)")
                }
                if let got = try? backend.reserve(size: want, at: base) {
                    let note = want == size ? "within rel32 of the executable (random base)"
                        : "within rel32 of the executable, \(want >> 20) MiB of the \(size >> 20) MiB asked: the largest hole left in reach"
                    return Placed(base: got, size: want, note: note, image: image)
                }
                // Raced with another mapping: read the maps again.
            }
            return try anywhere("anywhere: placement near the executable kept failing")
        }
    }

    /// The largest size, a multiple of 2 MiB in `[minimumNearSize, limit)`, with a hole in reach of
    /// the image; nil when not even the minimum fits. Fitting is monotonic in size, so a binary search.
    static func largestNearFit(atMost limit: Int, image: HostImage, maps: [MapsEntry]) -> Int? {
        var lo = minimumNearSize / Int(block), hi = limit / Int(block) - 1
        guard lo <= hi, !nearCandidates(size: lo * Int(block), image: image, maps: maps).isEmpty else { return nil }
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if nearCandidates(size: mid * Int(block), image: image, maps: maps).isEmpty { hi = mid - 1 } else { lo = mid }
        }
        return lo * Int(block)
    }

    /// A random base among the candidates, or nil when there are none.
    static func pick(_ candidates: [(first: UInt, count: Int)], _ rng: inout some RandomNumberGenerator) -> UInt? {
        let total = candidates.reduce(0) { $0 + $1.count }
        guard total > 0 else { return nil }
        var k = Int.random(in: 0..<total, using: &rng)
        for c in candidates {
            if k < c.count { return c.first + UInt(k) * block }
            k -= c.count
        }
        return nil
    }

    /// Aligned bases `first + k * 2 MiB` for `k < count` where the range would fit a hole and reach the image.
    static func nearCandidates(size: Int, image: HostImage, maps: [MapsEntry]) -> [(first: UInt, count: Int)] {
        let span = UInt(Int32.max)
        let lo = max(image.end > span ? image.end - span : 0, lowest)
        guard image.start + span > UInt(size) else { return [] }
        // Highest base: in reach of the image, and below the top of user space (47-bit).
        let hi = min(image.start + span - UInt(size), (UInt(1) << 47) - UInt(1 << 30) - UInt(size))
        guard hi >= lo else { return [] }
        // Occupied intervals: every mapping, plus headroom for the brk heap to grow.
        var busy = maps.map { (start: $0.start, end: $0.end) }
        if let heap = maps.first(where: { $0.path == "[heap]" }) { busy.append((heap.start, heap.end + heapHeadroom)) }
        else { busy.append((image.end, image.end + heapHeadroom)) }
        busy.sort { $0.start < $1.start }
        var out: [(UInt, Int)] = []
        var cursor = lo
        func addGap(_ gapStart: UInt, _ gapEnd: UInt) {
            let first = (max(gapStart, lo) + block - 1) & ~(block - 1)
            guard gapEnd >= UInt(size), gapEnd - UInt(size) >= first else { return }
            let last = min(gapEnd - UInt(size), hi) & ~(block - 1)
            if last >= first { out.append((first, Int((last - first) / block) + 1)) }
        }
        for b in busy {
            if b.end <= cursor { continue }
            if b.start > cursor { addGap(cursor, b.start) }
            cursor = max(cursor, b.end)
            if cursor > hi { break }
        }
        if cursor <= hi { addGap(cursor, hi + UInt(size)) }
        return out
    }
}
