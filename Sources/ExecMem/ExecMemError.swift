// The allocator's one error type. Every case says what went wrong and where (address, type, kind,
// sizes), so a caller can print it as is. A system call failure carries the call and errno.

import ExecMemSystem

public enum ExecMemError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A size of zero, a negative size, or one larger than a range.
    case badSize(size: Int, kind: ExecMemKind, reason: String)
    /// An alignment that is not a power of two, or exceeds a block.
    case badAlignment(alignment: Int, kind: ExecMemKind)
    /// The configuration cannot work (range too small, bad split fractions, ...).
    case badConfiguration(String)
    /// No range has room for the request: the primary (and, when allowed, the fallback) range is full.
    case rangeExhausted(kind: ExecMemKind, type: ExecMemType, size: Int, ranges: String)
    /// The range could not be placed where asked.
    case placementFailed(String)
    /// `free` of an allocation that was already freed (its handle no longer matches a live allocation).
    case doubleFree(address: UInt, kind: ExecMemKind, id: UInt64)
    /// `free` (or a write) of an address the allocator never handed out.
    case foreignPointer(address: UInt, reason: String)
    /// A write that falls outside the allocation.
    case outOfBounds(address: UInt, offset: Int, count: Int, size: Int)
    /// A write to ro-after-init memory after it was sealed.
    case sealed(address: UInt, id: UInt64)
    /// `seal` of an allocation whose type is not `roAfterInit`.
    case notSealable(address: UInt, type: ExecMemType)
    /// The kernel refused a call the allocator needs.
    case system(SystemCallError)

    public var description: String {
        switch self {
        case let .badSize(size, kind, reason):
            "bad size \(size) for \(kind): \(reason)"
        case let .badAlignment(alignment, kind):
            "bad alignment \(alignment) for \(kind): must be a power of two from 1 to \(ExecMemGeometry.blockSize)"
        case let .badConfiguration(what):
            "bad configuration: \(what)"
        case let .rangeExhausted(kind, type, size, ranges):
            "range exhausted: no room for \(size) bytes of \(kind) (\(type)) in \(ranges)"
        case let .placementFailed(what):
            "placement failed: \(what)"
        case let .doubleFree(address, kind, id):
            "double free of \(kind) allocation \(hex(address)) (id \(id)): it is no longer live"
        case let .foreignPointer(address, reason):
            "foreign pointer \(hex(address)): \(reason)"
        case let .outOfBounds(address, offset, count, size):
            "write out of bounds: \(count) bytes at offset \(offset) of the \(size)-byte allocation at \(hex(address))"
        case let .sealed(address, id):
            "write to sealed ro-after-init allocation \(hex(address)) (id \(id))"
        case let .notSealable(address, type):
            "cannot seal \(hex(address)): its type is \(type), only roAfterInit seals"
        case let .system(e):
            e.description
        }
    }
}
