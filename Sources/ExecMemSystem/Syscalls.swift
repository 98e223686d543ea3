// One Swift wrapper per kernel call ExecMem makes. Each names its C call in its doc comment and in the
// error it throws. Nothing here has policy; the allocator's backends decide what to call and when.

#if canImport(Glibc)
import Glibc
#endif
import CExecMemShims
import SystemPackage

/// Page protections by bit. `Protection` in the allocator names them by role; this is the raw form.
public struct MemoryProtection: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let none = MemoryProtection([])
    public static let read = MemoryProtection(rawValue: PROT_READ)
    public static let write = MemoryProtection(rawValue: PROT_WRITE)
    public static let execute = MemoryProtection(rawValue: PROT_EXEC)

    /// `r-x`-style rendering, as `/proc/self/maps` shows it.
    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.execute) ? "x" : "-")
    }

    /// W^X: a protection that is writable and executable at once is never requested.
    @inline(__always)
    func checkWX() {
        precondition(!(contains(.write) && contains(.execute)), "W^X: refusing a writable and executable mapping")
    }
}

public enum Sys {
    // MARK: - Memory mappings

    /// mmap(2). `address` is a hint unless `flags` has MAP_FIXED or MAP_FIXED_NOREPLACE.
    public static func mmap(
        address: UInt = 0, length: Int, protection: MemoryProtection, flags: Int32,
        fd: Int32 = -1, offset: Int = 0, call: String = "mmap"
    ) throws(SystemCallError) -> UInt {
        protection.checkWX()
        let p = Glibc.mmap(UnsafeMutableRawPointer(bitPattern: address), length, protection.rawValue, flags, fd, off_t(offset))
        if p == MAP_FAILED || p == nil {
            throw SystemCallError(
                call: call, errno: lastErrno(),
                detail: "address \(hex(address)), length \(length), \(protection), flags \(hex(UInt(UInt32(bitPattern: flags))))")
        }
        return UInt(bitPattern: p)
    }

    /// munmap(2).
    public static func munmap(address: UInt, length: Int) throws(SystemCallError) {
        if Glibc.munmap(UnsafeMutableRawPointer(bitPattern: address), length) != 0 {
            throw SystemCallError(call: "munmap", errno: lastErrno(), detail: "\(hex(address)), \(length)")
        }
    }

    /// mprotect(2).
    public static func mprotect(address: UInt, length: Int, protection: MemoryProtection) throws(SystemCallError) {
        protection.checkWX()
        if Glibc.mprotect(UnsafeMutableRawPointer(bitPattern: address), length, protection.rawValue) != 0 {
            throw SystemCallError(call: "mprotect", errno: lastErrno(), detail: "\(hex(address)), \(length), \(protection)")
        }
    }

    /// madvise(2). `name` is the advice's name for the error (`MADV_COLLAPSE`).
    public static func madvise(address: UInt, length: Int, advice: Int32, name: String) throws(SystemCallError) {
        _ = try retryingEINTR("madvise(\(name))", "\(hex(address)), \(length)") {
            Glibc.madvise(UnsafeMutableRawPointer(bitPattern: address), length, advice)
        }
    }

    // MARK: - memfd

    /// memfd_create(2).
    public static func memfdCreate(name: String, flags: UInt32) throws(SystemCallError) -> Int32 {
        let fd = cem_memfd_create(name, flags)
        if fd < 0 { throw SystemCallError(call: "memfd_create", errno: lastErrno(), detail: name) }
        return fd
    }

    /// ftruncate(2).
    public static func ftruncate(fd: Int32, length: Int) throws(SystemCallError) {
        _ = try retryingEINTR("ftruncate", "fd \(fd), \(length)") { Glibc.ftruncate(fd, off_t(length)) }
    }

    /// fallocate(2).
    public static func fallocate(fd: Int32, mode: Int32, offset: Int, length: Int) throws(SystemCallError) {
        _ = try retryingEINTR("fallocate", "fd \(fd), mode \(mode), offset \(hex(UInt(offset))), \(length)") {
            cem_fallocate(fd, mode, off_t(offset), off_t(length))
        }
    }

    /// close(2). EINTR is not retried: Linux has released the descriptor either way.
    public static func close(fd: Int32) {
        _ = Glibc.close(fd)
    }

    // MARK: - Other calls

    /// membarrier(2).
    @discardableResult
    public static func membarrier(command: Int32, name: String) throws(SystemCallError) -> Int {
        let r = cem_membarrier(command, 0)
        if r < 0 { throw SystemCallError(call: "membarrier(\(name))", errno: lastErrno()) }
        return r
    }

