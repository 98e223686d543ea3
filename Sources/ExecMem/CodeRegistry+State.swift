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
    var perf = PerfSink()
    var gdb = GDBSink()
    var unwind = UnwindSink()

    init(sinks: CodeSinks) { self.sinks = sinks }

    mutating func add(_ r: CodeRegistration) -> CodeHandle {
        var r = r
        r.size = max(r.size, 1)
        if r.symbols.isEmpty {
            r.symbols = [CodeSymbol(name: r.name, address: r.address, size: r.size)]
        } else if zip(r.symbols, r.symbols.dropFirst()).contains(where: { $0.address > $1.address }) {
            r.symbols.sort { $0.address < $1.address }
        }
        let id = nextID
        nextID += 1
        let e = RegistryEntry(registration: r)
        for b in e.firstBlock...e.lastBlock { insert(id, start: r.address, block: b) }
        entries[id] = e
        feed(id, into: sinks)
        return CodeHandle(id: id)
    }

    private mutating func insert(_ id: UInt64, start: UInt, block: UInt) {
        var list = blocks[block] ?? []
        // Allocations mostly grow upward: the common case appends.
        if let last = list.last, let l = entries[last], l.registration.address > start {
            var lo = 0, hi = list.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if entries[list[mid]]!.registration.address <= start { lo = mid + 1 } else { hi = mid }
            }
            list.insert(id, at: lo)
        } else {
            list.append(id)
        }
        blocks[block] = list
    }

    mutating func feed(_ id: UInt64, into sinks: CodeSinks) {
        guard let e = entries[id] else { return }
        let r = e.registration
        if sinks.contains(.perfMap) { perf.map(r) }
        if sinks.contains(.jitdump) { perf.dump(r) }
        if sinks.contains(.gdb) { gdb.add(id, r) }
        if sinks.contains(.unwind) { unwind.add(id, r) }
    }

    mutating func remove(_ id: UInt64) {
        guard let e = entries.removeValue(forKey: id) else { return }
        for b in e.firstBlock...e.lastBlock {
            guard var list = blocks[b], let i = list.lastIndex(of: id) else { continue }
            list.remove(at: i)
            blocks[b] = list.isEmpty ? nil : list
        }
        gdb.remove(id, e.registration)
        unwind.remove(id, e.registration)
    }

    /// Writes every live registration to sinks just switched on, oldest first.
    mutating func replay(into new: CodeSinks) {
        for id in entries.keys.sorted() { feed(id, into: new) }
    }

    mutating func flushIfIdle() {
        // Only the calling thread's batch defers: another thread's open batch must not leave this
        // thread's code unannounced (it would run with no frames registered).
        guard cem_batch_depth() == 0 else { return }
        gdb.flush()
        unwind.flush()
        perf.flush()
    }

    func ids(overlapping address: UInt, size: Int) -> [UInt64] {
        let end = address + UInt(max(size, 1))
        var out: [UInt64] = []
        let shift = UInt(ExecMemGeometry.blockShift)
        for b in (address >> shift)...((end - 1) >> shift) {
            for id in blocks[b] ?? [] {
                let r = entries[id]!.registration
                if r.address < end && address < r.address + UInt(r.size) && !out.contains(id) { out.append(id) }
            }
        }
        return out
    }

    func locate(_ address: UInt) -> CodeLocation? {
        guard let list = blocks[address >> UInt(ExecMemGeometry.blockShift)] else { return nil }
        // The last entry starting at or before `address`; entries do not overlap (allocations do not).
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[list[mid]]!.registration.address <= address { lo = mid + 1 } else { hi = mid }
        }
        var i = lo - 1
        while i >= 0 {
            let r = entries[list[i]]!.registration
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
