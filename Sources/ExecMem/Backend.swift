// Backends: the only code that talks to the kernel about memory. One narrow protocol (reserve a range,
// commit a run of blocks for a type, open and close a write view, protect, decommit, release), one
// implementation per backing. The allocator core above it is pure bookkeeping, which is what lets the
// simulator run the same core over a model of page tables.
//
//   range   [base ..................................................... base + size)   PROT_NONE
//   commit      [ run: n x 2 MiB, one protection for the whole run ]
//   write view  a second mapping of the same pages, rw- (memfd), or the run itself flipped rw- (anonymous)

import ExecMemSystem

/// A committed run of blocks as the backend made it. The allocator keeps it and hands it back.
public struct CommittedRun: Sendable {
    /// Run view address (2 MiB aligned) and length (a multiple of 2 MiB).
    public let address: UInt
    public let length: Int
    public let type: ExecMemType
    /// File descriptor and offset of the backing pages (memfd backings), -1 otherwise.
    public let fd: Int32
    public let fileOffset: Int
    /// A persistent writable view of the whole run: a second mapping (memfd, persistent mode), or the
    /// run view itself for rw- types. When it is nonzero the allocator writes there and never calls
    /// `openWriteView`; 0 when views are transient, flipped (anonymous text) or absent (simulated).
    public let writeView: UInt
    /// Whether the backend believes the run is mapped by 2 MiB pages; smaps has the final word.
    public let hugeMapped: Bool
    /// Why it is not, when it is not (MADV_COLLAPSE refused, hugetlb pool empty, ...).
    public let note: String?
    /// Bytes from the start of the run that hold the type's fill byte and may be handed out: `length`,
    /// unless the backend left the fill of the rest to `finishCommit`.
    public let preparedLength: Int
    /// Whether `finishCommit` still has work to do on this run: the fill of `[preparedLength, length)`,
    /// the collapse to 2 MiB pages, or both.
    public let finishPending: Bool

    /// A run as a backend describes it; `preparedLength` nil means the whole run.
    public init(address: UInt, length: Int, type: ExecMemType, fd: Int32 = -1, fileOffset: Int = 0,
                writeView: UInt = 0, hugeMapped: Bool, note: String? = nil,
                preparedLength: Int? = nil, finishPending: Bool = false) {
        self.address = address; self.length = length; self.type = type; self.fd = fd
        self.fileOffset = fileOffset; self.writeView = writeView; self.hugeMapped = hugeMapped; self.note = note
        self.preparedLength = preparedLength ?? length; self.finishPending = finishPending
    }

    /// The same run, once `finishCommit` is done with it.
    func finished(preparedLength: Int, hugeMapped: Bool, note: String?) -> CommittedRun {
        CommittedRun(address: address, length: length, type: type, fd: fd, fileOffset: fileOffset, writeView: writeView,
                     hugeMapped: hugeMapped, note: note, preparedLength: preparedLength, finishPending: false)
    }
}

public protocol ExecMemBackend: AnyObject, Sendable {
    /// Short name for reports (`memfd`, `hugetlb`, `anonymous`, `simulated`).
    var name: String { get }
    /// True when committed runs are real memory the allocator may read and fill.
    var hasMemory: Bool { get }

    /// Reserves `size` bytes (PROT_NONE, MAP_NORESERVE) exactly at `address`, or anywhere 2 MiB aligned
    /// when `address` is nil. Returns the base.
    func reserve(size: Int, at address: UInt?) throws(ExecMemError) -> UInt
    /// Releases a whole range; every run in it must have been decommitted.
    func release(base: UInt, size: Int)

    /// Commits `[rangeBase + offset, + length)` for `type`: maps it with the type's run protection,
    /// filled with the type's fill byte, collapsed to 2 MiB pages where possible.
    func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType) throws(ExecMemError) -> CommittedRun
    /// Commits like `commit(rangeBase:rangeSize:offset:length:type:)`, but need only prepare the first
    /// `prepare` bytes before it returns (`CommittedRun.preparedLength` says how many it did); the rest
    /// of the fill and the collapse to 2 MiB pages are left to `finishCommit`, which the allocator runs
    /// off the caller's path. Backends that always prepare everything keep the default, which does.
    func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType, prepare: Int) throws(ExecMemError) -> CommittedRun
    /// Does what `commit(..., prepare:)` left undone on `run`: fills `[preparedLength, length)` with the
    /// type's fill byte and collapses the run (and its write view) to 2 MiB pages. Returns the run as it
    /// now is, `finishPending` false. Called once per run, on any thread, while the allocator may write
    /// into the prepared part and other threads run code in it; never concurrently with `decommit`.
    func finishCommit(_ run: CommittedRun) -> CommittedRun
    /// Returns a run's memory and restores the reservation in its place.
    func decommit(_ run: CommittedRun)
    /// Sets the run-view protection of `[offset, offset + length)` of a run, whole pages (sealing and
    /// unsealing ro-after-init allocations).
    func protect(_ run: CommittedRun, offset: Int, length: Int, _ protection: Protection) throws(ExecMemError)

    /// Opens a writable view of the whole run and returns the address of its first byte, or nil when
    /// the backend has no bytes (simulated). Every open is paired with one `closeWriteView`.
    func openWriteView(_ run: CommittedRun) throws(ExecMemError) -> UInt?
    func closeWriteView(_ run: CommittedRun, view: UInt)

    /// Bytes of each run mapped by 2 MiB entries, read back from the kernel (or the model).
    func hugeMappedBytes(of runs: [CommittedRun]) -> [Int]
}

