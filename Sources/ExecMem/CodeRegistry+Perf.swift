// perf's two ways to name JIT code.
//
// The map file (`/tmp/perf-<pid>.map`, tools/perf/Documentation/jit-interface.txt): one line per
// function, `START SIZE name`, both in hex. perf reads it at report time for samples in anonymous
// executable memory, which is why the default backing maps its views as shared anonymous memory
// (perf shows `/dev/zero (deleted)`, which it treats as anonymous) and not as a memfd (`memfd:...`,
// which perf takes for a file it cannot open).
//
// The jitdump file (`jit-<pid>.dump`, tools/perf/Documentation/jitdump-specification.txt): a header,
// then one JIT_CODE_LOAD record per function carrying its bytes, so `perf inject --jit` can write an
// ELF file per function and `perf annotate` can disassemble it. perf finds the file through a mapping
// of it with execute permission (the marker), read-only here. Timestamps are CLOCK_MONOTONIC, which
// `perf record -k mono` uses. Neither format can say "unloaded": a later load at the same address
// supersedes the earlier one. A load whose code has call-frame information is preceded by a
// JIT_CODE_UNWINDING_INFO record (CodeRegistry+PerfUnwind.swift) so `perf --call-graph=dwarf` can
// walk through it; `EXECMEM_PERF_UNWIND=0` leaves those records out (for comparisons).

#if canImport(Glibc)
import Glibc
#endif
import ExecMemSystem

struct PerfSink: ~Copyable {
    private var mapFD: Int32 = -1
    private var dumpFD: Int32 = -1
    private var mapPending: [UInt8] = []
    private var dumpPending: [UInt8] = []
    private var codeIndex: UInt64 = 0
    private(set) var mapPath: String?
    private(set) var dumpPath: String?
    /// Why a sink stopped (it stops on its first failure rather than fail every registration).
    private(set) var failures: [String] = []

    static let jitMagic: UInt32 = 0x4A69_5444  // "JiTD"
    static let jitCodeLoad: UInt32 = 0
    static let emX86_64: UInt32 = 62
    /// Whether loads carry unwinding records (`EXECMEM_PERF_UNWIND=0` switches them off).
    static let unwindRecords = getenvString("EXECMEM_PERF_UNWIND") != "0"

    /// The name perf shows: the symbol, then `[owner]` as kallsyms shows a module's symbols.
    /// Control characters become `?`: the map file is one line per function, and a name (a module's
    /// symbol, its file's name) with a newline would add lines naming whatever it likes.
    static func displayName(_ s: CodeSymbol, _ r: CodeRegistration) -> String {
        let name = r.owner.map { "\(s.name) [\($0)]" } ?? s.name
        guard name.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { return name }
        return String(String.UnicodeScalarView(name.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
    }

    // MARK: - Map file

    mutating func map(_ r: CodeRegistration) {
        if mapFD < 0 && !openMap() { return }
        for s in r.symbols {
            mapPending.append(contentsOf: "\(String(s.address, radix: 16)) \(String(max(s.size, 1), radix: 16)) \(Self.displayName(s, r))\n".utf8)
        }
    }

    private mutating func openMap() -> Bool {
        guard !failures.contains(where: { $0.hasPrefix("perf map") }) else { return false }
        let path = "/tmp/perf-\(Sys.processID).map"
        do throws(SystemCallError) {
            mapFD = try Sys.open(path, flags: O_WRONLY | O_CREAT | O_APPEND)
            mapPath = path
            return true
        } catch {
            failures.append("perf map: \(error)")
            return false
        }
    }

    // MARK: - jitdump

    mutating func dump(_ r: CodeRegistration) {
        if dumpFD < 0 && !openDump() { return }
        let pid = UInt32(bitPattern: Sys.processID), tid = UInt32(bitPattern: Sys.threadID)
        let now = Sys.monotonicNanoseconds()
        // Parsed once per registration, and only here: nothing is spent on frames with jitdump off.
        let unwinding: [[UInt8]?] = Self.unwindRecords ? PerfUnwindInfo.frames(of: r).map { f in
            PerfUnwindInfo.records(for: r.symbols.map { ($0, max($0.size, 1)) }, cies: f.cies, fdes: f.fdes, timestamp: now)
        } ?? [] : []
        for (i, s) in r.symbols.enumerated() {
            var name = Self.displayName(s, r)
            let size = max(s.size, 1)
            let nameBytes = name.utf8.count + 1
            if i < unwinding.count, let u = unwinding[i] { dumpPending.append(contentsOf: u) }
            // The record is written straight into the pending bytes (one copy of the code, not two).
            dumpPending.appendLE(Self.jitCodeLoad); dumpPending.appendLE(UInt32(56 + nameBytes + size)); dumpPending.appendLE(now)
            dumpPending.appendLE(pid); dumpPending.appendLE(tid)
            dumpPending.appendLE(UInt64(s.address)); dumpPending.appendLE(UInt64(s.address)); dumpPending.appendLE(UInt64(size))
            dumpPending.appendLE(codeIndex)
            name.withUTF8 { dumpPending.append(contentsOf: $0) }
            dumpPending.append(0)
            dumpPending.append(contentsOf: UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: s.address), count: size))
            codeIndex += 1
        }
    }

