// One ELF64 reader for every client: the eBPF loader (objects from `clang -target bpf`) and the module
// loader (x86-64 relocatable objects and the members of `ar` archives). It reads headers, sections,
// symbols and relocations out of a byte array, checking every offset, size and index against the
// file first; a malformed file is an `ELFError` that names the file, the section and the offset, never
// a crash.

public enum ELFError: Error, CustomStringConvertible, Sendable, Equatable {
    case truncated(file: String, what: String, offset: Int, size: Int)
    case notELF(file: String)
    case unsupported(file: String, what: String)
    case wrongMachine(file: String, machine: UInt16, expected: UInt16)
    case badIndex(file: String, what: String, index: Int, count: Int)
    case malformed(file: String, what: String)
    case archive(file: String, what: String)

    public var description: String {
        switch self {
        case let .truncated(f, what, offset, size): "\(f): truncated: \(what) at offset \(offset) is past the end (\(size) bytes)"
        case let .notELF(f): "\(f): not an ELF file (bad magic)"
        case let .unsupported(f, what): "\(f): unsupported: \(what)"
        case let .wrongMachine(f, m, e): "\(f): wrong machine \(m), expected \(e)"
        case let .badIndex(f, what, i, n): "\(f): bad \(what) index \(i) (there are \(n))"
        case let .malformed(f, what): "\(f): malformed: \(what)"
        case let .archive(f, what): "\(f): corrupt archive: \(what)"
        }
    }
}

public struct ELFSection: Sendable {
    public let index: Int
    public let name: String
    public let type: UInt32
    public let flags: UInt64
    public let address: UInt64
    public let offset: Int
    public let size: Int
    public let link: UInt32
    public let info: UInt32
    public let alignment: UInt64
    public let entrySize: UInt64

    public var isAllocated: Bool { flags & ELF.SHF_ALLOC != 0 }
    public var isWritable: Bool { flags & ELF.SHF_WRITE != 0 }
    public var isExecutable: Bool { flags & ELF.SHF_EXECINSTR != 0 }
    /// NOBITS sections (.bss) occupy no bytes in the file.
    public var hasFileBytes: Bool { type != ELF.SHT_NOBITS }
}

public struct ELFSymbol: Sendable {
    public let index: Int
    public let name: String
    public let value: UInt64
    public let size: UInt64
    public let info: UInt8
    public let other: UInt8
    public let sectionIndex: UInt16

    public var binding: UInt8 { info >> 4 }
    public var type: UInt8 { info & 0xF }
    public var isUndefined: Bool { sectionIndex == ELF.SHN_UNDEF }
    public var isCommon: Bool { sectionIndex == ELF.SHN_COMMON }
    public var isAbsolute: Bool { sectionIndex == ELF.SHN_ABS }
    /// Global, weak, or GNU unique (g++'s static locals of inline functions: one copy per process).
    public var isGlobal: Bool { binding == ELF.STB_GLOBAL || binding == ELF.STB_WEAK || binding == ELF.STB_GNU_UNIQUE }
    public var isWeak: Bool { binding == ELF.STB_WEAK }
}

public struct ELFRelocation: Sendable {
    /// Offset within the section the relocation applies to.
    public let offset: UInt64
    public let type: UInt32
    public let symbolIndex: Int
    /// Explicit addend (RELA), or nil for REL, whose addend is in the bytes being relocated.
    public let addend: Int64?
}

public struct ELFFile: Sendable {
    public let name: String
    public let bytes: [UInt8]
    public let type: UInt16
    public let machine: UInt16
    public let flags: UInt32
    public let sections: [ELFSection]
    public let symbols: [ELFSymbol]
    /// Index of the symbol table section, 0 when there is none.
    public let symbolTableIndex: Int
    /// Section index -> the REL/RELA sections that apply to it.
    private let relocationSections: [Int: [Int]]

