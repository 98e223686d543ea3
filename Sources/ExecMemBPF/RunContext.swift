// What one run of a program can touch, and how it went. The interpreter reads it as a Swift object;
// JIT code reads the same facts from `block`, a C-layout array of 64-bit fields at fixed offsets
// (the `Field` cases), through a callee-saved register.
//
//   regions   the stack (8 frames of 512 bytes in a buffer of its own, never the native stack, so
//             no return address is ever in reach), the context memory (r1, r2), and the value slabs
//             of the program's maps
//   budget    units left; entering main, each local call and each back edge charge what the
//             verifier decided (BPFDecoded.charge), and a run that cannot pay stops
//
// The one access rule, `allows`, is what the interpreter checks, what the JIT's inline checks
// encode, and what helpers use: an access may touch only the region its pointer was derived from.
// Helpers find the run they serve through a thread-local pointer.

import Glibc

/// Why a run stopped early.
enum RunFault: UInt64, Sendable {
    case none = 0
    case outOfBounds = 1
    case unknownHelper = 2
    case callDepth = 3
    case misalignedAtomic = 4
    case helperFault = 5
    case budget = 6
    case unreachable = 7
    case proofViolated = 8
}

final class RunContext {
    enum Field: Int {
        case entryRsp = 0, fault, faultIndex, faultAddress, faultFrame
        case stackHi, stackLimit1, stackLimit2, stackLimit4, stackLimit8
        case memLo, memLen, memLimit1, memLimit2, memLimit4, memLimit8
        case unwound, selfPointer, callFloor, budget, spill
        static let count = 24
        var offset: Int32 { Int32(rawValue * 8) }

        /// `stackHi - size`: the highest address an access of `size` bytes may start at.
        @inline(__always) static func stackLimit(_ size: Int) -> Field {
            switch size { case 1: .stackLimit1; case 2: .stackLimit2; case 4: .stackLimit4; default: .stackLimit8 }
        }
        /// `len - size + 1` (0 when `size` bytes do not fit): context offsets below it are allowed.
        @inline(__always) static func memLimit(_ size: Int) -> Field {
            switch size { case 1: .memLimit1; case 2: .memLimit2; case 4: .memLimit4; default: .memLimit8 }
        }
    }

    let block: UnsafeMutablePointer<UInt64>
    let stack: UnsafeMutableRawPointer
    static let stackBytes = BPF.stackSize * BPF.maxCallDepth

    /// What changes per run, behind a pointer: a stored `var` of a class costs a dynamic
    /// exclusivity check on every access, which the run's hot paths cannot afford.
    struct State {
        /// The program being run; the caller of the run holds it, so no reference is counted here.
        unowned(unsafe) var program: BPFProgram?
        var budget: UInt64 = 0
        var helperMessage: String?
        /// Runs nested inside this thread's own run, now.
        var nested = 0
    }
    let state: UnsafeMutablePointer<State>
    var program: BPFProgram? {
        @inline(__always) get { state.pointee.program }
        set { state.pointee.program = newValue }
    }
    var budget: UInt64 {
        get { state.pointee.budget }
        set { state.pointee.budget = newValue }
    }
    var helperMessage: String? {
        get { state.pointee.helperMessage }
        set { state.pointee.helperMessage = newValue }
    }

