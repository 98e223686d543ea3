// The default backing: a memfd per (range, type), sized like the range, so a block's file offset equals
// its offset in the range. Run views map the memfd with the type's protection; text and rodata are
// written through a second, writable view of the same pages, so no mapping is ever writable and
// executable. Run views are collapsed to 2 MiB pages with MADV_COLLAPSE, which works on memfd views
// even with shmem THP set to `never` (kernel 6.1+).
//
// With `hugeTLB`, the memfd is MFD_HUGETLB | MFD_HUGE_2MB: 2 MiB pages from the reserved pool, no
// collapse needed, and a commit fails cleanly (ENOSPC) when the pool is empty.
//
// One memfd per type (not one for all) keeps the kernel from merging mappings of different types
// into one VMA, so smaps can attribute 2 MiB pages to a type exactly.

import ExecMemSystem
import Synchronization

public final class MemfdBackend: ExecMemBackend {
    public let hugeTLB: Bool
    public let writeMode: WriteViewMode
    public let collapse: Bool
    /// File descriptors per range base, indexed by type; created at a type's first commit.
    private let files = Mutex<[UInt: [Int32]]>([:])

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
        let fds = files.withLock { $0.removeValue(forKey: base) } ?? []
        for fd in fds where fd >= 0 { Sys.close(fd: fd) }
        Reservation.release(base: base, size: size)
    }

    /// The memfd behind `type` in the range at `base`, created and sized on first use.
    private func file(rangeBase: UInt, rangeSize: Int, type: ExecMemType) throws(ExecMemError) -> Int32 {
        let result: Result<Int32, SystemCallError> = files.withLock { table in
            var fds = table[rangeBase] ?? [Int32](repeating: -1, count: ExecMemType.allCases.count)
            if fds[type.rawValue] >= 0 { return .success(fds[type.rawValue]) }
            var flags = SysConst.mfdCloexec
            if hugeTLB && type.wantsHugePages { flags |= SysConst.mfdHugeTLB | SysConst.mfdHuge2MB }
            do throws(SystemCallError) {
                let fd = try Sys.memfdCreate(name: "execmem-\(type)", flags: flags)
                do throws(SystemCallError) { try Sys.ftruncate(fd: fd, length: rangeSize) } catch { Sys.close(fd: fd); throw error }
                fds[type.rawValue] = fd
                table[rangeBase] = fds
                return .success(fd)
            } catch {
                return .failure(error)
            }
        }
        return try sys(try result.get())
    }

    public func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType) throws(ExecMemError) -> CommittedRun {
        let fd = try file(rangeBase: rangeBase, rangeSize: rangeSize, type: type)
        let address = rangeBase + UInt(offset)
        let shared = SysConst.mapShared
        let huge = type.wantsHugePages
        // Allocate the pages now: a hugetlb pool that is too small fails here, not on a later fault,
        // and MADV_COLLAPSE needs the pages present. 4 KiB types get their pages on first touch.
        if huge { try sys(try Sys.fallocate(fd: fd, mode: 0, offset: offset, length: length)) }
        var view: UInt = 0
        do throws(ExecMemError) {
            let needsView = type == .text || type == .rodata
            if needsView || type.fillByte != 0 {
                view = try mapWriteView(fd: fd, offset: offset, length: length)
                if type.fillByte != 0 {
                    UnsafeMutableRawPointer(bitPattern: view)!.initializeMemory(as: UInt8.self, repeating: type.fillByte, count: length)
                }
            }
            _ = try sys(try Sys.mmap(address: address, length: length, protection: type.runProtection.bits,
                                     flags: shared | SysConst.mapFixed, fd: fd, offset: offset))
            if view != 0 && (writeMode == .transient || !needsView) {
                try? Sys.munmap(address: view, length: length)
                view = 0
            }
        } catch {
            if view != 0 { try? Sys.munmap(address: view, length: length) }
            Reservation.restore(address: address, length: length)
            try? Sys.fallocate(fd: fd, mode: SysConst.fallocPunchHole | SysConst.fallocKeepSize, offset: offset, length: length)
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
        return CommittedRun(address: address, length: length, type: type, fd: fd, fileOffset: offset,
                            writeView: view, hugeMapped: hugeMapped, note: note)
    }

    /// Maps a writable view of `[offset, + length)` of `fd` at a 2 MiB-aligned address, so that once
    /// the pages are one huge folio the view can be mapped by 2 MiB entries too (fewer TLB misses
    /// when writing code at random places).
    private func mapWriteView(fd: Int32, offset: Int, length: Int) throws(ExecMemError) -> UInt {
        let hole = try Reservation.reserve(size: length, at: nil)
        do throws(SystemCallError) {
            return try Sys.mmap(address: hole, length: length, protection: [.read, .write],
                                flags: SysConst.mapShared | SysConst.mapFixed, fd: fd, offset: offset, call: "mmap(write view)")
        } catch {
            Reservation.release(base: hole, size: length)
            throw .system(error)
        }
    }

    public func decommit(_ run: CommittedRun) {
        Reservation.restore(address: run.address, length: run.length)
        if run.writeView != 0 && run.writeView != run.address { try? Sys.munmap(address: run.writeView, length: run.length) }
        try? Sys.fallocate(fd: run.fd, mode: SysConst.fallocPunchHole | SysConst.fallocKeepSize,
                           offset: run.fileOffset, length: run.length)
    }

    public func protect(_ run: CommittedRun, offset: Int, length: Int, _ protection: Protection) throws(ExecMemError) {
        try sys(try Sys.mprotect(address: run.address + UInt(offset), length: length, protection: protection.bits))
    }

    public func openWriteView(_ run: CommittedRun) throws(ExecMemError) -> UInt? {
        if run.writeView != 0 { return run.writeView }
        return try sys(try Sys.mmap(length: run.length, protection: [.read, .write], flags: SysConst.mapShared,
                                    fd: run.fd, offset: run.fileOffset, call: "mmap(transient write view)"))
    }

    public func closeWriteView(_ run: CommittedRun, view: UInt) {
        if view != run.address && view != run.writeView { try? Sys.munmap(address: view, length: run.length) }
    }

    public func hugeMappedBytes(of runs: [CommittedRun]) -> [Int] { smapsHugeMappedBytes(of: runs) }
}
