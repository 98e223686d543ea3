// Hostile and arbitrary programs (BPFHostileGenerator) give the same outcome on the JIT and the
// interpreter: the same r0 or the same typed error, the same context and the same maps afterwards,
// and no write outside the context memory. Programs that try to escape (re-entering main, spinning
// forever, reading r1-r5 after a call or the stack before it is written, moving the context pointer
// onto the stack, recursing past the frame limit, writing above the frame) are rejected by the
// verifier or stopped with the same runtime error on both engines, within the instruction budget.

import ExecMem
@testable import ExecMemBPF
import Dispatch
import Synchronization
import Testing

@Suite struct HostileDifferentialTests {
    /// Instructions each run may execute here: enough for every bounded loop the generator writes,
    /// small enough that infinite ones end quickly.
    static let budget: UInt64 = 100_000

    @Test func enginesAgreeOn20000HostilePrograms() throws {
        let mem = try testAllocator()
        let workers = 2, perWorker = 10_000
        let total = Mutex(BPFHostileTester.Report())
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let tester = BPFHostileTester(vm: BPFVM(allocator: mem))
            let report = tester.run(count: perWorker, seed: UInt64(w) * 1_000_003 + 29, budget: Self.budget)
            total.withLock { $0.merge(report) }
        }
        let report = total.withLock { $0 }
        #expect(report.generated == workers * perWorker)
        #expect(report.rejected + report.accepted == report.generated)
        #expect(report.ranToR0 + report.runtimeErrors + report.mismatches == report.accepted)
        #expect(report.mismatches == 0, "\(report)")
        #expect(report.accepted >= report.generated / 10, "a good share of the programs gets past the verifier and runs\n\(report)")
        #expect(report.ranToR0 > 0 && report.runtimeErrors > 0, "\(report)")
        #expect(mem.statistics()[.bpf].allocations == 0, "every program's JIT code was freed")
        #expect(mem.checkInvariants() == [])
    }

    @Test func generatorCoversEveryShape() {
        var counts: [String: Int] = [:]
        for seed in 0..<400 {
            var g = BPFHostileGenerator(seed: UInt64(seed))
            let p = g.generate()
            for (shape, name) in BPFHostileGenerator.Shape.named where p.shapes.contains(shape) { counts[name, default: 0] += 1 }
        }
        for (_, name) in BPFHostileGenerator.Shape.named { #expect(counts[name, default: 0] > 0, "no program has shape \(name)") }
    }

    @Test func generatorIsDeterministicAndTunable() {
        var a = BPFHostileGenerator(seed: 77), b = BPFHostileGenerator(seed: 77)
        let (p, q) = (a.generate(), b.generate())
        #expect(p.code == q.code && p.shapes == q.shapes && p.context == q.context)
        for seed in 0..<200 {
            var calm = BPFHostileGenerator(seed: UInt64(seed), hostileFraction: 0)
            #expect(calm.generate().shapes.isDisjoint(with: BPFHostileGenerator.Shape.hostile))
        }
    }

    /// Each escape must be rejected by the verifier or end, on both engines, with the same runtime
    /// error; the few the safety model allows (`result`) must give that r0 on both.
    @Test(.timeLimit(.minutes(1)), arguments: HostileDifferentialTests.escapes)
    func escapeIsRejectedOrStoppedAlike(_ escape: (name: String, source: String, result: UInt64?)) throws {
        let tester = BPFHostileTester(vm: BPFVM(allocator: try testAllocator()))
        let code = try BPFAssembler.assemble(escape.source)
        let outcome = tester.compare(BPFHostileGenerator.Program(code: code), budget: Self.budget)
        switch (outcome, escape.result) {
        case (.rejected(.verifier), nil), (.agreed(.failure(.runtime)), nil): break
        case let (.agreed(.success(r0)), expected?) where r0 == expected: break
        default: Issue.record("\(escape.name): \(outcome)\n\(BPFDisassembler.text(code))")
        }
    }

    static let escapes: [(name: String, source: String, result: UInt64?)] = [
        ("jump-to-entry loop", """
         entry:
         mov %r0, 1
         add %r0, 1
         ja entry
         """, nil),
        ("jump to a function's entry forever", """
         mov %r1, 0
         call local f
         exit
         f:
         add %r1, 1
         mov %r0, %r1
         ja f
         """, nil),
        ("ja -1", """
         mov %r0, 0
         ja -1
         """, nil),
        ("jeq r1, r1, -1", """
         jeq %r1, %r1, -1
         exit
         """, nil),
        ("r1-r5 read after call 7", """
         mov %r1, 1
         mov %r2, 2
         mov %r3, 3
         mov %r4, 4
         mov %r5, 5
         call 7
         mov %r0, %r1
         add %r0, %r2
         add %r0, %r3
         add %r0, %r4
         add %r0, %r5
         exit
         """, nil),
        // Allowed: unwritten stack reads as zero (the stack is cleared for such a program).
        ("uninitialized stack read first thing", """
         ldxdw %r0, [%r10-8]
         exit
         """, 0),
        ("context pointer moved onto the stack", """
         mov %r3, %r10
         sub %r3, %r1
         mov %r4, %r1
         add %r4, %r3
         stdw [%r4-8], 7
         ldxdw %r0, [%r4-8]
         exit
         """, nil),
        ("recursion 9 deep", """
         mov %r1, 0
         call local f
         exit
         f:
         mov %r0, %r1
         jge %r1, 8, done
         add %r1, 1
         call local f
         done:
         exit
         """, nil),
        ("write above the frame", """
         mov %r0, 0
         stdw [%r10+8], 0x41414141
         stdw [%r10+16], 0x41414141
         exit
         """, nil),
        // Allowed: a callee may write its callers' frames (they are the program's live stack).
        ("callee writes its caller's frame", """
         mov %r1, 0
         call local f
         exit
         f:
         mov %r0, 0
         stdw [%r10+8], 0x41414141
         exit
         """, 0),
    ]
}
