// Monotonic nanoseconds from clock_gettime(CLOCK_MONOTONIC), without Foundation.

#if canImport(Glibc)
import Glibc
#endif

enum DispatchTimeShim {
    static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
