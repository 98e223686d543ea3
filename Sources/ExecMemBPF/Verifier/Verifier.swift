// The verifier every program passes before an engine sees it. It works in two steps:
//
//   1. Structure: every opcode and field is one RFC 9669 defines, registers are r0-r10 and r10 is
//      never written, jumps stay inside their function and never land in the middle of an `lddw`,
//      no function falls off its end, calls go to known helpers or to function starts, map
//      references name maps the program has. Each instruction is decoded once into `BPFDecoded`.
//   2. Values (Verifier+Analysis.swift): an abstract interpreter over the control-flow graph tracks
//      what every register and stack slot holds on every path (Linux's verifier and PREVAIL do the
//      same), so that no register is read before it is written (r1-r5 after a call included), no
//      access leaves the region its pointer came from, and no stack byte is read unless this run
//      wrote it or the stack was zeroed for the run. It attaches to each access the check the
//      engines must make (none when proven), and rejects loops that can never exit.
//
// A rejection names the instruction and the reason. What the analysis proved is the
// `BPFVerifiedProgram` both engines run.

/// The verifier: checks a program against the helpers and maps it may use, and proves what it can.
/// A value type, immutable and `Sendable`: any thread may verify with it, as often as it likes.
public struct BPFVerifier: Sendable {
    /// The largest program accepted, and the default instruction budget of a run (Linux's
    /// BPF_COMPLEXITY_LIMIT_INSNS).
    public static let maxInstructions = 1_000_000
    /// The most instructions the analysis goes through before it gives up on a program as too
    /// complex (Linux's verifier has the same kind of limit): verification time is bounded by it.
    public static let maxAnalysedInstructions = 8_000_000

    let helpers: [Int32: BPFHelper]
    let maps: [BPFMap]
    /// Instructions the analysis may go through before it refuses the program as too complex.
    public let complexityLimit: Int

    /// A verifier for programs that may call `helpers` (by number) and reference `maps` (by index,
    /// with `lddw dst, map[N]`: `src` 1, or `map[N]+offset`: `src` 2, as Linux's pseudo map loads).
    public init(helpers: [Int32: BPFHelper], maps: [BPFMap] = [], complexityLimit: Int = maxAnalysedInstructions) {
        self.helpers = helpers
        self.maps = maps
        self.complexityLimit = complexityLimit
    }

    /// Checks `program`; returns it decoded, with what the analysis proved.
    /// - Throws: `BPFError.verifier` naming the first instruction found wrong and why.
    public func verify(_ p: [BPFInstruction]) throws(BPFError) -> BPFVerifiedProgram {
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
        var isStart = [Bool](repeating: false, count: p.count)
        isStart[0] = true
        for (i, insn) in p.enumerated() where !secondSlot[i] && insn.opcode == BPF.JMP | BPF.CALL && insn.src == BPF.callLocal {
            let t = i + 1 + Int(insn.imm)
            guard t >= 0, t < p.count, !secondSlot[t] else { throw .verifier(index: i, reason: "local call target \(t) is outside the program or inside an lddw") }
            isStart[t] = true
        }
        let functions = isStart.indices.filter { isStart[$0] }
        var code = [BPFDecoded](repeating: BPFDecoded(operation: .unreachable, dst: 0, src: 0, offset: 0, imm: 0), count: p.count)
        for (f, start) in functions.enumerated() {
            let end = f + 1 < functions.count ? functions[f + 1] : p.count
            let last = p[end - 1]
            if secondSlot[end - 1] || !(last.opcode == BPF.JMP | BPF.EXIT || last.opcode == BPF.JMP | BPF.JA || last.opcode == BPF.JMP32 | BPF.JA) {
                throw .verifier(index: end - 1, reason: "execution can fall off the end of the function at \(start) (its last instruction must be exit or ja)")
            }
            for i in start..<end where !secondSlot[i] {
                code[i] = try decode(p[i], at: i, next: i + 1 < p.count ? p[i + 1] : nil, function: start..<end, secondSlot: secondSlot)
            }
        }
        var analysis = Analysis(program: p, code: code, functions: functions, helpers: helpers, maps: maps, limit: complexityLimit)
        return try analysis.run()
    }

