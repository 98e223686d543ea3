// The probes' benchmarks (`execmem bench probes`):
//
//   call cost   a host function compiled with a patchable entry, called in a C loop through a
//               pointer: unhooked (a twin without the NOP), with its hook disabled (the NOP runs),
//               hooked with an empty C handler, an empty Swift handler, Swift entry + exit handlers;
//               and jump and trap instruction probes with an empty C handler on a generated function
//   enable      time to enable 10,000 hooks on generated functions: one text-poke batch for all,
//               against one poke (three core serializations) per hook

import CExecMemProbeSamples
import ExecMem
import ExecMemProbes
import Foundation

extension Bench {
    static func probes(scale: Double) throws -> [BenchResult] {
        var out: [BenchResult] = []
        let mem = try ExecMemAllocator.shared()
        let hooks = FunctionHooks(allocator: mem)
        let calls = max(100_000, Int(20_000_000 * scale))
        typealias Empty = @convention(c) () -> Int
        func perCall(_ f: Empty, calls: Int = calls) -> Double {
            _ = cem_sample_call_loop(f, min(calls, 10_000))
            var best = Double.infinity
            for _ in 0..<3 {
                let t = Clock.now
                _ = cem_sample_call_loop(f, calls)
                best = min(best, t.elapsedSeconds * 1e9 / Double(calls))
            }
            return best
        }
        _ = perCall(cem_sample_empty_plain)  // warm up (clock frequency, caches)
        let plain = perCall(cem_sample_empty_plain)
        let patchable = unsafeBitCast(cem_sample_empty as Empty, to: UInt.self)
        func result(_ figure: String, _ ns: Double, _ notes: String) -> BenchResult {
            BenchResult(benchmark: "probes", figure: figure, unit: "ns/call", value: ns, baseline: "unhooked twin (no patchable entry)",
                        baselineValue: plain, ratio: plain / ns, notes: notes)
        }
        _ = perCall(cem_sample_empty)
        let nopOnly = perCall(cem_sample_empty)
        out.append(result("patchable entry, no hook (5-byte NOP)", nopOnly, "best of 3 x \(calls) calls"))
        let emptyC: CEntryHandler = { _, _, _ in }
        var h = try hooks.hook(patchable, c: emptyC, enable: false)
        out.append(result("hook disabled", perCall(cem_sample_empty), "the entry is the NOP again"))
        try hooks.enable(h)
        out.append(result("hook enabled, empty C handler", perCall(cem_sample_empty), "call stub, save 7 registers and xmm0-7, call, restore"))
        try hooks.remove(h)
        h = try hooks.hook(patchable, entry: { _, _ in })
        out.append(result("hook enabled, empty Swift handler", perCall(cem_sample_empty), "as above, plus a Swift closure call"))
        try hooks.remove(h)
        h = try hooks.hook(patchable, entry: { _, _ in }, exit: { _, _ in })
        out.append(result("hook enabled, empty Swift entry + exit handlers", perCall(cem_sample_empty), "exit through the shadow stack"))
        try hooks.remove(h)

        // An instruction probe on a generated function: mov rax, rdi; add rax, 1; ret.
        let gen = try mem.allocate(.moduleText, size: 16)
        try mem.write([0x48, 0x89, 0xF8, 0x48, 0x83, 0xC0, 0x01, 0xC3], to: gen)
        mem.makeVisible()
        let genFunction = unsafeBitCast(gen.address, to: Empty.self)
        let unprobed = perCall(genFunction)
        let probes = InstructionProbes(allocator: mem)
        let emptyProbe: CProbeHandler = { _, _ in }
        let range = gen.address..<(gen.address + 8)
        let p = try probes.probe(gen.address, function: range, mode: .jump, c: emptyProbe)
        let probed = perCall(genFunction)
        try probes.remove(p)
        let trapProbe = try probes.probe(gen.address, function: range, mode: .trap, c: emptyProbe)
        let trapped = perCall(genFunction, calls: max(1000, calls / 200))  // a signal each
        try probes.remove(trapProbe)
        out.append(BenchResult(benchmark: "probes", figure: "instruction probe hit (jump), empty C handler", unit: "ns/call", value: probed,
                               baseline: "the same function unprobed", baselineValue: unprobed, ratio: unprobed / probed,
                               notes: "jmp to the slot, save 16 registers and flags, XSAVE \(InstructionProbes.extendedStateBytes) bytes, call, restore, 2 displaced instructions"))
        out.append(BenchResult(benchmark: "probes", figure: "instruction probe hit (trap), empty C handler", unit: "ns/call", value: trapped,
                               baseline: "the same function unprobed", baselineValue: unprobed, ratio: unprobed / trapped,
                               notes: "int3, SIGTRAP to the slot, then as the jump probe with 1 displaced instruction"))
        hooks.reclaim()
        probes.reclaim()
        try mem.free(gen)

        // Enabling 10,000 hooks.
        let n = 10_000
        var functions: [Allocation] = []
        for k in 0..<n {
            let a = try mem.allocate(.moduleText, size: 16)
            var code: [UInt8] = [0x0F, 0x1F, 0x44, 0x00, 0x00, 0x48, 0x8D, 0x87]
            withUnsafeBytes(of: Int32(k).littleEndian) { code += $0 }
            code.append(0xC3)
            try mem.write(code, to: a)
            functions.append(a)
        }
        mem.makeVisible()
        let many = try hooks.hook(functions.map(\.address), entry: { _, _ in }, enable: false)
        var t = Clock.now
        try hooks.enable(many)
        let batch = t.elapsedSeconds * 1000
        try hooks.disable(many)
        t = Clock.now
        for h in many { try hooks.enable(h) }
        let single = t.elapsedSeconds * 1000
        for (k, f) in functions.enumerated() where k % 997 == 0 {
            let r = unsafeBitCast(f.address, to: (@convention(c) (Int) -> Int).self)(5)
            guard r == 5 + k else { throw BenchError("hooked generated function \(k) returned \(r)") }
        }
        try hooks.disable(many)
        // One host function (patched through /proc/self/mem) against one generated function
        // (patched through the write view): a full enable + disable each.
        func toggle(_ hook: Hook, _ rounds: Int) throws -> Double {
            let t = Clock.now
            for _ in 0..<rounds { try hooks.enable(hook); try hooks.disable(hook) }
            return t.elapsedSeconds * 1e6 / Double(2 * rounds)
        }
        let hostHook = try hooks.hook(patchable, c: emptyC, enable: false)
        let host = try toggle(hostHook, 500), own = try toggle(many[0], 500)
        try hooks.remove(hostHook)
        for h in many { try hooks.remove(h) }
        hooks.reclaim()
        for f in functions { try mem.free(f) }
        out.append(BenchResult(benchmark: "probes", figure: "enable 10,000 hooks, one batch", unit: "ms", value: batch,
                               baseline: "one poke per hook", baselineValue: single, ratio: single / batch,
                               notes: "int3 on all, serialize, tails, serialize, heads, serialize (membarrier sync-core)"))
        out.append(BenchResult(benchmark: "probes", figure: "enable or disable one hook, host function", unit: "us", value: host,
                               baseline: "the same, function in ExecMem text", baselineValue: own, ratio: own / host,
                               notes: "host text is written through /proc/self/mem, ExecMem text through its write view"))
        return out
    }
}
