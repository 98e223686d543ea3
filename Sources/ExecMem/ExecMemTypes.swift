// The nouns of ExecMem, with the Linux names they stand for.
//
//   range    one reservation (PROT_NONE, MAP_NORESERVE) of at most 2 GiB: any two addresses in it are
//            within a signed 32-bit displacement. The primary range sits near the host executable;
//            a fallback range is reserved when the primary is full (execmem_range.fallback_start).
//   block    2 MiB of a range, 2 MiB aligned, committed for one type. Its protection is set for the
//            whole block, once, so its 2 MiB page-table entry is never split.
//   run      a large allocation's contiguous blocks, committed and released together.
//   chunk    64 bytes of a block; small allocations are runs of chunks found in a bitmap
//            (bpf_prog_pack).
//   type     what the memory holds and therefore its protection: text r-x, rodata r--, data rw-,
//            roAfterInit rw- until sealed, then r-- (enum mod_mem_type).
//   kind     who asked: module text and data, probe slots, trace trampolines, BPF programs
//            (enum execmem_type). Each kind maps onto a type, with an alignment and a range choice.

import ExecMemSystem

/// Sizes derive from two shifts.
public enum ExecMemGeometry {
    public static let blockShift = 21  // 2 MiB, one x86-64 PMD
    public static let chunkShift = 6  // 64 B, one cache line (BPF_PROG_CHUNK_SHIFT)
    public static let pageShift = 12  // 4 KiB, the base page
    public static let pageSize = 1 << pageShift
    public static let blockSize = 1 << blockShift
    public static let chunkSize = 1 << chunkShift
    public static let chunksPerBlock = blockSize >> chunkShift  // 32,768
    public static let blockMask = UInt(blockSize - 1)
    /// 64 KiB: the granule in which a fresh text block is filled with int3 before the allocation that
    /// committed it returns; the rest of the block is filled, and collapsed, off that path.
    public static let preparedShift = 16
    /// A range is at most 2 GiB so that every displacement inside it fits a signed 32-bit field.
    public static let maxRangeSize = 1 << 31
    /// x86-64 `int3`: what unused and freed text holds, so stale code traps instead of running.
    public static let trapByte: UInt8 = 0xCC
}

/// A mapping type: what the memory holds, and so the protection of the blocks it lives in.
public enum ExecMemType: Int, CaseIterable, Sendable, Codable, CustomStringConvertible {
    /// Executable code, `r-x`. Written only through a separate write view.
    case text
    /// Read-only data, `r--`. Written only through a separate write view.
    case rodata
    /// Writable data, `rw-`.
    case data
    /// Data written during initialization, then sealed read-only (`__ro_after_init`).
    case roAfterInit

    public var description: String {
        switch self {
        case .text: "text"
        case .rodata: "rodata"
        case .data: "data"
        case .roAfterInit: "roAfterInit"
        }
    }

    /// The protection code running in the process sees (the "run" view), before any seal.
    public var runProtection: Protection {
        switch self {
        case .text: .run
        case .rodata: .readOnly
        case .data, .roAfterInit: .readWrite
        }
    }

    /// The byte a fresh block and freed memory of this type hold: `int3` for text, zero for data.
    public var fillByte: UInt8 { self == .text ? ExecMemGeometry.trapByte : 0 }

    /// Allocation granule in bytes. Ro-after-init is sealed allocation by allocation, and a
    /// protection can only change on whole pages, so its allocations are whole 4 KiB pages and its
    /// blocks stay on 4 KiB pages: the one type whose 2 MiB mapping is split, by design (the seed:
    /// "rodata still needs to be split because we need a space to accommodate ro_after_init data").
    /// It is also the smallest type by far (99% of it is `__jump_table`).
    public var granule: Int { self == .roAfterInit ? ExecMemGeometry.pageSize : ExecMemGeometry.chunkSize }

    /// Whether the backend should map this type's blocks with 2 MiB pages.
    public var wantsHugePages: Bool { self != .roAfterInit }
}

