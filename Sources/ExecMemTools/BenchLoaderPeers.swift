// What the loader benchmark measures its figures with, and its peers: CPU time of a closure in this
// process, LLVM's JITLink (`llvm-jitlink-19 -noexec`, its own phase timers, so its process start is
// not counted), and the start and exit of processes (ours, a C program's, an empty Swift program's).

import ExecMem
import Foundation
import Glibc

enum LoaderPeers {
    /// This process's CPU time (every thread's: a background huge-page collapse counts), in ms.
    static func cpuNow() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
    }

    /// The CPU time `body` takes, in ms.
    static func cpuMilliseconds(_ body: () throws -> Void) rethrows -> Double {
        let t = cpuNow()
        try body()
        return cpuNow() - t
    }

    /// `llvm-jitlink-19` (or `llvm-jitlink`) on PATH or in /usr/bin, if installed.
    static let jitlink: String? = {
        let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/bin", "/usr/lib/llvm-19/bin"]
        for name in ["llvm-jitlink-19", "llvm-jitlink"] {
            for d in dirs where FileManager.default.isExecutableFile(atPath: "\(d)/\(name)") { return "\(d)/\(name)" }
        }
        return nil
    }()

    /// JITLink's own CPU time (user + system) to load and link `files` without running them: the
    /// total of its `-show-times` phase timers ("load/add object files", "link object files").
    static func jitlinkMilliseconds(_ tool: String, _ files: [String]) throws -> Double {
        let (status, _, err) = try CPrograms.spawn(tool, ["-noexec", "-entry=bench_main", "-show-times"] + files)
        let text = String(decoding: err, as: UTF8.self)
        guard status == 0 else { throw BenchError("\(tool) failed (\(status)): \(text.prefix(400))") }
        // "   0.0342 ( 98.9%)   0.0029 ( 88.4%)   0.0371 ( 98.0%)   0.0373 ( 98.0%)  Total"
        guard let line = text.split(separator: "\n").last(where: { $0.hasSuffix(" Total") && $0.contains("%") }) else {
            throw BenchError("\(tool) printed no timer total: \(text.prefix(400))")
        }
        let numbers = line.split(separator: " ").compactMap { Double($0) }
        guard numbers.count >= 3 else { throw BenchError("cannot read \(tool)'s timer line: \(line)") }
        return numbers[2] * 1000  // User+System
    }

    /// Wall time from posix_spawn to the child's exit, in ms, standard streams to /dev/null.
    static func startAndExitMilliseconds(_ argv: [String]) throws -> Double {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd: Int32 in [0, 1, 2] { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let t = DispatchTimeShim.monotonicNanoseconds()
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        guard rc == 0 else { throw BenchError("posix_spawn \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let ms = Double(DispatchTimeShim.monotonicNanoseconds() - t) / 1e6
        guard status == 0 else { throw BenchError("\(argv.joined(separator: " ")) exited with status \(status)") }
        return ms
    }
}

extension Bench {
    /// Creating an allocator and making its first small allocation; the start and exit of the
    /// `execmem` process against a C program's and an empty Swift program's (what the runtime costs).
    static func startupFigures(runs: Int) throws -> [BenchResult] {
        var out: [BenchResult] = []
        var create = Double.infinity, mmapFirst = Double.infinity
        for _ in 0..<runs {
            var c = ExecMemConfiguration()
            c.rangeSize = 64 << 20
            c.fallbackSize = 0
            let t = DispatchTimeShim.monotonicNanoseconds()
            let a = try ExecMemAllocator(c)
            let x = try a.allocate(.moduleText, size: 64)
            create = min(create, Double(DispatchTimeShim.monotonicNanoseconds() - t) / 1e6)
            try a.free(x)
            let t1 = DispatchTimeShim.monotonicNanoseconds()
            let p = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
            p.storeBytes(of: 0xC3, as: UInt8.self)
            mprotect(p, 4096, PROT_READ | PROT_EXEC)
            mmapFirst = min(mmapFirst, Double(DispatchTimeShim.monotonicNanoseconds() - t1) / 1e6)
            munmap(p, 4096)
        }
        out.append(BenchResult(benchmark: "loader", figure: "create an allocator + first 64-byte text allocation", unit: "ms", value: create,
                               baseline: "mmap + write + mprotect of one page", baselineValue: mmapFirst, ratio: mmapFirst / create,
                               notes: "min of \(runs) runs, wall time; a 64 MiB range"))
        let me = CommandLine.arguments[0].hasPrefix("/") ? CommandLine.arguments[0] : FileManager.default.currentDirectoryPath + "/" + CommandLine.arguments[0]
        guard FileManager.default.isExecutableFile(atPath: me), me.hasSuffix("/execmem") else { return out }
        var ours = Double.infinity, parsed = Double.infinity, c = Double.infinity, swift = Double.infinity
        let emptySwift = Self.emptySwiftProgram()
        for _ in 0..<max(runs, 11) {
            ours = min(ours, try LoaderPeers.startAndExitMilliseconds([me, "--version"]))
            parsed = min(parsed, try LoaderPeers.startAndExitMilliseconds([me, "doctor", "--help"]))
            c = min(c, try LoaderPeers.startAndExitMilliseconds(["/bin/true"]))
            if let emptySwift { swift = min(swift, try LoaderPeers.startAndExitMilliseconds([emptySwift])) }
        }
        out.append(BenchResult(benchmark: "loader", figure: "execmem --version: process start and exit", unit: "ms", value: ours,
                               baseline: "/bin/true (C, glibc)", baselineValue: c, ratio: c / ours, notes: "min of \(max(runs, 11)) runs, wall time"))
        // --version is answered before ArgumentParser runs; a command's start includes the parser.
        out.append(BenchResult(benchmark: "loader", figure: "execmem doctor --help: start, ArgumentParser, exit", unit: "ms", value: parsed,
                               baseline: "/bin/true (C, glibc)", baselineValue: c, ratio: c / parsed,
                               notes: "min of \(max(runs, 11)) runs, wall time; what a command's argument parsing adds to the start"))
        if emptySwift != nil {
            out.append(BenchResult(benchmark: "loader", figure: "execmem --version: process start and exit", unit: "ms", value: ours,
                                   baseline: "an empty Swift program (static stdlib)", baselineValue: swift, ratio: swift / ours,
                                   notes: "what the Swift runtime itself costs: built with swiftc -O -static-stdlib"))
        }
        return out
    }

    /// An empty Swift program built with `swiftc -static-stdlib`, when swiftc is on PATH.
    static func emptySwiftProgram() -> String? {
        let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/opt/swift/usr/bin"]
        guard let swiftc = dirs.map({ "\($0)/swiftc" }).first(where: { FileManager.default.isExecutableFile(atPath: $0) }),
              let dir = try? CPrograms.scratch() else { return nil }
        let source = dir + "/empty.swift", binary = dir + "/empty"
        guard FileManager.default.createFile(atPath: source, contents: Data("_ = CommandLine.arguments.count\n".utf8)),
              (try? CPrograms.spawn(swiftc, ["-O", "-static-stdlib", source, "-o", binary]))?.0 == 0 else { return nil }
        return binary
    }
}
