// Modules' thread-local variables live in one arena of the host's static TLS block (see
// CExecMemLoaderRuntime.h), at the same offset from the thread pointer in every thread. Each module
// gets a piece of it for as long as the process runs; initial values (.tdata) are copied into the
// loading thread's copy, so other threads that already exist see zeros (the limitation of giving
// static TLS to code loaded late, which glibc shares for dlopen'd initial-exec libraries).

import CExecMemLoaderRuntime
import Synchronization

enum TLSArena {
    private static let used = Mutex<Int>(0)
    static let size = Int(CEM_TLS_ARENA_SIZE)
    /// The arena's offset from the thread pointer.
    static let offsetFromThreadPointer = Int64(cem_tls_arena_offset())
    static let module = UInt64(CEM_TLS_ARENA_MODULE)

    /// Takes `bytes` aligned to `alignment`; returns the offset in the arena.
    static func take(_ bytes: Int, alignment: Int) throws(LoaderError) -> Int {
        let r: Result<Int, LoaderError> = used.withLock { u in
            let at = (u + alignment - 1) / alignment * alignment
            guard at + bytes <= size else { return .failure(.tlsExhausted(needed: bytes, available: max(0, size - at))) }
            u = at + bytes
            return .success(at)
        }
        return try r.get()
    }

    /// Returns a piece a load took and then failed with, when nothing was taken after it (the arena
    /// is a bump allocator: pieces of loaded modules last as long as the process).
    static func giveBack(at offset: Int, bytes: Int) {
        used.withLock { u in if u == offset + bytes { u = offset } }
    }

    /// Writes a module's initial TLS bytes into the arena's part of the host's TLS initialization
    /// image, which the C library copies into each thread it creates (threads that exist already
    /// keep what they have). Best effort: without the image, new threads start with zeros.
    static func setImage(at offset: Int, _ bytes: UnsafeRawBufferPointer) {
        _ = cem_tls_arena_set_image(offset, bytes.baseAddress, bytes.count)
    }

    static func setImage(at offset: Int, zeros count: Int) { _ = cem_tls_arena_set_image(offset, nil, count) }

    /// The calling thread's copy of the arena.
    static var base: UnsafeMutableRawPointer { cem_tls_arena() }

    /// The address of `__cxa_thread_atexit` (and `__cxa_thread_atexit_impl`) for modules: the
    /// runtime keeps their thread-local destructors, so that unloading a module runs the unloading
    /// thread's (the C library would run them at exit, on freed memory).
    static var threadAtexit: UInt { UInt(bitPattern: cem_cxa_thread_atexit_address()) }

    /// The address of `__tls_get_addr` for modules.
    static var getAddr: UInt { UInt(bitPattern: unsafeBitCast(cem_tls_get_addr as @convention(c) (UnsafeMutablePointer<UInt64>?) -> UnsafeMutableRawPointer?, to: UnsafeRawPointer.self)) }
}
