// Linking one module: resolve symbols (the module's own definitions, then other modules' exports,
// then the host through dlsym; weak undefined is 0), plan a GOT and veneers, place the module, and
// apply x86-64 relocations into the section images, checking every field for overflow.

import CExecMemLoaderRuntime
import ExecMem
import ExecMemELF
import Foundation

/// A symbol as relocations name it: a global by its id (`GlobalNames`), a local by where it is.
enum Identity: Hashable {
    case global(Int32)
    case local(object: Int, symbol: Int)
}

enum GotKey: Hashable {
    case address(Identity)
    case tpoff(Identity)
    case tlsgd(Identity)
    case tlsld
}

struct Link {
    var objects: [InputObject]
    /// The load's global names and their ids.
    let names: GlobalNames
    /// Global definitions of the module, by id: (object, symbol), or (-1, -1) for none.
    var globals: [(object: Int, symbol: Int)]
    /// Whether some object references each id undefined.
    var referenced: [Bool]
    /// For each id, the first object that references it undefined and not weak (-1 for none): an
    /// unresolved symbol is an error only when some reference is strong.
    var strongUse: [Int]
    var layout: Layout
    var got: [GotKey: Int] = [:]
    var gotOrder: [GotKey] = []
    /// External functions a rel32 may need to reach through a veneer: id -> veneer index.
    var veneers: [Int32: Int] = [:]
    var gotOffset = 0, veneerOffset = 0
    /// Host and other-module symbols by id, looked up once.
    var external: [UInt?]
    /// Whether an external symbol is another loaded module's export: its data is in this loader's
    /// memory, not the host's, and needs no range placed near a library (a rel32 to it fits when
    /// both modules share a range).
    var fromModule: [Bool]
    var tlsBase = 0
    /// Each object's `.eh_frame` in rodata, and the FDEs of functions left out, by section (see EHFrame).
    var frames: [FrameTable] = []
    var discardedFDEs: [Layout.SectionKey: [EHFrame.FDE]] = [:]
    /// The process's mappings (telling host functions from host data), read the first time a rel32
    /// to a host symbol needs them: most loads never do, and reading them costs about a millisecond.
    lazy var hostMaps = HostMaps.shared

    static let veneerSize = 8  // jmp *slot(%rip) + 2 bytes of int3

    init(_ inputs: [LoaderInput], maxModuleBytes: Int = Layout.maxImageBytes) throws(LoaderError) {
        var (objects, names) = try Inputs.resolve(inputs)
        try Link.excludeDuplicateGroups(&objects)
        var globals = [(object: Int, symbol: Int)](repeating: (-1, -1), count: names.count)
        var referenced = [Bool](repeating: false, count: names.count)
        var strongUse = [Int](repeating: -1, count: names.count)
        // Per id, the largest COMMON symbol (the first of equal ones) and the largest alignment of any.
        var commons: [Int32: (object: Int, symbol: Int, alignment: Int)] = [:]
        var strong = [Bool](repeating: false, count: names.count)
        for (o, obj) in objects.enumerated() {
            let symbols = obj.elf.symbols
            for (i, g) in obj.globalID.enumerated() where g >= 0 {
                let s = symbols[i], id = Int(g)
                if s.isUndefined {
                    referenced[id] = true
                    if !s.isWeak && strongUse[id] < 0 { strongUse[id] = o }
                    continue
                }
                guard s.isGlobal else { continue }
                if s.sectionIndex < ELF.SHN_LORESERVE && !obj.excluded.isEmpty && obj.excluded.contains(Int(s.sectionIndex)) { continue }
                if s.isCommon {
                    // As ld: the size of the largest, the alignment (st_value) of the most aligned.
                    var a = try Layout.alignment(s.value, "COMMON symbol \(s.name)", object: obj.name)
                    if let c = commons[g] {
                        a = max(a, c.alignment)
                        if objects[c.object].elf.symbols[c.symbol].size >= s.size { commons[g]!.alignment = a; continue }
                    }
                    commons[g] = (o, i, a)
                    continue
                }
                if globals[id].object >= 0 {
                    if s.isWeak { continue }
                    if strong[id] {
                        throw .duplicateDefinition(name: s.name, first: objects[globals[id].object].name, second: obj.name)
                    }
                }
                globals[id] = (o, i)
                if !s.isWeak { strong[id] = true }
            }
        }
        // As ld: a strong definition wins over COMMON symbols, and a COMMON symbol over weak definitions.
        let placedCommons = commons.filter { !strong[Int($0.key)] }.sorted { $0.key < $1.key }
        layout = try Layout(objects, commons: placedCommons.map(\.value), limit: maxModuleBytes)
        for (id, c) in placedCommons { globals[Int(id)] = (c.object, c.symbol) }
        self.objects = objects
        self.names = names
        self.globals = globals
        self.referenced = referenced
        self.strongUse = strongUse
        external = [UInt?](repeating: nil, count: names.count)
        fromModule = [Bool](repeating: false, count: names.count)
    }

