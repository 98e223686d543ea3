// Names shared by thousands of references: a section-name table, a GNU `//` long-name table and a
// BSD `__.SYMDEF` string table each hold one 64 KiB name that every section, member or symbol
// entry names. Decoded once per reference, they took memory quadratic in the file (the red team's
// 1 MB files took 1-2 GB); decoded once per offset, reading each of these takes a few MiB. Each
// runs in a child process so that its resident memory is its own.

import ExecMemELF
import Foundation
import Testing

private func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

/// The child's resident memory, in bytes.
private func resident() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? Int.max / 2) << 10
}

/// An archive member header: name (16), dates and modes (32), size (10), terminator.
private func memberHeader(_ name: String, size: Int) -> [UInt8] {
    func pad(_ s: String, _ n: Int) -> [UInt8] { Array(s.utf8) + [UInt8](repeating: 0x20, count: n - s.utf8.count) }
    return pad(name, 16) + pad("0", 12) + pad("0", 6) + pad("0", 6) + pad("644", 8) + pad("\(size)", 10) + [0x60, 0x0A]
}

private let longName = [UInt8](repeating: 0x41, count: 64 << 10)
private let references = 8192  // x 64 KiB = 512 MiB if each decoded its own copy

@Suite struct NameMemoryTests {
    @Test func sectionNamesSharedByEverySection() async {
        await #expect(processExitsWith: .success) {
            let names = [0] + longName + [0]
            var b: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1] + [UInt8](repeating: 0, count: 9) + le(UInt16(1)) + le(UInt16(62)) + le(UInt32(1))
            b += le(UInt64(0)) + le(UInt64(0)) + le(UInt64(64 + names.count)) + le(UInt32(0)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
            b += le(UInt16(64)) + le(UInt16(references)) + le(UInt16(1))
            b += names
            func header(type: UInt32, offset: Int, size: Int) -> [UInt8] {
                le(UInt32(1)) + le(type) + le(UInt64(0)) + le(UInt64(0)) + le(UInt64(offset)) + le(UInt64(size)) + le(UInt32(0)) + le(UInt32(0)) + le(UInt64(1)) + le(UInt64(0))
            }
            b += header(type: 0, offset: 0, size: 0) + header(type: 3, offset: 64, size: names.count)
            for _ in 2..<references { b += header(type: 1, offset: 64, size: 1) }
            let before = resident()
            let file = try ELFFile(bytes: b, name: "names.o")
            #expect(file.sections.count == references && file.sections[5].name.utf8.count == longName.count)
            if resident() - before > 64 << 20 { exit(1) }
        }
    }

    @Test func gnuLongNamesSharedByEveryMember() async {
        await #expect(processExitsWith: .success) {
            var b = Array("!<arch>\n".utf8)
            let table = longName + Array("/\n".utf8)
            b += memberHeader("//", size: table.count) + table
            for _ in 0..<references { b += memberHeader("/0", size: 0) }
            let before = resident()
            let archive = try Archive(bytes: b, name: "long.a")
            #expect(archive.members.count == references)
            if resident() - before > 64 << 20 { exit(1) }
        }
    }

    @Test func bsdSymbolNamesSharedByEveryEntry() async {
        await #expect(processExitsWith: .success) {
            var b = Array("!<arch>\n".utf8)
            let strings = longName + [0, 0]  // an even size: no padding before the next member
            var symdef = le(UInt32(references * 8))
            let member = 8 + 60 + 4 + references * 8 + 4 + strings.count  // the member after __.SYMDEF
            for _ in 0..<references { symdef += le(UInt32(0)) + le(UInt32(member)) }
            symdef += le(UInt32(strings.count)) + strings
            b += memberHeader("__.SYMDEF", size: symdef.count) + symdef
            #expect(b.count == member)
            b += memberHeader("m.o/", size: 0)
            let before = resident()
            let archive = try Archive(bytes: b, name: "bsd.a")
            #expect(archive.symbolIndex.count == 1)
            if resident() - before > 64 << 20 { exit(1) }
        }
    }
}
