// The eBPF benchmarks of `execmem bench`:
//
//   bpf        per C program (sieve, memcpy, strcmp, switch, log2, crc32): the JIT with every check,
//              without bounds checks, without the budget, the interpreter and native C of the same
//              source, timed in one process; verify + JIT time. (scripts/ubpf/compare.sh puts uBPF's
//              JIT beside these.)
//   bpf-pack   10,000 programs of real sizes called in random order, packed in shared 2 MiB blocks
//              against the same JIT output copied to one page per program; and their resident memory

import ExecMem
@_spi(Benchmark) import ExecMemBPF
import ExecMemSystem
import Glibc

extension Bench {
    /// Compute programs: the JIT with every safety check, without bounds checks, without the
    /// budget, the interpreter, and the same C compiled natively, each timed in this process on the
    /// same 4 KiB input (copied afresh before every run; the copy is measured and subtracted).
    static func bpf(scale: Double) throws -> [BenchResult] {
        guard CPrograms.clang != nil else {
            return [BenchResult(benchmark: "bpf", figure: "skipped", unit: "", value: 0, baseline: "", baselineValue: 0, ratio: 0,
                                notes: "no clang with the BPF target on this machine")]
        }
        let dir = try CPrograms.scratch()
        var rng = SplitMix64(state: 5)
        let input = (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: input.count, alignment: 64)
        defer { memory.deallocate() }
        /// Nanoseconds per call of `body`, the input copied before each, over about 2 ms.
        func batch(_ body: () throws -> UInt64) rethrows -> Double {
            var calls = 0, sink: UInt64 = 0
            let t = Clock.now
            repeat {
                for _ in 0..<4 {
                    input.withUnsafeBytes { memory.copyMemory(from: $0) }
                    sink &+= try body()
                }
                calls += 4
            } while t.elapsedSeconds < 0.002 * scale
            if sink == 0x5EED { print("") }
            return t.elapsedSeconds * 1e9 / Double(calls)
        }
        var out: [BenchResult] = []
        var safeOverNative: [Double] = [], uncheckedOverNative: [Double] = [], budgetCost: [Double] = []
        for name in CPrograms.names where name != "maps" {
            let object = try CPrograms.compileBPF(name, cpu: "v4", in: dir)
            let vm = BPFVM()
            let safe = try vm.load(elf: object, name: name, budget: .max)
            let unchecked = try vm.load(elf: object, name: name, budget: .max)
            let unbudgeted = try vm.load(elf: object, name: name, budget: .max)
            try safe.compile()
            try unchecked.compile(options: JITOptions(boundsChecks: false))
            try unbudgeted.compile(options: JITOptions(budget: false))
            let library = try CPrograms.compileNativeShared(name, in: dir)
            guard let handle = dlopen(library, RTLD_NOW), let symbol = dlsym(handle, "entry") else { throw BenchError("cannot load \(library)") }
            defer { dlclose(handle) }
            typealias Entry = @convention(c) (UnsafeMutableRawPointer?, UInt64) -> UInt64
            let native = unsafeBitCast(symbol, to: Entry.self)
            let len = UInt64(input.count)
            // Every variant computes the same r0.
            let expected = try batch { native(memory.baseAddress, len) } >= 0 ? native(memory.baseAddress, len) : 0
            input.withUnsafeBytes { memory.copyMemory(from: $0) }
            let r0 = native(memory.baseAddress, len)
            for p in [safe, unchecked, unbudgeted] {
                input.withUnsafeBytes { memory.copyMemory(from: $0) }
                guard try p.run(memory: memory, engine: .jit) == r0 else { throw BenchError("\(name): the JIT's r0 differs from native") }
            }
            _ = expected
            var best = [Double](repeating: .infinity, count: 5)
            let rounds = max(3, Int(15 * scale))
            for _ in 0..<rounds {
                best[0] = min(best[0], try batch { try safe.run(memory: memory, engine: .jit) })
                best[1] = min(best[1], try batch { try unchecked.run(memory: memory, engine: .jit) })
                best[2] = min(best[2], try batch { try unbudgeted.run(memory: memory, engine: .jit) })
                best[3] = min(best[3], batch { native(memory.baseAddress, len) })
                best[4] = min(best[4], batch { 0 })
            }
            let interpreted = try batch { try safe.run(memory: memory, engine: .interpreter) } - best[4]
            let (jit, noChecks, noBudget, c) = (best[0] - best[4], best[1] - best[4], best[2] - best[4], best[3] - best[4])
            // Compile: verify + JIT + install, and the JIT + install alone.
            var verifyAndCompile = Double.infinity, compileOnly = Double.infinity
            for _ in 0..<max(5, Int(40 * scale)) {
                let t = Clock.now
                let p = try vm.load(elf: object, name: name)
                try p.compile()
                verifyAndCompile = min(verifyAndCompile, t.elapsedSeconds * 1e6)
                let t2 = Clock.now
                try p.compile()
                compileOnly = min(compileOnly, t2.elapsedSeconds * 1e6)
            }
            safeOverNative.append(jit / c); uncheckedOverNative.append(noChecks / c); budgetCost.append(jit / noBudget)
            let v = safe.verified
            let facts = "\(v.instructions.count) insns, \(v.provenAccesses) accesses proven, \(v.checkedAccesses) checked; r0 0x\(String(r0, radix: 16))"
            out.append(BenchResult(benchmark: "bpf", figure: "\(name): JIT, every check on", unit: "us/run", value: jit / 1000,
                                   baseline: "native clang -O2", baselineValue: c / 1000, ratio: c / jit, notes: facts))
            out.append(BenchResult(benchmark: "bpf", figure: "\(name): JIT, no bounds checks", unit: "us/run", value: noChecks / 1000,
                                   baseline: "JIT, every check on", baselineValue: jit / 1000, ratio: jit / noChecks, notes: "what the remaining checks cost"))
            out.append(BenchResult(benchmark: "bpf", figure: "\(name): JIT, no budget", unit: "us/run", value: noBudget / 1000,
                                   baseline: "JIT, every check on", baselineValue: jit / 1000, ratio: jit / noBudget, notes: "what the budget costs"))
            out.append(BenchResult(benchmark: "bpf", figure: "\(name): JIT, every check on", unit: "us/run", value: jit / 1000,
                                   baseline: "interpreter", baselineValue: interpreted / 1000, ratio: interpreted / jit, notes: ""))
            out.append(BenchResult(benchmark: "bpf", figure: "\(name): verify + JIT + install", unit: "us", value: verifyAndCompile,
                                   baseline: "JIT + install alone", baselineValue: compileOnly, ratio: compileOnly / verifyAndCompile,
                                   notes: "install = packed allocation + write through the write view + membarrier"))
        }
        // Compile time stays linear: many functions, up to the 1M-instruction limit.
        for (n, f) in [(20_000, 200), (200_000, 2_000), (1_000_000, 10_000)] where scale >= 0.1 || n <= 200_000 {
            let code = BPFWorkload.manyFunctions(instructions: n, functions: f)
            let vm = BPFVM()
            let t0 = Clock.now
            let p = try vm.load(code, name: "many-functions")
            let verify = t0.elapsedSeconds * 1000
            let t1 = Clock.now
            try p.compile()
            let jit = t1.elapsedSeconds * 1000
            let perInstruction = (verify + jit) * 1e6 / Double(code.count)
            out.append(BenchResult(benchmark: "bpf", figure: "verify + JIT \(code.count) instructions in \(f + 1) functions", unit: "ms", value: verify + jit,
                                 baseline: "JIT alone", baselineValue: jit, ratio: jit / (verify + jit),
                                 notes: String(format: "%.0f ns per instruction (verify %.1f ms)", perInstruction, verify)))
        }
        // The fixed cost of one run: a program that only returns, without context memory.
        let trivial = try BPFVM().load(assembly: "mov %r0, 1\nexit")
        try trivial.compile()
        func perRun(_ engine: BPFEngine) throws -> Double {
            var best = Double.infinity
            for _ in 0..<max(3, Int(15 * scale)) {
                let n = 100_000
                let t = Clock.now
                for _ in 0..<n { _ = try trivial.run(memory: nil, engine: engine) }
                best = min(best, t.elapsedSeconds * 1e9 / Double(n))
            }
            return best
        }
        let (runCost, interpCost) = (try perRun(.jit), try perRun(.interpreter))
        out.append(BenchResult(benchmark: "bpf", figure: "one run of `mov r0, 1; exit` (context, budget, entry)", unit: "ns", value: runCost,
                               baseline: "interpreter", baselineValue: interpCost, ratio: interpCost / runCost,
                               notes: "what every run costs before the program's first instruction"))
        func geomean(_ x: [Double]) -> Double { exp(x.map { log($0) }.reduce(0, +) / Double(x.count)) }
        out.append(BenchResult(benchmark: "bpf", figure: "geometric mean: JIT time / native time, every check on", unit: "x", value: geomean(safeOverNative),
                               baseline: "no bounds checks", baselineValue: geomean(uncheckedOverNative), ratio: geomean(uncheckedOverNative) / geomean(safeOverNative),
                               notes: "\(safeOverNative.count) compute programs; budget cost (time with / without): \(String(format: "%.3f", geomean(budgetCost)))x"))
        return out
    }

