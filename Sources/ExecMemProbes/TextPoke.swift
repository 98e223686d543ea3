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
        case let .unknownHook(id): return "unknown hook \(id)"
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
    /// Patches are applied one at a time.
    private let patching = Mutex<Void>(())

    public init(allocators: [ExecMemAllocator]) {
        self.allocators = Mutex(allocators)
        _ = cem_probe_install_trap_handler()
    }

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

    /// Copies `bytes` to `address` with no ordering guarantee for other threads.
    public func write(_ bytes: [UInt8], at address: UInt) throws(ProbeError) {
        if let (allocator, allocation) = owner(of: address) {
            do { try allocator.write(bytes, to: allocation, at: Int(address - allocation.address)) } catch { throw .allocator(error) }
            return
        }
        let fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .poke(address: address, reason: "cannot open /proc/self/mem (errno \(errno))") }
        defer { close(fd) }
        let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(Int64(bitPattern: UInt64(address)))) }
        guard n == bytes.count else { throw .poke(address: address, reason: "/proc/self/mem wrote \(n) of \(bytes.count) bytes (errno \(errno))") }
    }

    /// Reads `count` bytes of code.
    public func read(_ count: Int, at address: UInt) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count))
    }

    public enum Emulation: Sendable, Equatable {
        case skip(length: Int)
        case call(to: UInt)
        case jump(to: UInt)
    }

    /// Replaces the instruction(s) at `address` with `bytes`, safely while other threads run there.
    /// A thread that hits the site during the patch is sent where `emulate` says.
    public func patch(_ address: UInt, with bytes: [UInt8], emulate: Emulation) throws(ProbeError) {
        precondition(!bytes.isEmpty)
        let r: Result<Void, ProbeError> = patching.withLock { _ in
            let (kind, target, length): (Int32, UInt, Int32) = switch emulate {
            case let .skip(n): (Int32(CEM_EMULATE_SKIP.rawValue), 0, Int32(n))
            case let .call(t): (Int32(CEM_EMULATE_CALL.rawValue), t, 5)
            case let .jump(t): (Int32(CEM_EMULATE_JUMP.rawValue), t, 5)
            }
            guard cem_poke_begin(UInt64(address), kind, UInt64(target), length) == 0 else {
                return .failure(.poke(address: address, reason: "too many patches in progress"))
            }
            defer { cem_poke_end(UInt64(address)) }
            do throws(ProbeError) {
                try write([0xCC], at: address)
                Membarrier.synchronize()
                if bytes.count > 1 {
                    try write(Array(bytes.dropFirst()), at: address + 1)
                    Membarrier.synchronize()
                }
                try write([bytes[0]], at: address)
                Membarrier.synchronize()
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try r.get()
    }

    /// Traps the int3 handler has emulated so far (threads that met a patch in progress).
    public static var emulatedTraps: UInt64 { cem_poke_traps() }
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
