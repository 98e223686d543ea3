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
        let o = try object(rangeBase: rangeBase, rangeSize: rangeSize, type: type)
        let address = rangeBase + UInt(offset)
        let huge = type.wantsHugePages
        // Allocate the pages now: a hugetlb pool that is too small fails here, not on a later fault,
        // and MADV_COLLAPSE needs the pages present. 4 KiB types get their pages on first touch.
        if huge && o.fd >= 0 { try sys(try Sys.fallocate(fd: o.fd, mode: 0, offset: offset, length: length)) }
        var view: UInt = 0
        do throws(ExecMemError) {
            let needsView = type == .text || type == .rodata
            if needsView || type.fillByte != 0 {
                view = try mapWriteView(o, offset: offset, length: length)
                if huge && o.fd < 0 { try sys(try Sys.madvise(address: view, length: length, advice: SysConst.madvPopulateWrite, name: "MADV_POPULATE_WRITE")) }
                if type.fillByte != 0 {
                    UnsafeMutableRawPointer(bitPattern: view)!.initializeMemory(as: UInt8.self, repeating: type.fillByte, count: length)
                }
            }
            _ = try sys(try self.view(o, offset: offset, length: length, at: address, type.runProtection.bits, call: "mmap(run view)"))
            if huge && o.fd < 0 && view == 0 && type.runProtection == .readWrite {
                try sys(try Sys.madvise(address: address, length: length, advice: SysConst.madvPopulateWrite, name: "MADV_POPULATE_WRITE"))
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
        if collapse && huge {
            do throws(SystemCallError) {
                try Sys.madvise(address: address, length: length, advice: SysConst.madvCollapse, name: "MADV_COLLAPSE")
                hugeMapped = true
                // The pages are one huge folio now: map the write view by 2 MiB entries as well.
                if view != 0 { try? Sys.madvise(address: view, length: length, advice: SysConst.madvCollapse, name: "MADV_COLLAPSE") }
            } catch {
                note = "\(error); this run stays on 4 KiB pages"
            }
        } else if !hugeTLB && huge {
            note = "collapse disabled by configuration"
        }
        if type.runProtection == .readWrite { view = address }  // the run view is the write view
        return CommittedRun(address: address, length: length, type: type, fd: o.fd, fileOffset: offset,
                            writeView: view, hugeMapped: hugeMapped, note: note)
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
