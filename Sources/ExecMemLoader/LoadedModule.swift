// A loaded module: its memory by type, its sections' placement, its exports; constructors run at
// load, destructors at unload.

import CExecMemLoaderRuntime
import ExecMem
import ExecMemELF
import Glibc

public final class LoadedModule: @unchecked Sendable {
    public let name: String
    public let allocator: ExecMemAllocator
    /// Where each section went.
    public let sections: [SectionPlacement]
    /// The module's global definitions.
    public let symbols: [String: UInt]
    /// Every function the module defines (local ones too): name, address, size.
    public let functions: [(name: String, address: UInt, size: Int)]
    /// Entries compiled with -fpatchable-function-entry (from `__patchable_function_entries`).
    public let patchableEntries: [UInt]
    /// Allocations by type that remain after init (text, rodata, roAfterInit, data).
    public private(set) var allocations: [String: Allocation]
    /// rel32 calls and references that go through a veneer (their target was out of reach).
    public let callsThroughVeneers: Int
    /// Init memory freed after initialization, as it was.
    public let freedInitAllocations: [Allocation]
    private let finiFunctions: [UInt]
    /// The module's `__dso_handle` (0 when it has none): what `__cxa_atexit` registered its exit
    /// handlers (C++ globals' destructors) under, run by `__cxa_finalize` at unload.
    private let dsoHandle: UInt
    private let loader: ModuleLoader
    private let exportID: Int
    private var unloaded = false
    /// What the module registered with the code registry (perf, GDB, the unwinder).
    private var code = ModuleCodeHandles(empty: ())
    /// False for modules laid out and relocated only (fuzzing): no constructor or destructor runs.
    private let runsCode: Bool

