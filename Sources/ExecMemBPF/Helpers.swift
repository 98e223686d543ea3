// Helpers: host functions programs call by number (`call N`). The map helpers keep Linux's numbers
// (bpf_map_lookup_elem 1, bpf_map_update_elem 2, bpf_map_delete_elem 3); hosts register their own as
// C functions (called directly by JIT code, with `call rel32` when in reach) or Swift closures
// (called through one dispatcher). A helper that a program passes a bad map or pointer does not
// crash: it faults the run, which stops with a runtime error at the call.

import Synchronization

/// A helper as a C function of r1-r5, returning r0.
public typealias BPFHelperFunction = @convention(c) (UInt64, UInt64, UInt64, UInt64, UInt64) -> UInt64

/// What a helper takes and returns, as the verifier checks it at every call site (Linux's
/// `bpf_func_proto`). Arguments are r1, r2, ... in order; the registers after the last are not read.
public struct BPFHelperPrototype: Sendable, Equatable {
    /// What one argument register must hold.
    public enum Argument: Sendable, Equatable {
        /// Any initialized value. A stack pointer passed this way makes the verifier assume the helper
        /// may read and write the whole stack.
        case value
        /// A map, as `lddw map[N]` loads it.
        case map
        /// A pointer to a key of the map argument before it (its key size, proven in bounds).
        case mapKey
        /// A pointer to a value of the map argument before it (its value size, proven in bounds).
        case mapValue
    }

    /// What the helper leaves in r0.
    public enum Result: Sendable, Equatable {
        /// A number the program cannot dereference.
        case number
        /// A pointer to a value of the map argument, or 0: the program must test it before using it.
        case mapValueOrNull
    }

    /// r1, r2, ... in order.
    public var arguments: [Argument]
    /// What r0 holds after the call.
    public var result: Result

    /// A prototype of up to five arguments.
    public init(arguments: [Argument], result: Result = .number) {
        precondition(arguments.count <= 5, "helpers take at most five arguments (r1-r5)")
        self.arguments = arguments
        self.result = result
    }

    /// `count` arguments of any value, returning a number: what a host helper is unless it says more.
    public static func values(_ count: Int) -> BPFHelperPrototype { BPFHelperPrototype(arguments: Array(repeating: .value, count: count)) }
}

/// A helper: a host function a program calls by number, with the prototype the verifier checks.
/// Immutable and `Sendable`; a Swift closure helper stays registered for the life of the process.
public struct BPFHelper: Sendable {
    /// The host code behind a helper.
    public enum Implementation: Sendable {
        case c(BPFHelperFunction)
        case swift(@Sendable (UInt64, UInt64, UInt64, UInt64, UInt64) -> UInt64)
    }

    /// The name messages use.
    public let name: String
    /// What runs when a program calls it.
    public let implementation: Implementation
    /// When the helper returns 0 the program stops at once with r0 = 0 (the conformance suite's
    /// "unwind" helper, Linux's bpf_tail_call in spirit).
    public let unwindsOnZero: Bool
    /// What the verifier checks at each call.
    public let prototype: BPFHelperPrototype
    /// For Swift closures: the index the dispatcher finds it by.
    let swiftIndex: Int

    /// A C function, which JIT code calls directly. `arguments`: how many of r1-r5 it reads (each
    /// must be initialized at the call), or a full `prototype`.
    public init(name: String, arguments: Int = 5, prototype: BPFHelperPrototype? = nil, unwindsOnZero: Bool = false,
                c function: BPFHelperFunction) {
        self.name = name; self.unwindsOnZero = unwindsOnZero; implementation = .c(function); swiftIndex = -1
        self.prototype = prototype ?? .values(arguments)
    }

    /// A Swift closure, which JIT code reaches through one C dispatcher.
    public init(name: String, arguments: Int = 5, prototype: BPFHelperPrototype? = nil, unwindsOnZero: Bool = false,
                swift body: @escaping @Sendable (UInt64, UInt64, UInt64, UInt64, UInt64) -> UInt64) {
        self.name = name; self.unwindsOnZero = unwindsOnZero; implementation = .swift(body)
        self.prototype = prototype ?? .values(arguments)
        swiftIndex = SwiftHelperTable.register(body)
    }

