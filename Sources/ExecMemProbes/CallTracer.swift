// A function-call tracer on entry and exit hooks, like uftrace's record and graph: each thread
// builds a call tree (call counts and time per path); the report merges the threads.

import ExecMem
import ExecMemLoader
import ExecMemSystem
import Glibc
import Synchronization

/// One node of a call tree: a function reached by one path of calls.
public final class CallNode: @unchecked Sendable {
    public let function: UInt
    public internal(set) var calls = 0
    /// Nanoseconds spent in completed calls (callees included).
    public internal(set) var totalNanoseconds: UInt64 = 0
    public internal(set) var children: [UInt: CallNode] = [:]
    weak var parent: CallNode?

    init(function: UInt, parent: CallNode?) { self.function = function; self.parent = parent }

    func child(_ f: UInt) -> CallNode {
        if let c = children[f] { return c }
        let c = CallNode(function: f, parent: self)
        children[f] = c
        return c
    }

    /// Time not spent in traced callees.
    public var selfNanoseconds: UInt64 {
        let inner = children.values.reduce(UInt64(0)) { $0 + $1.totalNanoseconds }
        return totalNanoseconds > inner ? totalNanoseconds - inner : 0
    }

    /// Adds `other`'s counts and subtree into this one, without recursing on the host's stack (a
    /// program may recurse 50,000 deep).
    func merge(_ other: CallNode) {
        var work: [(CallNode, CallNode)] = [(self, other)]
        while let (into, from) = work.popLast() {
            into.calls += from.calls
            into.totalNanoseconds &+= from.totalNanoseconds
            for (f, c) in from.children { work.append((into.child(f), c)) }
        }
    }

    /// Frees a deep tree without a deep chain of releases: a subtree nothing else holds is taken
    /// apart here, node by node.
    deinit {
        var pending = Array(children.values)
        children = [:]
        while var n = pending.popLast() {
            guard isKnownUniquelyReferenced(&n) else { continue }
            pending.append(contentsOf: n.children.values)
            n.children = [:]
        }
    }
}

/// A thread's place in its tree, and when each open call started.
final class TraceThread: @unchecked Sendable {
    let root = CallNode(function: 0, parent: nil)
    lazy var current: CallNode = root
    var starts: [UInt64] = []
}

private func now() -> UInt64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
}

public final class CallTracer: @unchecked Sendable {
    public let hooks: FunctionHooks
    /// Names of traced functions by address.
    public private(set) var names: [UInt: String] = [:]
    public private(set) var traced: [Hook] = []
    private let threads = Mutex<[TraceThread]>([])
    private let key: pthread_key_t

    public init(hooks: FunctionHooks) {
        self.hooks = hooks
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        key = k
    }

    deinit { pthread_key_delete(key) }

    private func thread() -> TraceThread {
        if let p = pthread_getspecific(key) { return Unmanaged<TraceThread>.fromOpaque(p).takeUnretainedValue() }
        let t = TraceThread()
        threads.withLock { $0.append(t) }  // keeps it alive
        pthread_setspecific(key, Unmanaged.passUnretained(t).toOpaque())
        return t
    }

    /// Traces the module's functions whose names match `pattern` (a shell glob) and that have a
    /// patchable entry. Returns the names of the functions left out because they have none.
    @discardableResult
    public func trace(_ module: LoadedModule, matching pattern: String = "*") throws(ProbeError) -> [String] {
        let entries = Set(module.patchableEntries)
        var chosen: [(String, UInt)] = [], skipped: [String] = []
        var seen = Set<UInt>()
        for f in module.functions where fnmatch(pattern, f.name, 0) == 0 && seen.insert(f.address).inserted {
            if entries.contains(f.address) || entries.contains(f.address + 4) { chosen.append((f.name, f.address)) } else { skipped.append(f.name) }
        }
        try trace(chosen)
        return skipped
    }

    /// Traces functions given by name and address.
    public func trace(_ functions: [(name: String, address: UInt)]) throws(ProbeError) {
        for f in functions { names[f.address] = f.name }
        let made = try hooks.hook(functions.map(\.address),
                                  entry: { [unowned self] f, _ in
                                      let t = thread()
                                      t.current = t.current.child(f)
                                      t.current.calls += 1
                                      t.starts.append(now())
                                  },
                                  exit: { [unowned self] _, _ in
                                      let t = thread()
                                      guard let start = t.starts.popLast() else { return }
                                      t.current.totalNanoseconds += now() - start
                                      t.current = t.current.parent ?? t.root
                                  })
        traced += made
    }

    /// Removes the hooks (the tree stays).
    public func stop() throws(ProbeError) {
        for h in traced { try hooks.remove(h) }
        traced = []
    }

    /// The threads' trees merged.
    public func tree() -> CallNode {
        let root = CallNode(function: 0, parent: nil)
        for t in threads.withLock({ $0 }) { root.merge(t.root) }
        return root
    }

    /// The merged tree as text: calls, total and self time per path, callees indented under callers.
    public func report() -> String {
        var lines = ["# function calls and time per call path (like uftrace graph)", "     calls      total       self  function"]
        func time(_ ns: UInt64) -> String {
            let (v, unit): (Double, String) = ns >= 1_000_000_000 ? (Double(ns) / 1e9, " s") : ns >= 1_000_000 ? (Double(ns) / 1e6, "ms") : (Double(ns) / 1e3, "us")
            let s = String(Int((v * 1000).rounded()))
            let padded = String(repeating: "0", count: max(0, 4 - s.count)) + s
            return "\(padded.dropLast(3)).\(padded.suffix(3)) \(unit)"
        }
        func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
        // Depth first, callees by time, with an explicit stack; indentation stops growing at
        // `maxIndent` levels (deeper ones say their depth), so a deep recursion stays linear.
        let maxIndent = 64
        func sorted(_ n: CallNode) -> [CallNode] {
            n.children.values.sorted(by: { ($0.totalNanoseconds, $1.function) > ($1.totalNanoseconds, $0.function) })
        }
        var work: [(CallNode, Int)] = sorted(tree()).reversed().map { ($0, 0) }
        while let (c, depth) = work.popLast() {
            let name = names[c.function] ?? hex(c.function)
            let indent = String(repeating: "  ", count: min(depth, maxIndent)) + (depth > maxIndent ? "[depth \(depth)] " : "")
            lines.append("\(pad(String(c.calls), 10)) \(pad(time(c.totalNanoseconds), 10)) \(pad(time(c.selfNanoseconds), 10))  \(indent)\(name)")
            work += sorted(c).reversed().map { ($0, depth + 1) }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