    /// Later copies of a COMDAT group (by signature) are left out.
    static func excludeDuplicateGroups(_ objects: inout [InputObject]) throws(LoaderError) {
        var seen = Set<String>()
        for o in objects.indices {
            let elf = objects[o].elf
            for g in elf.sections where g.type == ELF.SHT_GROUP {
                // GRP flags, then section indexes: whole 32-bit words of the section, read checked.
                guard g.size % 4 == 0, g.size >= 4, Int(g.info) < elf.symbols.count else {
                    throw .badInput(object: objects[o].name, reason: "malformed section group \(g.name): \(g.size) bytes, signature symbol \(g.info)")
                }
                let r = ELFReader(elf.bytes, file: objects[o].name)
                var words: [UInt32] = []
                for at in stride(from: g.offset, to: g.offset + g.size, by: 4) {
                    do throws(ELFError) { words.append(try r.le(at, as: UInt32.self, "word of section group \(g.name)")) } catch { throw .elf(error) }
                }
                let flags = words[0]
                // gas names a group after a section symbol (no name of its own) when the signature
                // is the section's name: the signature is then that section's name, as ld takes it.
                let key = elf.symbols[Int(g.info)]
                let signature = key.type == ELF.STT_SECTION && key.name.isEmpty && Int(key.sectionIndex) < elf.sections.count
                    ? elf.sections[Int(key.sectionIndex)].name : key.name
                if flags & 1 == 1 && !seen.insert(signature).inserted {
                    for m in words.dropFirst() { objects[o].excluded.insert(Int(m)) }
                }
            }
        }
    }

    // MARK: - Symbols

    func identity(_ o: Int, _ s: Int) -> Identity {
        let g = objects[o].globalID[s]
        return g >= 0 ? .global(g) : .local(object: o, symbol: s)
    }

    /// The definition an identity resolves to inside the module, if any.
    func definition(_ id: Identity) -> (object: Int, symbol: Int)? {
        switch id {
        case let .local(o, s): return (o, s)
        case let .global(g): return globals[Int(g)].object >= 0 ? globals[Int(g)] : nil
        }
    }

    /// The name of a global id.
    func name(_ g: Int32) -> String { names.names[Int(g)] }

    /// Whether the symbol is thread-local.
    func isTLS(_ o: Int, _ s: Int) -> Bool {
        let sym = objects[o].elf.symbols[s]
        if sym.type == ELF.STT_TLS { return true }
        return sym.sectionIndex < ELF.SHN_LORESERVE && layout.tls[Layout.SectionKey(object: o, section: Int(sym.sectionIndex))] != nil
    }

    /// The globals some object references that no object defines (each once, in id order), but
    /// the module's own `_GLOBAL_OFFSET_TABLE_` and `__dso_handle`.
    var undefinedGlobals: [Int32] {
        (0..<Int32(names.count)).filter { globals[Int($0)].object < 0 && referenced[Int($0)] && !["_GLOBAL_OFFSET_TABLE_", "__dso_handle"].contains(names.names[Int($0)]) }
    }

    /// Resolves every undefined global: `found` answers for other modules' exports and the host's
    /// provided symbols (with whether it is a module's), then the loader's runtime, then dlsym; a
    /// weak undefined symbol is 0.
    mutating func resolveExternals(_ found: [Int32: (address: UInt, fromModule: Bool)], object: String) throws(LoaderError) {
        for g in undefinedGlobals {
            let name = names.names[Int(g)]
            if let f = found[g] { external[Int(g)] = f.address; fromModule[Int(g)] = f.fromModule; continue }
            switch name {
            case "__tls_get_addr": external[Int(g)] = TLSArena.getAddr; continue
            case "__cxa_thread_atexit", "__cxa_thread_atexit_impl": external[Int(g)] = TLSArena.threadAtexit; continue
            // In libc_nonshared.a, not exported: registered on the module's __dso_handle.
            case "atexit": external[Int(g)] = UInt(bitPattern: cem_atexit_address()); continue
            case "at_quick_exit": external[Int(g)] = UInt(bitPattern: cem_at_quick_exit_address()); continue
            default: break
            }
            if let p = cem_dlsym(name) { external[Int(g)] = UInt(bitPattern: p); continue }
            // Weak when every reference is weak (known from Link.init: a scan of every object's
            // symbols here, once per unresolved symbol, took time quadratic in the symbols).
            let o = strongUse[Int(g)]
            guard o >= 0 else { external[Int(g)] = 0; continue }
            throw .undefinedSymbol(name: name, object: objects[o].name)
        }
    }

    // MARK: - Planning the GOT and veneers

