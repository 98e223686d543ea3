// What a module tells the code registry (ExecMem's kallsyms): per object, its text span with every
// function it defines (static ones too), its `.eh_frame` for the unwinder and, for objects compiled
// with -g, a debug object for GDB; per object again, its init text, registered while init runs. The
// veneers are one more registration (`name@plt`, as a linked program's PLT entries are named).
//
//   load:    write images -> register (one batch) -> constructors -> init done: unregister the
//            init text; an object whose .eh_frame describes init text is registered again with
//            those FDEs emptied -> free init memory
//   unload:  exit handlers, destructors -> unregister everything (one batch) -> free memory
//
// Registrations of one module never overlap: each object's sections of one type are consecutive in
// the layout, so its text span holds nothing of another object's.

import ExecMem
import ExecMemELF

/// The registrations of one module, built from its link once addresses are known.
struct ModuleCode {
    /// One object's registrations: core text and init text (either may be absent).
    struct Object {
        let index: Int
        var core: CodeRegistration?
        var initText: CodeRegistration?
        /// The object's frame table, with the FDEs of init text to empty once init memory is freed.
        let frames: Link.FrameTable?
    }

    var objects: [Object] = []
    var veneers: CodeRegistration?

    /// The registrations of `link`'s objects placed at `a`; debug objects only when `debugObjects`
    /// (GDB's sink is on: a debug object is a copy of the whole object file).
    init(_ link: Link, module: String, _ a: Link.Addresses, debugObjects: Bool) {
        let tables = Dictionary(link.frames.map { ($0.object, $0) }, uniquingKeysWith: { first, _ in first })
        for (o, obj) in link.objects.enumerated() {
            let frames = tables[o]
            let unwind = frames.map { CodeUnwind.section(a.base[$0.bucket.rawValue] + UInt($0.offset)) }
            let debug = debugObjects ? DebugObject.make(obj.elf) { link.sectionAddress(o, $0.index, a) } : nil
            var entry = Object(index: o, frames: frames)
            entry.core = Self.registration(link, o, .text, module: module, a)
            entry.initText = Self.registration(link, o, .initText, module: module, a)
            // The unwinder's table and GDB's file go with the core text, or with the init text of an
            // object that has nothing else.
            if entry.core != nil {
                entry.core!.unwind = unwind
                entry.core!.debugObject = debug
            } else if entry.initText != nil {
                entry.initText!.unwind = unwind
                entry.initText!.debugObject = debug
            }
            if entry.core != nil || entry.initText != nil { objects.append(entry) }
        }
        if !link.veneers.isEmpty {
            let symbols = link.veneers.map { CodeSymbol(name: "\(link.name($0.key))@plt", address: a.veneerAddress + UInt($0.value * Link.veneerSize), size: Link.veneerSize) }
            veneers = CodeRegistration(name: "\(module)@plt", kind: .moduleFunction, address: a.veneerAddress,
                                       size: link.veneers.count * Link.veneerSize, owner: module, symbols: symbols)
        }
    }

    /// One object's code of `bucket`: its span, and every STT_FUNC in it.
    static func registration(_ link: Link, _ o: Int, _ bucket: Bucket, module: String, _ a: Link.Addresses) -> CodeRegistration? {
        let elf = link.objects[o].elf
        var lo = UInt.max, hi: UInt = 0
        for s in elf.sections where s.size > 0 {
            guard let (b, off) = link.layout.place[Layout.SectionKey(object: o, section: s.index)], b == bucket else { continue }
            let start = a.base[b.rawValue] + UInt(off)
            lo = min(lo, start)
            hi = max(hi, start + UInt(s.size))
        }
        guard lo < hi else { return nil }
        var symbols: [CodeSymbol] = []
        for s in elf.symbols where s.type == ELF.STT_FUNC && !s.isUndefined && s.sectionIndex < ELF.SHN_LORESERVE && !s.name.isEmpty {
            let section = Int(s.sectionIndex)
            guard section < elf.sections.count, let (b, off) = link.layout.place[Layout.SectionKey(object: o, section: section)], b == bucket,
                  s.value < UInt64(elf.sections[section].size) else { continue }
            let size = Int(clamping: min(s.size, UInt64(elf.sections[section].size) - s.value))
            symbols.append(CodeSymbol(name: s.name, address: a.base[b.rawValue] + UInt(off) + UInt(s.value), size: max(size, 1)))
        }
        return CodeRegistration(name: link.objects[o].name, kind: .moduleFunction, address: lo, size: Int(hi - lo), owner: module, symbols: symbols)
    }
}

