// The sandbox, class by class: each test here is a program an attacker would write (or the shape of
// one), and what must happen to it on both engines: rejected by the verifier with a reason, or run
// to the same result or the same typed error. Every one of these failed before the verifier became
// an abstract interpreter (a jump to main's entry walked the native stack, stack and r1-r5 leaked
// host values, `ja -1` never ended).

import ExecMem
@testable import ExecMemBPF
import Testing

/// Runs `program` on both engines over `memory`; returns the two outcomes (r0 or the error).
func bothEngines(_ program: BPFProgram, memory: [UInt8] = [UInt8](repeating: 0, count: 64),
                 budget: UInt64? = nil) -> [Result<UInt64, BPFError>] {
    BPFEngine.allCases.map { engine in
        var m = memory
        return m.withUnsafeMutableBytes { b in Result { () throws(BPFError) in try program.run(memory: b.count == 0 ? nil : b, engine: engine, budget: budget) } }
    }
}

func expectRejected(_ vm: BPFVM, _ source: String, maps: [BPFMap] = [], _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(sourceLocation: sourceLocation) { try vm.load(assembly: source, maps: maps) } throws: { e in
        guard case let .verifier(_, why)? = e as? BPFError else { return false }
        return why.contains(reason)
    }
}

@Suite struct ControlFlowTests {
    @Test func jumpsToMainsFirstInstructionAreOrdinaryLoops() throws {
        let vm = BPFVM(allocator: try testAllocator())
        // The escape's first half: jump to instruction 0 again and again. With a function prologue
        // there, each jump moved rsp; now the native stack never changes.
        let p = try vm.load(assembly: """
            add %r6, 1
            jlt %r6, 100000, -2
            mov %r0, %r6
            exit
            """)
        #expect(p.verified.loopHeaders[0] == 2)
        for outcome in bothEngines(p) { #expect(try outcome.get() == 100_000) }
    }

    @Test func callsToAFunctionWhoseFirstInstructionIsAJumpTarget() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let p = try vm.load(assembly: """
            mov %r6, 0
            mov %r7, 0
            loop:
            mov %r1, 10
            call local f
            add %r7, %r0
            add %r6, 1
            jlt %r6, 50, loop
            mov %r0, %r7
            exit
            f:
            add %r1, -1
            jne %r1, 0, f
            mov %r0, 3
            exit
            """)
        for outcome in bothEngines(p) { #expect(try outcome.get() == 150) }
    }

    @Test func theFullEscapePatternFailsCleanly() throws {
        let vm = BPFVM(allocator: try testAllocator())
        // Re-enter main many times, then try to make exit's `ret` pop a value of the program's
        // choosing: stores below r10-512 and above the stack top are refused or fault.
        expectRejected(vm, "stdw [%r10-520], 0x41414141\nmov %r0, 0\nexit", "below the 512-byte frame")
        let p = try vm.load(assembly: """
            add %r6, 1
            jlt %r6, 1000, -2
            mov %r1, %r10
            add %r1, 8
            lddw %r2, 0x4141414141414141
            stxdw [%r1], %r2
            mov %r0, 1
            exit
            """)
        let outcomes = bothEngines(p)
        #expect(outcomes[0] == outcomes[1])
        guard case let .failure(.runtime(index, reason)) = outcomes[1] else { Issue.record("expected a fault, got \(outcomes[1])"); return }
        #expect(index == 6 && reason.contains("out-of-bounds write of 8 bytes at stack offset r10+8"))
    }

    @Test func recursionDeeperThanEightFramesStopsBothEngines() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let p = try vm.load(assembly: "mov %r1, 0\ncall local f\nexit\nf:\nadd %r1, 1\ncall local f\nexit")
        let outcomes = bothEngines(p)
        #expect(outcomes[0] == outcomes[1])
        #expect(outcomes[0] == .failure(.runtime(index: 4, reason: "local calls nested deeper than 8 frames")))
    }
}

