// The calls the code registry's sinks make: files perf reads (a map file, a jitdump file and its
// marker mapping), the monotonic clock jitdump stamps records with, and the ids records carry. Also
// mremap(2) with an old size of 0, which maps the same shared pages a second time.

#if canImport(Glibc)
import Glibc
#endif
import CExecMemShims

extension Sys {
    /// open(2) with O_CLOEXEC added; `mode` applies when `flags` has O_CREAT.
    public static func open(_ path: String, flags: Int32, mode: UInt32 = 0o644) throws(SystemCallError) -> Int32 {
        try retryingEINTR("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode_t(mode)) }
    }

    /// write(2) of all of `bytes`, retrying short writes and EINTR.
    public static func write(fd: Int32, _ bytes: UnsafeRawBufferPointer, what: String) throws(SystemCallError) {
        var done = 0
        while done < bytes.count {
            let n = try retryingEINTR("write", what) { Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done) }
            if n == 0 { throw SystemCallError(call: "write", errno: .ioError, detail: "\(what): wrote nothing") }
            done += n
        }
    }

    /// mremap(2) with an old size of 0: a second mapping of the same pages of a shared mapping,
    /// at `to` (MREMAP_FIXED) or where the kernel chooses. Protections are those of the source.
    public static func mapAgain(_ source: UInt, length: Int, to: UInt? = nil) throws(SystemCallError) -> UInt {
        let p = cem_mremap_again(UnsafeMutableRawPointer(bitPattern: source), length, UnsafeMutableRawPointer(bitPattern: to ?? 0))
        if p == MAP_FAILED || p == nil {
            throw SystemCallError(call: "mremap", errno: lastErrno(), detail: "second view of \(hex(source)), length \(length)")
        }
        return UInt(bitPattern: p)
    }

    /// clock_gettime(CLOCK_MONOTONIC) in nanoseconds: the clock `perf record -k mono` stamps samples with.
    public static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    /// getpid(2).
    public static var processID: Int32 { getpid() }

    /// gettid(2).
    public static var threadID: Int32 { Int32(cem_gettid()) }
}
