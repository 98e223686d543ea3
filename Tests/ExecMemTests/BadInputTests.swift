// Bad input, each answered by a typed error that says what and where, with the allocator still fully
// usable afterwards (invariants hold, a new allocation runs).

@testable import ExecMem
import ExecMemSystem
import Testing

@Suite struct BadInputTests {
    /// After an error: invariants hold and a fresh function still installs and runs.
    func expectUsable(_ mem: ExecMemAllocator, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(mem.checkInvariants(deep: true) == [], sourceLocation: sourceLocation)
        let a = try mem.allocate(.bpf, size: 16)
        try mem.write(addFunction(41), to: a)
        #expect(call(a.address, 1) == 42, sourceLocation: sourceLocation)
        try mem.free(a)
        try expectNoWritableExecutable(sourceLocation: sourceLocation)
    }

    @Test func badSizes() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        for size in [0, -1, Int.min] {
            #expect { try mem.allocate(.bpf, size: size) } throws: { e in
                guard case .badSize(size, .bpf, _) = e as? ExecMemError else { return false }
                return true
            }
        }
        #expect { try mem.allocate(.moduleText, size: (64 << 20) + 1) } throws: { e in
            guard case let .badSize(_, _, reason)? = e as? ExecMemError else { return false }
            return reason.contains("larger than")
        }
        try expectUsable(mem)
    }

    @Test func badAlignments() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        for alignment in [0, -8, 3, 48, 4 << 20] {
            #expect(throws: ExecMemError.badAlignment(alignment: alignment, kind: .probes)) {
                try mem.allocate(.probes, size: 10, alignment: alignment)
            }
        }
        var config = smallConfiguration()
        config.kinds[.bpf] = KindRange(type: .text, alignment: 24)
        #expect(throws: ExecMemError.badAlignment(alignment: 24, kind: .bpf)) { try ExecMemAllocator(config) }
        try expectUsable(mem)
    }

    @Test func doubleFree() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let keep = try mem.allocate(.bpf, size: 100)
        let a = try mem.allocate(.bpf, size: 100)
        try mem.free(a)
        #expect(throws: ExecMemError.doubleFree(address: a.address, kind: .bpf, id: a.id)) { try mem.free(a) }
        // The chunk is handed out again: the stale handle must not free the new owner.
        let b = try mem.allocate(.bpf, size: 100)
        #expect(b.address == a.address)
        #expect(throws: ExecMemError.doubleFree(address: a.address, kind: .bpf, id: a.id)) { try mem.free(a) }
        #expect(mem.allocation(at: b.address) == b)
        // By address, a freed chunk is a double free too.
        try mem.free(address: b.address)
        #expect { try mem.free(address: b.address) } throws: { e in
            guard case .doubleFree? = e as? ExecMemError else { return false }
            return true
        }
        // A large run's double free, after its blocks went back.
        let big = try mem.allocate(.moduleData, size: 5 << 20)
        try mem.free(big)
        #expect(throws: ExecMemError.doubleFree(address: big.address, kind: .moduleData, id: big.id)) { try mem.free(big) }
        try mem.free(keep)
        try expectUsable(mem)
    }

    @Test func foreignPointers() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.moduleText, size: 300)
        let heap = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        defer { heap.deallocate() }
        let cases: [(UInt, String)] = [
            (UInt(bitPattern: heap), "outside every ExecMem range"),
            (a.address + 64, "not the start"),
            (a.address + 3, "not the start"),
            (mem.primaryBase + UInt(mem.primarySize) - 64, "not in a committed block"),
        ]
        for (address, reason) in cases {
            #expect { try mem.free(address: address) } throws: { e in
                guard case let .foreignPointer(at, why)? = e as? ExecMemError else { return false }
                return at == address && why.contains(reason)
            }
        }
        #expect(mem.allocation(at: a.address) == a, "the real allocation is untouched")
        try expectUsable(mem)
    }

    @Test func writesOutOfBounds() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.moduleRodata, size: 100)
        let neighbour = try mem.allocate(.moduleRodata, size: 64)
        for (offset, count) in [(-1, 1), (0, 101), (100, 1), (99, 2), (Int.max, 1), (1, Int.max)] {
            #expect(throws: ExecMemError.outOfBounds(address: a.address, offset: offset, count: count, size: 100)) {
                try mem.fill(a, with: 1, offset: offset, count: count)
            }
        }
        #expect(throws: ExecMemError.outOfBounds(address: a.address, offset: 90, count: 20, size: 100)) {
            try mem.write([UInt8](repeating: 1, count: 20), to: a, at: 90)
        }
        #expect(bytes(at: neighbour.address, count: 64).allSatisfy { $0 == 0 }, "the neighbour is untouched")
        try mem.free(a)
        #expect { try mem.write([1], to: a) } throws: { e in
            guard case .doubleFree? = e as? ExecMemError else { return false }
            return true
        }
        try expectUsable(mem)
    }

    @Test func writesToSealedMemory() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.moduleRoAfterInit, size: 32)
        try mem.seal(a)
        #expect(throws: ExecMemError.sealed(address: a.address, id: a.id)) { try mem.write([1], to: a) }
        #expect(throws: ExecMemError.sealed(address: a.address, id: a.id)) { try mem.fill(a, with: 1) }
        let t = try mem.allocate(.moduleText, size: 32)
        #expect(throws: ExecMemError.notSealable(address: t.address, type: .text)) { try mem.seal(t) }
        try expectUsable(mem)
    }

    @Test func exhaustingTheRangeUsesTheFallbackThenFails() throws {
        // 4 blocks of primary, 2 of fallback; each 1.5 MiB allocation takes a block of its own.
        let mem = try ExecMemAllocator(smallConfiguration(range: 8 << 20, fallback: 4 << 20))
        let size = 3 << 19
        var got: [Allocation] = []
        for _ in 0..<6 { got.append(try mem.allocate(.moduleText, size: size)) }
        #expect(got.prefix(4).allSatisfy { mem.isInPrimaryRange($0.address) })
        #expect(got.suffix(2).allSatisfy { !mem.isInPrimaryRange($0.address) })
        #expect(mem.ranges.count == 2)
        #expect { try mem.allocate(.moduleText, size: size) } throws: { e in
            guard case let .rangeExhausted(kind, type, sz, ranges)? = e as? ExecMemError else { return false }
            return kind == .moduleText && type == .text && sz == size && ranges.contains("fallback")
        }
        // A kind limited to the primary range gets the same clear error without touching the fallback.
        var limited = smallConfiguration(range: 8 << 20, fallback: 4 << 20)
        limited.kinds[.probes] = KindRange(type: .text, ranges: .primaryOnly)
        let mem2 = try ExecMemAllocator(limited)
        for _ in 0..<4 { _ = try mem2.allocate(.probes, size: size) }
        #expect { try mem2.allocate(.probes, size: size) } throws: { e in
            guard case let .rangeExhausted(_, _, _, ranges)? = e as? ExecMemError else { return false }
            return !ranges.contains("fallback")
        }
        #expect(mem2.ranges.count == 1)
        // Freeing makes room again.
        try mem.free(got[1])
        let again = try mem.allocate(.moduleText, size: size)
        try mem.write(addFunction(1), to: again)
        #expect(call(again.address, 1) == 2)
        #expect(mem.checkInvariants(deep: true) == [])
        try expectNoWritableExecutable()
    }

    @Test func badConfigurations() throws {
        var c = ExecMemConfiguration()
        for size in [0, 1 << 20, (3 << 20), 3 << 30] {
            c.rangeSize = size
            #expect { try ExecMemAllocator(c) } throws: { e in
                guard case .badConfiguration? = e as? ExecMemError else { return false }
                return true
            }
        }
        c = smallConfiguration(range: 4 << 20)
        c.layout = .defaultSplit
        #expect { try ExecMemAllocator(c) } throws: { e in
            guard case let .badConfiguration(what)? = e as? ExecMemError else { return false }
            return what.contains("4 blocks")
        }
        c = smallConfiguration()
        c.layout = .splitRange(text: 0.9, rodata: 0.2, data: 0.1, roAfterInit: 0.1)
        #expect { try ExecMemAllocator(c) } throws: { e in
            guard case .badConfiguration? = e as? ExecMemError else { return false }
            return true
        }
    }
}