@Suite struct StackTests {
    @Test(arguments: BPFEngine.allCases)
    func unwrittenStackReadsZeroNeverAnotherRunsBytes(engine: BPFEngine) throws {
        let vm = BPFVM(allocator: try testAllocator())
        let writer = try vm.load(assembly: "lddw %r1, 0x5ec12e7c0ffee\nstxdw [%r10-8], %r1\nstxdw [%r10-512], %r1\nmov %r0, 0\nexit")
        let reader = try vm.load(assembly: "ldxdw %r0, [%r10-8]\nldxdw %r1, [%r10-512]\nor %r0, %r1\nexit")
        #expect(writer.verified.stackZeroBytes == 0, "every read follows a write")
        #expect(reader.verified.stackZeroBytes == 512, "reads of unwritten stack: the frame is cleared per run")
        _ = try writer.run(engine: engine)
        #expect(try reader.run(engine: engine) == 0)
    }

    @Test func aReadWrittenOnOnlyOnePathIsCleared() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let p = try vm.load(assembly: """
            jeq %r2, 0, +1
            stdw [%r10-8], 7
            ldxdw %r0, [%r10-8]
            exit
            """)
        #expect(p.verified.stackZeroBytes > 0)
        #expect(bothEngines(p, memory: [1]).map { try? $0.get() } == [7, 7])
        #expect(bothEngines(p, memory: []).map { try? $0.get() } == [0, 0])
    }

    @Test func spilledPointersSurviveOnlyWhileNothingCanOverwriteThem() throws {
        let vm = BPFVM(allocator: try testAllocator())
        // Spill r1 (the context), reload, use: accepted, and the access is proven safe only as
        // far as the context's length is known.
        let ok = try vm.load(assembly: "stxdw [%r10-8], %r1\nldxdw %r3, [%r10-8]\nldxb %r0, [%r3+0]\nexit")
        #expect(bothEngines(ok, memory: [42]).map { try? $0.get() } == [42, 42])
        // A callee given a pointer to the spill can overwrite it: the caller must not trust it after.
        expectRejected(vm, """
            stxdw [%r10-8], %r1
            mov %r1, %r10
            add %r1, -8
            call local f
            ldxdw %r3, [%r10-8]
            ldxb %r0, [%r3+0]
            exit
            f:
            lddw %r2, 0x4141414141414141
            stxdw [%r1+0], %r2
            exit
            """, "r3 is a number, not a pointer")
        // Nor when the callee reaches its caller's frame from its own r10.
        expectRejected(vm, """
            stxdw [%r10-8], %r1
            call local f
            ldxdw %r3, [%r10-8]
            ldxb %r0, [%r3+0]
            exit
            f:
            mov %r1, %r10
            add %r1, 504
            stdw [%r1+0], 0x41414141
            exit
            """, "r3 is a number, not a pointer")
    }
}

