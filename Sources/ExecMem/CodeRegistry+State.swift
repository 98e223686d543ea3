// The registry's state behind its lock: the entries, an index by 2 MiB block for lookups and frees,
// and the sinks. Every mutation goes through `add` and `remove`; sinks learn of both.

import CExecMemDebug
import ExecMemSystem

struct RegistryEntry {
    /// The registration, its symbols sorted by address and never empty.
    var registration: CodeRegistration
    var firstBlock: UInt { registration.address >> UInt(ExecMemGeometry.blockShift) }
    var lastBlock: UInt { (registration.address + UInt(max(registration.size, 1)) - 1) >> UInt(ExecMemGeometry.blockShift) }
}

struct RegistryState: ~Copyable {
    var sinks: CodeSinks
    var entries: [UInt64: RegistryEntry] = [:]
    /// Block index -> ids of the entries touching the block, sorted by start address.
    var blocks: [UInt: [UInt64]] = [:]
    var nextID: UInt64 = 1
    /// Per block, the largest size of an entry in its list: no entry starting more than this below an
    /// address of the block covers it. Per block, not per process: one large registration (a module's
    /// text) made every lookup and free in every other block walk back over all its entries.
    var largest: [UInt: UInt] = [:]
    /// The most a registration may cover (64 GiB, far beyond any allocator's range); a registration
    /// that is larger, or that runs past the top of the address space, is not kept.
    static let maxBytes = 1 << 36
    var perf = PerfSink()
    var gdb = GDBSink()
    var unwind = UnwindSink()
    var crash = CrashTableSink()

    init(sinks: CodeSinks) { self.sinks = sinks }

    mutating func add(_ r: CodeRegistration) -> CodeHandle {
        var r = r
        r.size = max(r.size, 1)
        let id = nextID
        nextID += 1
        // Ranges are checked once here, so nothing below computes an end that overflows (a trap) or
        // walks 2^42 blocks for a size of Int.max: such a registration gets a handle naming nothing.
        guard r.size <= Self.maxBytes, UInt.max - r.address >= UInt(r.size) else { return CodeHandle(id: id) }
        let end = r.address + UInt(r.size)
        if r.symbols.isEmpty {
            r.symbols = [CodeSymbol(name: r.name, address: r.address, size: r.size)]
        } else {
            // Symbols lie inside the registration (sinks read a symbol's bytes, jitdump all of them).
            r.symbols = r.symbols.compactMap { s in
                guard s.address >= r.address, s.address < end else { return nil }
                var s = s
                s.size = Int(min(UInt(max(s.size, 1)), end - s.address))
                return s
            }
            if r.symbols.isEmpty { r.symbols = [CodeSymbol(name: r.name, address: r.address, size: r.size)] }
            if zip(r.symbols, r.symbols.dropFirst()).contains(where: { $0.address > $1.address }) { r.symbols.sort { $0.address < $1.address } }
        }
        // Frames too: an FDE outside the code would give the unwinder rules for someone else's.
        if case .frames(let list)? = r.unwind {
            r.unwind = .frames(list.filter { $0.offset >= 0 && $0.length > 0 && $0.offset < r.size && $0.length <= r.size - $0.offset })
        }
        let e = RegistryEntry(registration: r)
        for b in e.firstBlock...e.lastBlock {
            insert(id, start: r.address, block: b)
            largest[b] = max(largest[b] ?? 1, UInt(r.size))
        }
        entries[id] = e
        feed(id, into: sinks)
        return CodeHandle(id: id)
    }

    private mutating func insert(_ id: UInt64, start: UInt, block: UInt) {
        // Mutated in place (`blocks[block, default:]`): copying the list out and back copied it
        // whole on every registration, O(n) per call with n registrations in the block.
        let position: Int? = {
            guard let list = blocks[block], let last = list.last, let l = entries[last], l.registration.address > start else { return nil }
            var lo = 0, hi = list.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if entries[list[mid]]!.registration.address <= start { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }()
        // Allocations mostly grow upward: the common case appends.
        if let position { blocks[block, default: []].insert(id, at: position) } else { blocks[block, default: []].append(id) }
    }

    mutating func feed(_ id: UInt64, into sinks: CodeSinks) {
        guard let e = entries[id] else { return }
        let r = e.registration
        if sinks.contains(.perfMap) { perf.map(r) }
        if sinks.contains(.jitdump) { perf.dump(r) }
        if sinks.contains(.gdb) { gdb.add(id, r) }
        if sinks.contains(.unwind) { unwind.add(id, r) }
        if sinks.contains(.crashTable) { crash.add(id, r) }
    }

    mutating func remove(_ id: UInt64) {
        guard let e = entries.removeValue(forKey: id) else { return }
        for b in e.firstBlock...e.lastBlock {
            guard let i = position(of: id, start: e.registration.address, block: b) else { continue }
            blocks[b]!.remove(at: i)  // in place, as in `insert`
            if blocks[b]!.isEmpty { blocks[b] = nil; largest[b] = nil }
        }
        gdb.remove(id, e.registration)
        unwind.remove(id, e.registration)
        crash.remove(id)
    }

    /// Where `id` (starting at `start`, no longer in `entries`) is in a block's list: a binary search
    /// by address (a scan for the id was O(n) per removal, O(n^2) to free a block's programs).
    private func position(of id: UInt64, start: UInt, block: UInt) -> Int? {
        guard let list = blocks[block] else { return nil }
        func address(_ i: Int) -> UInt { list[i] == id ? start : entries[list[i]]!.registration.address }
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if address(mid) < start { lo = mid + 1 } else { hi = mid }
        }
        while lo < list.count && address(lo) == start {
            if list[lo] == id { return lo }
            lo += 1
        }
        return list.lastIndex(of: id)
    }

