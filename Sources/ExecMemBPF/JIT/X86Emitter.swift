// A small x86-64 encoder: the forms the eBPF JIT needs, each a method named after the instruction.
// Operands are registers and `[base + disp]` memory; REX prefixes, ModRM and SIB bytes are worked out
// here so the JIT reads like assembly.

enum X86Reg: UInt8 {
    case rax = 0, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15
    var low: UInt8 { rawValue & 7 }
    var extended: Bool { rawValue >= 8 }
}

/// Condition codes for `jcc`.
enum X86Condition: UInt8 {
    case below = 0x2, aboveOrEqual = 0x3, equal = 0x4, notEqual = 0x5, belowOrEqual = 0x6, above = 0x7
    case less = 0xC, greaterOrEqual = 0xD, lessOrEqual = 0xE, greater = 0xF
}

struct X86Emitter {
    var bytes: [UInt8] = []
    var count: Int { bytes.count }

    mutating func emit(_ b: UInt8...) { bytes += b }
    mutating func emit32(_ v: Int32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func emit64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }

    /// REX prefix; `force` emits it even when empty (byte registers sil, dil, bpl, spl).
    mutating func rex(w: Bool, r: X86Reg? = nil, x: Bool = false, b: X86Reg? = nil, force: Bool = false) {
        let value: UInt8 = 0x40 | (w ? 8 : 0) | ((r?.extended ?? false) ? 4 : 0) | (x ? 2 : 0) | ((b?.extended ?? false) ? 1 : 0)
        if value != 0x40 || force { emit(value) }
    }

    /// ModRM for register-direct operands.
    mutating func modrm(reg: UInt8, rm: X86Reg) { emit(0xC0 | (reg & 7) << 3 | rm.low) }

    /// ModRM (+ SIB) + displacement for `[base + disp]`.
    mutating func memory(reg: UInt8, base: X86Reg, disp: Int32) {
        let needsSIB = base.low == 4  // rsp, r12
        let small = Int8(exactly: disp)
        let mod: UInt8 = disp == 0 && base.low != 5 ? 0 : (small != nil ? 1 : 2)  // rbp/r13 need a displacement
        emit(mod << 6 | (reg & 7) << 3 | (needsSIB ? 4 : base.low))
        if needsSIB { emit(0x24) }
        if mod == 1 { emit(UInt8(bitPattern: small!)) } else if mod == 2 { emit32(disp) }
    }

    // MARK: - Register and immediate arithmetic

    /// `op dst, src` for the classic two-operand forms (`opcode` is the r/m, reg form: 01 add, 29 sub,
    /// 09 or, 21 and, 31 xor, 89 mov, 39 cmp, 85 test).
    mutating func alu(_ opcode: UInt8, _ dst: X86Reg, _ src: X86Reg, wide: Bool) {
        rex(w: wide, r: src, b: dst)
        emit(opcode)
        modrm(reg: src.rawValue, rm: dst)
    }

    /// `op dst, imm32` (group 1: 0 add, 1 or, 4 and, 5 sub, 6 xor, 7 cmp).
    mutating func aluImm(_ ext: UInt8, _ dst: X86Reg, _ imm: Int32, wide: Bool) {
        rex(w: wide, b: dst)
        if let small = Int8(exactly: imm) {
            emit(0x83); modrm(reg: ext, rm: dst); emit(UInt8(bitPattern: small))
        } else {
            emit(0x81); modrm(reg: ext, rm: dst); emit32(imm)
        }
    }

    mutating func mov(_ dst: X86Reg, _ src: X86Reg, wide: Bool = true) { alu(0x89, dst, src, wide: wide) }

    /// Loads a 64-bit constant in the shortest form that gives exactly `value`.
    mutating func movImm(_ dst: X86Reg, _ value: UInt64) {
        if value <= UInt64(UInt32.max) {  // mov r32, imm32 zero-extends
            rex(w: false, b: dst); emit(0xB8 + dst.low); emit32(Int32(bitPattern: UInt32(value)))
        } else if let s = Int32(exactly: Int64(bitPattern: value)) {  // sign-extended imm32
            rex(w: true, b: dst); emit(0xC7); modrm(reg: 0, rm: dst); emit32(s)
        } else {
            rex(w: true, b: dst); emit(0xB8 + dst.low); emit64(value)
        }
    }

