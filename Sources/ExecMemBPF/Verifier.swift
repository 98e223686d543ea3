// The verifier every program passes before an engine sees it. It checks structure, not values:
// every opcode and field is one RFC 9669 defines, registers are r0-r10 and r10 is never written,
// jumps land inside their function and never in the middle of an `lddw`, no function falls off its
// end, calls go to known helpers or to function starts, and the program is not too large. (Memory
// safety is enforced at run time by both engines' bounds checks, not proven here.) A rejection names
// the instruction and the reason.

public struct BPFVerifier {
    public static let maxInstructions = 1_000_000

    /// Helper numbers the program may call.
    public let helpers: Set<Int32>

    public init(helpers: Set<Int32>) { self.helpers = helpers }

    /// Checks `program`; returns the start of every function (0 first).
    public func verify(_ p: [BPFInstruction]) throws(BPFError) -> [Int] {
        guard !p.isEmpty else { throw .verifier(index: 0, reason: "empty program") }
        guard p.count <= Self.maxInstructions else {
            throw .verifier(index: Self.maxInstructions, reason: "program of \(p.count) instructions exceeds \(Self.maxInstructions)")
        }
        // Second slots of lddw, which nothing may jump to or decode as instructions.
        var secondSlot = [Bool](repeating: false, count: p.count)
        var i = 0
        while i < p.count {
            if p[i].opcode == BPF.LDDW {
                guard i + 1 < p.count else { throw .verifier(index: i, reason: "lddw is truncated: its second slot is missing") }
                let n = p[i + 1]
                guard n.opcode == 0, n.dst == 0, n.src == 0, n.offset == 0 else {
                    throw .verifier(index: i + 1, reason: "second slot of lddw must have opcode, registers and offset 0")
                }
                secondSlot[i + 1] = true
                i += 2
            } else {
                i += 1
            }
        }
        // Function starts: 0 and every local call target.
        var starts: Set<Int> = [0]
        for (i, insn) in p.enumerated() where !secondSlot[i] && insn.opcode == BPF.JMP | BPF.CALL && insn.src == BPF.callLocal {
            let t = i + 1 + Int(insn.imm)
            guard t >= 0, t < p.count, !secondSlot[t] else { throw .verifier(index: i, reason: "local call target \(t) is outside the program or inside an lddw") }
            starts.insert(t)
        }
        let functions = starts.sorted()
        for (f, start) in functions.enumerated() {
            let end = f + 1 < functions.count ? functions[f + 1] : p.count
            let last = p[end - 1]
            if secondSlot[end - 1] || !(last.opcode == BPF.JMP | BPF.EXIT || last.opcode == BPF.JMP | BPF.JA || last.opcode == BPF.JMP32 | BPF.JA) {
                throw .verifier(index: end - 1, reason: "execution can fall off the end of the function at \(start) (its last instruction must be exit or ja)")
            }
            for i in start..<end where !secondSlot[i] {
                try check(p[i], at: i, function: start..<end, secondSlot: secondSlot)
            }
        }
        return functions
    }

