// Text poking for user space: changing code that other threads may be running. Code in allocator
// memory is written through its write view; code of the executable and shared libraries through
// /proc/self/mem, which writes read-only pages without changing their protections (the kernel's
// FOLL_FORCE path), so no mapping is ever made writable.
//
// A patch follows Linux's text_poke_bp: int3 on the first byte, serialize every core (membarrier
// sync-core); the rest of the new bytes, serialize; the first new byte, serialize. A thread that
// reaches the site in between traps into a handler that emulates the new (or old) instruction, so
// no thread ever runs a half-written one. Patches are serialized among themselves (text_mutex).

import CExecMemProbeRuntime
import ExecMem
import Glibc
import Synchronization

public enum ProbeError: Error, CustomStringConvertible, Sendable, Equatable {
    case notPatchable(address: UInt, reason: String)
    case notAnInstruction(address: UInt, reason: String)
    case alreadyEnabled(address: UInt)
    case notEnabled(address: UInt)
    case unknownHook(id: Int)
    case siteInUse(address: UInt, by: String)
    case refused(address: UInt, instruction: UInt, reason: String)
    case outOfReach(address: UInt, target: UInt)
    case poke(address: UInt, reason: String)
    case allocator(ExecMemError)

    public var description: String {
        func h(_ v: UInt) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case let .notPatchable(a, r): return "\(h(a)): no patchable entry: \(r)"
        case let .notAnInstruction(a, r): return "\(h(a)): not an instruction boundary: \(r)"
        case let .alreadyEnabled(a): return "\(h(a)): already enabled"
        case let .notEnabled(a): return "\(h(a)): not enabled"
        case let .unknownHook(id): return "unknown hook, live patch or probe \(id)"
        case let .siteInUse(a, by): return "\(h(a)): its entry is already taken by \(by)"
        case let .refused(a, i, r): return "probe at \(h(a)) refused: the instruction at \(h(i)) \(r)"
        case let .outOfReach(a, t): return "\(h(a)): \(h(t)) is out of rel32 reach and no memory near it is available"
        case let .poke(a, r): return "cannot patch \(h(a)): \(r)"
        case let .allocator(e): return "allocator: \(e)"
        }
    }
}

/// Writes code, and patches it safely while it may be running.
public final class TextPoker: @unchecked Sendable {
    /// Allocators whose memory may be patched (written through their write views).
    private let allocators: Mutex<[ExecMemAllocator]>
    /// Patches are applied one batch at a time (Linux's text_mutex); holds /proc/self/mem once opened.
    private let patching = Mutex<Int32>(-1)

    public init(allocators: [ExecMemAllocator] = []) {
        self.allocators = Mutex(allocators)
        _ = cem_probe_install_trap_handler()
    }

    deinit { patching.withLock { fd in if fd >= 0 { close(fd) } } }

    public func add(_ allocator: ExecMemAllocator) {
        allocators.withLock { list in if !list.contains(where: { $0 === allocator }) { list.append(allocator) } }
    }

    /// The allocator and allocation holding `address`, if it is ExecMem memory.
    func owner(of address: UInt) -> (ExecMemAllocator, Allocation)? {
        for a in allocators.withLock({ $0 }) {
            if let allocation = a.allocation(containing: address) { return (a, allocation) }
        }
        return nil
    }

