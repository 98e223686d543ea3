// The simulator: hand-computed small cases give exactly the expected counts for every policy, runs are
// deterministic for a seed, totals reconcile with the data, and bad data or configuration is a clear
// error.

@testable import ExecMem
@testable import ExecMemSim
import Foundation
import FoundationXML
import Testing

/// Two modules of known sizes (bytes per type).
let smallData = DataSet(modules: [
    ModuleRow(name: "m1", text: 5000, rodata: 3000, roAfterInit: 100, data: 2000, initText: 100, initData: 50, initRodata: 0),
    ModuleRow(name: "m2", text: 4096, rodata: 0, roAfterInit: 0, data: 8192, initText: 0, initData: 0, initRodata: 0),
], bpfSizes: [10])

func smallConfiguration() -> SimConfiguration {
    var c = SimConfiguration()
    c.rangeSize = 64 << 20
    c.physicalSize = 1 << 30
    c.framePlacement = .contiguous  // every frame from one large page: splits are exact
    c.workload.modules = 2
    return c
}

@Suite struct SimulatorTests {
    @Test func legacyCountsByHand() throws {
        let c = smallConfiguration()
        let r = try Simulation.run(.legacy, try Workload.make(.boot, data: smallData, c.workload), data: smallData, c)
        let m = r.final
        // Pages: m1 text 2, rodata 1, ro-after-init 1, data 1; m2 text 1, data 2 (init pages freed).
        #expect(m.smallBytes == [3 * 4096, 1 * 4096, 3 * 4096, 1 * 4096])
        #expect(m.hugeBytes == [0, 0, 0, 0])
        #expect(m.textEntries == 3)
        #expect(m.reservedBytes == 8 * 4096)
        #expect(m.usedBytes == 5000 + 3000 + 100 + 2000 + 4096 + 8192)
        #expect(m.rangeUsedBytes == 14 * 4096, "9 pages (with guards) for m1, 5 for m2")
        #expect(m.directMapSplits == 1, "all frames share one large page")
        #expect(m.pmdSplits == 0)
        #expect(r.modulesLoaded == 2 && r.moduleLoadFailures == 0)
    }

    @Test(arguments: [PolicyKind.split, .typed])
    func corePoliciesCountByHand(policy: PolicyKind) throws {
        let c = smallConfiguration()
        let r = try Simulation.run(policy, try Workload.make(.boot, data: smallData, c.workload), data: smallData, c)
        let m = r.final
        let block = 2 << 20
        // One 2 MiB block each for text, rodata and data; one 4 KiB-page block for ro-after-init
        // with one page touched and sealed.
        #expect(m.hugeBytes == [block, block, block, 0])
        #expect(m.smallBytes == [0, 0, 0, 4096])
        #expect(m.textEntries == 1)
        #expect(m.reservedBytes == 3 * block + 4096)
        #expect(m.usedBytes == 5000 + 3000 + 100 + 2000 + 4096 + 8192)
        #expect(m.rangeUsedBytes == 4 * block)
        #expect(m.directMapSplits == 1, "the sealed ro-after-init page")
        #expect(m.pmdSplits == 0)
        // Where the blocks went: split range keeps each type in its sub-range (of 32 slots).
        let map = r.maps.last!
        let slots = map.enumerated().filter { $0.element >= 0 }.map { ($0.offset, Int($0.element)) }
        #expect(slots.count == 4)
        if policy == .split {
            for (slot, type) in slots {
                #expect(Pool.window(for: ExecMemType(rawValue: type)!, slots: 32, layout: .defaultSplit).contains(slot))
            }
        } else {
            #expect(slots.contains { $0 == (0, 0) }, "text from the bottom")
            #expect(slots.contains { $0.0 == 31 }, "data from the top")
        }
    }

    @Test func bpfPackingByHand() throws {
        // 100 programs of 10 instructions: 124 bytes each, 2 chunks.
        var c = smallConfiguration()
        c.workload.bpfEvents = 100
        c.workload.bpfLive = 1000
        let w = Workload(kind: .bpf, events: (1...100).map { .add(cls: .bpf, bytes: 124, id: $0) })
        let legacy = try Simulation.run(.legacy, w, data: smallData, c).final
        #expect(legacy.textEntries == 100 && legacy.reservedBytes == 100 * 4096 && legacy.directMapSplits == 1)
        for p in [PolicyKind.legacyPack, .split, .typed] {
            let m = try Simulation.run(p, w, data: smallData, c).final
            #expect(m.textEntries == 1 && m.reservedBytes == 2 << 20 && m.directMapSplits == 0, "\(p)")
            #expect(m.usedBytes == 12_400)
        }
    }

    @Test func deterministicForASeed() throws {
        let data = try DataSet.load()
        var c = SimConfiguration()
        c.workload.modules = 60
        c.workload.bpfEvents = 2000
        c.workload.probeEvents = 1000
        c.workload.churnOperations = 200
        let a = try SimReport.json(try Simulation.runAll(data: data, c), includeMaps: true)
        let b = try SimReport.json(try Simulation.runAll(data: data, c), includeMaps: true)
        #expect(a == b)
        c.workload.seed = 2
        let other = try SimReport.json(try Simulation.runAll(workloads: [.boot], data: data, c))
        #expect(other != (try SimReport.json(try Simulation.runAll(workloads: [.boot], data: data, { var d = c; d.workload.seed = 1; return d }()))))
    }

