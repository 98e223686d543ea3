// Function-entry hooks (Linux's ftrace) and live patches (livepatch) on patchable entries.
//
// One hook may be registered per entry; an entry is held by at most one enabled hook or live patch
// at a time (enabling or redirecting a held entry is a typed error).
//
// A function compiled with -fpatchable-function-entry=5 starts with a 5-byte NOP (after endbr64
// when IBT is on). Hooking turns that NOP into `call stub`; the stub (one 64-byte chunk of trace
// text, packed with every other hook's) runs the shared body, which calls the handler and returns
// into the function. A live patch turns the NOP into `jmp replacement` (through a stub when the
// replacement is out of rel32 reach). Each change is one text poke, so a caller sees either the
// old or the new instruction.
//
// Stubs of removed hooks are retired, not freed: a thread may still be inside one. `reclaim()`
// frees them once the caller knows no thread runs there (Linux waits for an RCU-tasks grace period).
// Dropping a FunctionHooks disables its hooks and frees all its code, with the same precondition.

import CExecMemProbeRuntime
import ExecMem
import ExecMemSystem
import Synchronization

/// The argument registers of a hooked call: rdi, rsi, rdx, rcx, r8, r9; writes change what the
/// function receives.
public struct HookArguments {
    public let base: UnsafeMutablePointer<UInt64>
    public init(base: UnsafeMutablePointer<UInt64>) { self.base = base }
    public subscript(i: Int) -> UInt64 {
        get { precondition(0..<6 ~= i, "six integer argument registers"); return base[i] }
        nonmutating set { precondition(0..<6 ~= i, "six integer argument registers"); base[i] = newValue }
    }
    /// rax at entry: the number of vector registers a varargs call uses.
    public var rax: UInt64 { base[6] }
}

public typealias EntryHandler = @Sendable (_ function: UInt, _ arguments: HookArguments) -> Void
public typealias ExitHandler = @Sendable (_ function: UInt, _ returnValue: UInt64) -> Void
/// A C entry handler, called straight from the body: (context, function, arguments).
public typealias CEntryHandler = @convention(c) (UnsafeMutableRawPointer?, UInt, UnsafeMutablePointer<UInt64>?) -> Void

final class HookBox: Sendable {
    let entry: EntryHandler?
    let exit: ExitHandler?
    init(entry: EntryHandler?, exit: ExitHandler?) { self.entry = entry; self.exit = exit }
}

private let swiftEntry: CEntryHandler = { context, function, arguments in
    Unmanaged<HookBox>.fromOpaque(context!).takeUnretainedValue().entry?(function, HookArguments(base: arguments!))
}
private let noEntry: CEntryHandler = { _, _, _ in }
private let swiftExit: @convention(c) (UInt64, UInt64, UInt64) -> Void = { hook, function, value in
    Unmanaged<HookBox>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(hook))!).takeUnretainedValue().exit?(UInt(function), value)
}

/// A hook: its id, the function's address, and the patched site (the function, or past endbr64).
public struct Hook: Hashable, Sendable {
    public let id: Int
    public let function: UInt
    public let site: UInt
}

/// A live patch: calls of `function` go to `replacement` until reverted.
public struct LivePatch: Hashable, Sendable {
    public let id: Int
    public let function: UInt
    public let replacement: UInt
}

public final class FunctionHooks: @unchecked Sendable {
    public let allocator: ExecMemAllocator
    public let poker: TextPoker

