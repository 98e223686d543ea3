// Fixtures of the loader tests; compilers, processes and scratch directories come from ExecMemTestSupport.

import ExecMemTestSupport
import Foundation
import Testing

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// Compiles fixture `name.c` into `dir` with `flags`; returns the object's path.
func compile(_ compiler: String, _ name: String, in dir: String, flags: [String]) throws -> String {
    try ExecMemTestSupport.compile(compiler, "\(fixtures)/\(name).c", in: dir, flags: flags)
}

let gxx = "/usr/bin/g++"
let clangxx = "/opt/swift/usr/bin/clang++"
let ar = ["/usr/bin/ar", "/opt/swift/usr/bin/llvm-ar"].first { FileManager.default.isExecutableFile(atPath: $0) }

/// Compiles C++ `source` with `compiler` (g++ unless told) and `flags` into `dir`; returns the object's path.
func compileCxx(_ name: String, _ source: String, in dir: String, flags: [String], compiler: String = gxx) throws -> String {
    try source.write(toFile: "\(dir)/\(name).cc", atomically: true, encoding: .utf8)
    try run(compiler, flags + ["-c", "\(dir)/\(name).cc", "-o", "\(dir)/\(name).o"])
    return "\(dir)/\(name).o"
}

/// The C++ compilers every C++ test runs with (Debian's g++, the toolchain's clang++) that are on
/// this machine: a missing one's cases are left out, and `CxxTests.gxxIsPresent` or
/// `clangxxIsPresent` is skipped, naming it.
let cxxCompilers = [gxx, clangxx].filter { FileManager.default.isExecutableFile(atPath: $0) }

/// A C++ compiler and its flags: one case of a C++ test.
struct CxxVariant: Sendable, CustomTestStringConvertible {
    let compiler: String
    let flags: [String]

    var testDescription: String { "\((compiler as NSString).lastPathComponent) \(flags.joined(separator: " "))" }
    var isClang: Bool { compiler.hasSuffix("clang++") }

    /// The compilers present at -O0, -O1 and -O2.
    static let all: [CxxVariant] = cxxCompilers.flatMap { c in ["-O0", "-O1", "-O2"].map { CxxVariant(compiler: c, flags: [$0]) } }

    /// Compiles `Fixtures/cxx/<program>/<name>.cc` for each name into `dir`; returns the objects.
    func compile(_ program: String, _ names: [String], in dir: String, extraFlags: [String] = []) throws -> [String] {
        try names.map { try ExecMemTestSupport.compile(compiler, "\(fixtures)/cxx/\(program)/\($0).cc", in: dir, flags: flags + extraFlags) }
    }
}

/// Links `objects` natively with `linker` (g++: GNU ld, whichever compiler made them; clang++ would
/// take gold here) and runs the program, then runs the same objects with `execmem load`. With
/// `archive`, the objects after the first go into an archive (`ar rcs`), for both.
func runNativeAndLoaded(_ objects: [String], in dir: String, linker: String = gxx, archive: Bool = false,
                        arguments: [String] = []) throws -> (native: ProcessResult, loaded: ProcessResult) {
    var inputs = objects
    if archive {
        let a = "\(dir)/lib\(UInt32.random(in: 0...UInt32.max)).a"
        try run(try #require(ar, "needs ar"), ["rcs", a] + objects.dropFirst())
        inputs = [objects[0], a]
    }
    let program = "\(dir)/native-\(UInt32.random(in: 0...UInt32.max))"
    try run(linker, inputs + ["-o", program])
    let native = try run(program, arguments, check: false)
    let loaded = try run(execmemBinary, ["load"] + inputs + ["--"] + arguments, check: false)
    return (native, loaded)
}

/// The loaded program exited as the native one did and wrote the same standard output and error.
func expectSameRun(_ runs: (native: ProcessResult, loaded: ProcessResult), _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let (native, loaded) = runs
    #expect(loaded.status == native.status, "\(what): exit status", sourceLocation: sourceLocation)
    #expect(loaded.output == native.output, "\(what): standard output", sourceLocation: sourceLocation)
    #expect(loaded.errors == native.errors, "\(what): standard error", sourceLocation: sourceLocation)
}