    /// `mov dst32, imm32` (zero-extends).
    mutating func movImm32(_ dst: X86Reg, _ value: Int32) {
        rex(w: false, b: dst); emit(0xB8 + dst.low); emit32(value)
    }

    mutating func imul(_ dst: X86Reg, _ src: X86Reg, wide: Bool) {
        rex(w: wide, r: dst, b: src); emit(0x0F, 0xAF); modrm(reg: dst.rawValue, rm: src)
    }

    mutating func imulImm(_ dst: X86Reg, _ imm: Int32, wide: Bool) {
        rex(w: wide, r: dst, b: dst); emit(0x69); modrm(reg: dst.rawValue, rm: dst); emit32(imm)
    }

    /// Group 3 (F7): 2 not, 3 neg, 4 mul, 6 div, 7 idiv.
    mutating func group3(_ ext: UInt8, _ r: X86Reg, wide: Bool) {
        rex(w: wide, b: r); emit(0xF7); modrm(reg: ext, rm: r)
    }

    /// Shifts: 4 shl, 5 shr, 7 sar; by `cl` when `count` is nil.
    mutating func shift(_ ext: UInt8, _ r: X86Reg, count: UInt8?, wide: Bool) {
        rex(w: wide, b: r)
        if let count { emit(0xC1); modrm(reg: ext, rm: r); emit(count) } else { emit(0xD3); modrm(reg: ext, rm: r) }
    }

    mutating func testImm(_ r: X86Reg, _ imm: Int32, wide: Bool) {
        rex(w: wide, b: r); emit(0xF7); modrm(reg: 0, rm: r); emit32(imm)
    }

    mutating func bswap(_ r: X86Reg, wide: Bool) { rex(w: wide, b: r); emit(0x0F, 0xC8 + r.low) }

    /// `rol r16, 8`: swaps the two low bytes.
    mutating func rol16by8(_ r: X86Reg) { emit(0x66); rex(w: false, b: r); emit(0xC1); modrm(reg: 0, rm: r); emit(8) }

    /// `movzx dst32, src16` / `movzx dst32, src8`.
    mutating func movzx(_ dst: X86Reg, _ src: X86Reg, bits: Int) {
        rex(w: false, r: dst, b: src, force: bits == 8 && src.rawValue >= 4)
        emit(0x0F, bits == 8 ? 0xB6 : 0xB7); modrm(reg: dst.rawValue, rm: src)
    }

    /// `movsx dst, src8/16/32` (to 64 bits when `wide`, else to 32).
    mutating func movsx(_ dst: X86Reg, _ src: X86Reg, bits: Int, wide: Bool) {
        if bits == 32 { rex(w: true, r: dst, b: src); emit(0x63); modrm(reg: dst.rawValue, rm: src); return }
        rex(w: wide, r: dst, b: src, force: bits == 8 && src.rawValue >= 4)
        emit(0x0F, bits == 8 ? 0xBE : 0xBF); modrm(reg: dst.rawValue, rm: src)
    }

    mutating func lea(_ dst: X86Reg, base: X86Reg, disp: Int32) {
        rex(w: true, r: dst, b: base); emit(0x8D); memory(reg: dst.rawValue, base: base, disp: disp)
    }

    // MARK: - Memory

    /// Loads `size` bytes from `[base + disp]`, zero-extended (or sign-extended when `signed`).
    mutating func load(_ dst: X86Reg, base: X86Reg, disp: Int32, size: Int, signed: Bool = false) {
        switch (size, signed) {
        case (1, false): rex(w: false, r: dst, b: base); emit(0x0F, 0xB6)
        case (2, false): rex(w: false, r: dst, b: base); emit(0x0F, 0xB7)
        case (4, false): rex(w: false, r: dst, b: base); emit(0x8B)
        case (1, true): rex(w: true, r: dst, b: base); emit(0x0F, 0xBE)
        case (2, true): rex(w: true, r: dst, b: base); emit(0x0F, 0xBF)
        case (4, true): rex(w: true, r: dst, b: base); emit(0x63)
        default: rex(w: true, r: dst, b: base); emit(0x8B)
        }
        memory(reg: dst.rawValue, base: base, disp: disp)
    }

