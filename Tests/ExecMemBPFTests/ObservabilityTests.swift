// JIT code in the code registry: Linux's names (tags from SHA-1, checked against FIPS 180 and a tag
// bpftool prints), every piece named while runnable and unnamed after, and real backtraces from a
// helper through the JIT frames (local calls, main called locally, a loop) to the host frames that
// ran the program.

import CExecMemDebug
import ExecMem
@testable import ExecMemBPF
import Foundation
import Synchronization
import Testing

/// The calling thread's return addresses, innermost first (`_Unwind_Backtrace`).
@inline(never)
func unwindBacktrace() -> [UInt] {
    var buffer = [UInt](repeating: 0, count: 512)
    let n = buffer.withUnsafeMutableBufferPointer { cem_unwind_backtrace($0.baseAddress, Int32($0.count)) }
    return Array(buffer[..<Int(n)])
}

@Suite struct SHA1Tests {
    func sha(_ s: String) -> String { SHA1.hex(SHA1.digest(Array(s.utf8))) }

    @Test func fips180Vectors() {
        #expect(sha("abc") == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(sha("") == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") == "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
        #expect(sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")
                == "a49b2446a02c645bf419f995b67091253a04a259")
        #expect(SHA1.hex(SHA1.digest([UInt8](repeating: 0x61, count: 1_000_000))) == "34aa973cd4c4daa4f61eeb2bdbad27316534016f")
        // Lengths around the padding boundary (55, 56, 64 bytes); values from Python's hashlib.
        #expect(sha(String(repeating: "a", count: 55)) == "c1c8bbdc22796e28c0e15163d20899b65621d65a")
        #expect(sha(String(repeating: "a", count: 56)) == "c2db330f6083854c99d4b5bfb6e8f29f201be699")
        #expect(sha(String(repeating: "a", count: 64)) == "0098ba824b5c16427bd7a1122a5a442a25ec644d")
    }
}

@Suite struct JITNameTests {
    @Test func tagsAreLinuxTags() throws {
        let vm = BPFVM(allocator: try testAllocator())
        // `r0 = 0; exit`: bpftool shows this tag for it.
        #expect(try vm.load(assembly: "mov %r0, 0\nexit").tag == "a04f5eef06a7f555")
        // Map references: the map's number does not change the tag (Linux zeroes both halves).
        let maps = [try BPFMap(name: "a", type: .array, keySize: 4, valueSize: 8, maxEntries: 1),
                    try BPFMap(name: "b", type: .array, keySize: 4, valueSize: 8, maxEntries: 1)]
        let p0 = try vm.load(assembly: "lddw %r1, map[0]\nmov %r0, 0\nexit", maps: maps)
        let p1 = try vm.load(assembly: "lddw %r1, map[1]\nmov %r0, 0\nexit", maps: maps)
        #expect(p0.tag == p1.tag)
        // ... but an ordinary lddw's value does.
        #expect(try vm.load(assembly: "lddw %r0, 1\nexit").tag != vm.load(assembly: "lddw %r0, 2\nexit").tag)
    }

    @Test func namesKeepLinuxCharactersAndLength() throws {
        let vm = BPFVM(allocator: try testAllocator())
        let tag = "a04f5eef06a7f555"
        #expect(try vm.load(assembly: "mov %r0, 0\nexit", name: "xdp_prog").symbolName == "bpf_prog_\(tag)_xdp_prog")
        #expect(try vm.load(assembly: "mov %r0, 0\nexit", name: "a-very/long name.v2_and_more").symbolName == "bpf_prog_\(tag)_averylongname.v")
        #expect(try vm.load(assembly: "mov %r0, 0\nexit", name: "").symbolName == "bpf_prog_\(tag)")
        #expect(try vm.load(assembly: "mov %r0, 0\nexit", name: "---").symbolName == "bpf_prog_\(tag)")
    }

