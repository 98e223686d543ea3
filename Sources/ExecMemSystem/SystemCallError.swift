// The one error type of the system layer: which kernel call failed, with which errno, on what.
//
// Errno is captured right at the call (swift-system's `Errno`), so nothing in between can clobber it.
// EINTR is retried by `retryingEINTR`; EFAULT and EBADF are our own bugs and never reach callers
// as recoverable errors from the wrappers that can only see them through misuse.

#if canImport(Glibc)
import Glibc
#endif
import CExecMemShims
import SystemPackage

public struct SystemCallError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The C call that failed, as its man page names it (`mmap`, `madvise(MADV_COLLAPSE)`).
    public let call: String
    public let errno: Errno
    /// What the call was applied to (an address and length, a path).
    public let detail: String

    public init(call: String, errno: Errno, detail: String = "") {
        self.call = call
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        let what = detail.isEmpty ? "" : " (\(detail))"
        return "\(call) failed: \(errno) [errno \(errno.rawValue)]\(what)"
    }
}

/// The calling thread's errno, right after a failed call.
@inline(__always)
func lastErrno() -> Errno { Errno(rawValue: cem_errno()) }

/// Runs `body` until it does not fail with EINTR; any other failure becomes a `SystemCallError`.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(
    _ call: String, _ detail: @autoclosure () -> String = "", _ body: () -> T
) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let err = lastErrno()
        if err == .interrupted { continue }
        throw SystemCallError(call: call, errno: err, detail: detail())
    }
}

/// Hex rendering used in error details and reports.
public func hex(_ value: UInt) -> String { "0x" + String(value, radix: 16) }