    // MARK: - Decoding

    /// ALU operations and jump conditions by the opcode's operation nibble.
    static let aluKinds: [BPFALU?] = [.add, .sub, .mul, nil, .or, .and, .lsh, .rsh, nil, nil, .xor, nil, .arsh, nil, nil, nil]
    static let conditions: [BPFCondition?] = [nil, .eq, .gt, .ge, .set, .ne, .sgt, .sge, nil, nil, .lt, .le, .slt, .sle, nil, nil]

    static func atomic(_ imm: Int32) -> BPFAtomic? {
        switch imm {
        case 0x00: .rmw(.add, fetch: false)
        case 0x01: .rmw(.add, fetch: true)
        case 0x40: .rmw(.or, fetch: false)
        case 0x41: .rmw(.or, fetch: true)
        case 0x50: .rmw(.and, fetch: false)
        case 0x51: .rmw(.and, fetch: true)
        case 0xA0: .rmw(.xor, fetch: false)
        case 0xA1: .rmw(.xor, fetch: true)
        case BPF.XCHG: .xchg
        case BPF.CMPXCHG: .cmpxchg
        default: nil
        }
    }

    private func decode(_ insn: BPFInstruction, at i: Int, next: BPFInstruction?, function: Range<Int>,
                        secondSlot: [Bool]) throws(BPFError) -> BPFDecoded {
        func fail(_ why: String) -> BPFError { .verifier(index: i, reason: "\(why) (\(BPFDisassembler.text(insn, next: next)))") }
        func register(_ r: UInt8, _ what: String) throws(BPFError) { if r > 10 { throw fail("\(what) register r\(r) does not exist") } }
        func writes(_ r: UInt8) throws(BPFError) { if r == 10 { throw fail("r10 is the read-only frame pointer") } }
        func zero(_ fields: [(String, Int64)]) throws(BPFError) {
            for (name, v) in fields where v != 0 { throw fail("\(name) must be 0, is \(v)") }
        }
        func jump(_ delta: Int) throws(BPFError) -> Int32 {
            let t = i + 1 + delta
            guard function.contains(t) else { throw fail("jump target \(t) is outside its function \(function.lowerBound)..<\(function.upperBound)") }
            if secondSlot[t] { throw fail("jump target \(t) is the middle of an lddw") }
            return Int32(t)
        }
        var d = BPFDecoded(operation: .unreachable, dst: insn.dst, src: insn.src, offset: insn.offset, imm: Int64(insn.imm))
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
                d.operation = .endian(bits: UInt8(insn.imm), swap: wide || source == BPF.X)
            case BPF.NEG:
                try zero([("source bit", Int64(source)), ("source register", Int64(insn.src)), ("offset", Int64(insn.offset)), ("immediate", Int64(insn.imm))])
                d.operation = .alu(.neg, wide: wide, register: false)
            case BPF.DIV, BPF.MOD:
                guard insn.offset == 0 || insn.offset == 1 else { throw fail("offset of div/mod must be 0 (unsigned) or 1 (signed)") }
                let kind: BPFALU = op == BPF.DIV ? (insn.offset == 1 ? .sdiv : .div) : (insn.offset == 1 ? .smod : .mod)
                d.operation = .alu(kind, wide: wide, register: source == BPF.X)
            case BPF.MOV:
                let allowed: [Int16] = source == BPF.X ? (wide ? [0, 8, 16, 32] : [0, 8, 16]) : [0]
                guard allowed.contains(insn.offset) else { throw fail("offset \(insn.offset) is not a valid mov/movsx width") }
                d.operation = insn.offset == 0 ? .alu(.mov, wide: wide, register: source == BPF.X) : .movsx(bits: UInt8(insn.offset), wide: wide)
            case BPF.ADD, BPF.SUB, BPF.MUL, BPF.OR, BPF.AND, BPF.LSH, BPF.RSH, BPF.XOR, BPF.ARSH:
                try zero([("offset", Int64(insn.offset))])
                d.operation = .alu(Self.aluKinds[Int(op >> 4)]!, wide: wide, register: source == BPF.X)
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
                if narrow { try zero([("offset", Int64(insn.offset))]); d.target = try jump(Int(insn.imm)) }
                else { try zero([("immediate", Int64(insn.imm))]); d.target = try jump(Int(insn.offset)) }
                d.operation = .jump(nil, wide: true, register: false)
            case BPF.CALL:
                guard !narrow else { throw fail("call is not a JMP32 operation") }
                if source == BPF.X {  // callx: the analysis proves which helper
                    try zero([("source register", Int64(insn.src)), ("offset", Int64(insn.offset)), ("immediate", Int64(insn.imm))])
                    d.operation = .callHelper
                    d.imm = -1
                    return d
                }
                try zero([("destination register", Int64(insn.dst)), ("offset", Int64(insn.offset))])
                switch insn.src {
                case BPF.callHelper, BPF.callRuntime:
                    guard helpers[insn.imm] != nil else { throw fail("call to unknown helper \(insn.imm)") }
                    d.operation = .callHelper
                case BPF.callLocal:
                    d.operation = .callLocal
                    d.target = Int32(i + 1 + Int(insn.imm))
                default:
                    throw fail("call source \(insn.src) is not helper (0), local (1) or runtime (2)")
                }
            case BPF.EXIT:
                guard !narrow else { throw fail("exit is not a JMP32 operation") }
                try zero([("source bit", Int64(source)), ("registers", Int64(insn.dst) | Int64(insn.src)), ("offset", Int64(insn.offset)), ("immediate", Int64(insn.imm))])
                d.operation = .exit
            case BPF.JEQ, BPF.JGT, BPF.JGE, BPF.JSET, BPF.JNE, BPF.JSGT, BPF.JSGE, BPF.JLT, BPF.JLE, BPF.JSLT, BPF.JSLE:
                if source == BPF.K { try zero([("source register", Int64(insn.src))]) } else { try zero([("immediate", Int64(insn.imm))]) }
                d.target = try jump(Int(insn.offset))
                d.operation = .jump(Self.conditions[Int(op >> 4)]!, wide: !narrow, register: source == BPF.X)
                if narrow { d.imm = Int64(UInt32(bitPattern: insn.imm)) }  // JMP32 compares the low 32 bits
            default:
                throw fail("unknown jump operation 0x\(String(op, radix: 16))")
            }
        case BPF.LD:
            guard insn.opcode == BPF.LDDW, let next else { throw fail("only lddw is defined in the LD class (no legacy packet access)") }
            try zero([("offset", Int64(insn.offset))])
            try writes(insn.dst)
            d.operation = .lddw
            let low = UInt64(UInt32(bitPattern: insn.imm)), high = UInt64(UInt32(bitPattern: next.imm))
            switch insn.src {
            case 0:
                d.imm = Int64(bitPattern: high << 32 | low)
            case 1, 2:  // map[N], map[N]+offset
                guard insn.imm >= 0, Int(insn.imm) < maps.count else {
                    throw fail("map[\(insn.imm)]: the program has \(maps.count) map\(maps.count == 1 ? "" : "s")")
                }
                let m = maps[Int(insn.imm)]
                if insn.src == 1 {
                    guard next.imm == 0 else { throw fail("lddw of a map takes 0 in its second slot, not \(next.imm)") }
                    d.imm = Int64(bitPattern: UInt64(m.handle))
                } else {
                    guard high <= UInt64(m.valueSize) else { throw fail("offset \(high) is past the \(m.valueSize)-byte value of map '\(m.name)'") }
                    d.imm = Int64(bitPattern: UInt64(UInt(bitPattern: m.values)) + high)
                }
            default:
                throw fail("lddw source \(insn.src) is not a number (0), map[N] (1) or map[N]+offset (2)")
            }
        case BPF.LDX:
            let mode = insn.opcode & 0xE0
            guard mode == BPF.MEM || (mode == BPF.MEMSX && insn.opcode & 0x18 != BPF.DW) else { throw fail("load mode must be MEM or MEMSX (b, h, w)") }
            try zero([("immediate", Int64(insn.imm))])
            try writes(insn.dst)
            d.operation = .load(size: UInt8(BPF.sizeBytes(insn.opcode)), signed: mode == BPF.MEMSX)
        case BPF.ST:
            guard insn.opcode & 0xE0 == BPF.MEM else { throw fail("store mode must be MEM") }
            try zero([("source register", Int64(insn.src))])
            d.operation = .store(size: UInt8(BPF.sizeBytes(insn.opcode)), register: false)
        default:  // STX
            let mode = insn.opcode & 0xE0
            let size = UInt8(BPF.sizeBytes(insn.opcode))
            if mode == BPF.ATOMIC {
                guard size == 4 || size == 8 else { throw fail("atomics are 32 or 64 bits") }
                guard let a = Self.atomic(insn.imm) else { throw fail("unknown atomic operation 0x\(String(insn.imm, radix: 16))") }
                if insn.imm & BPF.FETCH != 0 && insn.imm != BPF.CMPXCHG { try writes(insn.src) }
                d.operation = .atomic(a, size: size)
            } else {
                guard mode == BPF.MEM else { throw fail("store mode must be MEM or ATOMIC") }
                try zero([("immediate", Int64(insn.imm))])
                d.operation = .store(size: size, register: true)
            }
        }
        return d
    }
}

