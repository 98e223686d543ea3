// A small x86-64 encoder: the forms the eBPF JIT needs, each a method named after the instruction.
// Operands are registers and `[base + disp]` memory; REX prefixes, ModRM and SIB bytes are worked out
// here so the JIT reads like assembly.

import ExecMem

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

    init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    @inline(__always) mutating func emit(_ a: UInt8) { bytes.append(a) }
    @inline(__always) mutating func emit(_ a: UInt8, _ b: UInt8) { bytes.append(a); bytes.append(b) }
    @inline(__always) mutating func emit(_ a: UInt8, _ b: UInt8, _ c: UInt8) { bytes.append(a); bytes.append(b); bytes.append(c) }
    mutating func emit32(_ v: Int32) {
        let u = UInt32(bitPattern: v)
        bytes.append(UInt8(truncatingIfNeeded: u)); bytes.append(UInt8(truncatingIfNeeded: u >> 8))
        bytes.append(UInt8(truncatingIfNeeded: u >> 16)); bytes.append(UInt8(truncatingIfNeeded: u >> 24))
    }
    mutating func emit64(_ v: UInt64) { emit32(Int32(truncatingIfNeeded: v)); emit32(Int32(truncatingIfNeeded: v >> 32)) }

    // MARK: - Labels, and jumps that become short when they can

    /// Offset each label is bound to (-1 until bound).
    var labels: [Int] = []
    /// Control transfers to patch when the code is laid out, in emission order.
    var fixups: [Fixup] = []

    struct Fixup {
        enum Kind { case jmp, jcc(X86Condition), call, external(UInt) }
        var at: Int
        var kind: Kind
        var label: Int
        /// Bytes of the long form (the only form of calls).
        var length: Int {
            switch kind {
            case .jcc: 6
            default: 5
            }
        }
        var relaxable: Bool {
            switch kind {
            case .jmp, .jcc: true
            default: false
            }
        }
    }

    mutating func newLabel() -> Int { labels.append(-1); return labels.count - 1 }
    mutating func bind(_ label: Int) { labels[label] = count }

    mutating func jmp(_ label: Int) { fixups.append(Fixup(at: count, kind: .jmp, label: label)); emit(0xE9); emit32(0) }
    mutating func jcc(_ c: X86Condition, _ label: Int) { fixups.append(Fixup(at: count, kind: .jcc(c), label: label)); emit(0x0F, 0x80 + c.rawValue); emit32(0) }
    /// `call rel32` to code in this buffer.
    mutating func call(_ label: Int) { fixups.append(Fixup(at: count, kind: .call, label: label)); emit(0xE8); emit32(0) }
    /// `call rel32` to an absolute address, resolved when the code's address is known.
    mutating func callExternal(_ target: UInt) { fixups.append(Fixup(at: count, kind: .external(target), label: -1)); emit(0xE8); emit32(0) }

    /// Lays the code out at `base` (nil: size only): jumps whose target is within a signed byte
    /// become 2-byte forms, and every displacement is filled in. Shrinking one jump never lengthens
    /// another's distance, so each decision stays valid; a few rounds reach the fixed point.
    /// Returns the final bytes and a map from emission offsets to final ones.
    func link(base: UInt?) -> (bytes: [UInt8], position: (Int) -> Int) {
        var short = [Bool](repeating: false, count: fixups.count)
        var saved = [Int](repeating: 0, count: fixups.count + 1)  // bytes saved before fixup k
        let starts = fixups.map(\.at)
        func before(_ p: Int) -> Int {  // fixups starting before p
            var lo = 0, hi = starts.count
            while lo < hi { let m = (lo + hi) / 2; if starts[m] < p { lo = m + 1 } else { hi = m } }
            return lo
        }
        func position(_ p: Int) -> Int { p - saved[before(p)] }
        for _ in 0..<6 {
            for k in fixups.indices { saved[k + 1] = saved[k] + (short[k] ? fixups[k].length - 2 : 0) }
            var changed = false
            for (k, f) in fixups.enumerated() where f.relaxable && !short[k] {
                let target = labels[f.label]
                let from = position(f.at) + 2
                let to = position(target) - (target > f.at ? f.length - 2 : 0)
                if Int8(exactly: to - from) != nil { short[k] = true; changed = true }
            }
            if !changed { break }
        }
        for k in fixups.indices { saved[k + 1] = saved[k] + (short[k] ? fixups[k].length - 2 : 0) }
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        var next = 0
        for (k, f) in fixups.enumerated() {
            out.append(contentsOf: bytes[next..<f.at])
            next = f.at + f.length
            let end = out.count + (short[k] ? 2 : f.length)
            func rel32(_ d: Int) { withUnsafeBytes(of: Int32(truncatingIfNeeded: d).littleEndian) { out.append(contentsOf: $0) } }
            switch f.kind {
            case .jmp, .jcc:
                let d = position(labels[f.label]) - end
                if short[k] {
                    if case let .jcc(c) = f.kind { out.append(0x70 + c.rawValue) } else { out.append(0xEB) }
                    out.append(UInt8(bitPattern: Int8(d)))
                } else {
                    if case let .jcc(c) = f.kind { out.append(0x0F); out.append(0x80 + c.rawValue) } else { out.append(0xE9) }
                    rel32(d)
                }
            case .call:
                out.append(0xE8); rel32(position(labels[f.label]) - end)
            case let .external(target):
                out.append(0xE8)
                rel32(base.flatMap { Rel32.displacement(from: $0 + UInt(end), to: target) }.map(Int.init) ?? 0)
            }
        }
        out.append(contentsOf: bytes[next...])
        return (out, position)
    }

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


    // MARK: - Forms for checks and the budget

    /// `op reg, [base + disp]` (64-bit): 3B cmp, 2B sub, 03 add.
    mutating func aluMemory(_ opcode: UInt8, _ r: X86Reg, base: X86Reg, disp: Int32) {
        rex(w: true, r: r, b: base); emit(opcode); memory(reg: r.rawValue, base: base, disp: disp)
    }

    /// `cmp qword [base + disp], imm32` (sign-extended; imm8 form when it fits).
    mutating func cmpMemoryImm(base: X86Reg, disp: Int32, _ imm: Int32) {
        rex(w: true, b: base)
        if let small = Int8(exactly: imm) {
            emit(0x83); memory(reg: 7, base: base, disp: disp); emit(UInt8(bitPattern: small))
        } else {
            emit(0x81); memory(reg: 7, base: base, disp: disp); emit32(imm)
        }
    }

    /// `test r8, imm8` (low byte).
    mutating func testLowByte(_ r: X86Reg, _ imm: UInt8) {
        rex(w: false, b: r, force: r.rawValue >= 4); emit(0xF6); modrm(reg: 0, rm: r); emit(imm)
    }

    /// BMI2 `shlx`/`shrx`/`sarx dst, src, count` (`prefix` 1 = 66 shlx, 3 = F2 shrx, 2 = F3 sarx).
    mutating func shiftX(_ prefix: UInt8, _ dst: X86Reg, _ src: X86Reg, count: X86Reg, wide: Bool) {
        emit(0xC4)
        emit((dst.extended ? 0 : 0x80) | 0x40 | (src.extended ? 0 : 0x20) | 0x02)  // ~R, ~X, ~B, map 0F38
        emit((wide ? 0x80 : 0) | (~count.rawValue & 0xF) << 3 | prefix)
        emit(0xF7)
        modrm(reg: dst.rawValue, rm: src)
    }
}
