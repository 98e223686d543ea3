// Red team 11b: GDB block files and frame tables after grow/compaction, perf map completeness
// (deferred write, exit), and concurrency with every sink on.

import CExecMemDebug
import ExecMemELF
import ExecMemSystem
import Foundation
import Synchronization
import Testing
@testable import ExecMem

nonisolated(unsafe) private var redSeenPCs: [UInt] = []
private let redRecordBacktrace: @convention(c) () -> Void = {
    var pcs = [UInt](repeating: 0, count: 64)
    let n = pcs.withUnsafeMutableBufferPointer { Int(cem_unwind_backtrace($0.baseAddress, 64)) }
    redSeenPCs = Array(pcs[0..<n])
}

private struct RNG: RandomNumberGenerator {
    var s: UInt64
    mutating func next() -> UInt64 { s &+= 0x9E37_79B9_7F4A_7C15; var z = s; z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9; z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB; return z ^ (z >> 31) }
}

private func le32(_ b: ArraySlice<UInt8>, _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[b.startIndex + o + $1]) << (8 * $1) } }
private func le64(_ b: ArraySlice<UInt8>, _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[b.startIndex + o + $1]) << (8 * $1) } }

/// Reads GDB's list: for files whose .text starts in `blocks`, symbol (name -> address) and live FDE pc_begins.
private func readGDB(blocks: Set<UInt>) throws -> (symbols: [String: [UInt64]], fdes: [UInt64], problems: [String]) {
    var syms: [String: [UInt64]] = [:], fdes: [UInt64] = [], problems: [String] = []
    for file in CodeRegistry.gdbSymbolFiles() {
        let elf = try ELFFile(bytes: file, name: "gdb", machine: 62)
        guard let text = elf.section(named: ".text"), blocks.contains(UInt(text.address) >> 21) else { continue }
        for s in elf.symbols where !s.name.isEmpty { syms[s.name, default: []].append(s.value) }
        guard let eh = elf.section(named: ".eh_frame") else { problems.append("no .eh_frame"); continue }
        if eh.offset % 8 != 0 { problems.append(".eh_frame at \(eh.offset) not 8-aligned") }
        let b = elf.contents(eh)
        var at = 0, first = true
        while at + 4 <= b.count {
            let len = Int(le32(b, at))
            if len == 0 { break }
            if at + 4 + len > b.count { problems.append("entry at \(at) length \(len) past \(b.count)"); break }
            let id = le32(b, at + 4)
            if first {
                if id != 0 || at != 0 { problems.append("first entry not a CIE") }
                first = false
            } else {
                if id == 0 { problems.append("second CIE at \(at)") } else if Int(id) != at + 4 { problems.append("FDE at \(at) CIE pointer \(id) -> \(at + 4 - Int(id))") }
                let pc = le64(b, at + 8)
                if pc != 0 { fdes.append(pc) }
            }
            at += 4 + len
        }
        if at != b.count && !(at + 4 <= b.count) { problems.append("eh_frame walk ended at \(at) of \(b.count)") }
    }
    return (syms, fdes, problems)
}

