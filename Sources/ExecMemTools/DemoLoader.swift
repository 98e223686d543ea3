// The demo's module-loader part: a small built-in relocatable object (Resources/module) loaded into
// the demo's allocator, its sections laid out by type, its constructor run, init memory freed,
// ro-after-init sealed, its entry called (it calls back into the host with call rel32), hooked,
// live-patched and probed (DemoProbes.swift), then unloaded.

import ExecMem
import ExecMemLoader
import ExecMemSystem
import Foundation

/// The host function the module calls: x * 2 + 1.
let demoModuleHost: @convention(c) (Int) -> Int = { x in x * 2 + 1 }

public struct LoaderDemoReport: Codable, Sendable {
    public struct Section: Codable, Sendable {
        public var name: String
        public var type: String
        public var address: UInt
        public var size: Int
        /// The protection /proc/self/maps shows there while the module is loaded.
        public var protection: String
    }

    public var sections: [Section]
    public var result: Int
    public var expected: Int
    public var initAllocationsFreed: Int
    public var roAfterInitSealed: Bool
    /// Calls to the host that needed a veneer (0: every call is a direct call rel32).
    public var veneers: Int
    public var unloadedCleanly: Bool
    /// Hooks, a live patch and an instruction probe on the loaded module.
    public var probes: ProbesDemoReport
    public var ok: Bool { result == expected && initAllocationsFreed > 0 && roAfterInitSealed && unloadedCleanly && probes.ok }

    static func run(allocator mem: ExecMemAllocator) throws -> LoaderDemoReport {
        let path = resourceDirectory + "/module/demo_module.o"
        guard let bytes = FileManager.default.contents(atPath: path) else { throw BenchError("the built-in module is missing at \(path)") }
        let loader = ModuleLoader(allocator: mem)
        loader.provide("host_scale", UInt(bitPattern: unsafeBitCast(demoModuleHost, to: UnsafeRawPointer.self)))
        let before = mem.statistics(readBack: false).total.allocations
        let module = try loader.load([LoaderInput(name: "demo_module.o", bytes: Array(bytes))], name: "demo_module.o")
        let maps = (try? ProcMaps.read()) ?? []
        let sections = module.sections.map { s in
            Section(name: s.section, type: s.type, address: s.address, size: s.size,
                    protection: maps.first { $0.start <= s.address && s.address < $0.end }?.protection ?? "-")
        }
        typealias Entry = @convention(c) (Int) -> Int
        let entry = unsafeBitCast(UnsafeRawPointer(bitPattern: module.address(of: "demo_entry")!)!, to: Entry.self)
        let result = entry(16)
        // What the module computes, in Swift: table[i] = i * 7 + 1 + 100.
        let weights = [3, 1, 4, 1, 5, 9, 2, 6]
        let expected = (0..<16).reduce(0) { $0 + demoModuleHost((($1 * 7 + 1) + 100) * weights[$1 % 8]) }
        let sealed = module.allocations["roAfterInit"].map { mem.isSealed($0) } ?? false
        let freed = module.freedInitAllocations.count
        let veneers = module.callsThroughVeneers
        let probes = try ProbesDemoReport.run(module, expected: expected)
        module.unload()
        let after = mem.statistics(readBack: false).total.allocations
        return LoaderDemoReport(sections: sections, result: result, expected: expected, initAllocationsFreed: freed,
                                roAfterInitSealed: sealed, veneers: veneers, unloadedCleanly: after == before, probes: probes)
    }
}
