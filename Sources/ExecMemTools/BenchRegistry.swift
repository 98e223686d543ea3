// `execmem bench registry`: what the code registry's sinks cost.
//
//   per sink     register + unregister of 10,000 small functions (real code in the allocator, with a
//                synthesized frame each), with no sink, then each sink alone
//   10,000 BPF   loading (verify + JIT + install + registration) 10,000 programs of real sizes, one
//                load at a time as a client does, every sink on against every sink off; runs
//                interleaved, the median of each; goal <= 1.2x
//   GDB          announcements (`__jit_debug_register_code` calls) and time as blocks grow, for a
//                fixed number of functions and for a fixed number per block: one per block per batch
//
// Sinks are per process and only switch on, so every measurement runs in a child (this executable,
// `EXECMEM_BENCH_REGISTRY=<what>:<sinks>`), which prints its figures as JSON; the parent interleaves
// the children and reports ratios.

import ExecMem
@_spi(Benchmark) import ExecMemBPF
import Foundation

extension Bench {
    static let registryChildKey = "EXECMEM_BENCH_REGISTRY"
    static let sinkNames: [(String, CodeSinks)] = [("perf map", .perfMap), ("jitdump", .jitdump), ("gdb", .gdb), ("unwind", .unwind), ("crash table", .crashTable)]

    static func registry(scale: Double) throws -> [BenchResult] {
        if let child = ProcessInfo.processInfo.environment[registryChildKey] { return try registryChild(child, scale: scale) }
        var out: [BenchResult] = []
        // Per registration, each sink alone against none.
        func perRegistration(_ sinks: String) throws -> (Double, Double) {
            let r = try spawnChild("register:\(sinks)", scale: scale)
            return (r[0].value, r[1].value)
        }
        let rounds = max(3, Int(5 * scale.squareRoot()))
        var off: [(Double, Double)] = [], each: [String: [(Double, Double)]] = [:]
        for _ in 0..<rounds {
            off.append(try perRegistration(""))
            for (name, _) in sinkNames { each[name, default: []].append(try perRegistration(name)) }
        }
        let offRegister = median(off.map(\.0)), offUnregister = median(off.map(\.1))
        for (name, _) in sinkNames {
            let r = median(each[name]!.map(\.0)), u = median(each[name]!.map(\.1))
            out.append(BenchResult(benchmark: "registry", figure: "register, \(name) on", unit: "ns/function", value: r,
                                   baseline: "every sink off", baselineValue: offRegister, ratio: offRegister / r,
                                   notes: String(format: "unregister %.0f ns (off: %.0f ns); 10,000 functions of 64 B, one frame each, median of %d", u, offUnregister, rounds)))
        }
        // 10,000 eBPF programs, every sink on against off, interleaved.
        var loadsOff: [Double] = [], loadsOn: [Double] = [], unregistered = false
        for _ in 0..<rounds {
            let a = try spawnChild("load:", scale: scale), b = try spawnChild("load:all", scale: scale)
            loadsOff.append(a[0].value); loadsOn.append(b[0].value)
            unregistered = unregistered || b[0].notes.contains("unregistered")
        }
        let on = median(loadsOn), offLoad = median(loadsOff)
        let programs = Int((try spawnChild("count:", scale: scale))[0].value)
        out.append(BenchResult(benchmark: "registry", figure: "load \(programs) eBPF programs, every sink on", unit: "s", value: on,
                               baseline: "every sink off", baselineValue: offLoad, ratio: offLoad / on,
                               notes: String(format: "on/off = %.3fx (goal <= 1.2x); medians of %d interleaved runs; ", on / offLoad, rounds)
                                   + (unregistered ? "THE BPF CLIENT DID NOT REGISTER ITS PROGRAMS" : "registered by the BPF client")))
        // GDB: announcements against blocks.
        for row in try spawnChild("gdb:gdb", scale: scale) { out.append(row) }
        return out
    }

