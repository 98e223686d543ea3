// Fresh blocks are prepared off the allocation path (ExecMemAllocator+Finish.swift): a commit fills
// only what its allocation needs, and the rest of the int3 fill and the collapse to a 2 MiB page run
// on the allocator's background queue. What the kernel did is read back from /proc/self/smaps.

import Dispatch
@testable import ExecMem
import ExecMemSystem
import Glibc
import Synchronization
import Testing

/// Bytes of the mapping that holds `address` that the kernel maps with 2 MiB entries (smaps).
private func hugeMappedBytes(at address: UInt) throws -> Int {
    try #require(try Smaps.read().first { $0.mapping.start <= address && address < $0.mapping.end }).hugeMappedBytes
}

private let block = ExecMemGeometry.blockSize

@Suite struct FinishTests {
    @Test(.enabled(if: kernel.collapseOnMemfd, "MADV_COLLAPSE does not give memfd views 2 MiB mappings on this kernel (execmem doctor)"),
          arguments: [ExecMemType.text, .rodata, .data], WriteViewMode.allCases)
    func commitPreparesWhatIsAskedAndFinishDoesTheRest(type: ExecMemType, writeView: WriteViewMode) throws {
        // The backend alone, no queue: what commit leaves and what finishCommit does, step by step.
        let backend = MemfdBackend(writeMode: writeView)
        let size = 2 * block
        let base = try backend.reserve(size: size, at: nil)
        defer { backend.release(base: base, size: size) }
        let run = try backend.commit(rangeBase: base, rangeSize: size, offset: 0, length: block, type: type, prepare: 100)
        #expect(run.finishPending && !run.hugeMapped)
        // Text needs its int3 and gets the first 64 KiB of it; the other types' fill is the zero a
        // fresh page holds, so all of their block is ready at once.
        #expect(run.preparedLength == (type == .text ? 1 << ExecMemGeometry.preparedShift : block))
        #expect(bytes(at: run.address, count: run.preparedLength).allSatisfy { $0 == type.fillByte })
        #expect(try hugeMappedBytes(at: run.address) == 0, "no collapse on the commit path")
        #expect(try protection(at: run.address) == type.runProtection.bits.description)
        let before = try ProcMaps.read().filter { $0.start < run.address + UInt(block) && $0.end > run.address }
        #expect(before.count == 1 && before[0].length == block, "one run view, its protection set once for all of it: \(before)")
        let done = backend.finishCommit(run)
        defer { backend.decommit(done) }
        #expect(done.hugeMapped && !done.finishPending && done.preparedLength == block, "\(done.note ?? "")")
        #expect(try hugeMappedBytes(at: run.address) == block)
        if type != .data && writeView == .persistent {
            #expect(try hugeMappedBytes(at: run.writeView) == block, "the write view is mapped by 2 MiB too")
        }
        #expect(bytes(at: run.address, count: block).allSatisfy { $0 == type.fillByte })
        let after = try ProcMaps.read().filter { $0.start < run.address + UInt(block) && $0.end > run.address }
        #expect(after == before, "finishing maps nothing new where code runs (perf would take it for new code)")
        try expectNoWritableExecutable()
    }

    @Test(.enabled(if: kernel.collapseOnMemfd, "MADV_COLLAPSE does not give memfd views 2 MiB mappings on this kernel (execmem doctor)"))
    func theQueueCollapsesTheFirstBlockOnItsOwn() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.bpf, size: 64)
        try mem.write(addFunction(5), to: a)
        #expect(call(a.address, 1) == 6)
        // No settle(): the background queue gets there by itself.
        let deadline = ContinuousClock.now + .seconds(20)
        while try hugeMappedBytes(at: a.address) < block && ContinuousClock.now < deadline { usleep(1000) }
        #expect(try hugeMappedBytes(at: a.address) == block)
        #expect(call(a.address, 1) == 6, "the code survived its collapse")
        mem.settle()
        let text = mem.statistics()[.text]
        #expect(text.preparingBytes == 0 && text.freeBytes == block - 64 && text.hugePageCoverage == 1.0, "\(text)")
        #expect(mem.checkInvariants(deep: true) == [])
    }

    @Test func aRequestPastThePreparedPartGetsTheSameBlockWhole() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let small = try mem.allocate(.bpf, size: 64)
        #expect(mem.checkInvariants(deep: true) == [], "a block whose rest is still being prepared")
        let big = try mem.allocate(.moduleText, size: 1 << 20)
        #expect(big.address & ~ExecMemGeometry.blockMask == small.address & ~ExecMemGeometry.blockMask,
                "the pending block was finished for the large request, not a second block committed")
        #expect(mem.statistics(readBack: false)[.text].blocks == 1)
        #expect(bytes(at: big.address, count: big.size).allSatisfy { $0 == ExecMemGeometry.trapByte })
        #expect(mem.checkInvariants(deep: true) == [])
    }

    @Test func settleLeavesNothingPending() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        for kind in [ExecMemKind.bpf, .moduleRodata, .moduleData] { _ = try mem.allocate(kind, size: 64) }
        mem.settle()
        let stats = mem.statistics(readBack: false)
        #expect(stats.total.preparingBytes == 0)
        #expect(stats.total.usedBytes + stats.total.freeBytes == stats.total.reservedBytes)
        #expect(mem.checkInvariants(deep: true) == [])
    }

    @Test func freeingAndDeinitWhileAFinishIsPendingAreSafe() throws {
        var config = smallConfiguration()
        config.retainedEmptyBlocks = 0  // a block emptied by free is released at once, its finish pending or not
        let failures = Mutex<[String]>([])
        for i in 0..<150 {
            let mem = try ExecMemAllocator(config)
            // Two threads on one allocator: one takes a small allocation of a fresh block and frees it
            // (the release cancels or waits for the block's finish), the other a large one that needs
            // the block whole (it finishes the block itself, or waits for the queue).
            DispatchQueue.concurrentPerform(iterations: 2) { t in
                do {
                    let a = try mem.allocate(.bpf, size: t == 0 ? 64 : 1 << 20)
                    try mem.write(addFunction(Int32(i)), to: a)
                    if call(a.address, 1) != 1 + Int32(i) { throw TestFailure("wrong result from \(a)") }
                    if t == 0 || i % 3 == 0 { try mem.free(a) }
                } catch {
                    failures.withLock { $0.append("round \(i), thread \(t): \(error)") }
                }
            }
            // Deep: every free chunk, the freed ones included, reads back as int3.
            let problems = mem.checkInvariants(deep: true)
            if !problems.isEmpty { failures.withLock { $0.append("round \(i): \(problems)") } }
            if i % 2 == 0 { mem.settle() }
            // Odd rounds: the allocator goes away with its last block's finish queued or running.
        }
        #expect(failures.withLock { $0 } == [])
        try expectNoWritableExecutable()
    }

    @Test func membarrierRegistersEarlyAndSynchronizes() throws {
        // Threads come and go while other suites run; the count read from /proc/self/stat includes this one.
        #expect(Membarrier.threadCount() >= 1)
        Membarrier.registerEarly()
        #expect(Membarrier.synchronize() == kernel.membarrier)
    }
}
