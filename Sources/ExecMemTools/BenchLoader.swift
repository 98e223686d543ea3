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
        // Load and run.
        for (name, driver, archive, shared, lib) in [("zlib", "zbench", "/usr/lib/x86_64-linux-gnu/libz.a", "zbench", "-lz"),
                                                     ("SQLite", "sqlbench", "/usr/lib/x86_64-linux-gnu/libsqlite3.a", "sqlbench", "-lsqlite3")] {
            guard FileManager.default.fileExists(atPath: archive) else { continue }
            try cc(["-O2", "-c", "\(sources)/\(driver).c", "-o", "\(dir)/\(driver).o"])
            try cc(["-O2", "-fPIC", "-shared", "\(sources)/\(driver).c", lib, "-o", "\(dir)/lib\(shared).so"])
            let rounds = max(3, Int(20 * scale))
            var expected = 0
            let t0 = Clock.now
            for _ in 0..<rounds {
                let loader = ModuleLoader()
                let module = try loader.load(files: ["\(dir)/\(driver).o", archive])
                expected = unsafeBitCast(UnsafeRawPointer(bitPattern: module.address(of: "bench_main")!)!, to: Entry.self)()
                module.unload()
            }
            let ours = t0.elapsedSeconds * 1000 / Double(rounds)
            let t1 = Clock.now
            for _ in 0..<rounds {
                guard let h = dlopen("\(dir)/lib\(shared).so", RTLD_NOW | RTLD_LOCAL), let f = dlsym(h, "bench_main") else {
                    throw BenchError("dlopen: \(String(cString: dlerror()))")
                }
                let r = unsafeBitCast(f, to: Entry.self)()
                guard r == expected else { throw BenchError("\(name): dlopen'd driver returned \(r), ExecMem's \(expected)") }
                dlclose(h)
            }
            let theirs = t1.elapsedSeconds * 1000 / Double(rounds)
            out.append(BenchResult(benchmark: "loader", figure: "load + run + unload, \(name) driver + static archive", unit: "ms",
                                   value: ours, baseline: "dlopen + run + dlclose, shared build", baselineValue: theirs, ratio: theirs / ours,
                                   notes: "\(rounds) rounds; ExecMem links the archive members it needs each round"))
        }
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