/// Protections by role (LuaJIT's MCPROT_RUN / MCPROT_GEN), never writable and executable together.
public enum Protection: Sendable, Codable, CustomStringConvertible {
    /// `r-x`: code as it runs.
    case run
    /// `r--`: read-only data, and sealed ro-after-init data.
    case readOnly
    /// `rw-`: writable data, and the write view through which code is generated.
    case readWrite
    /// `---`: reserved, not committed.
    case none

    public var description: String {
        switch self {
        case .run: "r-x"
        case .readOnly: "r--"
        case .readWrite: "rw-"
        case .none: "---"
        }
    }
}

/// Who asks for memory (Linux's `enum execmem_type`). Each kind maps onto a type.
public enum ExecMemKind: Int, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case moduleText
    case moduleRodata
    case moduleData
    case moduleRoAfterInit
    /// Out-of-line instruction slots of instruction probes (kprobes).
    case probes
    /// Function-entry trampolines (ftrace).
    case trace
    /// JIT-compiled eBPF programs (bpf_prog_pack).
    case bpf

    public var description: String {
        switch self {
        case .moduleText: "moduleText"
        case .moduleRodata: "moduleRodata"
        case .moduleData: "moduleData"
        case .moduleRoAfterInit: "moduleRoAfterInit"
        case .probes: "probes"
        case .trace: "trace"
        case .bpf: "bpf"
        }
    }

    /// The type a kind maps onto unless configured otherwise.
    public var defaultType: ExecMemType {
        switch self {
        case .moduleText, .probes, .trace, .bpf: .text
        case .moduleRodata: .rodata
        case .moduleData: .data
        case .moduleRoAfterInit: .roAfterInit
        }
    }
}

/// Which ranges a kind may use, in order (execmem_range's start/end and fallback_start/fallback_end).
public enum RangeChoice: Sendable, Codable {
    /// The primary range, then the fallback range when the primary is full.
    case primaryThenFallback
    /// Only the primary range: the kind needs rel32 reach to the host executable.
    case primaryOnly
    /// Only the fallback range (data that need not be near code).
    case fallbackOnly
}

/// How one kind allocates (Linux's `struct execmem_range`, minus the protection, which comes from the type).
public struct KindRange: Sendable, Codable {
    public var type: ExecMemType
    /// Minimum alignment of every allocation of this kind, a power of two from 1 to 2 MiB.
    public var alignment: Int
    public var ranges: RangeChoice

    public init(type: ExecMemType, alignment: Int = ExecMemGeometry.chunkSize, ranges: RangeChoice = .primaryThenFallback) {
        self.type = type
        self.alignment = alignment
        self.ranges = ranges
    }
}

/// A live allocation: where it runs, how big it is, and who owns it.
///
/// The handle is a value; `free` checks its identity against the allocator's records, so a stale
/// handle (a double free, even after the memory was reused) is caught rather than freeing someone else.
public struct Allocation: Hashable, Sendable, CustomStringConvertible {
    /// Address of the first byte, as code running in the process sees it.
    public let address: UInt
    /// Bytes requested; writes are bounds-checked against this.
    public let size: Int
    /// Bytes reserved for it (size rounded up to whole chunks, or whole blocks for large runs).
    public let capacity: Int
    public let kind: ExecMemKind
    public let type: ExecMemType
    /// Unique for the allocator's lifetime.
    public let id: UInt64
    /// Where the allocator keeps its record: lets `free` check the handle with one load.
    let slot: UInt32

    public var pointer: UnsafeRawPointer { UnsafeRawPointer(bitPattern: address)! }
    public var end: UInt { address + UInt(size) }

    public var description: String {
        "\(kind)/\(type) \(hex(address)) size \(size) (capacity \(capacity), id \(id))"
    }
}


/// The library's version. A value type of constants, usable from any thread.
public enum ExecMemVersion {
    /// Semantic version of the library and the `execmem` command.
    public static let string = "0.12.0"
}
