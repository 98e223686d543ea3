// The crash report of the commands that run code, through the real binary: code ExecMem holds
// faults, standard error names the faulting function and offset (and the frame that called it),
// and the process dies of the same signal. The selftest cases register their code by hand; the
// `load` and `trace` cases need the loader's registrations (`func [module]`) and fail until the
// loader registers its modules' functions.

import ExecMemTestSupport
import Foundation
import Testing

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: execmemBinary), "needs the execmem binary"))
struct CrashReportTests {
    @Test(arguments: [("segv", 11, "SIGSEGV", 6), ("ill", 4, "SIGILL", 4), ("trap", 5, "SIGTRAP", 4)])
    func selfTestCrashIsNamed(_ c: (how: String, signal: Int32, name: String, offset: Int)) throws {
        let r = try launch(execmemBinary, ["selftest", "crash", c.how])
        #expect(r.signal == c.signal, "\(c.how): status \(r.status), signal \(String(describing: r.signal)); \(r.errors)")
        #expect(r.errors.contains("execmem: \(c.name)"), "\(r.errors)")
        #expect(r.errors.contains("at execmem_selftest_crash+0x\(c.offset) [execmem-selftest]"), "\(r.errors)")
        // The frame-pointer chain reaches the caller, named at its return address (call + 5 bytes).
        #expect(r.errors.contains("#1 execmem_selftest_caller+0x9 [execmem-selftest]"), "\(r.errors)")
        if c.how == "segv" { #expect(r.errors.contains("SIGSEGV (address 0x0)"), "\(r.errors)") }
    }

    /// A module whose `crash_here` faults 6 bytes in (a NULL load) or 4 bytes in (`ud2`, what
    /// `__builtin_trap` emits), called from `main` through `middle`.
    static let crashingModule = """
        __attribute__((naked, noinline, patchable_function_entry(0, 0))) void crash_here(void) {
            __asm__("push %rbp\\n mov %rsp, %rbp\\n xor %eax, %eax\\n mov (%rax), %rax\\n pop %rbp\\n ret");
        }
        __attribute__((naked, noinline, patchable_function_entry(0, 0))) void trap_here(void) {
            __asm__("push %rbp\\n mov %rsp, %rbp\\n ud2\\n pop %rbp\\n ret");
        }
        __attribute__((noinline)) int middle(int how) { if (how) trap_here(); else crash_here(); return 1; }
        int main(int argc, char **argv) { return middle(argc > 1); }
        """

    @Test(arguments: [([String](), 11, "crash_here+0x6"), (["trap"], 4, "trap_here+0x4")])
    func loadedModuleCrashIsNamed(_ c: (arguments: [String], signal: Int32, location: String)) throws {
        let dir = try scratch("execmem-crash")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compileC(Self.crashingModule, name: "crashmod", in: dir)
        let r = try launch(execmemBinary, ["load", object, "--"] + c.arguments)
        #expect(r.signal == c.signal, "status \(r.status), signal \(String(describing: r.signal)); \(r.errors)")
        // The handler itself works without the loader's registrations: the PC is printed bare.
        #expect(r.errors.contains("execmem: SIG"), "no crash report: \(r.errors)")
        #expect(firstMatch("at \(NSRegularExpression.escapedPattern(for: c.location)) \\[[^]]*crashmod[^]]*\\]", in: r.errors) != nil,
                "the loader registers nothing yet? \(r.errors)")
        #expect(firstMatch("#[12] middle\\+0x[0-9a-f]+ \\[[^]]*crashmod", in: r.errors) != nil, "middle's frame is not named: \(r.errors)")
    }

    @Test func tracedModuleCrashIsNamed() throws {
        let dir = try scratch("execmem-crash")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compileC(Self.crashingModule, name: "crashmod", in: dir, flags: ["-O0", "-fno-omit-frame-pointer", "-fpatchable-function-entry=5"])
        let r = try launch(execmemBinary, ["trace", object, "--functions", "middle"])
        #expect(r.signal == 11, "status \(r.status), signal \(String(describing: r.signal)); \(r.errors)")
        #expect(r.errors.contains("execmem: SIGSEGV"), "no crash report: \(r.errors)")
        #expect(firstMatch("at crash_here\\+0x6 \\[[^]]*crashmod[^]]*\\]", in: r.errors) != nil, "the loader registers nothing yet? \(r.errors)")
    }
}