    init() {
        state = UnsafeMutablePointer<State>.allocate(capacity: 1)
        state.initialize(to: State())
        block = UnsafeMutablePointer<UInt64>.allocate(capacity: Field.count)
        block.initialize(repeating: 0, count: Field.count)
        stack = UnsafeMutableRawPointer.allocate(byteCount: Self.stackBytes, alignment: 64)
        let hi = UInt64(UInt(bitPattern: stack)) + UInt64(Self.stackBytes)
        set(.stackHi, hi)
        set(.stackLimit1, hi - 1); set(.stackLimit2, hi - 2); set(.stackLimit4, hi - 4); set(.stackLimit8, hi - 8)
        // A local call may go one frame deeper only while r10 stays above this.
        set(.callFloor, UInt64(UInt(bitPattern: stack)) + UInt64(BPF.stackSize))
        set(.selfPointer, UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())))
    }

    deinit {
        state.deinitialize(count: 1)
        state.deallocate()
        block.deallocate()
        stack.deallocate()
    }

    @inline(__always) func get(_ f: Field) -> UInt64 { block[f.rawValue] }
    @inline(__always) func set(_ f: Field, _ v: UInt64) { block[f.rawValue] = v }

    var stackTop: UInt64 { self.get(.stackHi) }

    /// Prepares a run of `program` over `memory` with `budget` units; false (with the fault set)
    /// when the budget does not cover main's entry.
    @inline(__always)
    func begin(_ program: BPFProgram, memory: UnsafeMutableRawBufferPointer?, budget: UInt64) -> Bool {
        state.pointee.program = program
        if state.pointee.helperMessage != nil { state.pointee.helperMessage = nil }
        state.pointee.budget = budget
        let lo = UInt64(UInt(bitPattern: memory?.baseAddress)), len = UInt64(memory?.count ?? 0)
        set(.memLo, lo); set(.memLen, len)
        set(.memLimit1, len)  // len - 1 + 1
        set(.memLimit2, len >= 2 ? len - 1 : 0)
        set(.memLimit4, len >= 4 ? len - 3 : 0)
        set(.memLimit8, len >= 8 ? len - 7 : 0)
        set(.fault, 0); set(.unwound, 0)
        let zero = program.verified.stackZeroBytes
        if zero > 0 { (stack + Self.stackBytes - zero).initializeMemory(as: UInt8.self, repeating: 0, count: zero) }
        let entry = UInt64(program.verified.entryCharge)
        guard budget >= entry else { fault(.budget, index: 0); return false }
        set(.budget, budget - entry)
        return true
    }

    func end() { program = nil }

    // MARK: - The access rule

    /// Whether `[address, address + size)` lies in `region`; `frame` is the current r10.
    @inline(__always)
    func allows(_ region: BPFRegion, _ address: UInt64, _ size: Int, frame: UInt64) -> Bool {
        switch region {
        case .stack: return address >= frame &- UInt64(BPF.stackSize) && address <= get(.stackLimit(size))
        case .context: return address &- get(.memLo) < get(.memLimit(size))
        case let .map(m):
            let r = program!.regions[m]
            return address &- UInt64(r.start) <= UInt64(r.end - r.start) &- UInt64(size)
        }
    }

    /// Whether `[address, address + size)` lies in some region of this run (for helpers, whose
    /// pointer arguments the verifier proved in bounds; this is their second line of defence).
    func accessible(_ address: UInt64, _ size: Int) -> Bool {
        if address >= UInt64(UInt(bitPattern: stack)) && address <= get(.stackLimit(size)) { return true }
        if allows(.context, address, size, frame: 0) { return true }
        return program?.regions.indices.contains { allows(.map($0), address, size, frame: 0) } ?? false
    }

    func fault(_ f: RunFault, index: Int, address: UInt64 = 0, frame: UInt64 = 0) {
        set(.fault, f.rawValue); set(.faultIndex, UInt64(index)); set(.faultAddress, address); set(.faultFrame, frame)
    }

    // MARK: - Errors

    /// The error a faulted run reports (the same words on both engines).
    func error() -> BPFError? {
        guard let f = RunFault(rawValue: get(.fault)), f != .none else { return nil }
        let index = Int(get(.faultIndex))
        switch f {
        case .outOfBounds, .proofViolated:
            let what = program.map { outOfBounds(index, $0) } ?? "out-of-bounds access"
            return .runtime(index: index, reason: f == .outOfBounds ? what : "verifier bug: an access it proved in bounds is not: \(what)")
        case .unknownHelper: return .runtime(index: index, reason: "call to unknown helper \(Int64(bitPattern: get(.faultAddress)))")
        case .callDepth: return .runtime(index: index, reason: "local calls nested deeper than \(BPF.maxCallDepth) frames")
        case .misalignedAtomic:
            return .runtime(index: index, reason: "misaligned atomic access (address \(get(.faultAddress) % 8) mod 8)")
        case .helperFault: return .runtime(index: index, reason: helperMessage ?? "helper failed")
        case .budget: return .runtime(index: index, reason: "instruction budget of \(budget) exhausted")
        case .unreachable: return .runtime(index: index, reason: "verifier bug: reached an instruction it proved unreachable")
        case .none: return nil
        }
    }

    /// "out-of-bounds write of 4 bytes at context offset 62 (the context is 64 bytes)"
    private func outOfBounds(_ index: Int, _ program: BPFProgram) -> String {
        let d = program.verified.code[index]
        let address = get(.faultAddress)
        let verb: String
        switch d.operation {
        case .load: verb = "read"
        case .atomic: verb = "atomic"
        default: verb = "write"
        }
        let head = "out-of-bounds \(verb) of \(d.size) bytes at "
        switch d.access.region {
        case .stack:
            let off = Int64(bitPattern: address &- get(.faultFrame))
            return head + "stack offset r10\(off < 0 ? "" : "+")\(off) (the frame is r10-\(BPF.stackSize)..r10, callers' frames above it)"
        case .context:
            return head + "context offset \(Int64(bitPattern: address &- get(.memLo))) (the context is \(get(.memLen)) bytes)"
        case let .map(m):
            let map = program.maps[m], r = map.region
            return head + "offset \(Int64(bitPattern: address &- UInt64(r.start))) of the values of map '\(map.name)' (\(r.end - r.start) bytes)"
        }
    }

    // MARK: - Per-thread contexts

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { p in if let p { Unmanaged<RunContext>.fromOpaque(p).release() } }
        return k
    }()

    /// This thread's context, created once; a run of a program from within a helper (while the
    /// thread's context is busy) gets a fresh one, which `asCurrent` makes the helpers' current one.
    @inline(__always)
    static func acquire() -> RunContext {
        if let p = pthread_getspecific(key) {
            let busy = Unmanaged<RunContext>.fromOpaque(p)._withUnsafeGuaranteedRef { $0.state.pointee.program != nil }
            if !busy { return Unmanaged<RunContext>.fromOpaque(p).takeUnretainedValue() }
            return RunContext()  // nested run
        }
        let c = RunContext()
        pthread_setspecific(key, Unmanaged.passRetained(c).toOpaque())
        return c
    }

    /// Calls `body` with this thread's context (or a fresh one for a nested run) without counting
    /// references on the fast path.
    @inline(__always)
    static func withContext<R>(_ body: (RunContext) throws(BPFError) -> R) throws(BPFError) -> R {
        if let p = pthread_getspecific(key) {
            let u = Unmanaged<RunContext>.fromOpaque(p)
            if u._withUnsafeGuaranteedRef({ $0.state.pointee.program == nil }) {
                var failure: BPFError? = nil
                let r: R? = u._withUnsafeGuaranteedRef { c in
                    do throws(BPFError) { return try body(c) } catch { failure = error; return nil }
                }
                if let failure { throw failure }
                return r!
            }
            // A run from within a run (a helper running a program): a fresh context, and a limit,
            // or a program calling such a helper could recurse until the host's stack overflows.
            let own = u.takeUnretainedValue()
            guard own.state.pointee.nested < Self.maxNestedRuns else {
                throw .runtime(index: 0, reason: "runs nested deeper than \(Self.maxNestedRuns) (a helper running programs from within a run)")
            }
            own.state.pointee.nested += 1
            defer { own.state.pointee.nested -= 1 }
            return try body(RunContext())
        }
        return try body(acquire())
    }

    /// How deep runs may nest on one thread (helpers that run programs from within a run).
    static let maxNestedRuns = 8

    /// Nested runs in progress on this thread (the innermost is the current one).
    private static let currentKey: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// The context of the run in progress on this thread, for helpers: the innermost nested run's,
    /// else the thread's own.
    static var current: RunContext? {
        if let p = pthread_getspecific(currentKey) { return Unmanaged<RunContext>.fromOpaque(p).takeUnretainedValue() }
        return pthread_getspecific(key).map { Unmanaged<RunContext>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Runs `body` with this context as the thread's current one (free for the thread's own context).
    @inline(__always)
    func asCurrent<R>(_ body: () throws -> R) rethrows -> R {
        if let own = pthread_getspecific(Self.key), own == Unmanaged.passUnretained(self).toOpaque() { return try body() }
        let previous = pthread_getspecific(Self.currentKey)
        pthread_setspecific(Self.currentKey, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(Self.currentKey, previous) }
        return try body()
    }
}

/// Memory a program may address besides the stack and context: a map's value slab.
public struct MemoryRegion: Sendable, Equatable {
    /// First byte.
    public var start: UInt
    /// One past the last byte.
    public var end: UInt
    /// Whether programs may write it.
    public var writable: Bool
}