/// A program the verifier accepted, decoded, with what its analysis proved: both engines run this.
///
/// Immutable and `Sendable`; it keeps its maps' handles and value addresses (as `lddw` immediates),
/// so it must not outlive the `BPFProgram` that holds the maps.
public struct BPFVerifiedProgram: Sendable {
    /// The instructions as given.
    public let instructions: [BPFInstruction]
    let code: [BPFDecoded]
    /// First instruction of each function; 0 is the entry.
    public let functions: [Int]
    /// Bytes at the top of the eBPF stack cleared before each run: 0 when the analysis proved that
    /// every stack read follows a write in the same run, else the deepest the program can reach.
    public let stackZeroBytes: Int
    /// Budget units a run is charged on entry (main's length).
    public let entryCharge: UInt32
    /// Registers readable at each instruction (bit n = rn), as the analysis found them.
    public let readable: [UInt16]
    /// Loop headers and the budget units each back edge into them charges.
    public let loopHeaders: [Int: UInt32]
    /// Memory accesses proven in bounds (no run-time check), and those checked at run time.
    public let provenAccesses: Int, checkedAccesses: Int
    /// Instructions the analysis found unreachable (they stop the run if ever reached).
    public let unreachableInstructions: Int
    /// Basic blocks, and how many times the analysis went through one until nothing changed.
    public internal(set) var blocks = 0, blockAnalyses = 0

