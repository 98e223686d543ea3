// The assembly dialect of the eBPF conformance suite (../shared/bpf-conformance/README.md), so its
// `.data` files run as they are: `mov %r0, 1`, `ldxw %r0, [%r1+4]`, `jne %r0, 15, label`,
// `lock fetch add [%r10-8], %r1`, `call local func`, `call %r2`; maps as Linux's pseudo loads,
// `lddw %r1, map[0]` (src 1) and `lddw %r1, map[0]+8` (src 2, a pointer into the map's value).
// Numbers are decimal or hex and wrap to the field's width; a jump target is a label or `+N`/`-N`;
// the first `exit` is also the label `exit`.

public enum BPFAssembler {
    static let aluOps: [String: UInt8] = [
        "add": BPF.ADD, "sub": BPF.SUB, "mul": BPF.MUL, "div": BPF.DIV, "sdiv": BPF.DIV, "or": BPF.OR,
        "and": BPF.AND, "lsh": BPF.LSH, "rsh": BPF.RSH, "neg": BPF.NEG, "mod": BPF.MOD, "smod": BPF.MOD,
        "xor": BPF.XOR, "mov": BPF.MOV, "arsh": BPF.ARSH,
    ]
    static let jumpOps: [String: UInt8] = [
        "jeq": BPF.JEQ, "jgt": BPF.JGT, "jge": BPF.JGE, "jset": BPF.JSET, "jne": BPF.JNE, "jsgt": BPF.JSGT,
        "jsge": BPF.JSGE, "jlt": BPF.JLT, "jle": BPF.JLE, "jslt": BPF.JSLT, "jsle": BPF.JSLE,
    ]
    static let sizes: [String: UInt8] = ["b": BPF.B, "h": BPF.H, "w": BPF.W, "dw": BPF.DW]
    static let atomicOps: [String: Int32] = ["add": 0x00, "or": 0x40, "and": 0x50, "xor": 0xA0]

