// An x86-64 instruction length decoder, with what patching needs to know: where a RIP-relative
// displacement sits, what a relative branch's target is, and whether control leaves the instruction.
// It covers legacy prefixes, REX, the one-, two- and three-byte opcode maps, VEX, EVEX and XOP, x87,
// and the ModRM/SIB/displacement/immediate rules of 64-bit mode. Opcodes invalid in 64-bit mode are
// reported as errors rather than guessed.

public struct X86Instruction: Sendable, Equatable {
    public enum Branch: Sendable, Equatable {
        /// jmp rel8/rel32, jcc rel8/rel32, call rel32: the target is `next + displacement`.
        case jump(short: Bool), conditional(short: Bool, condition: UInt8), call
        /// loop, loope, loopne, jrcxz: rel8 only, no rel32 form.
        case loop
    }

    public var length: Int
    /// Offset of a RIP-relative disp32 in the instruction, if it has one.
    public var ripDisplacementOffset: Int?
    /// A relative branch: its kind, and the offset and size of its displacement field.
    public var branch: Branch?
    public var branchDisplacementOffset = 0
    public var branchDisplacementSize = 0
    /// ret, jmp indirect, int3/int/ud2, iret and the like: execution does not fall through.
    public var endsFlow = false
    /// int3, int n, into, int1, ud2, hlt: refuse to move.
    public var isTrap = false
}

public enum X86DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    case truncated(at: Int)
    case invalid(opcode: UInt8, at: Int)

    public var description: String {
        switch self {
        case let .truncated(at): "instruction truncated at byte \(at)"
        case let .invalid(opcode, at): "opcode 0x\(String(opcode, radix: 16)) at byte \(at) is not valid in 64-bit mode"
        }
    }
}

public enum X86Decoder {
    /// Decodes the instruction that starts `bytes` (at most 15 bytes are read).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(X86DecodeError) -> X86Instruction {
        var i = 0
        func byte() throws(X86DecodeError) -> UInt8 {
            guard i < bytes.count, i < 15 else { throw .truncated(at: i) }
            defer { i += 1 }
            return bytes[i]
        }
        func peek() -> UInt8? { i < bytes.count ? bytes[i] : nil }
        var operandSize16 = false, addressSize32 = false, rexW = false, rex2B4 = false
        // Legacy prefixes and REX, in any order: only a REX right before the opcode counts.
        while let p = peek() {
            if [0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67].contains(p) {
                if p == 0x66 { operandSize16 = true }
                if p == 0x67 { addressSize32 = true }
                rexW = false
            } else if p & 0xF0 == 0x40 {
                rexW = p & 0x08 != 0
            } else {
                break
            }
            i += 1
        }
        var insn = X86Instruction(length: 0)
        var op = try byte()
        var map = 0  // 0: one-byte, 1: 0F, 2: 0F38, 3: 0F3A
        var hasModRM: Bool
        var immediate = 0

        // VEX (C4, C5), EVEX (62) and XOP (8F with a map field >= 8): always these in 64-bit mode.
        if op == 0xC4 || op == 0xC5 || op == 0x62 || (op == 0x8F && (peek() ?? 0) & 0x1F >= 8) {
            switch op {
            case 0xC5:
                _ = try byte()
                map = 1
            case 0xC4, 0x8F:
                let p1 = try byte()
                _ = try byte()
                map = Int(p1 & 0x1F)
                if op == 0x8F { map += 0x100 }  // XOP maps 8, 9, 0xA
            default:  // EVEX
                let p0 = try byte()
                _ = try byte(); _ = try byte()
                map = Int(p0 & 0x07)
            }
            op = try byte()
            hasModRM = !(map == 1 && op == 0x77)  // vzeroupper / vzeroall
            switch map {
            case 1: immediate = twoByteImmediate(op) ?? 0
            case 3: immediate = 1
            case 0x108: immediate = 1  // XOP map 8 takes an imm8
            case 0x10A: immediate = 4  // XOP map A takes an imm32
            default: immediate = 0
            }
            if map == 1 && (op == 0x70 || op == 0xC2 || op == 0xC4 || op == 0xC5 || op == 0xC6 || (op >= 0x71 && op <= 0x73)) { immediate = 1 }
            if map != 1 && map != 2 && map != 3 && map < 0x100 && map != 5 && map != 6 { throw .invalid(opcode: op, at: i - 1) }
            if hasModRM { try modrm(&i, bytes, &insn, addressSize32) }
            i += immediate
            guard i <= bytes.count, i <= 15 else { throw .truncated(at: i) }
            insn.length = i
            return insn
        }

