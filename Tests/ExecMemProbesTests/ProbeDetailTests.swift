// Instruction probes in detail: the registers a handler sees and changes, a probe under threads
// that call the probed function while it is placed and removed, and bad input.

import ExecMem
import ExecMemLoader
import ExecMemProbes
import ExecMemTestSupport
import Foundation
import Synchronization
import Testing

@Suite(.enabled(if: !compilers.isEmpty, "needs a C compiler")) struct ProbeDetailTests {
    typealias Unary = @convention(c) (Int) -> Int

    func function(_ m: LoadedModule, _ name: String) -> Range<UInt> {
        let f = m.functions.first { $0.name == name }!
        return f.address..<(f.address + UInt(f.size))
    }

    @Test func handlersSeeAndChangeRegisters() throws {
        let (module, allocator, dir) = try loadCorpus(compilers[0], "-O2")
        defer { module.unload(); try? FileManager.default.removeItem(atPath: dir) }
        let scale = function(module, "corpus_scale")
        let f = unsafeBitCast(scale.lowerBound, to: Unary.self)
        let probes = InstructionProbes(allocator: allocator)
        let seen = Mutex<(rdi: UInt64, rsp: UInt64, rip: UInt64)>((0, 0, 0))
        let p = try probes.probe(scale.lowerBound, function: scale) { _, regs in
            seen.withLock { $0 = (regs.pointee.rdi, regs.pointee.rsp, regs.pointee.rip) }
            if regs.pointee.rdi == 5 { regs.pointee.rdi = 10 }
        }
        #expect(f(4) == 31)
        let s = seen.withLock { $0 }
        #expect(s.rdi == 4 && s.rip == UInt64(scale.lowerBound))
        #expect(s.rsp % 16 == 8, "at a function's entry rsp is 8 past a 16-byte boundary (the return address)")
        #expect(f(5) == 73, "the handler changed rdi from 5 to 10")
        try probes.remove(p)
        #expect(f(5) == 38)
        try expectNoWritableExecutable()
    }

    @Test func placingAndRemovingWhileThreadsCall() throws {
        let (module, allocator, dir) = try loadCorpus(compilers[0], "-O0")
        defer { module.unload(); try? FileManager.default.removeItem(atPath: dir) }
        let fib = function(module, "corpus_fib")
        let f = unsafeBitCast(fib.lowerBound, to: Unary.self)
        let probes = InstructionProbes(allocator: allocator)
        let sites = boundaries(fib)
        let stop = Atomic<Bool>(false), wrong = Atomic<Int>(0), rounds = Atomic<Int>(0), fired = Atomic<Int>(0)
        let threads = (0..<2).map { _ in
            Thread {
                while !stop.load(ordering: .relaxed) {
                    if f(12) != 144 { wrong.add(1, ordering: .relaxed) }
                    rounds.add(1, ordering: .relaxed)
                }
            }
        }
        for t in threads { t.start() }
        var placed = 0, traps = 0
        for i in 0..<1000 {
            let a = sites[i % sites.count]
            guard let p = try? probes.probe(a, function: fib, handler: { _, _ in fired.add(1, ordering: .relaxed) }) else { continue }
            placed += 1
            if p.isTrap { traps += 1 }
            try probes.remove(p)
        }
        stop.store(true, ordering: .relaxed)
        while threads.contains(where: { !$0.isFinished }) { usleep(1000) }
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(placed > 500 && rounds.load(ordering: .relaxed) > 0 && fired.load(ordering: .relaxed) > 0)
        let sweeps = TextPoker.sweeps.withLock { $0 }
        print("probes under threads: \(placed) placed and removed (\(traps) as traps), \(rounds.load(ordering: .relaxed)) calls of fib(12), \(fired.load(ordering: .relaxed)) hits; sweeps so far \(sweeps.sweeps), threads moved \(sweeps.moved)")
        try expectNoWritableExecutable()
    }

    @Test func badInputIsATypedError() throws {
        let (module, allocator, dir) = try loadCorpus(compilers[0], "-O0")
        defer { module.unload(); try? FileManager.default.removeItem(atPath: dir) }
        let sum = function(module, "corpus_sum")
        let probes = InstructionProbes(allocator: allocator)
        let starts = boundaries(sum)
        let wide = zip(starts, starts.dropFirst()).first { $1 - $0 > 1 }!.0
        #expect { try probes.probe(wide + 1, function: sum) { _, _ in } } throws: { e in
            guard case let .notAnInstruction(a, reason)? = e as? ProbeError else { return false }
            return a == wide + 1 && reason == "it is inside the instruction at 0x\(String(wide, radix: 16))"
        }
        #expect { try probes.probe(sum.upperBound + 64, function: sum) { _, _ in } } throws: { e in
            guard case .notAnInstruction? = e as? ProbeError else { return false }
            return "\(e)".contains("outside the function")
        }
        let data = UnsafeMutablePointer<UInt8>.allocate(capacity: 64)
        defer { data.deallocate() }
        let d = UInt(bitPattern: data)
        #expect { try probes.probe(d, function: d..<(d + 64)) { _, _ in } } throws: { e in
            guard case .notAnInstruction? = e as? ProbeError else { return false }
            return "\(e)".contains("not executable")
        }
        let p = try probes.probe(sum.lowerBound, function: sum) { _, _ in }
        #expect(throws: ProbeError.siteInUse(address: sum.lowerBound, by: "probe \(p.id)")) { try probes.probe(sum.lowerBound, function: sum) { _, _ in } }
        // A probe that would overlap the first one's displaced bytes.
        let overlapping = starts.first { $0 > sum.lowerBound && $0 < sum.lowerBound + UInt(p.displacedBytes) }
        if let o = overlapping {
            #expect { try probes.probe(o, function: sum) { _, _ in } } throws: { e in
                guard case let .siteInUse(_, by)? = e as? ProbeError else { return false }
                return by.hasPrefix("probe \(p.id)")
            }
        }
        try probes.remove(p)
        #expect(throws: ProbeError.unknownHook(id: p.id)) { try probes.remove(p) }
        // A refusal names the instruction and why: a jump probe right before a ret cannot displace
        // 5 bytes (the automatic mode makes it a trap probe instead).
        let ret = starts.last { bytes(at: $0, 1) == [0xC3] }!
        #expect { try probes.probe(ret, function: sum, mode: .jump) { _, _ in } } throws: { e in
            guard case let .refused(_, instruction, reason)? = e as? ProbeError else { return false }
            return instruction == ret && reason.contains("before 5 bytes")
        }
        let atRet = try probes.probe(ret, function: sum) { _, _ in }
        #expect(atRet.isTrap && bytes(at: ret, 1) == [0xCC])
        try probes.remove(atRet)
        #expect(bytes(at: ret, 1) == [0xC3])
        try expectNoWritableExecutable()
    }
}
