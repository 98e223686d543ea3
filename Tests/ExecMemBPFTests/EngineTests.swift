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

@Suite struct JITOptionTests {
    @Test func boundsChecksCanBeTurnedOffForTrustedPrograms() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let source = "ldxw %r0, [%r1+4]\nmov %r2, %r1\nstxb [%r2+0], %r0\nexit"
        let checked = try vm.load(assembly: source), trusted = try vm.load(assembly: source)
        try checked.compile()
        try trusted.compile(options: JITOptions(boundsChecks: false))
        #expect(trusted.jitAllocation!.size < checked.jitAllocation!.size, "no inline checks")
        for p in [checked, trusted] {
            var memory: [UInt8] = [9, 9, 9, 9, 0x44, 0x33, 0x22, 0x11]
            let r0 = try memory.withUnsafeMutableBytes { m in try Result { () throws(BPFError) in try p.run(memory: m, engine: .jit) }.get() }
            #expect(r0 == 0x1122_3344 && memory[0] == 0x44)
        }
        // The checked build refuses what the trusted one would do blindly.
        #expect(throws: BPFError.self) { try checked.run(bytes: [1, 2], engine: .jit) }
    }
}