        // REX2 (APX): D5, a payload byte whose top bit selects the 0F map, then the opcode.
        if op == 0xD5 {
            let payload = try byte()
            rexW = payload & 0x08 != 0
            op = try byte()
            // A prefix after REX2 is not valid; LLVM shows the three bytes as one unit, and so do we.
            rex2B4 = payload & 0x20 != 0
            if payload & 0x80 == 0, [0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67].contains(op) {
                insn.length = i
                return insn
            }
            if payload & 0x80 != 0 {
                map = 1
            } else if op == 0xA1 {
                immediate = 8  // jmpabs imm64
            }
            if map == 0 && op == 0xA1 {
                i += immediate
                guard i <= bytes.count, i <= 15 else { throw .truncated(at: i) }
                insn.length = i
                insn.endsFlow = true
                return insn
            }
        } else if op == 0x0F {
            op = try byte()
            map = 1
            if op == 0x38 { map = 2; op = try byte() } else if op == 0x3A { map = 3; op = try byte() }
        }
        switch map {
        case 0:
            guard let (modrm, imm) = try oneByte(op, at: i - 1, operandSize16: operandSize16, addressSize32: addressSize32, rexW: rexW) else {
                throw .invalid(opcode: op, at: i - 1)
            }
            hasModRM = modrm
            immediate = imm
            // Group 3 (F6/F7): only /0 and /1 (test) take an immediate.
            if (op == 0xF6 || op == 0xF7), let m = peek(), (m >> 3) & 7 <= 1 { immediate = op == 0xF6 ? 1 : (operandSize16 ? 2 : 4) }
            switch op {
            case 0x70...0x7F:
                insn.branch = .conditional(short: true, condition: op & 0xF)
                insn.branchDisplacementSize = 1
            case 0xEB: insn.branch = .jump(short: true); insn.branchDisplacementSize = 1
            case 0xE9: insn.branch = .jump(short: false); insn.branchDisplacementSize = operandSize16 ? 2 : 4; insn.endsFlow = true
            case 0xE8: insn.branch = .call; insn.branchDisplacementSize = operandSize16 ? 2 : 4
            case 0xE0...0xE3: insn.branch = .loop; insn.branchDisplacementSize = 1
            case 0xC2, 0xC3, 0xCA, 0xCB, 0xCF: insn.endsFlow = true
            case 0xCC, 0xCD, 0xF1, 0xF4: insn.isTrap = true; insn.endsFlow = op != 0xCD
            default: break
            }
            if op == 0xEB { insn.endsFlow = true }
            if op == 0xFF, let m = peek(), [4, 5].contains((m >> 3) & 7) { insn.endsFlow = true }  // jmp indirect
        case 1:
            hasModRM = !twoByteWithoutModRM(op)
            immediate = twoByteImmediate(op) ?? 0
            if op >= 0x80 && op <= 0x8F {
                insn.branch = .conditional(short: false, condition: op & 0xF)
                insn.branchDisplacementSize = operandSize16 ? 2 : 4
                immediate = operandSize16 ? 2 : 4
            }
            if op == 0x0B || op == 0xFF || op == 0xB9 { insn.isTrap = op == 0x0B; insn.endsFlow = op == 0x0B }
            if op == 0x07 || op == 0x35 { insn.endsFlow = true }  // sysret, sysexit
            if op == 0x0F { immediate = 1 }  // 3DNow!: the opcode is an imm8 suffix
        case 2:
            hasModRM = true
        default:
            hasModRM = true
            immediate = 1
        }
        if hasModRM { try modrm(&i, bytes, &insn, addressSize32, extendedBase: rex2B4) }
        if insn.branch != nil { insn.branchDisplacementOffset = i }
        i += immediate
        guard i <= bytes.count, i <= 15 else { throw .truncated(at: i) }
        insn.length = i
        return insn
    }

    /// Decodes from an array at `offset`.
    public static func decode(_ bytes: [UInt8], at offset: Int = 0) throws(X86DecodeError) -> X86Instruction {
        let r = bytes.withUnsafeBytes { b in
            Result { () throws(X86DecodeError) in try decode(UnsafeRawBufferPointer(rebasing: b[offset..<min(b.count, offset + 15)])) }
        }
        return try r.get()
    }

    /// ModRM, SIB and displacement; records a RIP-relative disp32.
    static func modrm(_ i: inout Int, _ bytes: UnsafeRawBufferPointer, _ insn: inout X86Instruction, _ addressSize32: Bool,
                      extendedBase: Bool = false) throws(X86DecodeError) {
        guard i < bytes.count else { throw .truncated(at: i) }
        let m = bytes[i]
        i += 1
        let mod = m >> 6, rm = m & 7
        if mod == 3 { return }
        if rm == 4 {  // SIB
            guard i < bytes.count else { throw .truncated(at: i) }
            let sib = bytes[i]
            i += 1
            // Base 101 with mod 00 means "no base, disp32" (with APX's B4 set it is r29, as LLVM reads it).
            if mod == 0 && sib & 7 == 5 && !extendedBase { i += 4; return }
        } else if mod == 0 && rm == 5 {
            insn.ripDisplacementOffset = i
            i += 4
            return
        }
        if mod == 1 { i += 1 } else if mod == 2 { i += 4 }
    }

    /// One-byte map: (has ModRM, immediate bytes), or nil for opcodes invalid in 64-bit mode.
    static func oneByte(_ op: UInt8, at: Int, operandSize16: Bool, addressSize32: Bool, rexW: Bool) throws(X86DecodeError) -> (Bool, Int)? {
        let z = operandSize16 && !rexW ? 2 : 4
        switch op {
        case 0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F, 0x60, 0x61, 0x82, 0x9A, 0xCE, 0xD4, 0xD5, 0xD6, 0xEA:
            return nil
        case 0x00...0x3F:
            switch op & 7 {
            case 0...3: return (true, 0)
            case 4: return (false, 1)
            case 5: return (false, z)
            default: return nil
            }
        case 0x40...0x5F: return (false, 0)  // push/pop r (0x40-0x4F are REX, handled before)
        case 0x63: return (true, 0)
        case 0x68: return (false, z)
        case 0x69: return (true, z)
        case 0x6A: return (false, 1)
        case 0x6B: return (true, 1)
        case 0x6C...0x6F: return (false, 0)
        case 0x70...0x7F: return (false, 1)
        case 0x80, 0x83: return (true, 1)
        case 0x81: return (true, z)
        case 0x84...0x8F: return (true, 0)
        case 0x90...0x99, 0x9B...0x9F: return (false, 0)
        case 0xA0...0xA3: return (false, addressSize32 ? 4 : 8)
        case 0xA4...0xA7, 0xAA...0xAF: return (false, 0)
        case 0xA8: return (false, 1)
        case 0xA9: return (false, z)
        case 0xB0...0xB7: return (false, 1)
        case 0xB8...0xBF: return (false, rexW ? 8 : z)
        case 0xC0, 0xC1: return (true, 1)
        case 0xC2: return (false, 2)
        case 0xC3: return (false, 0)
        case 0xC6: return (true, 1)
        case 0xC7: return (true, z)
        case 0xC8: return (false, 3)
        case 0xC9: return (false, 0)
        case 0xCA: return (false, 2)
        case 0xCB, 0xCC, 0xCF: return (false, 0)
        case 0xCD: return (false, 1)
        case 0xD0...0xD3: return (true, 0)
        case 0xD7: return (false, 0)
        case 0xD8...0xDF: return (true, 0)  // x87
        case 0xE0...0xE7: return (false, 1)
        case 0xE8, 0xE9: return (false, z)  // rel16 with a 66 prefix, as LLVM decodes it
        case 0xEB: return (false, 1)
        case 0xEC...0xEF: return (false, 0)
        case 0xF1, 0xF4, 0xF5: return (false, 0)
        case 0xF6, 0xF7: return (true, 0)  // immediate decided by the ModRM's reg field
        case 0xF8...0xFD: return (false, 0)
        case 0xFE, 0xFF: return (true, 0)
        default: return nil
        }
    }

    /// Two-byte map opcodes that have no ModRM byte.
    static func twoByteWithoutModRM(_ op: UInt8) -> Bool {
        switch op {
        case 0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30...0x37, 0x77, 0x80...0x8F, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA, 0xC8...0xCF:
            return true
        default:
            return false
        }
    }

    /// Two-byte map opcodes with an imm8.
    static func twoByteImmediate(_ op: UInt8) -> Int? {
        switch op {
        case 0x70...0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6: return 1
        default: return nil
        }
    }
}
