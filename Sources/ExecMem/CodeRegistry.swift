// The code registry: Linux's kallsyms and ORC tables for the code ExecMem holds. Every client
// registers each piece of code when it becomes visible (a BPF program, a module's functions, a hook
// stub, a probe slot) and removes it before the memory is freed; the allocator also drops whatever is
// still registered in a range it frees. From the registry:
//
//   symbolize(address)   name + offset, for crash reports and tests
//   perf                 /tmp/perf-<pid>.map lines and a jitdump file (JIT_CODE_LOAD with the bytes)
//   gdb                  the GDB JIT interface: one in-memory symbol file per 2 MiB block, updated in
//                        place and re-announced once per batch, plus one per debug object (a module's
//                        DWARF, relocated)
//   unwind               libgcc's __register_frame: a client's own .eh_frame as is, and synthesized
//                        frames (JIT code, stubs) gathered into one .eh_frame per block
//   crashTable           fixed-size seqlock slots a signal handler reads without any lock
//
// Sinks are off unless switched on (configuration, `EXECMEM_PERF`, `EXECMEM_GDB`), except `unwind`,
// which C++ exceptions need to be correct. Costs when on are per registration and amortized O(1);
// `batch` defers the per-block announcements to its end, so loading 10,000 programs in one batch
// announces each touched block to GDB once.
//
// Locking: one lock covers the entries and every sink; sinks run under it, so what GDB and libgcc see
// changes in registration order.

#if canImport(Glibc)
import Glibc
#endif
import CExecMemDebug
import Dispatch
import ExecMemSystem
import Synchronization

// MARK: - What clients register

/// What a piece of registered code is; it decides nothing but the name sinks show for it.
public enum CodeKind: String, Sendable, CaseIterable, Codable {
    /// A JIT-compiled eBPF program (`bpf_prog_<tag>_<name>`).
    case bpfProgram
    /// A JIT's shared or out-of-line stub (entry stub, helper thunks).
    case jitStub
    /// Functions of a loaded module (named by their symbols, owned by the module).
    case moduleFunction
    /// An entry-hook trampoline (`execmem_hook_<function>`).
    case hook
    /// An instruction-probe slot (`execmem_probe_<function>+<offset>`).
    case probe
    /// A live patch's trampoline or replacement.
    case patch
    /// Anything else a client names.
    case other
}

/// One named function inside a registration.
public struct CodeSymbol: Sendable, Hashable {
    /// The name perf, gdb and backtraces show.
    public var name: String
    /// First byte of the function.
    public var address: UInt
    /// Bytes the function covers (at least 1).
    public var size: Int

    /// A symbol of `size` bytes at `address`.
    public init(name: String, address: UInt, size: Int) {
        self.name = name; self.address = address; self.size = size
    }
}

/// Call-frame information for one stretch of synthesized code, as DWARF CFA instructions.
public struct CodeFrame: Sendable, Hashable {
    /// First covered byte, as an offset from the registration's address.
    public var offset: Int
    /// Bytes covered.
    public var length: Int
    /// DW_CFA instructions, run from the initial state every x86-64 function starts in: CFA = rsp + 8,
    /// return address at CFA - 8. `CFIProgram` builds them.
    public var instructions: [UInt8]

    /// A frame covering `[offset, offset + length)` with the given instructions.
    public init(offset: Int, length: Int, instructions: [UInt8]) {
        self.offset = offset; self.length = length; self.instructions = instructions
    }
}

/// Where the unwinder learns the frames of registered code.
public enum CodeUnwind: Sendable, Hashable {
    /// A complete `.eh_frame` (CIEs, FDEs, then a zero word) at this address, kept alive and
    /// unchanged by the client until it unregisters (a loaded module's own, relocated in place).
    case section(UInt)
    /// Frames the registry assembles into its per-block `.eh_frame` (JIT code, stubs, slots).
    case frames([CodeFrame])
}

/// Everything a client says about one piece of code.
///
/// Thread safety: a value, safe to share; the addresses it names must stay mapped while it is
/// registered (jitdump copies the bytes at registration).
public struct CodeRegistration: Sendable {
    /// The piece's name: a program's or stub's symbol, or a module's name for a module's text.
    public var name: String
    /// What the code is.
    public var kind: CodeKind
    /// First byte (run address).
    public var address: UInt
    /// Bytes covered; the registry drops the registration when any allocation overlapping it is freed.
    public var size: Int
    /// The module (or program set) this belongs to, shown after the symbol: `name [owner]`.
    public var owner: String?
    /// Functions inside; empty means one function named `name` covering the whole piece.
    public var symbols: [CodeSymbol]
    /// A complete ELF symbol file for GDB (a module's symbols and relocated DWARF). When present, GDB
    /// gets this file instead of the piece's symbols in its block's file.
    public var debugObject: [UInt8]?
    /// Call-frame information, if the code has frames an unwinder must walk.
    public var unwind: CodeUnwind?

