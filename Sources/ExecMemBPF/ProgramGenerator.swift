// Random eBPF programs that are valid by construction, for differential testing of the JIT against
// the interpreter (`swift test` runs 100,000; `execmem bpf fuzz` runs as many as asked). Every opcode
// class appears: ALU and ALU32 with every operation, byte swaps, movsx, signed and unsigned division,
// JMP and JMP32 with every condition, ja and ja32, lddw, loads (and sign-extending loads) and stores on
// the stack and the context memory, every atomic, helper calls, callx and a local call.
//
// Programs terminate (jumps only go forward), read no register or stack byte before writing it, and
// keep their memory accesses in bounds, so both engines must agree on r0 and on the memory.

import ExecMem

public struct BPFProgramGenerator {
    /// Bytes of context memory programs get (r1); r9 keeps the pointer.
    public static let memorySize = 64
    /// The helper generated programs call, by number: a deterministic mix of its arguments.
    public static let helperNumber: Int32 = 7
    public static let helper = BPFHelper(name: "mix", c: { a, b, c, d, e in
        (a &* 0x9E37_79B9_7F4A_7C15) ^ (b << 1) ^ (c >> 3) &+ d &- e
    })

    var rng: SplitMix64
    var code: [BPFInstruction] = []
    /// Forward jumps still to be pointed somewhere: (instruction index, is ja32).
    var pending: [(Int, Bool)] = []

    public init(seed: UInt64) { rng = SplitMix64(state: seed) }

    mutating func random(_ n: Int) -> Int { rng.below(n) }
    mutating func imm() -> Int32 { rng.immediate() }
    /// Registers a program may write: r0-r8 (r9 holds the memory pointer, r10 is the frame).
    mutating func reg() -> UInt8 { UInt8(random(9)) }

    mutating func emit(_ i: BPFInstruction) { code.append(i) }
    mutating func lddw(_ r: UInt8, _ v: UInt64) {
        emit(BPFInstruction(opcode: BPF.LDDW, dst: r, imm: Int32(truncatingIfNeeded: v)))
        emit(BPFInstruction(opcode: 0, imm: Int32(truncatingIfNeeded: v >> 32)))
    }

