// Anonymous memory, for where memfd is unavailable (seccomp filters, old kernels). There is no second
// view: to write text or rodata, the whole run is flipped to rw-, written, and flipped back. The whole
// run, never a part of it, so a 2 MiB page is never split (mprotect of an entire anonymous THP keeps
// it). The price: other threads must not execute in a block while it is being written. Text and
// rodata are still never writable and executable at once.

import ExecMemSystem

public final class AnonymousBackend: ExecMemBackend {
    public let collapse: Bool

    public init(collapse: Bool = true) { self.collapse = collapse }

    public var name: String { "anonymous" }
    public var hasMemory: Bool { true }

    public func reserve(size: Int, at address: UInt?) throws(ExecMemError) -> UInt {
        try Reservation.reserve(size: size, at: address)
    }

    public func release(base: UInt, size: Int) { Reservation.release(base: base, size: size) }

    public func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType) throws(ExecMemError) -> CommittedRun {
        let address = rangeBase + UInt(offset)
        let wantsHuge = collapse && type.wantsHugePages
        var note: String? = !type.wantsHugePages ? "\(type) stays on 4 KiB pages: it is sealed page by page"
            : collapse ? nil : "collapse disabled by configuration"
        var huge = false
        _ = try sys(try Sys.mmap(address: address, length: length, protection: [.read, .write],
                                 flags: SysConst.mapPrivate | SysConst.mapAnonymous | SysConst.mapFixed))
        do throws(ExecMemError) {
            if wantsHuge {
                // Ask for THPs before the first touch, so the fill faults in 2 MiB pages directly.
                try? Sys.madvise(address: address, length: length, advice: SysConst.madvHugePage, name: "MADV_HUGEPAGE")
            }
            if type.fillByte != 0 || wantsHuge {
                UnsafeMutableRawPointer(bitPattern: address)!.initializeMemory(as: UInt8.self, repeating: type.fillByte, count: length)
            }
            if wantsHuge {
                do throws(SystemCallError) {
                    try Sys.madvise(address: address, length: length, advice: SysConst.madvCollapse, name: "MADV_COLLAPSE")
                    huge = true
                } catch {
                    note = "\(error); this run stays on 4 KiB pages"
                }
            }
            if type.runProtection != .readWrite {
                try sys(try Sys.mprotect(address: address, length: length, protection: type.runProtection.bits))
            }
        } catch {
            Reservation.restore(address: address, length: length)
            throw error
        }
        return CommittedRun(address: address, length: length, type: type,
                            writeView: type.runProtection == .readWrite ? address : 0, hugeMapped: huge, note: note)
    }

    public func decommit(_ run: CommittedRun) { Reservation.restore(address: run.address, length: run.length) }

    public func protect(_ run: CommittedRun, offset: Int, length: Int, _ protection: Protection) throws(ExecMemError) {
        try sys(try Sys.mprotect(address: run.address + UInt(offset), length: length, protection: protection.bits))
    }

    public func openWriteView(_ run: CommittedRun) throws(ExecMemError) -> UInt? {
        if run.type.runProtection != .readWrite {
            try sys(try Sys.mprotect(address: run.address, length: run.length, protection: [.read, .write]))
        }
        return run.address
    }

    public func closeWriteView(_ run: CommittedRun, view: UInt) {
        guard run.type.runProtection != .readWrite else { return }
        do {
            try Sys.mprotect(address: run.address, length: run.length, protection: run.type.runProtection.bits)
        } catch {
            // Leaving text writable would break W^X; a failure here is not recoverable.
            fatalError("ExecMem: cannot restore \(run.type.runProtection) on \(hex(run.address)): \(error)")
        }
    }

    public func hugeMappedBytes(of runs: [CommittedRun]) -> [Int] { smapsHugeMappedBytes(of: runs) }
}
