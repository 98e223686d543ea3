// The one decoded instruction form. The verifier decodes each raw instruction once, checks every
// field RFC 9669 defines, resolves map references and jump targets, and attaches what its analysis
// proved (how each memory access is checked, what each back edge and call charges to the budget).
// The interpreter and the JIT read only this form, so the three can never disagree on what an
// opcode means.

/// An ALU operation (the operation nibble, with signedness folded in for division and modulo).
enum BPFALU: UInt8, Sendable {
    case add, sub, mul, div, sdiv, or, and, lsh, rsh, neg, mod, smod, xor, mov, arsh
}

/// A jump condition.
enum BPFCondition: UInt8, Sendable {
    case eq, gt, ge, set, ne, sgt, sge, lt, le, slt, sle

    /// The condition that holds exactly when this one does not (`set` has none).
    var negated: BPFCondition? {
        switch self {
        case .eq: .ne
        case .ne: .eq
        case .gt: .le
        case .le: .gt
        case .ge: .lt
        case .lt: .ge
        case .sgt: .sle
        case .sle: .sgt
        case .sge: .slt
        case .slt: .sge
        case .set: nil
        }
    }
}

/// An atomic read-modify-write (the `imm` field of an ATOMIC store).
enum BPFAtomic: Sendable, Equatable {
    /// add, or, and, xor; `fetch` puts the old value in the source register.
    case rmw(BPFALU, fetch: Bool)
    case xchg
    case cmpxchg
}

/// What one instruction does.
enum BPFOperation: Sendable, Equatable {
    /// `dst = dst op (src or imm)`; `wide` is ALU64; `register` says the operand is `src`.
    case alu(BPFALU, wide: Bool, register: Bool)
    /// `dst = sign-extend(src, bits)` (movsx), to 64 or 32 bits.
    case movsx(bits: UInt8, wide: Bool)
    /// Byte order: truncate to `bits` (to little-endian on this machine) or byte-swap `bits`.
    case endian(bits: UInt8, swap: Bool)
    /// `ja` when `condition` is nil; the target is an instruction index.
    case jump(BPFCondition?, wide: Bool, register: Bool)
    /// A helper by number (`imm`): `call N`, or `callx` whose register the verifier proved constant.
    case callHelper
    /// A call to the function at `target`.
    case callLocal
    case exit
    /// `dst = imm` (64 bits; a map reference is already resolved to its run-time value).
    case lddw
    /// `dst = *(size *)(src + offset)`, zero- or sign-extended.
    case load(size: UInt8, signed: Bool)
    /// `*(size *)(dst + offset) = src or imm`.
    case store(size: UInt8, register: Bool)
    case atomic(BPFAtomic, size: UInt8)
    /// Code the verifier proved unreachable (and the second slot of `lddw`): stops the run if ever
    /// reached, as a verifier bug would otherwise go unnoticed.
    case unreachable
}

/// The region a pointer was derived from, which is the only memory an access through it may touch.
enum BPFRegion: Sendable, Equatable, Hashable {
    /// The live stack: the current frame `[r10 - 512, r10)` and the frames of the callers above it.
    case stack
    /// The context memory the run was given (r1, r2).
    case context
    /// The values of the program's map with this index.
    case map(Int)

    var isMap: Bool {
        if case .map = self { return true }
        return false
    }
}

/// How the engines check one memory access, as the verifier decided it.
struct BPFAccess: Sendable, Equatable {
    enum Check: Sendable, Equatable {
        /// Proven within its region on every path: no run-time check in JIT code (the interpreter
        /// still checks, and reports a failure as a verifier bug).
        case proven
        /// Checked at run time against the region.
        case region
        /// A context access at a constant offset: the run's context must be at least `end` bytes.
        case contextEnd(Int32)
    }

    var region: BPFRegion
    var check: Check
    /// Whether the address is proven naturally aligned (atomics skip their alignment test).
    var aligned: Bool

    static let none = BPFAccess(region: .stack, check: .proven, aligned: true)
}

/// One decoded instruction.
struct BPFDecoded: Sendable {
    var operation: BPFOperation
    var dst: UInt8
    var src: UInt8
    var offset: Int16
    /// The immediate, sign-extended; for `lddw`, the 64-bit value it loads.
    var imm: Int64
    /// Jumps and local calls: the target instruction.
    var target: Int32 = -1
    /// Memory instructions: how the access is checked.
    var access: BPFAccess = .none
    /// Budget units this instruction charges: a local call, the callee's length; a jump to a loop
    /// header, the header's back-edge weight (charged only when the jump is taken and goes back).
    var charge: UInt32 = 0

    /// The 32-bit immediate as an unsigned 64-bit operand (sign-extended, as ALU64 uses it).
    var operand: UInt64 { UInt64(bitPattern: imm) }

    /// Bytes a load, store or atomic moves.
    var size: Int {
        switch operation {
        case let .load(s, _), let .store(s, _), let .atomic(_, s): Int(s)
        default: 0
        }
    }
}
