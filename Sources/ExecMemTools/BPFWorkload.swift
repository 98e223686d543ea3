// Real eBPF program sizes (../shared/data/bpf-programs, bundled with the simulator so the demo and
// benchmarks work on a machine without the shared data) and straight-line programs of those sizes.

import ExecMemBPF
import ExecMemSim
import Foundation

/// The package's bundled resources (C sources, data sets).
let resourceDirectory = Bundle.module.resourcePath ?? Bundle.module.bundlePath

public enum BPFWorkload {
    /// Instruction counts (8-byte slots) of the 389 entry programs and their sub-functions measured
    /// from Debian's libbpf-tools and xdp-tools.
    public static let sizes: [Int] = (try? DataSet.load(withSymbolTables: false).bpfSizes) ?? []

    /// A program of `slots` instructions that computes a value from r1 with no helper calls and no
    /// memory access, so its JIT code runs the same wherever it is copied.
    public static func straightLine(slots: Int, seed: Int) -> [BPFInstruction] {
        var code = [BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.X, dst: 0, src: 1)]
        var k = 0
        while code.count < max(2, slots) - 1 {
            let op = [BPF.ADD, BPF.XOR, BPF.MUL, BPF.SUB][(k + seed) % 4]
            code.append(BPFInstruction(opcode: BPF.ALU64 | op | BPF.K, dst: 0, imm: Int32(truncatingIfNeeded: seed &* 31 &+ k &* 7 | 1)))
            k += 1
        }
        code.append(BPFInstruction(opcode: BPF.JMP | BPF.EXIT))
        return code
    }

    /// What `straightLine` returns for input `x`, computed in Swift.
    public static func expected(slots: Int, seed: Int, x: UInt64) -> UInt64 {
        var r = x
        var k = 0
        while k + 2 < max(2, slots) {
            let imm = UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: seed &* 31 &+ k &* 7 | 1)))
            switch (k + seed) % 4 {
            case 0: r = r &+ imm
            case 1: r ^= imm
            case 2: r = r &* imm
            default: r = r &- imm
            }
            k += 1
        }
        return r
    }

    /// A large program of `functions` functions of about `instructions / functions` instructions
    /// each (a short loop, a stack spill, straight-line arithmetic), which main calls in turn: the
    /// shape whose compile time must stay linear.
    public static func manyFunctions(instructions: Int, functions: Int) -> [BPFInstruction] {
        let body = max(12, instructions / max(1, functions) - 4)
        var main: [BPFInstruction] = [BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: 6, imm: 1)]
        var callSites: [Int] = []
        for _ in 0..<functions {
            main.append(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.X, dst: 1, src: 6))
            callSites.append(main.count)
            main.append(BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callLocal, imm: 0))
            main.append(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.X, dst: 6, src: 0))
        }
        main.append(BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.X, dst: 0, src: 6))
        main.append(BPFInstruction(opcode: BPF.JMP | BPF.EXIT))
        var code = main
        for (k, site) in callSites.enumerated() {
            code[site].imm = Int32(code.count - site - 1)
            code += [
                BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.X, dst: 0, src: 1),
                BPFInstruction(opcode: BPF.STX | BPF.MEM | BPF.DW, dst: 10, src: 0, offset: -8),
                BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: 2, imm: 0),
                BPFInstruction(opcode: BPF.ALU64 | BPF.ADD | BPF.K, dst: 0, imm: Int32(k | 1)),
                BPFInstruction(opcode: BPF.ALU64 | BPF.ADD | BPF.K, dst: 2, imm: 1),
                BPFInstruction(opcode: BPF.JMP | BPF.JLT | BPF.K, dst: 2, offset: -3, imm: 3),
                BPFInstruction(opcode: BPF.LDX | BPF.MEM | BPF.DW, dst: 3, src: 10, offset: -8),
                BPFInstruction(opcode: BPF.ALU64 | BPF.XOR | BPF.X, dst: 0, src: 3),
            ]
            for j in 0..<(body - 9) { code.append(BPFInstruction(opcode: BPF.ALU64 | (j % 2 == 0 ? BPF.MUL : BPF.ADD) | BPF.K, dst: 0, imm: Int32(j | 1))) }
            code.append(BPFInstruction(opcode: BPF.JMP | BPF.EXIT))
        }
        return code
    }
}