    private static func median(_ x: [Double]) -> Double {
        let s = x.sorted()
        return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// Runs this executable as `bench registry --json` in child mode and decodes what it prints.
    private static func spawnChild(_ what: String, scale: Double) throws -> [BenchResult] {
        let dir = NSTemporaryDirectory() + "execmem-bench-registry-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        p.arguments = ["bench", "registry", "--json", "--scale", "\(scale)"]
        var env = ProcessInfo.processInfo.environment
        env[registryChildKey] = what
        env["JITDUMPDIR"] = dir
        env["EXECMEM_UNWIND"] = "0"
        env["EXECMEM_PERF"] = nil; env["EXECMEM_GDB"] = nil
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try? FileManager.default.removeItem(atPath: "/tmp/perf-\(p.processIdentifier).map")
        guard p.terminationStatus == 0, let rows = try? JSONDecoder().decode([BenchResult].self, from: data), !rows.isEmpty else {
            throw BenchError("the registry benchmark's child (\(what)) failed with status \(p.terminationStatus)")
        }
        return rows
    }

    // MARK: - Children

    private static func registryChild(_ spec: String, scale: Double) throws -> [BenchResult] {
        let parts = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let what = parts[0], names = parts.count > 1 ? parts[1] : ""
        var sinks: CodeSinks = names == "all" ? .all : []
        for (name, s) in sinkNames where names.split(separator: ",").contains(Substring(name)) { sinks.formUnion(s) }
        if !sinks.isEmpty { CodeRegistry.shared.enable(sinks) }
        func row(_ figure: String, _ value: Double, _ notes: String = "") -> BenchResult {
            BenchResult(benchmark: "registry-child", figure: figure, unit: "", value: value, baseline: "", baselineValue: 0, ratio: 0, notes: notes)
        }
        switch what {
        case "register":
            let (r, u) = try registerCost(count: 10_000)
            return [row("register", r), row("unregister", u)]
        case "count":
            return [row("programs", Double(bpfPrograms(scale)))]
        case "load":
            let (seconds, registered) = try loadPrograms(bpfPrograms(scale))
            return [row("load", seconds, registered ? "client" : "unregistered")]
        case "gdb":
            return gdbAnnouncements(scale: scale)
        default:
            throw BenchError("unknown registry child '\(what)'")
        }
    }

    private static func bpfPrograms(_ scale: Double) -> Int { scale >= 0.5 ? 10_000 : max(1_000, Int(10_000 * scale * 2)) }

    /// Nanoseconds per register and per unregister of `count` 64-byte functions, one at a time.
    private static func registerCost(count: Int) throws -> (Double, Double) {
        let mem = try ExecMemAllocator()
        let code = [UInt8](repeating: 0x90, count: 63) + [0xC3]
        var pieces: [Allocation] = []
        for _ in 0..<count {
            let a = try mem.allocate(.bpf, size: code.count)
            try mem.write(code, to: a)
            pieces.append(a)
        }
        let registrations = pieces.enumerated().map { i, a in
            CodeRegistration(name: "bench_fn_\(i)", kind: .other, address: a.address, size: code.count,
                             unwind: .frames([CodeFrame(offset: 0, length: code.count, instructions: [])]))
        }
        let t = Clock.now
        let handles = registrations.map { CodeRegistry.shared.register($0) }
        let register = t.elapsedSeconds * 1e9 / Double(count)
        let t2 = Clock.now
        for h in handles { CodeRegistry.shared.unregister(h) }
        return (register, t2.elapsedSeconds * 1e9 / Double(count))
    }

    /// Seconds to load and JIT `count` programs of real sizes one by one (each compilation registers
    /// its program and stubs), and whether the BPF client registered them (it must).
    private static func loadPrograms(_ count: Int) throws -> (Double, Bool) {
        let sizes = BPFWorkload.sizes
        guard !sizes.isEmpty else { throw BenchError("the bundled BPF program sizes are missing") }
        let mem = try ExecMemAllocator()
        let vm = BPFVM(allocator: mem)
        var programs: [BPFProgram] = []
        let before = CodeRegistry.shared.count
        let t = Clock.now
        for i in 0..<count {
            let p = try vm.load(BPFWorkload.straightLine(slots: sizes[i % sizes.count], seed: i), name: "bench")
            try p.compile()
            programs.append(p)
        }
        let seconds = t.elapsedSeconds
        return (seconds, CodeRegistry.shared.count >= before + count)
    }

    /// GDB sink only: functions registered in one batch across growing numbers of blocks (at
    /// addresses nothing else uses; the GDB sink never reads code), announcements counted.
    private static func gdbAnnouncements(scale: Double) -> [BenchResult] {
        var out: [BenchResult] = []
        let base: UInt = 0x7E00_0000_0000
        var next: UInt = 0
        func measure(blocks: Int, functions: Int) -> (Int, Double) {
            let start = base + next
            next += UInt(blocks + 1) << 21
            let before = CodeRegistry.shared.status.gdbAnnouncements
            let t = Clock.now
            let handles = CodeRegistry.shared.batch {
                (0..<functions).map { i in
                    let address = start + UInt(i % blocks) << 21 + UInt(i / blocks) * 64
                    return CodeRegistry.shared.register(CodeRegistration(name: "gdb_bench_\(i)", kind: .other, address: address, size: 64))
                }
            }
            let seconds = t.elapsedSeconds
            let announcements = CodeRegistry.shared.status.gdbAnnouncements - before
            CodeRegistry.shared.batch { for h in handles { CodeRegistry.shared.unregister(h) } }
            return (announcements, seconds)
        }
        let fixed = 8192
        for blocks in [1, 4, 16, 64] {
            let (a, s) = measure(blocks: blocks, functions: fixed)
            out.append(BenchResult(benchmark: "registry", figure: "GDB: \(fixed) functions in \(blocks) blocks, one batch", unit: "announcements",
                                   value: Double(a), baseline: "blocks", baselineValue: Double(blocks), ratio: Double(blocks) / Double(max(a, 1)),
                                   notes: String(format: "%.2f ms", s * 1000)))
        }
        for blocks in [1, 4, 16, 64] {
            let (a, s) = measure(blocks: blocks, functions: 512 * blocks)
            out.append(BenchResult(benchmark: "registry", figure: "GDB: \(512 * blocks) functions (512 per block) in \(blocks) blocks, one batch",
                                   unit: "announcements", value: Double(a), baseline: "blocks", baselineValue: Double(blocks),
                                   ratio: Double(blocks) / Double(max(a, 1)), notes: String(format: "%.2f ms, %.0f ns per function", s * 1000, s * 1e9 / Double(512 * blocks))))
        }
        _ = scale
        return out
    }
}
