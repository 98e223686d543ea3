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