    private mutating func openDump() -> Bool {
        guard !failures.contains(where: { $0.hasPrefix("jitdump") }) else { return false }
        let dir = getenvString("JITDUMPDIR") ?? getenvString("TMPDIR") ?? "/tmp"
        let path = "\(dir)/jit-\(Sys.processID).dump"
        do throws(SystemCallError) {
            let fd = try Sys.open(path, flags: O_RDWR | O_CREAT | O_TRUNC)
            var header: [UInt8] = []
            header.appendLE(Self.jitMagic); header.appendLE(UInt32(1)); header.appendLE(UInt32(40)); header.appendLE(Self.emX86_64)
            header.appendLE(UInt32(0)); header.appendLE(UInt32(bitPattern: Sys.processID)); header.appendLE(Sys.monotonicNanoseconds())
            header.appendLE(UInt64(0))
            let r: Result<Void, SystemCallError> = header.withUnsafeBytes { b in Result { () throws(SystemCallError) in try Sys.write(fd: fd, b, what: path) } }
            try r.get()
            // The marker: perf record sees this mapping and perf inject --jit opens the file it names.
            _ = try Sys.mmap(length: Sys.pageSize, protection: [.read, .execute], flags: SysConst.mapPrivate, fd: fd, call: "mmap(jitdump marker)")
            dumpFD = fd
            dumpPath = path
            return true
        } catch {
            failures.append("jitdump: \(error)")
            return false
        }
    }

    // MARK: - Writing

    /// Bytes waiting to be written.
    var pending: Int { mapPending.count + dumpPending.count }
    private var lastWrite: UInt64 = 0

    /// Writes what is pending when `force`d, when 64 KiB are pending, or when the last write is 1 ms
    /// old: a burst of loads costs a write per millisecond, not one per load. Returns whether bytes
    /// stay pending (the registry then schedules a forced flush 2 ms later, and one runs at exit).
    mutating func flush(force: Bool = false) -> Bool {
        guard pending > 0 else { return false }
        let now = Sys.monotonicNanoseconds()
        if !force && pending < 1 << 16 && now &- lastWrite < 1_000_000 { return true }
        lastWrite = now
        if !mapPending.isEmpty {
            if let e = Self.write(mapFD, mapPending, "perf map") { failures.append(e) }
            mapPending.removeAll(keepingCapacity: mapPending.count < 1 << 20)
        }
        if !dumpPending.isEmpty {
            if let e = Self.write(dumpFD, dumpPending, "jitdump") { failures.append(e) }
            dumpPending.removeAll(keepingCapacity: dumpPending.count < 1 << 20)
        }
        return false
    }

    private static func write(_ fd: Int32, _ bytes: [UInt8], _ what: String) -> String? {
        guard fd >= 0 else { return nil }
        do throws(SystemCallError) {
            let r: Result<Void, SystemCallError> = bytes.withUnsafeBytes { b in Result { () throws(SystemCallError) in try Sys.write(fd: fd, b, what: what) } }
            try r.get()
            return nil
        } catch {
            return "\(what): \(error)"
        }
    }
}

extension Array where Element == UInt8 {
    @inline(__always)
    mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }
}
