// The runtime object a host creates: its helpers (the map helpers, plus its own by number), the
// allocator JIT code goes to (the process's shared one unless given), and the programs it loads.
// Loading verifies; running picks an engine.

import ExecMem
import Synchronization

/// Which engine runs a program: both run the verifier's decoded form and agree on every result.
public enum BPFEngine: String, Sendable, CaseIterable, Codable {
    case interpreter
    case jit
}

/// The runtime a host creates: helpers by number, the allocator JIT code goes to, program loading.
/// 
/// Thread-safe (helpers are kept under a lock; a program loaded takes a snapshot of them). It must
/// outlive nothing: programs keep what they need.
public final class BPFVM: @unchecked Sendable {
    private let state = Mutex<[Int32: BPFHelper]>(MapHelpers.builtins)
    let allocatorOverride: ExecMemAllocator?

    /// - Parameter allocator: where JIT code goes; the process's shared allocator when nil.
    public init(allocator: ExecMemAllocator? = nil) {
        allocatorOverride = allocator
    }

    /// The allocator JIT code is written to (the process's shared one unless one was given).
    /// - Throws: `BPFError.allocator` when the shared allocator cannot be created.
    public var allocator: ExecMemAllocator {
        get throws(BPFError) {
            if let a = allocatorOverride { return a }
            do { return try ExecMemAllocator.shared() } catch { throw .allocator(error) }
        }
    }

    /// Registers (or replaces) helper `number`.
    public func register(_ number: Int32, _ helper: BPFHelper) {
        state.withLock { $0[number] = helper }
    }

    /// The helpers programs loaded now may call, by number.
    public var helpers: [Int32: BPFHelper] { state.withLock { $0 } }

    /// Verifies and loads a program. `maps` are the maps its `lddw map[N]` references name (by
    /// index); `budget` is what each run may spend unless the run says otherwise (see `run`).
    /// - Throws: `BPFError.verifier` naming the instruction the verifier rejected.
    public func load(_ instructions: [BPFInstruction], name: String = "program", maps: [BPFMap] = [],
                     budget: UInt64 = BPFProgram.defaultBudget) throws(BPFError) -> BPFProgram {
        let helpers = self.helpers
        let verified = try BPFVerifier(helpers: helpers, maps: maps).verify(instructions)
        return BPFProgram(vm: self, name: name, verified: verified, helpers: helpers, maps: maps, budget: budget)
    }

    /// Assembles, verifies and loads conformance-dialect source.
    public func load(assembly: String, name: String = "program", maps: [BPFMap] = [],
                     budget: UInt64 = BPFProgram.defaultBudget) throws(BPFError) -> BPFProgram {
        try load(try BPFAssembler.assemble(assembly), name: name, maps: maps, budget: budget)
    }
}

/// A verified program: runs on the interpreter, or on x86-64 code the JIT wrote into packed BPF-kind
/// text of the allocator (compiled on first use, freed, and trap-filled, with the program).
///
/// Thread-safe: any number of threads may run it at once (each run has its own stack and context);
/// its maps are shared by those runs. It keeps its maps and its JIT code alive.
public final class BPFProgram: @unchecked Sendable {
    /// Budget units a run gets unless told otherwise: Linux's limit of 1,000,000 instructions.
    public static let defaultBudget = UInt64(BPFVerifier.maxInstructions)

    /// The name given at load (ELF: the function), for messages.
    public let name: String
    /// What the verifier proved; both engines run it.
    public let verified: BPFVerifiedProgram
    /// The instructions as loaded.
    public var instructions: [BPFInstruction] { verified.instructions }
    /// First instruction of each function; 0 is the entry.
    public var functions: [Int] { verified.functions }
    /// Budget units each run gets by default. Entering main costs its length, a local call the
    /// callee's length, and a jump back to a loop header the length of the loop, so a run executes at
    /// most this many instructions; one that would need more stops with a runtime error.
    public let budget: UInt64
    let helpers: [Int32: BPFHelper]
    /// The maps the program references, by the index `lddw map[N]` uses.
    public let maps: [BPFMap]
    let mapsByHandle: [UInt: BPFMap]
    /// Each map's value slab, by map index.
    let regions: [MemoryRegion]
    let vm: BPFVM
    private let compiled = Mutex<JITCode?>(nil)
    private let published = Atomic<UInt>(0)