    /// Parses an ELF64 little-endian file. `machine`, when given, must match. Its names may take
    /// `nameBytesPerFileByte` bytes per byte of the file (plus 1 MiB).
    public init(bytes: [UInt8], name: String, machine expected: UInt16? = nil) throws(ELFError) {
        var budget = ELFNameBudget(inputBytes: bytes.count)
        try self.init(bytes: bytes, name: name, machine: expected, names: &budget)
    }

    /// Parses an ELF64 file whose names are charged to `budget`, shared with other files (the
    /// members of archives one load pulls in, say).
    public init(bytes: [UInt8], name: String, machine expected: UInt16? = nil, names budget: inout ELFNameBudget) throws(ELFError) {
        self.name = name
        self.bytes = bytes
        let r = ELFReader(bytes, file: name)
        guard bytes.count >= 64 else {
            if !Array(bytes.prefix(4)).elementsEqual([0x7F, 0x45, 0x4C, 0x46].prefix(bytes.count)) || bytes.isEmpty { throw .notELF(file: name) }
            throw .truncated(file: name, what: "ELF header", offset: 0, size: bytes.count)
        }
        guard bytes[0..<4] == [0x7F, 0x45, 0x4C, 0x46] else { throw .notELF(file: name) }
        guard bytes[4] == ELF.ELFCLASS64 else { throw .unsupported(file: name, what: "class \(bytes[4]) (only ELF64)") }
        guard bytes[5] == ELF.ELFDATA2LSB else { throw .unsupported(file: name, what: "byte order \(bytes[5]) (only little-endian)") }
        guard bytes[6] == 1 else { throw .unsupported(file: name, what: "ELF version \(bytes[6])") }
        type = try r.le(16)
        machine = try r.le(18)
        if let expected, machine != expected { throw .wrongMachine(file: name, machine: machine, expected: expected) }
        flags = try r.le(48)
        let shoff = try r.int(try r.le(40, as: UInt64.self, "e_shoff"), "e_shoff")
        let shentsize = Int(try r.le(58, as: UInt16.self, "e_shentsize"))
        var shnum = Int(try r.le(60, as: UInt16.self, "e_shnum"))
        var shstrndx = Int(try r.le(62, as: UInt16.self, "e_shstrndx"))
        // Section 0 holds the count and the name table's index when they do not fit the header.
        let section0 = shoff == 0 ? nil : try? r.range(shoff, 64, "section 0")
        if shnum == 0 && shoff != 0 {
            guard let h = section0 else { throw .truncated(file: name, what: "section 0 (the section count)", offset: shoff, size: bytes.count) }
            shnum = try r.int(try r.le(h.lowerBound + 32, as: UInt64.self, "section 0 sh_size (the section count)"), "section count")
        }
        if shstrndx == Int(ELF.SHN_XINDEX) && shoff != 0 {
            guard let h = section0 else { throw .truncated(file: name, what: "section 0 (the name table index)", offset: shoff, size: bytes.count) }
            shstrndx = Int(try r.le(h.lowerBound + 40, as: UInt32.self, "section 0 sh_link (the name table index)"))
        }
        guard shnum == 0 || shentsize == 64 else { throw .malformed(file: name, what: "section header size \(shentsize), expected 64") }
        guard shnum <= Self.maxSections else {
            throw .unsupported(file: name, what: "\(shnum) sections: more than \(Self.maxSections) (ELFFile.maxSections) need extended section indexes (SHN_XINDEX), which this reader does not support")
        }
        _ = try r.range(shoff, shnum * 64, "\(shnum) section headers")
        struct Raw { var nameOffset: Int; var type: UInt32; var flags: UInt64; var addr: UInt64; var offset64: UInt64; var size64: UInt64
                     var link: UInt32; var info: UInt32; var align: UInt64; var entsize: UInt64
                     var offset: Int { Int(truncatingIfNeeded: offset64) }
                     var size: Int { Int(truncatingIfNeeded: size64) } }
        // The headers' range is checked above: read them in one pass, then check each.
        let raws: [Raw] = bytes.withUnsafeBytes { p in
            (0..<shnum).map { i in
                let h = shoff + i * 64
                return Raw(nameOffset: Int(p.loadUnaligned(fromByteOffset: h, as: UInt32.self)), type: p.loadUnaligned(fromByteOffset: h + 4, as: UInt32.self),
                           flags: p.loadUnaligned(fromByteOffset: h + 8, as: UInt64.self), addr: p.loadUnaligned(fromByteOffset: h + 16, as: UInt64.self),
                           offset64: p.loadUnaligned(fromByteOffset: h + 24, as: UInt64.self), size64: p.loadUnaligned(fromByteOffset: h + 32, as: UInt64.self),
                           link: p.loadUnaligned(fromByteOffset: h + 40, as: UInt32.self), info: p.loadUnaligned(fromByteOffset: h + 44, as: UInt32.self),
                           align: p.loadUnaligned(fromByteOffset: h + 48, as: UInt64.self), entsize: p.loadUnaligned(fromByteOffset: h + 56, as: UInt64.self))
            }
        }
        for (i, raw) in raws.enumerated() {
            // Both must be numbers an Int holds (a NOBITS section's describe no file bytes, but they
            // are never clamped into range either).
            _ = try r.int(raw.size64, "section \(i) sh_size")
            _ = try r.int(raw.offset64, "section \(i) sh_offset")
            if raw.type != ELF.SHT_NOBITS {
                _ = try r.range(raw.offset, raw.size, "section \(i) contents")
            }
        }
        guard shnum == 0 || shstrndx < shnum else { throw .badIndex(file: name, what: "section name table", index: shstrndx, count: shnum) }
        if shnum > 0 && raws[shstrndx].type == ELF.SHT_NOBITS {
            throw .malformed(file: name, what: "the section name table (section \(shstrndx)) has no bytes in the file")
        }
        var sections: [ELFSection] = []
        sections.reserveCapacity(shnum)
        var names = NameTable(budget: budget)
        defer { budget = names.budget }
        for (i, raw) in raws.enumerated() {
            var sectionName = ""
            if shnum > 0 {
                let table = raws[shstrndx]
                sectionName = try names.name(r, at: raw.nameOffset, in: table.offset..<(table.offset + table.size), "section \(i)")
            }
            sections.append(ELFSection(index: i, name: sectionName, type: raw.type, flags: raw.flags, address: raw.addr,
                                       offset: raw.offset, size: raw.size, link: raw.link, info: raw.info,
                                       alignment: raw.align, entrySize: raw.entsize))
        }
        self.sections = sections
        // The symbol table and its strings.
        var symbols: [ELFSymbol] = []
        let symtab = sections.first { $0.type == ELF.SHT_SYMTAB }
        symbolTableIndex = symtab?.index ?? 0
        if let symtab {
            guard Int(symtab.link) < sections.count else {
                throw .badIndex(file: name, what: "string table of .symtab", index: Int(symtab.link), count: sections.count)
            }
            let strtab = sections[Int(symtab.link)]
            guard strtab.hasFileBytes else { throw .malformed(file: name, what: "the string table of .symtab (section \(strtab.index)) has no bytes in the file") }
            guard symtab.size % 24 == 0 else { throw .malformed(file: name, what: ".symtab size \(symtab.size) is not a multiple of 24") }
            // Names may overlap in the string table: each offset is decoded once, and what all names
            // (sections' and symbols') take together is bounded by the file's size.
            let strings = strtab.offset..<(strtab.offset + strtab.size)
            let count = symtab.size / 24
            symbols.reserveCapacity(count)
            // .symtab's bytes were checked with the section; each entry is read in place.
            for i in 0..<count {
                let s = symtab.offset + i * 24
                let (nameOffset, info, other, shndx, value, size) = bytes.withUnsafeBytes { p in
                    (Int(p.loadUnaligned(fromByteOffset: s, as: UInt32.self)), p[s + 4], p[s + 5], p.loadUnaligned(fromByteOffset: s + 6, as: UInt16.self),
                     p.loadUnaligned(fromByteOffset: s + 8, as: UInt64.self), p.loadUnaligned(fromByteOffset: s + 16, as: UInt64.self))
                }
                let symName = nameOffset == 0 ? "" : try names.name(r, at: nameOffset, in: strings, "symbol \(i)")
                if shndx == ELF.SHN_XINDEX {
                    throw .unsupported(file: name, what: "symbol '\(symName)' has an extended section index (SHN_XINDEX)")
                }
                if shndx != ELF.SHN_UNDEF && shndx < ELF.SHN_LORESERVE && Int(shndx) >= sections.count {
                    throw .badIndex(file: name, what: "section of symbol '\(symName)'", index: Int(shndx), count: sections.count)
                }
                symbols.append(ELFSymbol(index: i, name: symName, value: value, size: size, info: info, other: other, sectionIndex: shndx))
            }
        }
        self.symbols = symbols
        // The tables this reader interprets, and the sections a loader copies, may not share bytes:
        // one relocation table, group body or data section described by thousands of headers would
        // be read (or copied) once per header, memory and time quadratic in the file's size.
        let interpreted = sections.filter {
            ([ELF.SHT_REL, ELF.SHT_RELA, ELF.SHT_SYMTAB, ELF.SHT_GROUP].contains($0.type) || ($0.isAllocated && $0.hasFileBytes)) && $0.size > 0
        }
            .sorted { ($0.offset, $0.index) < ($1.offset, $1.index) }
        for (a, b) in zip(interpreted, interpreted.dropFirst()) where b.offset < a.offset + a.size {
            throw .malformed(file: name, what: "sections \(a.index) (\(a.name)) and \(b.index) (\(b.name)) share file bytes at offset \(b.offset)")
        }
        var relocationSections: [Int: [Int]] = [:]
        for s in sections where s.type == ELF.SHT_REL || s.type == ELF.SHT_RELA { relocationSections[Int(s.info), default: []].append(s.index) }
        self.relocationSections = relocationSections
    }

