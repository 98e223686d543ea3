// Writing code and data (Linux's text_poke_copy / execmem_update_copy), sealing ro-after-init, and
// making new code visible to other threads.
//
// Text and rodata are written through the write view the backend provides: a second rw- mapping of
// the same pages (memfd), or the whole run flipped to rw- and back (anonymous). Every write is bounds-
// checked against the allocation and done under its type's lock, so a write can never land in memory
// the allocator has handed to someone else.

import ExecMemSystem
import Synchronization

extension ExecMemAllocator {
    // MARK: - Views

    /// Runs `body` with the address of a writable view of block `id`'s whole run. Under the arena lock.
    func withView(_ s: inout ArenaState, _ id: Int, _ body: (UInt) -> Void) throws(ExecMemError) {
        let view = try acquireView(&s, id)
        body(view)
        releaseView(&s, id)
    }

    @inline(__always)
    func acquireView(_ s: inout ArenaState, _ id: Int) throws(ExecMemError) -> UInt {
        let persistent = s.blocks[id].run.writeView
        if persistent != 0 { return persistent }
        if s.blocks[id].openCount == 0 {
            guard let view = try backend.openWriteView(s.blocks[id].run) else { return 0 }
            s.blocks[id].openView = view
        }
        s.blocks[id].openCount += 1
        return s.blocks[id].openView
    }

    @inline(__always)
    func releaseView(_ s: inout ArenaState, _ id: Int) {
        guard s.blocks[id].openCount > 0 else { return }  // also: a persistent view, never counted
        s.blocks[id].openCount -= 1
        if s.blocks[id].openCount == 0 {
            backend.closeWriteView(s.blocks[id].run, view: s.blocks[id].openView)
            s.blocks[id].openView = 0
        }
    }

    // MARK: - Writing

    /// Copies `bytes` into `allocation` at `offset` through its write view.
    public func write(_ bytes: UnsafeRawBufferPointer, to allocation: Allocation, at offset: Int = 0) throws(ExecMemError) {
        try write(bytes, to: allocation, at: offset, batch: nil)
    }

    /// Copies `bytes` into `allocation` at `offset` through its write view.
    public func write(_ bytes: [UInt8], to allocation: Allocation, at offset: Int = 0) throws(ExecMemError) {
        try bytes.withUnsafeBytes { b in Result { () throws(ExecMemError) in try write(b, to: allocation, at: offset, batch: nil) } }.get()
    }

    /// Sets `count` bytes (to the end when nil) of `allocation` from `offset` to `byte`.
    public func fill(_ allocation: Allocation, with byte: UInt8, offset: Int = 0, count: Int? = nil) throws(ExecMemError) {
        try modify(allocation, offset: offset, count: count ?? (allocation.size - offset), batch: nil, .fill(byte))
    }

    func write(_ bytes: UnsafeRawBufferPointer, to a: Allocation, at offset: Int, batch: WriteBatch?) throws(ExecMemError) {
        guard bytes.count > 0 else { return }
        try modify(a, offset: offset, count: bytes.count, batch: batch, .copy(from: UInt(bitPattern: bytes.baseAddress!)))
    }

    /// What a write does to the destination bytes (addresses as integers: the operation runs under a lock).
    enum Modification: Sendable {
        case copy(from: UInt)
        case fill(UInt8)
    }

    /// Checks a write and applies it to the destination bytes in a write view.
    func modify(_ a: Allocation, offset: Int, count: Int, batch: WriteBatch?, _ op: Modification) throws(ExecMemError) {
        guard offset >= 0, count >= 0, offset <= a.size, count <= a.size - offset else {
            throw .outOfBounds(address: a.address, offset: offset, count: count, size: a.size)
        }
        try arenas[a.type.rawValue].withLock { (s) throws(ExecMemError) in
            let (id, _, slot) = try liveRecord(s, a)
            if s.blocks[id].records[slot].sealed { throw .sealed(address: a.address, id: a.id) }
            guard count > 0, backend.hasMemory else { return }
            let view: UInt
            let serial = s.blocks[id].serial
            if s.blocks[id].run.writeView != 0 {
                view = s.blocks[id].run.writeView
            } else if let batch {
                if batch.openSerial(at: id) == serial {
                    view = s.blocks[id].openView
                } else {
                    view = try acquireView(&s, id)
                    batch.remember(id: id, serial: serial, type: s.type)
                }
            } else {
                view = try acquireView(&s, id)
            }
            let dest = UnsafeMutableRawPointer(bitPattern: view + (a.address - s.blocks[id].base) + UInt(offset))!
            switch op {
            case let .copy(from): dest.copyMemory(from: UnsafeRawPointer(bitPattern: from)!, byteCount: count)
            case let .fill(byte): dest.initializeMemory(as: UInt8.self, repeating: byte, count: count)
            }
            if batch == nil { releaseView(&s, id) }
        }
    }

