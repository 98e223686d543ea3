// The code registry on code the test generates: names, the unwinder walking a synthesized frame, GDB's
// symbol files as GDB would read them, batching, perf's map and jitdump files, and cleanup on free.

import CExecMemDebug
import ExecMemELF
import ExecMemSystem
import Foundation
import Testing
@testable import ExecMem

/// PCs the callback saw; one test at a time writes it (the suite is serialized).
nonisolated(unsafe) private var seenPCs: [UInt] = []

private let recordBacktrace: @convention(c) () -> Void = {
    var pcs = [UInt](repeating: 0, count: 64)
    let n = pcs.withUnsafeMutableBufferPointer { Int(cem_unwind_backtrace($0.baseAddress, 64)) }
    seenPCs = Array(pcs[0..<n])
}

@Suite(.serialized) struct CodeRegistryTests {
    /// `push rbp; mov rbp, rsp; call rdi; pop rbp; ret`: a frame like a JIT's, calling back into the host.
    static let frameCode: [UInt8] = [0x55, 0x48, 0x89, 0xE5, 0xFF, 0xD7, 0x5D, 0xC3]

    static func frameCFI() -> CodeFrame {
        var p = CFIProgram()
        p.advance(to: 1); p.cfaOffset(16); p.saved(.rbp, at: 16)
        p.advance(to: 4); p.cfaRegister(.rbp)
        p.advance(to: 7); p.defineCFA(.rsp, offset: 8)
        return CodeFrame(offset: 0, length: frameCode.count, instructions: p.bytes)
    }

    func runFrame(_ address: UInt) {
        typealias Fn = @convention(c) (@convention(c) () -> Void) -> Void
        unsafeBitCast(UnsafeRawPointer(bitPattern: address)!, to: Fn.self)(recordBacktrace)
    }

