// What the commands that run code do so that the code can be seen: the crash report (a signal
// handler naming the faulting function from the registry's signal-safe table), the sinks `--perf`
// and `--gdb` switch on, and a self-test of both that needs no client: x86-64 written here, into
// the allocator, and registered by hand under names the tests look for.
//
//   execmem_selftest_spin      a counted loop (perf's tests sample it)
//   execmem_selftest_caller    calls the crash function (so the report has two named frames)
//   execmem_selftest_crash     faults: a NULL load (SIGSEGV), ud2 (SIGILL), or int3 (SIGTRAP)

import CExecMemCrash
#if canImport(Glibc)
import Glibc
#endif
import ExecMem

/// Switches on what makes a command's code visible to perf, gdb and its own crash report.
///
/// Call from the main thread at the start of a command, before anything is loaded (perf's map and
/// jitdump start with the first registration; the crash handler must come before live patching's
/// SIGTRAP handler, which hands it the traps that are not its own).
/// Thread safety: call `enable` once, on the main thread, before any code is loaded (it installs
/// the crash handler for that thread).
public enum Observability {
    /// Installs the crash report for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP and feeds the
    /// registry's signal-safe table (`CodeSinks.crashTable`); with `perf`, the perf map and jitdump;
    /// with `gdb`, the GDB JIT interface.
    /// - Returns: a note when the handler could not be installed (the command still runs).
    @discardableResult
    public static func enable(perf: Bool = false, gdb: Bool = false, program: String = "execmem") -> String? {
        var sinks: CodeSinks = [.crashTable]
        if perf { sinks.formUnion(.perf) }
        if gdb { sinks.insert(.gdb) }
        CodeRegistry.shared.enable(sinks)
        return cem_crash_install(strdup(program)) == 0 ? nil : "the crash report could not be installed"
    }
}

/// The self-test code: a loop perf can sample and functions that crash, registered by hand.
///
/// Thread safety: a value is used from one thread; its code stays registered and mapped until the
/// process exits (the tests read perf's files after it).
public struct SelfTestCode: Sendable {
    /// The owner shown after each name: `execmem_selftest_spin [execmem-selftest]`.
    public static let owner = "execmem-selftest"

    /// How the crash function dies.
    public enum Crash: String, Sendable, CaseIterable {
        /// `mov rax, [0]` at offset 6: SIGSEGV.
        case segv
        /// `ud2` at offset 4 (what `__builtin_trap` emits): SIGILL.
        case ill
        /// `int3` at offset 4, the allocator's fill for free text: SIGTRAP.
        case trap

        /// Bytes from the function's start to the faulting instruction.
        public var faultOffset: Int { self == .segv ? 6 : 4 }
        /// The signal it dies of.
        public var signal: Int32 { self == .segv ? 11 : self == .ill ? 4 : 5 }
    }

    let allocator: ExecMemAllocator
    let spin: Allocation

    /// Writes and registers the spin loop in `allocator`.
    /// - Throws: `ExecMemError` when the allocation or the write fails.
    public init(allocator: ExecMemAllocator) throws(ExecMemError) {
        self.allocator = allocator
        // push rbp; mov rbp, rsp; mov rax, rdi; 1: sub rax, 1; jnz 1b; pop rbp; ret
        let code: [UInt8] = [0x55, 0x48, 0x89, 0xE5, 0x48, 0x89, 0xF8, 0x48, 0x83, 0xE8, 0x01, 0x75, 0xFA, 0x5D, 0xC3]
        spin = try Self.install(code, name: "execmem_selftest_spin", in: allocator)
    }

    /// Runs the loop for about `milliseconds` and returns the iterations run.
    public func spin(milliseconds: Int) -> UInt64 {
        let f = unsafeBitCast(UnsafeRawPointer(bitPattern: spin.address)!, to: (@convention(c) (UInt64) -> UInt64).self)
        let chunk: UInt64 = 10_000_000
        let until = DispatchTimeShim.monotonicNanoseconds() + UInt64(max(milliseconds, 0)) * 1_000_000
        var n: UInt64 = 0
        repeat { _ = f(chunk); n += chunk } while DispatchTimeShim.monotonicNanoseconds() < until
        return n
    }

    /// Writes the crash function and a caller, registers both, and calls the caller: never returns
    /// when the crash handler is installed (the process dies of `crash.signal`).
    /// - Throws: `ExecMemError` when the allocation or the write fails.
    public func crash(_ crash: Crash) throws(ExecMemError) {
        let body: [UInt8]
        switch crash {
        case .segv: body = [0x31, 0xC0, 0x48, 0x8B, 0x00]  // xor eax, eax; mov rax, [rax]
        case .ill: body = [0x0F, 0x0B]                     // ud2
        case .trap: body = [0xCC]                          // int3
        }
        let victim = try Self.install([0x55, 0x48, 0x89, 0xE5] + body + [0x5D, 0xC3], name: "execmem_selftest_crash", in: allocator)
        // push rbp; mov rbp, rsp; call victim; pop rbp; ret (the call's rel32 patched below)
        var caller: [UInt8] = [0x55, 0x48, 0x89, 0xE5, 0xE8, 0, 0, 0, 0, 0x5D, 0xC3]
        let at = try allocator.allocate(.bpf, size: caller.count)
        let rel = Int64(victim.address) - Int64(at.address + 9)
        withUnsafeBytes(of: Int32(truncatingIfNeeded: rel).littleEndian) { for i in 0..<4 { caller[5 + i] = $0[i] } }
        try allocator.write(caller, to: at)
        _ = allocator.makeVisible()
        register(at, size: caller.count, name: "execmem_selftest_caller")
        let f = unsafeBitCast(UnsafeRawPointer(bitPattern: at.address)!, to: (@convention(c) () -> Void).self)
        f()
    }

    private static func install(_ code: [UInt8], name: String, in allocator: ExecMemAllocator) throws(ExecMemError) -> Allocation {
        let a = try allocator.allocate(.bpf, size: code.count)
        try allocator.write(code, to: a)
        _ = allocator.makeVisible()
        SelfTestCode.register(a, size: code.count, name: name)
        return a
    }

    private func register(_ a: Allocation, size: Int, name: String) { Self.register(a, size: size, name: name) }

    private static func register(_ a: Allocation, size: Int, name: String) {
        CodeRegistry.shared.register(CodeRegistration(name: name, kind: .other, address: a.address, size: size, owner: owner))
    }
}