    struct HookRecord {
        var hook: Hook
        var stub: Allocation
        var box: Unmanaged<HookBox>?
        var enabled: Bool
        /// `execmem_hook_<function>` in the code registry, until the stub is freed.
        var name: CodeHandle
    }
    struct PatchRecord {
        var patch: LivePatch
        var site: UInt
        var stub: Allocation?
        /// `execmem_patch_<function>`, for a stub.
        var name: CodeHandle?
    }
    struct State {
        var hooks: [Int: HookRecord] = [:]
        var patches: [Int: PatchRecord] = [:]
        /// The enabled hook or live patch that holds each site now.
        var sites: [UInt: String] = [:]
        /// The hook registered at each site (one per site; it may be disabled).
        var hookSites: [UInt: Int] = [:]
        /// Each site's own NOP bytes, as first seen.
        var nops: [UInt: [UInt8]] = [:]
        var nextID = 1
        var body: Allocation?
        var exitTrampoline: Allocation?
        /// `execmem_hook_body` and `execmem_hook_exit`.
        var commonNames: [CodeHandle] = []
        var retired = Retired<HookBox>()
    }
    let state = Mutex(State())

    /// - Parameters:
    ///   - allocator: where stubs go (trace kind); it must reach the hooked functions with rel32.
    ///   - poker: the text poker to patch with; one that knows `allocator` is made when nil.
    public init(allocator: ExecMemAllocator, poker: TextPoker? = nil) {
        self.allocator = allocator
        self.poker = poker ?? TextPoker(allocators: [allocator])
        self.poker.add(allocator)
        cem_set_exit_handler(swiftExit)
    }

    deinit {
        let s = state.withLock { $0 }
        let enabled = s.hooks.values.filter(\.enabled).map(\.hook)
        try? disable(enabled)
        CodeRegistry.shared.batch {
            for h in s.commonNames + s.hooks.values.map(\.name) + s.patches.values.compactMap(\.name) { CodeRegistry.shared.unregister(h) }
        }
        for r in s.hooks.values { try? allocator.free(r.stub); r.box?.release() }
        _ = s.retired.free(in: allocator)
        for p in s.patches.values { if let st = p.stub { try? allocator.free(st) } }
        if let b = s.body { try? allocator.free(b) }
        if let e = s.exitTrampoline { try? allocator.free(e) }
    }

    // MARK: Sites

    /// The five NOP bytes a patchable entry starts with: `nopl 0x0(%rax,%rax,1)` with any disp8.
    static func isFiveByteNop(_ b: [UInt8]) -> Bool { b.count == 5 && b[0] == 0x0F && b[1] == 0x1F && b[2] == 0x44 && b[3] == 0x00 }

    /// The patchable site of `function`: its 5-byte NOP, at the function or right after endbr64.
    public func patchableSite(of function: UInt) throws(ProbeError) -> UInt {
        try CodeMemory.checkExecutable(function, count: 9, allocators: [allocator])
        let head = poker.read(9, at: function)
        let site = head.starts(with: [0xF3, 0x0F, 0x1E, 0xFA]) ? function + 4 : function
        if let owner = state.withLock({ $0.sites[site] }) { throw .siteInUse(address: function, by: owner) }
        let nop = poker.read(5, at: site)
        if Self.isFiveByteNop(nop) { return site }
        if nop == [0x90, 0x90, 0x90, 0x90, 0x90] {
            throw .notPatchable(address: function, reason: "its entry is five one-byte NOPs (gcc); the module loader makes them one 5-byte NOP, other code needs FunctionHooks.prepareEntries before any thread runs it")
        }
        throw .notPatchable(address: function, reason: "its entry is \(nop.map { String($0, radix: 16) }.joined(separator: " ")), not a 5-byte NOP (compile with -fpatchable-function-entry=5)")
    }

    /// Turns five one-byte NOPs at each site into one 5-byte NOP. Only safe while no thread runs
    /// them (a thread between two of the NOPs would resume mid-instruction).
    public func prepareEntries(_ sites: [UInt]) throws(ProbeError) {
        for s in sites where poker.read(5, at: s) == [0x90, 0x90, 0x90, 0x90, 0x90] {
            try poker.write([0x0F, 0x1F, 0x44, 0x00, 0x00], at: s)
        }
        Membarrier.synchronize()
    }

    // MARK: Hooks

    /// Hooks `function` with Swift handlers (an entry handler, an exit handler, or both).
    @discardableResult
    public func hook(_ function: UInt, entry: EntryHandler? = nil, exit: ExitHandler? = nil, enable: Bool = true) throws(ProbeError) -> Hook {
        try hook([function], entry: entry, exit: exit, enable: enable)[0]
    }