    init(vm: BPFVM, name: String, verified: BPFVerifiedProgram, helpers: [Int32: BPFHelper], maps: [BPFMap], budget: UInt64) {
        self.vm = vm
        self.name = name
        self.verified = verified
        self.helpers = helpers
        self.maps = maps
        self.budget = budget
        mapsByHandle = Dictionary(maps.map { ($0.handle, $0) }, uniquingKeysWith: { a, _ in a })
        regions = maps.map(\.region)
    }

    /// Runs the program with r1 = the memory's address and r2 = its length; returns r0.
    /// - Parameter budget: units this run may spend (the program's `budget` when nil).
    /// - Throws: `BPFError.runtime` naming the instruction when the run faults (an access outside its
    ///   region, a helper refusing its arguments, calls nested too deep, the budget exhausted).
    public func run(memory: UnsafeMutableRawBufferPointer? = nil, engine: BPFEngine = .jit, budget: UInt64? = nil) throws(BPFError) -> UInt64 {
        switch engine {
        case .interpreter: return try interpret(memory: memory, budget: budget ?? self.budget)
        case .jit:
            // The run holds the code: a helper may unload or recompile this program mid-run, and the
            // code it returns into must stay (one reference count, ~2 ns).
            return try jitCode().run(self, memory: memory, budget: budget ?? self.budget)
        }
    }

    /// Runs over a copy of `bytes` (the context the program sees and may change).
    public func run(bytes: [UInt8], engine: BPFEngine = .jit, budget: UInt64? = nil) throws(BPFError) -> UInt64 {
        var copy = bytes
        let r = copy.withUnsafeMutableBytes { b in Result { () throws(BPFError) in try run(memory: b.count == 0 ? nil : b, engine: engine, budget: budget) } }
        return try r.get()
    }

    /// The JIT code, compiled on first use. The fast path is one atomic load: `compiled` owns the
    /// code, `published` names it for runs. What it returns is a counted reference.
    @inline(__always)
    func jitCode(options: JITOptions = .init()) throws(BPFError) -> JITCode {
        let raw = published.load(ordering: .acquiring)
        if raw != 0 { return Unmanaged<JITCode>.fromOpaque(UnsafeRawPointer(bitPattern: raw)!).takeUnretainedValue() }
        return try compileOnce(options: options)
    }

    private func compileOnce(options: JITOptions) throws(BPFError) -> JITCode {
        let r: Result<JITCode, BPFError> = compiled.withLock { slot in
            if let c = slot { return .success(c) }
            do throws(BPFError) {
                let c = try BPFJIT.compile(self, allocator: try vm.allocator, options: options)
                slot = c
                published.store(UInt(bitPattern: Unmanaged.passUnretained(c).toOpaque()), ordering: .releasing)
                return .success(c)
            } catch {
                return .failure(error)
            }
        }
        return try r.get()
    }

    /// Compiles now (with `options`), replacing earlier JIT code. Runs in progress (a helper may call
    /// this) finish on the code they started with, which is freed after them. Must not race with a
    /// run starting on another thread (the starting run could read the old code as it is replaced).
    public func compile(options: JITOptions = .init()) throws(BPFError) {
        let c = try BPFJIT.compile(self, allocator: try vm.allocator, options: options)
        compiled.withLock { slot in
            published.store(UInt(bitPattern: Unmanaged.passUnretained(c).toOpaque()), ordering: .releasing)
            slot = c
        }
    }

    /// The JIT code's bytes, once compiled (for benchmarks that copy it elsewhere).
    @_spi(Benchmark) public var jitBytes: [UInt8]? {
        compiled.withLock { c in c.map { Array(UnsafeRawBufferPointer(start: $0.allocation.pointer, count: $0.allocation.size)) } }
    }

    /// Runs a copy of this program's JIT code placed at `address` (position-independent programs
    /// only: no helper calls). For the page-per-program baseline of `execmem bench`.
    @_spi(Benchmark) public func runCopy(at address: UInt, memory: UnsafeMutableRawBufferPointer? = nil) throws(BPFError) -> UInt64 {
        try jitCode().run(self, memory: memory, budget: budget, at: address)
    }

    /// The JIT code's allocation, once compiled.
    public var jitAllocation: Allocation? { compiled.withLock { $0?.allocation } }

    /// Frees the JIT code (it is also freed when the program goes away); runs in progress keep it
    /// until they end. A later JIT run compiles it again. Must not race with a run starting on
    /// another thread.
    public func unload() {
        compiled.withLock { slot in
            published.store(0, ordering: .releasing)
            slot = nil
        }
    }
}