@Suite(.serialized) struct RedTeam11bTests {
    /// (1) Many interleaved adds/removes in three fake blocks: grow (symbols, strings, frames) and
    /// compaction (garbage names, dead FDEs); after every step group, GDB's view matches.
    @Test func gdbBlockFilesSurviveGrowAndCompaction() throws {
        let reg = CodeRegistry(sinks: [.gdb])
        let blocks: [UInt] = [0x3000_0000_0000 >> 21, (0x3000_0000_0000 >> 21) + 1, (0x3000_0000_0000 >> 21) + 7]
        var rng = RNG(s: 11)
        struct Live { var h: CodeHandle; var syms: [CodeSymbol]; var fdeStarts: [UInt64] }
        var live: [Live] = []
        var problems: [String] = []
        var serial = 0
        for step in 0..<6000 {
            let addMore = live.count < 50 || (step / 700) % 2 == 0 ? rng.next() % 4 != 0 : rng.next() % 4 == 0
            if addMore {
                let block = blocks[Int(rng.next() % 3)]
                let addr = (block << 21) + UInt(rng.next() % 0x1F_0000) & ~0xF
                let n = 1 + Int(rng.next() % 4)
                var syms: [CodeSymbol] = [], frames: [CodeFrame] = []
                for k in 0..<n {
                    serial += 1
                    let longName = String(repeating: "x", count: Int(rng.next() % 120))
                    syms.append(CodeSymbol(name: "rt11b_\(serial)_\(longName)", address: addr + UInt(k * 64), size: 64))
                    if rng.next() % 3 != 0 {
                        frames.append(CodeFrame(offset: k * 64, length: 64, instructions: [UInt8](repeating: 0, count: Int(rng.next() % 60))))
                    }
                }
                let r = CodeRegistration(name: "reg\(serial)", kind: .other, address: addr, size: n * 64, symbols: syms,
                                         unwind: frames.isEmpty ? nil : .frames(frames))
                let h = rng.next() % 5 == 0 ? reg.batch { reg.register(r) } : reg.register(r)
                live.append(Live(h: h, syms: syms, fdeStarts: frames.map { UInt64(addr) + UInt64($0.offset) }))
            } else if !live.isEmpty {
                let i = Int(rng.next() % UInt64(live.count))
                reg.unregister(live[i].h)
                live.swapAt(i, live.count - 1); live.removeLast()
            }
            if step % 250 == 249 || step == 5999 {
                let (syms, fdes, p) = try readGDB(blocks: Set(blocks))
                problems += p.map { "step \(step): \($0)" }
                var want: [String: [UInt64]] = [:]
                for l in live { for s in l.syms { want[s.name, default: []].append(UInt64(s.address)) } }
                if syms != want {
                    let missing = want.keys.filter { syms[$0] != want[$0] }.prefix(3)
                    let extra = syms.keys.filter { want[$0] == nil }.prefix(3)
                    problems.append("step \(step): symbols differ: \(want.count) want, \(syms.count) found; missing/wrong \(Array(missing)) extra \(Array(extra))")
                }
                let wantF = live.flatMap(\.fdeStarts).sorted()
                if fdes.sorted() != wantF { problems.append("step \(step): FDEs \(fdes.count) vs \(wantF.count) live") }
                if problems.count > 10 { break }
            }
        }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        for l in live { reg.unregister(l.h) }
        let (syms, _, _) = try readGDB(blocks: Set(blocks))
        #expect(syms.isEmpty, "\(syms.count) symbols left")
    }

    /// (2) The unwinder after grow and compaction of a block's frame table: a real backtrace through
    /// each live copy of a generated frame; removed copies are not walked.
    @Test func unwinderAfterGrowAndCompaction() throws {
        let reg = CodeRegistry(sinks: [.unwind])
        let mem = try ExecMemAllocator(smallConfiguration())
        var allocations: [Allocation] = []
        for _ in 0..<600 {
            let a = try mem.allocate(.bpf, size: 64)
            try mem.write(CodeRegistryTests.frameCode, to: a)
            allocations.append(a)
        }
        _ = mem.makeVisible()
        func cfi() -> CodeFrame {
            var f = CodeRegistryTests.frameCFI()
            f.instructions += [UInt8](repeating: 0, count: 40)  // fatter FDEs: more grow and dead bytes
            return f
        }
        var handles: [Int: CodeHandle] = [:]
        func reg1(_ i: Int) {
            handles[i] = reg.register(CodeRegistration(name: "uw\(i)", kind: .jitStub, address: allocations[i].address, size: 8, unwind: .frames([cfi()])))
        }
        for i in 0..<300 { reg1(i) }
        for i in stride(from: 0, to: 300, by: 2) { reg.unregister(handles.removeValue(forKey: i)!) }
        for i in 300..<600 { reg1(i) }
        for i in stride(from: 301, to: 600, by: 3) { reg.unregister(handles.removeValue(forKey: i)!) }
        reg.batch { for i in stride(from: 0, to: 300, by: 4) { reg1(i) } }
        var problems: [String] = []
        func walk(_ i: Int) -> Bool {
            typealias Fn = @convention(c) (@convention(c) () -> Void) -> Void
            unsafeBitCast(UnsafeRawPointer(bitPattern: allocations[i].address)!, to: Fn.self)(redRecordBacktrace)
            let ra = allocations[i].address + 6
            guard let k = redSeenPCs.firstIndex(of: ra) else { return false }
            return redSeenPCs.count - k > 3
        }
        for i in 0..<600 {
            let walked = walk(i)
            if handles[i] != nil && !walked { problems.append("live \(i) not walked") }
            if handles[i] == nil && walked { problems.append("removed \(i) walked") }
        }
        #expect(problems.isEmpty, "\(problems.count): \(problems.prefix(10))")
        for h in handles.values { reg.unregister(h) }
        #expect(reg.status.frameSections == 0)
        for a in allocations { try mem.free(a) }
    }

