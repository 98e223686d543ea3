// Cross-thread visibility of freshly written code. On x86-64 the writing thread may run its new code
// at once; other threads need a core-serializing event first. membarrier(2)'s private expedited
// sync-core command delivers one to every core running this process; registration is per process
// and done once. Where the kernel lacks it, the plain expedited command still interrupts every such
// core (and an interrupt return serializes on x86-64); where that is missing too, the report says so.

import Dispatch
import ExecMemSystem
import Synchronization

public enum Membarrier {
    public enum Mode: String, Sendable, Codable {
        case syncCore = "membarrier(PRIVATE_EXPEDITED_SYNC_CORE)"
        case expedited = "membarrier(PRIVATE_EXPEDITED)"
        case unavailable = "none (membarrier unavailable)"
    }

    private static let state = Mutex<Mode?>(nil)
    private static let registrationStarted = Atomic<Bool>(false)

    /// Registers the process once and returns the mode it will use.
    @discardableResult
    public static func register() -> Mode {
        state.withLock { mode in
            if let mode { return mode }
            let supported = (try? Sys.membarrier(command: SysConst.membarrierQuery, name: "QUERY")) ?? 0
            var chosen = Mode.unavailable
            if supported & Int(SysConst.membarrierPrivateExpeditedSyncCore) != 0,
               (try? Sys.membarrier(command: SysConst.membarrierRegisterPrivateExpeditedSyncCore, name: "REGISTER_PRIVATE_EXPEDITED_SYNC_CORE")) != nil {
                chosen = .syncCore
            } else if supported & Int(SysConst.membarrierPrivateExpedited) != 0,
                      (try? Sys.membarrier(command: SysConst.membarrierRegisterPrivateExpedited, name: "REGISTER_PRIVATE_EXPEDITED")) != nil {
                chosen = .expedited
            }
            mode = chosen
            return chosen
        }
    }

    /// Registers the process now if that is cheap, or starts registering it on a background thread.
    /// The kernel waits for an RCU grace period when a process that already has several threads
    /// registers (24 ms measured here with three threads), and not when it has one (a few
    /// microseconds), so an allocator created in a busy process does not wait for it; `register()`
    /// and `synchronize()` wait for a registration in progress. Safe from any thread.
    public static func registerEarly() {
        // Once per process, and without waiting on `state`, which a registration in progress holds.
        if registrationStarted.exchange(true, ordering: .acquiringAndReleasing) { return }
        if threadCount() == 1 {
            register()
        } else {
            DispatchQueue.global(qos: .utility).async { register() }
        }
    }

    /// Threads in this process (`num_threads`, field 20 of /proc/self/stat); 0 when unreadable.
    static func threadCount() -> Int {
        guard let stat = try? Sys.readFile("/proc/self/stat"), let close = stat.lastIndex(of: UInt8(ascii: ")")) else { return 0 }
        // Fields 3 onwards follow the command name's closing parenthesis; num_threads is the 18th of them.
        let fields = stat[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 17 else { return 0 }
        return Int(String(decoding: fields[fields.startIndex + 17], as: UTF8.self)) ?? 0
    }

    /// Serializes every core running this process.
    @discardableResult
    public static func synchronize() -> Mode {
        let mode = register()
        switch mode {
        case .syncCore: _ = try? Sys.membarrier(command: SysConst.membarrierPrivateExpeditedSyncCore, name: "PRIVATE_EXPEDITED_SYNC_CORE")
        case .expedited: _ = try? Sys.membarrier(command: SysConst.membarrierPrivateExpedited, name: "PRIVATE_EXPEDITED")
        case .unavailable: break
        }
        return mode
    }
}
