// `ar` archives: the static libraries (`.a`) the module loader links from. Members are found by the
// archive's symbol table (GNU `/` or BSD `__.SYMDEF`), so the loader pulls in only what resolves an
// undefined symbol, as a linker does. Long names come from the GNU `//` table or BSD `#1/len`.

/// One member of an archive: its name, where its header is, its bytes. A value type sharing the
/// archive's bytes (nothing is copied until `bytes` is read); `Sendable`.
public struct ArchiveMember: Sendable {
    /// The member's name (long names resolved).
    public let name: String
    /// Offset of the member's header in the archive (what symbol tables point at).
    public let headerOffset: Int
    /// Where the member's bytes are in the archive.
    public let range: Range<Int>
    let archive: [UInt8]
    /// The member's bytes (a copy made on each read: read it once).
    public var bytes: [UInt8] { Array(archive[range]) }
}

/// An `ar` archive read and checked: its members and which member defines each symbol.
/// A value type, immutable and `Sendable`.
public struct Archive: Sendable {
    public let name: String
    public let members: [ArchiveMember]
    /// Symbol -> index into `members` of the member that defines it (first definition wins).
    public let symbolIndex: [String: Int]

    public static func isArchive(_ bytes: [UInt8]) -> Bool { bytes.starts(with: Array("!<arch>\n".utf8)) }

    public init(bytes: [UInt8], name: String) throws(ELFError) {
        self.name = name
        guard Archive.isArchive(bytes) else { throw .archive(file: name, what: "missing the !<arch> magic") }
        var members: [ArchiveMember] = []
        var longNames: [UInt8] = [], longNamesAt = 0  // the // table and where its bytes are in the file
        var names = NameTable(budget: ELFNameBudget(inputBytes: bytes.count))  // long and BSD symbol names, each decoded once
        var gnuSymbols: [(String, Int)] = []
        var bsdSymbols: [(String, Int)] = [], bsdRepeated: [Int] = []
        var at = 8
        func field(_ from: Int, _ length: Int) -> String {
            var end = from + length
            while end > from && bytes[end - 1] == 0x20 { end -= 1 }
            return String(decoding: bytes[from..<end], as: UTF8.self)
        }
        while at < bytes.count {
            if bytes[at] == 0x0A { at += 1; continue }  // padding to even offsets
            guard bytes.count - at >= 60 else { throw .archive(file: name, what: "truncated member header at \(at)") }
            guard bytes[at + 58] == 0x60, bytes[at + 59] == 0x0A else { throw .archive(file: name, what: "bad member header terminator at \(at)") }
            var memberName = field(at, 16)
            guard let size = Int(field(at + 48, 10)), size >= 0 else {
                throw .archive(file: name, what: "bad member size '\(field(at + 48, 10))' at \(at)")
            }
            var dataStart = at + 60
            guard size <= bytes.count - dataStart else { throw .archive(file: name, what: "member at \(at) claims \(size) bytes past the end") }
            var dataSize = size
            if memberName.hasPrefix("#1/") {  // BSD long name
                guard let n = Int(memberName.dropFirst(3)), n >= 0, n <= size else {
                    throw .archive(file: name, what: "BSD name length '\(memberName.dropFirst(3))' at \(at) is not a length within the member's \(size) bytes")
                }
                memberName = String(decoding: bytes[dataStart..<(dataStart + n)], as: UTF8.self).trimmingTrailingNULs()
                dataStart += n
                dataSize -= n
            }
            func data() -> [UInt8] { Array(bytes[dataStart..<(dataStart + dataSize)]) }
            if memberName == "/" || memberName == "/SYM64/" {
                gnuSymbols = try Archive.gnuSymbolTable(data(), wide: memberName == "/SYM64/", file: name)
            } else if memberName == "//" {
                longNames = data()
                longNamesAt = dataStart
            } else if memberName.hasPrefix("__.SYMDEF") {
                (bsdSymbols, bsdRepeated) = try Archive.bsdSymbolTable(data(), at: dataStart, file: name, names: &names)
            } else {
                if memberName.hasPrefix("/"), memberName.count > 1 {  // GNU long name
                    guard let offset = Int(memberName.dropFirst()), offset >= 0, offset < longNames.count else {
                        throw .archive(file: name, what: "long name offset '\(memberName.dropFirst())' at \(at) is outside the // table (\(longNames.count) bytes)")
                    }
                    // The trailing "/" goes here, once: removing it from a shared String would copy it.
                    // Keys are file offsets (a second // table is other bytes, so other names).
                    memberName = try names.intern(longNamesAt + offset, file: name) {
                        var end = longNames[offset...].firstIndex(of: 0x0A) ?? longNames.count
                        if end > offset && longNames[end - 1] == 0x2F { end -= 1 }
                        return String(decoding: longNames[offset..<end], as: UTF8.self)
                    }
                } else if memberName.hasSuffix("/") {
                    memberName.removeLast()
                }
                members.append(ArchiveMember(name: memberName, headerOffset: at, range: dataStart..<(dataStart + dataSize), archive: bytes))
            }
            at += 60 + size
        }
        self.members = members
        var index: [String: Int] = [:]
        let byOffset = Dictionary(members.enumerated().map { ($1.headerOffset, $0) }, uniquingKeysWith: { a, _ in a })
        for offset in bsdRepeated where byOffset[offset] == nil {
            throw .archive(file: name, what: "a __.SYMDEF entry points at \(offset), not a member")
        }
        for (symbol, offset) in gnuSymbols + bsdSymbols {
            guard let m = byOffset[offset] else { throw .archive(file: name, what: "symbol '\(symbol)' points at \(offset), not a member") }
            if index[symbol] == nil { index[symbol] = m }
        }
        symbolIndex = index
    }

