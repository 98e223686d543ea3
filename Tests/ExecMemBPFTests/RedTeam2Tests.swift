// Red-team round 2 findings against the eBPF runtime's promises. Each test is a minimal reproducer
// that asserts the CORRECT behaviour, so it fails (or its child process crashes) until the bug is
// fixed. Anything that may take the process down runs in a child process (an exit test).

import ExecMem
@testable import ExecMemBPF
import Foundation
import Testing

/// Runs `source` on both engines over `bytes` with `budget`; the two outcomes, as text.
private func outcomes(_ source: String, maps: [BPFMap] = [], bytes: [UInt8] = [], budget: UInt64? = nil,
                      vm: BPFVM? = nil) throws -> [String] {
    let vm = try vm ?? BPFVM(allocator: testAllocator())
    let p = try vm.load(assembly: source, maps: maps)
    return BPFEngine.allCases.map { engine in
        switch Result(catching: { () throws(BPFError) in try p.run(bytes: bytes, engine: engine, budget: budget) }) {
        case let .success(v): "r0 = \(v)"
        case let .failure(e): "\(e)"
        }
    }
}

@Suite struct RedTeam2Tests {
    // MARK: - Finding 1 (engine mismatch): the `jcc +1; ja T` peephole falls into a loop's budget pad

    /// The JIT turns `jne r2, 0, +1; ja out` into one `jeq r2, 0, out` (JIT.swift `compile`, the peephole
    /// branch). When the instruction after the `ja` is a loop header, `compile` decides whether to
    /// emit `jmp header` over the header's budget pad with `fallsThrough(into:)`, which looks at the
    /// instruction before the header: the `ja`, which never falls through, so no jump is emitted.
    /// But after the peephole the code before the pad is the inverted `jcc`, which does: the
    /// not-taken path (r2 != 0 here) runs into the pad and pays the loop's back-edge charge (2
    /// units) on entry, which the interpreter never charges. With a budget of exactly what the run
    /// needs (6 for main, 2 for each of the 2 back edges = 10) the interpreter returns 3 and the JIT
    /// stops with "instruction budget of 10 exhausted". (Same outcome for budgets 10 and 11.)
    static let peepholeIntoPad = """
        mov %r0, 0
        jne %r2, 0, +1
        ja out
        loop:
        add %r0, 1
        jlt %r0, 3, loop
        out:
        exit
        """

    @Test func thePeepholeDoesNotChargeALoopPadOnEntry() throws {
        let r = try outcomes(Self.peepholeIntoPad, bytes: [1], budget: 10)
        #expect(r == ["r0 = 3", "r0 = 3"])
    }
}

/// Where a helper finds the program it acts on (set after loading).
private final class ProgramBox: @unchecked Sendable {
    var program: BPFProgram?
}

extension RedTeam2Tests {
    // MARK: - Finding 2 (crash / host control flow): unload() or compile() from a helper of the run