    /// Runs `body` with a batch whose writes share write views: with transient views, each run is
    /// mapped once for the whole batch and unmapped at its end (the kernel's temporary text-poke mm).
    public func writeBatch<R>(_ body: (WriteBatch) throws -> R) rethrows -> R {
        let batch = WriteBatch(allocator: self)
        defer { batch.close() }
        return try body(batch)
    }

    // MARK: - Sealing

    /// Seals a ro-after-init allocation (module_enable_rodata_ro_after_init): its pages become r--
    /// and later writes through ExecMem fail. Sealing twice is harmless.
    public func seal(_ allocation: Allocation) throws(ExecMemError) {
        guard allocation.type == .roAfterInit else {
            throw .notSealable(address: allocation.address, type: allocation.type)
        }
        try arenas[allocation.type.rawValue].withLock { (s) throws(ExecMemError) in
            let (id, start, slot) = try liveRecord(s, allocation)
            guard !s.blocks[id].records[slot].sealed else { return }
            try backend.protect(s.blocks[id].run, offset: start << ExecMemGeometry.chunkShift, length: allocation.capacity, .readOnly)
            s.blocks[id].records[slot].sealed = true
        }
    }

    /// Whether `allocation` is live and sealed.
    public func isSealed(_ allocation: Allocation) -> Bool {
        arenas[allocation.type.rawValue].withLock { s in
            (try? liveRecord(s, allocation)).map { s.blocks[$0.0].records[$0.2].sealed } ?? false
        }
    }

    // MARK: - Visibility

    /// Makes code written so far safe for other threads to run: membarrier's private expedited
    /// sync-core command serializes every core running this process. The writing thread needs nothing
    /// on x86-64. Returns the mechanism used.
    @discardableResult
    public func makeVisible() -> Membarrier.Mode { Membarrier.synchronize() }
}

/// A set of writes that share write views; see `ExecMemAllocator.writeBatch`.
public final class WriteBatch: Sendable {
    let allocator: ExecMemAllocator
    /// Views this batch holds open: block id -> (block serial, type).
    private let open = Mutex<[Int: (serial: UInt64, type: ExecMemType)]>([:])

    init(allocator: ExecMemAllocator) { self.allocator = allocator }

    public func write(_ bytes: [UInt8], to allocation: Allocation, at offset: Int = 0) throws(ExecMemError) {
        try bytes.withUnsafeBytes { b in Result { () throws(ExecMemError) in try allocator.write(b, to: allocation, at: offset, batch: self) } }.get()
    }

    public func write(_ bytes: UnsafeRawBufferPointer, to allocation: Allocation, at offset: Int = 0) throws(ExecMemError) {
        try allocator.write(bytes, to: allocation, at: offset, batch: self)
    }

    /// The serial of block `id` as it was when this batch opened a view of it, if it did.
    func openSerial(at id: Int) -> UInt64? { open.withLock { $0[id]?.serial } }

    func remember(id: Int, serial: UInt64, type: ExecMemType) { open.withLock { $0[id] = (serial, type) } }

    func close() {
        let views = open.withLock { o in defer { o.removeAll() }; return o }
        for (id, o) in views {
            allocator.arenas[o.type.rawValue].withLock { s in
                // A run released during the batch already had its view closed.
                if s.blocks[id].isCommitted && s.blocks[id].serial == o.serial { allocator.releaseView(&s, id) }
            }
        }
    }
}
