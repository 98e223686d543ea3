// Objects with one field set to what an attacker or a fuzzer would put there: alignments of 2^64-1,
// a .bss of a terabyte, a function whose value lies outside its section. Each is a typed error that
// names the field, with nothing allocated left behind; none traps, allocates the terabyte, or calls
// an address outside the module's text.

import ExecMemTestSupport
import ExecMem
import ExecMemELF
@testable import ExecMemLoader
import Foundation
import Testing

@Suite(.enabled(if: !compilers.isEmpty, "needs a C compiler")) struct HostileObjectTests {
    func object(_ text: String, in dir: String) throws -> [UInt8] {
        try text.write(toFile: "\(dir)/h.c", atomically: true, encoding: .utf8)
        try run(compilers[0], ["-O1", "-fno-asynchronous-unwind-tables", "-c", "\(dir)/h.c", "-o", "\(dir)/h.o"])
        return Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/h.o")))
    }

    /// Sets the 8-byte field at `at` of the header of the section named `section`.
    func patchSection(_ bytes: inout [UInt8], _ section: String, field at: Int, _ value: UInt64) throws {
        let f = try ELFFile(bytes: bytes, name: "h.o")
        let s = try #require(f.section(named: section))
        let shoff = Int(bytes[40..<48].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) })
        for i in 0..<8 { bytes[shoff + s.index * 64 + at + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    /// Sets the value of the symbol named `symbol`.
    func patchSymbol(_ bytes: inout [UInt8], _ symbol: String, value: UInt64) throws {
        let f = try ELFFile(bytes: bytes, name: "h.o")
        let sym = try #require(f.symbols.first { $0.name == symbol })
        let symtab = try #require(f.sections.first { $0.type == ELF.SHT_SYMTAB })
        for i in 0..<8 { bytes[symtab.offset + sym.index * 24 + 8 + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    func expectBadInput(_ bytes: [UInt8], _ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let mem = try testAllocator()
        let before = mem.statistics(readBack: false).total
        let loader = ModuleLoader(allocator: mem)
        #expect(sourceLocation: sourceLocation) {
            let m = try loader.load([LoaderInput(name: "h.o", bytes: bytes)], name: "hostile")
            _ = try m.callMain(arguments: ["h"])
        } throws: { e in
            guard let e = e as? LoaderError else { return false }
            return e.description.contains(text)
        }
        let after = mem.statistics(readBack: false).total
        #expect(after.allocations == before.allocations, "nothing allocated is left", sourceLocation: sourceLocation)
    }

    @Test func alignmentsBeyondTwoMiBOrNotPowersOfTwo() throws {
        let dir = try scratch()
        let good = try object("int main(void) { return 3; }", in: dir)
        for bad: UInt64 in [.max, 1 << 63, 3, 4 << 20] {
            var b = good
            try patchSection(&b, ".text", field: 48, bad)
            try expectBadInput(b, "alignment \(bad)")
        }
    }

    @Test func aTerabyteOfBSSIsRefusedNotAllocated() throws {
        let dir = try scratch()
        var b = try object("char big[64]; int main(void) { return big[5]; }", in: dir)
        try patchSection(&b, ".bss", field: 32, 1 << 40)
        try expectBadInput(b, "the most a module may take")
        try patchSection(&b, ".bss", field: 32, UInt64.max)
        #expect(throws: (any Error).self) { try ModuleLoader(allocator: try testAllocator()).load([LoaderInput(name: "h.o", bytes: b)], name: "x") }
    }

    /// A 64 MiB .bss from a file of a few KiB: the module gets its zeroed memory, but no image of it
    /// is built or copied (the images are the file's bytes), and the memory reads zero and writes.
    @Test func aLargeBSSIsNotBuiltAsAnImage() throws {
        let dir = try scratch()
        var b = try object("char big[64]; int main(void) { volatile char *p = big; p[63] = 7; return p[0] + p[63] + p[(64 << 20) - 1]; }", in: dir)
        try patchSection(&b, ".bss", field: 32, 64 << 20)
        var link = try Link([LoaderInput(name: "h.o", bytes: b)])
        try link.layout.placeZeroFill()
        #expect(link.layout.size[Bucket.data.rawValue] >= 64 << 20)
        #expect(link.layout.fileBytes[Bucket.data.rawValue] < 4096, "the data image holds only file bytes")
        let m = try ModuleLoader(allocator: try testAllocator()).load([LoaderInput(name: "h.o", bytes: b)], name: "bss")
        #expect(try m.callMain(arguments: ["h"]) == 7)
        m.unload()
        // A loader for untrusted files may take less than the 1 GiB default.
        #expect { _ = try ModuleLoader(allocator: try testAllocator(), moduleLimit: 16 << 20).load([LoaderInput(name: "h.o", bytes: b)], name: "bss") }
            throws: { "\($0)".contains("past 16 MiB (the most a module may take: ModuleLoader.moduleLimit)") }
    }

    @Test func relocationsIntoNOBITSAreRefused() throws {
        let dir = try scratch()
        var b = try object("int x = 1; int *p = &x; int main(void) { return *p; }", in: dir)
        let f = try ELFFile(bytes: b, name: "h.o")
        let data = try #require(f.section(named: ".data"))
        let shoff = Int(b[40..<48].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) })
        b[shoff + data.index * 64 + 4] = UInt8(ELF.SHT_NOBITS)  // .data (which p's relocation patches) becomes NOBITS
        try expectBadInput(b, "NOBITS section .data: it has no bytes to relocate")
    }

    @Test func aFunctionOutsideItsSectionIsNeverCalled() throws {
        let dir = try scratch()
        var b = try object("int main(void) { return 3; }", in: dir)
        try patchSymbol(&b, "main", value: 1 << 20)
        try expectBadInput(b, "outside its section")
    }
}
