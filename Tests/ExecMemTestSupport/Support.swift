// What several test targets need: compilers, child processes, scratch directories, the execmem
// binary built beside the tests, and a small allocator.

import ExecMem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The compilers on this machine: the toolchain's clang always, gcc where present.
public let compilers: [String] = ["/opt/swift/usr/bin/clang", "/usr/bin/gcc"].filter { FileManager.default.isExecutableFile(atPath: $0) }

/// The execmem binary built beside the tests.
public let execmemBinary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("execmem").path

public struct ProcessResult: Sendable { public let status: Int32; public let output: String; public let errors: String }

/// Runs `p` to its end and returns what it wrote on standard output and error.
public func runCollecting(_ p: Process) throws -> (output: Data, errors: Data) {
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Drain both pipes at once: a child that fills one while we wait on the other would hang.
    nonisolated(unsafe) var e = Data()
    let drained = DispatchSemaphore(value: 0)
    DispatchQueue.global().async { e = err.fileHandleForReading.readDataToEndOfFile(); drained.signal() }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    drained.wait()
    p.waitUntilExit()
    return (o, e)
}

/// Runs `tool`; with `check`, a failure that printed nothing on standard output throws.
@discardableResult
public func run(_ tool: String, _ arguments: [String], check: Bool = true) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = arguments
    let (o, e) = try runCollecting(p)
    let r = ProcessResult(status: p.terminationStatus, output: String(decoding: o, as: UTF8.self), errors: String(decoding: e, as: UTF8.self))
    if check && r.status != 0 && r.output.isEmpty { throw Failure("\(tool) \(arguments.joined(separator: " ")) failed: \(r.errors)") }
    return r
}

public struct Failure: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A fresh directory under the temporary directory.
public func scratch(_ prefix: String = "execmem-test") throws -> String {
    let dir = NSTemporaryDirectory() + "\(prefix)-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Compiles `source` (a .c path) into `dir` with `flags`; returns the object's path.
public func compile(_ compiler: String, _ source: String, in dir: String, flags: [String]) throws -> String {
    let name = ((source as NSString).lastPathComponent as NSString).deletingPathExtension
    let tag = flags.joined().replacingOccurrences(of: "-", with: "_").replacingOccurrences(of: "=", with: "").replacingOccurrences(of: ",", with: "_")
    let out = "\(dir)/\(name)\(tag)-\((compiler as NSString).lastPathComponent).o"
    try run(compiler, flags + ["-c", source, "-o", out])
    return out
}

/// A small allocator for in-process loads.
public func testAllocator(rangeSize: Int = 128 << 20) throws -> ExecMemAllocator {
    var c = ExecMemConfiguration()
    c.rangeSize = rangeSize
    c.fallbackSize = 0
    return try ExecMemAllocator(c)
}

/// One input a fuzz target crashed on, kept in `Fuzz/Regressions/<target>/`: the bytes, and the
/// text (from `<name>.error`) the typed error it must now give contains.
public struct FuzzRegression: Sendable, CustomStringConvertible {
    public let name: String
    public let bytes: [UInt8]
    public let expectedError: String
    public var description: String { name }
}

/// The checked-in regression inputs of one fuzz target (`elf`, `archive`, `bpfelf`, `loader`,
/// `assembler`, `verifier`); each file `NAME` comes with `NAME.error`.
public func fuzzRegressions(_ target: String) -> [FuzzRegression] {
    let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/Regressions/\(target)")
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
    // An input without its .error file expects a text no error contains: its test fails, it is not skipped.
    return names.filter { !$0.hasSuffix(".error") }.sorted().map { name in
        let bytes = FileManager.default.contents(atPath: dir.appendingPathComponent(name).path) ?? Data()
        let expected = FileManager.default.contents(atPath: dir.appendingPathComponent(name + ".error").path)
            .map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) } ?? "\u{0}(no \(name).error)"
        return FuzzRegression(name: name, bytes: Array(bytes), expectedError: expected)
    }
}

/// What `body` throws, as text, or nil when it returns.
public func errorText(_ body: () throws -> Void) -> String? {
    do { try body(); return nil } catch { return "\(error)" }
}

/// Runs `tool` with every signal unblocked and SIGCHLD and SIGPIPE at their defaults, standard output
/// and error to `output`, and returns what it wrote. Foundation's Process passes on the test runner's
/// signal mask, in which SIGCHLD is blocked: GDB then never learns that its inferior stopped.
public func runUnmasked(_ tool: String, _ arguments: [String], environment: [String: String], output: String,
                 timeout: Duration = .seconds(300)) throws -> String {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t(), defaults = sigset_t()
    sigemptyset(&none)
    sigemptyset(&defaults)
    sigaddset(&defaults, SIGCHLD)
    sigaddset(&defaults, SIGPIPE)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var files = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&files)
    defer { posix_spawn_file_actions_destroy(&files) }
    posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&files, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&files, 1, 2)
    let env = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    let argv: [UnsafeMutablePointer<CChar>?] = ([tool] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for p in argv + envp { free(p) } }
    var pid: pid_t = 0
    let e = posix_spawn(&pid, tool, &files, &attributes, argv, envp)
    guard e == 0 else { throw Failure("posix_spawn \(tool): \(String(cString: strerror(e)))") }
    let deadline = ContinuousClock.now + timeout
    var status: Int32 = 0
    while waitpid(pid, &status, WNOHANG) == 0 {
        if ContinuousClock.now > deadline {
            kill(pid, SIGKILL)
            waitpid(pid, &status, 0)
            throw Failure("\(tool) did not finish in \(timeout): \((try? String(contentsOfFile: output, encoding: .utf8)) ?? "")")
        }
        usleep(20_000)
    }
    return try String(contentsOfFile: output, encoding: .utf8)
}
