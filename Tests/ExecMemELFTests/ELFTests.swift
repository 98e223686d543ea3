// The ELF reader on objects and archives built at test time by the toolchain, and on corrupt input.

@testable import ExecMemELF
import Foundation
import Testing

let toolchainBin = ["/opt/swift/usr/bin", "/usr/bin"].first { FileManager.default.isExecutableFile(atPath: $0 + "/clang") }

func tool(_ name: String, _ args: [String]) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: toolchainBin! + "/" + name)
    p.arguments = args
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw ELFError.malformed(file: name, what: "\(name) \(args) failed") }
}

func scratchDirectory() throws -> String {
    let dir = NSTemporaryDirectory() + "execmem-elf-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

@Suite(.enabled(if: toolchainBin != nil, "needs the toolchain's clang and llvm-ar")) struct ELFTests {
    func compile(_ source: String, _ name: String, in dir: String, flags: [String] = []) throws -> String {
        try source.write(toFile: "\(dir)/\(name).c", atomically: true, encoding: .utf8)
        try tool("clang", ["-O1", "-c", "\(dir)/\(name).c", "-o", "\(dir)/\(name).o"] + flags)
        return "\(dir)/\(name).o"
    }

    @Test func readsSectionsSymbolsAndRelocations() throws {
        let dir = try scratchDirectory()
        let path = try compile("""
            extern int printf(const char *, ...);
            int counter = 5;
            static const char message[] = "hello %d";
            int bump(int x) { counter += x; return printf(message, counter); }
            """, "a", in: dir)
        let f = try ELFFile(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: path))), name: "a.o", machine: ELF.EM_X86_64)
        #expect(f.type == ELF.ET_REL && f.machine == ELF.EM_X86_64)
        let text = try #require(f.section(named: ".text"))
        #expect(text.isExecutable && text.isAllocated && !text.isWritable)
        #expect(f.section(named: ".data")?.isWritable == true)
        let bump = try #require(f.symbols.first { $0.name == "bump" })
        #expect(bump.type == ELF.STT_FUNC && bump.isGlobal && Int(bump.sectionIndex) == text.index)
        #expect(f.symbols.first { $0.name == "printf" }?.isUndefined == true)
        let relocations = try f.relocations(for: text)
        #expect(relocations.contains { f.symbols[$0.symbolIndex].name == "printf" && $0.type == 4 })  // R_X86_64_PLT32
        #expect(relocations.allSatisfy { $0.addend != nil })  // RELA on x86-64
    }

    @Test(arguments: ["gnu", "bsd"])
    func archivesIndexTheirSymbols(format: String) throws {
        let dir = try scratchDirectory()
        let a = try compile("int alpha(void) { return 1; }", "alpha", in: dir)
        let b = try compile("int beta_function_with_a_long_name(void) { return 2; }", "a_member_with_a_rather_long_file_name", in: dir)
        try tool("llvm-ar", ["rcs", "--format=\(format)", "\(dir)/lib.a", a, b])
        let archive = try Archive(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/lib.a"))), name: "lib.a")
        #expect(archive.members.map(\.name) == ["alpha.o", "a_member_with_a_rather_long_file_name.o"])
        let i = try #require(archive.symbolIndex["beta_function_with_a_long_name"])
        #expect(archive.members[i].name == "a_member_with_a_rather_long_file_name.o")
        #expect(archive.symbolIndex["alpha"] == 0)
        let member = try ELFFile(bytes: archive.members[i].bytes, name: archive.members[i].name)
        #expect(member.symbols.contains { $0.name == "beta_function_with_a_long_name" })
    }

    @Test func corruptInputIsATypedError() throws {
        let dir = try scratchDirectory()
        let good = Array(try Data(contentsOf: URL(fileURLWithPath: try compile("int x = 1;", "x", in: dir))))
        #expect(throws: ELFError.notELF(file: "n")) { try ELFFile(bytes: [1, 2, 3, 4, 5], name: "n") }
        #expect { try ELFFile(bytes: Array(good.prefix(40)), name: "t") } throws: { e in
            guard case .truncated? = e as? ELFError else { return false }
            return true
        }
        var wrongClass = good
        wrongClass[4] = 1
        #expect(throws: ELFError.unsupported(file: "c", what: "class 1 (only ELF64)")) { try ELFFile(bytes: wrongClass, name: "c") }
        #expect(throws: ELFError.wrongMachine(file: "m", machine: ELF.EM_X86_64, expected: ELF.EM_BPF)) {
            try ELFFile(bytes: good, name: "m", machine: ELF.EM_BPF)
        }
        // Section headers cut off, and a section name table index out of range.
        let shoff = Int(good[40..<48].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) })
        #expect { try ELFFile(bytes: Array(good.prefix(shoff + 10)), name: "h") } throws: { e in
            guard case .truncated? = e as? ELFError else { return false }
            return true
        }
        var badIndex = good
        badIndex[62] = 0xF0
        #expect { try ELFFile(bytes: badIndex, name: "i") } throws: { e in
            guard case .badIndex? = e as? ELFError else { return false }
            return true
        }
        // Archives: bad magic, bad header, size past the end.
        #expect(throws: ELFError.archive(file: "a", what: "missing the !<arch> magic")) { try Archive(bytes: Array("nope".utf8), name: "a") }
        var member = Array("!<arch>\n".utf8) + Array("x.o/            0           0     0     644     999       `\n".utf8)
        #expect { try Archive(bytes: member, name: "b") } throws: { e in
            guard case let .archive(_, what)? = e as? ELFError else { return false }
            return what.contains("past the end")
        }
        member[8 + 58] = 0x41
        #expect { try Archive(bytes: member, name: "b") } throws: { e in
            guard case let .archive(_, what)? = e as? ELFError else { return false }
            return what.contains("terminator")
        }
    }
}
