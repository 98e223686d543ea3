// Every backing, write-view mode and layout policy, on real memory: code runs, protections are right,
// and the 2 MiB mappings the kernel really made are read back from /proc/self/smaps.

@testable import ExecMem
import ExecMemSystem
import Testing

@Suite struct BackingTests {
    /// Installs a mix of functions and data, runs them, frees half, runs the rest.
    func exercise(_ mem: ExecMemAllocator, count: Int = 400) throws {
        var installed: [(Allocation, Int32)] = []
        for i in 0..<count {
            let kind: ExecMemKind = [.bpf, .probes, .trace, .moduleText][i % 4]
            let code = addFunction(Int32(i), size: 7 + (i * 53) % 900)
            let a = try mem.allocate(kind, size: code.count)
            try mem.write(code, to: a)
            installed.append((a, Int32(i)))
        }
        let ro = try mem.allocate(.moduleRodata, size: 1000)
        try mem.write([UInt8](repeating: 0x5A, count: 1000), to: ro)
        #expect(bytes(at: ro.address, count: 1000).allSatisfy { $0 == 0x5A })
        #expect(try protection(at: ro.address) == "r--")
        for (a, k) in installed { #expect(call(a.address, 3) == 3 + k) }
        for (a, _) in installed.enumerated().filter({ $0.offset % 2 == 0 }).map(\.element) {
            try mem.free(a)
            #expect(bytes(at: a.address, count: a.capacity).allSatisfy { $0 == 0xCC })
        }
        for (a, k) in installed.enumerated().filter({ $0.offset % 2 == 1 }).map(\.element) { #expect(call(a.address, 3) == 3 + k) }
        #expect(mem.checkInvariants(deep: true) == [])
        try expectNoWritableExecutable()
    }

    @Test(.enabled(if: kernel.collapseOnMemfd, "MADV_COLLAPSE does not give memfd views 2 MiB mappings on this kernel (execmem doctor)"))
    func textIsOnTwoMegabytePages() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        var live: [Allocation] = []
        for i in 0..<3000 {
            let code = addFunction(Int32(i), size: [16, 120, 700, 3000][i % 4])
            let a = try mem.allocate([.bpf, .probes, .trace, .moduleText][i % 4], size: code.count)
            try mem.write(code, to: a)
            live.append(a)
        }
        mem.settle()  // the last block's collapse runs in the background
        let stats = mem.statistics()
        #expect(stats[.text].blocks >= 2)
        #expect(stats[.text].hugePageCoverage >= 0.99, "\(stats[.text]) \(stats.notes)")
        // Check the smaps figures directly, not only through the allocator's sum.
        let blocks = Set(live.map { $0.address & ~ExecMemGeometry.blockMask })
        for base in blocks {
            let entry = try #require(try Smaps.read().first { $0.mapping.start <= base && base < $0.mapping.end })
            #expect(entry["ShmemPmdMapped"] == entry.mapping.length, "\(entry.mapping)")
        }
        for (i, a) in live.enumerated() { #expect(call(a.address, 1) == 1 + Int32(i)) }
        // Writing and freeing must not split the 2 MiB pages.
        for a in live.prefix(1500) { try mem.free(a) }
        #expect(mem.statistics()[.text].hugePageCoverage >= 0.99)
        try expectNoWritableExecutable()
    }

    @Test(.enabled(if: kernel.collapseOnMemfd, "MADV_COLLAPSE does not work on memfd views here"))
    func dataTypesAreOnTwoMegabytePagesToo() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        for kind in [ExecMemKind.moduleData, .moduleRodata, .moduleRoAfterInit] { _ = try mem.allocate(kind, size: 10_000) }
        mem.settle()  // their collapse runs in the background
        let stats = mem.statistics()
        for type in [ExecMemType.data, .rodata] {
            #expect(stats[type].hugePageCoverage >= 0.99, "\(type): \(stats[type])")
        }
        // Ro-after-init is sealed page by page, so it stays on 4 KiB pages, by design.
        #expect(stats[.roAfterInit].hugePageCoverage == 0)
    }

    @Test func transientWriteViews() throws {
        var config = smallConfiguration()
        config.writeView = .transient
        let mem = try ExecMemAllocator(config)
        try exercise(mem)
        let a = try mem.allocate(.bpf, size: 64), b = try mem.allocate(.bpf, size: 64)
        // Other tests' allocators have objects of the same name: match this one's by inode.
        let inode = try #require(try ProcMaps.read().first { $0.start <= a.address && a.address < $0.end }).inode
        func writeViews() throws -> [MapsEntry] { try ProcMaps.read().filter { $0.inode == inode && $0.isWritable } }
        // No write view outlives a write: the only mappings of the text object are run views.
        #expect(try writeViews().isEmpty)
        // A batch maps each run once and unmaps at its end.
        try mem.writeBatch { batch in
            try batch.write(addFunction(1), to: a)
            try batch.write(addFunction(2), to: b)
            #expect(try writeViews().count == 1, "one view open during the batch")
        }
        #expect(try writeViews().isEmpty)
        #expect(call(a.address, 0) == 1 && call(b.address, 0) == 2)
    }

    @Test func persistentWriteViewsAreNeverExecutable() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        try exercise(mem)
        // The text object is shared anonymous memory (`/dev/zero (deleted)`, so perf names JIT code
        // through its map file); its mappings are this allocator's by inode.
        let a = try mem.allocate(.bpf, size: 64)
        let maps = try ProcMaps.read()
        let run = try #require(maps.first { $0.start <= a.address && a.address < $0.end })
        #expect(run.path.hasPrefix("/dev/zero"), "\(run.path)")
        let textMaps = maps.filter { $0.inode == run.inode && $0.protection != "---" }
        #expect(textMaps.contains { $0.protection == "r-x" })
        #expect(textMaps.contains { $0.protection == "rw-" }, "the persistent write view")
        #expect(textMaps.allSatisfy { $0.protection == "r-x" || $0.protection == "rw-" })
    }

