// Programs run on both engines: results, memory faults as typed errors, JIT code placement.

import ExecMem
@testable import ExecMemBPF
import ExecMemSystem
import Testing

@Suite struct EngineTests {
    @Test func jitCodeRunsFromPackedTextAndIsFreed() throws {
        let mem = try testAllocator()
        let vm = BPFVM(allocator: mem)
        let p = try vm.load(assembly: """
            mov %r0, 40
            add %r0, 2
            exit
            """)
        #expect(try p.run(engine: .interpreter) == 42)
        #expect(try p.run(engine: .jit) == 42)
        let a = try #require(p.jitAllocation)
        #expect(a.kind == .bpf && mem.isInPrimaryRange(a.address))
        let maps = try ProcMaps.read()
        #expect(maps.first { $0.start <= a.address && a.address < $0.end }?.protection == "r-x")
        p.unload()
        #expect(UnsafeRawBufferPointer(start: a.pointer, count: a.capacity).allSatisfy { $0 == 0xCC })
        #expect(mem.statistics()[.bpf].allocations == 0)
    }
}
