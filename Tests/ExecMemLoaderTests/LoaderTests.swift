// The loader in process: protections by type read back from /proc/self/maps, init memory released,
// ro-after-init sealed, exports between modules, repeated loads and unloads in any order, and init
// holes reused by small text allocations.

import ExecMemTestSupport
import ExecMem
@testable import ExecMemLoader
import ExecMemSystem
import Foundation
import Testing

@Suite(.enabled(if: !compilers.isEmpty, "needs a C compiler")) struct LoaderTests {
    func protection(_ address: UInt) throws -> String? {
        try ProcMaps.read().first { $0.start <= address && address < $0.end }?.protection
    }

    @Test(arguments: [["-O2"], ["-O0", "-fPIC"]])
    func sectionsGetTheProtectionOfTheirType(flags: [String]) throws {
        let dir = try scratch()
        let object = try compile(compilers[0], "types", in: dir, flags: flags)
        let mem = try testAllocator()
        let module = try ModuleLoader(allocator: mem).load(files: [object])
        let types = Dictionary(module.sections.map { ($0.section, $0.type) }, uniquingKeysWith: { a, _ in a })
        #expect(types[".text"] == "text" && types[".data..ro_after_init"] == "roAfterInit")
        #expect(types[".init.text"] == "initText" && types[".init.data"] == "initData")
        #expect(module.sections.contains { $0.section.hasPrefix(".rodata") && $0.type == "rodata" })
        for (type, prot) in [("text", "r-x"), ("rodata", "r--"), ("data", "rw-"), ("roAfterInit", "r--")] {
            let a = try #require(module.allocations[type], "\(type)")
            #expect(try protection(a.address) == prot, "\(type)")
        }
        // Init ran (the constructor wrote ro-after-init data, using init code and data), then init
        // memory was released and ro-after-init sealed.
        typealias IntFunction = @convention(c) () -> Int32
        let read = unsafeBitCast(UnsafeRawPointer(bitPattern: try #require(module.address(of: "read_after_init")))!, to: IntFunction.self)
        #expect(read() == 5 + 9 + 1)
        #expect(module.freedInitAllocations.count == 2)
        for a in module.freedInitAllocations { #expect(mem.allocation(at: a.address) == nil, "init memory \(a) was freed") }
        #expect(mem.isSealed(try #require(module.allocations["roAfterInit"])))
        let bump = unsafeBitCast(UnsafeRawPointer(bitPattern: try #require(module.address(of: "bump")))!, to: IntFunction.self)
        #expect(bump() == 2 && bump() == 3)
        #expect(try ProcMaps.writableExecutable().isEmpty)
        module.unload()
        #expect(mem.statistics(readBack: false).total.allocations == 0)
        #expect(mem.checkInvariants(deep: true) == [])
    }

    @Test func initHolesAreReusedBySmallTextAllocations() throws {
        let dir = try scratch()
        let object = try compile(compilers[0], "types", in: dir, flags: ["-O2"])
        let mem = try testAllocator()
        let module = try ModuleLoader(allocator: mem).load(files: [object])
        let hole = try #require(module.freedInitAllocations.first { $0.type == .text })
        let probe = try mem.allocate(.probes, size: 32)
        #expect(probe.address == hole.address, "the probe slot lands in the freed init text")
        #expect(UnsafeRawBufferPointer(start: hole.pointer, count: hole.capacity).dropFirst(64).allSatisfy { $0 == 0xCC })
        try mem.free(probe)
        module.unload()
    }

    @Test func modulesExportToEachOtherAndUnloadInAnyOrder() throws {
        let dir = try scratch()
        let lib = try compile(compilers[0], "lib", in: dir, flags: ["-O2"])
        let main = try compile(compilers[0], "main", in: dir, flags: ["-O2"])
        let mem = try testAllocator()
        let loader = ModuleLoader(allocator: mem)
        let before = mem.statistics(readBack: false).total.allocations
        // lib first; main resolves shared_counter, scale... from lib's exports.
        let first = try loader.load(files: [lib])
        let second = try loader.load(files: [lib], name: "lib again")  // the same objects twice
        let program = try loader.load(files: [main])
        #expect(first.address(of: "greeting") != second.address(of: "greeting"))
        typealias Greeting = @convention(c) () -> UnsafePointer<CChar>
        let g = unsafeBitCast(UnsafeRawPointer(bitPattern: try #require(first.address(of: "greeting")))!, to: Greeting.self)
        #expect(String(cString: g()) == "greetings")
        first.unload()  // out of order: the first loaded goes first
        program.unload()
        second.unload()
        #expect(mem.statistics(readBack: false).total.allocations == before)
        #expect(mem.checkInvariants(deep: true) == [])
    }
}

let nearHostFunction: @convention(c) (Int) -> Int = { $0 &+ 1 }

@Suite(.enabled(if: !compilers.isEmpty, "needs a C compiler")) struct ReachTests {
    func callLoop(_ loader: ModuleLoader, dir: String) throws -> (LoadedModule, Int) {
        try """
        extern long host_inc(long);
        long loop(long n) { long s = 0; for (long i = 0; i < n; i++) s = host_inc(s); return s; }
        """.write(toFile: "\(dir)/loop.c", atomically: true, encoding: .utf8)
        try run(compilers[0], ["-O2", "-c", "\(dir)/loop.c", "-o", "\(dir)/loop.o"])
        loader.provide("host_inc", UInt(bitPattern: unsafeBitCast(nearHostFunction, to: UnsafeRawPointer.self)))
        let m = try loader.load(files: ["\(dir)/loop.o"])
        typealias Loop = @convention(c) (Int) -> Int
        return (m, unsafeBitCast(UnsafeRawPointer(bitPattern: m.address(of: "loop")!)!, to: Loop.self)(1000))
    }

    @Test func hostFunctionsInReachAreCalledDirectlyAndOthersThroughVeneers() throws {
        let dir = try scratch()
        // Default placement: the range is near the executable, so a call to it is a call rel32.
        let (near, a) = try callLoop(ModuleLoader(allocator: try testAllocator()), dir: dir)
        #expect(a == 1000 && near.callsThroughVeneers == 0)
        // A range anywhere is (almost always) out of reach: the call goes through a veneer and a GOT slot.
        var c = ExecMemConfiguration()
        c.rangeSize = 16 << 20
        c.fallbackSize = 0
        c.placement = .anywhere
        let farAllocator = try ExecMemAllocator(c)
        let (far, b) = try callLoop(ModuleLoader(allocator: farAllocator), dir: dir)
        #expect(b == 1000)
        if !farAllocator.primaryReachesExecutable { #expect(far.callsThroughVeneers > 0) }
        near.unload()
        far.unload()
    }
}