    @Test func namesAndFreeing() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.bpf, size: 256)
        let h = CodeRegistry.shared.register(CodeRegistration(
            name: "lib", kind: .moduleFunction, address: a.address, size: 256, owner: "libtest",
            symbols: [CodeSymbol(name: "second", address: a.address + 128, size: 64), CodeSymbol(name: "first", address: a.address, size: 100)]))
        #expect(CodeRegistry.shared.symbolize(a.address + 3)?.description == "first+0x3 [libtest]")
        #expect(CodeRegistry.shared.symbolize(a.address + 130)?.symbol == "second")
        #expect(CodeRegistry.shared.symbolize(a.address + 110)?.description == "lib+0x6e [libtest]", "between symbols: the registration")
        #expect(CodeRegistry.shared.symbolize(a.address + 256) == nil)
        CodeRegistry.shared.unregister(h)
        #expect(CodeRegistry.shared.symbolize(a.address) == nil)
        CodeRegistry.shared.unregister(h)  // twice is harmless
        // Pieces may nest (a stub inside a module's span): the innermost covering one names an address.
        let outer = CodeRegistry.shared.register(CodeRegistration(name: "outer", kind: .other, address: a.address, size: 256))
        let inner = CodeRegistry.shared.register(CodeRegistration(name: "inner", kind: .other, address: a.address + 64, size: 32))
        #expect(CodeRegistry.shared.symbolize(a.address + 70)?.description == "inner+0x6")
        #expect(CodeRegistry.shared.symbolize(a.address + 200)?.description == "outer+0xc8")
        CodeRegistry.shared.unregister(inner)
        #expect(CodeRegistry.shared.symbolize(a.address + 70)?.description == "outer+0x46")
        CodeRegistry.shared.unregister(outer)
        // Freeing text drops what is still registered in it.
        CodeRegistry.shared.register(CodeRegistration(name: "bpf_prog_0123456789abcdef_t", kind: .bpfProgram, address: a.address, size: 64))
        #expect(CodeRegistry.shared.symbolize(a.address + 8)?.symbol == "bpf_prog_0123456789abcdef_t")
        try mem.free(a)
        #expect(CodeRegistry.shared.symbolize(a.address + 8) == nil)
    }

    @Test func theUnwinderWalksASynthesizedFrame() throws {
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.bpf, size: Self.frameCode.count)
        try mem.write(Self.frameCode, to: a)
        _ = mem.makeVisible()

        // Without call-frame information libgcc cannot step out of the generated frame.
        let plain = CodeRegistry.shared.register(CodeRegistration(name: "no_cfi", kind: .jitStub, address: a.address, size: Self.frameCode.count))
        runFrame(a.address)
        let stopped = seenPCs
        CodeRegistry.shared.unregister(plain)

        let h = CodeRegistry.shared.register(CodeRegistration(name: "with_cfi", kind: .jitStub, address: a.address, size: Self.frameCode.count,
                                                              unwind: .frames([Self.frameCFI()])))
        runFrame(a.address)
        let walked = seenPCs
        let returnAddress = a.address + 6  // after `call rdi`
        let inFrame = try #require(walked.firstIndex(of: returnAddress), "the generated frame is on the stack: \(walked.map { String($0, radix: 16) })")
        #expect(CodeRegistry.shared.symbolize(walked[inFrame])?.description == "with_cfi+0x6")
        // The walk continues into the host (this test, the test runner, the thread's start).
        #expect(walked.count - inFrame > 3, "frames after the generated one: \(walked.count - inFrame - 1)")
        #expect(stopped.last == returnAddress, "without CFI the walk stops at the generated frame: \(stopped.count) frames")
        CodeRegistry.shared.unregister(h)
        // Unregistered, the frame is gone from libgcc: the walk stops at the generated frame again.
        // (Counts of frame sections are process-wide and other suites move them.)
        runFrame(a.address)
        #expect(seenPCs.last == returnAddress, "after unregistering, the walk stops at the generated frame")
        try mem.free(a)
    }

    /// In a process of its own: other suites register code concurrently, and any thread outside a
    /// batch announces every block with pending changes, so counts are only exact alone.
    @Test func gdbGetsOneFilePerBlockWithEverySymbol() async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
            var problems: [String] = []
            do {
                problems = try gdbBlockFiles()
            } catch {
                problems = ["\(error)"]
            }
            FileHandle.standardError.write(Data((problems.isEmpty ? "no problems" : problems.joined(separator: "\n")).utf8))
            if !problems.isEmpty { exit(1) }
        }
        let text = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(text.contains("no problems"), "\(text)")
    }

    @Test func perfMapAndJitdumpNameTheCode() throws {
        CodeRegistry.shared.enable(.perf)
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.bpf, size: Self.frameCode.count)
        try mem.write(Self.frameCode, to: a)
        let name = "perf_probe_\(UInt32.random(in: 0...UInt32.max))"
        let h = CodeRegistry.shared.register(CodeRegistration(name: name, kind: .jitStub, address: a.address, size: Self.frameCode.count, owner: "t"))
        defer { CodeRegistry.shared.unregister(h) }
        CodeRegistry.shared.flushPerf()  // writes are coalesced to one per millisecond
        let status = CodeRegistry.shared.status
        let map = try String(contentsOfFile: try #require(status.perfMapPath), encoding: .utf8)
        #expect(map.contains("\(String(a.address, radix: 16)) 8 \(name) [t]\n"))

        // jitdump: the header, then a JIT_CODE_LOAD record with the name and the code's bytes.
        let dump = try [UInt8](Data(contentsOf: URL(fileURLWithPath: try #require(status.jitdumpPath))))
        func u32(_ o: Int) -> UInt32 { dump[o..<o + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        func u64(_ o: Int) -> UInt64 { dump[o..<o + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        #expect(u32(0) == 0x4A69_5444 && u32(4) == 1 && u32(8) == 40 && u32(12) == 62)
        var at = 40, matched = false
        while at + 16 <= dump.count {
            let total = Int(u32(at + 4))
            #expect(total >= 16 && at + total <= dump.count)
            if total < 16 || at + total > dump.count { break }
            if u32(at) == 0, u64(at + 24) == UInt64(a.address) {
                let size = Int(u64(at + 40))
                let nameBytes = dump[(at + 56)...].prefix { $0 != 0 }
                let code = Array(dump[(at + 56 + nameBytes.count + 1)..<(at + 56 + nameBytes.count + 1 + size)])
                if String(decoding: nameBytes, as: UTF8.self) == "\(name) [t]" && code == Self.frameCode { matched = true }
            }
            at += total
        }
        #expect(matched, "a JIT_CODE_LOAD record with the name and bytes")

        // Without an explicit flush, a line written in a burst reaches the file by the deferred write.
        let late = "perf_late_\(UInt32.random(in: 0...UInt32.max))"
        let h2 = CodeRegistry.shared.register(CodeRegistration(name: late, kind: .jitStub, address: a.address, size: 8))
        defer { CodeRegistry.shared.unregister(h2) }
        var seen = false
        for _ in 0..<200 where !seen {
            usleep(5_000)
            seen = (try? String(contentsOfFile: status.perfMapPath!, encoding: .utf8))?.contains(" \(late)\n") == true
        }
        #expect(seen, "the deferred write lands within a second")
        // perf finds the dump through an executable (and not writable) mapping of it.
        let marker = try #require(try ProcMaps.read().first { $0.path.hasSuffix("/jit-\(getpid()).dump") })
        #expect(marker.protection == "r-x")
        try mem.free(a)
    }
}

/// The GDB sink's files for 1,000 functions registered in one batch, read back as GDB reads them;
/// what went wrong, if anything.
private func gdbBlockFiles() throws -> [String] {
    var problems: [String] = []
    func check(_ ok: Bool, _ what: @autoclosure () -> String) { if !ok { problems.append(what()) } }
    CodeRegistry.shared.enable(.gdb)
    let mem = try ExecMemAllocator(smallConfiguration())
    let before = CodeRegistry.shared.status
    var allocations: [Allocation] = []
    var handles: [CodeHandle] = []
    try CodeRegistry.shared.batch { () throws(ExecMemError) in
        for i in 0..<1000 {
            let a = try mem.allocate(.bpf, size: 64)
            allocations.append(a)
            handles.append(CodeRegistry.shared.register(CodeRegistration(name: "prog_\(i)", kind: .bpfProgram, address: a.address, size: 64)))
        }
    }
    let blocks = Set(allocations.map { $0.address >> 21 })
    let after = CodeRegistry.shared.status
    check(after.gdbFiles - before.gdbFiles == blocks.count, "\(after.gdbFiles - before.gdbFiles) files for \(blocks.count) blocks")
    check(after.gdbAnnouncements - before.gdbAnnouncements <= 2 * blocks.count,
          "\(after.gdbAnnouncements - before.gdbAnnouncements) announcements for \(blocks.count) blocks in one batch")
    // Read the files the way GDB does: ELF, with every function at its address.
    var found: [String: UInt64] = [:]
    for file in CodeRegistry.gdbSymbolFiles() {
        let elf = try ELFFile(bytes: file, name: "gdb symfile", machine: 62)
        check(elf.type == 2, "ELF type \(elf.type)")
        for s in elf.symbols where s.name.hasPrefix("prog_") { found[s.name] = s.value }
    }
    for (i, a) in allocations.enumerated() where found["prog_\(i)"] != UInt64(a.address) { problems.append("prog_\(i) not at \(a.address)") }
    // Half go away: the files shrink in place; then all: the files leave GDB's list.
    for h in handles[0..<500] { CodeRegistry.shared.unregister(h) }
    var names = Set<String>()
    for file in CodeRegistry.gdbSymbolFiles() {
        for s in try ELFFile(bytes: file, name: "gdb symfile").symbols where s.name.hasPrefix("prog_") { names.insert(s.name) }
    }
    check(names == Set((500..<1000).map { "prog_\($0)" }), "\(names.count) names left after removing 500")
    try CodeRegistry.shared.batch { () throws(ExecMemError) in for a in allocations { try mem.free(a) } }
    check(CodeRegistry.shared.status.gdbFiles == before.gdbFiles, "files left: \(CodeRegistry.shared.status.gdbFiles - before.gdbFiles)")
    return problems
}
