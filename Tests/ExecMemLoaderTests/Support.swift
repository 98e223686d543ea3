// Compilers, fixtures and the execmem binary for the loader tests.

import ExecMem
import Foundation
import Testing

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// The compilers on this machine: the toolchain's clang always, gcc where present.
let compilers: [String] = ["/opt/swift/usr/bin/clang", "/usr/bin/gcc"].filter { FileManager.default.isExecutableFile(atPath: $0) }

/// The execmem binary built beside the tests.
let execmemBinary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("execmem").path

struct ProcessResult { let status: Int32; let output: String; let errors: String }

@discardableResult
func run(_ tool: String, _ arguments: [String], check: Bool = true) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = arguments
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let r = ProcessResult(status: p.terminationStatus, output: String(decoding: o, as: UTF8.self), errors: String(decoding: e, as: UTF8.self))
    if check && r.status != 0 && r.output.isEmpty { throw Failure("\(tool) \(arguments.joined(separator: " ")) failed: \(r.errors)") }
    return r
}

struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func scratch() throws -> String {
    let dir = NSTemporaryDirectory() + "execmem-loader-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Compiles fixture `name.c` into `dir` with `flags`; returns the object's path.
func compile(_ compiler: String, _ name: String, in dir: String, flags: [String]) throws -> String {
    let tag = flags.joined().replacingOccurrences(of: "-", with: "_").replacingOccurrences(of: "=", with: "")
    let out = "\(dir)/\(name)\(tag)-\((compiler as NSString).lastPathComponent).o"
    try run(compiler, flags + ["-c", "\(fixtures)/\(name).c", "-o", out])
    return out
}

/// A small allocator for in-process loads.
func testAllocator() throws -> ExecMemAllocator {
    var c = ExecMemConfiguration()
    c.rangeSize = 128 << 20
    c.fallbackSize = 0
    return try ExecMemAllocator(c)
}
