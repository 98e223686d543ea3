// The module loader: what Linux's module loader does with execmem, for user space. It links objects
// and archives into one module, lays it out by mapping type in allocator memory, runs constructors,
// frees init memory, seals ro-after-init, and on unload runs destructors and frees everything (text
// is trap-filled by the allocator).
//
// Where a module goes: in the allocator's range near the executable by default. Objects that reach
// host data with a plain rel32 (PIE objects expecting a copy relocation, e.g. `stdout`) go to a range
// placed within reach of the library that defines it; objects with absolute 32-bit relocations
// (non-PIC code) go to a range in the low 2 GiB. Calls that cannot reach go through veneers.

import CExecMemLoaderRuntime
import ExecMem
import ExecMemELF
import Synchronization

public struct SectionPlacement: Sendable, CustomStringConvertible {
    public let object: String
    public let section: String
    public let type: String
    public let address: UInt
    public let size: Int

    public var description: String { "\(type.padding(11)) 0x\(String(address, radix: 16)) \(String(size).leftPadded(8))  \(section) (\(object))" }
}

extension String {
    func padding(_ n: Int) -> String { self + String(repeating: " ", count: max(0, n - count)) }
    func leftPadded(_ n: Int) -> String { String(repeating: " ", count: max(0, n - count)) + self }
}

public final class ModuleLoader: @unchecked Sendable {
    /// The most memory one module may take, all its types together (and the most its TLS image may
    /// take): 1 GiB. Sizes come from the files; a larger module is a `LoaderError.badInput` naming
    /// this limit, before anything is allocated.
    public static let maxModuleBytes = Layout.maxImageBytes

    let defaultAllocator: ExecMemAllocator?
    private let state = Mutex<State>(State())

    struct State {
        /// Exported symbols of loaded modules, each module's own table (shared, not copied), in load
        /// order: the first module that exports a name defines it for later loads.
        var exports: [(id: Int, symbols: [String: UInt])] = []
        /// Symbols the host provides by hand (functions of an executable that exports nothing).
        var provided: [String: UInt] = [:]
        /// Allocators placed for particular needs ("low", or a library's path).
        var allocators: [String: ExecMemAllocator] = [:]
        var nextID = 1
    }

    /// - Parameter allocator: where modules go by default; the process's shared allocator when nil.
    /// The most memory one module of this loader may take (at most `maxModuleBytes`).
    public let moduleLimit: Int

    /// A loader placing modules in `allocator` (or the shared allocator, and ranges of its own for
    /// modules that need the low 2 GiB or host data in reach); `moduleLimit` lowers the 1 GiB a
    /// module may take (a host loading untrusted files may want less), and is clamped to 1 ... 1 GiB.
    public init(allocator: ExecMemAllocator? = nil, moduleLimit: Int = ModuleLoader.maxModuleBytes) {
        defaultAllocator = allocator
        self.moduleLimit = min(max(moduleLimit, 1), Self.maxModuleBytes)
    }

    /// Loads files (objects and archives) as one module.
    public func load(files: [String], name: String? = nil) throws(LoaderError) -> LoadedModule {
        var inputs: [LoaderInput] = []
        for f in files { inputs.append(try LoaderInput.file(f)) }
        return try load(inputs, name: name ?? files.first ?? "module")
    }

    /// Links, places, relocates and initializes a module.
    public func load(_ inputs: [LoaderInput], name: String) throws(LoaderError) -> LoadedModule {
        var link = try Link(inputs, maxModuleBytes: moduleLimit)
        try link.resolveExternals(lookUp(link.undefinedGlobals, link), object: name)
        let (needsLow, hostData) = try link.plan()
        let allocator = try chooseAllocator(needsLow: needsLow, hostData: hostData)
        return try LoadedModule(link: link, name: name, loader: self, allocator: allocator)
    }

    /// The allocators this loader placed for particular needs (the low 2 GiB, near a library), for
    /// a fuzzer's check that nothing is left allocated.
    @_spi(Fuzzing) public var placedAllocators: [ExecMemAllocator] { state.withLock { Array($0.allocators.values) } }

