// 100,000 generated programs (valid by construction, every opcode class) give the same r0 and the
// same memory on the JIT and the interpreter.

import ExecMem
@testable import ExecMemBPF
import Dispatch
import Synchronization
import Testing

@Suite struct DifferentialTests {
    @Test func jitAgreesWithTheInterpreterOn100000Programs() throws {
        let mem = try testAllocator()
        let workers = 4, perWorker = 25_000
        let mismatches = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let tester = DifferentialTester(vm: BPFVM(allocator: mem))
            let found = tester.run(count: perWorker, seed: UInt64(w) * 1_000_003 + 17)
            mismatches.withLock { $0 += found }
        }
        #expect(mismatches.withLock { $0 }.isEmpty, "\(mismatches.withLock { $0.prefix(3).joined(separator: "\n\n") })")
        #expect(mem.statistics()[.bpf].allocations == 0, "every program's JIT code was freed")
        #expect(mem.checkInvariants() == [])
    }

    @Test func generatedProgramsCoverEveryOpcodeClass() {
        var classes = Set<UInt8>(), atomics = Set<Int32>(), calls = Set<UInt8>()
        var sawCallX = false, sawMemsx = false, sawJa32 = false
        for seed in 0..<200 {
            var g = BPFProgramGenerator(seed: UInt64(seed))
            for i in g.generate() {
                classes.insert(i.instructionClass)
                if i.instructionClass == BPF.STX && i.opcode & 0xE0 == BPF.ATOMIC { atomics.insert(i.imm) }
                if i.opcode == BPF.JMP | BPF.CALL { calls.insert(i.src) }
                if i.opcode == BPF.CALLX { sawCallX = true }
                if i.instructionClass == BPF.LDX && i.opcode & 0xE0 == BPF.MEMSX { sawMemsx = true }
                if i.opcode == BPF.JMP32 | BPF.JA { sawJa32 = true }
            }
        }
        #expect(classes == Set(0...7))
        #expect(atomics.count == 10)
        #expect(calls == [BPF.callHelper, BPF.callLocal])
        #expect(sawCallX && sawMemsx && sawJa32)
    }
}
