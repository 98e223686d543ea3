// The stress test: two threads call hooked host functions in tight loops while this thread
// enables, disables and live-patches 10,000 times, and a fourth thread scans /proc/self/maps for
// rwx mappings the whole time. Part of HookTests, which take turns on the host's functions.

import CExecMemProbeSamples
import ExecMem
import ExecMemProbes
import ExecMemSystem
import Foundation
import Synchronization
import Testing

extension HookTests {
    @Test func stressTogglingWhileThreadsCall() throws {
        let hooks = FunctionHooks(allocator: probeAllocator)
        let sum6 = unsafeBitCast(cem_sample_sum6 as @convention(c) (Int, Int, Int, Int, Int, Int) -> Int, to: UInt.self)
        let fib = unsafeBitCast(cem_sample_fib as @convention(c) (Int) -> Int, to: UInt.self)
        let fired = Atomic<Int>(0), exited = Atomic<Int>(0)
        let addHook = try hooks.hook(addAddress, entry: { _, _ in fired.add(1, ordering: .relaxed) }, enable: false)
        let sumHook = try hooks.hook(sum6, entry: { _, _ in fired.add(1, ordering: .relaxed) }, enable: false)
        let fibHook = try hooks.hook(fib, entry: { _, _ in fired.add(1, ordering: .relaxed) },
                                     exit: { _, _ in exited.add(1, ordering: .relaxed) }, enable: false)
        let stop = Atomic<Bool>(false)
        let wrong = Atomic<Int>(0), calls = Atomic<Int>(0), scans = Atomic<Int>(0), rwx = Atomic<Int>(0)
        let trapsBefore = TextPoker.emulatedTraps + TextPoker.lateTraps
        var threads: [Thread] = []
        for t in 0..<2 {
            threads.append(Thread {
                var i = 0
                while !stop.load(ordering: .relaxed) {
                    let r = cem_sample_add(i, t)
                    if r != i + t && r != i + t + 1000 { wrong.add(1, ordering: .relaxed) }
                    if cem_sample_sum6(i, 1, 1, 1, 1, 1) != i + 20 { wrong.add(1, ordering: .relaxed) }
                    if i % 64 == 0 && cem_sample_fib(12) != 144 { wrong.add(1, ordering: .relaxed) }
                    i += 1
                    calls.add(1, ordering: .relaxed)
                }
            })
        }
        threads.append(Thread {
            while !stop.load(ordering: .relaxed) {
                if let bad = try? ProcMaps.writableExecutable(), !bad.isEmpty { rwx.add(1, ordering: .relaxed) }
                scans.add(1, ordering: .relaxed)
            }
        })
        for t in threads { t.start() }
        while calls.load(ordering: .relaxed) == 0 { usleep(100) }
        // 10,000 changes: hook on, hook off, redirect, revert on cem_sample_add; the other two
        // hooks flip in every round as well.
        var operations = 0, round = 0
        var patch: LivePatch? = nil
        while operations < 10_000 {
            switch round % 4 {
            case 0: try hooks.enable(addHook)
            case 1: try hooks.disable(addHook)
            case 2: patch = try hooks.redirect(addAddress, to: addV2Address)
            default: try hooks.revert(patch!)
            }
            if hooks.isEnabled(sumHook) { try hooks.disable([sumHook, fibHook]) } else { try hooks.enable([sumHook, fibHook]) }
            operations += 2
            round += 1
        }
        stop.store(true, ordering: .relaxed)
        while threads.contains(where: { !$0.isFinished }) { usleep(1000) }
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(calls.load(ordering: .relaxed) > 1000)
        #expect(fired.load(ordering: .relaxed) > 0)
        #expect(scans.load(ordering: .relaxed) > 0)
        #expect(rwx.load(ordering: .relaxed) == 0, "an rwx mapping was seen during the stress")
        print("stress: \(operations) changes, \(calls.load(ordering: .relaxed)) call rounds, \(fired.load(ordering: .relaxed)) hook entries, "
              + "\(exited.load(ordering: .relaxed)) exits, \(scans.load(ordering: .relaxed)) maps scans, "
              + "\(TextPoker.emulatedTraps + TextPoker.lateTraps - trapsBefore) threads met a patch in progress")
        if hooks.isEnabled(sumHook) { try hooks.disable([sumHook, fibHook]) }
        for h in [addHook, sumHook, fibHook] { try hooks.remove(h) }
        #expect(cem_sample_add(2, 2) == 4)
        try expectNoWritableExecutable()
    }
}