    /// The most sections a file may have: 65,279, below the reserved indexes (SHN_LORESERVE), so a
    /// symbol's section index is never both a real section and a special one (SHN_ABS, SHN_COMMON...).
    /// Extended section indexes (SHN_XINDEX, `.symtab_shndx`) are not supported.
    public static let maxSections = Int(ELF.SHN_LORESERVE) - 1

    /// Bytes of distinct names (sections', symbols', archives') the inputs of one budget
    /// (`ELFNameBudget`) may decode per byte of input, plus 1 MiB: a bound on the memory names take,
    /// however string tables are shared.
    public static let nameBytesPerFileByte = 4

    /// The bytes of a section (empty for NOBITS).
    public func contents(_ section: ELFSection) -> ArraySlice<UInt8> {
        section.hasFileBytes ? bytes[section.offset..<(section.offset + section.size)] : []
    }

    public func section(named n: String) -> ELFSection? { sections.first { $0.name == n } }

    /// The entries of the relocation sections that apply to `section` (their `info` names it), in
    /// offset order, each checked: its symbol exists and its offset lies within `section`. Parsed on
    /// each call (linear in the entries); a client that needs them twice keeps the result.
    public func relocations(for section: ELFSection) throws(ELFError) -> [ELFRelocation] {
        var out: [ELFRelocation] = []
        for rel in (relocationSections[section.index] ?? []).map({ sections[$0] }) {
            let entry = rel.type == ELF.SHT_RELA ? 24 : 16
            guard rel.size % entry == 0 else { throw .malformed(file: name, what: "\(rel.name) size \(rel.size) is not a multiple of \(entry)") }
            // The table's bytes were checked with its section: decoded in one pass, each entry's
            // symbol and offset checked after.
            let first = out.count, count = rel.size / entry, rela = rel.type == ELF.SHT_RELA
            out.reserveCapacity(first + count)
            bytes.withUnsafeBytes { p in
                for i in 0..<count {
                    let e = rel.offset + i * entry
                    let info = p.loadUnaligned(fromByteOffset: e + 8, as: UInt64.self)
                    out.append(ELFRelocation(offset: p.loadUnaligned(fromByteOffset: e, as: UInt64.self), type: UInt32(truncatingIfNeeded: info),
                                             symbolIndex: Int(info >> 32), addend: rela ? p.loadUnaligned(fromByteOffset: e + 16, as: Int64.self) : nil))
                }
            }
            let limit = UInt64(max(section.size, 0))
            for i in 0..<count {
                let e = out[first + i]
                guard e.symbolIndex < symbols.count else {  // a file without .symtab has no symbol 0 to name
                    throw .badIndex(file: name, what: "symbol of relocation \(i) in \(rel.name)", index: e.symbolIndex, count: symbols.count)
                }
                guard e.offset < limit || (e.offset == 0 && section.size == 0) else {
                    throw .malformed(file: name, what: "relocation \(i) in \(rel.name) at offset \(e.offset) is outside \(section.name) (\(section.size) bytes)")
                }
            }
        }
        // Assemblers write them in order: sort only when they are not.
        if zip(out, out.dropFirst()).contains(where: { $0.offset > $1.offset }) { out.sort { $0.offset < $1.offset } }
        return out
    }
}