    @Test func everyPieceIsNamedWhileRunnableAndUnnamedAfter() throws {
        let vm = BPFVM(allocator: try testAllocator())
        // A bounds check the verifier cannot prove (a fault stub) and a subprogram.
        let p = try vm.load(assembly: """
            mov %r6, %r1
            call local f
            ldxb %r0, [%r6+0]
            exit
            f:
            mov %r0, 1
            exit
            """, name: "named")
        #expect(try p.run(bytes: [9]) == 9)
        let a = try #require(p.jitAllocation)
        let r = CodeRegistry.shared
        let entry = try #require(r.symbolize(a.address))
        #expect(entry.symbol == "bpf_jit_entry_\(p.tag)_named" && entry.kind == .bpfProgram && entry.owner == "bpf", "one registration per compilation")
        // Walk every byte of the code: entry, main, the subprogram, fault stubs, the exit path.
        var seen: [String] = []
        for address in a.address..<(a.address + UInt(a.size)) {
            guard let l = r.symbolize(address) else { Issue.record("no name at +\(address - a.address)"); continue }
            if seen.last != l.symbol { seen.append(l.symbol) }
        }
        let sub = BPFNames(p).subprogram(1)
        #expect(seen == ["bpf_jit_entry_\(p.tag)_named", "bpf_prog_\(p.tag)_named", sub,
                         "bpf_jit_fault_\(p.tag)_named", "bpf_jit_exit_\(p.tag)_named"], "\(seen)")
        #expect(sub.hasPrefix("bpf_prog_") && sub.hasSuffix("_F") && sub != "bpf_prog_\(p.tag)_F")
        #expect(r.symbolize(a.address + UInt(a.size) - 1)?.symbol == "bpf_jit_exit_\(p.tag)_named")
        p.unload()
        for address in stride(from: a.address, to: a.address + UInt(a.size), by: 1) {
            #expect(r.symbolize(address) == nil, "still named at +\(address - a.address) after unload")
        }
        // Compiled again: named again.
        #expect(try p.run(bytes: [3]) == 3)
        let b = try #require(p.jitAllocation)
        #expect(r.symbolize(b.address + 1)?.symbol == "bpf_jit_entry_\(p.tag)_named")
        p.unload()
        #expect(r.symbolize(b.address + 1) == nil)
    }
}

@Suite(.serialized) struct JITUnwindTests {
    /// Runs `source` with helper 100 taking a backtrace; returns it and one taken by the caller.
    @inline(never)
    func traces(_ source: String, name: String, far: Bool, bytes: [UInt8] = [1]) throws -> (helper: [UInt], here: [UInt], program: BPFProgram, result: UInt64) {
        var c = ExecMemConfiguration()
        c.rangeSize = 64 << 20
        c.fallbackSize = 0
        // Far from the executable, helpers are called through a register (other code, same frames).
        if far { c.placement = .anywhere }
        let vm = BPFVM(allocator: try ExecMemAllocator(c))
        let captured = Mutex<[UInt]>([])
        vm.register(100, BPFHelper(name: "trace", arguments: 0, swift: { _, _, _, _, _ in
            captured.withLock { $0 = unwindBacktrace() }
            return 40
        }))
        let p = try vm.load(assembly: source, name: name)
        let here = unwindBacktrace()
        let result = try p.run(bytes: bytes)
        return (captured.withLock { $0 }, here, p, result)
    }

    /// The names of the registered frames in `trace`, in order (return addresses look up at -1).
    func registeredFrames(_ trace: [UInt]) -> [String] { trace.compactMap { CodeRegistry.shared.symbolize($0 - 1)?.symbol } }

