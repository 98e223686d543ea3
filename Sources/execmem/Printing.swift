// Text renderings of the reports: aligned tables a person can read at a glance.

import ExecMem
import ExecMemSystem
import ExecMemTools

func mib(_ bytes: Int) -> String {
    let m = Double(bytes) / Double(1 << 20)
    return m >= 100 ? "\(Int(m.rounded())) MiB" : "\((m * 100).rounded() / 100) MiB"
}



/// Prints rows as columns padded to their widest cell; the first row is the header.
func printTable(_ rows: [[String]], indent: String = "  ") {
    guard let first = rows.first else { return }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    // Columns of figures are right-aligned, columns of words left-aligned.
    let numeric = (0..<first.count).map { i in rows.dropFirst().allSatisfy { $0[i].first.map { $0.isNumber || $0 == "-" } ?? true } }
    for row in rows {
        let cells = row.enumerated().map { i, c in numeric[i] ? c.leftPadding(widths[i]) : c.padding(widths[i]) }
        print(indent + cells.joined(separator: "  "))
    }
}

extension String {
    func padding(_ n: Int) -> String { self + String(repeating: " ", count: max(0, n - count)) }
    func leftPadding(_ n: Int) -> String { String(repeating: " ", count: max(0, n - count)) + self }
}

func printDemo(_ r: DemoReport) {
    print("ExecMem demo: \(r.functionsInstalled) generated x86-64 functions across BPF, probe, trace and module-text kinds")
    print("  backend \(r.backend), \(r.layout)")
    print("  range \(hex(r.rangeBase)) + \(mib(r.rangeSize)): \(r.placement)")
    print("  reaches the executable with rel32: \(r.primaryReachesExecutable ? "yes" : "no"); farthest function to executable text: \(mib(Int(r.maxDistanceToExecutableText)))")
    print("")
    print("  ran \(r.functionsRun) calls, \(r.wrongResults) wrong results; \(r.hostCallsDirect) functions call the host with call rel32 (\(r.hostCallsIndirect) indirectly), \(r.rodataTables) rodata tables read RIP-relative")
    print("  freed \(r.functionsFreed): freed text reads back as int3: \(r.freedTextIsTrap ? "yes" : "NO")")
    print("  sealed \(r.sealedAllocations) ro-after-init allocations; writes after sealing refused: \(r.writesAfterSealRefused)")
    let b = r.bpf
    print("  eBPF: JIT-compiled \(b.programsCompiled) programs of real sizes (\(Int(b.microsecondsPerCompile.rounded())) us each): \(mib(b.codeBytes)) of x86-64 in \(b.blocksUsed) shared 2 MiB blocks, where one page per program would take \(b.pagesIfOnePerProgram) pages (\(mib(b.pagesIfOnePerProgram * 4096)))")
    print("        ran \(b.programsRun), \(b.wrongResults) wrong; unloaded \(b.programsUnloaded), their code reads back as int3: \(b.unloadedCodeIsTrap ? "yes" : "NO"); hash-map program agrees with the host: \(b.mapProgramAgrees ? "yes" : "NO")")
    let m = r.module
    print("  module: demo_module.o loaded by type; demo_entry(16) = \(m.result) (expected \(m.expected)); \(m.veneers == 0 ? "host calls are direct call rel32" : "\(m.veneers) host calls through veneers"); init memory freed: \(m.initAllocationsFreed) allocations; ro-after-init sealed: \(m.roAfterInitSealed ? "yes" : "NO"); unloaded cleanly: \(m.unloadedCleanly ? "yes" : "NO")")
    for s in m.sections { print("        \(s.type.padding(11)) \(s.protection)  \(hex(s.address))  \(String(s.size).leftPadding(5))  \(s.name)") }
    let p = m.probes
    print("  probes: \(p.patchableFunctions) patchable entries; entry+exit hook on demo_entry saw n = \(p.hookSawArgument) and returned \(p.hookSawResult), result \(p.resultWhileHooked == p.expected ? "unchanged" : "CHANGED"), entry bytes restored: \(p.entryBytesRestored ? "yes" : "NO")")
    print("        live patch to demo_entry_v2: \(p.livePatchedResult) (expected \(p.expectedPatched)), reverted: \(p.revertedResult); instruction probe at demo_entry+\(p.probeOffset) fired \(p.probeHits) times, result \(p.resultWhileProbed == p.expected ? "unchanged" : "CHANGED")")
    print("")
    var rows = [["type", "blocks", "allocations", "used", "requested", "free", "largest free", "fragmentation", "2 MiB pages"]]
    for t in r.types {
        rows.append([t.type.description, "\(t.blocks)", "\(t.allocations)", mib(t.usedBytes), mib(t.requestedBytes),
                     mib(t.freeBytes), mib(t.largestFreeRun), percent(t.fragmentation), t.reservedBytes == 0 ? "-" : percent(t.hugePageCoverage)])
    }
    printTable(rows)
    print("")
    rows = [["kind", "type", "allocations", "requested", "used"]]
    for k in r.kinds where k.allocations > 0 {
        rows.append([k.kind.description, k.type.description, "\(k.allocations)", mib(k.requestedBytes), mib(k.usedBytes)])
    }
    printTable(rows)
    print("")
    print("  text huge-page coverage (smaps): \(percent(r.hugePageCoverage))")
    print("  W^X scan of /proc/self/maps: \(r.writableExecutableMappings) writable+executable mappings")
    print("  invariants: \(r.invariantViolations.isEmpty ? "hold" : r.invariantViolations.joined(separator: "; "))")
    for note in r.notes.dropFirst() { print("  note: \(note)") }
    print("  \(r.ok ? "OK" : "FAILED") in \((r.seconds * 1000).rounded() / 1000) s")
}

