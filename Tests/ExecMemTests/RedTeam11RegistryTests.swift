// Red team, issue 11: the registry's public API with values a client could pass: ranges that
// overflow at the top of the address space, sizes of Int.max, names with newlines (perf's map is
// line-based), and one large registration beside many small ones.

import ExecMemSystem
import Foundation
import Testing
@testable import ExecMem

@Suite(.serialized) struct RedTeam11RegistryTests {
    @Test func rangesAtTheTopOfTheAddressSpace() {
        let r = CodeRegistry(sinks: [.crashTable])
        let h = r.register(CodeRegistration(name: "top", kind: .other, address: UInt.max - 10, size: 100))
        _ = r.symbolize(UInt.max - 1)
        r.unregister(overlapping: UInt.max - 4, size: 100)
        r.unregister(h)
        #expect(r.count == 0)
    }

    @Test(.timeLimit(.minutes(1))) func aSizeOfIntMax() {
        let r = CodeRegistry(sinks: [])
        let h = r.register(CodeRegistration(name: "huge", kind: .other, address: 0x1000, size: .max))
        _ = r.symbolize(0x2000)
        r.unregister(h)
        r.unregister(overlapping: 0, size: .max)
        r.unregister(overlapping: UInt.max - 100, size: .max)
        #expect(r.count == 0)
    }

    @Test func symbolsAndFramesOutsideTheRegistrationAreDropped() {
        let r = CodeRegistry(sinks: [.crashTable])
        let h = r.register(CodeRegistration(name: "piece", kind: .other, address: 0x10_0000, size: 0x100,
                                            symbols: [CodeSymbol(name: "inside", address: 0x10_0010, size: .max),
                                                      CodeSymbol(name: "outside", address: UInt.max - 1, size: 10)],
                                            unwind: .frames([CodeFrame(offset: -8, length: 16, instructions: []),
                                                             CodeFrame(offset: 0, length: .max, instructions: [])])))
        #expect(r.symbolize(0x10_00ff)?.symbol == "inside")
        #expect(r.symbolize(0x10_0100) == nil)
        #expect(r.symbolize(UInt.max - 1) == nil)
        r.unregister(h)
        #expect(r.count == 0)
    }

    @Test func namesWithNewlinesStayOnePerfMapLine() throws {
        CodeRegistry.shared.enable(.perfMap)
        let tag = "nl\(UInt32.random(in: 0...UInt32.max))"
        // Real code: jitdump (on if another test switched it on) copies the bytes.
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.bpf, size: 16)
        defer { try? mem.free(a) }
        let h = CodeRegistry.shared.register(CodeRegistration(name: "\(tag)\n1000 10 injected_\(tag)", kind: .other, address: a.address, size: 16, owner: "o\nx"))
        defer { CodeRegistry.shared.unregister(h) }
        CodeRegistry.shared.flushPerf()  // writes are coalesced to one per millisecond
        let map = try String(contentsOfFile: try #require(CodeRegistry.shared.status.perfMapPath), encoding: .utf8)
        #expect(!map.contains("\n1000 10 injected_\(tag)"), "a name cannot add a line to the map")
        #expect(map.split(separator: "\n").filter { $0.contains(tag) }.count == 1)
    }

    @Test func oneLargeRegistrationDoesNotMakeFreesLinear() {
        func time(large: Bool) -> Double {
            let r = CodeRegistry(sinks: [])
            if large { r.register(CodeRegistration(name: "big", kind: .other, address: 0x7f00_0000_0000, size: 64 << 20)) }
            let base: UInt = 0x7e00_0000_0000, n = 10_000
            // Programs of 48 bytes every 64: lookups in the gaps, frees newest first.
            for i in 0..<n { r.register(CodeRegistration(name: "p\(i)", kind: .bpfProgram, address: base + UInt(i * 64), size: 48)) }
            let t0 = Sys.monotonicNanoseconds()
            for i in 0..<n { _ = r.symbolize(base + UInt(i * 64) + 50) }
            for i in (0..<n).reversed() { r.unregister(overlapping: base + UInt(i * 64), size: 48) }
            return Double(Sys.monotonicNanoseconds() - t0)
        }
        _ = time(large: false)
        let without = time(large: false), with = time(large: true)
        #expect(with < without * 4, "lookups and frees in one block: \(Int(without / 1e6)) ms alone, \(Int(with / 1e6)) ms with a 64 MiB registration elsewhere")
    }
}