    @Test func anonymousBacking() throws {
        var config = smallConfiguration()
        config.backing = .anonymous
        let mem = try ExecMemAllocator(config)
        try exercise(mem)
        #expect(mem.backend.name == "anonymous")
        if kernel.collapseOnAnonymous {
            #expect(mem.statistics()[.text].hugePageCoverage >= 0.99, "whole-block mprotect keeps the THP")
        }
    }

    @Test(.enabled(if: KernelFeatures.probe().hugetlbPagesFree >= 8,
                   "needs 8 free hugetlb pages (as root: echo 16 > /proc/sys/vm/nr_hugepages; .ci/run does this)"))
    func hugetlbBacking() throws {
        var config = smallConfiguration()
        config.backing = .hugetlb
        let mem = try ExecMemAllocator(config)
        try exercise(mem, count: 200)
        let stats = mem.statistics()
        #expect(stats[.text].hugePageCoverage == 1.0, "\(stats[.text])")
    }

    @Test func hugetlbWithoutPagesFailsCleanly() throws {
        guard KernelFeatures.probe().hugetlbPagesFree == 0 else {
            try Test.cancel("hugetlb pages are reserved on this machine; the empty-pool case cannot be shown")
        }
        var config = smallConfiguration()
        config.backing = .hugetlb
        let mem = try ExecMemAllocator(config)
        #expect { try mem.allocate(.bpf, size: 64) } throws: { e in
            guard case let .system(s)? = e as? ExecMemError else { return false }
            return s.call == "fallocate"
        }
        #expect(mem.checkInvariants() == [])
        #expect(mem.statistics()[.text].blocks == 0)
    }

    @Test func splitRangeLayoutKeepsTypesInTheirSubRanges() throws {
        var config = smallConfiguration(range: 64 << 20)
        config.layout = .defaultSplit
        config.placement = .anywhere  // the slot arithmetic needs all 64 MiB; near placement may shrink
        let mem = try ExecMemAllocator(config)
        try exercise(mem, count: 100)
        let slots = 32
        for type in ExecMemType.allCases {
            let w = Pool.window(for: type, slots: slots, layout: config.layout)
            let kind = ExecMemKind.allCases.first { $0.defaultType == type }!
            let a = try mem.allocate(kind, size: w.count >= 2 ? 3 << 20 : 1 << 20)
            let slot = Int((a.address - mem.primaryBase) >> UInt(ExecMemGeometry.blockShift))
            let last = Int((a.end - 1 - mem.primaryBase) >> UInt(ExecMemGeometry.blockShift))
            #expect(w.contains(slot) && w.contains(last), "\(type) slots \(slot)...\(last) in \(w)")
        }
        #expect(Pool.window(for: .text, slots: slots, layout: config.layout) == 0..<16)
        #expect(Pool.window(for: .roAfterInit, slots: slots, layout: config.layout).count == 1)
        #expect(mem.checkInvariants() == [])
    }

    @Test func typedBlocksGrowTextUpAndDataDown() throws {
        var config = smallConfiguration(range: 64 << 20)
        config.placement = .anywhere  // the arithmetic needs all 64 MiB; near placement may shrink
        let mem = try ExecMemAllocator(config)
        let t = try mem.allocate(.moduleText, size: 100)
        let d = try mem.allocate(.moduleData, size: 100)
        #expect(t.address - mem.primaryBase < UInt(ExecMemGeometry.blockSize))
        #expect(mem.primaryBase + UInt(64 << 20) - d.address <= UInt(ExecMemGeometry.blockSize))
    }
}
