// Where the shared conformance suite lives, and small helpers for the eBPF tests.

import ExecMem
import ExecMemBPF
import Foundation
import Testing

/// ../shared/bpf-conformance/tests next to the checkout (CI has it; a fresh machine may not).
let conformanceDirectory: String? = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }  // Tests/ExecMemBPFTests/Support.swift -> package root
    let dir = url.deletingLastPathComponent().appendingPathComponent("shared/bpf-conformance/tests").path
    return FileManager.default.fileExists(atPath: dir) ? dir : nil
}()

let conformanceMissing = "the conformance suite is not at ../shared/bpf-conformance/tests (it is not copied into this repository)"

func conformanceFiles() throws -> [(String, String)] {
    let dir = try #require(conformanceDirectory)
    return try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".data") }.sorted().map {
        ($0, try String(contentsOfFile: dir + "/" + $0, encoding: .utf8))
    }
}

/// A small allocator for tests, so JIT code of many tests does not all land in the shared one.
func testAllocator() throws -> ExecMemAllocator {
    var c = ExecMemConfiguration()
    c.rangeSize = 64 << 20
    c.fallbackSize = 0
    return try ExecMemAllocator(c)
}

import ExecMemTools

enum ExecMemToolsAvailable {
    static let clang = CPrograms.clang != nil
}

/// Compiles C source text with `clang -target bpf -O2 -c`.
func compileBPF(_ source: String, cpu: String = "v3") throws -> [UInt8] {
    let dir = try CPrograms.scratch()
    let path = dir + "/inline.c"
    try source.write(toFile: path, atomically: true, encoding: .utf8)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: CPrograms.clang!)
    p.arguments = ["-target", "bpf", "-mcpu=\(cpu)", "-O2", "-ffreestanding", "-c", path, "-o", dir + "/inline.o"]
    try p.run()
    p.waitUntilExit()
    return Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/inline.o")))
}

/// A minimal relocatable EM_BPF object: `.text` = `mov r0, 0; exit` with the FUNC symbol `f` at
/// (`entrySection`, `entryValue`); then `symbols` (global objects: name offset in the string table,
/// section index, value, size); the string table "\0f\0" + `strings`; and, when `mapDef` is given,
/// a `maps` section (index 5) holding that one `struct bpf_map_def`. Red-team tests set one field
/// to what an attacker would.
func bpfObject(entryValue: UInt64 = 0, entrySection: UInt16 = 1, symbols: [(name: UInt32, section: UInt16, value: UInt64, size: UInt64)] = [],
               strings: [UInt8] = [], mapDef: [UInt32]? = nil) -> [UInt8] {
    func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    let text: [UInt8] = [0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]
    let shstr = Array("\0.text\0.symtab\0.strtab\0.shstrtab\0maps\0".utf8), strtab = Array("\0f\0".utf8) + strings
    var symtab = [UInt8](repeating: 0, count: 24) + le(UInt32(1)) + [0x12, 0] + le(entrySection) + le(entryValue) + le(UInt64(16))
    for s in symbols { symtab += le(s.name) + [0x11, 0] + le(s.section) + le(s.value) + le(s.size) }
    let def = (mapDef ?? []).flatMap { le($0) } + [UInt8](repeating: 0, count: mapDef == nil ? 0 : 4)
    var body: [UInt8] = [], offsets: [Int] = []
    for blob in [text, symtab, strtab, shstr, def] { offsets.append(64 + body.count); body += blob }
    func sh(_ name: UInt32, _ type: UInt32, _ flags: UInt64, _ off: Int, _ size: Int, link: UInt32 = 0, info: UInt32 = 0, entsize: UInt64 = 0) -> [UInt8] {
        le(name) + le(type) + le(flags) + le(UInt64(0)) + le(UInt64(off)) + le(UInt64(size)) + le(link) + le(info) + le(UInt64(8)) + le(entsize)
    }
    let shoff = 64 + body.count
    var headers = sh(0, 0, 0, 0, 0) + sh(1, 1, 6, offsets[0], text.count) + sh(7, 2, 0, offsets[1], symtab.count, link: 3, info: 1, entsize: 24)
        + sh(15, 3, 0, offsets[2], strtab.count) + sh(23, 3, 0, offsets[3], shstr.count)
    if mapDef != nil { headers += sh(33, 1, 3, offsets[4], def.count) }
    let header: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8) + le(UInt16(1)) + le(UInt16(247)) + le(UInt32(1))
        + le(UInt64(0)) + le(UInt64(0)) + le(UInt64(shoff)) + le(UInt32(0)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
        + le(UInt16(64)) + le(UInt16(mapDef == nil ? 5 : 6)) + le(UInt16(4))
    return header + body + headers
}