    /// Copies `bytes` to `address` with no ordering guarantee for other threads: through the write
    /// view for ExecMem memory, through /proc/self/mem for anything else.
    public func write(_ bytes: [UInt8], at address: UInt) throws(ProbeError) {
        if let (allocator, allocation) = owner(of: address) {
            do { try allocator.write(bytes, to: allocation, at: Int(address - allocation.address)) } catch { throw .allocator(error) }
            return
        }
        let r: Result<Void, ProbeError> = patching.withLock { fd in
            if fd < 0 { fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC) }
            guard fd >= 0 else { return .failure(.poke(address: address, reason: "cannot open /proc/self/mem: \(String(cString: strerror(errno)))")) }
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(Int64(bitPattern: UInt64(address)))) }
            guard n == bytes.count else {
                return .failure(.poke(address: address, reason: "/proc/self/mem wrote \(n) of \(bytes.count) bytes: \(String(cString: strerror(errno)))"))
            }
            return .success(())
        }
        try r.get()
    }

    /// Reads `count` bytes of code.
    public func read(_ count: Int, at address: UInt) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count))
    }

    /// What a thread that reaches a site while it is being patched does instead.
    public enum Emulation: Sendable, Equatable {
        case skip(length: Int)
        case call(to: UInt)
        case jump(to: UInt)
    }

    /// One site to patch: the new bytes (one instruction, then optional padding) and the emulation.
    public struct Poke: Sendable {
        public var address: UInt
        public var bytes: [UInt8]
        public var emulate: Emulation
        public init(_ address: UInt, _ bytes: [UInt8], emulate: Emulation) { self.address = address; self.bytes = bytes; self.emulate = emulate }
    }

    /// Replaces the instruction(s) at `address` with `bytes`, safely while other threads run there.
    public func patch(_ address: UInt, with bytes: [UInt8], emulate: Emulation) throws(ProbeError) {
        try patch([Poke(address, bytes, emulate: emulate)])
    }

    /// Patches every site in one batch: int3 on each, serialize; the tails, serialize; the first
    /// bytes, serialize. `sweep` moves threads that stand between displaced instructions (see
    /// cem_sweep_threads) once no new thread can enter the sites and before their tails change.
    /// With `everyThread`, a thread the sweep cannot interrupt (it blocks the signal) fails the patch.
    public func patch(_ pokes: [Poke], sweep: [(from: UInt, to: UInt)] = [], everyThread: Bool = false) throws(ProbeError) {
        let sorted = pokes.sorted { $0.address < $1.address }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.address + UInt(a.bytes.count) > b.address {
            throw .poke(address: b.address, reason: "overlaps the patch at 0x\(String(a.address, radix: 16))")
        }
        if sorted.isEmpty { return }
        let table: [cem_poke] = sorted.map { p in
            switch p.emulate {
            case let .skip(n): cem_poke(address: UInt64(p.address), target: 0, kind: Int32(CEM_EMULATE_SKIP.rawValue), length: Int32(n))
            case let .call(t): cem_poke(address: UInt64(p.address), target: UInt64(t), kind: Int32(CEM_EMULATE_CALL.rawValue), length: 5)
            case let .jump(t): cem_poke(address: UInt64(p.address), target: UInt64(t), kind: Int32(CEM_EMULATE_JUMP.rawValue), length: 5)
            }
        }
        try TextPoker.serialized.withLock { _ throws(ProbeError) in
            // What to put back if a write fails, read under the lock so no other batch changes it.
            let originals = sorted.map { read($0.bytes.count, at: $0.address) }
            try table.withUnsafeBufferPointer { (t) throws(ProbeError) in
                cem_poke_publish(t.baseAddress, t.count)
                defer { cem_poke_publish(nil, 0) }
                var trapped = 0
                do throws(ProbeError) {
                    for p in sorted { try write([0xCC], at: p.address); trapped += 1 }
                    Membarrier.synchronize()
                    if !sweep.isEmpty { try sweepThreads(sweep, at: sorted[0].address, everyThread: everyThread) }
                    for p in sorted where p.bytes.count > 1 { try write(Array(p.bytes.dropFirst()), at: p.address + 1) }
                    Membarrier.synchronize()
                    for p in sorted { try write([p.bytes[0]], at: p.address) }
                    Membarrier.synchronize()
                } catch {
                    // Put back what was there, int3 still first, so every site is whole again.
                    for (p, o) in zip(sorted, originals).prefix(trapped) where o.count > 1 { try? write(Array(o.dropFirst()), at: p.address + 1) }
                    Membarrier.synchronize()
                    for (p, o) in zip(sorted, originals).prefix(trapped) { try? write([o[0]], at: p.address) }
                    Membarrier.synchronize()
                    throw error
                }
            }
        }
    }

    /// One batch at a time in the whole process (the int3 handler knows one batch), separately from
    /// the /proc/self/mem descriptor's lock.
    private static let serialized = Mutex<Void>(())

    private func sweepThreads(_ moves: [(from: UInt, to: UInt)], at address: UInt, everyThread: Bool) throws(ProbeError) {
        let table = moves.map { cem_move(from: UInt64($0.from), to: UInt64($0.to)) }
        var r = cem_sweep_result()
        // A thread that has not run for 10 s (a loaded machine, a stopped process) fails the patch,
        // which is then rolled back, rather than being assumed out of the way.
        let status = table.withUnsafeBufferPointer { cem_sweep_threads($0.baseAddress, $0.count, 10_000, &r) }
        guard status == 0 else {
            throw .poke(address: address, reason: "interrupting the other threads failed (\(r.answered) of \(r.signalled) answered): \(String(cString: strerror(errno)))")
        }
        if everyThread && r.unreachable > 0 {
            throw .poke(address: address, reason: "\(r.unreachable) threads block the sweep signal and cannot be checked")
        }
        TextPoker.sweeps.withLock { s in
            s.sweeps += 1
            s.moved += Int(r.moved)
            s.unreachable += Int(r.unreachable)
        }
    }

    /// What the sweeps have done so far: threads moved into out-of-line copies, and threads that
    /// could not be interrupted (they block the signal; libdispatch workers do).
    public struct SweepStatistics: Sendable { public var sweeps = 0, moved = 0, unreachable = 0 }
    public static let sweeps = Mutex(SweepStatistics())

    /// Traps the int3 handler has emulated so far (threads that met a patch in progress), and those
    /// that arrived after their patch was done.
    public static var emulatedTraps: UInt64 { cem_poke_traps() }
    public static var lateTraps: UInt64 { cem_poke_late_traps() }
}

extension Array where Element == UInt8 {
    mutating func append32(_ v: Int32) { Swift.withUnsafeBytes(of: v.littleEndian) { self += $0 } }
    mutating func append64(_ v: UInt64) { Swift.withUnsafeBytes(of: v.littleEndian) { self += $0 } }
}

/// `call`/`jmp rel32` bytes from `from` (the instruction's address) to `to`, or nil when out of reach.
func rel32Instruction(_ opcode: UInt8, from: UInt, to: UInt) -> [UInt8]? {
    guard let d = Rel32.displacement(from: from + 5, to: to) else { return nil }
    var out: [UInt8] = [opcode]
    out.append32(d)
    return out
}
