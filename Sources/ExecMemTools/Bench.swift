// `execmem bench`: each figure beside its baseline, measured in the same run, and the ratio.
//
//   alloc     allocate + write + free with fleet-distributed sizes and ~10,000 live allocations,
//             against one mmap + mprotect per allocation (munmap on free)
//   locality  10,000 small functions called in random order: packed in 2 MiB blocks, one page per
//             function, and packed on 4 KiB pages
//   memory    resident memory (Pss) and page tables for 10,000 fleet-sized allocations vs the baseline
//   registry  what the code registry's sinks cost (BenchRegistry.swift)

import ExecMem
import ExecMemSystem

public struct BenchResult: Codable, Sendable {
    public var benchmark: String
    public var figure: String
    public var unit: String
    public var value: Double
    public var baseline: String
    public var baselineValue: Double
    /// How many times better than the baseline (higher is better, whatever the unit).
    public var ratio: Double
    public var notes: String
}

public enum Bench {
    public static let names = ["alloc", "locality", "memory", "bpf", "bpf-pack", "loader", "probes", "registry"]
    static let liveAllocations = 10_000
    static let baselineName = "mmap + mprotect per allocation"

    /// Runs one benchmark, or all when `name` is nil. `scale` shortens (< 1) or lengthens the timed loops.
    public static func run(_ name: String?, scale: Double = 1) throws -> [BenchResult] {
        var out: [BenchResult] = []
        for n in name.map({ [$0] }) ?? names {
            switch n {
            case "alloc": out += try alloc(scale: scale)
            case "locality": out += try locality(scale: scale)
            case "memory": out += try memory()
            case "bpf": out += try bpf(scale: scale)
            case "bpf-pack": out += try bpfPack(scale: scale)
            case "loader": out += try loader(scale: scale)
            case "probes": out += try probes(scale: scale)
            case "registry": out += try registry(scale: scale)
            default: throw BenchError("unknown benchmark '\(n)'; known: \(names.joined(separator: ", "))")
            }
        }
        return out
    }

    /// 16 KiB of code to copy from: NOPs ending in `ret`.
    static let codeBytes = [UInt8](repeating: 0x90, count: 16383) + [0xC3]

    // MARK: - alloc

    static func alloc(scale: Double) throws -> [BenchResult] {
        let operations = max(2000, Int(200_000 * scale))
        let warmup = operations / 4
        func ours(_ config: ExecMemConfiguration) throws -> Double {
            let mem = try ExecMemAllocator(config)
            var sizes = FleetSizes(seed: 7)
            var rng = DemoRandom(seed: 9)
            return try codeBytes.withUnsafeBytes { bytes -> Double in
                var slots: [Allocation] = []
                for _ in 0..<liveAllocations {
                    let n = sizes.next()
                    let a = try mem.allocate(.bpf, size: n)
                    try mem.write(UnsafeRawBufferPointer(rebasing: bytes[0..<n]), to: a)
                    slots.append(a)
                }
                // Warm up to the steady state (the blocks churn settles on), then time.
                var t = Clock.now
                for round in 0..<(warmup + operations) {
                    if round == warmup { t = Clock.now }
                    let i = Int(rng.next() % UInt64(liveAllocations))
                    try mem.free(slots[i])
                    let n = sizes.next()
                    let a = try mem.allocate(.bpf, size: n)
                    try mem.write(UnsafeRawBufferPointer(rebasing: bytes[0..<n]), to: a)
                    slots[i] = a
                }
                return Double(operations) / t.elapsedSeconds
            }
        }
        func baseline() throws -> Double {
            var sizes = FleetSizes(seed: 7)
            var rng = DemoRandom(seed: 9)
            return try codeBytes.withUnsafeBytes { bytes -> Double in
                var slots: [MmapPerAllocation.Code] = []
                for _ in 0..<liveAllocations {
                    slots.append(try MmapPerAllocation.install(UnsafeRawBufferPointer(rebasing: bytes[0..<sizes.next()])))
                }
                var t = Clock.now
                for round in 0..<(warmup + operations) {
                    if round == warmup { t = Clock.now }
                    let i = Int(rng.next() % UInt64(liveAllocations))
                    try MmapPerAllocation.free(slots[i])
                    slots[i] = try MmapPerAllocation.install(UnsafeRawBufferPointer(rebasing: bytes[0..<sizes.next()]))
                }
                let rate = Double(operations) / t.elapsedSeconds
                for s in slots { try MmapPerAllocation.free(s) }
                return rate
            }
        }
        let base = try baseline()
        var transient = ExecMemConfiguration()
        transient.writeView = .transient
        var anonymous = ExecMemConfiguration()
        anonymous.backing = .anonymous
        let note = "\(liveAllocations) live, \(operations) timed operations of free + allocate + write after \(warmup) warm-up ones, fleet sizes"
        return try [("memfd, persistent write view", ExecMemConfiguration()),
                    ("memfd, transient write view", transient),
                    ("anonymous, whole-block mprotect", anonymous)].map { name, config in
            let rate = try ours(config)
            return BenchResult(benchmark: "alloc", figure: "ExecMem (\(name))", unit: "ops/s", value: rate,
                               baseline: baselineName, baselineValue: base, ratio: rate / base, notes: note)
        }
    }

    // MARK: - locality