    /// Generates one program; `length` is roughly how many random instructions it holds.
    public mutating func generate(length: Int = 40) -> [BPFInstruction] {
        code = []
        pending = []
        calls = []
        emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.X, dst: 9, src: 1))
        for r: UInt8 in 0...8 { lddw(r, rng.next()) }
        // The 64 bytes below r10 are written before any load may read them.
        for k in 1...8 { emit(BPFInstruction(opcode: BPF.ST | BPF.MEM | BPF.DW, dst: 10, offset: Int16(-8 * k), imm: imm())) }
        let useCall = random(4) == 0
        for _ in 0..<length {
            resolvePending(probability: 4)
            step(useCall: useCall)
        }
        resolvePending(probability: 1)
        emit(BPFInstruction(opcode: BPF.JMP | BPF.EXIT))
        if useCall { subfunction() }
        return code
    }

    /// Points pending forward jumps here, each with probability 1/`probability`.
    mutating func resolvePending(probability: Int) {
        var keep: [(Int, Bool)] = []
        for (at, wide) in pending {
            if random(probability) == 0 {
                let delta = code.count - at - 1
                if wide { code[at].imm = Int32(delta) } else { code[at].offset = Int16(delta) }
            } else {
                keep.append((at, wide))
            }
        }
        pending = keep
    }

    mutating func step(useCall: Bool) {
        switch random(12) {
        case 0, 1, 2: alu(wide: true)
        case 3, 4: alu(wide: false)
        case 5:  // byte swaps and movsx
            let d = reg()
            switch random(3) {
            case 0: emit(BPFInstruction(opcode: BPF.ALU | BPF.END | (random(2) == 0 ? BPF.X : BPF.K), dst: d, imm: [16, 32, 64][random(3)]))
            case 1: emit(BPFInstruction(opcode: BPF.ALU64 | BPF.END, dst: d, imm: [16, 32, 64][random(3)]))
            default:
                let wide = random(2) == 0
                emit(BPFInstruction(opcode: (wide ? BPF.ALU64 : BPF.ALU) | BPF.MOV | BPF.X, dst: d, src: reg(),
                                    offset: wide ? [8, 16, 32][random(3)] : [8, 16][random(2)]))
            }
        case 6: conditionalJump()
        case 7: memory()
        case 8: atomic()
        case 9:
            if random(2) == 0 { lddw(reg(), rng.next()) } else { unconditionalJump() }
        case 10: helperCall()
        default:
            if useCall { localCall() } else { alu(wide: true) }
        }
    }

    mutating func alu(wide: Bool) {
        let ops = [BPF.ADD, BPF.SUB, BPF.MUL, BPF.DIV, BPF.OR, BPF.AND, BPF.LSH, BPF.RSH, BPF.NEG, BPF.MOD, BPF.XOR, BPF.MOV, BPF.ARSH]
        let op = ops[random(ops.count)]
        let cls = wide ? BPF.ALU64 : BPF.ALU
        let signed: Int16 = (op == BPF.DIV || op == BPF.MOD) && random(2) == 0 ? 1 : 0
        if op == BPF.NEG { emit(BPFInstruction(opcode: cls | op, dst: reg())); return }
        if random(2) == 0 {
            emit(BPFInstruction(opcode: cls | op | BPF.X, dst: reg(), src: reg(), offset: signed))
        } else {
            emit(BPFInstruction(opcode: cls | op | BPF.K, dst: reg(), offset: signed, imm: imm()))
        }
    }

    mutating func conditionalJump() {
        let ops = [BPF.JEQ, BPF.JGT, BPF.JGE, BPF.JSET, BPF.JNE, BPF.JSGT, BPF.JSGE, BPF.JLT, BPF.JLE, BPF.JSLT, BPF.JSLE]
        let cls = random(2) == 0 ? BPF.JMP : BPF.JMP32
        let op = ops[random(ops.count)]
        if random(2) == 0 {
            emit(BPFInstruction(opcode: cls | op | BPF.X, dst: reg(), src: reg()))
        } else {
            emit(BPFInstruction(opcode: cls | op | BPF.K, dst: reg(), imm: imm()))
        }
        pending.append((code.count - 1, false))
    }

    mutating func unconditionalJump() {
        let wide = random(2) == 0
        emit(BPFInstruction(opcode: wide ? BPF.JMP32 | BPF.JA : BPF.JMP | BPF.JA))
        pending.append((code.count - 1, wide))
    }

    /// A load or store on the stack (r10) or the context memory (r9), always in bounds.
    mutating func memory() {
        let size = [1, 2, 4, 8][random(4)]
        let sizeBits: UInt8 = [1: BPF.B, 2: BPF.H, 4: BPF.W, 8: BPF.DW][size]!
        let onStack = random(2) == 0
        let base: UInt8 = onStack ? 10 : 9
        let offset = onStack ? -64 + random(64 - size + 1) : random(Self.memorySize - size + 1)
        switch random(4) {
        case 0:
            let sx = size < 8 && random(2) == 0
            emit(BPFInstruction(opcode: BPF.LDX | (sx ? BPF.MEMSX : BPF.MEM) | sizeBits, dst: reg(), src: base, offset: Int16(offset)))
        case 1:
            emit(BPFInstruction(opcode: BPF.ST | BPF.MEM | sizeBits, dst: base, offset: Int16(offset), imm: imm()))
        default:
            emit(BPFInstruction(opcode: BPF.STX | BPF.MEM | sizeBits, dst: base, src: reg(), offset: Int16(offset)))
        }
    }

    /// An atomic on an aligned stack or memory slot.
    mutating func atomic() {
        let wide = random(2) == 0
        let size = wide ? 8 : 4
        let onStack = random(2) == 0
        let slot = random((onStack ? 64 : Self.memorySize) / size)
        let offset = onStack ? -64 + slot * size : slot * size
        let ops: [Int32] = [0x00, 0x01, 0x40, 0x41, 0x50, 0x51, 0xA0, 0xA1, BPF.XCHG, BPF.CMPXCHG]
        emit(BPFInstruction(opcode: BPF.STX | BPF.ATOMIC | (wide ? BPF.DW : BPF.W), dst: onStack ? 10 : 9, src: reg(),
                            offset: Int16(offset), imm: ops[random(ops.count)]))
    }

    /// A helper call by number or through callx; r1-r5 are rewritten after it (they are undefined).
    mutating func helperCall() {
        if random(2) == 0 {
            emit(BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callHelper, imm: Self.helperNumber))
        } else {
            let r = UInt8(1 + random(5))
            emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: r, imm: Self.helperNumber))
            emit(BPFInstruction(opcode: BPF.CALLX, dst: r))
        }
        for r: UInt8 in 1...5 { emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: r, imm: imm())) }
    }

    /// A call to the subfunction that follows main (its offset is fixed once main is done).
    mutating func localCall() {
        emit(BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callLocal, imm: 0))
        calls.append(code.count - 1)
        for r: UInt8 in 1...5 { emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: r, imm: imm())) }
    }

    var calls: [Int] = []

    /// r0 = a mix of r1-r5, using its own stack frame; clobbers r6-r8 (the engines restore them).
    mutating func subfunction() {
        let start = code.count
        for at in calls { code[at].imm = Int32(start - at - 1) }
        calls = []
        emit(BPFInstruction(opcode: BPF.STX | BPF.MEM | BPF.DW, dst: 10, src: 1, offset: -8))
        emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.X, dst: 6, src: 2))
        emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MUL | BPF.X, dst: 6, src: 3))
        emit(BPFInstruction(opcode: BPF.LDX | BPF.MEM | BPF.DW, dst: 0, src: 10, offset: -8))
        emit(BPFInstruction(opcode: BPF.ALU64 | BPF.XOR | BPF.X, dst: 0, src: 6))
        emit(BPFInstruction(opcode: BPF.ALU64 | BPF.ADD | BPF.X, dst: 0, src: 5))
        emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: 7, imm: -1))
        emit(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: 8, imm: 99))
        emit(BPFInstruction(opcode: BPF.JMP | BPF.EXIT))
    }
}