/// The handles of a module's live registrations.
struct ModuleCodeHandles {
    var core: [Int: CodeHandle] = [:]
    var initText: [Int: CodeHandle] = [:]
    var veneers: CodeHandle?

    /// Registers everything in `code`, in one batch.
    init(_ code: ModuleCode) {
        self = CodeRegistry.shared.batch { () -> ModuleCodeHandles in
            var h = ModuleCodeHandles(empty: ())
            for o in code.objects {
                if let r = o.core { h.core[o.index] = CodeRegistry.shared.register(r) }
                if let r = o.initText { h.initText[o.index] = CodeRegistry.shared.register(r) }
            }
            if let v = code.veneers { h.veneers = CodeRegistry.shared.register(v) }
            return h
        }
    }

    init(empty: ()) {}

    /// Init memory is about to be freed: its code leaves the registry, and each object whose frame
    /// table describes init text gets that table back with those FDEs emptied (written through
    /// `write`, while the unwinder does not hold the table).
    mutating func initDone(_ code: ModuleCode, write: (Link.FrameTable, Int, Int) -> Void) {
        CodeRegistry.shared.batch {
            for (_, h) in initText { CodeRegistry.shared.unregister(h) }
            initText = [:]
            for o in code.objects {
                guard let frames = o.frames, !frames.initRanges.isEmpty, let h = core[o.index], let r = o.core else { continue }
                CodeRegistry.shared.unregister(h)
                for f in frames.initRanges { write(frames, f.offset, f.width) }
                // GDB's file still names the init functions; nothing runs at their addresses any more.
                core[o.index] = CodeRegistry.shared.register(r)
            }
        }
    }

    /// Everything leaves the registry, in one batch.
    mutating func removeAll() {
        CodeRegistry.shared.batch {
            for h in Array(core.values) + Array(initText.values) + (veneers.map { [$0] } ?? []) { CodeRegistry.shared.unregister(h) }
        }
        self = ModuleCodeHandles(empty: ())
    }
}

// MARK: - GDB's file for an object with DWARF

// The file GDB reads for a loaded object compiled with -g: the object itself, still ET_REL, with each
// loaded section's sh_addr set to where the section was loaded. GDB's JIT interface takes every
// allocated section's sh_addr as its absolute address (jit.c), places the symbols there, and relocates
// the debug sections itself (symfile_relocate_debug_section, through BFD) against those addresses: so
// DWARF's line table and ranges name load addresses without the loader relocating a byte of them.
// (The alternative, relocating them here and writing ET_EXEC, is not needed with GDB 13.)
// Sections that were not loaded (a COMDAT group's later copy) lose SHF_ALLOC, so GDB places nothing
// at address 0 for them; thread-local sections keep their file addresses (GDB finds those through
// the thread library, which knows nothing of the loader's TLS arena).
//
// Checked against GDB 13.1: a pending `hbreak` by name resolves in the file when it is announced, and
// a backtrace inside it shows `function (args) at file.c:line` (ObservabilityTests' GDBTests).
enum DebugObject {
    /// Whether GDB would find DWARF in the object (a `.debug_info` section with bytes).
    static func hasDWARF(_ elf: ELFFile) -> Bool {
        elf.sections.contains { $0.name == ".debug_info" && $0.hasFileBytes && $0.size > 0 }
    }

    /// A copy of `elf`'s file with each section that `address` places at its load address; nil when
    /// the object has no DWARF or its section headers cannot be read back (ELFFile read them already).
    static func make(_ elf: ELFFile, address: (ELFSection) -> UInt?) -> [UInt8]? {
        guard hasDWARF(elf) else { return nil }
        let reader = ELFReader(elf.bytes, file: elf.name)
        var out = elf.bytes
        do throws(ELFError) {
            let shoff = try reader.le(0x28, as: UInt64.self, "e_shoff")
            let shentsize = try reader.le(0x3A, as: UInt16.self, "e_shentsize")
            guard shentsize == 64, let table = Int(exactly: shoff) else { return nil }
            for s in elf.sections where s.isAllocated {
                let (header, overflow) = table.addingReportingOverflow(s.index &* 64)
                guard !overflow, header >= 0, header <= out.count - 64 else { return nil }
                if let a = address(s) {
                    put(UInt64(a), at: header + 16, in: &out)  // sh_addr
                } else if s.flags & ELF.SHF_TLS == 0 {
                    put(s.flags & ~ELF.SHF_ALLOC, at: header + 8, in: &out)  // sh_flags
                }
            }
        } catch {
            return nil
        }
        return out
    }

    private static func put(_ v: UInt64, at offset: Int, in bytes: inout [UInt8]) {
        for i in 0..<8 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}