    @Test func totalsReconcileWithTheData() throws {
        let data = try DataSet.load()
        #expect(data.modules.count == 4023 && data.bpfSizes.count == 499)
        var c = SimConfiguration()
        c.workload.modules = 300
        let w = try Workload.make(.boot, data: data, c.workload)
        let rows = w.events.compactMap { e -> ModuleRow? in if case let .load(row, _) = e { return data.modules[row] } else { return nil } }
        #expect(rows.count == 300 && Set(rows.map(\.name)).count == 300, "300 distinct modules sampled")
        for p in PolicyKind.allCases {
            let r = try Simulation.run(p, w, data: data, c)
            #expect(r.loadedBytes["text"] == rows.reduce(0) { $0 + $1.text }, "\(p)")
            #expect(r.loadedBytes["rodata"] == rows.reduce(0) { $0 + $1.rodata })
            #expect(r.loadedBytes["data"] == rows.reduce(0) { $0 + $1.data })
            #expect(r.loadedBytes["initText"] ?? 0 == rows.reduce(0) { $0 + $1.initText })
            #expect(r.final.usedBytes == rows.reduce(0) { $0 + $1.coreBytes }, "init memory freed, core memory live")
        }
        // The whole data set: the summary's totals (text 68.6 MB; data with symbol tables 43.8 MB).
        let text = data.modules.reduce(0) { $0 + $1.text }, dataBytes = data.modules.reduce(0) { $0 + $1.data }
        #expect(abs(Double(text) / 1e6 - 68.6) < 0.1)
        #expect(abs(Double(dataBytes) / 1e6 - 43.8) < 0.1)
        let plain = try DataSet.load(withSymbolTables: false)
        #expect(abs(Double(plain.modules.reduce(0) { $0 + $1.data }) / 1e6 - 19.2) < 0.1)
    }

    @Test func badDataIsAClearError() throws {
        let dir = NSTemporaryDirectory() + "execmem-sim-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(throws: SimError.io("no modules.csv in \(dir)")) { try DataSet.load(directory: dir) }
        let header = "module,text,rodata,ro_after_init,data,init_text,init_data,init_rodata\n"
        try "file,insn_slots\na,3\n".write(toFile: dir + "/bpf_programs.csv", atomically: true, encoding: .utf8)
        let cases: [(String, Int, String)] = [
            (header + "m,1,2,3,4,5,6\n", 2, "7 fields"),
            (header + "m,1,2,x,4,5,6,7\n", 2, "column 'ro_after_init' is 'x'"),
            (header + "m,1,2,3,4,5,6,7\nn,1,2,3,-4,5,6,7\n", 3, "column 'data' is '-4'"),
            ("module,text\nm,1\n", 1, "missing column 'rodata'"),
            (header, 2, "no rows"),
            // Sizes that would overflow the simulator's sums and page counts (they trapped).
            (header + "m,9223372036854775807,2,3,4,5,6,7\n", 2, "column 'text' is 9223372036854775807, more than the 1073741824"),
        ]
        for (text, line, reason) in cases {
            try text.write(toFile: dir + "/modules.csv", atomically: true, encoding: .utf8)
            #expect { try DataSet.load(directory: dir) } throws: { e in
                guard case let .data(file, l, why)? = e as? SimError else { return false }
                return file == "modules.csv" && l == line && why.contains(reason)
            }
        }
    }

    @Test func impossibleConfigurationsAreRefused() throws {
        var c = SimConfiguration()
        c.rangeSize = 2 << 20  // smaller than one block per type
        #expect { try Simulation.run(.typed, Workload(kind: .boot, events: []), data: smallData, c) } throws: { e in
            guard case let .configuration(what)? = e as? SimError else { return false }
            return what.contains("8 MiB")
        }
        c = SimConfiguration()
        c.physicalSize = 1 << 20
        #expect(throws: SimError.self) { try Simulation.run(.legacy, Workload(kind: .boot, events: []), data: smallData, c) }
        c = SimConfiguration()
        c.workload.modules = 3
        #expect { try Workload.make(.boot, data: smallData, c.workload) } throws: { e in
            guard case let .configuration(what)? = e as? SimError else { return false }
            return what.contains("3 modules requested, the data has 2")
        }
    }

    @Test func aFullRangeFailsLoadsCleanly() throws {
        var c = smallConfiguration()
        c.rangeSize = 8 << 20
        let big = DataSet(modules: (0..<8).map { ModuleRow(name: "b\($0)", text: 1_500_000, rodata: 10, roAfterInit: 0, data: 10, initText: 0, initData: 0, initRodata: 0) }, bpfSizes: [1])
        c.workload.modules = 8
        for p in PolicyKind.allCases {
            let r = try Simulation.run(p, try Workload.make(.boot, data: big, c.workload), data: big, c)
            #expect(r.moduleLoadFailures > 0 && r.modulesLoaded + r.moduleLoadFailures == 8, "\(p)")
            #expect(r.final.usedBytes == r.modulesLoaded * 1_500_020, "failed loads gave everything back")
        }
    }

    @Test func picturesAreWellFormedSVG() throws {
        let c = smallConfiguration()
        let results = try Simulation.runAll(workloads: [.boot, .mixed], data: smallData, { var d = c; d.workload.bpfEvents = 200; d.workload.probeEvents = 100; d.workload.churnOperations = 2; return d }())
        let dir = NSTemporaryDirectory() + "execmem-svg-\(UInt32.random(in: 0...UInt32.max))"
        let files = try SimSVG.write(results, to: dir)
        #expect(files.contains("map-boot.svg") && files.contains("splits.svg") && files.contains("splits-over-time.svg"))
        for f in files {
            let doc = try XMLDocument(contentsOf: URL(fileURLWithPath: dir + "/" + f))
            #expect(doc.rootElement()?.name == "svg", "\(f)")
        }
    }
}
