// Host helpers by number, as C functions and Swift closures, on both engines; the JIT calls a helper
// in reach with `call rel32`.

import ExecMem
@testable import ExecMemBPF
@_spi(Benchmark) import ExecMemBPF
import Testing

let cHelper: BPFHelperFunction = { a, b, c, d, e in a &* 1000 &+ b &* 100 &+ c &* 10 &+ d &+ e &* 7 }

@Suite struct HelperTests {
    @Test(arguments: BPFEngine.allCases)
    func cAndSwiftHelpersGetTheirArguments(engine: BPFEngine) throws {
        let vm = BPFVM(allocator: try testAllocator())
        vm.register(100, BPFHelper(name: "c", c: cHelper))
        let offset = UInt64.random(in: 0..<1000)
        vm.register(101, BPFHelper(name: "swift", arguments: 2, swift: { a, b, _, _, _ in a * b + offset }))
        let p = try vm.load(assembly: """
            mov %r1, 1
            mov %r2, 2
            mov %r3, 3
            mov %r4, 4
            mov %r5, 5
            call 100
            mov %r6, %r0
            mov %r1, %r0
            mov %r2, 3
            call 101
            add %r0, %r6
            exit
            """)
        let first: UInt64 = 1000 + 200 + 30 + 4 + 35
        #expect(try p.run(engine: engine) == first * 3 + offset + first)
    }

    @Test func jitCallsHelpersInReachWithCallRel32() throws {
        let mem = try testAllocator()
        let vm = BPFVM(allocator: mem)
        vm.register(100, BPFHelper(name: "c", c: cHelper))
        let p = try vm.load(assembly: "call 100\nexit")
        try p.compile()
        let code = try #require(p.jitBytes), base = try #require(p.jitAllocation).address
        let target = UInt(bitPattern: unsafeBitCast(cHelper, to: UnsafeRawPointer.self))
        let directCalls = (0..<(code.count - 4)).filter { i in
            guard code[i] == 0xE8 else { return false }
            let d = Int32(bitPattern: UInt32(code[i + 1]) | UInt32(code[i + 2]) << 8 | UInt32(code[i + 3]) << 16 | UInt32(code[i + 4]) << 24)
            return base &+ UInt(i + 5) &+ UInt(bitPattern: Int(d)) == target
        }
        #expect(mem.primaryReachesExecutable, "\(mem.notes); \(mem.ranges)")
        #expect(directCalls.count == 1, "one call rel32 straight to the helper")
        #expect(try p.run(engine: .jit) == 0)
    }

    @Test func farAwayCodeCallsHelpersIndirectly() throws {
        // A range placed anywhere may be out of reach of the executable; the JIT must still call.
        var c = ExecMemConfiguration()
        c.rangeSize = 16 << 20
        c.fallbackSize = 0
        c.placement = .anywhere
        let vm = BPFVM(allocator: try ExecMemAllocator(c))
        vm.register(100, BPFHelper(name: "c", c: cHelper))
        let p = try vm.load(assembly: "mov %r1, 2\nmov %r2, 0\nmov %r3, 0\nmov %r4, 0\nmov %r5, 0\ncall 100\nexit")
        #expect(try p.run(engine: .jit) == 2000)
    }
}
