// GDB on the CLI, for code that does not exist when GDB starts: a JIT-compiled eBPF program stopped
// at by name, and a backtrace from inside the hook machinery of a traced module. GDB learns of the
// code through the JIT interface (`EXECMEM_GDB=1`). Breakpoints in ExecMem's text are hardware ones:
// the default backing's run view is a shared mapping without write permission, and the kernel lets
// ptrace write an int3 only into private mappings (mm/gup.c, check_vma_flags); with `--backing
// anonymous` (private text) a software `break` works too, which the last test shows.

import ExecMemBPF
import ExecMemTestSupport
import Foundation
import Testing

private let gdbPath = "/usr/bin/gdb"

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: gdbPath), "needs gdb (Debian's gdb package)"),
       .enabled(if: FileManager.default.isExecutableFile(atPath: execmemBinary), "needs the execmem binary"))
struct GDBTests {
    /// A loop long enough to be stopped in, then `exit`.
    static let loop = "mov %r0, 0\nl:\nadd %r0, 1\njne %r0, 1000, l\nexit\n"

    func gdb(_ commands: [String], _ arguments: [String], in dir: String) throws -> String {
        let ex = (["set breakpoint pending on"] + commands).flatMap { ["-ex", $0] }
        return try runUnmasked(gdbPath, ["-batch", "-nx"] + ex + ["--args", execmemBinary] + arguments,
                               environment: ["EXECMEM_GDB": "1"], output: "\(dir)/gdb.out")
    }

    @Test func aBreakpointByNameStopsInAJITCompiledProgram() throws {
        let dir = try scratch("execmem-gdb")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.loop.write(toFile: "\(dir)/loop.s", atomically: true, encoding: .utf8)
        // The name the JIT gives this program: its tag is the SHA-1 of its instructions.
        let name = try BPFVM().load(assembly: Self.loop, name: "loop.s").symbolName
        #expect(name.hasPrefix("bpf_prog_") && name.hasSuffix("_loop.s"))
        let out = try gdb(["hbreak '\(name)'", "run", "bt 6", "info symbol $pc", "continue"], ["bpf", "run", "\(dir)/loop.s"], in: dir)
        // GDB shows a `.suffix` of a name as `[suffix]` (as for gcc's `.isra.0` clones).
        let shown = name.replacingOccurrences(of: ".s", with: "[s]")
        #expect(out.contains("Breakpoint 1, 0x") && out.contains("in \(shown) ()"), "\(out)")
        #expect(out.contains("\(shown) in section .text"), "info symbol names the program: \(out)")
        // Above the program: the JIT's entry stub, then the host that ran it (the registry's frames
        // are in GDB's symbol file: without them GDB loses the stack above the entry stub).
        #expect(out.contains(#/#1 +0x[0-9a-f]+ in bpf_jit_entry_[0-9a-f]{16}_loop\[s\]/#), "\(out)")
        #expect(out.contains(#/#2 +0x[0-9a-f]+ in \$s\w*BPFProgram/#), "the frame above is the host's BPFProgram code: \(out)")
        #expect(out.contains("0x3e8"), "the program still ran to the end: \(out)")
    }

    /// A traced module: `leaf` is hooked on entry and exit, so its hook stub sends it through the
    /// shared hook body, which calls `cem_shadow_push` (host C) to plant the exit trampoline.
    static let traced = """
        __attribute__((noinline)) int leaf(int x) { return x + 1; }
        int main(void) { return leaf(41) == 42 ? 0 : 1; }
        """

    @Test func aBacktraceFromTheHookMachineryNamesTheHookAndTheModule() throws {
        let dir = try scratch("execmem-gdb")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compileC(Self.traced, name: "traced", in: dir, flags: ["-O1", "-fpatchable-function-entry=5"])
        let out = try gdb(["break cem_shadow_push", "run", "bt 8", "continue"], ["trace", object, "--functions", "leaf"], in: dir)
        #expect(out.contains(#/#0 +[^\n]*cem_shadow_push/#), "\(out)")
        #expect(out.contains(#/#1 +0x[0-9a-f]+ in execmem_hook_body \(\)/#), "the hook body by name: \(out)")
        #expect(out.contains(#/#2 +0x[0-9a-f]+ in leaf \(\)/#), "the hooked function by name: \(out)")
        #expect(out.contains(#/#3 +0x[0-9a-f]+ in main \(\)/#), "its caller in the module: \(out)")
        #expect(out.contains("#4 "), "and on into the host: \(out)")
    }

    @Test func softwareBreakpointsWorkOnPrivateText() throws {
        let dir = try scratch("execmem-gdb")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compileC(Self.traced, name: "traced", in: dir, flags: ["-O1"])
        let out = try gdb(["break leaf", "run", "bt 3", "continue"], ["load", "--backing", "anonymous", object], in: dir)
        #expect(out.contains(#/Breakpoint 1, 0x[0-9a-f]+ in leaf \(\)/#), "\(out)")
        #expect(out.contains(#/#1 +0x[0-9a-f]+ in main \(\)/#), "\(out)")
    }
}
