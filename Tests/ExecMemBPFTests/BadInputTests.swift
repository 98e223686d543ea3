// Bad input, each a typed error naming the instruction (or section), nothing crashing, and the
// allocator's statistics back where they were.

import ExecMem
@testable import ExecMemBPF
import ExecMemELF
import Testing

@Suite struct BPFBadInputTests {
    func expectVerifier(_ vm: BPFVM, _ program: [BPFInstruction], index: Int, _ reason: String,
                        sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(sourceLocation: sourceLocation) { try vm.load(program) } throws: { e in
            guard case let .verifier(i, why)? = e as? BPFError else { return false }
            return i == index && why.contains(reason)
        }
    }

    @Test func malformedBytecode() throws {
        #expect(throws: BPFError.malformed("program is 12 bytes, not a multiple of 8")) { try decodeProgram([UInt8](repeating: 0, count: 12)) }
        let vm = BPFVM(allocator: try testAllocator())
        let exit = BPFInstruction(opcode: BPF.JMP | BPF.EXIT)
        expectVerifier(vm, [], index: 0, "empty")
        expectVerifier(vm, [BPFInstruction(opcode: 0xFF), exit], index: 0, "unknown")
        expectVerifier(vm, [BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: 11), exit], index: 0, "register r11")
        expectVerifier(vm, [BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K, dst: 10, imm: 1), exit], index: 0, "r10 is the read-only")
        expectVerifier(vm, [BPFInstruction(opcode: BPF.ALU64 | BPF.ADD | BPF.K, src: 3, imm: 1), exit], index: 0, "source register must be 0")
        expectVerifier(vm, [BPFInstruction(opcode: BPF.LDX | BPF.MEM | BPF.W, dst: 10, src: 1), exit], index: 0, "r10")
        expectVerifier(vm, [BPFInstruction(opcode: BPF.LD | BPF.ABS | BPF.W), exit], index: 0, "only lddw")
        expectVerifier(vm, [BPFInstruction(opcode: BPF.ALU64 | BPF.MOV | BPF.K)], index: 0, "fall off the end")
        expectVerifier(vm, [BPFInstruction(opcode: BPF.STX | BPF.ATOMIC | BPF.DW, dst: 10, src: 1, offset: -8, imm: 0x77), exit], index: 0, "atomic")
    }

    @Test func truncatedLddwAndJumpsIntoIt() throws {
        let vm = BPFVM(allocator: try testAllocator())
        expectVerifier(vm, [BPFInstruction(opcode: BPF.JMP | BPF.EXIT), BPFInstruction(opcode: BPF.LDDW, imm: 1)], index: 1, "truncated")
        let program = try BPFAssembler.assemble("ja +1\nlddw %r0, 0x100000000\nexit")
        expectVerifier(vm, program, index: 0, "middle of an lddw")
    }

    @Test func badJumpsAndCalls() throws {
        let vm = BPFVM(allocator: try testAllocator())
        expectVerifier(vm, try BPFAssembler.assemble("ja +5\nexit"), index: 0, "outside its function")
        expectVerifier(vm, try BPFAssembler.assemble("jeq %r0, 0, -3\nexit"), index: 0, "outside its function")
        expectVerifier(vm, try BPFAssembler.assemble("call 999\nexit"), index: 0, "unknown helper 999")
        expectVerifier(vm, try BPFAssembler.assemble("call local +7\nexit"), index: 0, "local call target")
    }

    @Test func theAssemblerRefusesWhatDoesNotFit() throws {
        let cases: [(String, String)] = [
            ("ja +65537\nexit", "does not fit 16 bits"), ("jeq %r0, 0, -40000\nexit", "does not fit 16 bits"),
            ("ldxb %r0, [%r1+65536]\nexit", "does not fit 16 bits"), ("stb [%r1-32769], 1\nexit", "does not fit 16 bits"),
            ("mov %r0, 0x100000000\nexit", "does not fit 32 bits"), ("ja32 +4294967296\nexit", "32 bits at most"),
        ]
        for (source, reason) in cases {
            #expect { try BPFAssembler.assemble(source) } throws: { e in
                guard case let .assembler(line, _, why)? = e as? BPFError else { return false }
                return line == 1 && why.contains(reason)
            }
        }
        // What fits is kept exactly: 0xffffffff is -1 (as the suite writes it), ja32 takes 32 bits.
        #expect(try BPFAssembler.assemble("mov %r0, 0xffffffff\nexit")[0].imm == -1)
        #expect(try BPFAssembler.assemble("ja32 +65537\nexit")[0].imm == 65537)
    }

    @Test func assemblerErrorsNameTheLine() {
        #expect(throws: BPFError.assembler(line: 2, text: "frobnicate %r0", reason: "unknown mnemonic 'frobnicate'")) {
            try BPFAssembler.assemble("mov %r0, 1\nfrobnicate %r0\nexit")
        }
        #expect { try BPFAssembler.assemble("mov %r0, 1\nja nowhere\nexit") } throws: { e in
            guard case let .assembler(line, _, reason)? = e as? BPFError else { return false }
            return line == 2 && reason.contains("nowhere")
        }
        #expect { try BPFAssembler.assemble("ldxw %r0, %r1\nexit") } throws: { e in
            guard case .assembler(1, _, _)? = e as? BPFError else { return false }
            return true
        }
    }

    @Test(arguments: BPFEngine.allCases)
    func outOfBoundsAtRunTimeNamesTheInstruction(engine: BPFEngine) throws {
        let mem = try testAllocator()
        let before = mem.statistics(readBack: false)[.bpf]
        try faultingPrograms(engine: engine, allocator: mem)
        // The programs are gone: their code went back, and nothing leaked.
        #expect(mem.statistics(readBack: false)[.bpf].allocations == before.allocations)
        #expect(mem.checkInvariants(deep: true) == [])
    }

    func faultingPrograms(engine: BPFEngine, allocator mem: ExecMemAllocator) throws {
        let vm = BPFVM(allocator: mem)
        let cases: [(String, Int, String)] = [
            ("mov %r0, 0\nldxdw %r0, [%r1+60]\nexit", 1, "out-of-bounds read of 8 bytes at context offset 60 (the context is 64 bytes)"),
            ("mov %r1, %r10\nlddw %r2, 0x100000000\nsub %r1, %r2\nstw [%r1], 1\nexit", 4, "out-of-bounds write of 4 bytes at stack offset r10-4294967296"),
            ("mov %r1, %r1\nadd %r1, 64\nstb [%r1], 1\nexit", 2, "out-of-bounds write of 1 bytes at context offset 64"),
            ("mov %r0, 0\nstxdw [%r10-16], %r0\nmov %r1, %r1\nadd %r1, 1\nlock add [%r1], %r0\nexit", 4, "misaligned atomic"),
            // A context pointer moved onto the stack: allowed by neither engine.
            ("mov %r3, %r10\nsub %r3, %r1\nadd %r1, %r3\nstdw [%r1-8], 7\nexit", 3, "out-of-bounds write of 8 bytes at context offset"),
        ]
        // Recursion deeper than 8 frames.
        let deep = try vm.load(assembly: "call local f\nexit\nf:\ncall local f\nexit")
        #expect { try deep.run(engine: engine) } throws: { e in
            guard case let .runtime(i, why)? = e as? BPFError else { return false }
            return i == 2 && why.contains("deeper than 8")
        }
        // Afterwards the VM still runs programs.
        #expect(try vm.load(assembly: "mov %r0, 7\nexit").run(engine: engine) == 7)
    }

    @Test func malformedELF() throws {
        let vm = BPFVM(allocator: try testAllocator())
        #expect { try vm.load(elf: [1, 2, 3], name: "x.o") } throws: { e in
            guard case .elf(.notELF("x.o"))? = e as? BPFError else { return false }
            return true
        }
        var header = [UInt8](repeating: 0, count: 64)
        header[0..<7] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1]
        header[16] = 1  // ET_REL
        header[18] = 62  // x86-64, not BPF
        #expect { try vm.load(elf: header, name: "y.o") } throws: { e in
            guard case .elf(.wrongMachine("y.o", 62, 247))? = e as? BPFError else { return false }
            return true
        }
        header[18] = 247
        header[40] = 0xF0; header[41] = 0xFF  // section headers far past the end
        header[60] = 3
        header[58] = 64
        #expect { try vm.load(elf: header, name: "z.o") } throws: { e in
            guard case .elf(.truncated)? = e as? BPFError else { return false }
            return true
        }
    }

    @Test(.enabled(if: ExecMemToolsAvailable.clang, "needs clang"))
    func elfRelocationErrorsNameTheSection() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let object = try compileBPF("""
            struct m { unsigned type, k, v, n, f; };
            __attribute__((section("maps"), used)) struct m weird = { 27, 4, 4, 1, 0 };
            static void *(*lookup)(void *, const void *) = (void *)1;
            __attribute__((section("socket"), used)) unsigned long long entry(void) { int k = 0; return (unsigned long long)lookup(&weird, &k); }
            """)
        #expect { try vm.load(elf: object, name: "weird.o") } throws: { e in
            guard case let .link(section, _, reason)? = e as? BPFError else { return false }
            return section == "maps" && reason.contains("type 27")
        }
        #expect { try vm.load(elf: object, name: "weird.o", function: "nope") } throws: { e in
            guard case let .link(_, _, reason)? = e as? BPFError else { return false }
            return reason.contains("no function named 'nope'")
        }
    }
}
