// What one run of a program can touch, and how it went. The interpreter reads it as a Swift object;
// JIT code reads the same facts from `block`, a C-layout array of 64-bit fields at fixed offsets
// (the `Field` cases), through a callee-saved register.
//
//   accessible memory   the program's stack (8 frames of 512 bytes, in its own buffer, never the
//                       native stack, so no return address is ever in reach), the context memory
//                       (r1, r2), and the regions of the program's maps (value slabs, data sections)
//
// Helpers find the run they serve through a thread-local pointer, to check a map handle and the
// pointers a program passes them.

import Glibc

public struct MemoryRegion: Sendable, Equatable {
    public var start: UInt
    public var end: UInt
    public var writable: Bool

    func contains(_ address: UInt, _ size: Int, write: Bool) -> Bool {
        address >= start && address <= end &- UInt(size) && end >= UInt(size) && (writable || !write)
    }
}

/// Why a run stopped early.
public enum RunFault: UInt64, Sendable {
    case none = 0
    case outOfBounds = 1
    case unknownHelper = 2
    case callDepth = 3
    case misalignedAtomic = 4
    case helperFault = 5
}

final class RunContext {
    enum Field: Int {
        case entryRsp = 0, fault, faultIndex, faultAddress, faultSize
        case stackLo, stackHi, stackHiMinus1, stackHiMinus2, stackHiMinus4, stackHiMinus8
        case memLo, memHiMinus1, memHiMinus2, memHiMinus4, memHiMinus8
        case unwound, selfPointer, callFloor
        static let count = 24
        var offset: Int32 { Int32(rawValue * 8) }
    }

    let block: UnsafeMutablePointer<UInt64>
    let stack: UnsafeMutableRawPointer
    static let stackBytes = BPF.stackSize * BPF.maxCallDepth
    var memory = MemoryRegion(start: 0, end: 0, writable: true)
    var program: BPFProgram?
    var helperMessage: String?

    init() {
        block = UnsafeMutablePointer<UInt64>.allocate(capacity: Field.count)
        block.initialize(repeating: 0, count: Field.count)
        stack = UnsafeMutableRawPointer.allocate(byteCount: Self.stackBytes, alignment: 16)
        let lo = UInt(bitPattern: stack), hi = lo + UInt(Self.stackBytes)
        set(.stackLo, UInt64(lo)); set(.stackHi, UInt64(hi))
        for (f, n) in [(Field.stackHiMinus1, 1), (.stackHiMinus2, 2), (.stackHiMinus4, 4), (.stackHiMinus8, 8)] { set(f, UInt64(hi) - UInt64(n)) }
        // A local call may go one frame deeper only while r10 stays above this.
        set(.callFloor, UInt64(lo) + UInt64(BPF.stackSize))
        set(.selfPointer, UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())))
    }

    deinit {
        block.deallocate()
        stack.deallocate()
    }

    @inline(__always) func get(_ f: Field) -> UInt64 { block[f.rawValue] }
    @inline(__always) func set(_ f: Field, _ v: UInt64) { block[f.rawValue] = v }

    /// Prepares for a run of `program` over `memory`.
    func begin(_ program: BPFProgram, memory: UnsafeMutableRawBufferPointer?) {
        self.program = program
        helperMessage = nil
        let lo = UInt(bitPattern: memory?.baseAddress), hi = lo + UInt(memory?.count ?? 0)
        self.memory = MemoryRegion(start: lo, end: hi, writable: true)
        set(.memLo, UInt64(lo))
        for (f, n) in [(Field.memHiMinus1, 1), (.memHiMinus2, 2), (.memHiMinus4, 4), (.memHiMinus8, 8)] {
            // With less than n bytes no access of n bytes fits: make the range empty.
            set(f, hi - lo >= UInt(n) ? UInt64(hi) - UInt64(n) : 0)
        }
        if lo == 0 { set(.memLo, UInt64.max) }
        set(.fault, 0); set(.faultIndex, 0); set(.unwound, 0)
    }

    func end() { program = nil }

    var stackTop: UInt64 { self.get(.stackHi) }

    /// Whether `[address, address + size)` is memory this run may read (or write).
    func accessible(_ address: UInt64, _ size: Int, write: Bool) -> Bool {
        let a = UInt(address)
        if a >= UInt(get(.stackLo)) && a <= UInt(get(.stackHi)) &- UInt(size) && a + UInt(size) <= UInt(get(.stackHi)) { return true }
        if memory.contains(a, size, write: write) { return true }
        return program?.regions.contains { $0.contains(a, size, write: write) } ?? false
    }

    func fault(_ f: RunFault, index: Int, address: UInt64 = 0, size: Int = 0) {
        set(.fault, f.rawValue); set(.faultIndex, UInt64(index)); set(.faultAddress, address); set(.faultSize, UInt64(size))
    }

    /// The error a faulted run reports.
    func error() -> BPFError? {
        guard let f = RunFault(rawValue: get(.fault)), f != .none else { return nil }
        let index = Int(get(.faultIndex))
        switch f {
        case .outOfBounds:
            return .runtime(index: index, reason: "out-of-bounds access of \(get(.faultSize)) bytes at 0x\(String(get(.faultAddress), radix: 16))")
        case .unknownHelper: return .runtime(index: index, reason: "call to unknown helper \(Int64(bitPattern: get(.faultAddress)))")
        case .callDepth: return .runtime(index: index, reason: "local calls nested deeper than \(BPF.maxCallDepth) frames")
        case .misalignedAtomic: return .runtime(index: index, reason: "misaligned atomic access at 0x\(String(get(.faultAddress), radix: 16))")
        case .helperFault: return .runtime(index: index, reason: helperMessage ?? "helper failed")
        case .none: return nil
        }
    }

    // MARK: - Per-thread contexts

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { p in if let p { Unmanaged<RunContext>.fromOpaque(p).release() } }
        return k
    }()

    /// This thread's context, created once (a run of a program from within a helper gets a nested one).
    static func acquire() -> RunContext {
        if let p = pthread_getspecific(key) {
            let c = Unmanaged<RunContext>.fromOpaque(p).takeUnretainedValue()
            if c.program == nil { return c }
            return RunContext()  // nested run
        }
        let c = RunContext()
        pthread_setspecific(key, Unmanaged.passRetained(c).toOpaque())
        return c
    }

    /// The context of the run in progress on this thread, for helpers.
    private static let currentKey: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    static var current: RunContext? {
        pthread_getspecific(currentKey).map { Unmanaged<RunContext>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Runs `body` with this context as the thread's current one.
    func asCurrent<R>(_ body: () throws -> R) rethrows -> R {
        let previous = pthread_getspecific(Self.currentKey)
        pthread_setspecific(Self.currentKey, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(Self.currentKey, previous) }
        return try body()
    }
}