    static func bpfPack(scale: Double) throws -> [BenchResult] {
        let sizes = BPFWorkload.sizes
        guard !sizes.isEmpty else { throw BenchError("the bundled BPF program sizes are missing") }
        let count = liveAllocations
        let rounds = max(3, Int(20 * scale))
        let mem = try ExecMemAllocator()
        let vm = BPFVM(allocator: mem)
        var programs: [BPFProgram] = []
        for i in 0..<count { programs.append(try vm.load(BPFWorkload.straightLine(slots: sizes[i % sizes.count], seed: i))) }
        // Resident memory of the code alone: measured around compiling (packed) and copying (paged).
        let before = try ResidentMemory.read()
        for p in programs { try p.compile() }
        mem.settle()  // the last block's int3 fill and collapse, off the compile path, count too
        let packedMemory = try ResidentMemory.read()
        // The same JIT output, one mmap'd page (or more) per program, r-x.
        var pages: [MmapPerAllocation.Code] = []
        for p in programs { pages.append(try p.jitBytes!.withUnsafeBytes { try MmapPerAllocation.install($0) }) }
        let pagedMemory = try ResidentMemory.read()
        var rng = SplitMix64(state: 3)
        let order = (0..<count).shuffled(using: &rng)
        func time(_ call: (Int) throws -> UInt64) throws -> Double {
            var sink: UInt64 = 0
            for i in order { sink &+= try call(i) }  // warm up
            let t = Clock.now
            for _ in 0..<rounds { for i in order { sink &+= try call(i) } }
            if sink == 42 { print("") }
            return t.elapsedSeconds * 1e9 / Double(rounds * count)
        }
        let packed = try time { try programs[$0].run(engine: .jit) }
        let paged = try time { try programs[$0].runCopy(at: pages[$0].address) }
        for page in pages { try MmapPerAllocation.free(page) }
        let codeBytes = programs.reduce(0) { $0 + ($1.jitAllocation?.size ?? 0) }
        let note = "\(count) programs of the real size distribution (\(codeBytes) bytes of x86-64), \(rounds) passes in one random order"
        let packedPss = packedMemory.pss - before.pss, pagedPss = pagedMemory.pss - packedMemory.pss
        return [
            BenchResult(benchmark: "bpf-pack", figure: "call, packed in \(mem.statistics(readBack: false)[.text].blocks) shared 2 MiB blocks",
                        unit: "ns/call", value: packed, baseline: "one page per program", baselineValue: paged, ratio: paged / packed, notes: note),
            BenchResult(benchmark: "bpf-pack", figure: "resident memory of the code (Pss delta)", unit: "bytes", value: Double(packedPss),
                        baseline: "one page per program", baselineValue: Double(pagedPss), ratio: Double(pagedPss) / Double(max(1, packedPss)),
                        notes: note),
        ]
    }
}