    mutating func store(_ src: X86Reg, base: X86Reg, disp: Int32, size: Int) {
        switch size {
        case 1: rex(w: false, r: src, b: base, force: src.rawValue >= 4); emit(0x88)
        case 2: emit(0x66); rex(w: false, r: src, b: base); emit(0x89)
        case 4: rex(w: false, r: src, b: base); emit(0x89)
        default: rex(w: true, r: src, b: base); emit(0x89)
        }
        memory(reg: src.rawValue, base: base, disp: disp)
    }

    mutating func storeImm(base: X86Reg, disp: Int32, size: Int, _ imm: Int32) {
        switch size {
        case 1: rex(w: false, b: base); emit(0xC6); memory(reg: 0, base: base, disp: disp); emit(UInt8(truncatingIfNeeded: imm))
        case 2: emit(0x66); rex(w: false, b: base); emit(0xC7); memory(reg: 0, base: base, disp: disp)
                withUnsafeBytes(of: UInt16(truncatingIfNeeded: imm).littleEndian) { bytes += $0 }
        case 4: rex(w: false, b: base); emit(0xC7); memory(reg: 0, base: base, disp: disp); emit32(imm)
        default: rex(w: true, b: base); emit(0xC7); memory(reg: 0, base: base, disp: disp); emit32(imm)
        }
    }

    /// `op [base + disp], src` with an optional `lock` prefix (01 add, 09 or, 21 and, 31 xor, 87 xchg,
    /// 0F C1 xadd, 0F B1 cmpxchg).
    mutating func memoryOp(_ opcode: [UInt8], base: X86Reg, disp: Int32, _ src: X86Reg, wide: Bool, lock: Bool) {
        if lock { emit(0xF0) }
        rex(w: wide, r: src, b: base)
        bytes += opcode
        memory(reg: src.rawValue, base: base, disp: disp)
    }

    /// `cmp reg, [base + disp]` (64-bit).
    mutating func cmpMemory(_ r: X86Reg, base: X86Reg, disp: Int32) {
        rex(w: true, r: r, b: base); emit(0x3B); memory(reg: r.rawValue, base: base, disp: disp)
    }

    /// `cmp qword [base + disp], imm8`.
    mutating func cmpMemoryImm8(base: X86Reg, disp: Int32, _ imm: Int8) {
        rex(w: true, b: base); emit(0x83); memory(reg: 7, base: base, disp: disp); emit(UInt8(bitPattern: imm))
    }

    /// `mov qword [base + disp], imm32` (sign-extended).
    mutating func storeImm64(base: X86Reg, disp: Int32, _ imm: Int32) { storeImm(base: base, disp: disp, size: 8, imm) }

    // MARK: - Control flow

    mutating func push(_ r: X86Reg) { rex(w: false, b: r); emit(0x50 + r.low) }
    mutating func pop(_ r: X86Reg) { rex(w: false, b: r); emit(0x58 + r.low) }
    mutating func ret() { emit(0xC3) }
    mutating func callRegister(_ r: X86Reg) { rex(w: false, b: r); emit(0xFF); modrm(reg: 2, rm: r) }

    /// `jmp rel32` / `jcc rel32` / `call rel32` with a zero displacement; returns where the field is.
    mutating func jmp32() -> Int { emit(0xE9); emit32(0); return count - 4 }
    mutating func jcc32(_ c: X86Condition) -> Int { emit(0x0F, 0x80 + c.rawValue); emit32(0); return count - 4 }
    mutating func call32() -> Int { emit(0xE8); emit32(0); return count - 4 }

    /// Points the rel32 field at `field` to `target` (offsets within this code).
    mutating func patch(_ field: Int, to target: Int) {
        let d = Int32(target - (field + 4))
        withUnsafeBytes(of: d.littleEndian) { for (i, b) in $0.enumerated() { bytes[field + i] = b } }
    }

    /// A rel32 field holding `displacement` directly.
    mutating func patch(_ field: Int, displacement: Int32) {
        withUnsafeBytes(of: displacement.littleEndian) { for (i, b) in $0.enumerated() { bytes[field + i] = b } }
    }
}
