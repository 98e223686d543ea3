// The demo, doctor and benchmarks as values: what `execmem` prints comes from these, so they are
// checked here on real memory (a small demo, a short benchmark run).

import ExecMem
import ExecMemSystem
@testable import ExecMemTools
import Foundation
import Testing

@Suite struct ToolsTests {
    @Test func demoRunsEverythingAndReportsCleanly() throws {
        var config = ExecMemConfiguration()
        config.rangeSize = 128 << 20
        config.fallbackSize = 32 << 20
        let report = try Demo.run(functions: 600, bpfPrograms: 400, allocator: ExecMemAllocator(config))
        #expect(report.ok, "\(report)")
        #expect(report.functionsInstalled == 600)
        #expect(report.functionsRun == 600 + 400, "every function once, the 400 kept ones again")
        #expect(report.wrongResults == 0)
        #expect(report.hostCallsDirect + report.hostCallsIndirect == 150)
        #expect(report.writableExecutableMappings == 0)
        #expect(report.freedTextIsTrap)
        #expect(report.invariantViolations.isEmpty)
        #expect(report.writesAfterSealRefused == report.sealedAllocations)
        #expect(report.bpf.programsRun == 400 && report.bpf.wrongResults == 0)
        #expect(report.bpf.blocksUsed <= 2 && report.bpf.pagesIfOnePerProgram >= 400)
        #expect(report.bpf.unloadedCodeIsTrap && report.bpf.mapProgramAgrees)
        #expect(report.module.ok && report.module.result == report.module.expected)
        #expect(report.module.veneers == 0, "the module reaches the host with call rel32")
        #expect(report.module.sections.contains { $0.type == "text" && $0.protection == "r-x" })
        #expect(report.module.sections.contains { $0.type == "roAfterInit" && $0.protection == "r--" })
        if KernelFeatures.probe().collapseOnMemfd {
            #expect(report.hugePageCoverage >= 0.99)
        }
        // The JSON form carries the fields scripts read.
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(report)) as? [String: Any]
        for key in ["hugePageCoverage", "writableExecutableMappings", "functionsRun", "types", "kinds"] {
            #expect(json?[key] != nil, "missing \(key)")
        }
        #expect((json?["functionsRun"] as? Int) == report.functionsRun)
    }

    @Test func demoFunctionsComputeWhatTheyClaim() throws {
        let mem = try ExecMemAllocator({ var c = ExecMemConfiguration(); c.rangeSize = 32 << 20; c.fallbackSize = 0; return c }())
        let table = try mem.allocate(.moduleRodata, size: 4)
        try mem.write(withUnsafeBytes(of: Int32(-7).littleEndian) { Array($0) }, to: table)
        let functions: [DemoFunction] = [.add(5), .mulAdd(-3, 11), .callHost(100), .readTable(table.address, -7)]
        for f in functions {
            for size in [32, 61, 300] {
                let a = try mem.allocate(.bpf, size: size)
                let code = f.code(size: size, at: a.address)
                #expect(code.count == size)
                try mem.write(code, to: a)
                for x: Int32 in [0, 1, -1, 12345, .max] { #expect(callFunction(a.address, x) == f.expected(x), "\(f) size \(size) x \(x)") }
            }
        }
        #expect(nopPadding(0).isEmpty && nopPadding(23).count == 23)
    }

    @Test func doctorDescribesThisKernel() throws {
        let r = Doctor.run()
        let release = try Sys.readText("/proc/sys/kernel/osrelease")
        #expect(release.hasPrefix(r.kernel.kernelRelease))
        #expect(["always", "madvise", "never"].contains(r.kernel.thpMode))
        #expect(r.kernel.memfdWorks)
        #expect(r.rangeBase != nil)
        #expect(r.rangeReachesExecutable == (r.maxDistanceToExecutable.map { $0 <= UInt(Int32.max) } ?? false))
        #expect(!r.plan.isEmpty)
        _ = try JSONEncoder().encode(r)
    }

    @Test func benchmarksProduceFiguresBesideTheirBaselines() throws {
        let results = try Bench.run("alloc", scale: 0.01)
        #expect(results.count == 3)
        for r in results {
            #expect(r.value > 0 && r.baselineValue > 0 && abs(r.ratio - r.value / r.baselineValue) < 1e-9)
        }
        #expect(throws: BenchError.self) { try Bench.run("nonsense") }
    }

    @Test func fleetSizesFollowThePublishedDistribution() {
        var sizes = FleetSizes(seed: 3)
        let sample = (0..<20_000).map { _ in sizes.next() }
        let under500 = Double(sample.filter { $0 < 500 }.count) / Double(sample.count)
        let under2k = Double(sample.filter { $0 < 2048 }.count) / Double(sample.count)
        #expect(abs(under500 - 0.5) < 0.02)
        #expect(abs(under2k - 0.75) < 0.02)
        #expect(sample.allSatisfy { $0 >= 64 && $0 <= 16384 })
    }
}
