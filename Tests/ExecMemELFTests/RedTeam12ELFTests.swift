// Red team, round 12: the name table's look-ups across string tables that share their bytes.

@testable import ExecMemELF
import Testing

private func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

@Suite struct RedTeam12ELFTests {
    /// An object whose `.strtab` and `.shstrtab` start at the same byte, `.strtab` ending `cut`
    /// bytes into the name of its one symbol (the whole name when `cut` is nil), and two sections
    /// named by that same offset of `.shstrtab` (the second look-up is the one remembered).
    static func sharedTables(cut: Int?) -> (bytes: [UInt8], name: String) {
        let long = "main_is_longer_than_its_string_table"
        let names = Array("\0.text\0.symtab\0.strtab\0.shstrtab\0\(long)\0".utf8)
        func at(_ s: String) -> Int { names.indices.first { names[$0...].starts(with: Array(s.utf8) + [0]) && names[$0 - 1] == 0 }! }
        let name = at(long)
        var b = [UInt8](repeating: 0, count: 64)
        let text = b.count
        b += [0x31, 0xC0, 0xC3, 0x90, 0, 0, 0, 0]
        let symtab = b.count
        b += [UInt8](repeating: 0, count: 24) + le(UInt32(name)) + [0x12, 0] + le(UInt16(1)) + le(UInt64(0)) + le(UInt64(3))
        let strings = b.count
        b += names
        while b.count % 8 != 0 { b.append(0) }
        let shoff = b.count
        func header(_ n: Int, _ type: UInt32, _ flags: UInt64, _ offset: Int, _ size: Int, link: UInt32 = 0, info: UInt32 = 0, entsize: UInt64 = 0) -> [UInt8] {
            le(UInt32(n)) + le(type) + le(flags) + le(UInt64(0)) + le(UInt64(offset)) + le(UInt64(size)) + le(link) + le(info) + le(UInt64(1)) + le(entsize)
        }
        b += header(0, 0, 0, 0, 0)
        b += header(at(".text"), ELF.SHT_PROGBITS, ELF.SHF_ALLOC | ELF.SHF_EXECINSTR, text, 4)
        b += header(at(".symtab"), ELF.SHT_SYMTAB, 0, symtab, 48, link: 3, info: 1, entsize: 24)
        b += header(at(".strtab"), ELF.SHT_STRTAB, 0, strings, cut.map { name + $0 } ?? names.count)
        b += header(at(".shstrtab"), ELF.SHT_STRTAB, 0, strings, names.count)
        b += header(name, ELF.SHT_PROGBITS, 0, 0, 0)
        b += header(name, ELF.SHT_PROGBITS, 0, 0, 0)
        let elf: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1] + [UInt8](repeating: 0, count: 9) + le(ELF.ET_REL) + le(ELF.EM_X86_64) + le(UInt32(1))
            + le(UInt64(0)) + le(UInt64(0)) + le(UInt64(shoff)) + le(UInt32(0)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
            + le(UInt16(64)) + le(UInt16(7)) + le(UInt16(4))
        b.replaceSubrange(0..<64, with: elf)
        return (b, long)
    }

    /// A symbol's name must end inside `.strtab`. When `.shstrtab` starts at the same byte and is
    /// longer, and section names had named that offset twice, the name remembered from them was
    /// taken for the symbol without a look at where `.strtab` ends: a name that runs past its
    /// table was accepted (with one section name, it was not: read in order, it is not remembered).
    @Test func aNameDecodedForALongerTableMustEndInsideTheShorterOne() throws {
        let whole = Self.sharedTables(cut: nil)
        let file = try ELFFile(bytes: whole.bytes, name: "shared.o")
        #expect(file.symbols[1].name == whole.name && file.sections[5].name == whole.name && file.sections[6].name == whole.name)
        for cut in [1, 4, whole.name.utf8.count] {
            #expect {
                _ = try ELFFile(bytes: Self.sharedTables(cut: cut).bytes, name: "cut.o")
            } throws: { e in
                (e as? ELFError)?.description.contains("is not terminated within its table") == true
            }
        }
    }
}