    init(instructions: [BPFInstruction], code: [BPFDecoded], functions: [Int], stackZeroBytes: Int, readable: [UInt16], loopHeaders: [Int: UInt32]) {
        self.instructions = instructions
        self.code = code
        self.functions = functions
        self.stackZeroBytes = stackZeroBytes
        self.readable = readable
        self.loopHeaders = loopHeaders
        let end = functions.count > 1 ? functions[1] : instructions.count
        entryCharge = UInt32(end)
        var proven = 0, checked = 0, dead = 0
        for (i, d) in code.enumerated() {
            switch d.operation {
            case .load, .store, .atomic: if d.access.check == .proven { proven += 1 } else { checked += 1 }
            case .unreachable: if i == 0 || instructions[i - 1].opcode != BPF.LDDW || code[i - 1].operation != .lddw { dead += 1 }
            default: break
            }
        }
        provenAccesses = proven
        checkedAccesses = checked
        unreachableInstructions = dead
    }

    /// For listings: how the access at `index` is checked ("proven", "checked against the context"),
    /// nil for other instructions; "unreachable" for dead code.
    public func accessNote(at index: Int) -> String? {
        let d = code[index]
        switch d.operation {
        case .load, .store, .atomic:
            switch d.access.check {
            case .proven: return "proven within \(d.access.region.described)"
            case let .contextEnd(end): return "checked: the context must be at least \(end) bytes"
            case .region: return "checked against \(d.access.region.described)"
            }
        case .unreachable:
            return index > 0 && code[index - 1].operation == .lddw ? nil : "unreachable"
        default:
            return nil
        }
    }
}