    /// Reads, links, lays out and relocates `inputs` like `load`, but runs none of their code (no
    /// constructors, no destructors) and unloads at once: for fuzzing the loader with any bytes.
    @_spi(Fuzzing) public func linkWithoutRunning(_ inputs: [LoaderInput], name: String) throws(LoaderError) {
        var link = try Link(inputs, maxModuleBytes: moduleLimit)
        try link.resolveExternals(lookUp(link.undefinedGlobals, link), object: name)
        let (needsLow, hostData) = try link.plan()
        let allocator = try chooseAllocator(needsLow: needsLow, hostData: hostData)
        let module = try LoadedModule(link: link, name: name, loader: self, allocator: allocator, runsCode: false)
        module.unload()
    }

    /// Other modules' exports (first) and the host's provided symbols among `ids`, read under the lock.
    private func lookUp(_ ids: [Int32], _ link: Link) -> [Int32: (address: UInt, fromModule: Bool)] {
        state.withLock { s in
            var found: [Int32: (address: UInt, fromModule: Bool)] = [:]
            for g in ids {
                let n = link.name(g)
                if let e = s.exports.lazy.compactMap({ $0.symbols[n] }).first { found[g] = (e, true) } else if let p = s.provided[n] { found[g] = (p, false) }
            }
            return found
        }
    }

    private func chooseAllocator(needsLow: String?, hostData: [(name: String, address: UInt)]) throws(LoaderError) -> ExecMemAllocator {
        if let first = hostData.first {
            if let reason = needsLow {
                throw .placement("\(reason) needs the low 2 GiB, but '\(first.name)' is host data at 0x\(String(first.address, radix: 16)) reached with rel32")
            }
            guard let image = HostMaps.image(containing: first.address) else {
                throw .placement("cannot find the mapping of host data '\(first.name)'")
            }
            let lo = min(image.start, hostData.map(\.address).min()!), hi = max(image.end, hostData.map(\.address).max()! + 1)
            for d in hostData where !Rel32.reaches(lo, hi, d.address, d.address + 1) || hi - lo > UInt(1 << 30) {
                throw .placement("host data '\(d.name)' at 0x\(String(d.address, radix: 16)) is too far from '\(first.name)' for one module to reach both with rel32")
            }
            return try allocator(key: image.path.isEmpty ? "data@\(image.start)" : image.path, placements: [.near(start: lo, end: hi)])
        }
        if needsLow != nil {
            // Three 512 MiB slots below 2 GiB: another loader in the process (or anything else) may
            // hold the first.
            return try allocator(key: "low", placements: [0x1000_0000, 0x3000_0000, 0x5000_0000].map { .hint($0) })
        }
        if let a = defaultAllocator { return a }
        do { return try ExecMemAllocator.shared() } catch { throw .allocator(error) }
    }

    /// An allocator of 512 MiB placed for a need, made once: at the first of `placements` that works.
    private func allocator(key: String, placements: [Placement]) throws(LoaderError) -> ExecMemAllocator {
        let r: Result<ExecMemAllocator, LoaderError> = state.withLock { s in
            if let a = s.allocators[key] { return .success(a) }
            var errors: [String] = []
            for placement in placements {
                var c = ExecMemConfiguration()
                c.rangeSize = 512 << 20
                c.fallbackSize = 0
                c.placement = placement
                do throws(ExecMemError) {
                    let a = try ExecMemAllocator(c)
                    s.allocators[key] = a
                    return .success(a)
                } catch {
                    errors.append("\(error)")
                }
            }
            return .failure(.placement("cannot place module memory for \(key): \(errors.joined(separator: "; "))"))
        }
        return try r.get()
    }

    /// Makes `address` the definition of `symbol` for modules, after other modules' exports and
    /// before the dynamic linker's symbols (like a kernel's own symbol table).
    public func provide(_ symbol: String, _ address: UInt) {
        state.withLock { $0.provided[symbol] = address }
    }

    func register(_ exports: [String: UInt]) -> Int {
        state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            s.exports.append((id, exports))
            return id
        }
    }

    func unregister(_ id: Int) {
        state.withLock { s in
            s.exports.removeAll { $0.id == id }
        }
    }

    /// The allocators modules went to (the default one first), for statistics.
    public var allocators: [ExecMemAllocator] {
        let placed = state.withLock { Array($0.allocators.values) }
        return ((try? defaultAllocator ?? ExecMemAllocator.shared()).map { [$0] } ?? []) + placed
    }
}