    /// readlink(2) of a path such as `/proc/self/exe`.
    public static func readlink(_ path: String) throws(SystemCallError) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = Glibc.readlink(path, &buffer, buffer.count - 1)
        if n < 0 { throw SystemCallError(call: "readlink", errno: lastErrno(), detail: path) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// sysconf(_SC_PAGESIZE).
    public static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    // MARK: - Files

    /// Reads a whole file with open(2)/read(2): straight into an array of the size fstat(2) reports
    /// (one copy, from the page cache), then on in chunks for files that report less (`/proc` and
    /// `/sys` files say 0) or grew. A file of more than `limit` bytes (a sparse file of a terabyte,
    /// `/dev/zero`) is an error (EFBIG) before more than `limit` bytes are read or allocated: the
    /// array's allocation would otherwise trap, or the reads go on until memory runs out.
    public static func readFile(_ path: String, limit: Int = .max) throws(SystemCallError) -> [UInt8] {
        let fd = try retryingEINTR("open", path) { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
        defer { Sys.close(fd: fd) }
        func tooLarge(_ what: String) -> SystemCallError {
            SystemCallError(call: "read", errno: .fileTooLarge, detail: "\(path): \(what), more than the \(limit) bytes read at most")
        }
        var st = stat()
        let size = fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG ? Int(st.st_size) : 0
        guard size <= limit else { throw tooLarge("\(size) bytes") }
        var failure: SystemCallError? = nil
        var out = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            while count < size {
                let n = Glibc.read(fd, buffer.baseAddress! + count, size - count)
                if n < 0 && errno == EINTR { continue }
                if n < 0 { failure = SystemCallError(call: "read", errno: lastErrno(), detail: path); break }
                if n == 0 { break }
                count += n
            }
        }
        if let failure { throw failure }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { chunk.deallocate() }
        while true {
            let room = limit - out.count  // one byte more than room tells a file of exactly `limit` from a longer one
            let n = try retryingEINTR("read", path) { Glibc.read(fd, chunk.baseAddress, room < chunk.count ? room + 1 : chunk.count) }
            if n == 0 { break }
            guard n <= limit - out.count else { throw tooLarge("at least \(out.count + n) bytes") }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// `readFile` as text.
    public static func readText(_ path: String) throws(SystemCallError) -> String {
        String(decoding: try readFile(path), as: UTF8.self)
    }

    /// Writes bytes to `path` at `offset` with pwrite(2), for `/proc/self/mem`-style files.
    public static func pwriteFile(_ path: String, bytes: [UInt8], offset: UInt) throws(SystemCallError) {
        let fd = try retryingEINTR("open", path) { Glibc.open(path, O_RDWR | O_CLOEXEC) }
        defer { Sys.close(fd: fd) }
        let n = try retryingEINTR("pwrite", "\(path) at \(hex(offset))") {
            bytes.withUnsafeBytes { b in Glibc.pwrite(fd, b.baseAddress, b.count, off_t(Int64(bitPattern: UInt64(offset)))) }
        }
        if n != bytes.count {
            throw SystemCallError(call: "pwrite", errno: .ioError, detail: "short write \(n) of \(bytes.count) at \(hex(offset))")
        }
    }
}

/// Constants Swift cannot see, re-exported with Swift types.
public enum SysConst {
    public static let mapPrivate: Int32 = MAP_PRIVATE
    public static let mapShared: Int32 = MAP_SHARED
    public static let mapAnonymous: Int32 = MAP_ANONYMOUS
    public static let mapFixed: Int32 = MAP_FIXED
    public static let mapFixedNoReplace: Int32 = cem_MAP_FIXED_NOREPLACE
    public static let mapNoReserve: Int32 = cem_MAP_NORESERVE
    public static let madvHugePage: Int32 = cem_MADV_HUGEPAGE
    public static let madvPopulateWrite: Int32 = cem_MADV_POPULATE_WRITE
    public static let madvCollapse: Int32 = cem_MADV_COLLAPSE
    public static let madvRemove: Int32 = MADV_REMOVE
    public static let mfdCloexec: UInt32 = cem_MFD_CLOEXEC
    public static let mfdHugeTLB: UInt32 = cem_MFD_HUGETLB
    public static let mfdHuge2MB: UInt32 = cem_MFD_HUGE_2MB
    public static let fallocKeepSize: Int32 = cem_FALLOC_FL_KEEP_SIZE
    public static let fallocPunchHole: Int32 = cem_FALLOC_FL_PUNCH_HOLE
    public static let membarrierQuery: Int32 = cem_MEMBARRIER_CMD_QUERY
    public static let membarrierPrivateExpedited: Int32 = cem_MEMBARRIER_CMD_PRIVATE_EXPEDITED
    public static let membarrierRegisterPrivateExpedited: Int32 = cem_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED
    public static let membarrierPrivateExpeditedSyncCore: Int32 = cem_MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE
    public static let membarrierRegisterPrivateExpeditedSyncCore: Int32 = cem_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE
}
