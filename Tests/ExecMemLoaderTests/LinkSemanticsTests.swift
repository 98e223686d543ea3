// Where the loader once linked differently from GNU ld (red team of issue 10, round 2): which archive
// a member's needs are met from, COMDAT groups gas names by a section symbol, a second __.SYMDEF,
// and destructors placed in init text. Each program is also linked natively where it can be, and
// the two must agree.

import ExecMemTestSupport
import Foundation
import Testing

private let gcc = "/usr/bin/gcc", gas = "/usr/bin/as"

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: gcc), "needs gcc")) struct LinkSemanticsTests {
    func object(_ name: String, _ source: String, in dir: String) throws -> String {
        try source.write(toFile: "\(dir)/\(name).c", atomically: true, encoding: .utf8)
        try run(gcc, ["-O2", "-c", "\(dir)/\(name).c", "-o", "\(dir)/\(name).o"])
        return "\(dir)/\(name).o"
    }

    /// main needs y (in a2.a), y needs x, which a1.a and a2.a both define: ld takes a2.a's, the
    /// archive being searched (the loader went back to a1.a).
    @Test(.enabled(if: ar != nil, "needs ar")) func aMembersNeedsAreMetFromItsOwnArchiveFirst() throws {
        let dir = try scratch()
        let main = try object("main", "int y(void);\nint main(void) { return y(); }\n", in: dir)
        let x1 = try object("x1", "int x(void) { return 1; }\n", in: dir), x2 = try object("x2", "int x(void) { return 2; }\n", in: dir)
        let y = try object("y", "int x(void);\nint y(void) { return x(); }\n", in: dir)
        try run(ar!, ["rcs", "\(dir)/a1.a", x1])
        try run(ar!, ["rcs", "\(dir)/a2.a", y, x2])
        try run(gcc, [main, "\(dir)/a1.a", "\(dir)/a2.a", "-o", "\(dir)/native"])
        let native = try run("\(dir)/native", [], check: false)
        let loaded = try run(execmemBinary, ["load", main, "\(dir)/a1.a", "\(dir)/a2.a"], check: false)
        #expect(native.status == 2)
        #expect(loaded.status == native.status, "\(loaded.errors)")
    }

    /// gas names a COMDAT group after its section symbol (which has no name) when the signature is
    /// the section's own name; two such groups are two signatures, not one.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: gas), "needs GNU as")) func gasGroupsNamedBySectionSymbolsAreDistinct() throws {
        let dir = try scratch()
        for (name, value) in [("fa", 1), ("fb", 2)] {
            try """
            \t.section .text.\(name),"axG",@progbits,.text.\(name),comdat
            \t.globl \(name)
            \t.type \(name),@function
            \(name):\tmovl $\(value), %eax
            \tret

            """.write(toFile: "\(dir)/\(name).s", atomically: true, encoding: .utf8)
            try run(gas, ["\(dir)/\(name).s", "-o", "\(dir)/\(name).o"])
        }
        let main = try object("m", "int fa(void); int fb(void);\nint main(void) { return fa() * 10 + fb(); }\n", in: dir)
        try run(gcc, [main, "\(dir)/fa.o", "\(dir)/fb.o", "-o", "\(dir)/native"])
        let native = try run("\(dir)/native", [], check: false)
        let loaded = try run(execmemBinary, ["load", main, "\(dir)/fa.o", "\(dir)/fb.o"], check: false)
        #expect(native.status == 12)
        #expect(loaded.status == native.status, "\(loaded.errors)")
    }

    /// An archive whose first __.SYMDEF is unrelated: names are keyed by their place in the file, so
    /// the second table's 'y' is not taken for the first table's 'x' (the object needs y: exit 7).
    @Test func aSecondSymbolTableDoesNotReuseTheFirstsNames() throws {
        let f = "\(fixtures)/redteam"
        let loaded = try run(execmemBinary, ["load", "\(f)/two-symdefs.obj", "\(f)/two-symdefs.a"], check: false)
        #expect(loaded.status == 7, "\(loaded.errors)")
    }

    /// A destructor in .init.text would run after init text is freed (int3): refused.
    @Test func aDestructorInInitTextIsRefused() throws {
        let dir = try scratch()
        let o = try object("fini", """
            __attribute__((section(".init.text"), noinline)) void bye(void) { }
            static void (*fini_entry)(void) __attribute__((section(".fini_array"), used)) = bye;
            int main(void) { return 0; }
            """, in: dir)
        let loaded = try run(execmemBinary, ["load", o], check: false)
        #expect(loaded.status == 1)
        #expect(loaded.errors.contains("is not in the module's core text"), "\(loaded.errors)")
    }

    /// Compiles `source` (C, or C++ when `cxx`) with `flags`, links it natively and loads it: the
    /// exit status and output must agree.
    func expectLikeNative(_ source: String, cxx: Bool = false, flags: [String] = ["-O1"], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let dir = try scratch()
        let cc = cxx ? gxx : gcc
        try #require(FileManager.default.isExecutableFile(atPath: cc), "needs \(cc)", sourceLocation: sourceLocation)
        try source.write(toFile: "\(dir)/p.\(cxx ? "cc" : "c")", atomically: true, encoding: .utf8)
        try run(cc, flags + ["-c", "\(dir)/p.\(cxx ? "cc" : "c")", "-o", "\(dir)/p.o"])
        let (native, loaded) = try runNativeAndLoaded(["\(dir)/p.o"], in: dir, linker: cc)
        #expect(loaded.status == native.status && loaded.output == native.output, "\(loaded.output) \(loaded.errors)", sourceLocation: sourceLocation)
    }

    /// A C++ global's destructor is registered with __cxa_atexit on the module's __dso_handle: it
    /// runs at unload (it ran at exit, on the freed module's int3: SIGTRAP).
    @Test func aCxxGlobalsDestructorRunsAtUnload() throws {
        try expectLikeNative("#include <cstdio>\nstruct T { ~T() { std::puts(\"~T\"); } } t;\nint main() { std::puts(\"main\"); return 3; }\n", cxx: true)
    }

    /// An exit handler in init text, registered from init text: init memory is kept for a module
    /// that registers exit handlers (it ran on freed init memory: SIGTRAP).
    @Test func anExitHandlerInInitTextStillRuns() throws {
        try expectLikeNative("""
            #include <stdio.h>
            extern void *__dso_handle;
            int __cxa_atexit(void (*)(void *), void *, void *);
            __attribute__((section(".init.text"), noinline)) static void bye(void *p) { puts("bye from init text"); }
            __attribute__((constructor, section(".init.text"))) static void setup(void) { __cxa_atexit(bye, 0, &__dso_handle); }
            int main(void) { puts("main"); return 0; }
            """)
    }

    /// g++ gives static locals of inline functions STB_GNU_UNIQUE: global (it was an undefined symbol).
    @Test func gnuUniqueSymbolsAreGlobal() throws {
        try expectLikeNative("inline int g() { static int x = 5; return x++; }\nint main() { g(); return g(); }\n", cxx: true)
    }

    /// A COMMON symbol pulls the archive member that really defines it, as ld does (it stayed 0).
    @Test(.enabled(if: ar != nil, "needs ar")) func aCommonSymbolPullsItsDefinition() throws {
        let dir = try scratch()
        try "int counter;\nint main(void) { return counter; }\n".write(toFile: "\(dir)/main.c", atomically: true, encoding: .utf8)
        try run(gcc, ["-O1", "-fcommon", "-c", "\(dir)/main.c", "-o", "\(dir)/main.o"])
        let def = try object("def", "int counter = 42;\n", in: dir)
        try run(ar!, ["rcs", "\(dir)/lib.a", def])
        try run(gcc, ["\(dir)/main.o", "\(dir)/lib.a", "-o", "\(dir)/native"])
        let native = try run("\(dir)/native", [], check: false)
        let loaded = try run(execmemBinary, ["load", "\(dir)/main.o", "\(dir)/lib.a"], check: false)
        #expect(native.status == 42)
        #expect(loaded.status == native.status, "\(loaded.errors)")
    }
}