    @inline(__always)
    func call(_ a: UInt64, _ b: UInt64, _ c: UInt64, _ d: UInt64, _ e: UInt64) -> UInt64 {
        switch implementation {
        case let .c(f): f(a, b, c, d, e)
        case let .swift(f): f(a, b, c, d, e)
        }
    }

    /// The address JIT code calls: the C function itself, or the Swift dispatcher.
    var entryAddress: UInt {
        switch implementation {
        case let .c(f): UInt(bitPattern: unsafeBitCast(f, to: UnsafeRawPointer.self))
        case .swift: UInt(bitPattern: unsafeBitCast(swiftHelperDispatcher, to: UnsafeRawPointer.self))
        }
    }
}

// MARK: - Swift closures behind one C entry point

/// Closures JIT code reaches through `swiftHelperDispatcher`, which gets the closure's index in its
/// sixth argument (r9). Append-only, so an index stays valid for the process's life.
enum SwiftHelperTable {
    static let table = Mutex<[@Sendable (UInt64, UInt64, UInt64, UInt64, UInt64) -> UInt64]>([])

    static func register(_ f: @escaping @Sendable (UInt64, UInt64, UInt64, UInt64, UInt64) -> UInt64) -> Int {
        table.withLock { t in t.append(f); return t.count - 1 }
    }
}

typealias SwiftHelperDispatcher = @convention(c) (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) -> UInt64

let swiftHelperDispatcher: SwiftHelperDispatcher = { a, b, c, d, e, index in
    let f = SwiftHelperTable.table.withLock { $0[Int(index)] }
    return f(a, b, c, d, e)
}

// MARK: - The map helpers

enum MapHelpers {
    /// The map behind a handle the running program passed, if it is one of the program's maps.
    static func map(_ handle: UInt64, _ helper: String) -> (RunContext, BPFMap)? {
        guard let run = RunContext.current else { return nil }
        guard let m = run.program?.mapsByHandle[UInt(handle)] else {
            run.helperMessage = "\(helper): 0x\(String(handle, radix: 16)) is not a map of this program"
            run.set(.fault, RunFault.helperFault.rawValue)
            return nil
        }
        return (run, m)
    }

    /// Checks that `[address, + size)` is accessible; faults the run otherwise.
    static func check(_ run: RunContext, _ address: UInt64, _ size: Int, _ what: String, _ helper: String) -> UnsafeMutableRawPointer? {
        guard run.accessible(address, size), let p = UnsafeMutableRawPointer(bitPattern: UInt(address)) else {
            run.helperMessage = "\(helper): \(what) pointer 0x\(String(address, radix: 16)) (\(size) bytes) is not accessible memory"
            run.set(.fault, RunFault.helperFault.rawValue)
            return nil
        }
        return p
    }

    static let lookup: BPFHelperFunction = { handle, key, _, _, _ in
        guard let (run, m) = map(handle, "bpf_map_lookup_elem"),
              let k = check(run, key, m.keySize, "key", "bpf_map_lookup_elem") else { return 0 }
        return UInt64(UInt(bitPattern: m.lookup(key: k)))
    }

    static let update: BPFHelperFunction = { handle, key, value, flags, _ in
        guard let (run, m) = map(handle, "bpf_map_update_elem"),
              let k = check(run, key, m.keySize, "key", "bpf_map_update_elem"),
              let v = check(run, value, m.valueSize, "value", "bpf_map_update_elem") else { return 0 }
        return UInt64(bitPattern: m.update(key: k, value: v, flags: flags))
    }

    static let delete: BPFHelperFunction = { handle, key, _, _, _ in
        guard let (run, m) = map(handle, "bpf_map_delete_elem"),
              let k = check(run, key, m.keySize, "key", "bpf_map_delete_elem") else { return 0 }
        return UInt64(bitPattern: m.delete(key: k))
    }

    static let builtins: [Int32: BPFHelper] = [
        1: BPFHelper(name: "bpf_map_lookup_elem", prototype: BPFHelperPrototype(arguments: [.map, .mapKey], result: .mapValueOrNull), c: lookup),
        2: BPFHelper(name: "bpf_map_update_elem", prototype: BPFHelperPrototype(arguments: [.map, .mapKey, .mapValue, .value]), c: update),
        3: BPFHelper(name: "bpf_map_delete_elem", prototype: BPFHelperPrototype(arguments: [.map, .mapKey]), c: delete),
    ]
}
