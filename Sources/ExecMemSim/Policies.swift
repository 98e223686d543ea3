// The four answers to the seed's question, behind one interface the workloads drive:
//
//   legacy        Linux 6.4 to 6.9: each module memory type is its own page-granular vmalloc in the
//                 module range (with a guard page), and set_memory_ro/x changes protections page by
//                 page, splitting the direct map's large pages; BPF programs, probe pages and
//                 trampolines are module_alloc'd pages too
//   legacy+pack   the same, with bpf_prog_pack: BPF programs in 64-byte chunks of 2 MiB packs
//   split         the seed's split range: fixed text / rodata / data / ro-after-init sub-ranges of
//                 2 MiB blocks (ExecMem's core, LayoutPolicy.splitRange, over the simulated backend)
//   typed         typed 2 MiB blocks from one pool (ExecMem's core, LayoutPolicy.typedBlocks)

import ExecMem

/// What a simulated allocation holds.
public enum MemoryClass: Int, CaseIterable, Sendable {
    case text, rodata, roAfterInit, data, initText, initData, initRodata, bpf, probe, trampoline

    /// The mapping type it ends up with.
    var type: ExecMemType {
        switch self {
        case .text, .initText, .bpf, .probe, .trampoline: .text
        case .rodata, .initRodata: .rodata
        case .roAfterInit: .roAfterInit
        case .data, .initData: .data
        }
    }

    var kind: ExecMemKind {
        switch self {
        case .text, .initText: .moduleText
        case .rodata, .initRodata: .moduleRodata
        case .roAfterInit: .moduleRoAfterInit
        case .data, .initData: .moduleData
        case .bpf: .bpf
        case .probe: .probes
        case .trampoline: .trace
        }
    }
}

public enum PolicyKind: String, CaseIterable, Sendable, Codable {
    case legacy
    case legacyPack = "legacy+pack"
    case split
    case typed

    public var summary: String {
        switch self {
        case .legacy: "Linux 6.4-6.9: page-granular vmalloc per type, set_memory_ro/x per page"
        case .legacyPack: "legacy plus bpf_prog_pack for BPF"
        case .split: "the seed's split range: fixed per-type sub-ranges of 2 MiB blocks"
        case .typed: "typed 2 MiB blocks from one pool (the ROX cache, for every type)"
        }
    }
}

/// One point of a run's history, and its final state.
public struct Measure: Codable, Sendable, Equatable {
    public var event = 0
    /// Bytes mapped by 2 MiB and by 4 KiB entries, per type (text, rodata, roAfterInit, data).
    public var hugeBytes = [Int](repeating: 0, count: 4)
    public var smallBytes = [Int](repeating: 0, count: 4)
    /// Page-table entries mapping live code (PMDs + PTEs): the iTLB reach the seed worries about.
    public var textEntries = 0
    public var directMapSplits = 0
    public var pmdSplits = 0
    /// Physical memory committed, and the bytes callers asked for.
    public var reservedBytes = 0
    public var usedBytes = 0
    /// Address space of the module range in use (allocations and guard pages, or claimed blocks).
    public var rangeUsedBytes = 0
    public var failures = 0

    public var wasteBytes: Int { reservedBytes - usedBytes }
}

/// A policy the workloads drive: allocate, free, seal, measure.
public protocol SimPolicy: AnyObject {
    var kind: PolicyKind { get }
    /// An allocation id, or nil when the range is full.
    func allocate(_ c: MemoryClass, size: Int) -> Int?
    func free(_ id: Int)
    /// Ro-after-init is made read-only after init.
    func seal(_ id: Int)
    func measure() -> Measure
    /// The dominant type of every 2 MiB slot of the range (nil: free), for the SVG map.
    func slotMap() -> [ExecMemType?]
}

// MARK: - ExecMem's core over the simulated page tables

final class CorePolicy: SimPolicy {
    public let kind: PolicyKind
    let allocator: ExecMemAllocator
    let backend: SimulatedBackend
    let physical: PhysicalMemory
    private var live: [Int: Allocation] = [:]
    private var nextID = 0
    private var requested = 0
    private var failures = 0

    init(kind: PolicyKind, rangeSize: Int, physical: PhysicalMemory) throws(SimError) {
        self.kind = kind
        self.physical = physical
        let base: UInt = 1 << 44
        backend = SimulatedBackend(physical: physical, base: base)
        var c = ExecMemConfiguration()
        c.rangeSize = rangeSize
        c.fallbackSize = 0
        c.placement = .hint(base)
        c.layout = kind == .split ? .defaultSplit : .typedBlocks
        do { allocator = try ExecMemAllocator(c, backend: backend) } catch { throw .configuration(error.description) }
    }

    public func allocate(_ c: MemoryClass, size: Int) -> Int? {
        guard let a = try? allocator.allocate(c.kind, size: size) else { failures += 1; return nil }
        if c == .roAfterInit { backend.touch(run: a.address & ~ExecMemGeometry.blockMask, offset: Int(a.address & ExecMemGeometry.blockMask), length: a.capacity) }
        nextID += 1
        live[nextID] = a
        requested += size
        return nextID
    }

    public func free(_ id: Int) {
        guard let a = live.removeValue(forKey: id) else { return }
        requested -= a.size
        try? allocator.free(a)
    }

    public func seal(_ id: Int) {
        if let a = live[id] { try? allocator.seal(a) }
    }

    public func measure() -> Measure {
        let s = allocator.statistics()
        var m = Measure()
        for t in ExecMemType.allCases {
            m.hugeBytes[t.rawValue] = s[t].hugeMappedBytes
            m.smallBytes[t.rawValue] = s[t].reservedBytes - s[t].hugeMappedBytes
        }
        m.smallBytes[ExecMemType.roAfterInit.rawValue] = backend.pteCount * 4096
        m.textEntries = s[.text].blocks
        m.directMapSplits = physical.splits
        m.pmdSplits = backend.pmdSplits
        m.reservedBytes = physical.bytesInUse
        m.usedBytes = requested
        m.rangeUsedBytes = s.total.blocks << ExecMemGeometry.blockShift
        m.failures = failures
        return m
    }

    public func slotMap() -> [ExecMemType?] { allocator.slotTypes.first ?? [] }
}
