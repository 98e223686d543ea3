// `execmem demo`: the main job on built-in defaults. Generates a few thousand small x86-64 functions
// of several sizes across the text kinds (BPF programs, probe slots, trace trampolines, module text),
// some calling the host with `call rel32` and some reading a rodata table with RIP-relative loads;
// installs them through the write view, runs every one and checks its result, frees a third (which
// must read back as int3), runs the rest again, seals some ro-after-init data, and reports per-type
// statistics, the 2 MiB coverage smaps shows, the distance to the executable and a W^X scan.

import ExecMem
import ExecMemBPF
import ExecMemSystem

public struct DemoReport: Codable, Sendable {
    public var backend: String
    public var layout: String
    public var rangeBase: UInt
    public var rangeSize: Int
    public var placement: String
    public var primaryReachesExecutable: Bool
    /// Largest distance in bytes from any installed function to any byte of the executable's text.
    public var maxDistanceToExecutableText: UInt
    public var functionsInstalled: Int
    /// Calls made whose result was checked against the expected value.
    public var functionsRun: Int
    public var wrongResults: Int
    public var functionsFreed: Int
    /// Every freed byte read back as int3 (0xCC).
    public var freedTextIsTrap: Bool
    public var hostCallsDirect: Int
    public var hostCallsIndirect: Int
    public var rodataTables: Int
    public var sealedAllocations: Int
    public var writesAfterSealRefused: Int
    /// Share of committed text bytes mapped by 2 MiB pages, from /proc/self/smaps (0...1).
    public var hugePageCoverage: Double
    /// Lines of /proc/self/maps that are writable and executable at once.
    public var writableExecutableMappings: Int
    public var bpf: BPFDemoReport
    public var module: LoaderDemoReport
    public var invariantViolations: [String]
    public var types: [TypeStatistics]
    public var kinds: [KindStatistics]
    public var notes: [String]
    public var seconds: Double

    /// Whether everything the demo checks held.
    public var ok: Bool {
        wrongResults == 0 && freedTextIsTrap && writableExecutableMappings == 0 && invariantViolations.isEmpty
            && writesAfterSealRefused == sealedAllocations && functionsRun > 0 && bpf.ok && module.ok
    }
}

public enum Demo {
    /// Runs the demo on `allocator` (a fresh default one when nil).
    public static func run(functions count: Int = 4000, bpfPrograms: Int = 3000, seed: UInt64 = 1,
                           allocator: ExecMemAllocator? = nil) throws -> DemoReport {
        let started = Clock.now
        let mem = try allocator ?? ExecMemAllocator()
        var rng = DemoRandom(seed: seed)
        let kinds: [ExecMemKind] = [.bpf, .probes, .trace, .moduleText]
        let sizes = [32, 64, 160, 480, 1200, 3000]

        // Rodata tables the table-reading functions load from.
        var tables: [(Allocation, Int32)] = []
        for i in 0..<16 {
            let table = try mem.allocate(.moduleRodata, size: 64)
            let value = Int32(i * 1000 + 7)
            try mem.write(withUnsafeBytes(of: value.littleEndian) { Array($0) }, to: table)
            tables.append((table, value))
        }

        var installed: [(Allocation, DemoFunction)] = []
        var direct = 0, indirect = 0
        for i in 0..<count {
            let f: DemoFunction
            switch i % 4 {
            case 0: f = .add(Int32(truncatingIfNeeded: rng.next()))
            case 1: f = .mulAdd(Int32(truncatingIfNeeded: rng.next()), Int32(truncatingIfNeeded: rng.next()))
            case 2: f = .callHost(Int32(i))
            default:
                let (t, v) = tables[i % tables.count]
                f = .readTable(t.address, v)
            }
            let size = sizes[Int(rng.next() % UInt64(sizes.count))]
            let a = try mem.allocate(kinds[i % kinds.count], size: size)
            let code = f.code(size: size, at: a.address)
            if case .callHost = f { if code.contains(0xE8) { direct += 1 } else { indirect += 1 } }
            try mem.write(code, to: a)
            installed.append((a, f))
        }
        mem.makeVisible()

        var run = 0, wrong = 0
        func runAll(_ list: [(Allocation, DemoFunction)]) {
            for (a, f) in list {
                let x = Int32(truncatingIfNeeded: rng.next())
                if callFunction(a.address, x) != f.expected(x) { wrong += 1 }
                run += 1
            }
        }
        runAll(installed)

        // Free every third function; freed text must read back as int3.
        var trapped = true
        var kept: [(Allocation, DemoFunction)] = []
        var freed = 0
        for (i, entry) in installed.enumerated() {
            if i % 3 == 0 {
                try mem.free(entry.0)
                let bytes = UnsafeRawBufferPointer(start: entry.0.pointer, count: entry.0.capacity)
                if !bytes.allSatisfy({ $0 == ExecMemGeometry.trapByte }) { trapped = false }
                freed += 1
            } else {
                kept.append(entry)
            }
        }
        runAll(kept)

        // ro-after-init: written during "init", sealed, then every write must be refused.
        var sealed = 0, refused = 0
        for i in 0..<8 {
            let a = try mem.allocate(.moduleRoAfterInit, size: 128)
            try mem.write([UInt8](repeating: UInt8(i), count: 128), to: a)
            try mem.seal(a)
            sealed += 1
            do { try mem.write([1], to: a) } catch { if case .sealed = error { refused += 1 } }
        }

        let bpf = try BPFDemoReport.run(programs: bpfPrograms, allocator: mem)
        let module = try LoaderDemoReport.run(allocator: mem)

        // P6 is about the program as it runs, once fresh blocks' background preparation is done.
        mem.settle()
        let stats = mem.statistics()
        let rwx = (try? ProcMaps.writableExecutable().count) ?? -1
        var maxDistance: UInt = 0
        if let image = mem.hostImage {
            for (a, _) in kept {
                maxDistance = max(maxDistance, a.end > image.textStart ? a.end - image.textStart : image.textStart - a.address)
                maxDistance = max(maxDistance, a.end > image.textEnd ? a.end - image.textEnd : image.textEnd - a.address)
            }
        }
        return DemoReport(
            backend: stats.backend, layout: stats.layout, rangeBase: mem.primaryBase, rangeSize: mem.primarySize,
            placement: stats.ranges[0].placement, primaryReachesExecutable: mem.primaryReachesExecutable,
            maxDistanceToExecutableText: maxDistance,
            functionsInstalled: installed.count, functionsRun: run, wrongResults: wrong, functionsFreed: freed,
            freedTextIsTrap: trapped, hostCallsDirect: direct, hostCallsIndirect: indirect, rodataTables: tables.count,
            sealedAllocations: sealed, writesAfterSealRefused: refused,
            hugePageCoverage: stats[.text].hugePageCoverage, writableExecutableMappings: rwx, bpf: bpf, module: module,
            invariantViolations: mem.checkInvariants(), types: stats.types, kinds: stats.kinds, notes: stats.notes,
            seconds: started.elapsedSeconds)
    }
}

/// Deterministic randomness for the demo and benchmarks.
typealias DemoRandom = SplitMix64

extension SplitMix64 {
    init(seed: UInt64) { self.init(state: seed) }
}

/// Monotonic time for reports and benchmarks.
struct Clock {
    let nanoseconds: UInt64
    static var now: Clock { Clock(nanoseconds: DispatchTimeShim.monotonicNanoseconds()) }
    var elapsedSeconds: Double { Double(Clock.now.nanoseconds - nanoseconds) / 1e9 }
}
