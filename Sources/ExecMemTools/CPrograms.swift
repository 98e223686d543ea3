// The eBPF programs written in C that the tests and benchmarks use (Resources/bpf): compiled at run
// time with the toolchain's clang, for `-target bpf` and natively, so an eBPF result can be compared
// with the same C run as machine code.

import ExecMemBPF
import Foundation

public enum CPrograms {
    /// Compute programs (prime sieve, memcpy, string compare, switch dispatch, log2, CRC-32) and the maps one.
    public static let names = ["sieve", "memcpy", "strcmp", "switch", "log2", "crc32", "maps"]

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Where the C sources are (bundled with the package).
    public static var directory: String {
        resourceDirectory + "/bpf"
    }

    /// The clang to use: the toolchain's (it has the BPF target), else the first on PATH.
    public static let clang: String? = {
        var candidates: [String] = []
        if let swift = ProcessInfo.processInfo.environment["PATH"]?.split(separator: ":").map(String.init) {
            candidates += swift.map { $0 + "/clang" }
        }
        candidates.insert("/opt/swift/usr/bin/clang", at: 0)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// Runs `tool`, returning its exit status, standard output and standard error.
    static func spawn(_ tool: String, _ arguments: [String], input: Data? = nil) throws -> (status: Int32, output: Data, errors: Data) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        if let input {
            let inPipe = Pipe()
            p.standardInput = inPipe
            try p.run()
            inPipe.fileHandleForWriting.write(input)
            try inPipe.fileHandleForWriting.close()
        } else {
            try p.run()
        }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, data, errors)
    }

    /// Runs `tool` and returns its standard output; a non-zero exit is a `Failure` with its errors.
    static func run(_ tool: String, _ arguments: [String], input: Data? = nil) throws -> Data {
        let (status, data, errors) = try spawn(tool, arguments, input: input)
        guard status == 0 else {
            throw Failure(description: "\(tool) \(arguments.joined(separator: " ")) failed (\(status)): \(String(decoding: errors, as: UTF8.self))")
        }
        return data
    }

    /// A scratch directory for compiler output.
    public static func scratch() throws -> String {
        let dir = NSTemporaryDirectory() + "execmem-bpf-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// `clang -target bpf -mcpu=<cpu> -O2 -c name.c`; returns the object's bytes.
    public static func compileBPF(_ name: String, cpu: String, in dir: String) throws -> [UInt8] {
        guard let clang else { throw Failure(description: "no clang found") }
        let out = "\(dir)/\(name)-\(cpu).o"
        _ = try run(clang, ["-target", "bpf", "-mcpu=\(cpu)", "-O2", "-ffreestanding", "-c", "\(directory)/\(name).c", "-o", out])
        return Array(try Data(contentsOf: URL(fileURLWithPath: out)))
    }

    /// The same C built natively with a small main; returns the executable's path.
    public static func compileNative(_ name: String, in dir: String) throws -> String {
        guard let clang else { throw Failure(description: "no clang found") }
        let out = "\(dir)/\(name)-native"
        _ = try run(clang, ["-O2", "\(directory)/native_main.c", "\(directory)/\(name).c", "-o", out])
        return out
    }

    /// The same C as a shared object (`clang -O2 -shared -fPIC`), for timing in process; returns its path.
    public static func compileNativeShared(_ name: String, in dir: String) throws -> String {
        guard let clang else { throw Failure(description: "no clang found") }
        let out = "\(dir)/\(name)-native.so"
        _ = try run(clang, ["-O2", "-shared", "-fPIC", "\(directory)/\(name).c", "-o", out])
        return out
    }

    /// Runs a native build on `input`; returns r0 and the memory afterwards.
    public static func runNative(_ executable: String, input: [UInt8], in dir: String) throws -> (UInt64, [UInt8]) {
        let file = "\(dir)/input-\(UInt32.random(in: 0...UInt32.max)).bin"
        try Data(input).write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let lines = String(decoding: try run(executable, [file]), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 2, let r0 = UInt64(lines[0], radix: 16) else { throw Failure(description: "bad native output") }
        var memory: [UInt8] = []
        var i = lines[1].startIndex
        while i < lines[1].endIndex {
            let j = lines[1].index(i, offsetBy: 2)
            memory.append(UInt8(lines[1][i..<j], radix: 16)!)
            i = j
        }
        return (r0, memory)
    }
}