    typealias InitFunction = @convention(c) (Int32, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Void
    typealias FiniFunction = @convention(c) () -> Void

    init(link: Link, name: String, loader: ModuleLoader, allocator: ExecMemAllocator, runsCode: Bool = true) throws(LoaderError) {
        self.runsCode = runsCode
        self.name = name
        self.loader = loader
        self.allocator = allocator
        var link = link
        // __dso_handle, when the module uses it (or calls atexit, which registers on it), is a word of its data.
        let dso = link.uses("__dso_handle") || link.uses("atexit") || link.uses("at_quick_exit") ? link.layout.append(.data, bytes: 8, alignment: 8) : -1
        try link.layout.placeZeroFill()
        // Memory per type.
        var allocated: [Bucket: Allocation] = [:]
        var tlsTaken: (at: Int, bytes: Int)? = nil
        func freeAll() {
            for a in allocated.values { try? allocator.free(a) }
            if let t = tlsTaken { TLSArena.giveBack(at: t.at, bytes: t.bytes) }
        }
        for b in Bucket.allCases where link.layout.size[b.rawValue] > 0 {
            do {
                allocated[b] = try allocator.allocate(b.kind, size: link.layout.size[b.rawValue], alignment: max(16, link.layout.alignment[b.rawValue]))
            } catch {
                freeAll()
                throw .allocator(error)
            }
        }
        // Thread-local storage.
        if link.layout.tlsSize > 0 {
            do { link.tlsBase = try TLSArena.take(link.layout.tlsSize, alignment: link.layout.tlsAlignment) } catch { freeAll(); throw error }
            tlsTaken = (link.tlsBase, link.layout.tlsSize)
        }
        let base = Bucket.allCases.map { allocated[$0]?.address ?? 0 }
        let addresses = Link.Addresses(base: base, gotAddress: base[Bucket.rodata.rawValue] + UInt(link.gotOffset),
                                       veneerAddress: base[Bucket.text.rawValue] + UInt(link.veneerOffset),
                                       dsoHandle: dso >= 0 ? base[Bucket.data.rawValue] + UInt(dso) : 0)
        // Section images, relocated.
        // Images of the bytes that come from files (NOBITS and COMMON come after them).
        var images = Bucket.allCases.map { [UInt8](repeating: $0 == .text || $0 == .initText ? 0xCC : 0, count: link.layout.fileBytes[$0.rawValue]) }
        var placements: [SectionPlacement] = []
        var throughVeneers = 0
        for (o, obj) in link.objects.enumerated() {
            for s in obj.elf.sections {
                if let t = link.layout.tls[Layout.SectionKey(object: o, section: s.index)] {
                    let dst = TLSArena.base + link.tlsBase + t
                    if s.hasFileBytes { obj.elf.contents(s).withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } } else { dst.initializeMemory(as: UInt8.self, repeating: 0, count: s.size) }
                    // And into the image threads created from now on start from.
                    if s.hasFileBytes { obj.elf.contents(s).withUnsafeBytes { TLSArena.setImage(at: link.tlsBase + t, $0) } } else { TLSArena.setImage(at: link.tlsBase + t, zeros: s.size) }
                    placements.append(SectionPlacement(object: obj.name, section: s.name, type: "tls", address: UInt(bitPattern: dst), size: s.size))
                    continue
                }
                guard let (b, off) = link.layout.place[Layout.SectionKey(object: o, section: s.index)] else { continue }
                if s.hasFileBytes { images[b.rawValue].replaceSubrange(off..<(off + s.size), with: obj.elf.contents(s)) }
                placements.append(SectionPlacement(object: obj.name, section: s.name, type: b.description, address: base[b.rawValue] + UInt(off), size: s.size))
            }
        }
        do {
            throughVeneers = try link.relocate(&images, addresses)
            link.emptyDiscardedFDEs(&images)
            try link.checkFrameRanges(images, addresses)
            if !link.gotOrder.isEmpty {
                let got = try link.gotContents(addresses)
                for (i, v) in got.enumerated() { for k in 0..<8 { images[Bucket.rodata.rawValue][link.gotOffset + i * 8 + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) } }
                placements.append(SectionPlacement(object: name, section: "GOT (\(got.count) slots)", type: "rodata", address: addresses.gotAddress, size: got.count * 8))
            }
            if !link.veneers.isEmpty {
                let code = link.veneerCode(addresses)
                images[Bucket.text.rawValue].replaceSubrange(link.veneerOffset..<(link.veneerOffset + code.count), with: code)
                placements.append(SectionPlacement(object: name, section: "veneers (\(link.veneers.count))", type: "text", address: addresses.veneerAddress, size: code.count))
            }
            // What follows the images is NOBITS and COMMON: fresh allocations are already zero (and
            // int3 for text), so a .bss costs no copy and no page it does not touch.
            for (b, a) in allocated { try allocator.write(images[b.rawValue], to: a) }
        } catch let e as LoaderError {
            freeAll()
            throw e
        } catch let e as ExecMemError {
            freeAll()
            throw .allocator(e)
        } catch {
            freeAll()
            throw .badInput(object: name, reason: "\(error)")
        }
        allocator.makeVisible()
        sections = placements
        callsThroughVeneers = throughVeneers
        // Exports: every global definition.
        var exported: [String: UInt] = [:]
        exported.reserveCapacity(link.globals.count)
        for (g, d) in link.globals.enumerated() where d.object >= 0 && !link.isTLS(d.object, d.symbol) {
            let n = link.names.names[g]
            // Not what lives in init memory: it is freed once init has run.
            let section = Int(link.objects[d.object].elf.symbols[d.symbol].sectionIndex)
            if link.layout.place[Layout.SectionKey(object: d.object, section: section)]?.0.isInit == true { continue }
            do throws(LoaderError) { exported[n] = try link.symbolValue(d.object, d.symbol, addresses) } catch { freeAll(); throw error }
        }
        symbols = exported
        exportID = loader.register(exported)
        var functionList: [(String, UInt, Int)] = []
        for (o, obj) in link.objects.enumerated() {
            for s in obj.elf.symbols where s.type == ELF.STT_FUNC && !s.isUndefined && s.sectionIndex < ELF.SHN_LORESERVE {
                guard let base = link.sectionAddress(o, Int(s.sectionIndex), addresses), Int(s.sectionIndex) < obj.elf.sections.count,
                      s.value <= UInt64(obj.elf.sections[Int(s.sectionIndex)].size) else { continue }
                functionList.append((s.name, base + UInt(s.value), Int(clamping: min(s.size, UInt64(obj.elf.sections[Int(s.sectionIndex)].size) - s.value))))
            }
        }
        functions = functionList.sorted { $0.1 < $1.1 }
        patchableEntries = placements.filter { $0.section == "__patchable_function_entries" }.flatMap { p in
            (0..<(p.size / 8)).map { UnsafeRawPointer(bitPattern: p.address)!.load(fromByteOffset: $0 * 8, as: UInt.self) }
        }.sorted()
        // gcc pads patchable entries with five one-byte NOPs; a thread stopped between two of them
        // could not be patched safely later. Make each one 5-byte NOP before any code runs, as Linux's
        // ftrace_module_init does for a module's call sites.
        for e in patchableEntries {
            guard let a = allocator.allocation(containing: e), a.type == .text, e + 5 <= a.address + UInt(a.size) else { continue }
            if Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: e), count: 5)) == [0x90, 0x90, 0x90, 0x90, 0x90] {
                try? allocator.write([0x0F, 0x1F, 0x44, 0x00, 0x00], to: a, at: Int(e - a.address))
            }
        }
        if !patchableEntries.isEmpty { allocator.makeVisible() }
        // Constructors: .preinit_array, then .init_array (by priority), as the dynamic linker does.
        // .ctors and .dtors go where ld's script copies them: into .init_array and .fini_array, each
        // section's entries reversed (they were run last first), `.ctors.N` at priority 65535 - N.
        var initFunctions: [UInt] = [], fini: [UInt] = []
        let arrays = placements.filter {
            $0.section.hasPrefix(".preinit_array") || $0.section.hasPrefix(".init_array") || $0.section.hasPrefix(".fini_array")
                || Bucket.isLegacyArray($0.section, ".ctors") || Bucket.isLegacyArray($0.section, ".dtors")
        }
        func isLegacy(_ s: String) -> Bool { Bucket.isLegacyArray(s, ".ctors") || Bucket.isLegacyArray(s, ".dtors") }
        func priority(_ s: String) -> Int {
            guard let n = Int(s.split(separator: ".").last ?? "") else { return 65536 }
            return isLegacy(s) ? 65535 - n : n
        }
        for p in arrays.sorted(by: { ($0.section.hasPrefix(".preinit") ? 0 : 1, priority($0.section)) < ($1.section.hasPrefix(".preinit") ? 0 : 1, priority($1.section)) }) {
            var entries = (0..<(p.size / 8)).map { UnsafeRawPointer(bitPattern: p.address)!.load(fromByteOffset: $0 * 8, as: UInt.self) }
            if isLegacy(p.section) { entries.reverse() }
            if p.section.hasPrefix(".fini_array") || Bucket.isLegacyArray(p.section, ".dtors") { fini += entries } else { initFunctions += entries }
        }
        // Constructors are addresses in the module's text, destructors in its core text (init text
        // is freed before they run), or the file is wrong.
        for (f, isDestructor) in initFunctions.map({ ($0, false) }) + fini.map({ ($0, true) }) where f != 0 && f != UInt.max {
            let core = allocated[.text].map { [$0] } ?? []
            let allowed = isDestructor ? core : core + (allocated[.initText].map { [$0] } ?? [])
            guard let a = allocator.allocation(containing: f), allowed.contains(where: { $0.address == a.address }) else {
                loader.unregister(exportID)
                freeAll()
                throw .badInput(object: name, reason: "a \(isDestructor ? "destructor" : "constructor") at 0x\(String(f, radix: 16)) is not in the module's \(isDestructor ? "core " : "")text")
            }
        }
        finiFunctions = runsCode ? fini : []
        dsoHandle = runsCode ? addresses.dsoHandle : 0
        // Named and unwindable before any of its code runs (nothing fails from here on).
        let registrations = runsCode ? ModuleCode(link, module: name, addresses, debugObjects: CodeRegistry.shared.sinks.contains(.gdb)) : nil
        var handles = registrations.map { ModuleCodeHandles($0) } ?? ModuleCodeHandles(empty: ())
        // atexit registers a handler on the __dso_handle of the module whose text holds it.
        if dsoHandle != 0 {
            for b in [Bucket.text, .initText] { if let a = allocated[b] { _ = cem_module_text_add(a.address, a.address + UInt(a.size), UnsafeMutableRawPointer(bitPattern: dsoHandle)) } }
        }
        for f in initFunctions where runsCode && f != 0 && f != UInt.max {
            unsafeBitCast(UnsafeRawPointer(bitPattern: f)!, to: InitFunction.self)(0, nil, environ)
        }
        // Init done: seal ro-after-init, free init memory (its holes go back to the allocator).
        if let ro = allocated[.roAfterInit] { try? allocator.seal(ro) }
        var freed: [Allocation] = []
        // Unless the module registers exit handlers: one registered from init code may be init code
        // (as in Linux, init memory must not be reached after init; here it would run at unload).
        let keepsInit = link.uses("__cxa_atexit") || link.uses("atexit") || link.uses("on_exit")
        if !keepsInit, let registrations {
            handles.initDone(registrations) { frames, offset, width in
                if let a = allocated[frames.bucket] { try? allocator.write([UInt8](repeating: 0, count: width), to: a, at: offset) }
            }
        }
        for b in Bucket.allCases where b.isInit && !keepsInit {
            if let a = allocated.removeValue(forKey: b) { try? allocator.free(a); freed.append(a) }
        }
        freedInitAllocations = freed
        code = handles
        allocations = Dictionary(uniqueKeysWithValues: allocated.map { ($0.key.description, $0.value) })
    }

    /// A symbol the module defines.
    public func address(of symbol: String) -> UInt? { symbols[symbol] }

    /// Calls `int symbol(int argc, char **argv)`; `arguments[0]` is the program name.
    public func callMain(_ symbol: String = "main", arguments: [String]) throws(LoaderError) -> Int32 {
        guard let f = symbols[symbol] else { throw .noEntry(symbol: symbol, module: name) }
        guard let a = allocator.allocation(containing: f), allocations.values.contains(where: { $0.address == a.address }), a.type == .text else {
            throw .badInput(object: name, reason: "'\(symbol)' at 0x\(String(f, radix: 16)) is not in the module's text")
        }
        typealias Main = @convention(c) (Int32, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        return argv.withUnsafeMutableBufferPointer { b in
            unsafeBitCast(UnsafeRawPointer(bitPattern: f)!, to: Main.self)(Int32(arguments.count), b.baseAddress)
        }
    }

    /// Runs destructors (.fini_array, last first), removes the module's code from the code registry
    /// (perf, GDB, the unwinder) and frees the module's memory.
    public func unload() {
        guard !unloaded else { return }
        unloaded = true
        // The unloading thread's thread_local destructors first, as exit() runs them before exit
        // handlers (other threads' are dropped); then exit handlers registered on the module's
        // __dso_handle (C++ globals' destructors), as the dynamic linker's __cxa_finalize(dso)
        // does, then .fini_array: after the memory is freed, glibc would run them from exit() on int3.
        if dsoHandle != 0 { _ = cem_thread_atexit_unload(UnsafeMutableRawPointer(bitPattern: dsoHandle)) }
        if dsoHandle != 0, let finalize = cem_dlsym("__cxa_finalize") {
            unsafeBitCast(finalize, to: (@convention(c) (UnsafeMutableRawPointer?) -> Void).self)(UnsafeMutableRawPointer(bitPattern: dsoHandle))
        }
        for f in finiFunctions.reversed() where f != 0 && f != UInt.max {
            unsafeBitCast(UnsafeRawPointer(bitPattern: f)!, to: FiniFunction.self)()
        }
        if dsoHandle != 0 { cem_module_text_remove(UnsafeMutableRawPointer(bitPattern: dsoHandle)) }
        loader.unregister(exportID)
        code.removeAll()
        for a in allocations.values { try? allocator.free(a) }
        allocations = [:]
    }

    deinit { unload() }
}

/// Flushes every stdio stream, as returning from main does.
public func flushStandardIO() { cem_flush_all() }