    static func locality(scale: Double) throws -> [BenchResult] {
        let rounds = max(3, Int(30 * scale))
        var sizes = FleetSizes(seed: 11)
        let functionSizes = (0..<liveAllocations).map { _ in sizes.next() }
        var rng = DemoRandom(seed: 13)
        var order = Array(0..<liveAllocations)
        order.shuffle(using: &rng)
        let body = DemoFunction.add(1).code(size: 7, at: 0)  // lea eax, [rdi + 1]; ret

        /// ns per call over `rounds` passes in `order`; checks every call happened.
        func time(_ addresses: [UInt]) throws -> Double {
            let ordered = order.map { addresses[$0] }
            var acc: Int32 = 0
            for a in ordered { acc = callFunction(a, acc) }  // warm up
            let t = Clock.now
            for _ in 0..<rounds { for a in ordered { acc = callFunction(a, acc) } }
            let seconds = t.elapsedSeconds
            guard acc == Int32((rounds + 1) * liveAllocations) else { throw BenchError("locality: wrong result \(acc)") }
            return seconds * 1e9 / Double(rounds * liveAllocations)
        }
        func packed(collapse: Bool) throws -> (Double, Double) {
            var config = ExecMemConfiguration()
            config.collapseHugePages = collapse
            let mem = try ExecMemAllocator(config)
            var addresses: [UInt] = []
            for size in functionSizes {
                let a = try mem.allocate(.bpf, size: size)
                try mem.write(body, to: a)
                addresses.append(a.address)
            }
            mem.settle()  // time the blocks as they end up, collapsed
            return (try time(addresses), mem.statistics()[.text].hugePageCoverage)
        }
        var pages: [MmapPerAllocation.Code] = []
        for size in functionSizes {
            var code = body
            code += [UInt8](repeating: 0xCC, count: max(0, size - body.count))
            pages.append(try code.withUnsafeBytes { try MmapPerAllocation.install($0) })
        }
        let perPage = try time(pages.map(\.address))
        for p in pages { try MmapPerAllocation.free(p) }
        let (huge, coverage) = try packed(collapse: true)
        let (small, smallCoverage) = try packed(collapse: false)
        let note = "\(liveAllocations) functions of fleet sizes, \(rounds) passes in one random order"
        return [
            BenchResult(benchmark: "locality", figure: "packed in 2 MiB blocks (huge-page coverage \(percent(coverage)))", unit: "ns/call",
                        value: huge, baseline: "one mmap per function", baselineValue: perPage, ratio: perPage / huge, notes: note),
            BenchResult(benchmark: "locality", figure: "packed on 4 KiB pages (huge-page coverage \(percent(smallCoverage)))", unit: "ns/call",
                        value: small, baseline: "one mmap per function", baselineValue: perPage, ratio: perPage / small, notes: note),
        ]
    }

    // MARK: - memory

    static func memory() throws -> [BenchResult] {
        var sizes = FleetSizes(seed: 17)
        let allocationSizes = (0..<liveAllocations).map { _ in sizes.next() }
        let requested = allocationSizes.reduce(0, +)
        func ours() throws -> (pss: Int, pte: Int) {
            let before = try ResidentMemory.read()
            let mem = try ExecMemAllocator()
            var live: [Allocation] = []
            live.reserveCapacity(liveAllocations)
            try codeBytes.withUnsafeBytes { bytes in
                for n in allocationSizes {
                    let a = try mem.allocate(.bpf, size: n)
                    try mem.write(UnsafeRawBufferPointer(rebasing: bytes[0..<n]), to: a)
                    live.append(a)
                }
            }
            let after = try ResidentMemory.read()
            return (after.pss - before.pss, after.pageTables - before.pageTables)
        }
        func baseline() throws -> (pss: Int, pte: Int) {
            let before = try ResidentMemory.read()
            var live: [MmapPerAllocation.Code] = []
            live.reserveCapacity(liveAllocations)
            try codeBytes.withUnsafeBytes { bytes in
                for n in allocationSizes { live.append(try MmapPerAllocation.install(UnsafeRawBufferPointer(rebasing: bytes[0..<n]))) }
            }
            let after = try ResidentMemory.read()
            for c in live { try MmapPerAllocation.free(c) }
            return (after.pss - before.pss, after.pageTables - before.pageTables)
        }
        let o = try ours()
        let b = try baseline()
        let note = "\(liveAllocations) allocations, \(requested) bytes requested and written"
        return [
            BenchResult(benchmark: "memory", figure: "resident memory (Pss delta)", unit: "bytes", value: Double(o.pss),
                        baseline: baselineName, baselineValue: Double(b.pss), ratio: Double(b.pss) / Double(max(1, o.pss)), notes: note),
            BenchResult(benchmark: "memory", figure: "page tables (VmPTE delta)", unit: "bytes", value: Double(o.pte),
                        baseline: baselineName, baselineValue: Double(b.pte), ratio: Double(b.pte) / Double(max(4096, o.pte)),
                        notes: "ratio against at least one 4 KiB page table"),
        ]
    }
}

/// Proportional resident memory of the process (Pss from smaps_rollup, which counts a page mapped
/// twice, as a memfd's run and write views are, once) and its page tables (VmPTE).
struct ResidentMemory {
    var pss: Int
    var pageTables: Int

    static func read() throws -> ResidentMemory {
        func field(_ text: String, _ key: String) -> Int {
            for line in text.split(separator: "\n") where line.hasPrefix(key) {
                let parts = line.split(separator: " ")
                if parts.count >= 2, let n = Int(parts[1]) { return n * 1024 }
            }
            return 0
        }
        let rollup = try Sys.readText("/proc/self/smaps_rollup")
        let status = try Sys.readText("/proc/self/status")
        return ResidentMemory(pss: field(rollup, "Pss:"), pageTables: field(status, "VmPTE:"))
    }
}

/// `0.123` -> `12.3%`.
public func percent(_ x: Double) -> String {
    let p = (x * 1000).rounded() / 10
    return "\(p)%"
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