    /// Writes every live registration to sinks just switched on, oldest first.
    mutating func replay(into new: CodeSinks) {
        for id in entries.keys.sorted() { feed(id, into: new) }
    }

    /// Whether a deferred write of perf's files is scheduled.
    var perfFlushScheduled = false

    /// Announces pending changes unless the calling thread is in a batch. Returns true when perf's
    /// files have bytes pending and no deferred write is scheduled yet (the caller schedules one).
    @discardableResult
    mutating func flushIfIdle() -> Bool {
        // Only the calling thread's batch defers: another thread's open batch must not leave this
        // thread's code unannounced (it would run with no frames registered).
        guard cem_batch_depth() == 0 else { return false }
        gdb.flush()
        unwind.flush()
        guard perf.flush(), !perfFlushScheduled else { return false }
        perfFlushScheduled = true
        return true
    }

    func ids(overlapping address: UInt, size: Int) -> [UInt64] {
        let end = address &+ UInt(max(size, 1)) < address ? UInt.max : address + UInt(max(size, 1))
        var out: [UInt64] = []
        let shift = UInt(ExecMemGeometry.blockShift)
        let first = address >> shift, last = (end - 1) >> shift
        // A range of more blocks than are in use (a size of Int.max) visits only those in use.
        let touched = last - first >= UInt(blocks.count) ? blocks.keys.filter { $0 >= first && $0 <= last }.sorted() : Array(first...last)
        for b in touched {
            guard let list = blocks[b] else { continue }
            let largest = largest[b] ?? 1
            // Walk back from the last entry starting before `end` while one could still reach `address`.
            var i = lastIndex(in: list, startingBefore: end)
            while i >= 0 {
                let r = entries[list[i]]!.registration
                if r.address <= address && address - r.address >= largest { break }
                if r.address + UInt(r.size) > address && !out.contains(list[i]) { out.append(list[i]) }
                i -= 1
            }
        }
        return out
    }

    /// The index of the last entry of `list` whose start is below `limit`, or -1.
    private func lastIndex(in list: [UInt64], startingBefore limit: UInt) -> Int {
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[list[mid]]!.registration.address < limit { lo = mid + 1 } else { hi = mid }
        }
        return lo - 1
    }

    func locate(_ address: UInt) -> CodeLocation? {
        let block = address >> UInt(ExecMemGeometry.blockShift)
        guard let list = blocks[block] else { return nil }
        let largest = largest[block] ?? 1
        // The latest-starting entry that covers `address` (pieces may nest: a stub inside a module's span).
        var i = address == .max ? list.count - 1 : lastIndex(in: list, startingBefore: address + 1)
        while i >= 0 {
            let r = entries[list[i]]!.registration
            if address - r.address >= largest { break }
            if address < r.address + UInt(r.size) { return Self.locate(address, in: r) }
            i -= 1
        }
        return nil
    }

    static func locate(_ address: UInt, in r: CodeRegistration) -> CodeLocation {
        var lo = 0, hi = r.symbols.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if r.symbols[mid].address <= address { lo = mid + 1 } else { hi = mid }
        }
        if lo > 0 {
            let s = r.symbols[lo - 1]
            if address < s.address + UInt(max(s.size, 1)) {
                return CodeLocation(symbol: s.name, offset: Int(address - s.address), owner: r.owner, kind: r.kind)
            }
        }
        return CodeLocation(symbol: r.name, offset: Int(address - r.address), owner: r.owner, kind: r.kind)
    }
}

/// The crash table sink: one slot per function (and one for the whole piece when its functions do
/// not cover it), written at once, since a crash may come before any flush. Slots are the C table's
/// (CExecMemCrashTable.h); this keeps which registration holds which.
struct CrashTableSink: ~Copyable {
    private var slots: [UInt64: [Int32]] = [:]

    mutating func add(_ id: UInt64, _ r: CodeRegistration) {
        var mine: [Int32] = []
        let covered = r.symbols.count == 1 && r.symbols[0].address <= r.address
            && r.symbols[0].address + UInt(max(r.symbols[0].size, 1)) >= r.address + UInt(r.size)
        if !covered { mine.append(Self.slot(r.address, r.size, r.name, r.owner)) }
        for s in r.symbols { mine.append(Self.slot(s.address, s.size, s.name, r.owner)) }
        slots[id] = mine.filter { $0 >= 0 }
    }

    mutating func remove(_ id: UInt64) {
        for s in slots.removeValue(forKey: id) ?? [] { cem_crash_table_remove(s) }
    }

    private static func slot(_ address: UInt, _ size: Int, _ name: String, _ owner: String?) -> Int32 {
        name.withCString { n in
            guard let owner else { return cem_crash_table_add(address, address + UInt(max(size, 1)), n, nil) }
            return owner.withCString { cem_crash_table_add(address, address + UInt(max(size, 1)), n, $0) }
        }
    }
}