    /// A registration; see each property.
    public init(name: String, kind: CodeKind, address: UInt, size: Int, owner: String? = nil,
                symbols: [CodeSymbol] = [], debugObject: [UInt8]? = nil, unwind: CodeUnwind? = nil) {
        self.name = name; self.kind = kind; self.address = address; self.size = size; self.owner = owner
        self.symbols = symbols; self.debugObject = debugObject; self.unwind = unwind
    }
}

/// Names a live registration; unregistering one twice, or after the allocator dropped it, does nothing.
public struct CodeHandle: Hashable, Sendable {
    /// The registry's id for it (never reused).
    public let id: UInt64
}

/// What an address is: the symbol around it, the offset into it, and who owns it.
public struct CodeLocation: Sendable, Hashable, CustomStringConvertible {
    /// The symbol's name.
    public var symbol: String
    /// Bytes from the symbol's first byte.
    public var offset: Int
    /// The registration's owner, if any.
    public var owner: String?
    /// The registration's kind.
    public var kind: CodeKind

    /// `symbol+0x1c [owner]`.
    public var description: String {
        symbol + (offset == 0 ? "" : "+0x" + String(offset, radix: 16)) + (owner.map { " [\($0)]" } ?? "")
    }
}

/// Which sinks the registry feeds.
public struct CodeSinks: OptionSet, Sendable, Hashable, Codable {
    public let rawValue: Int
    /// A sink set from its bits.
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// `/tmp/perf-<pid>.map`, perf's simple format (one line per function, append-only).
    public static let perfMap = CodeSinks(rawValue: 1 << 0)
    /// `jit-<pid>.dump` in `$JITDUMPDIR` or the temporary directory, for `perf inject --jit`.
    public static let jitdump = CodeSinks(rawValue: 1 << 1)
    /// The GDB JIT interface.
    public static let gdb = CodeSinks(rawValue: 1 << 2)
    /// libgcc's frame registration; on by default (C++ exceptions in loaded code need it).
    public static let unwind = CodeSinks(rawValue: 1 << 3)
    /// A table of every function's range and name that a signal handler can read without locks or
    /// allocation (`cem_crash_table_lookup` in CExecMemDebug), for crash reports; one fixed-size
    /// slot per function, written at registration.
    public static let crashTable = CodeSinks(rawValue: 1 << 4)
    /// Both perf sinks.
    public static let perf: CodeSinks = [.perfMap, .jitdump]
    /// Every sink.
    public static let all: CodeSinks = [.perfMap, .jitdump, .gdb, .unwind, .crashTable]

    /// The sinks the environment asks for: `EXECMEM_PERF` = `map`, `jitdump`, or `1`/`all` (both);
    /// `EXECMEM_GDB=1`; `EXECMEM_UNWIND=0` switches the unwinder's registration off.
    public static func fromEnvironment(_ env: [String: String]) -> CodeSinks {
        var s: CodeSinks = [.unwind]
        switch env["EXECMEM_PERF"]?.lowercased() {
        case "map", "perfmap": s.insert(.perfMap)
        case "jitdump", "dump": s.insert(.jitdump)
        case "1", "all", "yes", "on", "true": s.formUnion(.perf)
        default: break
        }
        if let g = env["EXECMEM_GDB"], ["1", "yes", "on", "true"].contains(g.lowercased()) { s.insert(.gdb) }
        if env["EXECMEM_UNWIND"] == "0" { s.remove(.unwind) }
        return s
    }
}

// MARK: - The registry

/// The process's code registry.
///
/// Thread safety: every method may be called from any thread; one lock orders all changes. Lifetime:
/// `shared` lives as long as the process; files it writes for perf stay after exit (perf reads them
/// then). A registration lives until `unregister` or until the allocator frees memory it overlaps.
public final class CodeRegistry: Sendable {
    /// The one registry (GDB's descriptor and perf's files are per process).
    public static let shared = CodeRegistry(sinks: .fromEnvironment(CodeRegistry.environment()))

    let state: Mutex<RegistryState>

    init(sinks: CodeSinks) {
        state = Mutex(RegistryState(sinks: sinks))
    }

    private static func environment() -> [String: String] {
        var env: [String: String] = [:]
        for key in ["EXECMEM_PERF", "EXECMEM_GDB", "EXECMEM_UNWIND"] {
            if let v = getenvString(key) { env[key] = v }
        }
        return env
    }

    /// The sinks currently fed.
    public var sinks: CodeSinks { state.withLock { $0.sinks } }

