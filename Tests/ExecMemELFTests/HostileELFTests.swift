// Files made to break the reader: every field read from a file is untrusted. Each case is a minimal
// ELF64 object or archive built here with one field set to what a fuzzer or an attacker would put
// there; each must give a typed error (never a trap, never a value masked into a valid one).

@testable import ExecMemELF
import Testing

/// A minimal relocatable ELF64: sections [null, .text (8 bytes), .shstrtab], headers at the end.
struct TinyELF {
    var bytes: [UInt8]
    static let shoff = 64 + 8 + 24  // header, .text, .shstrtab (24 bytes)

    init() {
        var b = [UInt8](repeating: 0, count: 64)
        b[0...6] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1]
        b[16] = 1; b[18] = 62  // ET_REL, x86-64
        b += [0x31, 0xC0, 0xC3, 0x90, 0x90, 0x90, 0x90, 0x90]  // .text
        let names = Array("\0.text\0.shstrtab\0".utf8)
        b += names + [UInt8](repeating: 0, count: 24 - names.count)
        bytes = b + [UInt8](repeating: 0, count: 3 * 64)
        put64(40, UInt64(Self.shoff)); put16(58, 64); put16(60, 3); put16(62, 2)
        header(1, name: 1, type: 1, flags: 6, offset: 64, size: 8, align: 16)
        header(2, name: 7, type: 3, flags: 0, offset: 72, size: UInt64(names.count), align: 1)
    }

    mutating func put16(_ at: Int, _ v: UInt16) { for i in 0..<2 { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
    mutating func put32(_ at: Int, _ v: UInt32) { for i in 0..<4 { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
    mutating func put64(_ at: Int, _ v: UInt64) { for i in 0..<8 { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }

    mutating func header(_ i: Int, name: UInt32, type: UInt32, flags: UInt64, offset: UInt64, size: UInt64, align: UInt64) {
        let h = Self.shoff + i * 64
        put32(h, name); put32(h + 4, type); put64(h + 8, flags); put64(h + 24, offset); put64(h + 32, size); put64(h + 48, align)
    }

    /// Byte offset of field `at` of section header `i`.
    static func field(_ i: Int, _ at: Int) -> Int { shoff + i * 64 + at }
}

@Suite struct HostileELFTests {
    func expectTypedError(_ bytes: [UInt8], _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(sourceLocation: sourceLocation) { try ELFFile(bytes: bytes, name: "hostile.o") } throws: { e in
            guard let e = e as? ELFError else { return false }
            return e.description.contains(text)
        }
    }

    /// Files read with one budget share it: the members one load pulls from an archive each had a
    /// name budget of their own (1 MiB each: a 12 MB archive of 1,000 members took 1.2 GB).
    @Test func filesOfOneLoadShareOneNameBudget() throws {
        var budget = ELFNameBudget(inputBytes: 0)
        let one = try ELFFile(bytes: TinyELF().bytes, name: "t.o").sections.reduce(0) { $0 + $1.name.utf8.count }
        for _ in 0..<10 { _ = try ELFFile(bytes: TinyELF().bytes, name: "t.o", names: &budget) }
        #expect(one > 0 && budget.remaining == budget.limit - 10 * one)
        budget.remaining = one - 1
        #expect(throws: ELFError.self) { try ELFFile(bytes: TinyELF().bytes, name: "t.o", names: &budget) }
    }

    @Test func theTinyObjectIsValid() throws {
        let f = try ELFFile(bytes: TinyELF().bytes, name: "tiny.o")
        #expect(f.sections.map(\.name) == ["", ".text", ".shstrtab"])
        #expect(f.contents(f.sections[1]).count == 8)
    }

    @Test func offsetsAndSizesAreNeverMaskedIntoRange() {
        var e = TinyELF()
        e.put64(TinyELF.field(1, 24), 0x8000_0000_0000_0040)  // sh_offset with the top bit: was masked to 0x40
        expectTypedError(e.bytes, "section 1 sh_offset 9223372036854775872 is too large")
        e = TinyELF()
        e.put64(TinyELF.field(1, 32), 0x8000_0000_0000_0008)
        expectTypedError(e.bytes, "section 1 sh_size")
        e = TinyELF()
        e.put64(40, 0x8000_0000_0000_0060)  // e_shoff
        expectTypedError(e.bytes, "e_shoff")
        e = TinyELF()
        e.put64(TinyELF.field(1, 24), UInt64(Int.max - 4))  // offset + size overflows
        expectTypedError(e.bytes, "section 1 contents")
    }

    @Test func nullSectionsAndStringTablesAreChecked() {
        var e = TinyELF()
        e.put64(TinyELF.field(0, 24), 1 << 40); e.put64(TinyELF.field(0, 32), 16)  // SHT_NULL with contents past the end
        expectTypedError(e.bytes, "section 0 contents")
        e = TinyELF()
        e.put32(TinyELF.field(2, 4), 8)  // the name table becomes NOBITS
        expectTypedError(e.bytes, "has no bytes in the file")
    }

    @Test func extendedSectionCountsAreBounded() {
        var e = TinyELF()
        e.put16(60, 0)  // e_shnum 0: the count is in section 0's sh_size
        e.put64(TinyELF.field(0, 32), UInt64.max)
        expectTypedError(e.bytes, "section count")
        e.put64(TinyELF.field(0, 32), 1 << 30)
        expectTypedError(e.bytes, "ELFFile.maxSections")
    }

    @Test func archiveNamesWithNegativeOrHugeLengthsAreTypedErrors() {
        func member(_ name: String, _ data: [UInt8]) -> [UInt8] {
            func pad(_ s: String, _ n: Int) -> [UInt8] { Array((s + String(repeating: " ", count: max(0, n - s.count))).utf8.prefix(n)) }
            return pad(name, 16) + pad("0", 12) + pad("0", 6) + pad("0", 6) + pad("644", 8) + pad(String(data.count), 10) + [0x60, 0x0A] + data
                + (data.count % 2 == 1 ? [0x0A] : [])
        }
        let magic = Array("!<arch>\n".utf8)
        let cases: [([UInt8], String)] = [
            (magic + member("//", Array("long.o/\n".utf8)) + member("/-5", [1, 2]), "long name offset '-5'"),
            (magic + member("//", Array("long.o/\n".utf8)) + member("/99999999999999999999", [1, 2]), "long name offset"),
            (magic + member("#1/-3", [1, 2, 3, 4]), "BSD name length '-3'"),
            (magic + member("#1/9", [1, 2, 3, 4]), "BSD name length '9'"),
        ]
        for (bytes, text) in cases {
            #expect { try Archive(bytes: bytes, name: "hostile.a") } throws: { e in
                (e as? ELFError)?.description.contains(text) == true
            }
        }
    }
}
