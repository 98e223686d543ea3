// Function-entry hooks and live patches on the host's own patchable functions: the handler sees the
// right function and arguments, results are unchanged, disabling restores the bytes exactly, exit
// hooks see return values, live patches switch calls and back, and bad input is a typed error.

import CExecMemProbeSamples
import ExecMem
import ExecMemProbes
import Foundation
import Synchronization
import Testing

/// Host functions are process-wide, so these tests take turns.
@Suite(.serialized) struct HookTests {
    let hooks = FunctionHooks(allocator: probeAllocator)

    @Test func entryHookSeesFunctionAndArgumentsAndRestoresBytes() throws {
        let before = bytes(at: addAddress, 5)
        #expect(before[0] == 0x0F && before[1] == 0x1F, "cem_sample_add starts with a 5-byte NOP")
        let seen = Mutex<[(UInt, UInt64, UInt64)]>([])
        let hook = try hooks.hook(addAddress, entry: { f, args in seen.withLock { $0.append((f, args[0], args[1])) } })
        #expect(bytes(at: addAddress, 1) == [0xE8], "the entry is a call now")
        #expect(cem_sample_add(3, 4) == 7)
        #expect(cem_sample_add(-10, 2) == -8)
        let calls = seen.withLock { $0 }
        #expect(calls.count == 2)
        #expect(calls.first.map { $0.0 == addAddress && $0.1 == 3 && $0.2 == 4 } == true)
        #expect(calls.last.map { Int64(bitPattern: $0.1) == -10 && $0.2 == 2 } == true)
        try hooks.disable(hook)
        #expect(bytes(at: addAddress, 5) == before)
        #expect(cem_sample_add(1, 1) == 2)
        #expect(seen.withLock { $0.count } == 2, "a disabled hook does not fire")
        // Enable again, any number of times.
        for i in 0..<20 {
            try hooks.enable(hook)
            #expect(cem_sample_add(i, i) == 2 * i)
            try hooks.disable(hook)
            #expect(bytes(at: addAddress, 5) == before)
        }
        #expect(seen.withLock { $0.count } == 22)
        try hooks.remove(hook)
        #expect(hooks.reclaim() == 1)
        try expectNoWritableExecutable()
    }

    @Test func allSixArgumentsAndVectorRegistersSurvive() throws {
        let sum6 = unsafeBitCast(cem_sample_sum6 as @convention(c) (Int, Int, Int, Int, Int, Int) -> Int, to: UInt.self)
        let scale = unsafeBitCast(cem_sample_scale as @convention(c) (Double, Int) -> Double, to: UInt.self)
        let seen = Mutex<[UInt64]>([])
        let h1 = try hooks.hook(sum6, entry: { _, a in seen.withLock { $0 = (0..<6).map { a[$0] } } })
        // The handler does vector work of its own; the hooked function must still see x in xmm0.
        let h2 = try hooks.hook(scale, entry: { _, a in
            var acc = 0.0
            for i in 1...64 { acc += Double(i).squareRoot() }
            seen.withLock { $0 = [a[0], UInt64(acc)] }
        })
        #expect(cem_sample_sum6(1, 2, 3, 4, 5, 6) == 1 + 4 + 9 + 16 + 25 + 36)
        #expect(seen.withLock { $0 } == [1, 2, 3, 4, 5, 6])
        #expect(cem_sample_scale(1.5, 4) == 6.0)
        #expect(seen.withLock { $0.first } == 4, "the integer argument k is the first integer register")
        try hooks.remove(h1)
        try hooks.remove(h2)
        try expectNoWritableExecutable()
    }

    @Test func handlersCanRewriteArguments() throws {
        let h = try hooks.hook(addAddress, entry: { _, a in a[0] = 100 })
        #expect(cem_sample_add(1, 2) == 102)
        try hooks.remove(h)
        #expect(cem_sample_add(1, 2) == 3)
    }

    @Test func exitHooksSeeReturnValuesAndNest() throws {
        let fib = unsafeBitCast(cem_sample_fib as @convention(c) (Int) -> Int, to: UInt.self)
        let log = Mutex<(entries: Int, exits: Int, results: [UInt64: Int])>((0, 0, [:]))
        let h = try hooks.hook(fib, entry: { _, _ in log.withLock { $0.entries += 1 } },
                               exit: { f, v in
                                   precondition(f == fib)
                                   log.withLock { $0.exits += 1; $0.results[v, default: 0] += 1 }
                               })
        #expect(cem_sample_fib(10) == 55)
        let l = log.withLock { $0 }
        #expect(l.entries == 177, "fib(10) makes 177 calls")
        #expect(l.exits == 177)
        #expect(l.results[55] == 1, "the outermost call returned 55 once")
        #expect(l.results[34] == 1 && l.results[21] == 2)
        try hooks.remove(h)
        #expect(cem_sample_fib(12) == 144)
    }

