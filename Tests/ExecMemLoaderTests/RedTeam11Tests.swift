// Red team, issue 11: hand-written .eh_frame sections that libgcc would act on wrongly once
// registered. An FDE encoding libgcc has no base for (funcrel, datarel, aligned) aborts the process
// at the first frame lookup anywhere in it, an indirect one makes libgcc read through pc_begin, and
// an FDE whose pc_begin is relocated against a host function puts the module's rules over host code
// (libgcc searches registered tables first). Each is a typed error and nothing is registered.

import ExecMemTestSupport
import ExecMem
@testable import ExecMemLoader
import Foundation
import Testing

@Suite(.enabled(if: !compilers.isEmpty, "needs a C compiler")) struct RedTeam11EHFrameTests {
    /// `main` calls backtrace (so a lookup happens while the module is registered), with its own
    /// CFI from `.cfi_*`, then `extra` as a hand-written CIE + FDE.
    static func source(encoding: String, pcBegin: String, range: String) -> String {
        """
            .text
            .globl main
            .type main,@function
        main:
            .cfi_startproc
            pushq %rbx
            .cfi_def_cfa_offset 16
            subq $256,%rsp
            .cfi_def_cfa_offset 272
            movq %rsp,%rdi
            movl $32,%esi
            call backtrace@PLT
            addq $256,%rsp
            popq %rbx
            ret
            .cfi_endproc
            .size main,.-main
            .section .eh_frame,"a",@progbits
        cie:
            .long cie_end-cie_start
        cie_start:
            .long 0
            .byte 1
            .asciz "zR"
            .uleb128 1
            .sleb128 -8
            .byte 16
            .uleb128 1
            .byte \(encoding)
            .byte 0x0c,7,8,0x90,1
            .balign 4
        cie_end:
            .long fde_end-fde_start
        fde_start:
            .long fde_start-cie
            \(pcBegin)
            \(range)
            .uleb128 0
            .byte 0x07,0x10
            .balign 4
        fde_end:

        """
    }

    func assemble(_ text: String, in dir: String) throws -> [UInt8] {
        try text.write(toFile: "\(dir)/h.s", atomically: true, encoding: .utf8)
        try run(compilers[0], ["-c", "\(dir)/h.s", "-o", "\(dir)/h.o"])
        return Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/h.o")))
    }

    func expectBadInput(_ bytes: [UInt8], _ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let mem = try testAllocator()
        let before = mem.statistics(readBack: false).total
        let frames = CodeRegistry.shared.status.frameSections
        let loader = ModuleLoader(allocator: mem)
        #expect(sourceLocation: sourceLocation) {
            let m = try loader.load([LoaderInput(name: "h.o", bytes: bytes)], name: "hostile")
            _ = try m.callMain(arguments: ["h"])
        } throws: { e in
            guard let e = e as? LoaderError else { return false }
            return e.description.contains(text)
        }
        #expect(mem.statistics(readBack: false).total.allocations == before.allocations, sourceLocation: sourceLocation)
        // Process-wide: other suites' modules come and go, so wait for the count to settle back.
        var now = CodeRegistry.shared.status.frameSections
        for _ in 0..<50 where now > frames {
            usleep(20_000)
            now = CodeRegistry.shared.status.frameSections
        }
        #expect(now <= frames, "nothing left registered", sourceLocation: sourceLocation)
    }

    @Test func encodingsLibgccHasNoBaseForOrDereferences() throws {
        let dir = try scratch()
        for e in ["0x40", "0x30", "0x50", "0x80", "0x9b", "0x20"] {
            try expectBadInput(try assemble(Self.source(encoding: e, pcBegin: ".quad 0x10", range: ".quad 3"), in: dir), "FDE encoding \(e)")
        }
    }

    @Test func fdeOverAHostFunction() throws {
        let dir = try scratch()
        // Absolute: the FDE is relocated to glibc's backtrace itself.
        try expectBadInput(try assemble(Self.source(encoding: "0x00", pcBegin: ".quad backtrace", range: ".quad 0x100"), in: dir), "outside the module's text")
        // pc-relative to main, but with an addend far past the module's text.
        try expectBadInput(try assemble(Self.source(encoding: "0x1b", pcBegin: ".long main+0x10000000-.", range: ".long 0x10"), in: dir), "outside the module's text")
        // A range running past the text (and a negative one, which libgcc sign-extends).
        try expectBadInput(try assemble(Self.source(encoding: "0x1b", pcBegin: ".long main-.", range: ".long 0x100000"), in: dir), "outside the module's text")
        try expectBadInput(try assemble(Self.source(encoding: "0x1b", pcBegin: ".long main-.", range: ".long -1"), in: dir), "outside the module's text")
    }

    @Test func aWellFormedHandWrittenFDELoads() throws {
        let dir = try scratch()
        let mem = try testAllocator()
        let loader = ModuleLoader(allocator: mem)
        // The same FDE over main's first byte only: in the module's text, so it loads and runs.
        let m = try loader.load([LoaderInput(name: "h.o", bytes: try assemble(Self.source(encoding: "0x1b", pcBegin: ".long main-.", range: ".long 1"), in: dir))], name: "fine")
        #expect(try m.callMain(arguments: ["h"]) > 0)
        m.unload()
    }
}
