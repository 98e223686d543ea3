// How an allocator is set up: where its range goes, how blocks are laid out, what backs them, how
// code is written, and how each kind allocates. Every field has a default that suits a JIT or loader
// on x86-64 Linux; `validate()` refuses combinations that cannot work, before anything is mapped.

/// Where a range is placed.
public enum Placement: Sendable, Codable, Equatable {
    /// Within +/-2 GiB of the host executable's image, at a random 2 MiB-aligned base, so generated
    /// code reaches host functions with `call rel32`. If no hole of the full size is left in reach
    /// (another allocator took it, say), the range shrinks to the largest hole in reach of at least
    /// 8 MiB; below that it goes anywhere. The allocator's notes and `primarySize` say which.
    case nearExecutable
    /// Within +/-2 GiB of every byte of `[start, end)` (a shared library's image, say), at a random
    /// 2 MiB-aligned base; an error when no hole fits.
    case near(start: UInt, end: UInt)
    /// Anywhere the kernel chooses (randomized by ASLR).
    case anywhere
    /// Exactly at this address (rounded up to 2 MiB); an error if it is taken.
    case hint(UInt)
}

/// How blocks are laid out in the range: the seed's open question, both answers.
public enum LayoutPolicy: Sendable, Codable, Equatable {
    /// Typed 2 MiB blocks handed out from one pool (Linux's ROX cache, generalized to every type).
    case typedBlocks
    /// Fixed per-type sub-ranges, in this order from the range's base: text, rodata, data, roAfterInit.
    /// Fractions of the range; each type gets at least one block.
    case splitRange(text: Double, rodata: Double, data: Double, roAfterInit: Double)

    /// The split the seed sketches: half for text, the rest shared out by typical module sizes.
    public static let defaultSplit = LayoutPolicy.splitRange(text: 0.5, rodata: 0.2, data: 0.25, roAfterInit: 0.05)
}

/// What memory backs the blocks.
public enum Backing: String, Sendable, Codable, CaseIterable {
    /// A shared memory object per type (a shared anonymous mapping, shown as `/dev/zero`, which perf
    /// names through its map file), the run view mapped with the type's protection and a separate
    /// write view of the same pages; run views collapsed to 2 MiB pages with MADV_COLLAPSE. The name
    /// is historical: it was a memfd, which perf cannot name.
    case memfd
    /// A hugetlb memfd (MFD_HUGETLB | MFD_HUGE_2MB): 2 MiB pages from the reserved pool, guaranteed.
    case hugetlb
    /// Anonymous memory; writes flip the whole block's protection (never a part of it).
    case anonymous
}

/// How text and read-only blocks are written.
public enum WriteViewMode: String, Sendable, Codable, CaseIterable {
    /// One writable alias per block, mapped at commit and kept (fast).
    case persistent
    /// A writable alias mapped for one write batch and unmapped after it (the kernel's text-poke mm).
    case transient
}

public struct ExecMemConfiguration: Sendable, Codable {
    /// Size of the primary range, a multiple of 2 MiB, at most 2 GiB.
    public var rangeSize: Int = 1 << 30
    public var placement: Placement = .nearExecutable
    /// Size of the fallback range, reserved when the primary is full; 0 for none.
    public var fallbackSize: Int = 1 << 30
    public var fallbackPlacement: Placement = .nearExecutable
    public var layout: LayoutPolicy = .typedBlocks
    public var backing: Backing = .memfd
    public var writeView: WriteViewMode = .persistent
    /// Collapse run views to 2 MiB pages with MADV_COLLAPSE (memfd and anonymous backings).
    public var collapseHugePages: Bool = true
    /// Empty packed blocks kept per type before any is released (hysteresis against commit/release churn).
    public var retainedEmptyBlocks: Int = 1
    /// Seed for the randomized range base; nil draws from the system's generator.
    public var randomSeed: UInt64? = nil
    /// Per-kind configuration; kinds left out use `KindRange(type: kind.defaultType)`.
    public var kinds: [ExecMemKind: KindRange] = [:]
    /// Code-registry sinks this allocator switches on when it is created (added to what the
    /// environment asks for; sinks are per process, so they stay on for the process's life).
    public var codeSinks: CodeSinks = []

    public init() {}

    public func range(for kind: ExecMemKind) -> KindRange {
        kinds[kind] ?? KindRange(type: kind.defaultType)
    }

    /// Refuses configurations that cannot work, naming the field.
    public func validate() throws(ExecMemError) {
        let block = ExecMemGeometry.blockSize
        for (name, size) in [("rangeSize", rangeSize), ("fallbackSize", fallbackSize)] {
            if name == "fallbackSize" && size == 0 { continue }
            if size < block || size % block != 0 {
                throw .badConfiguration("\(name) \(size) must be a positive multiple of \(block) (2 MiB)")
            }
            if size > ExecMemGeometry.maxRangeSize {
                throw .badConfiguration("\(name) \(size) exceeds 2 GiB, the reach of a signed 32-bit displacement")
            }
        }
        if retainedEmptyBlocks < 0 { throw .badConfiguration("retainedEmptyBlocks \(retainedEmptyBlocks) is negative") }
        if case let .splitRange(t, r, d, a) = layout {
            let fractions = [t, r, d, a]
            if fractions.contains(where: { !($0 > 0) || !$0.isFinite }) || fractions.reduce(0, +) > 1.000_001 {
                throw .badConfiguration("split fractions \(fractions) must be positive and add up to at most 1")
            }
            if rangeSize / block < 4 || (fallbackSize != 0 && fallbackSize / block < 4) {
                throw .badConfiguration("a split range needs at least 4 blocks (8 MiB), one per type")
            }
        }
        for (kind, k) in kinds where k.alignment < 1 || k.alignment > block || k.alignment & (k.alignment - 1) != 0 {
            throw .badAlignment(alignment: k.alignment, kind: kind)
        }
        if case let .hint(address) = placement, address == 0 {
            throw .badConfiguration("placement hint 0 is not an address")
        }
    }
}
