// eBPF programs written in C, compiled with `clang -target bpf` at test time for CPU v3 and v4, run
// with maps on both engines and give the same r0 and memory as the same C compiled natively.

import ExecMem
@testable import ExecMemBPF
import ExecMemTools
import Testing

@Suite struct CProgramTests {
    @Test(.enabled(if: CPrograms.clang != nil, "needs clang (the toolchain's, with the BPF target)"),
          arguments: CPrograms.names)
    func cProgramMatchesNativeOnBothEngines(name: String) throws {
        let dir = try CPrograms.scratch()
        let native = try CPrograms.compileNative(name, in: dir)
        var rng = SplitMix64(state: 11)
        let inputs: [[UInt8]] = [(0..<256).map { _ in UInt8(truncatingIfNeeded: rng.next()) },
                                 (0..<64).map { UInt8($0) }, Array("hello world, hello eBPF\0hello world".utf8) + [UInt8](repeating: 0x61, count: 28)]
        for cpu in ["v1", "v2", "v3", "v4"] {
            let object = try CPrograms.compileBPF(name, cpu: cpu, in: dir)
            for engine in BPFEngine.allCases {
                // A fresh load per engine: maps and globals start as the native run's do.
                let vm = BPFVM(allocator: try testAllocator())
                let program = try vm.load(elf: object, name: "\(name)-\(cpu).o")
                for input in inputs {
                    let (expected, expectedMemory) = try CPrograms.runNative(native, input: input, in: dir)
                    var memory = input
                    let r0 = try memory.withUnsafeMutableBytes { m in Result { () throws(BPFError) in try program.run(memory: m, engine: engine) } }.get()
                    #expect(r0 == expected, "\(name) \(cpu) \(engine): r0 0x\(String(r0, radix: 16)), native 0x\(String(expected, radix: 16))")
                    #expect(memory == expectedMemory, "\(name) \(cpu) \(engine): memory differs")
                    if name == "maps" { break }  // the native harness starts fresh maps each run; compare the first
                }
            }
        }
    }

    @Test(.enabled(if: CPrograms.clang != nil, "needs clang"))
    func mapsAreVisibleToTheHost() throws {
        let dir = try CPrograms.scratch()
        let object = try CPrograms.compileBPF("maps", cpu: "v3", in: dir)
        let program = try BPFVM(allocator: try testAllocator()).load(elf: object, name: "maps.o")
        #expect(Set(program.maps.map(\.name)).isSuperset(of: ["histogram", "totals", ".data", ".bss"]))
        _ = try program.run(bytes: [1, 2, 2, 3, 3, 3], engine: .jit)
        let histogram = try #require(program.map(named: "histogram"))
        #expect(try histogram.lookup([3]) == withUnsafeBytes(of: UInt64(3).littleEndian) { Array($0) })
        #expect(try histogram.lookup([9]) == nil)
        #expect(histogram.count == 3)
        let totals = try #require(program.map(named: "totals"))
        #expect(try totals.lookup([1, 0, 0, 0]) == withUnsafeBytes(of: UInt64(6).littleEndian) { Array($0) }, "3 distinct * 2")
        // The host changes a map; the program sees it.
        try histogram.update([1], withUnsafeBytes(of: UInt64(100).littleEndian) { Array($0) })
        _ = try program.run(bytes: [1], engine: .interpreter)
        #expect(try histogram.lookup([1]) == withUnsafeBytes(of: UInt64(101).littleEndian) { Array($0) })
    }
}
