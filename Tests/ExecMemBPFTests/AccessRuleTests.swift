// The JIT's inline checks against the one access rule: accesses at every offset around the edges
// of each region (the context at several lengths, the stack frame and the callers' frames above it,
// a map's values), of every size, with offsets the verifier cannot know (so the check happens at run
// time) and with constant ones (proven, or the context-length form). For each, both engines must do
// exactly what the rule says: allowed accesses return the byte read, the others fault at the access
// with the same error.

import ExecMem
@testable import ExecMemBPF
import Testing

@Suite struct AccessRuleTests {
    /// Load or store through `base + offset`, the offset read from map 0 (unknown to the verifier);
    /// `base` is an instruction that sets r4 in two slots. The access is instruction 8.
    func program(_ base: String, size: Int, write: Bool) -> String {
        let suffix = [1: "b", 2: "h", 4: "w", 8: "dw"][size]!
        let access = write ? "st\(suffix) [%r4+0], 7\nmov %r0, 1" : "ldx\(suffix) %r0, [%r4+0]"
        return """
            mov %r6, %r1
            stdw [%r10-8], 0
            lddw %r2, map[0]+0
            ldxdw %r3, [%r2+0]
            \(base)
            add %r4, %r3
            \(access)
            exit
            """
    }

    func expect(_ p: BPFProgram, context: Int, allowed: Bool, setOffset: (Int64) throws -> Void, offset: Int64, what: String) throws {
        var results: [Result<UInt64, BPFError>] = []
        for engine in BPFEngine.allCases {
            try setOffset(offset)
            var memory = [UInt8](repeating: 0, count: context)
            results.append(memory.withUnsafeMutableBytes { m in Result { () throws(BPFError) in try p.run(memory: m.count == 0 ? nil : m, engine: engine) } })
        }
        #expect(results[0] == results[1], "\(what): engines disagree: \(results)")
        if allowed {
            #expect((try? results[1].get()) != nil, "\(what): allowed by the rule, but \(results[1])")
        } else {
            guard case let .failure(.runtime(index, reason)) = results[1] else { Issue.record("\(what): refused by the rule, but \(results[1])"); return }
            #expect(index == 8 && reason.contains("out-of-bounds"), "\(what): \(reason)")
        }
    }

    @Test func runTimeChecksMatchTheRuleAtEveryEdge() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let offsets = try BPFMap(name: "offsets", type: .array, keySize: 4, valueSize: 8, maxEntries: 1)
        let target = try BPFMap(name: "target", type: .array, keySize: 4, valueSize: 12, maxEntries: 2)  // slab 2 x 16 bytes
        func set(_ v: Int64) throws { try offsets.update([0, 0, 0, 0], withUnsafeBytes(of: v.littleEndian) { Array($0) }) }
        for size in [1, 2, 4, 8] {
            for write in [false, true] {
                let ctx = try vm.load(assembly: program("mov %r4, %r6\nja +0", size: size, write: write), maps: [offsets, target])
                let stack = try vm.load(assembly: program("mov %r4, %r10\nja +0", size: size, write: write), maps: [offsets, target])
                let map = try vm.load(assembly: program("lddw %r4, map[1]+0", size: size, write: write), maps: [offsets, target])
                for p in [ctx, stack, map] { #expect(p.verified.code[8].access.check == .region, "the access is checked at run time") }
                for length in [0, 1, 7, 8, 9, 16] {
                    for off in Int64(-3)...Int64(length + 3) {
                        try expect(ctx, context: length, allowed: off >= 0 && off + Int64(size) <= Int64(length), setOffset: set, offset: off,
                                   what: "context of \(length), offset \(off), \(size) bytes, write \(write)")
                    }
                }
                // This frame is [r10-512, r10); main's callers' frames do not exist: the top is r10.
                for off in [Int64(-520), -513, -512, -511, -9, -8, -1, 0, 1, 8, 512] {
                    try expect(stack, context: 8, allowed: off >= -512 && off + Int64(size) <= 0, setOffset: set, offset: off,
                               what: "stack r10\(off), \(size) bytes, write \(write)")
                }
                // The rule allows the slab (both values, strides included), nothing around it.
                for off in [Int64(-8), -1, 0, 1, 12, 16, 24, 31, 32, 40] {
                    try expect(map, context: 8, allowed: off >= 0 && off + Int64(size) <= 32, setOffset: set, offset: off,
                               what: "map slab offset \(off), \(size) bytes, write \(write)")
                }
            }
        }
    }

    @Test func constantContextOffsetsUseTheLengthCheck() throws {
        let vm = BPFVM(allocator: try testAllocator())
        for size in [1, 2, 4, 8] {
            let suffix = [1: "b", 2: "h", 4: "w", 8: "dw"][size]!
            for off in 0...12 {
                let p = try vm.load(assembly: "ldx\(suffix) %r0, [%r1+\(off)]\nexit")
                #expect(p.verified.code[0].access.check == .contextEnd(Int32(off + size)))
                for length in [0, 4, 8, 12, 16] {
                    let outcomes = bothEngines(p, memory: [UInt8](repeating: 1, count: length))
                    #expect(outcomes[0] == outcomes[1])
                    #expect(((try? outcomes[0].get()) != nil) == (off + size <= length), "offset \(off), \(size) bytes, context \(length)")
                }
            }
        }
    }
}
