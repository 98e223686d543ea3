// A loaded module's code is named in the code registry (and so in perf and GDB) and unwindable while
// it is loaded, and nothing of it is left after unload: in process, through the registry's lookups
// and libgcc's; under GDB 13, on the `execmem load` command, a hardware breakpoint set by name before
// the module exists stops in it and the backtrace names every loaded frame (with file:line for -g).
//
// The registry, GDB's list and libgcc's are per process, and other tests load modules in parallel:
// counts compared before and after are retried until no other test moved them (a leak of ours never
// goes away). The 10,000-cycle test runs in a process of its own (an exit test), where the counts
// must come back exactly and the RSS may grow by at most 1 MiB (measured: 7.8 s, about 200 KiB).

import CExecMemCxxHost
import ExecMem
import ExecMemLoader
import ExecMemTestSupport
import Foundation
import Glibc
import Testing

let gdb = "/usr/bin/gdb"

/// A C module: a static leaf, a global caller, and main.
let namedSource = """
    #include <stdio.h>
    static int counter;
    static __attribute__((noinline)) int leaf(int x) {
        int y = x * 3;
        counter += y;
        return y + 1;
    }
    __attribute__((noinline)) int middle(int x) { return leaf(x) + 2; }
    int main(int argc, char **argv) { printf("middle=%d\\n", middle(argc)); return 0; }
    """

func compileC(_ name: String, _ source: String, in dir: String, flags: [String]) throws -> String {
    try source.write(toFile: "\(dir)/\(name).c", atomically: true, encoding: .utf8)
    try run("/usr/bin/gcc", flags + ["-c", "\(dir)/\(name).c", "-o", "\(dir)/\(name).o"])
    return "\(dir)/\(name).o"
}

/// This process's resident set, from /proc/self/status (VmRSS, in KiB).
func residentKiB() throws -> Int {
    let text = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
    let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") })
    return try #require(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
}

/// The registry's counts a module's load and unload change.
struct SinkCounts: Equatable, CustomStringConvertible {
    let registrations: Int, gdbFiles: Int, frameSections: Int
    init() {
        let s = CodeRegistry.shared.status
        registrations = s.registrations; gdbFiles = s.gdbFiles; frameSections = s.frameSections
    }
    var description: String { "\(registrations) registrations, \(gdbFiles) GDB files, \(frameSections) frame sections" }
}

/// Whether the counts come back to `before`, waiting for other tests' modules to come and go.
func countsReturn(to before: SinkCounts) async throws -> SinkCounts {
    var now = SinkCounts()
    for _ in 0..<50 where now != before {
        try await Task.sleep(for: .milliseconds(20))
        now = SinkCounts()
    }
    return now
}

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/gcc"), "needs gcc")) struct ObservabilityTests {
    @Test(arguments: [["-O2"], ["-O0", "-g"]])
    func everyFunctionIsNamedWhileLoadedAndNothingAfter(flags: [String]) async throws {
        CodeRegistry.shared.enable(.gdb)  // debug objects are built only for GDB
        let dir = try scratch()
        let object = try compileC("named", namedSource, in: dir, flags: flags)
        let before = SinkCounts()
        let module = try ModuleLoader(allocator: try testAllocator()).load(files: [object], name: "named")
        let during = SinkCounts()
        // Every function, static ones too, by its symbol and the module's name, at any offset in it.
        let text = try #require(module.allocations["text"])
        let functions = module.functions.filter { text.address <= $0.address && $0.address < text.address + UInt(text.size) }
        #expect(Set(functions.map(\.name)).isSuperset(of: ["leaf", "middle", "main"]))
        for f in functions {
            let inside = f.address + UInt(f.size / 2)
            let l = CodeRegistry.shared.symbolize(inside)
            #expect(l?.symbol == f.name && l?.offset == f.size / 2 && l?.owner == "named" && l?.kind == .moduleFunction, "\(f.name): \(String(describing: l))")
            #expect(cem_host_has_fde(UnsafeRawPointer(bitPattern: inside)) == 1, "\(f.name) has a frame")
        }
        #expect(during.frameSections > before.frameSections && during.registrations > before.registrations)
        if flags.contains("-g") { #expect(during.gdbFiles > before.gdbFiles, "the debug object is GDB's file") }
        module.unload()
        for f in functions {
            #expect(CodeRegistry.shared.symbolize(f.address) == nil, "\(f.name) is not named after unload")
            #expect(cem_host_has_fde(UnsafeRawPointer(bitPattern: f.address)) == 0, "\(f.name) has no frame after unload")
        }
        let after = try await countsReturn(to: before)
        #expect(after == before, "before load: \(before); loaded: \(during); after unload: \(after)")
    }

    /// A failed load (a constructor outside the module's text) registers nothing, or leaves nothing.
    @Test func aFailedLoadLeavesNothing() async throws {
        let dir = try scratch()
        let object = try compileC("bad", """
            int f(int x) { return x + 1; }
            __attribute__((section(".init_array"), used)) static unsigned long bogus = 16;
            """, in: dir, flags: ["-O2"])
        let before = SinkCounts()
        let mem = try testAllocator()
        #expect(throws: LoaderError.self) { try ModuleLoader(allocator: mem).load(files: [object], name: "bad") }
        #expect(mem.statistics(readBack: false).total.allocations == 0)
        let after = try await countsReturn(to: before)
        #expect(after == before)
    }

    /// In a process of its own (an exit test), so that the counts and the RSS are this test's alone.
    @Test func tenThousandLoadsAndUnloadsLeakNothing() async throws {
        let dir = try scratch()
        let object = try compileC("cycle", """
            static int twice(int x) { return 2 * x; }
            int entry(int x) { return twice(x) + 1; }
            """, in: dir, flags: ["-O1", "-fno-inline"])
        let result = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) { [object = object as String] in
            let report = try leakCycles(object)
            FileHandle.standardError.write(Data(report.description.utf8))
            if !report.problems.isEmpty { exit(1) }
        }
        let text = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(text.contains("no problems"), "\(text)")
    }
}

