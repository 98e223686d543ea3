// perf names the code ExecMem holds, with the real tool: `perf record -e cpu-clock` of a loop in
// registered code, then `perf report` through the map file (`/tmp/perf-<pid>.map`), and through
// the jitdump (`perf record -k mono`, `perf inject --jit`): the selftest loop (registered by hand),
// a JIT-compiled eBPF program, a loaded module's function and a hook stub, on the default backing.
//
// The map file only names samples perf attributes to anonymous memory: the default backing's views
// are shared anonymous memory (`/dev/zero (deleted)`), which perf counts as such; a memfd view
// (`memfd:execmem-text (deleted)`) was a file perf could not open, and no sample in it was named.

import ExecMemTestSupport
import Foundation
import Testing

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: execmemBinary), "needs the execmem binary"),
       .enabled(if: perfUnavailable == nil, "\(perfUnavailable ?? "")"), .serialized)
struct PerfTests {
    static let spin = "execmem_selftest_spin [execmem-selftest]"

    /// The report's line for `pattern` (a regular expression), and its share of samples.
    static func share(of pattern: String, in report: String) -> Double? {
        for line in report.split(separator: "\n") where firstMatch(pattern, in: String(line)) != nil {
            if let p = firstMatch("[0-9.]+%", in: String(line)) { return Double(p.dropLast()) }
        }
        return nil
    }

    @Test func mapFileNamesHandRegisteredCode() throws {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (report, _) = try perfReport([execmemBinary, "selftest", "spin", "--milliseconds", "600", "--perf"],
                                         in: dir, jitdump: false)
        let share = Self.share(of: NSRegularExpression.escapedPattern(for: Self.spin), in: report)
        #expect((share ?? 0) > 20, "the loop should take most samples, named: \(report.prefix(1500))")
        #expect(!report.contains("memfd:"), "\(report.prefix(1500))")
    }

    @Test func jitdumpNamesHandRegisteredCode() throws {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The default backing: perf inject --jit names jitdump code wherever it is mapped.
        let (report, _) = try perfReport([execmemBinary, "selftest", "spin", "--milliseconds", "600", "--perf"], in: dir, jitdump: true)
        let share = Self.share(of: "jitted-[0-9]+-[0-9]+\\.so +\\[\\.\\] " + NSRegularExpression.escapedPattern(for: Self.spin), in: report)
        #expect((share ?? 0) > 20, "\(report.prefix(1500))")
        #expect(!report.contains("memfd:"), "\(report.prefix(1500))")
    }

    /// The default backing's views are shared anonymous memory (`/dev/zero (deleted)`), which perf
    /// resolves through the map file; a memfd view (`memfd:... (deleted)`) it did not.
    @Test func mapFileOnTheDefaultBacking() throws {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (report, _) = try perfReport([execmemBinary, "selftest", "spin", "--milliseconds", "600", "--perf"], in: dir, jitdump: false)
        #expect((Self.share(of: NSRegularExpression.escapedPattern(for: Self.spin), in: report) ?? 0) > 20, "\(report.prefix(1500))")
        #expect(!report.contains("memfd:"), "\(report.prefix(1500))")
    }

    // MARK: - Clients through their commands

    /// A loop of 50 million iterations (about 0.1 s on the JIT), run three times.
    static let bpfLoop = "mov %r0, 0\nl:\nadd %r0, 1\njne %r0, 50000000, l\nexit\n"

    @Test(arguments: [false, true])
    func bpfProgramIsNamed(jitdump: Bool) throws {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.bpfLoop.write(toFile: "\(dir)/spin.s", atomically: true, encoding: .utf8)
        let (report, run) = try perfReport([execmemBinary, "bpf", "run", "\(dir)/spin.s", "--budget", "1000000000", "--times", "3",
                                            "--perf"], in: dir, jitdump: jitdump)
        #expect(run.output.contains("0x2faf080"), "the program ran: \(run.output) \(run.errors)")
        let share = Self.share(of: "bpf_prog_[0-9a-f]{16}_", in: report)
        #expect((share ?? 0) > 20, "no bpf_prog_<tag>_<name> : \(report.prefix(1500))")
        #expect(!report.contains("memfd:"))
    }