    /// Hooks many functions with the same handlers, enabling them in one batch.
    public func hook(_ functions: [UInt], entry: EntryHandler? = nil, exit: ExitHandler? = nil, enable: Bool = true) throws(ProbeError) -> [Hook] {
        var made: [Hook] = []
        do throws(ProbeError) {
            try CodeRegistry.shared.batch { () throws(ProbeError) in
                for f in functions {
                    let box = Unmanaged.passRetained(HookBox(entry: entry, exit: exit))
                    let handler = entry == nil ? unsafeBitCast(noEntry, to: UInt.self) : unsafeBitCast(swiftEntry, to: UInt.self)
                    made.append(try install(f, handler: handler, context: UInt(bitPattern: box.toOpaque()), exit: exit != nil, box: box))
                }
            }
            if enable { try self.enable(made) }
        } catch {
            for h in made { try? remove(h) }
            throw error
        }
        return made
    }

    /// Hooks `function` with a C handler called directly: `handler(context, function, arguments)`.
    @discardableResult
    public func hook(_ function: UInt, c handler: CEntryHandler, context: UnsafeMutableRawPointer? = nil, enable: Bool = true) throws(ProbeError) -> Hook {
        let h = try install(function, handler: unsafeBitCast(handler, to: UInt.self), context: UInt(bitPattern: context), exit: false, box: nil)
        if enable {
            do throws(ProbeError) { try self.enable([h]) } catch { try? remove(h); throw error }
        }
        return h
    }

    private func install(_ function: UInt, handler: UInt, context: UInt, exit: Bool, box: Unmanaged<HookBox>?) throws(ProbeError) -> Hook {
        let site: UInt
        do throws(ProbeError) { site = try patchableSite(of: function) } catch { box?.release(); throw error }
        let name = "execmem_hook_" + ProbeNames.function(function)
        let r: Result<Hook, ProbeError> = state.withLock { s in
            do throws(ProbeError) {
                if let other = s.hookSites[site] { throw .siteInUse(address: function, by: "hook \(other)") }
                let body = try commonCode(&s)
                let stub = try allocate(near: site)
                let code = Trampolines.stub(at: stub.address, body: body, handler: handler, context: context, function: function,
                                            exitContext: exit ? context : 0)
                do throws(ExecMemError) { try allocator.write(code, to: stub) } catch { try? allocator.free(stub); throw .allocator(error) }
                let hook = Hook(id: s.nextID, function: function, site: site)
                s.nextID += 1
                let handle = CodeRegistry.shared.register(CodeRegistration(
                    name: name, kind: .hook, address: stub.address, size: Trampolines.descriptorOffset,
                    unwind: .frames([Trampolines.entryFrame(length: Trampolines.descriptorOffset)])))
                s.hooks[hook.id] = HookRecord(hook: hook, stub: stub, box: box, enabled: false, name: handle)
                s.hookSites[site] = hook.id
                if s.nops[site] == nil { s.nops[site] = poker.read(5, at: site) }
                return .success(hook)
            } catch {
                box?.release()
                return .failure(error)
            }
        }
        return try r.get()
    }

    /// The shared body and exit trampoline, made on first use.
    private func commonCode(_ s: inout State) throws(ProbeError) -> UInt {
        if let b = s.body { return b.address }
        do throws(ExecMemError) {
            let (exitCode, exitFrame) = Trampolines.exitTrampoline()
            let exit = try allocator.allocate(.trace, size: exitCode.count, alignment: 64)
            try allocator.write(exitCode, to: exit)
            let (code, frame) = Trampolines.body(exitTrampoline: exit.address + UInt(Trampolines.exitEntryOffset))
            let body = try allocator.allocate(.trace, size: code.count, alignment: 64)
            try allocator.write(code, to: body)
            allocator.makeVisible()
            s.exitTrampoline = exit
            s.body = body
            s.commonNames = CodeRegistry.shared.batch {
                [CodeRegistry.shared.register(CodeRegistration(name: "execmem_hook_body", kind: .hook, address: body.address, size: frame.length,
                                                               unwind: .frames([frame]))),
                 CodeRegistry.shared.register(CodeRegistration(name: "execmem_hook_exit", kind: .hook, address: exit.address, size: exitFrame.length,
                                                               unwind: .frames([exitFrame])))]
            }
            return body.address
        } catch {
            throw .allocator(error)
        }
    }