/// What 10,000 load/unload cycles of `object` left behind.
struct LeakReport: CustomStringConvertible {
    var problems: [String] = []
    var figures = ""
    var description: String { (problems.isEmpty ? "no problems" : problems.joined(separator: "; ")) + "; " + figures }
}

func leakCycles(_ object: String) throws -> LeakReport {
    let input = try LoaderInput.file(object)
    let mem = try testAllocator()
    let loader = ModuleLoader(allocator: mem)
    var report = LeakReport()
    func cycle(_ i: Int) throws {
        let m = try loader.load([input], name: "cycle")
        guard let a = m.address(of: "entry") else { throw Failure("no entry") }
        let entry = unsafeBitCast(UnsafeRawPointer(bitPattern: a)!, to: IntToInt.self)
        let x = Int32(i & 0xFFFF)
        if entry(x) != x * 2 + 1 { report.problems.append("cycle \(i): entry(\(x)) = \(entry(x))") }
        if CodeRegistry.shared.symbolize(a)?.symbol != "entry" { report.problems.append("cycle \(i): entry not named while loaded") }
        m.unload()
        if CodeRegistry.shared.symbolize(a) != nil { report.problems.append("cycle \(i): entry still named after unload") }
    }
    for i in 0..<200 { try cycle(i) }  // warm: the allocator's blocks, the heap's arenas
    let before = SinkCounts(), rss = try residentKiB()
    let start = ContinuousClock.now
    for i in 0..<10_000 { try cycle(i) }
    let elapsed = ContinuousClock.now - start
    let after = SinkCounts(), grown = try residentKiB() - rss
    report.figures = "10,000 cycles in \(elapsed); RSS grew \(grown) KiB; \(before) -> \(after)"
    if after != before { report.problems.append("the registry's counts changed") }
    // 1 MiB over 10,000 cycles: 100 bytes a cycle.
    if grown > 1 << 10 { report.problems.append("RSS grew \(grown) KiB") }
    if mem.statistics(readBack: false).total.allocations != 0 { report.problems.append("allocations left") }
    if !mem.checkInvariants(deep: false).isEmpty { report.problems.append("allocator invariants broken") }
    return report
}

/// GDB on `execmem load`: the module does not exist when the breakpoint is set; the JIT interface
/// tells GDB of it at load. A hardware breakpoint: the default backing's text is a shared mapping
/// without write permission, which the kernel does not let ptrace write an int3 into (GDB then
/// leaves a software breakpoint pending, silently).
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: gdb), "needs gdb (Debian's gdb package)"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: execmemBinary), "needs the execmem binary"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/gcc"), "needs gcc"))
struct GDBTests {
    func backtrace(_ object: String, in dir: String) throws -> String {
        try runUnmasked(gdb, ["-batch", "-nx", "-ex", "set breakpoint pending on", "-ex", "hbreak leaf", "-ex", "run", "-ex", "bt",
                              "-ex", "continue", "--args", execmemBinary, "load", object],
                        environment: ["EXECMEM_GDB": "1"], output: "\(dir)/gdb.out")
    }

    @Test func aBacktraceInsideAModuleWithDWARFShowsFilesAndLines() throws {
        let dir = try scratch()
        let object = try compileC("named", namedSource, in: dir, flags: ["-O0", "-g"])
        let out = try backtrace(object, in: dir)
        #expect(out.contains("Breakpoint 1, leaf (x=1) at \(dir)/named.c:4"), "\(out)")
        #expect(out.contains(#/#0 +leaf \(x=1\) at .*named\.c:4/#), "\(out)")
        #expect(out.contains(#/#1 +0x[0-9a-f]+ in middle \(x=1\) at .*named\.c:8/#), "\(out)")
        #expect(out.contains(#/#2 +0x[0-9a-f]+ in main \(argc=1, argv=0x[0-9a-f]+\) at .*named\.c:9/#), "\(out)")
        #expect(out.contains(#/in .*LoadedModule.*callMain/#), "the backtrace goes on into the host: \(out)")
        #expect(out.contains("middle=6"), "the module ran on after the breakpoint: \(out)")
    }

    @Test func aBacktraceInsideAModuleWithoutDWARFShowsNames() throws {
        let dir = try scratch()
        let object = try compileC("named", namedSource, in: dir, flags: ["-O1"])
        let out = try backtrace(object, in: dir)
        #expect(out.contains(#/Breakpoint 1, 0x[0-9a-f]+ in leaf \(\)/#), "\(out)")
        #expect(out.contains(#/#1 +0x[0-9a-f]+ in middle \(\)/#), "\(out)")
        #expect(out.contains(#/#2 +0x[0-9a-f]+ in main \(\)/#), "\(out)")
        #expect(out.contains("middle=6"), "\(out)")
    }
}
