// Instructions back to the conformance dialect: `execmem bpf disasm`, verifier messages and test
// failures print programs this way, and the text assembles back to the same instructions.

public enum BPFDisassembler {
    /// One instruction; `next` is the following slot, which completes an `lddw`.
    public static func text(_ i: BPFInstruction, next: BPFInstruction?) -> String {
        let r = { (n: UInt8) in "%r\(n)" }
        let cls = i.instructionClass
        let op = i.opcode & 0xF0
        let src = i.opcode & 0x08
        func mem(_ reg: UInt8, _ off: Int16) -> String { off < 0 ? "[\(r(reg))\(off)]" : "[\(r(reg))+\(off)]" }
        func rel(_ o: Int) -> String { o < 0 ? "\(o)" : "+\(o)" }
        func sizeName(_ opcode: UInt8) -> String {
            switch opcode & 0x18 { case BPF.W: "w"; case BPF.H: "h"; case BPF.B: "b"; default: "dw" }
        }
        switch cls {
        case BPF.ALU, BPF.ALU64:
            let suffix = cls == BPF.ALU ? "32" : ""
            if op == BPF.END {
                if cls == BPF.ALU64 { return "bswap\(i.imm) \(r(i.dst))" }
                return "\(src == BPF.X ? "be" : "le")\(i.imm) \(r(i.dst))"
            }
            if op == BPF.NEG { return "neg\(suffix) \(r(i.dst))" }
            if op == BPF.MOV && src == BPF.X && i.offset != 0 {
                return "movsx\(i.offset)\(cls == BPF.ALU ? "32" : "64") \(r(i.dst)), \(r(i.src))"
            }
            let names: [UInt8: String] = [BPF.ADD: "add", BPF.SUB: "sub", BPF.MUL: "mul", BPF.DIV: i.offset == 1 ? "sdiv" : "div",
                                          BPF.OR: "or", BPF.AND: "and", BPF.LSH: "lsh", BPF.RSH: "rsh", BPF.MOD: i.offset == 1 ? "smod" : "mod",
                                          BPF.XOR: "xor", BPF.MOV: "mov", BPF.ARSH: "arsh"]
            guard let name = names[op] else { return unknown(i) }
            return "\(name)\(suffix) \(r(i.dst)), \(src == BPF.X ? r(i.src) : "\(i.imm)")"
        case BPF.JMP, BPF.JMP32:
            if i.opcode == BPF.JMP | BPF.EXIT { return "exit" }
            if i.opcode == BPF.JMP | BPF.JA { return "ja \(rel(Int(i.offset)))" }
            if i.opcode == BPF.JMP32 | BPF.JA { return "ja32 \(rel(Int(i.imm)))" }
            if i.opcode == BPF.CALLX { return "call \(r(i.dst))" }
            if i.opcode == BPF.JMP | BPF.CALL {
                switch i.src {
                case BPF.callLocal: return "call local \(rel(Int(i.imm)))"
                case BPF.callRuntime: return "call runtime \(i.imm)"
                default: return "call \(i.imm)"
                }
            }
            let names: [UInt8: String] = [BPF.JEQ: "jeq", BPF.JGT: "jgt", BPF.JGE: "jge", BPF.JSET: "jset", BPF.JNE: "jne",
                                          BPF.JSGT: "jsgt", BPF.JSGE: "jsge", BPF.JLT: "jlt", BPF.JLE: "jle", BPF.JSLT: "jslt", BPF.JSLE: "jsle"]
            guard let name = names[op] else { return unknown(i) }
            return "\(name)\(cls == BPF.JMP32 ? "32" : "") \(r(i.dst)), \(src == BPF.X ? r(i.src) : "\(i.imm)"), \(rel(Int(i.offset)))"
        case BPF.LD:
            guard i.opcode == BPF.LDDW else { return unknown(i) }
            let hi = UInt64(UInt32(bitPattern: next?.imm ?? 0))
            if i.src == 1 { return "lddw \(r(i.dst)), map[\(i.imm)]" }
            if i.src == 2 { return "lddw \(r(i.dst)), map[\(i.imm)]+\(hi)" }
            return "lddw \(r(i.dst)), 0x\(String(hi << 32 | UInt64(UInt32(bitPattern: i.imm)), radix: 16))"
        case BPF.LDX:
            let mode = i.opcode & 0xE0
            guard mode == BPF.MEM || mode == BPF.MEMSX else { return unknown(i) }
            return "ldx\(mode == BPF.MEMSX ? "s" : "")\(sizeName(i.opcode)) \(r(i.dst)), \(mem(i.src, i.offset))"
        case BPF.ST:
            return "st\(sizeName(i.opcode)) \(mem(i.dst, i.offset)), \(i.imm)"
        default:  // STX
            if i.opcode & 0xE0 == BPF.ATOMIC {
                let w = i.opcode & 0x18 == BPF.W ? "32" : ""
                switch i.imm {
                case BPF.XCHG: return "lock xchg\(w) \(mem(i.dst, i.offset)), \(r(i.src))"
                case BPF.CMPXCHG: return "lock cmpxchg\(w) \(mem(i.dst, i.offset)), \(r(i.src))"
                default:
                    let names: [Int32: String] = [0x00: "add", 0x40: "or", 0x50: "and", 0xA0: "xor"]
                    guard let name = names[i.imm & ~BPF.FETCH] else { return unknown(i) }
                    return "lock \(i.imm & BPF.FETCH != 0 ? "fetch " : "")\(name)\(w) \(mem(i.dst, i.offset)), \(r(i.src))"
                }
            }
            return "stx\(sizeName(i.opcode)) \(mem(i.dst, i.offset)), \(r(i.src))"
        }
    }

    static func unknown(_ i: BPFInstruction) -> String { ".word 0x\(String(i.word, radix: 16))  # unknown opcode 0x\(String(i.opcode, radix: 16))" }

    /// A whole program, one instruction per line (the second slot of `lddw` is folded in).
    public static func text(_ program: [BPFInstruction]) -> String {
        var lines: [String] = []
        var i = 0
        while i < program.count {
            let insn = program[i]
            lines.append(text(insn, next: i + 1 < program.count ? program[i + 1] : nil))
            i += insn.opcode == BPF.LDDW ? 2 : 1
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
