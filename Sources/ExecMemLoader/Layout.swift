// Sections laid out by mapping type, as the kernel's layout_sections() does for modules: executable
// sections to text, read-only data (and .data.rel.ro, once relocated) to rodata, ro-after-init data
// to its own type, writable data and .bss/COMMON to data, and .init* sections to init memory that is
// freed once initialization has run. Each section keeps its alignment within its type.
//
//   text        .text*  (and at the end, veneers: `jmp *slot(%rip)` for targets out of rel32 reach)
//   rodata      .rodata*, .data.rel.ro*, .eh_frame (each + a zero word), .fini_array, .dtors  (and at the end, the GOT)
//   roAfterInit .data..ro_after_init, .data.ro_after_init
//   data        .data*, .bss*, COMMON symbols
//   initText    .init.text*            initRodata  .init.rodata*
//   initData    .init.data*, .init_array, .preinit_array, .ctors (read during init, freed after it)
//   tls         .tdata, .tbss  (in the static TLS arena, not in module memory)

import ExecMem
import ExecMemELF

enum Bucket: Int, CaseIterable, CustomStringConvertible {
    case text, rodata, roAfterInit, data, initText, initRodata, initData

    var kind: ExecMemKind {
        switch self {
        case .text, .initText: .moduleText
        case .rodata, .initRodata: .moduleRodata
        case .roAfterInit: .moduleRoAfterInit
        case .data, .initData: .moduleData
        }
    }

    var isInit: Bool { self == .initText || self == .initRodata || self == .initData }

    var description: String {
        ["text", "rodata", "roAfterInit", "data", "initText", "initRodata", "initData"][rawValue]
    }

    /// Whether `name` is `.ctors`/`.dtors` (`prefix`) or one with a priority (`.ctors.65335`): the
    /// arrays older compilers emit (clang -fno-use-init-array), which ld copies into .init_array and
    /// .fini_array.
    static func isLegacyArray(_ name: String, _ prefix: String) -> Bool { name == prefix || name.hasPrefix(prefix + ".") }

    /// Where a section goes; nil for sections that are not loaded.
    static func of(_ s: ELFSection) -> Bucket? {
        guard s.isAllocated, s.type != ELF.SHT_GROUP, s.flags & ELF.SHF_TLS == 0 else { return nil }
        let n = s.name
        if n.hasPrefix(".init_array") || n.hasPrefix(".preinit_array") || isLegacyArray(n, ".ctors") { return .initData }
        if n.hasPrefix(".fini_array") || isLegacyArray(n, ".dtors") { return .rodata }
        if s.isExecutable { return n.hasPrefix(".init.") || n == ".init" ? .initText : .text }
        if n.hasPrefix(".data..ro_after_init") || n.hasPrefix(".data.ro_after_init") { return .roAfterInit }
        if n.hasPrefix(".data.rel.ro") { return .rodata }
        if !s.isWritable { return n.hasPrefix(".init.") ? .initRodata : .rodata }
        return n.hasPrefix(".init.") ? .initData : .data
    }
}

/// Where every loaded section went, before addresses are known.
struct Layout {
    /// (object, section) -> (bucket, offset in the bucket).
    var place: SectionMap<(Bucket, Int)>
    var size = [Int](repeating: 0, count: Bucket.allCases.count)
    var alignment = [Int](repeating: 1, count: Bucket.allCases.count)
    /// COMMON symbols, placed at the end of data: (object, symbol) -> offset in data.
    var common: [SymbolKey: Int] = [:]
    /// Per bucket, the bytes that come from files (and the GOT, veneers and `__dso_handle`): NOBITS
    /// sections and COMMON symbols follow them in the allocation's fresh (zeroed) memory, never built as images.
    var fileBytes = [Int](repeating: 0, count: Bucket.allCases.count)
    /// NOBITS sections and COMMON symbols waiting for `placeZeroFill`, after every `append`.
    private var zeroFill: [(section: SectionKey?, symbol: SymbolKey?, bucket: Bucket, bytes: Int, alignment: Int, name: String, object: String)] = []
    private var zeroFillSections: SectionMap<Bool>
    private var zeroFillPlaced = false
    /// Thread-local sections: (object, section) -> offset in the module's TLS image.
    var tls: SectionMap<Int>
    var tlsSize = 0
    var tlsAlignment = 1