    private func check(_ insn: BPFInstruction, at i: Int, function: Range<Int>, secondSlot: [Bool]) throws(BPFError) {
        func fail(_ why: String) -> BPFError { .verifier(index: i, reason: "\(why) (\(BPFDisassembler.text(insn, next: nil)))") }
        func register(_ r: UInt8, _ what: String) throws(BPFError) { if r > 10 { throw fail("\(what) register r\(r) does not exist") } }
        func writes(_ r: UInt8) throws(BPFError) { if r == 10 { throw fail("r10 is the read-only frame pointer") } }
        func zero(_ fields: [(String, Int64)]) throws(BPFError) {
            for (name, v) in fields where v != 0 { throw fail("\(name) must be 0, is \(v)") }
        }
        func jump(_ delta: Int) throws(BPFError) {
            let t = i + 1 + delta
            guard function.contains(t) else { throw fail("jump target \(t) is outside its function \(function.lowerBound)..<\(function.upperBound)") }
            if secondSlot[t] { throw fail("jump target \(t) is the middle of an lddw") }
        }
        let op = insn.opcode & 0xF0, source = insn.opcode & 0x08
        try register(insn.dst, "destination")
        try register(insn.src, "source")
        switch insn.instructionClass {
        case BPF.ALU, BPF.ALU64:
            let wide = insn.instructionClass == BPF.ALU64
            switch op {
            case BPF.END:
                guard [16, 32, 64].contains(insn.imm) else { throw fail("byte swap width must be 16, 32 or 64") }
                if wide && source != 0 { throw fail("bswap takes no source register") }
                try zero([("source register", Int64(insn.src)), ("offset", Int64(insn.offset))])
            case BPF.NEG:
                try zero([("source bit", Int64(source)), ("source register", Int64(insn.src)), ("offset", Int64(insn.offset)), ("immediate", Int64(insn.imm))])
            case BPF.DIV, BPF.MOD:
                guard insn.offset == 0 || insn.offset == 1 else { throw fail("offset of div/mod must be 0 (unsigned) or 1 (signed)") }
            case BPF.MOV:
                let allowed: [Int16] = source == BPF.X ? (wide ? [0, 8, 16, 32] : [0, 8, 16]) : [0]
                guard allowed.contains(insn.offset) else { throw fail("offset \(insn.offset) is not a valid mov/movsx width") }
            case BPF.ADD, BPF.SUB, BPF.MUL, BPF.OR, BPF.AND, BPF.LSH, BPF.RSH, BPF.XOR, BPF.ARSH:
                try zero([("offset", Int64(insn.offset))])
            default:
                throw fail("unknown ALU operation 0x\(String(op, radix: 16))")
            }
            if op != BPF.END && op != BPF.NEG {
                if source == BPF.K { try zero([("source register", Int64(insn.src))]) } else { try zero([("immediate", Int64(insn.imm))]) }
            }
            try writes(insn.dst)
        case BPF.JMP, BPF.JMP32:
            let narrow = insn.instructionClass == BPF.JMP32
            switch op {
            case BPF.JA:
                guard source == 0 else { throw fail("ja takes no source register") }
                try zero([("registers", Int64(insn.dst) | Int64(insn.src))])
                if narrow { try zero([("offset", Int64(insn.offset))]); try jump(Int(insn.imm)) }
                else { try zero([("immediate", Int64(insn.imm))]); try jump(Int(insn.offset)) }
            case BPF.CALL:
                guard !narrow else { throw fail("call is not a JMP32 operation") }
                if source == BPF.X {
                    try zero([("source register", Int64(insn.src)), ("offset", Int64(insn.offset)), ("immediate", Int64(insn.imm))])
                    return
                }
                try zero([("destination register", Int64(insn.dst)), ("offset", Int64(insn.offset))])
                switch insn.src {
                case BPF.callHelper, BPF.callRuntime:
                    guard helpers.contains(insn.imm) else { throw fail("call to unknown helper \(insn.imm)") }
                case BPF.callLocal:
                    break  // checked with the function starts
                default:
                    throw fail("call source \(insn.src) is not helper (0), local (1) or runtime (2)")
                }
            case BPF.EXIT:
                guard !narrow else { throw fail("exit is not a JMP32 operation") }
                try zero([("source bit", Int64(source)), ("registers", Int64(insn.dst) | Int64(insn.src)), ("offset", Int64(insn.offset)), ("immediate", Int64(insn.imm))])
            case BPF.JEQ, BPF.JGT, BPF.JGE, BPF.JSET, BPF.JNE, BPF.JSGT, BPF.JSGE, BPF.JLT, BPF.JLE, BPF.JSLT, BPF.JSLE:
                if source == BPF.K { try zero([("source register", Int64(insn.src))]) } else { try zero([("immediate", Int64(insn.imm))]) }
                try jump(Int(insn.offset))
            default:
                throw fail("unknown jump operation 0x\(String(op, radix: 16))")
            }
        case BPF.LD:
            guard insn.opcode == BPF.LDDW else { throw fail("only lddw is defined in the LD class (no legacy packet access)") }
            guard insn.src == 0 else { throw fail("lddw source \(insn.src) (a map reference) must be resolved by the loader") }
            try zero([("offset", Int64(insn.offset))])
            try writes(insn.dst)
        case BPF.LDX:
            let mode = insn.opcode & 0xE0
            guard mode == BPF.MEM || (mode == BPF.MEMSX && insn.opcode & 0x18 != BPF.DW) else { throw fail("load mode must be MEM or MEMSX (b, h, w)") }
            try zero([("immediate", Int64(insn.imm))])
            try writes(insn.dst)
        case BPF.ST:
            guard insn.opcode & 0xE0 == BPF.MEM else { throw fail("store mode must be MEM") }
            try zero([("source register", Int64(insn.src))])
        default:  // STX
            let mode = insn.opcode & 0xE0
            if mode == BPF.ATOMIC {
                guard insn.opcode & 0x18 == BPF.W || insn.opcode & 0x18 == BPF.DW else { throw fail("atomics are 32 or 64 bits") }
                let valid: [Int32] = [0x00, 0x01, 0x40, 0x41, 0x50, 0x51, 0xA0, 0xA1, BPF.XCHG, BPF.CMPXCHG]
                guard valid.contains(insn.imm) else { throw fail("unknown atomic operation 0x\(String(insn.imm, radix: 16))") }
                if insn.imm & BPF.FETCH != 0 && insn.imm != BPF.CMPXCHG { try writes(insn.src) }
            } else {
                guard mode == BPF.MEM else { throw fail("store mode must be MEM or ATOMIC") }
                try zero([("immediate", Int64(insn.imm))])
            }
        }
    }
}
