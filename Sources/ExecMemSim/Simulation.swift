// Runs a workload against a policy: applies every event, samples measures over time and snapshots of
// the range for the map, and sums what was loaded so totals can be reconciled with the data.

import ExecMem

public struct SimConfiguration: Sendable {
    /// The module range: 1 GiB, as x86-64's module space.
    public var rangeSize = 1 << 30
    /// Physical memory behind the direct map.
    public var physicalSize = 64 << 30
    public var workload = WorkloadParameters()
    /// Where 4 KiB frames come from (a long-running server by default).
    public var framePlacement: FramePlacement = .scattered
    /// Samples of the history (measures and range maps).
    public var samples = 48

    public init() {}

    public func validate() throws(SimError) {
        if rangeSize < 4 << 21 || rangeSize % (1 << 21) != 0 || rangeSize > 1 << 31 {
            throw .configuration("a module range of \(rangeSize) bytes: it must be a multiple of 2 MiB from 8 MiB (4 blocks, one per type) to 2 GiB")
        }
        if physicalSize < rangeSize || physicalSize % (1 << 21) != 0 {
            throw .configuration("physical memory of \(physicalSize) bytes: a multiple of 2 MiB at least as large as the range")
        }
        if samples < 2 { throw .configuration("at least 2 samples") }
    }
}

public struct SimResult: Codable, Sendable {
    public var policy: PolicyKind
    public var workload: WorkloadKind
    public var events: Int
    /// Bytes loaded per memory class over the run (module types, BPF, probes), for reconciliation.
    public var loadedBytes: [String: Int]
    public var modulesLoaded: Int
    public var moduleLoadFailures: Int
    /// BPF programs, probe slots and trampolines that did not fit.
    public var otherFailures: Int
    public var final: Measure
    public var history: [Measure]
    /// Range maps over time: per sample, per 2 MiB slot, the type (0 text ... 3 roAfterInit) or -1.
    public var maps: [[Int8]]
    /// The largest the range got (bytes).
    public var peakRangeUsed: Int
}

public enum Simulation {
    public static func makePolicy(_ kind: PolicyKind, _ c: SimConfiguration) throws(SimError) -> any SimPolicy {
        let physical = PhysicalMemory(bytes: c.physicalSize, seed: c.workload.seed ^ 0xC0FFEE, placement: c.framePlacement)
        switch kind {
        case .legacy, .legacyPack: return LegacyPolicy(kind: kind, rangeSize: c.rangeSize, physical: physical)
        case .split, .typed: return try CorePolicy(kind: kind, rangeSize: c.rangeSize, physical: physical)
        }
    }

    /// Runs one workload on one policy. `progress` gets the fraction done.
    public static func run(_ kind: PolicyKind, _ workload: Workload, data: DataSet, _ c: SimConfiguration,
                           progress: (Double) -> Void = { _ in }) throws(SimError) -> SimResult {
        try c.validate()
        let policy = try makePolicy(kind, c)
        var handles: [Int: [(Int, MemoryClass)]] = [:]
        var loaded: [String: Int] = [:]
        var modules = 0, moduleFailures = 0, otherFailures = 0
        var history: [Measure] = [], maps: [[Int8]] = []
        var peak = 0
        let every = max(1, workload.events.count / c.samples)
        func sample(_ i: Int) {
            var m = policy.measure()
            m.event = i
            peak = max(peak, m.rangeUsedBytes)
            history.append(m)
            maps.append(policy.slotMap().map { $0.map { Int8($0.rawValue) } ?? -1 })
        }
        for (i, e) in workload.events.enumerated() {
            switch e {
            case let .load(row, id):
                let m = data.modules[row]
                var core: [(Int, MemoryClass)] = [], initial: [(Int, MemoryClass)] = []
                var failed = false
                for (cls, bytes) in [(MemoryClass.text, m.text), (.rodata, m.rodata), (.roAfterInit, m.roAfterInit), (.data, m.data),
                                     (.initText, m.initText), (.initData, m.initData), (.initRodata, m.initRodata)] where bytes > 0 && !failed {
                    guard let h = policy.allocate(cls, size: bytes) else { failed = true; break }
                    if [.initText, .initData, .initRodata].contains(cls) { initial.append((h, cls)) } else { core.append((h, cls)) }
                    loaded[String(describing: cls), default: 0] += bytes
                }
                if failed {  // the load fails as a whole: give back what it got
                    for (h, _) in core + initial { policy.free(h) }
                    moduleFailures += 1
                } else {
                    for (h, cls) in core where cls == .roAfterInit { policy.seal(h) }  // init ran
                    for (h, _) in initial { policy.free(h) }  // init memory is freed after init
                    handles[id] = core
                    modules += 1
                }
            case let .unload(id):
                for (h, _) in handles.removeValue(forKey: id) ?? [] { policy.free(h) }
            case let .add(cls, bytes, id):
                if let h = policy.allocate(cls, size: bytes) {
                    handles[id] = [(h, cls)]
                    loaded[String(describing: cls), default: 0] += bytes
                } else {
                    otherFailures += 1
                }
            case let .remove(id):
                for (h, _) in handles.removeValue(forKey: id) ?? [] { policy.free(h) }
            }
            if i % every == 0 {
                sample(i)
                progress(Double(i) / Double(max(1, workload.events.count)))
            }
        }
        sample(workload.events.count)
        return SimResult(policy: kind, workload: workload.kind, events: workload.events.count, loadedBytes: loaded,
                         modulesLoaded: modules, moduleLoadFailures: moduleFailures, otherFailures: otherFailures, final: history.last!, history: history,
                         maps: maps, peakRangeUsed: peak)
    }

    /// Every policy on every workload (or the ones given).
    public static func runAll(policies: [PolicyKind] = PolicyKind.allCases, workloads: [WorkloadKind] = WorkloadKind.allCases,
                              data: DataSet, _ c: SimConfiguration, progress: (String, Double) -> Void = { _, _ in }) throws(SimError) -> [SimResult] {
        var out: [SimResult] = []
        let total = Double(policies.count * workloads.count)
        for (w, wk) in workloads.enumerated() {
            let workload = try Workload.make(wk, data: data, c.workload)
            for (p, pk) in policies.enumerated() {
                let done = Double(w * policies.count + p)
                out.append(try run(pk, workload, data: data, c) { f in progress("\(pk.rawValue) / \(wk.rawValue)", (done + f) / total) })
            }
        }
        progress("done", 1)
        return out
    }
}