    @Test func cHandlersAreCalledDirectly() throws {
        let counter = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        defer { counter.deallocate() }
        counter.pointee = 0
        let handler: CEntryHandler = { context, _, arguments in
            context!.assumingMemoryBound(to: Int.self).pointee += Int(arguments![1])
        }
        let h = try hooks.hook(addAddress, c: handler, context: UnsafeMutableRawPointer(counter))
        for i in 0..<100 { #expect(cem_sample_add(0, i) == i) }
        #expect(counter.pointee == 4950)
        try hooks.remove(h)
    }

    @Test func livePatchSwitchesEveryCallAndBack() throws {
        let before = bytes(at: addAddress, 5)
        let p = try hooks.redirect(addAddress, to: addV2Address)
        #expect(bytes(at: addAddress, 1) == [0xE9])
        for i in 0..<10 { #expect(cem_sample_add(i, 1) == i + 1 + 1000) }
        #expect(cem_sample_add_loop(100) == (0..<100).reduce(0) { $0 + $1 + 1 + 1000 })
        #expect(throws: ProbeError.siteInUse(address: addAddress, by: "live patch \(p.id)")) { try hooks.hook(addAddress, entry: { _, _ in }) }
        try hooks.revert(p)
        #expect(bytes(at: addAddress, 5) == before)
        #expect(cem_sample_add(5, 1) == 6)
        #expect(throws: ProbeError.unknownHook(id: p.id)) { try hooks.revert(p) }
        try expectNoWritableExecutable()
    }

    @Test func badInputIsATypedError() throws {
        let plain = unsafeBitCast(cem_sample_plain as @convention(c) (Int) -> Int, to: UInt.self)
        #expect {
            try hooks.hook(plain, entry: { _, _ in })
        } throws: { e in
            guard case let .notPatchable(a, reason)? = e as? ProbeError else { return false }
            return a == plain && reason.contains("-fpatchable-function-entry")
        }
        // Data, and an address nothing is mapped at, are not instructions.
        let data = UnsafeMutablePointer<UInt8>.allocate(capacity: 64)
        defer { data.deallocate() }
        #expect { try hooks.hook(UInt(bitPattern: data), entry: { _, _ in }) } throws: { e in
            guard case let .notAnInstruction(_, reason)? = e as? ProbeError else { return false }
            return reason.contains("not executable")
        }
        #expect { try hooks.hook(0x1000, entry: { _, _ in }) } throws: { e in
            guard case let .notAnInstruction(_, reason)? = e as? ProbeError else { return false }
            return reason.contains("nothing is mapped")
        }
        // Double enable, disable of a disabled hook, a second hook on a taken entry, unknown hooks.
        let h = try hooks.hook(addAddress, entry: { _, _ in })
        #expect(throws: ProbeError.alreadyEnabled(address: addAddress)) { try hooks.enable(h) }
        #expect(throws: ProbeError.siteInUse(address: addAddress, by: "hook \(h.id)")) { try hooks.hook(addAddress, entry: { _, _ in }) }
        try hooks.disable(h)
        #expect(throws: ProbeError.notEnabled(address: addAddress)) { try hooks.disable(h) }
        try hooks.remove(h)
        #expect(throws: ProbeError.unknownHook(id: h.id)) { try hooks.remove(h) }
        #expect(throws: ProbeError.unknownHook(id: h.id)) { try hooks.enable(h) }
        // After all that, the function is whole and hookable again.
        #expect(cem_sample_add(2, 3) == 5)
        let again = try hooks.hook(addAddress, entry: { _, _ in })
        #expect(cem_sample_add(2, 3) == 5)
        try hooks.remove(again)
        try expectNoWritableExecutable()
    }

    @Test func gccStyleEntriesArePreparedFirst() throws {
        let gcc = address(cem_sample_gcc_style)
        #expect { try hooks.hook(gcc, entry: { _, _ in }) } throws: { e in
            guard case let .notPatchable(_, reason)? = e as? ProbeError else { return false }
            return reason.contains("one-byte NOPs")
        }
        try hooks.prepareEntries([gcc])
        #expect(bytes(at: gcc, 5) == [0x0F, 0x1F, 0x44, 0x00, 0x00])
        let fired = Atomic<Int>(0)
        let h = try hooks.hook(gcc, entry: { _, _ in fired.add(1, ordering: .relaxed) })
        #expect(cem_sample_gcc_style(20, 22) == 42)
        #expect(fired.load(ordering: .relaxed) == 1)
        try hooks.remove(h)
    }
}