    /// (3a) A burst of registrations on the shared registry reaches the map within 50 ms with no flushPerf.
    @Test func perfMapGetsABurstWithoutFlush() throws {
        CodeRegistry.shared.enable(.perfMap)
        let mem = try ExecMemAllocator(smallConfiguration())
        let a = try mem.allocate(.bpf, size: 4096)
        let tag = UInt32.random(in: 0...UInt32.max)
        var hs: [CodeHandle] = []
        for i in 0..<300 {
            hs.append(CodeRegistry.shared.register(CodeRegistration(name: "b\(tag)_\(i)", kind: .other, address: a.address + UInt(i), size: 1)))
        }
        usleep(50_000)
        let map = (try? String(contentsOfFile: "/tmp/perf-\(getpid()).map", encoding: .utf8)) ?? ""
        let missing = (0..<300).filter { !map.contains(" b\(tag)_\($0)\n") }
        #expect(missing.isEmpty, "missing \(missing.count): \(missing.prefix(5))")
        for h in hs { CodeRegistry.shared.unregister(h) }
        try mem.free(a)
    }

    /// (3b) The same on a registry other than `shared` (the deferred write flushes `shared`).
    @Test func perfMapOfANonSharedRegistryGetsItsTail() throws {
        let reg = CodeRegistry(sinks: [.perfMap])
        let tag = UInt32.random(in: 0...UInt32.max)
        var hs: [CodeHandle] = []
        for i in 0..<50 {
            hs.append(reg.register(CodeRegistration(name: "ns\(tag)_\(i)", kind: .other, address: 0x3100_0000_0000 + UInt(i), size: 1)))
        }
        usleep(50_000)
        let map = (try? String(contentsOfFile: "/tmp/perf-\(getpid()).map", encoding: .utf8)) ?? ""
        let missing = (0..<50).filter { !map.contains(" ns\(tag)_\($0)\n") }
        #expect(missing.isEmpty, "missing \(missing.count) of 50 after 50 ms: \(missing.prefix(5))")
        // And a single later registration, more than 2 ms after: still pending?
        usleep(10_000)
        hs.append(reg.register(CodeRegistration(name: "ns\(tag)_late", kind: .other, address: 0x3100_0000_1000, size: 1)))
        usleep(50_000)
        let map2 = (try? String(contentsOfFile: "/tmp/perf-\(getpid()).map", encoding: .utf8)) ?? ""
        #expect(map2.contains(" ns\(tag)_late\n"), "late line not written")
        for h in hs { reg.unregister(h) }
    }