    /// One chunk of trace text within rel32 of `site`.
    private func allocate(near site: UInt) throws(ProbeError) -> Allocation {
        let a: Allocation
        do { a = try allocator.allocate(.trace, size: Trampolines.stubSize, alignment: 64) } catch { throw .allocator(error) }
        guard Rel32.reaches(site, site + 5, a.address, a.address + UInt(a.capacity)) else {
            try? allocator.free(a)
            throw .outOfReach(address: site, target: a.address)
        }
        return a
    }

    public func enable(_ hook: Hook) throws(ProbeError) { try enable([hook]) }
    public func disable(_ hook: Hook) throws(ProbeError) { try disable([hook]) }

    /// Enables hooks in one text-poke batch.
    public func enable(_ hooks: [Hook]) throws(ProbeError) { try toggle(hooks, on: true) }

    /// Disables hooks in one batch; the sites get their NOPs back, byte for byte.
    public func disable(_ hooks: [Hook]) throws(ProbeError) { try toggle(hooks, on: false) }

    private func toggle(_ hooks: [Hook], on: Bool) throws(ProbeError) {
        let r: Result<Void, ProbeError> = state.withLock { s in
            do throws(ProbeError) {
                var pokes: [TextPoker.Poke] = []
                for h in hooks {
                    guard let rec = s.hooks[h.id], rec.hook == h else { throw .unknownHook(id: h.id) }
                    if rec.enabled == on { throw on ? .alreadyEnabled(address: h.function) : .notEnabled(address: h.function) }
                    if on {
                        if let owner = s.sites[h.site] { throw .siteInUse(address: h.function, by: owner) }
                        guard let call = rel32Instruction(0xE8, from: h.site, to: rec.stub.address) else { throw .outOfReach(address: h.site, target: rec.stub.address) }
                        pokes.append(.init(h.site, call, emulate: .call(to: rec.stub.address)))
                    } else {
                        pokes.append(.init(h.site, s.nops[h.site]!, emulate: .skip(length: 5)))
                    }
                }
                try poker.patch(pokes)
                for h in hooks {
                    s.hooks[h.id]!.enabled = on
                    s.sites[h.site] = on ? "hook \(h.id)" : nil
                }
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try r.get()
    }

    /// Disables (when enabled) and forgets a hook; its stub is retired until `reclaim()`.
    public func remove(_ hook: Hook) throws(ProbeError) {
        let enabled = state.withLock { s -> Bool? in s.hooks[hook.id].flatMap { $0.hook == hook ? $0.enabled : nil } }
        guard let enabled else { throw .unknownHook(id: hook.id) }
        if enabled { try disable(hook) }
        state.withLock { s in
            guard let rec = s.hooks.removeValue(forKey: hook.id) else { return }
            s.hookSites[hook.site] = nil
            s.retired.add(rec.stub, rec.box, name: rec.name)
        }
    }

    public func isEnabled(_ hook: Hook) -> Bool { state.withLock { $0.hooks[hook.id]?.enabled ?? false } }

    /// Every hook, enabled or not.
    public var hooks: [Hook] { state.withLock { $0.hooks.values.map(\.hook).sorted { $0.id < $1.id } } }

    /// Frees retired stubs and patch stubs. Call it only when no thread can still be running in
    /// them (no hooked call in flight since the hooks were removed). Returns how many were freed.
    @discardableResult
    public func reclaim() -> Int {
        state.withLock { $0.retired.take() }.free(in: allocator)
    }

    // MARK: Live patches

    /// Sends every later call of `function` to `replacement` (its patchable entry becomes a jump).
    public func redirect(_ function: UInt, to replacement: UInt) throws(ProbeError) -> LivePatch {
        let site = try patchableSite(of: function)
        try CodeMemory.checkExecutable(replacement, count: 1, allocators: [allocator])
        let name = "execmem_patch_" + ProbeNames.function(function)
        let r: Result<LivePatch, ProbeError> = state.withLock { s in
            do throws(ProbeError) {
                if let owner = s.sites[site] { throw .siteInUse(address: function, by: owner) }
                if s.nops[site] == nil { s.nops[site] = poker.read(5, at: site) }
                var stub: Allocation? = nil
                var handle: CodeHandle? = nil
                var target = replacement
                if Rel32.displacement(from: site + 5, to: replacement) == nil {
                    let a = try allocate(near: site)
                    do throws(ExecMemError) { try allocator.write(Trampolines.farJump(to: replacement), to: a) } catch { try? allocator.free(a); throw .allocator(error) }
                    allocator.makeVisible()
                    stub = a
                    target = a.address
                    let length = Trampolines.farJump(to: replacement).count
                    handle = CodeRegistry.shared.register(CodeRegistration(name: name, kind: .patch, address: a.address, size: length,
                                                                           unwind: .frames([Trampolines.entryFrame(length: length)])))
                }
                do throws(ProbeError) {
                    try poker.patch(site, with: rel32Instruction(0xE9, from: site, to: target)!, emulate: .jump(to: target))
                } catch {
                    if let handle { CodeRegistry.shared.unregister(handle) }
                    if let a = stub { try? allocator.free(a) }
                    throw error
                }
                let patch = LivePatch(id: s.nextID, function: function, replacement: replacement)
                s.nextID += 1
                s.patches[patch.id] = PatchRecord(patch: patch, site: site, stub: stub, name: handle)
                s.sites[site] = "live patch \(patch.id)"
                return .success(patch)
            } catch {
                return .failure(error)
            }
        }
        return try r.get()
    }

    /// Sends calls back to the original function.
    public func revert(_ patch: LivePatch) throws(ProbeError) {
        let r: Result<Void, ProbeError> = state.withLock { s in
            guard let rec = s.patches[patch.id], rec.patch == patch else { return .failure(.unknownHook(id: patch.id)) }
            do throws(ProbeError) { try poker.patch(rec.site, with: s.nops[rec.site]!, emulate: .skip(length: 5)) } catch { return .failure(error) }
            s.patches[patch.id] = nil
            s.sites[rec.site] = nil
            if let st = rec.stub { s.retired.add(st, name: rec.name) }
            return .success(())
        }
        try r.get()
    }

    public var livePatches: [LivePatch] { state.withLock { $0.patches.values.map(\.patch).sorted { $0.id < $1.id } } }
}

/// Checks that code addresses are mapped executable before anything reads or patches them.
enum CodeMemory {
    static func checkExecutable(_ address: UInt, count: Int, allocators: [ExecMemAllocator]) throws(ProbeError) {
        for a in allocators {
            if let allocation = a.allocation(containing: address) {
                guard allocation.type == .text else { throw .notAnInstruction(address: address, reason: "it is \(allocation.type) memory, not text") }
                return
            }
        }
        let maps: [MapsEntry]
        do { maps = try ProcMaps.read() } catch { throw .notAnInstruction(address: address, reason: "cannot read /proc/self/maps: \(error)") }
        guard let m = maps.first(where: { $0.start <= address && address < $0.end }) else {
            throw .notAnInstruction(address: address, reason: "nothing is mapped there")
        }
        guard m.isExecutable else { throw .notAnInstruction(address: address, reason: "its mapping (\(m.protection) \(m.path)) is not executable") }
        guard address + UInt(count) <= m.end || maps.contains(where: { $0.start == m.end && $0.isExecutable }) else {
            throw .notAnInstruction(address: address, reason: "too close to the end of its mapping")
        }
    }
}
