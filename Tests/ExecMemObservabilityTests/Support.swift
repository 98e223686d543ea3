// What the observability tests share: a child process whose death by signal is visible, the real
// tools (perf, gdb) and whether this machine lets them work, and C sources for the client cases.

import ExecMemTestSupport
import Foundation

/// A child's outcome, with the signal that killed it (nil when it exited).
struct Outcome: Sendable {
    let status: Int32
    let signal: Int32?
    let output: String
    let errors: String
}

/// Runs `tool` with `environment` added to ours; never throws for a failing status.
func launch(_ tool: String, _ arguments: [String], environment: [String: String] = [:], in directory: String? = nil) throws -> Outcome {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = arguments
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let (o, e) = try runCollecting(p)
    let signaled = p.terminationReason == .uncaughtSignal
    return Outcome(status: p.terminationStatus, signal: signaled ? p.terminationStatus : nil,
                   output: String(decoding: o, as: UTF8.self), errors: String(decoding: e, as: UTF8.self))
}

/// The first match of `pattern` in `text`, or nil.
func firstMatch(_ pattern: String, in text: String) -> String? {
    guard let re = try? NSRegularExpression(pattern: pattern),
          let m = re.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)),
          let r = Range(m.range, in: text) else { return nil }
    return String(text[r])
}

/// A C compiler for the client cases (clang from the toolchain first).
let cCompiler = compilers.first

/// Writes `source` to `dir/name.c` and compiles it with `flags`; returns the object's path.
func compileC(_ source: String, name: String, in dir: String, flags: [String] = ["-O0", "-fno-omit-frame-pointer"]) throws -> String {
    guard let cc = cCompiler else { throw Failure("no C compiler") }
    let path = "\(dir)/\(name).c"
    try source.write(toFile: path, atomically: true, encoding: .utf8)
    let object = "\(dir)/\(name).o"
    let r = try launch(cc, flags + ["-c", path, "-o", object])
    guard r.status == 0, r.signal == nil else { throw Failure("\(cc) \(name).c: \(r.errors)") }
    return object
}

// MARK: - perf

/// Why perf cannot be used here, or nil when it can: installed, and perf_event_paranoid lets us
/// sample our own processes (2 or less, or root).
let perfUnavailable: String? = {
    guard let perf = ["/usr/bin/perf", "/usr/local/bin/perf"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        return "perf is not installed (Debian: apt-get install linux-perf)"
    }
    let paranoid = (try? String(contentsOfFile: "/proc/sys/kernel/perf_event_paranoid", encoding: .utf8))
        .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 3
    if paranoid > 2 && getuid() != 0 { return "perf_event_paranoid is \(paranoid): sampling is forbidden to non-root users" }
    guard let r = try? launch(perf, ["record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "--", "/bin/true"]), r.status == 0 else {
        return "perf record does not work here"
    }
    _ = perf
    return nil
}()

let perfPath = ["/usr/bin/perf", "/usr/local/bin/perf"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) ?? "perf"

/// What `perf report --stdio --sort dso,sym` shows for one recording of `command` (its samples'
/// lines, without comments), and the command's outcome. With `jitdump`, records with `-k mono` and
/// runs `perf inject --jit` first, the jitdump in `dir`.
func perfReport(_ command: [String], in dir: String, jitdump: Bool) throws -> (report: String, run: Outcome) {
    let data = "\(dir)/perf.data"
    let record = ["record", "-q", "-e", "cpu-clock"] + (jitdump ? ["-k", "mono"] : []) + ["-o", data, "--"] + command
    let run = try launch(perfPath, record, environment: ["JITDUMPDIR": dir], in: dir)
    guard run.status == 0 else { throw Failure("perf \(record.joined(separator: " ")): status \(run.status), \(run.errors)") }
    defer { removePerfMaps(in: dir) }
    var input = data
    if jitdump {
        input = "\(dir)/perf.jit.data"
        let inject = try launch(perfPath, ["inject", "--jit", "-i", data, "-o", input], in: dir)
        guard inject.status == 0 else { throw Failure("perf inject --jit: \(inject.errors)") }
    }
    let report = try launch(perfPath, ["report", "-i", input, "--stdio", "--sort", "dso,sym"], in: dir)
    guard report.status == 0 else { throw Failure("perf report: \(report.errors)") }
    let lines = report.output.split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.isEmpty }
    return (lines.joined(separator: "\n"), run)
}

/// Removes `/tmp/perf-<pid>.map` of each run whose jitdump (`jit-<pid>.dump`) is in `dir`.
func removePerfMaps(in dir: String) {
    for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix("jit-") && name.hasSuffix(".dump") {
        try? FileManager.default.removeItem(atPath: "/tmp/perf-\(name.dropFirst(4).dropLast(5)).map")
    }
}
