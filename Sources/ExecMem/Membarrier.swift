// Cross-thread visibility of freshly written code. On x86-64 the writing thread may run its new code
// at once; other threads need a core-serializing event first. membarrier(2)'s private expedited
// sync-core command delivers one to every core running this process; registration is per process
// and done once. Where the kernel lacks it, the plain expedited command still interrupts every such
// core (and an interrupt return serializes on x86-64); where that is missing too, the report says so.

import ExecMemSystem
import Synchronization

public enum Membarrier {
    public enum Mode: String, Sendable, Codable {
        case syncCore = "membarrier(PRIVATE_EXPEDITED_SYNC_CORE)"
        case expedited = "membarrier(PRIVATE_EXPEDITED)"
        case unavailable = "none (membarrier unavailable)"
    }

    private static let state = Mutex<Mode?>(nil)

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