    /// `unload()` and `compile()` say they "must not overlap a JIT run of this program on another
    /// thread"; from a helper the program calls, on the SAME thread, is not excluded. But the
    /// compiled fast path of `run` (BPFVM.swift, `published` + `_withUnsafeGuaranteedRef`) holds no
    /// reference to the JITCode: `unload()` drops the last one, JITCode.deinit frees the allocation
    /// and the allocator trap-fills it with 0xCC, and the helper returns into it: SIGTRAP. (Had the
    /// helper compiled another program that the packed allocator placed there, the return would
    /// land in the middle of that program's code.) Correct: the run keeps its code alive (or the
    /// call is refused / documented as forbidden); here, the run returns 7.
    @Test func unloadingFromAHelperDoesNotFreeTheRunningCode() async {
        await #expect(processExitsWith: .success) {
            let vm = BPFVM(allocator: try testAllocator())
            let box = ProgramBox()
            vm.register(100, BPFHelper(name: "unload", arguments: 0, swift: { _, _, _, _, _ in box.program?.unload(); return 0 }))
            let p = try vm.load(assembly: "call 100\nmov %r0, 7\nexit")
            box.program = p
            try p.compile()  // compiled: the next run takes the fast path
            #expect(try p.run(engine: .jit) == 7)
        }
    }

    /// The same, with the freed range reused: the helper unloads A and compiles B, which the packed
    /// allocator places at A's old address (the same 0x...800000 here). A's run returns from the helper
    /// into B's code at A's return offset and finishes B's instructions: it returns B's 99, not 7.
    /// (`compile()` of A itself from the helper does the same: the old code is freed, SIGTRAP.)
    @Test func aHelperCannotMakeARunContinueInAnotherProgramsCode() async {
        await #expect(processExitsWith: .success) {
            let vm = BPFVM(allocator: try testAllocator())
            let a = ProgramBox(), b = ProgramBox()
            vm.register(101, BPFHelper(name: "nop", arguments: 0, swift: { _, _, _, _, _ in 1 }))
            vm.register(100, BPFHelper(name: "swap", arguments: 0, swift: { _, _, _, _, _ in
                a.program?.unload()
                try? b.program?.compile()
                return 1
            }))
            a.program = try vm.load(assembly: "call 100\nmov %r0, 7\nexit")
            b.program = try vm.load(assembly: "call 101\nmov %r0, 99\nexit")
            try a.program!.compile()
            let r0 = try a.program!.run(engine: .jit)
            exit(r0 == 7 ? 0 : Int32(r0))  // exit code 99: A's run finished in B's code
        }
    }
}

// MARK: - ELF objects that cost far more memory than their size

/// Caps this (child) process's address space at what it uses now plus `extra` bytes, so that an
/// allocation the loader should never make fails (and kills the child) instead of taking the host.
private func limitAddressSpace(extra: Int) {
    let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "0"
    let pages = Int(statm.split(separator: " ").first ?? "0") ?? 0
    var limit = rlimit(rlim_cur: rlim_t(pages * Int(getpagesize()) + extra), rlim_max: rlim_t.max)
    setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit)
}

/// `bpfObject` with `extra` symbols (sizes 0) and `strtab` after "\0f\0".
private func object(extra: [(name: UInt32, section: UInt16, value: UInt64)], strtab extraStrings: [UInt8] = [],
                    mapDef: [UInt32]? = nil) -> [UInt8] {
    bpfObject(symbols: extra.map { (name: $0.name, section: $0.section, value: $0.value, size: 0) }, strings: extraStrings, mapDef: mapDef)
}

extension RedTeam2Tests {
    // MARK: - Finding 3 (unbounded memory): every map symbol of a `maps` section gets its own slab

    /// Round 1 capped ONE map at 256 MiB (BPFMap.maxBytes), but nothing caps how many maps an object
    /// declares: ELFProgram.swift makes a BPFMap (allocated and zero-filled) for every symbol in the
    /// `maps` section, and any number of symbols may name the same 20-byte `struct bpf_map_def`.
    /// This 2.1 KB object has 64 symbols at offset 0 of one def `{array, 4, 1 MiB, 256}`: 64 x 256
    /// MiB = 16 GiB of zeroed memory before the program is even verified (measured, release build,
    /// 16 symbols in a 957-byte object: 4.2 GB resident for `execmem bpf verify`). Here, with the
    /// child's address space capped at +2 GiB, the 8th allocation fails and the child aborts.
    /// Correct: a typed error once the object's maps together exceed a bound.
    @Test func theMapsOfOneObjectHaveABoundedTotalSize() async {
        await #expect(processExitsWith: .success) {
            let symbols = (0..<64).map { _ in (name: UInt32(0), section: UInt16(5), value: UInt64(0)) }
            let bytes = object(extra: symbols, mapDef: [2, 4, 1 << 20, 256])
            let vm = BPFVM(allocator: try testAllocator())
            limitAddressSpace(extra: 2 << 30)
            _ = try? vm.load(elf: bytes)
        }
    }

    // MARK: - Finding 4 (unbounded memory): one long symbol name, copied for every symbol

    /// ExecMemELF's ELFFile.init decodes every symbol's name into its own String
    /// (`r.cString(strtab.offset + nameOffset, ...)`), and any number of symbols may share one name
    /// offset. A 32 KiB name shared by 40,000 symbols is a 1 MB file that costs 1.3 GB (and a scan
    /// of 1.3 GB); memory and time are quadratic in the file's size (measured, release build: a
    /// 1 MB object with a 64 KiB name, 2.6 GB resident), before anything is validated. The same holds
    /// for section names. Correct: bounded by a small multiple of the file (intern the names, or cap
    /// their length); here the load returns within +256 MiB of address space.
    @Test func symbolNamesCostMemoryLinearInTheFile() async {
        await #expect(processExitsWith: .success) {
            let name = [UInt8](repeating: 0x41, count: 32 << 10) + [0]
            let symbols = (0..<40_000).map { _ in (name: UInt32(3), section: UInt16(1), value: UInt64(0)) }
            let bytes = object(extra: symbols, strtab: name)
            let vm = BPFVM(allocator: try testAllocator())
            limitAddressSpace(extra: 256 << 20)
            _ = try? vm.load(elf: bytes)
        }
    }
}