    /// Switches sinks on. What is already registered is written to the new sinks at once.
    public func enable(_ sinks: CodeSinks) {
        let deferred = state.withLock { s -> Bool in
            let new = sinks.subtracting(s.sinks)
            if new.isEmpty { return false }
            s.sinks.formUnion(new)
            s.replay(into: new)
            if !new.intersection(.perf).isEmpty { Self.flushAtExit() }
            return s.flushIfIdle()
        }
        if deferred { schedulePerfFlush() }
    }

    /// Registers code and tells the enabled sinks (at the end of the enclosing `batch`, if any, for
    /// the per-block GDB files and synthesized frames; at once for everything else).
    @discardableResult
    public func register(_ r: CodeRegistration) -> CodeHandle {
        let (h, deferred) = state.withLock { s in (s.add(r), s.flushIfIdle()) }
        if deferred { schedulePerfFlush() }
        return h
    }

    /// Removes a registration: GDB forgets it, the unwinder drops its frames. perf's files are
    /// append-only by format and keep the old lines (a later load at the same address supersedes them).
    public func unregister(_ handle: CodeHandle) {
        let deferred = state.withLock { s in
            s.remove(handle.id)
            return s.flushIfIdle()
        }
        if deferred { schedulePerfFlush() }
    }

    /// Removes every registration overlapping `[address, address + size)`; the allocator calls this
    /// when it frees text, so nothing stays named after its memory is reused.
    public func unregister(overlapping address: UInt, size: Int) {
        let deferred = state.withLock { s in
            for id in s.ids(overlapping: address, size: size) { s.remove(id) }
            return s.flushIfIdle()
        }
        if deferred { schedulePerfFlush() }
    }

    /// Runs `body` with the per-block announcements deferred to its end (nested batches end with the
    /// outermost). A batch is the calling thread's: other threads' registrations are announced as
    /// usual meanwhile.
    public func batch<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        cem_batch_enter()
        defer {
            cem_batch_leave()
            if state.withLock({ $0.flushIfIdle() }) { schedulePerfFlush() }
        }
        return try body()
    }

    /// Writes perf's map and jitdump lines still pending now. Writes are coalesced to one per
    /// millisecond during bursts; a deferred write follows 2 ms later, and one runs at exit.
    public func flushPerf() {
        state.withLock { s in
            s.perfFlushScheduled = false
            _ = s.perf.flush(force: true)
        }
    }

    private func schedulePerfFlush() {
        // Pending bytes need a write at exit too, however the sinks were switched on (the
        // environment sets them without `enable`).
        if self === CodeRegistry.shared { Self.flushAtExit() }
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(2)) { [self] in flushPerf() }
    }

    /// Registers, once, an exit handler that writes what perf's files still miss.
    private static func flushAtExit() {
        _ = exitHandler
    }

    private static let exitHandler: Void = { atexit { CodeRegistry.shared.flushPerf() } }()

    /// The symbol around `address`, if registered code covers it.
    public func symbolize(_ address: UInt) -> CodeLocation? {
        state.withLock { $0.locate(address) }
    }

    /// How many registrations are live.
    public var count: Int { state.withLock { $0.entries.count } }

    /// What the sinks hold now, for tests and reports.
    public var status: CodeRegistryStatus {
        state.withLock { s in
            CodeRegistryStatus(registrations: s.entries.count, gdbFiles: s.gdb.fileCount, gdbAnnouncements: s.gdb.announcements,
                               frameSections: s.unwind.sectionCount, perfMapPath: s.perf.mapPath, jitdumpPath: s.perf.dumpPath)
        }
    }
}

extension CodeRegistry {
    /// The symbol files GDB's list holds now, first (newest) first: what an attaching GDB would read.
    public static func gdbSymbolFiles() -> [[UInt8]] {
        var out: [[UInt8]] = []
        var e = cem_jit_first_entry()
        while let entry = e {
            out.append(Array(UnsafeRawBufferPointer(start: entry.pointee.symfile_addr, count: Int(entry.pointee.symfile_size))))
            e = UnsafePointer(entry.pointee.next_entry)
        }
        return out
    }
}

/// A snapshot of the registry's sinks (a value: it does not change after it is read).
public struct CodeRegistryStatus: Sendable, Hashable {
    /// Live registrations.
    public var registrations: Int
    /// Symbol files in GDB's list (per-block files plus debug objects).
    public var gdbFiles: Int
    /// Times GDB was told of a change (register or unregister calls of `__jit_debug_register_code`).
    public var gdbAnnouncements: Int
    /// `.eh_frame` sections registered with the unwinder.
    public var frameSections: Int
    /// The perf map file, once written.
    public var perfMapPath: String?
    /// The jitdump file, once opened.
    public var jitdumpPath: String?
}

func getenvString(_ key: String) -> String? {
    guard let p = getenv(key) else { return nil }
    return String(cString: p)
}
