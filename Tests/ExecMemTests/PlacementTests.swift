// Range placement: near the executable at a random base, at a caller's hint, or anywhere; and the
// candidate computation on hand-made maps.

@testable import ExecMem
import ExecMemSystem
import Glibc
import Testing

@Suite struct PlacementTests {
    @Test func defaultPlacementIsNearTheExecutableAndRandomized() throws {
        var bases = Set<UInt>()
        for _ in 0..<4 {
            let mem = try ExecMemAllocator(smallConfiguration(range: 32 << 20))
            #expect(mem.primaryReachesExecutable, "\(mem.notes)")
            #expect(mem.primaryBase & ExecMemGeometry.blockMask == 0)
            bases.insert(mem.primaryBase)
        }
        #expect(bases.count > 1, "four ranges at one base: the base is not randomized")
    }

    // The two tests below run in a child process of their own (an exit test): the claim is about a
    // program's first allocator, and this test process holds dozens of ranges at once, which can
    // leave no 1 GiB hole in reach. Issues the child records come back to this test.
    @Test func theDefaultGigabyteRangeReachesTheExecutable() async {
        await #expect(processExitsWith: .success) {
            let mem = try ExecMemAllocator()
            #expect(mem.primarySize == 1 << 30, "\(mem.notes)")
            #expect(mem.primaryReachesExecutable, "\(mem.notes)")
            let image = try #require(mem.hostImage)
            let a = try mem.allocate(.moduleText, size: 64)
            #expect(Rel32.displacement(from: a.address + 5, to: image.textStart) != nil)
            #expect(Rel32.displacement(from: a.address + 5, to: image.textEnd - 1) != nil)
            try mem.write(addFunction(5), to: a)
            #expect(call(a.address, 1) == 6)
        }
    }

    /// Under AddressSanitizer the runtime maps and unmaps its own regions between the test's reading
    /// of /proc/self/maps and its reservations, so "every hole but one" cannot be set up.
    @Test(.disabled(if: dlsym(nil, "__asan_init") != nil, "AddressSanitizer maps memory of its own into the holes this test fills"))
    func aCrowdedWindowShrinksTheRangeThenGoesAnywhere() async {
        await #expect(processExitsWith: .success) {
            // Take every hole in reach of the executable with PROT_NONE reservations, except 100 MiB.
            let maps = try ProcMaps.read()
            let image = try #require(HostImage.find(in: maps))
            let block = UInt(ExecMemGeometry.blockSize), least = UInt(RangePlacer.minimumNearSize)
            let holes = RangePlacer.nearCandidates(size: Int(least), image: image, maps: maps)
                .map { (start: $0.first, end: $0.first + UInt($0.count - 1) * block + least) }
            let keep = UInt(100 << 20)
            let kept = try #require(holes.first { $0.end - $0.start >= keep }, "no 100 MiB hole in reach: \(holes)")
            for h in holes {
                let start = h.start == kept.start ? h.start + keep : h.start
                if h.end > start { _ = try Reservation.reserve(size: Int(h.end - start), at: start) }
            }
            let shrunk = try ExecMemAllocator()
            #expect(shrunk.primaryBase == kept.start && shrunk.primarySize == Int(keep), "\(shrunk.notes)")
            #expect(shrunk.primaryReachesExecutable)
            #expect(shrunk.notes[0].contains("100 MiB of the 1024 MiB asked"), "\(shrunk.notes)")
            let a = try shrunk.allocate(.moduleText, size: 16)
            try shrunk.write(addFunction(7), to: a)
            #expect(call(a.address, 1) == 8)
            // Nothing of 8 MiB is left in reach: the next range goes anywhere, and says so.
            let far = try ExecMemAllocator()
            #expect(far.primarySize == 1 << 30)
            #expect(!far.primaryReachesExecutable)
            #expect(far.notes[0].hasPrefix("anywhere: no hole of even 8 MiB"), "\(far.notes)")
        }
    }

    @Test func hintPlacementIsExactOrAnError() throws {
        let probe = try ExecMemAllocator(smallConfiguration(range: 16 << 20, fallback: 0))
        let free = probe.primaryBase
        var config = smallConfiguration(range: 16 << 20, fallback: 0)
        config.placement = .hint(free + 1)  // rounded up to the next 2 MiB
        #expect { try ExecMemAllocator(config) } throws: { e in
            guard case let .placementFailed(what)? = e as? ExecMemError else { return false }
            return what.contains("hint")  // taken: the probe's range covers it
        }
        config.placement = .hint(free + UInt(16 << 20))
        if let mem = try? ExecMemAllocator(config) {
            #expect(mem.primaryBase == free + UInt(16 << 20))
        }
    }

    @Test func anywherePlacementWorks() throws {
        var config = smallConfiguration()
        config.placement = .anywhere
        let mem = try ExecMemAllocator(config)
        let a = try mem.allocate(.bpf, size: 16)
        try mem.write(addFunction(2), to: a)
        #expect(call(a.address, 2) == 4)
    }

    @Test func seededPlacementIsRepeatable() throws {
        let maps = [
            MapsEntry(start: 0x5555_0000_0000, end: 0x5555_0010_0000, perms: "r-xp", path: "/bin/x"),
            MapsEntry(start: 0x5555_0010_0000, end: 0x5555_0020_0000, perms: "rw-p", path: "/bin/x"),
            MapsEntry(start: 0x5555_0100_0000, end: 0x5555_0110_0000, perms: "rw-p", path: "[heap]"),
        ]
        let image = try #require(HostImage.find(in: maps.map { var m = $0; if m.path == "/bin/x" { m.path = (try? Sys.readlink("/proc/self/exe")) ?? "" }; return m }))
        let candidates = RangePlacer.nearCandidates(size: 1 << 30, image: image, maps: maps)
        #expect(!candidates.isEmpty)
        for c in candidates {
            let first = c.first, last = c.first + UInt(c.count - 1) * UInt(ExecMemGeometry.blockSize)
            for base in [first, last] {
                #expect(Rel32.reaches(base, base + UInt(1 << 30), image.start, image.end))
                #expect(!maps.contains { $0.start < base + UInt(1 << 30) && $0.end > base }, "overlaps a mapping")
                #expect(!(base < 0x5555_0110_0000 + RangePlacer.heapHeadroom && base + UInt(1 << 30) > 0x5555_0100_0000), "blocks the heap")
            }
        }
        // A 2 GiB range can never reach an image of any size.
        #expect(RangePlacer.nearCandidates(size: 1 << 31, image: image, maps: maps).isEmpty)
    }

    @Test func rel32Arithmetic() {
        #expect(Rel32.displacement(from: 0x1000, to: 0x1000 + UInt(Int32.max)) == Int32.max)
        #expect(Rel32.displacement(from: 0x1000 + UInt(1 << 31), to: 0x1000) == Int32.min)
        #expect(Rel32.displacement(from: 0x1000, to: 0x1000 + UInt(1 << 31)) == nil)
        #expect(Rel32.reaches(0, UInt(Int32.max), 0, 1))
        #expect(!Rel32.reaches(0, UInt(Int32.max) + 1, 0, 1))
    }
}
