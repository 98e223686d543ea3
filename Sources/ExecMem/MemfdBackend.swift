// The default backing: one shared memory (shmem) object per (range, type), sized like the range, so a
// block's offset in the object equals its offset in the range. Run views map the object with the
// type's protection; text and rodata are written through a second, writable view of the same pages, so
// no mapping is ever writable and executable. Run views are collapsed to 2 MiB pages with
// MADV_COLLAPSE, which works on shmem views even with shmem THP set to `never` (kernel 6.1+).
//
// The object is a shared anonymous mapping kept PROT_NONE (the "file"); views are made from it with
// mremap(old_size = 0), which maps the same pages again. A memfd would do the same, but /proc and perf
// show a memfd view as `memfd:execmem-text (deleted)`, a file perf cannot open, so samples in JIT code
// stayed unnamed; a shared anonymous view shows as `/dev/zero (deleted)`, which perf treats as
// anonymous memory and names through `/tmp/perf-<pid>.map`.
//
// With `hugeTLB`, the object is a memfd with MFD_HUGETLB | MFD_HUGE_2MB: 2 MiB pages from the reserved
// pool, no collapse needed, and a commit fails cleanly (ENOSPC) when the pool is empty. (perf treats
// hugetlb mappings as anonymous too.)
//
// One object per type (not one for all) keeps the kernel from merging mappings of different types
// into one VMA, so smaps can attribute 2 MiB pages to a type exactly.

import ExecMemSystem
import Synchronization

public final class MemfdBackend: ExecMemBackend {
    public let hugeTLB: Bool
    public let writeMode: WriteViewMode
    public let collapse: Bool
    /// The shared object behind each type of the range at a base, created at a type's first commit.
    private let objects = Mutex<[UInt: [SharedObject?]]>([:])

    /// One shmem object: a memfd (hugetlb) or a PROT_NONE shared anonymous mapping views are made from.
    struct SharedObject {
        var fd: Int32 = -1
        var base: UInt = 0
        var size: Int
    }

    public init(hugeTLB: Bool = false, writeMode: WriteViewMode = .persistent, collapse: Bool = true) {
        self.hugeTLB = hugeTLB
        self.writeMode = writeMode
        self.collapse = collapse && !hugeTLB
    }

    public var name: String { hugeTLB ? "hugetlb" : "memfd" }
    public var hasMemory: Bool { true }

    public func reserve(size: Int, at address: UInt?) throws(ExecMemError) -> UInt {
        try Reservation.reserve(size: size, at: address)
    }

    public func release(base: UInt, size: Int) {
        let list = objects.withLock { $0.removeValue(forKey: base) } ?? []
        for case let o? in list {
            if o.fd >= 0 { Sys.close(fd: o.fd) }
            if o.base != 0 { try? Sys.munmap(address: o.base, length: o.size) }
        }
        Reservation.release(base: base, size: size)
    }

    /// The object behind `type` in the range at `base`, created and sized on first use.
    private func object(rangeBase: UInt, rangeSize: Int, type: ExecMemType) throws(ExecMemError) -> SharedObject {
        let result: Result<SharedObject, SystemCallError> = objects.withLock { table in
            var list = table[rangeBase] ?? [SharedObject?](repeating: nil, count: ExecMemType.allCases.count)
            if let o = list[type.rawValue] { return .success(o) }
            do throws(SystemCallError) {
                var o = SharedObject(size: rangeSize)
                if hugeTLB && type.wantsHugePages {
                    let flags = SysConst.mfdCloexec | SysConst.mfdHugeTLB | SysConst.mfdHuge2MB
                    o.fd = try Sys.memfdCreate(name: "execmem-\(type)", flags: flags)
                    do throws(SystemCallError) { try Sys.ftruncate(fd: o.fd, length: rangeSize) } catch { Sys.close(fd: o.fd); throw error }
                } else {
                    o.base = try Sys.mmap(length: rangeSize, protection: .none,
                                          flags: SysConst.mapShared | SysConst.mapAnonymous | SysConst.mapNoReserve,
                                          call: "mmap(shared object)")
                }
                list[type.rawValue] = o
                table[rangeBase] = list
                return .success(o)
            } catch {
                return .failure(error)
            }
        }
        return try sys(try result.get())
    }

    /// The object a run belongs to (its range base is its address minus its offset in the object).
    private func object(of run: CommittedRun) -> SharedObject? {
        objects.withLock { $0[run.address - UInt(run.fileOffset)]?[run.type.rawValue] ?? nil }
    }

    /// Maps `[offset, + length)` of `o` with `protection`, at `address` (replacing what is there) or
    /// where the kernel chooses.
    private func view(_ o: SharedObject, offset: Int, length: Int, at address: UInt?, _ protection: MemoryProtection,
                      call: String) throws(SystemCallError) -> UInt {
        if o.fd >= 0 {
            return try Sys.mmap(address: address ?? 0, length: length, protection: protection,
                                flags: SysConst.mapShared | (address == nil ? 0 : SysConst.mapFixed), fd: o.fd, offset: offset, call: call)
        }
        let v = try Sys.mapAgain(o.base + UInt(offset), length: length, to: address)
        do throws(SystemCallError) {
            if protection != .none { try Sys.mprotect(address: v, length: length, protection: protection) }
        } catch {
            if address == nil { try? Sys.munmap(address: v, length: length) }
            throw error
        }
        return v
    }