    struct SectionKey: Hashable { let object: Int; let section: Int }
    struct SymbolKey: Hashable { let object: Int; let symbol: Int }

    static func align(_ v: Int, _ a: Int) -> Int { (v + a - 1) / a * a }

    /// The most bytes a module's memory (all types together) or its TLS image may take: sizes come
    /// from the files, and a `.bss` of 2^60 bytes must be an error, not an allocation.
    static let maxImageBytes = 1 << 30

    /// This layout's limit: `ModuleLoader.maxModuleBytes` unless the loader was given less.
    let limit: Int

    /// `at + bytes` for a section of `object`, within the image limit.
    func end(_ at: Int, _ bytes: Int, _ what: @autoclosure () -> String, object: String) throws(LoaderError) -> Int {
        let (e, overflow) = at.addingReportingOverflow(bytes)
        guard bytes >= 0, !overflow, e <= limit else {
            throw .badInput(object: object, reason: "\(what()) of \(bytes) bytes takes the module past \(Self.describe(limit)) (the most a module may take: ModuleLoader.moduleLimit)")
        }
        return e
    }

    /// A power-of-two alignment up to 2 MiB from a file's field.
    static func alignment(_ value: UInt64, _ what: @autoclosure () -> String, object: String) throws(LoaderError) -> Int {
        guard value <= UInt64(ExecMemGeometry.blockSize), value & (value &- 1) == 0 || value == 0 else {
            throw .badInput(object: object, reason: "\(what()) has alignment \(value) (a power of two up to 2 MiB is supported)")
        }
        return max(1, Int(value))
    }

