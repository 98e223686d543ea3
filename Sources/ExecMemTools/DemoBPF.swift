// The demo's eBPF part: a few thousand programs of the real size distribution JIT-compiled into
// shared BPF-kind blocks (bpf_prog_pack), each run and checked, half unloaded (their code must read
// back as int3), and one program using a hash map through the map helpers.

import ExecMem
import ExecMemBPF

public struct BPFDemoReport: Codable, Sendable {
    public var programsCompiled: Int
    public var programsRun: Int
    public var wrongResults: Int
    /// Bytes of x86-64 the JIT wrote, and the distinct 2 MiB blocks it lives in.
    public var codeBytes: Int
    public var blocksUsed: Int
    /// The pages one mmap per program would take.
    public var pagesIfOnePerProgram: Int
    public var microsecondsPerCompile: Double
    public var programsUnloaded: Int
    public var unloadedCodeIsTrap: Bool
    /// The map program's result matched what the host reads from the map.
    public var mapProgramAgrees: Bool
    public var ok: Bool { wrongResults == 0 && unloadedCodeIsTrap && mapProgramAgrees && programsRun >= programsCompiled }

    static func run(programs count: Int, allocator mem: ExecMemAllocator) throws -> BPFDemoReport {
        let vm = BPFVM(allocator: mem)
        let sizes = BPFWorkload.sizes.isEmpty ? [39] : BPFWorkload.sizes
        var loaded: [(BPFProgram, Int, Int)] = []
        let t = Clock.now
        for i in 0..<count {
            let slots = sizes[i % sizes.count]
            let p = try vm.load(BPFWorkload.straightLine(slots: slots, seed: i))
            try p.compile()
            loaded.append((p, slots, i))
        }
        let perCompile = count == 0 ? 0 : t.elapsedSeconds * 1e6 / Double(count)
        var wrong = 0
        for (p, slots, seed) in loaded where try p.run(engine: .jit) != BPFWorkload.expected(slots: slots, seed: seed, x: 0) { wrong += 1 }
        let allocations = loaded.compactMap { $0.0.jitAllocation }
        let codeBytes = allocations.reduce(0) { $0 + $1.size }
        let blocks = Set(allocations.map { $0.address & ~ExecMemGeometry.blockMask }).count
        let pages = allocations.reduce(0) { $0 + ($1.size + 4095) / 4096 }
        // Unload every other program: its chunks go back, filled with int3.
        var trap = true, unloaded = 0
        for (k, entry) in loaded.enumerated() where k % 2 == 0 {
            let a = entry.0.jitAllocation!
            entry.0.unload()
            trap = trap && UnsafeRawBufferPointer(start: a.pointer, count: a.capacity).allSatisfy { $0 == ExecMemGeometry.trapByte }
            unloaded += 1
        }
        // A program counting bytes into a hash map; the host reads the map back.
        let map = try BPFMap(name: "counts", type: .hash, keySize: 1, valueSize: 8, maxEntries: 256)
        let counter = try vm.load(BPFAssembler.assemble("""
            mov %r6, %r1
            mov %r7, %r2
            mov %r8, 0
            loop:
            jge %r8, %r7, done
            mov %r1, %r6
            add %r1, %r8
            ldxb %r2, [%r1]
            stxb [%r10-1], %r2
            lddw %r1, map[0]
            mov %r2, %r10
            add %r2, -1
            call 1
            jne %r0, 0, found
            stdw [%r10-16], 1
            lddw %r1, map[0]
            mov %r2, %r10
            add %r2, -1
            mov %r3, %r10
            add %r3, -16
            mov %r4, 0
            call 2
            ja next
            found:
            ldxdw %r1, [%r0]
            add %r1, 1
            stxdw [%r0], %r1
            next:
            add %r8, 1
            ja loop
            done:
            mov %r0, %r8
            exit
            """), name: "count-bytes", maps: [map])
        let text = Array("execmem packs ebpf".utf8)
        let n = try counter.run(bytes: text, engine: .jit)
        let e = try map.lookup([UInt8(ascii: "e")]).map { $0.withUnsafeBytes { $0.load(as: UInt64.self) } }
        let agrees = n == UInt64(text.count) && e == UInt64(text.filter { $0 == UInt8(ascii: "e") }.count)
        return BPFDemoReport(programsCompiled: count, programsRun: count, wrongResults: wrong, codeBytes: codeBytes, blocksUsed: blocks,
                             pagesIfOnePerProgram: pages, microsecondsPerCompile: perCompile, programsUnloaded: unloaded,
                             unloadedCodeIsTrap: trap, mapProgramAgrees: agrees)
    }
}