extension RedTeam2Tests {
    // MARK: - Finding 5 (crash, unbounded time): nested runs have no depth limit and no shared budget

    /// A run from within a helper is supported (RunContext.swift `acquire`: "a run of a program from
    /// within a helper ... gets a fresh one"), but nothing bounds how deep such runs nest, and each
    /// nested run gets a fresh budget. So once a host offers a helper that runs a program (here: the
    /// same one, a tail-call-like "run"), the PROGRAM decides the nesting depth: `call 100; exit`
    /// nests until the native stack overflows (SIGSEGV), each level with its own 1M-unit budget.
    /// Correct: nested runs are bounded (a depth limit, or the inner run drawing on the outer run's
    /// budget) and the run ends with a typed error.
    @Test func nestedRunsFromHelpersAreBounded() async {
        await #expect(processExitsWith: .success) {
            let vm = BPFVM(allocator: try testAllocator())
            let box = ProgramBox()
            vm.register(100, BPFHelper(name: "run", arguments: 0, swift: { _, _, _, _, _ in
                (try? box.program?.run(engine: .jit)) ?? 0
            }))
            let p = try vm.load(assembly: "call 100\nexit")
            box.program = p
            _ = try? p.run(engine: .jit)
        }
    }
}

extension RedTeam2Tests {
    // MARK: - Map memory, round 3 (issue 10)

    /// The object's total counted only value bytes, while a hash map also takes `key_size x
    /// max_entries` bytes of keys: two 130 MiB hash maps (512-byte keys, 2^18 entries) passed a
    /// 256 MiB total as 4 MiB. Keys count now.
    @Test func hashMapKeysCountTowardTheObjectTotal() throws {
        let symbols = (0..<2).map { _ in (name: UInt32(0), section: UInt16(5), value: UInt64(0)) }
        let bytes = object(extra: symbols, mapDef: [1, 512, 8, 1 << 18])
        #expect { _ = try BPFVM(allocator: try testAllocator()).load(elf: bytes) } throws: { "\($0)".contains("BPFMap.maxBytes") }
        // One of them alone is within the bound.
        let one = object(extra: [(name: 0, section: 5, value: 0)], mapDef: [1, 512, 8, 1 << 18])
        #expect(throws: Never.self) { _ = try BPFVM(allocator: try testAllocator()).load(elf: one) }
    }

    /// A 255 MiB array map from a 400-byte object: its values are fresh zero pages (calloc), so
    /// loading costs memory only where the map is used (it was zero-filled: 255 MiB resident).
    @Test func aLargeMapTakesMemoryOnlyWhereUsed() async {
        await #expect(processExitsWith: .success) {
            func resident() -> Int {
                let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
                let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
                return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? Int.max / 2) << 10
            }
            let bytes = object(extra: [(name: 0, section: 5, value: 0)], mapDef: [2, 4, 255 << 10, 1024])
            let before = resident()
            let program = try BPFVM(allocator: try testAllocator()).load(elf: bytes)
            let map = try #require(program.maps.first)
            #expect(map.valueSize * map.maxEntries == 255 << 20)
            #expect(try map.lookup([0, 0, 0, 0]) == [UInt8](repeating: 0, count: 255 << 10))
            if resident() - before >= 32 << 20 { exit(1) }
        }
    }
}