func printDoctor(_ r: DoctorReport) {
    let k = r.kernel
    print("ExecMem doctor: kernel \(k.kernelRelease)")
    printTable([
        ["feature", "state"],
        ["transparent huge pages", k.thpMode],
        ["shmem transparent huge pages", k.shmemThpMode],
        ["memfd_create", k.memfdWorks ? "works" : "unavailable"],
        ["MADV_COLLAPSE on a memfd r-x view", k.collapseOnMemfd ? "works (2 MiB page read back from smaps)" : "no: \(k.collapseDetail)"],
        ["MADV_COLLAPSE on anonymous memory", k.collapseOnAnonymous ? "works" : "no"],
        ["hugetlb pages (total/free, size)", "\(k.hugetlbPagesTotal)/\(k.hugetlbPagesFree), \(k.hugetlbPageSize / 1024) kB"],
        ["membarrier", k.membarrier.rawValue],
        ["vm.max_map_count", k.maxMapCount.map(String.init) ?? "unknown"],
    ])
    print("")
    print("  range (\(mib(r.rangeSize))): \(r.rangeBase.map(hex) ?? "-") \(r.rangePlacement)")
    if let e = r.executable {
        print("  executable \(e.path): \(hex(e.start))-\(hex(e.end)), text \(hex(e.textStart))-\(hex(e.textEnd))")
    }
    print("  range and executable span \(r.maxDistanceToExecutable.map { mib(Int($0)) } ?? "-"); rel32 reach: \(r.rangeReachesExecutable ? "yes" : "no")")
    print("  a full range needs \(r.mappingsNeededForFullRange) mappings")
    print("")
    print("What ExecMem will do:")
    for line in r.plan { print("  - \(line)") }
}

func printBench(_ results: [BenchResult]) {
    var rows = [["benchmark", "figure", "value", "baseline", "baseline value", "ratio"]]
    for r in results {
        rows.append([r.benchmark, r.figure, format(r.value, r.unit), r.baseline, format(r.baselineValue, r.unit), "\((r.ratio * 100).rounded() / 100)x"])
    }
    printTable(rows)
    for note in Set(results.map { "\($0.benchmark): \($0.notes)" }).sorted() { print("  \(note)") }
}

func format(_ value: Double, _ unit: String) -> String {
    switch unit {
    case "bytes": return mib(Int(value))
    case "ops/s": return "\(Int(value.rounded())) ops/s"
    default: return "\((value * 100).rounded() / 100) \(unit)"
    }
}