@Suite struct RegisterTests {
    @Test(arguments: 1...5)
    func r1ToR5AreUnreadableAfterAHelperCall(register: Int) throws {
        let vm = BPFVM(allocator: try testAllocator())
        vm.register(7, BPFHelper(name: "mix", c: { a, b, c, d, e in a ^ b ^ c ^ d ^ e }))
        expectRejected(vm, "call 7\nmov %r0, %r\(register)\nexit", "r\(register) is read before it is written")
        expectRejected(vm, "mov %r2, 7\ncall %r2\nmov %r0, %r\(register)\nexit", "r\(register) is read before it is written")
        expectRejected(vm, "call local f\nmov %r0, %r\(register)\nexit\nf:\nmov %r0, 1\nexit", "r\(register) is read before it is written")
        // Written again after the call: fine.
        let p = try vm.load(assembly: "call 7\nmov %r\(register), 5\nmov %r0, %r\(register)\nexit")
        for outcome in bothEngines(p) { #expect(try outcome.get() == 5) }
    }

    @Test func aCalleeCannotReadWhatItsCallerNeverWrote() throws {
        let vm = BPFVM(allocator: try testAllocator())
        vm.register(7, BPFHelper(name: "mix", c: { a, b, c, d, e in a ^ b ^ c ^ d ^ e }))
        // After a helper call r3 holds a host value in JIT code; passing it on is refused.
        expectRejected(vm, "call 7\nmov %r1, 1\ncall local f\nexit\nf:\nmov %r0, %r3\nexit", "r3 is read before it is written")
        // A helper that reads fewer arguments does not need the rest written.
        vm.register(8, BPFHelper(name: "one", arguments: 1, c: { a, _, _, _, _ in a + 1 }))
        let p = try vm.load(assembly: "call 7\nmov %r1, 41\ncall 8\nexit")
        for outcome in bothEngines(p) { #expect(try outcome.get() == 42) }
        expectRejected(vm, "call 7\ncall 8\nexit", "r1 is read before it is written")
    }

    @Test func callxNeedsAKnownHelperNumber() throws {
        let vm = BPFVM(allocator: try testAllocator())
        expectRejected(vm, "mov %r2, 12345\ncall %r2\nexit", "unknown helper 12345")
        expectRejected(vm, "ldxdw %r2, [%r10-8]\ncall %r2\nexit", "callx needs a register whose value the verifier knows")
    }
}

@Suite struct RegionTests {
    @Test func memoryIsReachedOnlyThroughPointers() throws {
        let vm = BPFVM(allocator: try testAllocator())
        expectRejected(vm, "lddw %r1, 0x1000\nldxb %r0, [%r1+0]\nexit", "r1 is the number 4096, not a pointer")
        expectRejected(vm, "mov %r1, %r10\nand %r1, -8\nldxb %r0, [%r1+0]\nexit", "not a pointer")
        expectRejected(vm, "mov32 %r1, %r1\nldxb %r0, [%r1+0]\nexit", "not a pointer")
        expectRejected(vm, "ldxb %r0, [%r1-1]\nexit", "before the context")
    }

    @Test func pointersMovedIntoAnotherRegionFaultOnBothEnginesAlike() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let map = try BPFMap(name: "a", type: .array, keySize: 4, valueSize: 16, maxEntries: 2)
        let cases: [(String, String)] = [
            // The context's distance to the stack, added to the context pointer.
            ("mov %r3, %r10\nsub %r3, %r1\nadd %r1, %r3\nldxdw %r0, [%r1-8]\nexit", "context offset"),
            // A map value pointer moved onto the context.
            ("lddw %r2, map[0]+0\nmov %r3, %r1\nsub %r3, %r2\nadd %r2, %r3\nldxb %r0, [%r2+0]\nexit", "of the values of map 'a'"),
            // A stack pointer moved far above the stack.
            ("mov %r2, %r10\nadd %r2, %r2\nmov %r3, %r10\nadd %r3, 4096\nldxb %r0, [%r3+0]\nexit", "stack offset r10+4096"),
        ]
        for (source, reason) in cases {
            let p = try vm.load(assembly: source, maps: [map])
            let outcomes = bothEngines(p)
            // The same instruction, region and kind of fault; the offset of a pointer moved from one
            // region to another is the distance between them, which differs when the engines' stacks
            // or contexts lie at different addresses (as under AddressSanitizer, which never reuses
            // an address at once).
            let alike = outcomes.map { "\($0)".replacing(/offset \d+/, with: "offset N") }
            #expect(alike[0] == alike[1], "\(source)")
            guard case let .failure(.runtime(_, why)) = outcomes[0] else { Issue.record("\(source): \(outcomes[0])"); continue }
            #expect(why.contains(reason), "\(why)")
        }
    }

    @Test func mapHelpersCheckTheirArgumentsStatically() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let map = try BPFMap(name: "h", type: .hash, keySize: 8, valueSize: 8, maxEntries: 4)
        let ro = try BPFMap(name: ".rodata", type: .array, keySize: 4, valueSize: 8, maxEntries: 1, readOnly: true)
        expectRejected(vm, "mov %r1, 77\nmov %r2, %r10\nadd %r2, -8\ncall 1\nexit", maps: [map], "r1 must be a map")
        expectRejected(vm, "lddw %r1, map[0]\nmov %r2, %r10\nadd %r2, -4\ncall 1\nexit", maps: [map], "8-byte key at r2 is not proven within the stack")
        expectRejected(vm, "lddw %r1, map[0]\nmov %r2, %r1\ncall 1\nexit", maps: [map], "key r2 must point to memory")
        expectRejected(vm, "stdw [%r10-8], 1\nlddw %r1, map[0]\nmov %r2, %r10\nadd %r2, -8\ncall 1\nldxdw %r0, [%r0+0]\nexit", maps: [map], "may be null")
        expectRejected(vm, "lddw %r1, map[0]+0\nstdw [%r1+0], 1\nmov %r0, 0\nexit", maps: [ro], "read-only")
        expectRejected(vm, "lddw %r1, map[3]\nmov %r0, 0\nexit", maps: [map], "map[3]: the program has 1 map")
        // Tested against null first: accepted, and runs the same on both engines.
        let p = try vm.load(assembly: """
            stdw [%r10-8], 5
            stdw [%r10-16], 99
            lddw %r1, map[0]
            mov %r2, %r10
            add %r2, -8
            mov %r3, %r10
            add %r3, -16
            mov %r4, 0
            call 2
            lddw %r1, map[0]
            mov %r2, %r10
            add %r2, -8
            call 1
            mov %r6, %r0
            jeq %r6, 0, +2
            ldxdw %r0, [%r6+0]
            exit
            mov %r0, 1
            exit
            """, maps: [map])
        #expect(p.verified.checkedAccesses == 0, "every access proven")
        for outcome in bothEngines(p) { #expect(try outcome.get() == 99) }
    }
}

@Suite struct BudgetTests {
    @Test func loopsThatCanNeverExitAreRejected() throws {
        let vm = BPFVM(allocator: try testAllocator())
        expectRejected(vm, "ja -1\nexit", "infinite loop")
        expectRejected(vm, "mov %r0, 0\nja32 -1\nexit", "infinite loop")
        expectRejected(vm, "mov %r0, 0\njeq %r1, %r1, -1\nexit", "infinite loop")
        expectRejected(vm, "mov %r0, 1\nl:\nadd %r1, 1\njne %r0, 0, l\nexit", "infinite loop")
    }

