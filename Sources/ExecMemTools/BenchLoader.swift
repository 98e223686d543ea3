// The module loader's benchmarks (`execmem bench loader`):
//
//   load-and-run   a driver plus the distribution's static zlib (small) and SQLite (large) archives,
//                  loaded by ExecMem, run and unloaded, against dlopen of the same driver built as a
//                  shared object (with the distribution's shared library), run and dlclose'd
//   call cost      module -> host function, and module -> module: a direct call rel32 against the
//                  same call through a veneer and GOT slot (the callee out of reach)

import ExecMem
import ExecMemLoader
import Foundation
import Glibc

/// The host function modules call in the call-cost benchmark.
let benchHostIncrement: @convention(c) (Int) -> Int = { $0 &+ 1 }

extension Bench {
    static func loader(scale: Double) throws -> [BenchResult] {
        guard let clang = CPrograms.clang else {
            return [BenchResult(benchmark: "loader", figure: "skipped", unit: "", value: 0, baseline: "", baselineValue: 0, ratio: 0, notes: "no clang")]
        }
        let dir = try CPrograms.scratch()
        let sources = resourceDirectory + "/module"
        func cc(_ args: [String]) throws { _ = try CPrograms.run(clang, args) }
        var out: [BenchResult] = []
        typealias Entry = @convention(c) () -> Int
        // Load: read to ready-to-run (files read, linked, placed, relocated, constructors run), in
        // CPU time, the minimum of `runs` runs interleaved with the peers'. Then the module runs once,
        // its result checked against the shared build's, and is unloaded (not timed).
        let runs = max(3, Int(11 * scale))
        try cc(["-O2", "-c", "\(sources)/trivial.c", "-o", "\(dir)/trivial.o"])
        try cc(["-O2", "-fPIC", "-shared", "\(sources)/trivial.c", "-o", "\(dir)/libtrivial.so"])
        let jitlink = LoaderPeers.jitlink
        for (name, driver, archive, lib) in [("trivial object", "trivial", nil, nil),
                                             ("zlib driver + libz.a", "zbench", "/usr/lib/x86_64-linux-gnu/libz.a", "-lz"),
                                             ("SQLite driver + libsqlite3.a", "sqlbench", "/usr/lib/x86_64-linux-gnu/libsqlite3.a", "-lsqlite3")] as [(String, String, String?, String?)] {
            if let archive, !FileManager.default.fileExists(atPath: archive) { continue }
            if let lib {
                try cc(["-O2", "-c", "\(sources)/\(driver).c", "-o", "\(dir)/\(driver).o"])
                try cc(["-O2", "-fPIC", "-shared", "\(sources)/\(driver).c", lib, "-o", "\(dir)/lib\(driver).so"])
            }
            let files = ["\(dir)/\(driver).o"] + (archive.map { [$0] } ?? [])
            let loader = ModuleLoader()
            var ours = Double.infinity, dl = Double.infinity, jl = Double.infinity
            var expected = 0, got = 0
            for _ in 0..<runs {
                var module: LoadedModule? = nil
                ours = min(ours, try LoaderPeers.cpuMilliseconds { module = try loader.load(files: files) })
                got = unsafeBitCast(UnsafeRawPointer(bitPattern: module!.address(of: "bench_main")!)!, to: Entry.self)()
                module!.unload()
                var handle: UnsafeMutableRawPointer? = nil
                dl = min(dl, LoaderPeers.cpuMilliseconds { handle = dlopen("\(dir)/lib\(driver).so", RTLD_NOW | RTLD_LOCAL) })
                guard let h = handle, let f = dlsym(h, "bench_main") else { throw BenchError("dlopen: \(String(cString: dlerror()))") }
                expected = unsafeBitCast(f, to: Entry.self)()
                dlclose(h)
                guard got == expected else { throw BenchError("\(name): the dlopen'd driver returned \(expected), ExecMem's \(got)") }
                if let jitlink { jl = min(jl, try LoaderPeers.jitlinkMilliseconds(jitlink, files)) }
            }
            if jitlink != nil {
                out.append(BenchResult(benchmark: "loader", figure: "load (read to ready-to-run), \(name)", unit: "ms CPU", value: ours,
                                       baseline: "llvm-jitlink-19 -noexec (its -show-times total)", baselineValue: jl, ratio: jl / ours,
                                       notes: "min of \(runs) interleaved runs; the ratio is how many times faster than JITLink"))
            }
            out.append(BenchResult(benchmark: "loader", figure: "load (read to ready-to-run), \(name)", unit: "ms CPU", value: ours,
                                   baseline: "dlopen, shared build (ld.so, shared libraries)", baselineValue: dl, ratio: dl / ours,
                                   notes: "min of \(runs) interleaved runs\(jitlink == nil ? "; llvm-jitlink-19 not installed (apt-get install llvm-19)" : "")"))
        }
        out += try startupFigures(runs: runs)
        // Call cost.
        try cc(["-O2", "-fPIC", "-c", "\(sources)/callbench.c", "-o", "\(dir)/callbench.o"])
        try cc(["-O2", "-fPIC", "-c", "\(sources)/callee.c", "-o", "\(dir)/callee.o"])
        let calls = max(100_000, Int(20_000_000 * scale))
        var far = ExecMemConfiguration()
        far.rangeSize = 64 << 20
        far.fallbackSize = 0
        far.placement = .anywhere  // out of rel32 reach of the executable and of the default range
        let farAllocator = try ExecMemAllocator(far)
        typealias Loop = @convention(c) (Int) -> Int
        func time(_ module: LoadedModule, _ symbol: String) throws -> (Double, Int) {
            let f = unsafeBitCast(UnsafeRawPointer(bitPattern: module.address(of: symbol)!)!, to: Loop.self)
            _ = f(1000)
            let t = Clock.now
            let r = f(calls)
            guard r == calls else { throw BenchError("\(symbol) returned \(r), expected \(calls)") }
            return (t.elapsedSeconds * 1e9 / Double(calls), module.callsThroughVeneers)
        }
        let near = ModuleLoader()
        near.provide("host_inc", UInt(bitPattern: unsafeBitCast(benchHostIncrement, to: UnsafeRawPointer.self)))
        let callee = try near.load(files: ["\(dir)/callee.o"])
        let nearCaller = try near.load(files: ["\(dir)/callbench.o"])
        let farLoader = ModuleLoader(allocator: farAllocator)
        farLoader.provide("host_inc", UInt(bitPattern: unsafeBitCast(benchHostIncrement, to: UnsafeRawPointer.self)))
        farLoader.provide("module_inc", callee.address(of: "module_inc")!)
        let farCaller = try farLoader.load(files: ["\(dir)/callbench.o"])
        let (directHost, v0) = try time(nearCaller, "loop_host"), (veneerHost, v1) = try time(farCaller, "loop_host")
        let (directModule, _) = try time(nearCaller, "loop_module"), (veneerModule, _) = try time(farCaller, "loop_module")
        guard v0 == 0, v1 > 0 else { throw BenchError("expected direct calls near (\(v0) veneers) and veneers far (\(v1))") }
        out.append(BenchResult(benchmark: "loader", figure: "module -> host function, direct call rel32", unit: "ns/call", value: directHost,
                               baseline: "through a veneer and GOT slot", baselineValue: veneerHost, ratio: veneerHost / directHost,
                               notes: "\(calls) calls of a one-instruction function"))
        out.append(BenchResult(benchmark: "loader", figure: "module -> module, direct call rel32", unit: "ns/call", value: directModule,
                               baseline: "through a veneer and GOT slot", baselineValue: veneerModule, ratio: veneerModule / directModule,
                               notes: "\(calls) calls of a one-instruction function"))
        nearCaller.unload(); farCaller.unload(); callee.unload()
        return out
    }
}