    /// The helper's backtrace passed every JIT frame and went on through the host frames that ran
    /// the program up to the top of the thread's stack: both traces start with the same frames
    /// (inside `unwindBacktrace`), and differ only in the one frame of `traces` (it called
    /// `unwindBacktrace` from one place and the program from another); everything above is the same.
    func expectReachesHost(_ t: (helper: [UInt], here: [UInt], program: BPFProgram, result: UInt64), _ jitFrames: [String]) {
        #expect(registeredFrames(t.helper) == jitFrames)
        let inner = zip(t.helper, t.here).prefix { $0 == $1 }.count
        let shared = zip(t.helper.reversed(), t.here.reversed()).prefix { $0 == $1 }.count
        #expect(inner >= 1 && shared >= 2 && t.here.count - shared == inner + 1,
                "the helper's backtrace does not reach the host frames: \(t.helper.map { String($0, radix: 16) }) vs the caller's \(t.here.map { String($0, radix: 16) })")
        // Below the shared frames: `traces` (host code), then what ran the program, which holds the JIT frames.
        if t.helper.count > shared {
            #expect(CodeRegistry.shared.symbolize(t.helper[t.helper.count - shared - 1] - 1) == nil)
            let jit = t.helper.lastIndex { CodeRegistry.shared.symbolize($0 - 1) != nil } ?? 0
            #expect(jit < t.helper.count - shared - 1, "host frames lie between the entry stub and the caller")
        }
    }

    @Test(arguments: [false, true]) func backtraceFromHelperInMain(far: Bool) throws {
        let t = try traces("mov %r6, 2\ncall 100\nadd %r0, %r6\nexit", name: "leaf", far: far)
        #expect(t.result == 42)
        expectReachesHost(t, [t.program.symbolName, "bpf_jit_entry_\(t.program.tag)_leaf"])
    }

    @Test(arguments: [false, true]) func backtraceThroughLocalCallsWithSavedRegisters(far: Bool) throws {
        // f writes r6-r9 (all four saved: five pushes with the pad), g writes r6 only (one push).
        let t = try traces("""
            mov %r6, 1
            mov %r7, 2
            call local f
            add %r0, %r6
            add %r0, %r7
            exit
            f:
            mov %r6, 10
            mov %r7, 20
            mov %r8, 30
            mov %r9, 40
            call local g
            sub %r0, %r6
            sub %r0, %r7
            add %r0, %r8
            sub %r0, %r9
            exit
            g:
            mov %r6, 0
            call 100
            exit
            """, name: "calls", far: far)
        #expect(t.result == 40 - 10 - 20 + 30 - 40 + 1 + 2)
        let n = BPFNames(t.program)
        expectReachesHost(t, [n.subprogram(2), n.subprogram(1), t.program.symbolName, n.entry])
    }

    @Test(arguments: [false, true]) func backtraceWhenMainIsCalledLocally(far: Bool) throws {
        // Main calls itself once (r1 = 0 the second time), then calls the helper from a loop.
        let t = try traces("""
            main:
            jeq %r1, 0, leaf
            mov %r6, 3
            mov %r1, 0
            call local main
            add %r0, %r6
            exit
            leaf:
            mov %r7, 2
            loop:
            sub %r7, 1
            jne %r7, 0, loop
            call 100
            exit
            """, name: "recursive", far: far)
        #expect(t.result == 43)
        let name = t.program.symbolName
        expectReachesHost(t, [name, name, "bpf_jit_entry_\(t.program.tag)_recursive"])
    }

    /// Another thread compiling and freeing programs (and so registering in batches) all along must
    /// not delay this thread's registrations: the registry's batches are per thread (a global batch
    /// depth left a program's frames unannounced while another thread's batch was open).
    @Test func framesAreAnnouncedWhileAnotherThreadRegisters() throws {
        let stop = Atomic<Bool>(false)
        let done = Atomic<Bool>(false)
        let churn = Thread {
            let vm = BPFVM(allocator: try! testAllocator())
            var i = 0
            while !stop.load(ordering: .relaxed) {
                _ = try! vm.load(assembly: "mov %r0, \(i)\nexit").run(bytes: [1])
                i += 1
            }
            done.store(true, ordering: .releasing)
        }
        churn.start()
        defer {
            stop.store(true, ordering: .relaxed)
            while !done.load(ordering: .acquiring) { usleep(1000) }
        }
        for _ in 0..<100 {
            let t = try traces("mov %r6, 2\ncall 100\nadd %r0, %r6\nexit", name: "leaf", far: false)
            #expect(registeredFrames(t.helper) == [t.program.symbolName, "bpf_jit_entry_\(t.program.tag)_leaf"])
            if registeredFrames(t.helper).count != 2 { break }
        }
    }
}
