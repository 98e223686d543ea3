// The eBPF benchmarks of `execmem bench`:
//
//   bpf        per C program (sieve, memcpy, strcmp, switch, log2, crc32): JIT compile time, and run
//              time on the JIT against the interpreter
//   bpf-pack   10,000 programs of real sizes called in random order, packed in shared 2 MiB blocks
//              against the same JIT output copied to one page per program; and their resident memory

import ExecMem
@_spi(Benchmark) import ExecMemBPF
import ExecMemSystem

extension Bench {
    static func bpf(scale: Double) throws -> [BenchResult] {
        guard CPrograms.clang != nil else {
            return [BenchResult(benchmark: "bpf", figure: "skipped", unit: "", value: 0, baseline: "", baselineValue: 0, ratio: 0,
                                notes: "no clang with the BPF target on this machine")]
        }
        let dir = try CPrograms.scratch()
        var rng = SplitMix64(state: 5)
        let input = (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        var out: [BenchResult] = []
        for name in CPrograms.names where name != "maps" {
            let object = try CPrograms.compileBPF(name, cpu: "v4", in: dir)
            let program = try BPFVM().load(elf: object, name: name)
            // Compile time: compile repeatedly (each replaces and frees the previous code).
            let compiles = max(5, Int(50 * scale))
            let t0 = Clock.now
            for _ in 0..<compiles { try program.compile() }
            let compileMicros = t0.elapsedSeconds * 1e6 / Double(compiles)
            func time(_ engine: BPFEngine) throws -> Double {
                var runs = 0
                let t = Clock.now
                repeat {
                    _ = try program.run(bytes: input, engine: engine)
                    runs += 1
                } while t.elapsedSeconds < 0.2 * scale || runs < 3
                return t.elapsedSeconds * 1e6 / Double(runs)
            }
            let jit = try time(.jit), interpreted = try time(.interpreter)
            out.append(BenchResult(benchmark: "bpf", figure: "\(name): JIT run (compile \(Int(compileMicros.rounded())) us, \(program.instructions.count) insns)",
                                   unit: "us/run", value: jit, baseline: "interpreter", baselineValue: interpreted, ratio: interpreted / jit,
                                   notes: "4 KiB of context memory per run; compile = verify-free JIT + allocate + write + membarrier"))
        }
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
