// Ten thousand programs of real sizes share a handful of 2 MiB blocks (bpf_prog_pack), instead of a
// page each; unloading them returns every chunk.

import ExecMem
@testable import ExecMemBPF
import ExecMemSystem
import ExecMemTools
import Testing

@Suite struct PackingTests {
    @Test func tenThousandProgramsShareAHandfulOfBlocks() throws {
        let sizes = BPFWorkload.sizes
        #expect(sizes.count == 499)
        let mem = try testAllocator()
        let vm = BPFVM(allocator: mem)
        var programs: [(BPFProgram, Int, Int)] = []
        for i in 0..<10_000 {
            let slots = sizes[i % sizes.count]
            let p = try vm.load(BPFWorkload.straightLine(slots: slots, seed: i))
            try p.compile()
            programs.append((p, slots, i))
        }
        mem.settle()  // the last block's collapse runs in the background
        let stats = mem.statistics()
        let codeBytes = programs.reduce(0) { $0 + $1.0.jitAllocation!.size }
        #expect(stats[.bpf].allocations == 10_000)
        #expect(stats[.text].blocks <= (codeBytes >> 21) + 2, "\(stats[.text].blocks) blocks for \(codeBytes) bytes of code")
        #expect(stats[.text].blocks < 20, "a handful of 2 MiB blocks, not 10,000 pages")
        if KernelFeatures.probe().collapseOnMemfd { #expect(stats[.text].hugePageCoverage >= 0.99) }
        for (p, slots, seed) in programs.shuffled().prefix(500) {
            #expect(try p.run(engine: .jit) == BPFWorkload.expected(slots: slots, seed: seed, x: 0))
        }
        programs.removeAll()
        #expect(mem.statistics(readBack: false)[.bpf].allocations == 0)
        #expect(mem.checkInvariants(deep: true) == [])
        #expect(try ProcMaps.writableExecutable().isEmpty)
    }
}