    /// `spin_loop` runs long; `leaf` is called a million times with an argument (so its hook stub,
    /// when traced, takes samples: about 1% of them, beside the tracer's own Swift code).
    static let spinModule = """
        __attribute__((noinline)) long spin_loop(long n) { volatile long s = 0; for (long i = 0; i < n; i++) s += i; return s; }
        __attribute__((noinline)) int leaf(int x) { return x + 1; }
        int main(int argc, char **argv) {
            long total = spin_loop(argc > 1 ? 0 : 300000000L);
            int s = 0;
            for (int i = 0; i < (argc > 1 ? 1000000 : 0); i++) s = leaf(s);
            return (total + s) == 7;
        }
        """

    @Test(arguments: [false, true])
    func moduleFunctionIsNamed(jitdump: Bool) throws {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compileC(Self.spinModule, name: "spinmod", in: dir, flags: ["-O1"])
        let (report, run) = try perfReport([execmemBinary, "load", object, "--perf"], in: dir, jitdump: jitdump)
        #expect(run.status == 0, "\(run.errors)")
        let share = Self.share(of: "spin_loop \\[[^]]*spinmod[^]]*\\]", in: report)
        #expect((share ?? 0) > 20, "no `spin_loop [module]`: \(report.prefix(1500))")
        #expect(!report.contains("memfd:"))
    }

    @Test(arguments: [false, true])
    func hookStubIsNamed(jitdump: Bool) throws {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compileC(Self.spinModule, name: "spinmod", in: dir, flags: ["-O1", "-fpatchable-function-entry=5"])
        let (report, run) = try perfReport([execmemBinary, "trace", object, "--functions", "leaf", "--perf", "--", "hooks"],
                                           in: dir, jitdump: jitdump)
        #expect(run.status == 0, "\(run.errors)")
        #expect(report.contains("execmem_hook_leaf"), "no execmem_hook_leaf: \(report.prefix(1500))")
        #expect(Self.share(of: "leaf \\[[^]]*spinmod", in: report) != nil, "the hooked function itself is not named: \(report.prefix(1500))")
        #expect(!report.contains("memfd:"))
    }
}

// MARK: - Call graphs through held code (JIT_CODE_UNWINDING_INFO)

/// `perf --call-graph=dwarf` through a loaded module: with the jitdump's unwinding records, samples
/// in the hot leaf have the middle function, main and the host's `callMain` above them; without them
/// (`EXECMEM_PERF_UNWIND=0`, the negative control) the chain stops at the leaf.
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: execmemBinary), "needs the execmem binary"),
       .enabled(if: perfUnavailable == nil, "\(perfUnavailable ?? "")"), .serialized)
struct PerfCallGraphTests {
    static let chainModule = """
        __attribute__((noinline)) long hot_leaf(long n) { long s = 0; for (long i = 0; i < n; i++) s += i ^ (s >> 3); return s; }
        __attribute__((noinline)) long middle(long rounds) { long t = 0; for (long r = 0; r < rounds; r++) t += hot_leaf(2000000 + (t & 1)); return t; }
        int main(int argc, char **argv) { return middle(argc > 1 ? 1 : 150) == 7; }
        """

