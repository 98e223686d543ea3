// Several threads allocating, writing, running and freeing at once. Afterwards the structures are
// consistent, no two live allocations overlap, and the statistics add up to what the threads hold.

import Dispatch
@testable import ExecMem
import ExecMemSystem
import Synchronization
import Testing

@Suite struct ConcurrencyTests {
    @Test func mixedOperationsFromSeveralThreads() throws {
        let mem = try ExecMemAllocator(smallConfiguration(range: 256 << 20, fallback: 64 << 20))
        let threads = 4
        let operationsPerThread = 25_000  // 100,000 in all
        let kinds: [ExecMemKind] = [.bpf, .probes, .trace, .moduleText, .moduleData, .moduleRodata]
        let results = Mutex<[[Allocation]]>([])
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = SplitMix64(state: UInt64(t) &* 7919 &+ 1)
            var live: [(Allocation, Int32)] = []
            var ran = 0
            for op in 0..<operationsPerThread {
                do {
                    let roll = Int(rng.next() % 100)
                    if roll < 45 || live.isEmpty {
                        let kind = kinds[Int(rng.next() % UInt64(kinds.count))]
                        let size = [16, 100, 500, 2000, 16_000][Int(rng.next() % 5)]
                        let a = try mem.allocate(kind, size: size)
                        let k = Int32(truncatingIfNeeded: rng.next() % 100_000)
                        if a.type == .text {
                            try mem.write(addFunction(k, size: min(size, 300)), to: a)
                        } else {
                            try mem.write(withUnsafeBytes(of: k) { Array($0) }, to: a)
                        }
                        live.append((a, k))
                    } else if roll < 80 {
                        let (a, k) = live[Int(rng.next() % UInt64(live.count))]
                        if a.type == .text {
                            if call(a.address, Int32(op & 0xFFFF)) != Int32(op & 0xFFFF) &+ k { throw TestFailure("wrong result from \(a)") }
                            ran += 1
                        } else if UnsafeRawPointer(bitPattern: a.address)!.loadUnaligned(as: Int32.self) != k {
                            throw TestFailure("data of \(a) changed")
                        }
                    } else {
                        let i = Int(rng.next() % UInt64(live.count))
                        try mem.free(live[i].0)
                        live.swapAt(i, live.count - 1)
                        live.removeLast()
                    }
                } catch {
                    failures.withLock { $0.append("thread \(t) op \(op): \(error)") }
                    return
                }
            }
            if ran == 0 { failures.withLock { $0.append("thread \(t) ran no code") } }
            results.withLock { $0.append(live.map(\.0)) }
        }
        #expect(failures.withLock { $0 } == [])
        #expect(mem.checkInvariants(deep: true) == [])
        let live = results.withLock { $0 }.flatMap { $0 }.sorted { $0.address < $1.address }
        for (a, b) in zip(live, live.dropFirst()) {
            #expect(a.address + UInt(a.capacity) <= b.address, "\(a) overlaps \(b)")
        }
        let stats = mem.statistics()
        for kind in kinds {
            let mine = live.filter { $0.kind == kind }
            #expect(stats[kind].allocations == mine.count)
            #expect(stats[kind].requestedBytes == mine.reduce(0) { $0 + $1.size })
            #expect(stats[kind].usedBytes == mine.reduce(0) { $0 + $1.capacity })
        }
        #expect(stats.total.usedBytes == live.reduce(0) { $0 + $1.capacity })
        // Fresh blocks still being prepared in the background are neither used nor free yet.
        #expect(stats.total.usedBytes + stats.total.freeBytes + stats.total.preparingBytes == stats.total.reservedBytes)
        try expectNoWritableExecutable()
    }

    @Test func codeWrittenByOneThreadRunsOnAnotherAfterMakeVisible() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.bpf, size: 16)
        try mem.write(addFunction(100), to: a)
        let mode = mem.makeVisible()
        #expect(mode != .unavailable || kernel.membarrier == .unavailable)
        let result = Mutex<Int32>(0)
        let address = a.address
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            if i == 1 { result.withLock { $0 = call(address, 1) } }
        }
        #expect(result.withLock { $0 } == 101)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