    @Test func longLoopsEndWithTheSameTypedErrorOnBothEngines() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let p = try vm.load(assembly: "mov %r0, 0\nl:\nadd %r0, 1\njne %r0, 0, l\nexit")
        let outcomes = bothEngines(p)
        #expect(outcomes[0] == outcomes[1])
        #expect(outcomes[0] == .failure(.runtime(index: 1, reason: "instruction budget of 1000000 exhausted")))
        // Per run, and per program.
        #expect(bothEngines(p, budget: 100) == [.failure(.runtime(index: 1, reason: "instruction budget of 100 exhausted"))] + [.failure(.runtime(index: 1, reason: "instruction budget of 100 exhausted"))])
        // Entry 4 units, then 999 back edges of 2 (the loop is 2 instructions): 2,002 in all.
        let bounded = try vm.load(assembly: "mov %r0, 0\nl:\nadd %r0, 1\njne %r0, 1000, l\nexit", budget: 2_002)
        #expect(bothEngines(bounded).map { try? $0.get() } == [1000, 1000])
        #expect(bothEngines(bounded, budget: 2_001).allSatisfy { if case .failure(.runtime(1, _)) = $0 { true } else { false } })
        // Calls are charged too: recursion that stays within 8 frames but fans out.
        let fan = try vm.load(assembly: "mov %r1, 0\ncall local f\nexit\nf:\nadd %r1, 1\njgt %r1, 6, +4\nmov %r6, %r1\ncall local f\nmov %r1, %r6\ncall local f\nmov %r0, 0\nexit",
                              budget: 1_000)
        let outcomes2 = bothEngines(fan)
        #expect(outcomes2[0] == outcomes2[1])
        guard case .failure(.runtime(_, let why)) = outcomes2[0] else { Issue.record("\(outcomes2[0])"); return }
        #expect(why.contains("budget of 1000"))
    }

    @Test func anEmptyBudgetStopsBeforeTheFirstInstruction() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let p = try vm.load(assembly: "mov %r0, 1\nexit")
        #expect(bothEngines(p, budget: 1) == [.failure(.runtime(index: 0, reason: "instruction budget of 1 exhausted")),
                                             .failure(.runtime(index: 0, reason: "instruction budget of 1 exhausted"))])
        #expect(bothEngines(p, budget: 2).map { try? $0.get() } == [1, 1])
    }
}