    /// The call chains (`perf script`, innermost first) of samples whose first frame matches `leaf`.
    static func chains(_ command: [String], environment: [String: String], in dir: String, leaf: String) throws -> [[String]] {
        let data = "\(dir)/perf.data", injected = "\(dir)/perf.jit.data"
        let record = ["record", "-q", "-k", "mono", "--call-graph=dwarf", "-e", "cpu-clock", "-o", data, "--"] + command
        let run = try launch(perfPath, record, environment: environment.merging(["JITDUMPDIR": dir]) { $1 }, in: dir)
        guard run.status == 0 else { throw Failure("perf record: status \(run.status), \(run.errors)") }
        defer { removePerfMaps(in: dir) }
        let inject = try launch(perfPath, ["inject", "--jit", "-i", data, "-o", injected], in: dir)
        guard inject.status == 0 else { throw Failure("perf inject --jit: \(inject.errors)") }
        let script = try launch(perfPath, ["script", "-i", injected, "-F", "ip,sym"], in: dir)
        guard script.status == 0 else { throw Failure("perf script: \(script.errors)") }
        return script.output.components(separatedBy: "\n\n").map { sample in
            sample.split(separator: "\n").map { line in
                String(line.trimmingCharacters(in: .whitespaces).drop { $0 != " " }.dropFirst())
            }
        }.filter { ($0.first.map { firstMatch(leaf, in: $0) != nil }) ?? false }
    }

    func moduleChains(unwindRecords: Bool) throws -> [[String]] {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compileC(Self.chainModule, name: "chainmod", in: dir,
                                  flags: ["-O2", "-fomit-frame-pointer", "-fasynchronous-unwind-tables"])
        return try Self.chains([execmemBinary, "load", object, "--perf"], environment: unwindRecords ? [:] : ["EXECMEM_PERF_UNWIND": "0"],
                               in: dir, leaf: "^hot_leaf \\[")
    }

    @Test func moduleChainReachesTheHost() throws {
        let chains = try moduleChains(unwindRecords: true)
        #expect(chains.count > 50, "few samples in hot_leaf: \(chains.count)")
        let full = chains.filter { c in
            c.count > 3 && c[1].hasPrefix("middle [") && c[2].hasPrefix("main [") && c.dropFirst(3).contains { $0.contains("callMain") }
        }
        #expect(Double(full.count) > 0.8 * Double(chains.count),
                "\(full.count) of \(chains.count) leaf samples reach middle, main and callMain; one: \(chains.first ?? [])")
    }

    /// A loop in a JIT-compiled program: its samples' chains go through the entry stub into the
    /// host code that ran it (the JIT's synthesized frames, as jitdump unwinding records).
    @Test func bpfChainReachesTheHost() throws {
        let dir = try scratch("execmem-perf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PerfTests.bpfLoop.write(toFile: "\(dir)/spin.s", atomically: true, encoding: .utf8)
        let command = [execmemBinary, "bpf", "run", "\(dir)/spin.s", "--budget", "1000000000", "--times", "1", "--perf"]
        let chains = try Self.chains(command, environment: [:], in: dir, leaf: "^bpf_prog_[0-9a-f]{16}_spin")
        #expect(chains.count > 20, "few samples in the program: \(chains.count)")
        let full = chains.filter { c in c.count > 2 && c[1].hasPrefix("bpf_jit_entry_") && c.dropFirst(2).contains { $0.contains("JITCode") } }
        #expect(Double(full.count) > 0.8 * Double(chains.count),
                "\(full.count) of \(chains.count) samples reach the entry stub and JITCode.run; one: \(chains.first ?? [])")
        let without = try Self.chains(command, environment: ["EXECMEM_PERF_UNWIND": "0"], in: dir, leaf: "^bpf_prog_[0-9a-f]{16}_spin")
        #expect(!without.isEmpty && without.allSatisfy { !$0.dropFirst().contains { $0.contains("JITCode") } },
                "without unwinding records no chain reaches the host")
    }

    @Test func moduleChainStopsWithoutUnwindingRecords() throws {
        let chains = try moduleChains(unwindRecords: false)
        #expect(chains.count > 50, "few samples in hot_leaf: \(chains.count)")
        let through = chains.filter { $0.count > 1 && $0[1].hasPrefix("middle [") }
        #expect(through.isEmpty, "\(through.count) of \(chains.count) chains pass the leaf without unwinding records: \(through.first ?? [])")
    }
}