/// The ELF constants the clients use.
public enum ELF {
    public static let ELFCLASS64: UInt8 = 2
    public static let ELFDATA2LSB: UInt8 = 1
    public static let ET_REL: UInt16 = 1
    public static let EM_X86_64: UInt16 = 62
    public static let EM_BPF: UInt16 = 247

    public static let SHT_NULL: UInt32 = 0
    public static let SHT_PROGBITS: UInt32 = 1
    public static let SHT_SYMTAB: UInt32 = 2
    public static let SHT_STRTAB: UInt32 = 3
    public static let SHT_RELA: UInt32 = 4
    public static let SHT_NOBITS: UInt32 = 8
    public static let SHT_REL: UInt32 = 9
    public static let SHT_INIT_ARRAY: UInt32 = 14
    public static let SHT_FINI_ARRAY: UInt32 = 15
    public static let SHT_PREINIT_ARRAY: UInt32 = 16
    public static let SHT_GROUP: UInt32 = 17

    public static let SHF_WRITE: UInt64 = 0x1
    public static let SHF_ALLOC: UInt64 = 0x2
    public static let SHF_EXECINSTR: UInt64 = 0x4
    public static let SHF_TLS: UInt64 = 0x400

    public static let SHN_UNDEF: UInt16 = 0
    public static let SHN_LORESERVE: UInt16 = 0xFF00
    public static let SHN_ABS: UInt16 = 0xFFF1
    public static let SHN_COMMON: UInt16 = 0xFFF2
    public static let SHN_XINDEX: UInt16 = 0xFFFF

    public static let STB_LOCAL: UInt8 = 0
    public static let STB_GLOBAL: UInt8 = 1
    public static let STB_WEAK: UInt8 = 2
    /// GNU's unique global binding (STB_LOOS).
    public static let STB_GNU_UNIQUE: UInt8 = 10
    public static let STT_NOTYPE: UInt8 = 0
    public static let STT_OBJECT: UInt8 = 1
    public static let STT_FUNC: UInt8 = 2
    public static let STT_SECTION: UInt8 = 3
    public static let STT_FILE: UInt8 = 4
    public static let STT_COMMON: UInt8 = 5
    public static let STT_TLS: UInt8 = 6
}