    /// Scans relocations for GOT slots and veneers; says whether the module needs the low 2 GiB
    /// (absolute 32-bit relocations) and which host data it reaches with rel32 (copy relocations).
    mutating func plan() throws(LoaderError) -> (needsLow: String?, hostData: [(name: String, address: UInt)]) {
        var needsLow: String? = nil
        var hostData: [(String, UInt)] = []
        func slot(_ k: GotKey, count: Int = 1) {
            guard got[k] == nil else { return }
            got[k] = gotOrder.count
            gotOrder.append(k)
            if count == 2 { gotOrder.append(k) }
        }
        for (o, obj) in objects.enumerated() {
            for section in obj.elf.sections where placed(o, section.index) || layout.isZeroFill(Layout.SectionKey(object: o, section: section.index)) {
                let relocations: [ELFRelocation]
                do { relocations = try obj.elf.relocations(for: section) } catch { throw .elf(error) }
                if !section.hasFileBytes, let r = relocations.first {
                    throw .badInput(object: obj.name, reason: "relocation \(Relocation.name(r.type)) at offset \(r.offset) of NOBITS section \(section.name): it has no bytes to relocate")
                }
                // Thread-local images are copied as they are in the file: a relocation in one
                // (`__thread int *p = &x;`) would be left undone, so it is refused, not ignored.
                if layout.tls[Layout.SectionKey(object: o, section: section.index)] != nil, let r = relocations.first(where: { $0.type != 0 }) {
                    throw .unsupportedRelocation(object: obj.name, section: section.name, offset: r.offset, type: r.type)
                }
                if !relocations.isEmpty { objects[o].relocations[section.index] = relocations }
                for r in relocations where r.type != 0 {
                    let sym = obj.elf.symbols[r.symbolIndex]
                    let id = identity(o, r.symbolIndex)
                    switch r.type {
                    case Relocation.GOTPCREL, Relocation.GOTPCRELX, Relocation.REX_GOTPCRELX: slot(.address(id))
                    case Relocation.GOTTPOFF: slot(.tpoff(id))
                    case Relocation.TLSGD: slot(.tlsgd(id), count: 2)
                    case Relocation.TLSLD: slot(.tlsld, count: 2)
                    case Relocation.PLT32, Relocation.PC32:
                        // A call to an undefined weak function (0: `_ZTH` init functions of `extern
                        // thread_local` variables, called only when not 0) cannot reach 0 with rel32
                        // either: it goes through a veneer whose slot holds 0, as a PLT entry would.
                        if case let .global(g) = id, globals[Int(g)].object < 0, let a = external[Int(g)], a != 0 || r.type == Relocation.PLT32 {
                            if r.type == Relocation.PC32 && !isExecutable(a) {
                                // Data reached with rel32: no veneer can help. Another module's is in
                                // reach when the modules share a range (else the relocation overflows).
                                if !fromModule[Int(g)] { hostData.append((name(g), a)) }
                            } else if veneers[g] == nil {
                                veneers[g] = veneers.count
                                slot(.address(id))
                            }
                        }
                    case Relocation.R_32, Relocation.R_32S:
                        if needsLow == nil { needsLow = "\(obj.name): \(Relocation.name(r.type)) against '\(sym.name.isEmpty ? section.name : sym.name)'" }
                    default: break
                    }
                }
            }
        }
        if !veneers.isEmpty || !gotOrder.isEmpty || uses("_GLOBAL_OFFSET_TABLE_") {
            gotOffset = layout.append(.rodata, bytes: max(8, gotOrder.count * 8), alignment: 8)
        }
        if !veneers.isEmpty { veneerOffset = layout.append(.text, bytes: veneers.count * Link.veneerSize, alignment: 16) }
        try planFrames()
        return (needsLow, hostData)
    }

    /// Whether some object references `name` undefined.
    func uses(_ name: String) -> Bool { names.lookup(name).map { referenced[Int($0)] } ?? false }

    func placed(_ o: Int, _ s: Int) -> Bool {
        layout.place[Layout.SectionKey(object: o, section: s)] != nil || layout.tls[Layout.SectionKey(object: o, section: s)] != nil
    }

    /// Whether `address` lies in an executable mapping of the process (a function, not data).
    mutating func isExecutable(_ address: UInt) -> Bool {
        hostMaps.first { $0.start <= address && address < $0.end }?.executable ?? false
    }
}

/// The process's mappings, read once per load for telling host functions from host data.
enum HostMaps {
    struct Entry { let start: UInt; let end: UInt; let executable: Bool; let path: String }

    static var shared: [Entry] {
        // Read to the end: procfs files report a size of 0, so a sized read would stop early.
        guard let handle = FileHandle(forReadingAtPath: "/proc/self/maps") else { return [] }
        defer { try? handle.close() }
        let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard f.count >= 2 else { return nil }
            let r = f[0].split(separator: "-")
            guard r.count == 2, let s = UInt(r[0], radix: 16), let e = UInt(r[1], radix: 16) else { return nil }
            return Entry(start: s, end: e, executable: f[1].dropFirst(2).first == "x",
                         path: f.count > 5 ? String(f[5].drop { $0 == " " }) : "")
        }
    }

    /// The extent of every mapping of the file that maps `address`.
    static func image(containing address: UInt) -> (path: String, start: UInt, end: UInt)? {
        let maps = shared
        guard let m = maps.first(where: { $0.start <= address && address < $0.end }) else { return nil }
        guard !m.path.isEmpty else { return (m.path, m.start, m.end) }
        let same = maps.filter { $0.path == m.path }
        return (m.path, same.map(\.start).min()!, same.map(\.end).max()!)
    }
}
