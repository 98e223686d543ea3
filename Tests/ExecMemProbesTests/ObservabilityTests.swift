// Hooks, probes and patch stubs in the code registry: their names while attached, none after they
// are freed, and real backtraces from handlers through the stubs, the hooked or probed function and
// its caller to the host frames above.

import CExecMemDebug
import CExecMemProbeSamples
import ExecMem
@testable import ExecMemProbes
import Synchronization
import Testing

/// The calling thread's return addresses, innermost first (`_Unwind_Backtrace`).
@inline(never)
func unwindBacktrace() -> [UInt] {
    var buffer = [UInt](repeating: 0, count: 512)
    let n = buffer.withUnsafeMutableBufferPointer { cem_unwind_backtrace($0.baseAddress, Int32($0.count)) }
    return Array(buffer[..<Int(n)])
}

/// Host functions are process-wide: these tests take turns with the other hook tests.
extension HookTests {
    var registry: CodeRegistry { CodeRegistry.shared }

    /// `handler` traces are compared with one taken here: both start inside `unwindBacktrace` and
    /// share every frame above `traced`, which differs only in its own frame (it called
    /// `unwindBacktrace` from one place and the hooked function from another). Returns the
    /// handler's frames between the two.
    @inline(never)
    func traced(_ trace: () -> [UInt], _ call: () -> Int) -> (frames: [UInt], result: Int, complete: Bool) {
        let here = unwindBacktrace()
        let result = call()
        let t = trace()
        let inner = zip(t, here).prefix { $0 == $1 }.count
        let shared = zip(t.reversed(), here.reversed()).prefix { $0 == $1 }.count
        let complete = inner >= 1 && shared >= 2 && here.count - shared == inner + 1 && t.count > shared
        return (complete ? Array(t[inner..<(t.count - shared)]) : t, result, complete)
    }

    func name(_ pc: UInt) -> String? { registry.symbolize(pc - 1)?.symbol }

    @Test func entryHandlerBacktraceReachesTheCaller() throws {
        let captured = Mutex<[UInt]>([])
        let hook = try hooks.hook(addAddress, entry: { _, _ in captured.withLock { $0 = unwindBacktrace() } })
        defer { try? hooks.remove(hook); hooks.reclaim() }
        let t = traced({ captured.withLock { $0 } }, { cem_sample_add(20, 22) })
        #expect(t.result == 42)
        #expect(t.complete, "the handler's backtrace does not reach the host frames above the call: \(t.frames.map { String($0, radix: 16) })")
        // ... handler frames, the body, the hooked function right after its patched entry, `traced`.
        let body = try #require(t.frames.firstIndex { name($0) == "execmem_hook_body" })
        #expect(body + 2 < t.frames.count && t.frames[body + 1] == hook.site + 5, "the frame above the body is cem_sample_add at its entry")
        #expect(t.frames[(body + 1)...].allSatisfy { name($0) == nil }, "then host frames")
    }

    @Test func exitHandlerBacktraceReachesTheCaller() throws {
        let captured = Mutex<[UInt]>([])
        let hook = try hooks.hook(addAddress, exit: { _, _ in captured.withLock { $0 = unwindBacktrace() } })
        defer { try? hooks.remove(hook); hooks.reclaim() }
        let t = traced({ captured.withLock { $0 } }, { cem_sample_add(40, 2) })
        #expect(t.result == 42)
        #expect(t.complete, "the exit handler's backtrace does not reach the host frames: \(t.frames.map { String($0, radix: 16) })")
        let exit = try #require(t.frames.firstIndex { name($0) == "execmem_hook_exit" })
        #expect(exit + 1 < t.frames.count && t.frames[(exit + 1)...].allSatisfy { name($0) == nil }, "the exit trampoline returns to the caller")
    }

    @Test func probeHandlerBacktraceReachesTheCaller() throws {
        let probes = InstructionProbes(allocator: probeAllocator)
        let site = try hooks.patchableSite(of: addAddress)
        let range = addAddress..<(site + 5 + 16)
        for mode in [ProbeMode.jump, .trap] {
            let captured = Mutex<[UInt]>([])
            // At the entry's NOP (a jump probe displaces it; a trap probe too).
            let p = try probes.probe(site, function: range, mode: mode) { _, _ in captured.withLock { $0 = unwindBacktrace() } }
            let t = traced({ captured.withLock { $0 } }, { cem_sample_add(1, 41) })
            #expect(t.result == 42)
            #expect(t.complete, "\(mode): the probe handler's backtrace does not reach the host: \(t.frames.map { String($0, radix: 16) })")
            let slot = try #require(t.frames.firstIndex { name($0)?.hasPrefix("execmem_probe_") == true })
            let expected = "execmem_probe_cem_sample_add+0x" + String(site - addAddress, radix: 16)
            #expect(name(t.frames[slot]) == expected)
            // Above the slot: the function at the probed instruction (+1, as a return address), then `traced`.
            #expect(slot + 2 < t.frames.count && t.frames[slot + 1] == site + 1, "\(t.frames.map { String($0, radix: 16) }) site \(String(site, radix: 16)) slot at \(slot)")
            try probes.remove(p)
            probes.reclaim()
            #expect(registry.symbolize(t.frames[slot] - 1) == nil, "unnamed once freed")
        }
    }

    @Test func hookNamesWhileAttachedAndNoneAfter() throws {
        let hook = try hooks.hook(addAddress, entry: { _, _ in })
        let stub = try #require(hooks.state.withLock { $0.hooks[hook.id]?.stub })
        #expect(registry.symbolize(stub.address)?.symbol == "execmem_hook_cem_sample_add")
        #expect(registry.symbolize(stub.address)?.kind == .hook)
        let body = try #require(hooks.state.withLock { $0.body })
        #expect(registry.symbolize(body.address + 8)?.symbol == "execmem_hook_body")
        #expect(cem_sample_add(1, 2) == 3)
        try hooks.remove(hook)
        #expect(registry.symbolize(stub.address) != nil, "a removed hook's stub is kept (and named) until reclaimed")
        hooks.reclaim()
        #expect(registry.symbolize(stub.address) == nil)
        // Names of host functions come from the executable's symbol table.
        #expect(ProbeNames.function(addAddress) == "cem_sample_add")
        #expect(ProbeNames.function(addAddress + 1) == "cem_sample_add+0x1")
    }

    @Test func commonCodeIsUnnamedWhenTheHooksGo() throws {
        var body: UInt = 0
        do {
            let mine = FunctionHooks(allocator: probeAllocator)
            let h = try mine.hook(addAddress, entry: { _, _ in })
            body = try #require(mine.state.withLock { $0.body }).address
            #expect(registry.symbolize(body)?.symbol == "execmem_hook_body")
            try mine.remove(h)
        }
        #expect(registry.symbolize(body)?.symbol != "execmem_hook_body")
    }
}