    /// Assembles source text into instructions.
    public static func assemble(_ source: String) throws(BPFError) -> [BPFInstruction] {
        var out: [BPFInstruction] = []
        var labels: [String: Int] = [:]
        var fixups: [(index: Int, label: String, line: Int, text: String, isCall: Bool)] = []
        var sawExit = false
        for (n, raw) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = n + 1
            let text = String(raw.prefix { $0 != "#" }).trimmed
            if text.isEmpty { continue }
            func fail(_ why: String) -> BPFError { .assembler(line: line, text: text, reason: why) }
            if text.hasSuffix(":") {
                let label = String(text.dropLast())
                guard !label.isEmpty, !label.contains(" ") else { throw fail("bad label") }
                guard labels[label] == nil else { throw fail("duplicate label '\(label)'") }
                labels[label] = out.count
                continue
            }
            let mnemonic = String(text.prefix { $0 != " " && $0 != "\t" })
            let operands = text.dropFirst(mnemonic.count).split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty }
            if mnemonic == "exit" && !sawExit {
                sawExit = true
                if labels["exit"] == nil { labels["exit"] = out.count }
            }
            var pendingLabel: String? = nil
            func target(_ s: String) throws(BPFError) -> Int32 {
                if s.hasPrefix("+") || s.hasPrefix("-") {
                    guard let v = parseNumber(s), let t = Int32(exactly: v) else { throw fail("bad jump offset '\(s)' (32 bits at most)") }
                    return t
                }
                guard s.first.map({ $0.isLetter || $0 == "_" }) == true else { throw fail("bad jump target '\(s)'") }
                pendingLabel = s
                return 0
            }
            let insns = try encode(mnemonic, operands, fail: fail, target: target)
            if let label = pendingLabel {
                fixups.append((out.count, label, line, text, insns[0].opcode == BPF.JMP | BPF.CALL))
            }
            out += insns
        }
        for f in fixups {
            guard let at = labels[f.label] else { throw .assembler(line: f.line, text: f.text, reason: "unknown label '\(f.label)'") }
            let delta = at - f.index - 1
            if f.isCall || out[f.index].opcode == BPF.JMP32 | BPF.JA {
                out[f.index].imm = Int32(delta)
            } else {
                guard let o = Int16(exactly: delta) else { throw .assembler(line: f.line, text: f.text, reason: "jump of \(delta) does not fit 16 bits; use ja32") }
                out[f.index].offset = o
            }
        }
        return out
    }

    static func encode(_ m: String, _ ops: [String], fail: (String) -> BPFError,
                       target: (String) throws(BPFError) -> Int32) throws(BPFError) -> [BPFInstruction] {
        /// A 16-bit jump offset: what does not fit is an error, never a truncated jump.
        func target16(_ s: String) throws(BPFError) -> Int16 {
            let t = try target(s)
            guard let o = Int16(exactly: t) else { throw fail("jump offset \(t) does not fit 16 bits (use ja32)") }
            return o
        }
        func reg(_ s: String) throws(BPFError) -> UInt8 {
            guard s.hasPrefix("%r"), let r = UInt8(s.dropFirst(2)), r <= 15 else { throw fail("bad register '\(s)'") }
            return r
        }
        func imm32(_ s: String) throws(BPFError) -> Int32 {
            guard let v = parseNumber(s) else { throw fail("bad immediate '\(s)'") }
            // 32 bits, signed or unsigned (0xffffffff is -1, as the suite writes it); no more.
            guard let w = Int32(exactly: v) ?? UInt32(exactly: v).map({ Int32(bitPattern: $0) }) else {
                throw fail("immediate \(s) does not fit 32 bits")
            }
            return w
        }
        func memory(_ s: String) throws(BPFError) -> (UInt8, Int16) {
            guard s.hasPrefix("["), s.hasSuffix("]") else { throw fail("bad memory operand '\(s)'") }
            let inner = s.dropFirst().dropLast()
            if let sign = inner.firstIndex(where: { $0 == "+" || $0 == "-" }) {
                guard let o = parseNumber(String(inner[sign...])) else { throw fail("bad offset in '\(s)'") }
                guard let o16 = Int16(exactly: o) else { throw fail("offset \(o) in '\(s)' does not fit 16 bits") }
                return (try reg(String(inner[..<sign]).trimmed), o16)
            }
            return (try reg(String(inner).trimmed), 0)
        }
        func count(_ n: Int) throws(BPFError) { if ops.count != n { throw fail("expected \(n) operands, got \(ops.count)") } }

        // Byte swaps: be16/32/64, le16/32/64 (ALU class), bswap16/32/64 and swap16/32/64 (ALU64 class).
        for (prefix, opcode) in [("bswap", BPF.ALU64 | BPF.END), ("swap", BPF.ALU64 | BPF.END),
                                 ("be", BPF.ALU | BPF.END | BPF.X), ("le", BPF.ALU | BPF.END)] where m.hasPrefix(prefix) {
            guard let width = Int32(m.dropFirst(prefix.count)), [16, 32, 64].contains(width) else { continue }
            try count(1)
            return [BPFInstruction(opcode: opcode, dst: try reg(ops[0]), imm: width)]
        }
        // Sign-extending moves: movsx832, movsx1632 (ALU), movsx864, movsx1664, movsx3264 (ALU64).
        if m.hasPrefix("movsx") {
            let forms: [String: (UInt8, Int16)] = ["movsx832": (BPF.ALU, 8), "movsx1632": (BPF.ALU, 16), "movsx864": (BPF.ALU64, 8),
                                                   "movsx1664": (BPF.ALU64, 16), "movsx3264": (BPF.ALU64, 32)]
            guard let (cls, bits) = forms[m] else { throw fail("unknown mnemonic") }
            try count(2)
            return [BPFInstruction(opcode: cls | BPF.MOV | BPF.X, dst: try reg(ops[0]), src: try reg(ops[1]), offset: bits)]
        }
        switch m {
        case "exit":
            try count(0)
            return [BPFInstruction(opcode: BPF.JMP | BPF.EXIT)]
        case "ja":
            try count(1)
            return [BPFInstruction(opcode: BPF.JMP | BPF.JA, offset: try target16(ops[0]))]
        case "ja32":
            try count(1)
            let t = try target(ops[0])
            return [BPFInstruction(opcode: BPF.JMP32 | BPF.JA, imm: Int32(t))]
        case "call":
            let parts = ops.first?.split(separator: " ").map(String.init) ?? []
            guard ops.count == 1, !parts.isEmpty else { throw fail("call takes one operand") }
            if parts.count == 1 && parts[0].hasPrefix("%") {
                return [BPFInstruction(opcode: BPF.CALLX, dst: try reg(parts[0]))]
            }
            if parts.count == 1 { return [BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callHelper, imm: try imm32(parts[0]))] }
            guard parts.count == 2 else { throw fail("bad call operand") }
            switch parts[0] {
            case "helper": return [BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callHelper, imm: try imm32(parts[1]))]
            case "runtime": return [BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callRuntime, imm: try imm32(parts[1]))]
            case "local":
                let t = try target(parts[1])
                return [BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callLocal, imm: Int32(t))]
            default: throw fail("call mode must be helper, local or runtime")
            }
        case "lddw":
            try count(2)
            if ops[1].hasPrefix("map[") {  // map[N] (src 1) or map[N]+offset (src 2)
                let body = ops[1].dropFirst(4)
                guard let close = body.firstIndex(of: "]"), let n = Int32(body[..<close]) else { throw fail("bad map reference '\(ops[1])'") }
                let rest = String(body[body.index(after: close)...]).trimmed
                if rest.isEmpty { return [BPFInstruction(opcode: BPF.LDDW, dst: try reg(ops[0]), src: 1, imm: n), BPFInstruction(opcode: 0)] }
                guard rest.hasPrefix("+"), let off = UInt32(rest.dropFirst()) else { throw fail("bad map value offset '\(rest)'") }
                return [BPFInstruction(opcode: BPF.LDDW, dst: try reg(ops[0]), src: 2, imm: n), BPFInstruction(opcode: 0, imm: Int32(bitPattern: off))]
            }
            guard let u = parseBits(ops[1]) else { throw fail("bad immediate '\(ops[1])' (64 bits at most)") }
            return [BPFInstruction(opcode: BPF.LDDW, dst: try reg(ops[0]), imm: Int32(truncatingIfNeeded: u)),
                    BPFInstruction(opcode: 0, imm: Int32(truncatingIfNeeded: u >> 32))]
        case "lock":
            // lock [fetch] op[32] [dst+off], src
            var words = ops.first?.split(separator: " ").map(String.init) ?? []
            guard ops.count == 2, words.count >= 2 else { throw fail("lock takes [fetch] op [mem], src") }
            var fetch = false
            if words[0] == "fetch" { fetch = true; words.removeFirst() }
            guard words.count == 2 else { throw fail("bad lock operands") }
            var op = words[0]
            let wide = !op.hasSuffix("32")
            if !wide { op.removeLast(2) }
            let imm: Int32
            switch op {
            case "xchg": imm = BPF.XCHG
            case "cmpxchg": imm = BPF.CMPXCHG
            default:
                guard let a = atomicOps[op] else { throw fail("unknown atomic operation '\(op)'") }
                imm = a | (fetch ? BPF.FETCH : 0)
            }
            let (dst, off) = try memory(words[1])
            return [BPFInstruction(opcode: BPF.STX | BPF.ATOMIC | (wide ? BPF.DW : BPF.W), dst: dst, src: try reg(ops[1]), offset: off, imm: imm)]
        default:
            break
        }
        // Loads and stores: ldx{b,h,w,dw}, ldxs{b,h,w}, st{b,h,w,dw}, stx{b,h,w,dw}.
        for (prefix, kind) in [("ldxs", 0), ("ldx", 1), ("stx", 2), ("st", 3)] where m.hasPrefix(prefix) {
            guard let size = sizes[String(m.dropFirst(prefix.count))], !(kind == 0 && size == BPF.DW) else { continue }
            try count(2)
            switch kind {
            case 0, 1:
                let (src, off) = try memory(ops[1])
                return [BPFInstruction(opcode: BPF.LDX | (kind == 0 ? BPF.MEMSX : BPF.MEM) | size, dst: try reg(ops[0]), src: src, offset: off)]
            case 2:
                let (dst, off) = try memory(ops[0])
                return [BPFInstruction(opcode: BPF.STX | BPF.MEM | size, dst: dst, src: try reg(ops[1]), offset: off)]
            default:
                let (dst, off) = try memory(ops[0])
                return [BPFInstruction(opcode: BPF.ST | BPF.MEM | size, dst: dst, offset: off, imm: try imm32(ops[1]))]
            }
        }
        // ALU and jumps, with a `32` suffix for ALU32 / JMP32.
        let narrow = m.hasSuffix("32")
        let base = narrow ? String(m.dropLast(2)) : m
        if let op = aluOps[base] {
            let signed: Int16 = (base == "sdiv" || base == "smod") ? 1 : 0
            let cls = narrow ? BPF.ALU : BPF.ALU64
            if op == BPF.NEG {
                try count(1)
                return [BPFInstruction(opcode: cls | op, dst: try reg(ops[0]))]
            }
            try count(2)
            if ops[1].hasPrefix("%") {
                return [BPFInstruction(opcode: cls | op | BPF.X, dst: try reg(ops[0]), src: try reg(ops[1]), offset: signed)]
            }
            return [BPFInstruction(opcode: cls | op | BPF.K, dst: try reg(ops[0]), offset: signed, imm: try imm32(ops[1]))]
        }
        if let op = jumpOps[base] {
            try count(3)
            let cls = narrow ? BPF.JMP32 : BPF.JMP
            let t = try target16(ops[2])
            if ops[1].hasPrefix("%") {
                return [BPFInstruction(opcode: cls | op | BPF.X, dst: try reg(ops[0]), src: try reg(ops[1]), offset: t)]
            }
            return [BPFInstruction(opcode: cls | op | BPF.K, dst: try reg(ops[0]), offset: t, imm: try imm32(ops[1]))]
        }
        throw fail("unknown mnemonic '\(m)'")
    }

    /// Decimal or `0x` hex, with an optional sign; values wrap like the suite's assembler.
    /// A decimal or hex number, exactly: nil unless it lies in -2^63 ... 2^63-1 (nothing wraps).
    static func parseNumber(_ s: String) -> Int64? {
        guard let (negative, m) = parseMagnitude(s) else { return nil }
        if !negative { return Int64(exactly: m) }
        return m <= UInt64(Int64.max) ? -Int64(m) : m == UInt64(Int64.max) + 1 ? .min : nil
    }

    /// A 64-bit word: 0 ... 2^64-1, or a negative number down to -2^63 as its two's complement.
    static func parseBits(_ s: String) -> UInt64? {
        guard let (negative, m) = parseMagnitude(s) else { return nil }
        if !negative { return m }
        return parseNumber(s).map { UInt64(bitPattern: $0) }
    }

    private static func parseMagnitude(_ s: String) -> (negative: Bool, magnitude: UInt64)? {
        var t = Substring(s.trimmed)
        var negative = false
        if t.hasPrefix("+") { t = t.dropFirst() } else if t.hasPrefix("-") { negative = true; t = t.dropFirst() }
        let magnitude = t.hasPrefix("0x") || t.hasPrefix("0X") ? UInt64(t.dropFirst(2), radix: 16) : UInt64(t)
        return magnitude.map { (negative, $0) }
    }
}

extension String {
    var trimmed: String {
        String(self.drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}