    /// GNU: a big-endian count, that many big-endian offsets, then the NUL-terminated names.
    static func gnuSymbolTable(_ d: [UInt8], wide: Bool, file: String) throws(ELFError) -> [(String, Int)] {
        let w = wide ? 8 : 4
        func be(_ at: Int) throws(ELFError) -> Int {
            guard at + w <= d.count else { throw .archive(file: file, what: "truncated symbol table") }
            return d[at..<(at + w)].reduce(0) { $0 << 8 | Int($1) }
        }
        let count = try be(0)
        guard count >= 0, count <= (d.count - w) / w else { throw .archive(file: file, what: "symbol count \(count) too large") }
        var names = w + count * w
        var out: [(String, Int)] = []
        for i in 0..<count {
            guard names < d.count, let end = d[names...].firstIndex(of: 0) else { throw .archive(file: file, what: "unterminated symbol name") }
            out.append((String(decoding: d[names..<end], as: UTF8.self), try be(w + i * w)))
            names = end + 1
        }
        return out
    }

    /// BSD: a little-endian byte count of (name offset, member offset) pairs, the pairs, a string
    /// table size, the strings.
    static func bsdSymbolTable(_ d: [UInt8], at fileOffset: Int, file: String, names: inout NameTable) throws(ELFError) -> (symbols: [(String, Int)], repeatedMembers: [Int]) {
        let r = ELFReader(d, file: file)
        let ranlibBytes = Int(try r.le(0, as: UInt32.self))
        guard ranlibBytes % 8 == 0, d.count >= 8, ranlibBytes <= d.count - 8 else { throw .archive(file: file, what: "bad __.SYMDEF size \(ranlibBytes)") }
        let stringsAt = 4 + ranlibBytes + 4
        let stringsSize = Int(try r.le(4 + ranlibBytes, as: UInt32.self))
        guard stringsSize <= d.count - stringsAt else { throw .archive(file: file, what: "bad __.SYMDEF string table size") }
        var out: [(String, Int)] = []
        var seen = Set<Int>()  // an entry naming an offset already named changes nothing (the first wins)
        var repeated: [Int] = []  // but its member offset is still checked
        for i in 0..<(ranlibBytes / 8) {
            let nameOffset = Int(try r.le(4 + i * 8, as: UInt32.self))
            let member = Int(try r.le(8 + i * 8, as: UInt32.self))
            guard seen.insert(nameOffset).inserted else { repeated.append(member); continue }
            // Entries may share a name: decoded once. Keys are file offsets, negated: NUL-terminated
            // strings, not the // table's newline-terminated ones, even at the same offset.
            let symbol = try names.intern(-1 - (fileOffset + stringsAt + nameOffset), file: file) { () throws(ELFError) in
                try r.cString(stringsAt + nameOffset, limit: stringsAt + stringsSize)
            }
            out.append((symbol, member))
        }
        return (out, repeated)
    }
}

extension String {
    func trimmingTrailingNULs() -> String {
        var s = Substring(self)
        while s.last == "\0" { s.removeLast() }
        return String(s)
    }
}
