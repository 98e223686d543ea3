// Bad input, each a typed error, and no leaked allocation: truncated files, wrong machine or class,
// bad section or symbol indices, unsupported relocation, undefined symbol, duplicate definition,
// overflowing relocation, corrupt archive.

import ExecMemTestSupport
import ExecMem
import ExecMemELF
@testable import ExecMemLoader
import Foundation
import Testing

@Suite(.enabled(if: !compilers.isEmpty, "needs a C compiler")) struct LoaderBadInputTests {
    func source(_ text: String, _ name: String, in dir: String, flags: [String] = ["-O2"]) throws -> [UInt8] {
        try text.write(toFile: "\(dir)/\(name).c", atomically: true, encoding: .utf8)
        try run(compilers[0], flags + ["-c", "\(dir)/\(name).c", "-o", "\(dir)/\(name).o"])
        return Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name).o")))
    }

    /// Loads and expects a typed error matching `check`; the allocator ends where it started.
    func expectFailure(_ inputs: [LoaderInput], _ check: (LoaderError) -> Bool, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let mem = try testAllocator()
        let before = mem.statistics(readBack: false).total
        #expect(sourceLocation: sourceLocation) { try ModuleLoader(allocator: mem).load(inputs, name: "bad") } throws: { e in
            guard let e = e as? LoaderError else { return false }
            return check(e)
        }
        let after = mem.statistics(readBack: false).total
        #expect(after.allocations == before.allocations && after.usedBytes == before.usedBytes, "no leaked allocation", sourceLocation: sourceLocation)
        #expect(mem.checkInvariants() == [], sourceLocation: sourceLocation)
    }

    @Test func malformedObjects() throws {
        let dir = try scratch()
        let good = try source("int f(void) { return 1; }", "good", in: dir)
        try expectFailure([LoaderInput(name: "t.o", bytes: Array(good.prefix(100)))]) {
            if case .elf(.truncated) = $0 { return true }
            return false
        }
        var bpf = good
        bpf[18] = 247  // EM_BPF
        try expectFailure([LoaderInput(name: "m.o", bytes: bpf)]) { $0 == .elf(.wrongMachine(file: "m.o", machine: 247, expected: ELF.EM_X86_64)) }
        var elf32 = good
        elf32[4] = 1
        try expectFailure([LoaderInput(name: "c.o", bytes: elf32)]) { $0 == .elf(.unsupported(file: "c.o", what: "class 1 (only ELF64)")) }
        // A relocation naming a symbol past the symbol table.
        let user = try source("int g = 3; int f(void) { return g; }", "user", in: dir, flags: ["-O2", "-fPIC"])
        let file = try ELFFile(bytes: user, name: "u.o")
        let rela = try #require(file.sections.first { $0.type == ELF.SHT_RELA && $0.name == ".rela.text" })
        var badSymbol = user
        badSymbol[rela.offset + 12] = 0xFF  // high byte of r_info's symbol index
        try expectFailure([LoaderInput(name: "u.o", bytes: badSymbol)]) {
            if case .elf(.badIndex) = $0 { return true }
            return false
        }
    }

    @Test func linkErrors() throws {
        let dir = try scratch()
        let undefined = try source("extern int nowhere_to_be_found(void); int f(void) { return nowhere_to_be_found(); }", "undef", in: dir)
        try expectFailure([LoaderInput(name: "undef.o", bytes: undefined)]) { $0 == .undefinedSymbol(name: "nowhere_to_be_found", object: "undef.o") }
        let a = try source("int twice(void) { return 1; }", "a", in: dir), b = try source("int twice(void) { return 2; }", "b", in: dir)
        try expectFailure([LoaderInput(name: "a.o", bytes: a), LoaderInput(name: "b.o", bytes: b)]) {
            $0 == .duplicateDefinition(name: "twice", first: "a.o", second: "b.o")
        }
        // Non-PIC code taking a host address in a 32-bit immediate cannot be relocated: an overflow.
        let absolute = try source("#include <stdio.h>\nFILE **f(void) { return &stderr; }", "abs", in: dir, flags: ["-O2", "-fno-pic"])
        try expectFailure([LoaderInput(name: "abs.o", bytes: absolute)]) {
            if case let .relocationOverflow(object, _, _, type, symbol, _) = $0 { return object == "abs.o" && symbol == "stderr" && (type == 10 || type == 11) }
            return false
        }
        // A relocation type the loader does not know, named with its place.
        var unsupported = try source("int g = 3; int f(void) { return g; }", "unsup", in: dir, flags: ["-O2", "-fPIC"])
        let file = try ELFFile(bytes: unsupported, name: "unsup.o")
        let rela = try #require(file.sections.first { $0.type == ELF.SHT_RELA && $0.name == ".rela.text" })
        unsupported[rela.offset + 8] = 12  // R_X86_64_16
        try expectFailure([LoaderInput(name: "unsup.o", bytes: unsupported)]) {
            if case let .unsupportedRelocation(object, section, _, type) = $0 { return object == "unsup.o" && section == ".text" && type == 12 }
            return false
        }
    }

    @Test func corruptArchive() throws {
        var bytes = Array("!<arch>\n".utf8) + Array("x.o/            0           0     0     644     10        `\n".utf8)
        bytes += [UInt8](repeating: 0, count: 4)
        try expectFailure([LoaderInput(name: "lib.a", bytes: bytes)]) {
            if case .elf(.archive) = $0 { return true }
            return false
        }
    }
}