    static func describe(_ bytes: Int) -> String { bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB" : "\(bytes) bytes" }

    /// `commons`: the COMMON symbols to place, each with its alignment (the largest of the symbol's
    /// COMMON declarations, as ld takes it).
    init(_ objects: [InputObject], commons: [(object: Int, symbol: Int, alignment: Int)], limit: Int = Layout.maxImageBytes) throws(LoaderError) {
        self.limit = limit
        let counts = objects.map(\.elf.sections.count)
        place = SectionMap(sectionCounts: counts)
        tls = SectionMap(sectionCounts: counts)
        zeroFillSections = SectionMap(sectionCounts: counts)
        for (o, obj) in objects.enumerated() {
            for s in obj.elf.sections where obj.excluded.isEmpty || !obj.excluded.contains(s.index) {
                let a = try Self.alignment(s.alignment, "section \(s.name)", object: obj.name)
                if s.isAllocated && s.flags & ELF.SHF_TLS != 0 {
                    tlsSize = Layout.align(tlsSize, a)
                    tls[SectionKey(object: o, section: s.index)] = tlsSize
                    tlsSize = try end(tlsSize, s.size, "TLS section \(s.name)", object: obj.name)
                    tlsAlignment = max(tlsAlignment, a)
                    continue
                }
                guard let b = Bucket.of(s) else { continue }
                // Arrays of addresses read back after relocation: NOBITS ones would be all zeros,
                // and reading a gigabyte of zeros as entries costs gigabytes.
                if !s.hasFileBytes, [".init_array", ".fini_array", ".preinit_array", "__patchable_function_entries"].contains(where: { s.name.hasPrefix($0) })
                    || Bucket.isLegacyArray(s.name, ".ctors") || Bucket.isLegacyArray(s.name, ".dtors") {
                    throw .badInput(object: obj.name, reason: "\(s.name) is NOBITS: an array of addresses needs its bytes in the file")
                }
                if !s.hasFileBytes {
                    zeroFill.append((SectionKey(object: o, section: s.index), nil, b, s.size, a, s.name, obj.name))  // names shared, not copied
                    zeroFillSections[SectionKey(object: o, section: s.index)] = true
                    continue
                }
                let at = Layout.align(size[b.rawValue], a)
                place[SectionKey(object: o, section: s.index)] = (b, at)
                // Each object's .eh_frame is registered with the unwinder as a table of its own, which
                // ends at a zero word (the image's zero bytes after it).
                let bytes = s.name == ".eh_frame" && (b == .rodata || b == .data) ? s.size + EHFrame.terminatorBytes : s.size
                size[b.rawValue] = try end(at, bytes, "section \(s.name)", object: obj.name)
                alignment[b.rawValue] = max(alignment[b.rawValue], a)
            }
        }
        // COMMON symbols: st_value is the alignment (checked by Link.init, the largest of them).
        for c in commons {
            let obj = objects[c.object], sym = obj.elf.symbols[c.symbol], a = c.alignment
            guard let bytes = Int(exactly: sym.size) else {
                throw .badInput(object: obj.name, reason: "COMMON symbol \(sym.name) has size \(sym.size), more than a module may take")
            }
            zeroFill.append((nil, SymbolKey(object: c.object, symbol: c.symbol), .data, bytes, a, sym.name, obj.name))
        }
        // Refuse an oversized module now, before any GOT or veneer planning: every zero-filled item
        // at its worst alignment on top of the file bytes.
        var total = size.reduce(0, +)
        for z in zeroFill {
            total = try end(total, z.bytes, Self.describe(z), object: z.object)
            total = try end(total, z.alignment - 1, Self.describe(z), object: z.object)
        }
        guard total <= limit else {
            throw .badInput(object: objects.first?.name ?? "module", reason: "the module's sections take \(total) bytes, past \(Self.describe(limit)) (the most a module may take: ModuleLoader.moduleLimit)")
        }
    }

    /// How an error names a zero-filled item (made only for an error).
    private static func describe(_ z: (section: SectionKey?, symbol: SymbolKey?, bucket: Bucket, bytes: Int, alignment: Int, name: String, object: String)) -> String {
        z.section != nil ? "section \(z.name)" : "COMMON symbol \(z.name)"
    }

    /// Whether (object, section) is a NOBITS section that `placeZeroFill` places.
    func isZeroFill(_ key: SectionKey) -> Bool { zeroFillSections[key] == true }

    /// Places the NOBITS sections and COMMON symbols after everything else in their buckets (once,
    /// after the last `append`), so that the bytes before them are all that is built as an image.
    mutating func placeZeroFill() throws(LoaderError) {
        guard !zeroFillPlaced else { return }
        zeroFillPlaced = true
        fileBytes = size
        for z in zeroFill {
            let at = Layout.align(size[z.bucket.rawValue], z.alignment)
            if let k = z.section { place[k] = (z.bucket, at) }
            if let k = z.symbol { common[k] = at }
            size[z.bucket.rawValue] = try end(at, z.bytes, Self.describe(z), object: z.object)
            alignment[z.bucket.rawValue] = max(alignment[z.bucket.rawValue], z.alignment)
        }
        guard size.reduce(0, +) <= limit else {
            throw .badInput(object: "module", reason: "the module takes \(size.reduce(0, +)) bytes, past \(Self.describe(limit)) (the most a module may take: ModuleLoader.moduleLimit)")
        }
    }

    /// Appends `bytes` bytes aligned to `a` to a bucket; returns the offset.
    mutating func append(_ b: Bucket, bytes: Int, alignment a: Int) -> Int {
        precondition(!zeroFillPlaced, "Layout.append after placeZeroFill")
        let at = Layout.align(size[b.rawValue], a)
        size[b.rawValue] = at + bytes
        alignment[b.rawValue] = max(alignment[b.rawValue], a)
        return at
    }
}