extension ExecMemBackend {
    /// Prepares the whole run (backends without deferred work).
    public func commit(rangeBase: UInt, rangeSize: Int, offset: Int, length: Int, type: ExecMemType, prepare: Int) throws(ExecMemError) -> CommittedRun {
        try commit(rangeBase: rangeBase, rangeSize: rangeSize, offset: offset, length: length, type: type)
    }

    /// Nothing is ever left to finish (backends without deferred work).
    public func finishCommit(_ run: CommittedRun) -> CommittedRun { run }

    /// Reads `/proc/self/smaps` once and apportions each mapping's 2 MiB-mapped bytes to the runs it
    /// overlaps. A mapping that merged runs of one type (same memfd, consecutive offsets) is split
    /// exactly; a merged anonymous mapping of two types is split in proportion to the overlap.
    public func smapsHugeMappedBytes(of runs: [CommittedRun]) -> [Int] {
        guard !runs.isEmpty, let entries = try? Smaps.read() else { return runs.map { _ in 0 } }
        let lo = runs.map(\.address).min()!, hi = runs.map { $0.address + UInt($0.length) }.max()!
        let relevant = entries.filter { $0.mapping.start < hi && $0.mapping.end > lo && $0.hugeMappedBytes > 0 }
        return runs.map { run in
            let start = run.address, end = run.address + UInt(run.length)
            var total = 0.0
            for e in relevant where e.mapping.start < end && e.mapping.end > start {
                let overlap = min(end, e.mapping.end) - max(start, e.mapping.start)
                total += Double(e.hugeMappedBytes) * Double(overlap) / Double(e.mapping.length)
            }
            return min(run.length, Int(total.rounded()))
        }
    }
}

/// Maps a role to the bits the kernel takes.
extension Protection {
    var bits: MemoryProtection {
        switch self {
        case .run: [.read, .execute]
        case .readOnly: [.read]
        case .readWrite: [.read, .write]
        case .none: .none
        }
    }
}

// MARK: - Reservations shared by the real backends

enum Reservation {
    /// mmap(PROT_NONE, MAP_NORESERVE) at `address` (MAP_FIXED_NOREPLACE) or anywhere, 2 MiB aligned.
    static func reserve(size: Int, at address: UInt?) throws(ExecMemError) -> UInt {
        let flags = SysConst.mapPrivate | SysConst.mapAnonymous | SysConst.mapNoReserve
        if let address {
            let got = try sys(try Sys.mmap(address: address, length: size, protection: .none,
                                           flags: flags | SysConst.mapFixedNoReplace, call: "mmap(MAP_FIXED_NOREPLACE)"))
            if got != address {  // kernels before 4.17 treat the flag as a hint
                try? Sys.munmap(address: got, length: size)
                throw .placementFailed("the kernel placed the range at \(hex(got)), not \(hex(address))")
            }
            return got
        }
        // Over-reserve by one block and trim both ends to get 2 MiB alignment.
        let block = ExecMemGeometry.blockSize
        let raw = try sys(try Sys.mmap(length: size + block, protection: .none, flags: flags))
        let base = (raw + UInt(block) - 1) & ~ExecMemGeometry.blockMask
        if base > raw { try? Sys.munmap(address: raw, length: Int(base - raw)) }
        let tail = raw + UInt(size + block) - (base + UInt(size))
        if tail > 0 { try? Sys.munmap(address: base + UInt(size), length: Int(tail)) }
        return base
    }

    /// Puts `[address, + length)` back to reserved PROT_NONE, dropping whatever was mapped there.
    static func restore(address: UInt, length: Int) {
        let flags = SysConst.mapPrivate | SysConst.mapAnonymous | SysConst.mapNoReserve | SysConst.mapFixed
        do {
            _ = try Sys.mmap(address: address, length: length, protection: .none, flags: flags)
        } catch {
            // Failing to map over our own reservation means the address space is corrupt.
            fatalError("ExecMem: cannot restore the reservation at \(hex(address)): \(error)")
        }
    }

    static func release(base: UInt, size: Int) {
        try? Sys.munmap(address: base, length: size)
    }
}

/// Runs system calls, turning their error into the allocator's.
@inline(__always)
func sys<T>(_ body: @autoclosure () throws(SystemCallError) -> T) throws(ExecMemError) -> T {
    do { return try body() } catch { throw .system(error) }
}