    /// Gives `[offset, + length)` of `o` back to the kernel.
    private func punch(_ o: SharedObject, offset: Int, length: Int) {
        if o.fd >= 0 {
            try? Sys.fallocate(fd: o.fd, mode: SysConst.fallocPunchHole | SysConst.fallocKeepSize, offset: offset, length: length)
            return
        }
        // MADV_REMOVE needs a shared, writable mapping of the pages.
        guard let v = try? view(o, offset: offset, length: length, at: nil, [.read, .write], call: "mremap(punch view)") else { return }
        try? Sys.madvise(address: v, length: length, advice: SysConst.madvRemove, name: "MADV_REMOVE")
        try? Sys.munmap(address: v, length: length)
    }

    public func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType) throws(ExecMemError) -> CommittedRun {
        try commit(rangeBase: rangeBase, rangeSize: rangeSize, offset: offset, length: length, type: type, prepare: length)
    }

    /// Commits a run. When the run is collapsed to 2 MiB pages (a shmem object, collapse on) and the
    /// caller needs less than all of it, only what it needs is prepared now (text: the first
    /// `prepare` bytes rounded up to 64 KiB, faulted in and filled with int3; other types: one page,
    /// as their fill is the zero a fresh page already holds) and the collapse and the rest of the fill
    /// are left to `finishCommit`. Collapsing the rest later is also cheaper: MADV_COLLAPSE copies only
    /// the pages present and takes the holes as zeros, so the int3 fill then goes straight into the
    /// 2 MiB page instead of into 512 small ones that are copied.
    public func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType, prepare: Int) throws(ExecMemError) -> CommittedRun {
        let o = try object(rangeBase: rangeBase, rangeSize: rangeSize, type: type)
        let address = rangeBase + UInt(offset)
        let huge = type.wantsHugePages
        let deferred = collapse && huge && o.fd < 0 && prepare < length
        let granule = 1 << ExecMemGeometry.preparedShift
        let prepared = deferred && type.fillByte != 0 ? min(length, (max(prepare, 1) + granule - 1) & ~(granule - 1)) : length
        // Allocate the pages now: a hugetlb pool that is too small fails here, not on a later fault,
        // and MADV_COLLAPSE needs pages present (all of them to collapse now; one at least later).
        // 4 KiB types get their pages on first touch.
        if huge && o.fd >= 0 { try sys(try Sys.fallocate(fd: o.fd, mode: 0, offset: offset, length: length)) }
        let populate = !huge || o.fd >= 0 ? 0 : !deferred ? length : type.fillByte != 0 ? prepared : ExecMemGeometry.pageSize
        var view: UInt = 0
        do throws(ExecMemError) {
            let needsView = type == .text || type == .rodata
            if needsView || type.fillByte != 0 {
                view = try mapWriteView(o, offset: offset, length: length)
                if populate > 0 { try sys(try Sys.madvise(address: view, length: populate, advice: SysConst.madvPopulateWrite, name: "MADV_POPULATE_WRITE")) }
                if type.fillByte != 0 {
                    UnsafeMutableRawPointer(bitPattern: view)!.initializeMemory(as: UInt8.self, repeating: type.fillByte, count: prepared)
                }
            }
            // The whole run view gets its protection now, once: changing it later, when the rest is
            // filled, would make perf see the block mapped anew and drop the names and unwind tables
            // jitdump gave code already in it. Until then the rest reads as zero; nothing is handed
            // out there.
            _ = try sys(try self.view(o, offset: offset, length: length, at: address, type.runProtection.bits, call: "mmap(run view)"))
            if populate > 0 && view == 0 && type.runProtection == .readWrite {
                try sys(try Sys.madvise(address: address, length: populate, advice: SysConst.madvPopulateWrite, name: "MADV_POPULATE_WRITE"))
            }
            if view != 0 && (writeMode == .transient || !needsView) {
                try? Sys.munmap(address: view, length: length)
                view = 0
            }
        } catch {
            if view != 0 { try? Sys.munmap(address: view, length: length) }
            Reservation.restore(address: address, length: length)
            punch(o, offset: offset, length: length)
            throw error
        }
        var hugeMapped = hugeTLB && huge
        var note: String? = huge ? nil : "\(type) stays on 4 KiB pages: it is sealed page by page"
        if collapse && huge && !deferred {
            do throws(SystemCallError) {
                try Self.collapse(address, length)
                hugeMapped = true
                // The pages are one huge folio now: map the write view by 2 MiB entries as well.
                if view != 0 { try? Sys.madvise(address: view, length: length, advice: SysConst.madvCollapse, name: "MADV_COLLAPSE") }
            } catch {
                note = "\(error); this run stays on 4 KiB pages"
            }
        } else if !hugeTLB && huge && !collapse {
            note = "collapse disabled by configuration"
        }
        if type.runProtection == .readWrite { view = address }  // the run view is the write view
        return CommittedRun(address: address, length: length, type: type, fd: o.fd, fileOffset: offset,
                            writeView: view, hugeMapped: hugeMapped, note: note, preparedLength: prepared, finishPending: deferred)
    }

    /// Collapses the block to one 2 MiB page through its write view (MADV_COLLAPSE copies the pages
    /// present and takes the holes as zeros), fills what `commit` left unfilled through that view,
    /// now mapped by one 2 MiB entry, and maps the run view by 2 MiB too. No mapping is made or
    /// changed where code runs. With transient write views, an aligned one is mapped for the purpose
    /// and unmapped after.
    public func finishCommit(_ run: CommittedRun) -> CommittedRun {
        guard run.finishPending else { return run }
        var view: UInt = run.writeView, temporary = false
        if view == 0, let o = object(of: run), let v = try? mapWriteView(o, offset: run.fileOffset, length: run.length) {
            view = v
            temporary = true
        }
        defer { if temporary { try? Sys.munmap(address: view, length: run.length) } }
        let tail = run.length - run.preparedLength
        var note: String? = nil
        if view != 0 {
            var failure: SystemCallError? = nil
            do throws(SystemCallError) { try Self.collapse(view, run.length) } catch { failure = error }
            if tail > 0 {
                UnsafeMutableRawPointer(bitPattern: view + UInt(run.preparedLength))!
                    .initializeMemory(as: UInt8.self, repeating: run.type.fillByte, count: tail)
            }
            if failure != nil {
                // A kernel that will not collapse a range with holes: fault every page in, try again.
                try? Sys.madvise(address: view, length: run.length, advice: SysConst.madvPopulateWrite, name: "MADV_POPULATE_WRITE")
                do throws(SystemCallError) { try Self.collapse(view, run.length); failure = nil } catch { failure = error }
            }
            if let failure { note = "\(failure); this run stays on 4 KiB pages" }
        }
        var prepared = run.preparedLength
        if view != 0 {
            prepared = run.length
        } else if tail > 0 {
            note = "no write view to fill the run with: its last \(tail) bytes stay unused"
        }
        var hugeMapped = false
        if note == nil {
            do throws(SystemCallError) {
                // The pages are one 2 MiB folio now; this maps the run view by one 2 MiB entry.
                if view != run.address { try Self.collapse(run.address, run.length) }
                hugeMapped = true
            } catch {
                note = "\(error); this run stays on 4 KiB pages"
            }
        }
        return run.finished(preparedLength: prepared, hugeMapped: hugeMapped, note: note)
    }

    /// MADV_COLLAPSE, tried again a few times when the kernel says EAGAIN (a page briefly busy).
    private static func collapse(_ address: UInt, _ length: Int) throws(SystemCallError) {
        var attempt = 0
        while true {
            do throws(SystemCallError) {
                return try Sys.madvise(address: address, length: length, advice: SysConst.madvCollapse, name: "MADV_COLLAPSE")
            } catch {
                attempt += 1
                if error.errno != .resourceTemporarilyUnavailable || attempt == 3 { throw error }
            }
        }
    }

    /// Maps a writable view of `[offset, + length)` of `o` at a 2 MiB-aligned address, so that once
    /// the pages are one huge folio the view can be mapped by 2 MiB entries too (fewer TLB misses
    /// when writing code at random places).
    private func mapWriteView(_ o: SharedObject, offset: Int, length: Int) throws(ExecMemError) -> UInt {
        let hole = try Reservation.reserve(size: length, at: nil)
        do throws(SystemCallError) {
            return try view(o, offset: offset, length: length, at: hole, [.read, .write], call: "mmap(write view)")
        } catch {
            Reservation.release(base: hole, size: length)
            throw .system(error)
        }
    }

    public func decommit(_ run: CommittedRun) {
        Reservation.restore(address: run.address, length: run.length)
        if run.writeView != 0 && run.writeView != run.address { try? Sys.munmap(address: run.writeView, length: run.length) }
        if let o = object(of: run) { punch(o, offset: run.fileOffset, length: run.length) }
    }

    public func protect(_ run: CommittedRun, offset: Int, length: Int, _ protection: Protection) throws(ExecMemError) {
        try sys(try Sys.mprotect(address: run.address + UInt(offset), length: length, protection: protection.bits))
    }

    public func openWriteView(_ run: CommittedRun) throws(ExecMemError) -> UInt? {
        if run.writeView != 0 { return run.writeView }
        guard let o = object(of: run) else { throw .system(SystemCallError(call: "mremap", errno: .badFileDescriptor, detail: "no object for run at \(hex(run.address))")) }
        return try sys(try view(o, offset: run.fileOffset, length: run.length, at: nil, [.read, .write], call: "mmap(transient write view)"))
    }

    public func closeWriteView(_ run: CommittedRun, view: UInt) {
        if view != run.address && view != run.writeView { try? Sys.munmap(address: view, length: run.length) }
    }

    public func hugeMappedBytes(of runs: [CommittedRun]) -> [Int] { smapsHugeMappedBytes(of: runs) }
}
