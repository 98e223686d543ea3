// The allocator's main promises, checked on real memory: code runs, types get their protections,
// everything is within rel32 reach, freed text traps, and nothing is ever writable and executable.

@testable import ExecMem
import ExecMemSystem
import Testing

@Suite struct AllocatorTests {
    @Test func installedFunctionsRunAcrossKinds() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        var installed: [(Allocation, Int32)] = []
        for (i, kind) in [ExecMemKind.bpf, .probes, .trace, .moduleText].enumerated() {
            for j in 0..<50 {
                let k = Int32(i * 1000 + j)
                let code = addFunction(k, size: 7 + (j * 37) % 300)
                let a = try mem.allocate(kind, size: code.count)
                try mem.write(code, to: a)
                installed.append((a, k))
            }
        }
        for (a, k) in installed {
            #expect(call(a.address, 5) == 5 + k)
            #expect(try protection(at: a.address) == "r-x")
        }
        #expect(mem.checkInvariants(deep: true) == [])
        try expectNoWritableExecutable()
    }

    @Test func eachTypeHasItsProtection() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let expected: [(ExecMemKind, String)] = [(.moduleText, "r-x"), (.moduleRodata, "r--"), (.moduleData, "rw-"), (.moduleRoAfterInit, "rw-")]
        for (kind, prot) in expected {
            let a = try mem.allocate(kind, size: 100)
            #expect(try protection(at: a.address) == prot, "\(kind)")
            try mem.write([1, 2, 3], to: a)
            #expect(bytes(at: a.address, count: 3) == [1, 2, 3])
        }
        try expectNoWritableExecutable()
    }

    @Test func everythingIsWithinRel32ReachAndNearTheExecutable() throws {
        let mem = try ExecMemAllocator(smallConfiguration(range: 256 << 20))
        var all: [Allocation] = []
        for kind in ExecMemKind.allCases {
            for size in [1, 64, 500, 4096, 100_000, 3 << 20] { all.append(try mem.allocate(kind, size: size)) }
        }
        let lo = all.map(\.address).min()!, hi = all.map(\.end).max()!
        #expect(Rel32.reaches(lo, hi, lo, hi))
        let image = try #require(mem.hostImage, "the executable's mappings were found")
        #expect(mem.primaryReachesExecutable, "\(mem.notes)")
        for a in all {
            #expect(mem.isInPrimaryRange(a.address))
            #expect(Rel32.reaches(a.address, a.end, image.start, image.end))
            #expect(Rel32.displacement(from: a.address + 5, to: image.textStart) != nil)
        }
        #expect(mem.checkInvariants() == [])
    }

    @Test func generatedCodeCallsTheHostDirectly() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        // int f(int x) { return host(x) + 1; }  with host(x) = 3x, reached by call rel32.
        let host: Int32Function = { x in 3 &* x }
        let target = UInt(bitPattern: unsafeBitCast(host, to: UnsafeRawPointer.self))
        let a = try mem.allocate(.bpf, size: 32)
        let callEnd = a.address + 4 + 5
        let disp = try #require(Rel32.displacement(from: callEnd, to: target), "host function within rel32")
        var code: [UInt8] = [0x48, 0x83, 0xEC, 0x08, 0xE8]  // sub rsp, 8; call rel32
        withUnsafeBytes(of: disp.littleEndian) { code += $0 }
        code += [0x48, 0x83, 0xC4, 0x08, 0xFF, 0xC0, 0xC3]  // add rsp, 8; inc eax; ret
        try mem.write(code, to: a)
        #expect(call(a.address, 7) == 22)
    }

    @Test func freedTextTrapsAndFreshBlocksAreAllTraps() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.moduleText, size: 200)
        let b = try mem.allocate(.moduleText, size: 100)
        // A fresh block, once the background queue has filled the part past what the first allocation
        // needed (until then it reads as zero and is never handed out, see FinishTests): all int3
        // outside the two allocations.
        mem.settle()
        let base = a.address & ~ExecMemGeometry.blockMask
        let block = bytes(at: base, count: ExecMemGeometry.blockSize)
        for (i, byte) in block.enumerated() {
            let addr = base + UInt(i)
            if (addr >= a.address && addr < a.address + UInt(a.capacity)) || (addr >= b.address && addr < b.address + UInt(b.capacity)) { continue }
            if byte != 0xCC { Issue.record("byte at offset \(i) of a fresh block is \(byte)"); break }
        }
        try mem.write(addFunction(9, size: 200), to: a)
        #expect(call(a.address, 1) == 10)
        try mem.free(a)
        #expect(bytes(at: a.address, count: a.capacity).allSatisfy { $0 == 0xCC })
        #expect(mem.checkInvariants(deep: true) == [])
        // Freed data is zeroed, so a new allocation starts clean.
        let d = try mem.allocate(.moduleData, size: 128)
        try mem.fill(d, with: 0xAB)
        try mem.free(d)
        let d2 = try mem.allocate(.moduleData, size: 128)
        #expect(bytes(at: d2.address, count: 128).allSatisfy { $0 == 0 })
    }

    @Test func largeAllocationsTakeRunsOfBlocks() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let size = 5 << 20 + 123
        let a = try mem.allocate(.moduleText, size: size)
        #expect(a.address & ExecMemGeometry.blockMask == 0)
        #expect(a.capacity == 6 << 20)
        var code = addFunction(1)
        code += [UInt8](repeating: 0x90, count: 0)
        try mem.write(code, to: a, at: size - code.count)
        #expect(call(a.address + UInt(size - code.count), 1) == 2)
        let stats = mem.statistics()
        #expect(stats[.text].largeRuns == 1 && stats[.text].blocks == 3)
        try mem.free(a)
        #expect(try protection(at: a.address) == "---")
        #expect(mem.statistics()[.text].blocks == 0)
        #expect(mem.checkInvariants() == [])
    }

    @Test func alignmentIsHonoured() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        _ = try mem.allocate(.bpf, size: 10)
        for shift in 0...21 {
            let a = try mem.allocate(.bpf, size: 100, alignment: 1 << shift)
            #expect(a.address % UInt(1 << shift) == 0, "alignment \(1 << shift)")
        }
        #expect(mem.checkInvariants() == [])
    }

    @Test func smallAllocationsPackIntoSharedBlocks() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        var live: [Allocation] = []
        for i in 0..<2000 { live.append(try mem.allocate(.bpf, size: 64 + (i % 7) * 100)) }
        let used = live.reduce(0) { $0 + $1.capacity }
        let stats = mem.statistics()
        #expect(stats[.text].blocks == (used + ExecMemGeometry.blockSize - 1) / ExecMemGeometry.blockSize)
        #expect(stats[.bpf].allocations == 2000 && stats[.bpf].usedBytes == used)
        for a in live { try mem.free(a) }
        let after = mem.statistics()
        #expect(after[.text].blocks == 1, "one empty block retained (hysteresis)")
        #expect(after[.bpf].allocations == 0 && after[.text].usedBytes == 0)
        #expect(mem.checkInvariants(deep: true) == [])
    }

    @Test func emptyBlocksAreReturnedWithHysteresis() throws {
        var config = smallConfiguration()
        config.retainedEmptyBlocks = 2
        let mem = try ExecMemAllocator(config)
        // Four blocks, each filled by one 1.5 MiB allocation.
        let big = 3 << 19
        let all = try (0..<4).map { _ in try mem.allocate(.moduleRodata, size: big) }
        #expect(Set(all.map { $0.address & ~ExecMemGeometry.blockMask }).count == 4)
        try mem.free(all[0])
        try mem.free(all[1])
        #expect(mem.statistics()[.rodata].blocks == 4, "two empty blocks retained")
        try mem.free(all[2])
        #expect(mem.statistics()[.rodata].blocks == 3, "a third empty block is released")
        let released = all.map { $0.address & ~ExecMemGeometry.blockMask }
        #expect(try released.filter { try protection(at: $0) == "---" }.count == 1)
        #expect(mem.checkInvariants() == [])
    }

    @Test func roAfterInitSealsPageByPage() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.moduleRoAfterInit, size: 256)
        let b = try mem.allocate(.moduleRoAfterInit, size: 5000)
        #expect(a.capacity == 4096 && b.capacity == 8192, "whole pages")
        #expect(a.address % 4096 == 0 && b.address % 4096 == 0)
        #expect(a.address & ~ExecMemGeometry.blockMask == b.address & ~ExecMemGeometry.blockMask, "one shared block")
        // Initialization writes it directly: the memory is rw- until sealed.
        UnsafeMutableRawPointer(bitPattern: a.address)!.storeBytes(of: 0x1234_5678, as: UInt32.self)
        try mem.write([9], to: a, at: 8)
        try mem.seal(a)
        try mem.seal(a)  // harmless
        #expect(mem.isSealed(a) && !mem.isSealed(b))
        #expect(try protection(at: a.address) == "r--")
        #expect(try protection(at: b.address) == "rw-", "the neighbour is still being initialized")
        #expect(UnsafeRawPointer(bitPattern: a.address)!.load(as: UInt32.self) == 0x1234_5678)
        #expect(throws: ExecMemError.sealed(address: a.address, id: a.id)) { try mem.write([1], to: a) }
        try mem.write([7], to: b)
        try mem.seal(b)
        #expect(try protection(at: b.address + 4096) == "r--")
        #expect(mem.statistics()[.roAfterInit].sealedAllocations == 2)
        // Freeing a sealed allocation makes its pages writable and zero again for the next owner.
        try mem.free(a)
        let c = try mem.allocate(.moduleRoAfterInit, size: 64)
        #expect(c.address == a.address)
        #expect(try protection(at: c.address) == "rw-")
        #expect(bytes(at: c.address, count: 4096).allSatisfy { $0 == 0 })
        #expect(mem.checkInvariants(deep: true) == [])
        try expectNoWritableExecutable()
    }

    @Test func zeroSizedWritesAndFillsAreBounded() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.moduleRodata, size: 100)
        try mem.write([], to: a, at: 100)
        try mem.fill(a, with: 7, offset: 90)
        #expect(bytes(at: a.address + 90, count: 10) == [UInt8](repeating: 7, count: 10))
        #expect(bytes(at: a.address + 100, count: 28).allSatisfy { $0 == 0 }, "the chunk's tail is untouched")
    }
}
