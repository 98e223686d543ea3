// The eBPF instruction (RFC 9669): 8 bytes, little-endian.
//
//   +--------+----+----+----------------+--------------------------------+
//   | opcode |dst |src |  offset (s16)  |          imm (s32)             |
//   +--------+----+----+----------------+--------------------------------+
//    8 bits   4b   4b      16 bits                32 bits
//
// The opcode's low 3 bits are the class; ALU and JMP classes add a source bit (K = imm, X = src
// register) and a 4-bit operation, load and store classes a 2-bit size and a 3-bit mode. `lddw` takes
// two slots: the second holds the upper 32 bits of the immediate.

public struct BPFInstruction: Hashable, Sendable, CustomStringConvertible {
    public var opcode: UInt8
    public var dst: UInt8
    public var src: UInt8
    public var offset: Int16
    public var imm: Int32

    public init(opcode: UInt8, dst: UInt8 = 0, src: UInt8 = 0, offset: Int16 = 0, imm: Int32 = 0) {
        self.opcode = opcode; self.dst = dst; self.src = src; self.offset = offset; self.imm = imm
    }

    /// Decodes 8 little-endian bytes.
    public init<C: Collection>(bytes: C) where C.Element == UInt8, C.Index == Int {
        let b = bytes.startIndex
        opcode = bytes[b]
        dst = bytes[b + 1] & 0xF
        src = bytes[b + 1] >> 4
        offset = Int16(bitPattern: UInt16(bytes[b + 2]) | UInt16(bytes[b + 3]) << 8)
        imm = Int32(bitPattern: UInt32(bytes[b + 4]) | UInt32(bytes[b + 5]) << 8 | UInt32(bytes[b + 6]) << 16 | UInt32(bytes[b + 7]) << 24)
    }

    /// The 64-bit word a `-- raw` line holds (the instruction's bytes read little-endian).
    public init(word: UInt64) {
        self.init(bytes: (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * $0)) })
    }

    public var bytes: [UInt8] {
        let o = UInt16(bitPattern: offset), i = UInt32(bitPattern: imm)
        return [opcode, dst | src << 4, UInt8(o & 0xFF), UInt8(o >> 8),
                UInt8(i & 0xFF), UInt8(i >> 8 & 0xFF), UInt8(i >> 16 & 0xFF), UInt8(i >> 24)]
    }

    public var word: UInt64 { bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) } }

    public var instructionClass: UInt8 { opcode & 0x07 }
    public var description: String { BPFDisassembler.text(self, next: nil) }
}

/// Decodes a program from bytes (a multiple of 8).
public func decodeProgram(_ bytes: [UInt8]) throws(BPFError) -> [BPFInstruction] {
    guard bytes.count % 8 == 0 else { throw .malformed("program is \(bytes.count) bytes, not a multiple of 8") }
    return stride(from: 0, to: bytes.count, by: 8).map { BPFInstruction(bytes: bytes[$0..<($0 + 8)]) }
}

public func encodeProgram(_ program: [BPFInstruction]) -> [UInt8] { program.flatMap(\.bytes) }

/// Opcode fields and values (RFC 9669, section 3 and following).
public enum BPF {
    // Classes.
    public static let LD: UInt8 = 0x00, LDX: UInt8 = 0x01, ST: UInt8 = 0x02, STX: UInt8 = 0x03
    public static let ALU: UInt8 = 0x04, JMP: UInt8 = 0x05, JMP32: UInt8 = 0x06, ALU64: UInt8 = 0x07
    // Source.
    public static let K: UInt8 = 0x00, X: UInt8 = 0x08
    // ALU operations (high nibble).
    public static let ADD: UInt8 = 0x00, SUB: UInt8 = 0x10, MUL: UInt8 = 0x20, DIV: UInt8 = 0x30
    public static let OR: UInt8 = 0x40, AND: UInt8 = 0x50, LSH: UInt8 = 0x60, RSH: UInt8 = 0x70
    public static let NEG: UInt8 = 0x80, MOD: UInt8 = 0x90, XOR: UInt8 = 0xA0, MOV: UInt8 = 0xB0
    public static let ARSH: UInt8 = 0xC0, END: UInt8 = 0xD0
    // Jump operations.
    public static let JA: UInt8 = 0x00, JEQ: UInt8 = 0x10, JGT: UInt8 = 0x20, JGE: UInt8 = 0x30
    public static let JSET: UInt8 = 0x40, JNE: UInt8 = 0x50, JSGT: UInt8 = 0x60, JSGE: UInt8 = 0x70
    public static let CALL: UInt8 = 0x80, EXIT: UInt8 = 0x90, JLT: UInt8 = 0xA0, JLE: UInt8 = 0xB0
    public static let JSLT: UInt8 = 0xC0, JSLE: UInt8 = 0xD0
    // Load/store sizes and modes.
    public static let W: UInt8 = 0x00, H: UInt8 = 0x08, B: UInt8 = 0x10, DW: UInt8 = 0x18
    public static let IMM: UInt8 = 0x00, ABS: UInt8 = 0x20, IND: UInt8 = 0x40, MEM: UInt8 = 0x60
    public static let MEMSX: UInt8 = 0x80, ATOMIC: UInt8 = 0xC0
    // Atomic operations (imm).
    public static let FETCH: Int32 = 0x01, XCHG: Int32 = 0xE0 | 0x01, CMPXCHG: Int32 = 0xF0 | 0x01

    public static let LDDW: UInt8 = LD | IMM | DW  // 0x18
    public static let CALLX: UInt8 = JMP | CALL | X  // 0x8d
    /// `call` source field: helper by number, local function, runtime function (BTF id).
    public static let callHelper: UInt8 = 0, callLocal: UInt8 = 1, callRuntime: UInt8 = 2

    /// Bytes of a load or store of this size field.
    public static func sizeBytes(_ opcode: UInt8) -> Int {
        switch opcode & 0x18 {
        case W: 4
        case H: 2
        case B: 1
        default: 8
        }
    }

    /// The stack each frame gets, and the deepest call chain allowed (Linux's MAX_BPF_STACK and
    /// MAX_CALL_FRAMES).
    public static let stackSize = 512
    public static let maxCallDepth = 8
}