    /// (3c) At exit: a child registers a burst (and some inside an open batch) and returns; the
    /// parent reads the child's map.
    @Test func perfMapIsCompleteAtExit() async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
            CodeRegistry.shared.enable(.perfMap)
            FileHandle.standardError.write(Data("PID=\(getpid())\n".utf8))
            for i in 0..<200 {
                CodeRegistry.shared.register(CodeRegistration(name: "ex_\(i)", kind: .other, address: 0x3200_0000_0000 + UInt(i), size: 1))
            }
            CodeRegistry.shared.batch {
                for i in 200..<220 {
                    CodeRegistry.shared.register(CodeRegistration(name: "ex_\(i)", kind: .other, address: 0x3200_0000_0000 + UInt(i), size: 1))
                }
            }
        }
        let text = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        let pid = try #require(text.split(separator: "\n").first { $0.hasPrefix("PID=") }.map { String($0.dropFirst(4)) })
        let path = "/tmp/perf-\(pid).map"
        let map = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let missing = (0..<220).filter { !map.contains(" ex_\($0)\n") }
        #expect(missing.isEmpty, "child's map missing \(missing.count): \(missing.prefix(5)) (\(map.count) bytes)")
        try? FileManager.default.removeItem(atPath: path)
    }

    /// (3d) At exit with the child calling exit(0) while another thread is registering.
    @Test func perfMapAtExitWhileAnotherThreadRegisters() async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
            CodeRegistry.shared.enable([.perfMap, .gdb, .unwind])
            FileHandle.standardError.write(Data("PID=\(getpid())\n".utf8))
            let t = Thread {
                var i = 0
                while true {
                    let h = CodeRegistry.shared.register(CodeRegistration(name: "bg_\(i)", kind: .other, address: 0x3300_0000_0000 + UInt(i % 4096), size: 1))
                    CodeRegistry.shared.unregister(h)
                    i += 1
                }
            }
            t.start()
            for i in 0..<100 {
                CodeRegistry.shared.register(CodeRegistration(name: "fg_\(i)", kind: .other, address: 0x3300_1000_0000 + UInt(i), size: 1))
            }
            usleep(20_000)
            exit(0)
        }
        let text = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        let pid = try #require(text.split(separator: "\n").first { $0.hasPrefix("PID=") }.map { String($0.dropFirst(4)) })
        let path = "/tmp/perf-\(pid).map"
        let map = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let missing = (0..<100).filter { !map.contains(" fg_\($0)\n") }
        #expect(missing.isEmpty, "missing \(missing.count)")
        // Every line is whole.
        let bad = map.split(separator: "\n", omittingEmptySubsequences: false).dropLast().filter { $0.split(separator: " ").count < 3 }
        #expect(bad.isEmpty, "torn lines: \(bad.prefix(3))")
        try? FileManager.default.removeItem(atPath: path)
    }

    /// (4) Threads registering, unregistering, batching and symbolizing with every sink on.
    @Test func concurrencyWithAllSinks() throws {
        CodeRegistry.shared.enable(.all)
        let before = CodeRegistry.shared.status
        let mem = try ExecMemAllocator(smallConfiguration())
        let threads = 6
        var pools: [[Allocation]] = []
        for _ in 0..<threads {
            var p: [Allocation] = []
            for _ in 0..<64 {
                let a = try mem.allocate(.bpf, size: 64)
                try mem.write(CodeRegistryTests.frameCode, to: a)
                p.append(a)
            }
            pools.append(p)
        }
        _ = mem.makeVisible()
        let deadline = Date().addingTimeInterval(3)
        let pools2 = pools
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = RNG(s: UInt64(t) + 100)
            var handles: [Int: CodeHandle] = [:]
            let pool = pools2[t]
            func reg1(_ i: Int) {
                let a = pool[i]
                handles[i] = CodeRegistry.shared.register(CodeRegistration(
                    name: "cc\(t)_\(i)", kind: .jitStub, address: a.address, size: 8, owner: "red",
                    symbols: [CodeSymbol(name: "cc\(t)_\(i)_\(String(repeating: "y", count: Int(rng.next() % 80)))", address: a.address, size: 8)],
                    unwind: .frames([CodeRegistryTests.frameCFI()])))
            }
            while Date() < deadline {
                let i = Int(rng.next() % 64)
                switch rng.next() % 4 {
                case 0, 1:
                    if let h = handles.removeValue(forKey: i) { CodeRegistry.shared.unregister(h) } else { reg1(i) }
                case 2:
                    CodeRegistry.shared.batch {
                        for _ in 0..<8 {
                            let j = Int(rng.next() % 64)
                            if let h = handles.removeValue(forKey: j) { CodeRegistry.shared.unregister(h) } else { reg1(j) }
                        }
                    }
                default:
                    let loc = CodeRegistry.shared.symbolize(pool[i].address + 3)
                    let want = handles[i] != nil
                    if want != (loc != nil) || (want && loc!.symbol.hasPrefix("cc\(t)_\(i)_") == false) {
                        failures.withLock { $0.append("t\(t) i\(i): \(String(describing: loc)) want \(want)") }
                    }
                }
            }
            for h in handles.values { CodeRegistry.shared.unregister(h) }
        }
        CodeRegistry.shared.flushPerf()
        let f = failures.withLock { $0 }
        #expect(f.isEmpty, "\(f.count): \(f.prefix(5))")
        // Other suites register in this process meanwhile: check this test's own code, not totals.
        _ = before
        let named = pools.flatMap { $0 }.filter { CodeRegistry.shared.symbolize($0.address + 3) != nil }
        #expect(named.isEmpty, "\(named.count) addresses still named after every thread unregistered")
        let blocks = Set(pools.flatMap { $0.map { $0.address >> 21 } })
        let (syms, fdes, p) = try readGDB(blocks: blocks)
        let leftover = syms.keys.filter { (k: String) -> Bool in k.hasPrefix("cc") }
        #expect(leftover.isEmpty && fdes.isEmpty && p.isEmpty, "\(leftover.count) \(fdes.count) \(p)")
        for p in pools { for a in p { try mem.free(a) } }
    }
    /// (3e) perf switched on by EXECMEM_PERF (not enable()): no atexit handler is installed, so a burst's
    /// tail pending at exit is lost. Run with EXECMEM_PERF=map in the environment (the child inherits it).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["EXECMEM_PERF"] != nil,
                   "needs EXECMEM_PERF in the environment (.ci/run runs it with EXECMEM_PERF=map)"))
    func perfMapFromEnvironmentIsCompleteAtExit() async throws {
        let result = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
            FileHandle.standardError.write(Data("PID=\(getpid()) sinks=\(CodeRegistry.shared.sinks.rawValue)\n".utf8))
            for i in 0..<200 {
                CodeRegistry.shared.register(CodeRegistration(name: "env_\(i)", kind: .other, address: 0x3400_0000_0000 + UInt(i), size: 1))
            }
            exit(0)
        }
        let text = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        let pid = try #require(text.split(separator: "\n").first { $0.hasPrefix("PID=") }.map { String($0.dropFirst(4).prefix { $0 != " " }) })
        let path = "/tmp/perf-\(pid).map"
        let map = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let missing = (0..<200).filter { !map.contains(" env_\($0)\n") }
        #expect(missing.isEmpty, "missing \(missing.count) of 200: \(missing.prefix(5)) ... (\(text))")
        try? FileManager.default.removeItem(atPath: path)
    }
}