/// Runs generated programs on both engines and reports the first disagreement.
public struct DifferentialTester {
    public let vm: BPFVM

    public init(vm: BPFVM) {
        self.vm = vm
        vm.register(BPFProgramGenerator.helperNumber, BPFProgramGenerator.helper)
    }

    /// Runs `count` programs from `seed` on; returns a description of each mismatch.
    public func run(count: Int, seed: UInt64, length: Int = 40) -> [String] {
        var mismatches: [String] = []
        for k in 0..<count {
            var g = BPFProgramGenerator(seed: seed &+ UInt64(k))
            let code = g.generate(length: length)
            var bytes = SplitMix64(state: seed ^ UInt64(k) ^ 0x5EED)
            let memory = bytes.bytes(BPFProgramGenerator.memorySize)
            do throws(BPFError) {
                let p = try vm.load(code, name: "generated-\(seed &+ UInt64(k))")
                var a = memory, b = memory
                let ra = try a.withUnsafeMutableBytes { m in Result { () throws(BPFError) in try p.run(memory: m, engine: .interpreter) } }.get()
                let rb = try b.withUnsafeMutableBytes { m in Result { () throws(BPFError) in try p.run(memory: m, engine: .jit) } }.get()
                if ra != rb || a != b {
                    mismatches.append("seed \(seed &+ UInt64(k)): interpreter r0 0x\(String(ra, radix: 16)), JIT r0 0x\(String(rb, radix: 16))\(a != b ? ", memory differs" : "")\n\(BPFDisassembler.text(code))")
                }
            } catch {
                mismatches.append("seed \(seed &+ UInt64(k)): \(error)\n\(BPFDisassembler.text(code))")
            }
            if mismatches.count >= 5 { break }
        }
        return mismatches
    }
}

extension SplitMix64 {
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

extension SplitMix64 {
    /// A number in `0..<n` (`n` > 0): what both program generators draw with.
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// An immediate: small, a boundary value, or any 32 bits.
    mutating func immediate() -> Int32 {
        switch below(4) {
        case 0: return Int32(below(16)) - 8
        case 1: return [Int32.min, Int32.max, -1, 0, 1, 31, 32, 63, 64][below(9)]
        default: return Int32(truncatingIfNeeded: next())
        }
    }
}
