// Workloads: sequences of events drawn from the real data with a seed, so a run is repeatable.
//
//   boot      load a realistic module set (N modules sampled from the 4,023 rows); each load
//             allocates every memory type, runs init, seals ro-after-init, frees init memory
//   churn     the boot set, then modules unloaded and others loaded
//   bpf       BPF programs of the real size distribution loaded and freed over time (~1,000 live)
//   probes    kprobe instruction slots and ftrace trampolines enabled and disabled over time
//   mixed     a server-like run: boot, then churn, BPF and probes interleaved
//   all       every module of the data set loaded, in a random order: the range under pressure

import ExecMem

public enum WorkloadKind: String, CaseIterable, Sendable, Codable {
    case boot, churn, bpf, probes, mixed, all

    public var summary: String {
        switch self {
        case .boot: "boot: load a sampled module set, init sections freed after load"
        case .churn: "churn: the boot set, then modules unloaded and loaded"
        case .bpf: "bpf: programs of the real size distribution loaded and freed"
        case .probes: "probes: kprobe slots and ftrace trampolines added and removed"
        case .mixed: "mixed: boot, then churn, BPF and probes interleaved"
        case .all: "all: every one of the 4,023 modules loaded (the range under pressure)"
        }
    }
}

public enum Event: Sendable, Equatable {
    /// Load module `row` as instance `id`.
    case load(row: Int, id: Int)
    case unload(id: Int)
    /// An allocation of `bytes` of class `cls` as instance `id`, and its release.
    case add(cls: MemoryClass, bytes: Int, id: Int)
    case remove(id: Int)
}

public struct WorkloadParameters: Sendable {
    /// Modules loaded at boot.
    public var modules = 150
    public var seed: UInt64 = 1
    /// Module unload/load pairs after boot (churn, mixed).
    public var churnOperations = 1000
    /// BPF program loads and frees (bpf, mixed), and how many stay live.
    public var bpfEvents = 20_000
    public var bpfLive = 1000
    /// Probe and trampoline additions and removals (probes, mixed).
    public var probeEvents = 6000
    /// x86-64 bytes per eBPF instruction and per program (prologue, epilogue), Linux's JIT roughly.
    public var bpfBytesPerInstruction = 6
    public var bpfBytesPerProgram = 64
    /// Sizes of one kprobe instruction slot and one ftrace trampoline.
    public var probeSlotBytes = 64
    public var trampolineBytes = 300

    public init() {}
}

public struct Workload: Sendable {
    public let kind: WorkloadKind
    public let events: [Event]

    public static func make(_ kind: WorkloadKind, data: DataSet, _ p: WorkloadParameters) throws(SimError) -> Workload {
        guard p.modules >= 0, p.modules <= data.modules.count else {
            throw .configuration("\(p.modules) modules requested, the data has \(data.modules.count)")
        }
        guard !data.bpfSizes.isEmpty else { throw .configuration("no BPF program sizes in the data") }
        var rng = SplitMix64(state: p.seed)
        var events: [Event] = []
        var nextID = 0
        var loaded: [(row: Int, id: Int)] = []
        var notLoaded = Array(0..<data.modules.count)
        func boot() {
            for _ in 0..<p.modules {
                let k = rng.below(notLoaded.count)
                let row = notLoaded.remove(at: k)
                nextID += 1
                events.append(.load(row: row, id: nextID))
                loaded.append((row, nextID))
            }
        }
        func churnStep() {
            guard !loaded.isEmpty, !notLoaded.isEmpty else { return }
            let out = loaded.remove(at: rng.below(loaded.count))
            events.append(.unload(id: out.id))
            notLoaded.append(out.row)
            let row = notLoaded.remove(at: rng.below(notLoaded.count))
            nextID += 1
            events.append(.load(row: row, id: nextID))
            loaded.append((row, nextID))
        }
        var liveBPF: [Int] = []
        func bpfStep() {
            if liveBPF.count < p.bpfLive && (liveBPF.isEmpty || rng.below(100) < 60) {
                let slots = data.bpfSizes[rng.below(data.bpfSizes.count)]
                nextID += 1
                events.append(.add(cls: .bpf, bytes: slots * p.bpfBytesPerInstruction + p.bpfBytesPerProgram, id: nextID))
                liveBPF.append(nextID)
            } else {
                events.append(.remove(id: liveBPF.remove(at: rng.below(liveBPF.count))))
            }
        }
        var liveProbes: [Int] = []
        func probeStep() {
            if liveProbes.count < 3000 && (liveProbes.isEmpty || rng.below(100) < 60) {
                nextID += 1
                let trampoline = rng.below(3) == 0
                events.append(.add(cls: trampoline ? .trampoline : .probe, bytes: trampoline ? p.trampolineBytes : p.probeSlotBytes, id: nextID))
                liveProbes.append(nextID)
            } else {
                events.append(.remove(id: liveProbes.remove(at: rng.below(liveProbes.count))))
            }
        }
        switch kind {
        case .all:
            for row in Array(0..<data.modules.count).shuffled(using: &rng) {
                nextID += 1
                events.append(.load(row: row, id: nextID))
            }
        case .boot: boot()
        case .churn: boot(); for _ in 0..<p.churnOperations { churnStep() }
        case .bpf: for _ in 0..<p.bpfEvents { bpfStep() }
        case .probes: for _ in 0..<p.probeEvents { probeStep() }
        case .mixed:
            boot()
            let total = p.churnOperations / 2 + p.bpfEvents / 4 + p.probeEvents / 2
            for _ in 0..<total {
                switch rng.below(total) {
                case 0..<(p.churnOperations / 2): churnStep()
                case (p.churnOperations / 2)..<(p.churnOperations / 2 + p.bpfEvents / 4): bpfStep()
                default: probeStep()
                }
            }
        }
        return Workload(kind: kind, events: events)
    }
}

extension SplitMix64 {
    /// A draw in 0..<n.
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
