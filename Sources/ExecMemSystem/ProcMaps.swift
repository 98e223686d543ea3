// Readers for /proc/self/maps and /proc/self/smaps: where the allocator learns the process's layout
// (to place its range near the executable) and reads back what the kernel really did (protections,
// 2 MiB mappings). Nothing is assumed that these files can tell.

/// One line of /proc/self/maps.
public struct MapsEntry: Sendable, Equatable {
    public var start: UInt
    public var end: UInt
    /// The four permission characters, e.g. `r-xp`.
    public var perms: String
    public var offset: UInt
    public var inode: UInt
    /// Path or pseudo-name (`[heap]`, `/memfd:execmem-text (deleted)`); empty for anonymous memory.
    public var path: String

    public var length: Int { Int(end - start) }
    public var isReadable: Bool { perms.utf8.first == UInt8(ascii: "r") }
    public var isWritable: Bool { perms.utf8.dropFirst(1).first == UInt8(ascii: "w") }
    public var isExecutable: Bool { perms.utf8.dropFirst(2).first == UInt8(ascii: "x") }
    /// `rwx` in the first three permission characters: the W^X violation we never create.
    public var isWritableAndExecutable: Bool { isWritable && isExecutable }
    /// The protection as the kernel reports it, `r-x`.
    public var protection: String { String(perms.prefix(3)) }

    /// Parses one maps line; nil if it is not of the maps form.
    public init?(line: Substring) {
        var line = line
        guard let e = line.withUTF8({ MapsEntry(bytes: $0) }) else { return nil }
        self = e
    }

    /// Parses one maps line from its bytes, in one pass with no intermediate strings: placing a range
    /// reads the whole file, and splitting it into Substrings cost about 6 us a line, this 0.25 us.
    /// `start-end perms offset dev inode [path]`, fields separated by spaces.
    init?(bytes p: UnsafeBufferPointer<UInt8>) {
        var i = 0
        let n = p.count
        func skipSpaces() { while i < n && p[i] == 0x20 { i += 1 } }
        func token() -> Range<Int>? {
            let lo = i
            while i < n && p[i] != 0x20 { i += 1 }
            return i > lo ? lo..<i : nil
        }
        func number(_ r: Range<Int>, radix: UInt) -> UInt? {
            var v: UInt = 0
            for k in r {
                let c = p[k]
                let d: UInt
                switch c {
                case 0x30...0x39: d = UInt(c - 0x30)
                case 0x61...0x66 where radix == 16: d = UInt(c - 0x61 + 10)
                case 0x41...0x46 where radix == 16: d = UInt(c - 0x41 + 10)
                default: return nil
                }
                let (m, o1) = v.multipliedReportingOverflow(by: radix)
                let (a, o2) = m.addingReportingOverflow(d)
                if o1 || o2 { return nil }
                v = a
            }
            return v
        }
        skipSpaces()
        guard let range = token() else { return nil }
        skipSpaces()
        guard let permsField = token() else { return nil }
        skipSpaces()
        guard let offsetField = token() else { return nil }
        skipSpaces()
        guard token() != nil else { return nil }  // device
        skipSpaces()
        guard let inodeField = token() else { return nil }
        guard let dash = range.firstIndex(where: { p[$0] == 0x2D }), dash > range.lowerBound, dash + 1 < range.upperBound,
              let s = number(range.lowerBound..<dash, radix: 16), let e = number((dash + 1)..<range.upperBound, radix: 16),
              let off = number(offsetField, radix: 16), let ino = number(inodeField, radix: 10) else { return nil }
        skipSpaces()
        start = s; end = e; offset = off; inode = ino
        perms = String(decoding: UnsafeBufferPointer(rebasing: p[permsField]), as: UTF8.self)
        path = i < n ? String(decoding: UnsafeBufferPointer(rebasing: p[i..<n]), as: UTF8.self) : ""
    }

    /// An entry made from its fields (tests, and mappings known without reading the file).
    public init(start: UInt, end: UInt, perms: String, offset: UInt = 0, inode: UInt = 0, path: String = "") {
        self.start = start; self.end = end; self.perms = perms; self.offset = offset; self.inode = inode; self.path = path
    }
}

public enum ProcMaps {
    /// Parses maps text (the whole file).
    public static func parse(_ text: String) -> [MapsEntry] {
        var text = text
        return text.withUTF8 { parse(bytes: $0) }
    }

    /// Parses the bytes of a maps file, line by line; lines not of the maps form are skipped.
    public static func parse(bytes: UnsafeBufferPointer<UInt8>) -> [MapsEntry] {
        var out: [MapsEntry] = []
        out.reserveCapacity(bytes.count / 80)
        var lo = 0
        while lo < bytes.count {
            var hi = lo
            while hi < bytes.count && bytes[hi] != 0x0A { hi += 1 }
            if hi > lo, let e = MapsEntry(bytes: UnsafeBufferPointer(rebasing: bytes[lo..<hi])) { out.append(e) }
            lo = hi + 1
        }
        return out
    }

    /// Reads and parses /proc/self/maps.
    public static func read() throws(SystemCallError) -> [MapsEntry] {
        try Sys.readFile("/proc/self/maps").withUnsafeBufferPointer { parse(bytes: $0) }
    }

    /// The path /proc/self/exe names, read once: the executable of a process does not change.
    private static let executablePath: String? = try? Sys.readlink("/proc/self/exe")

    /// The lines whose permissions are writable and executable at once.
    public static func writableExecutable() throws(SystemCallError) -> [MapsEntry] {
        try read().filter(\.isWritableAndExecutable)
    }

    /// The host executable's loaded image: the mappings of the file /proc/self/exe names that the
    /// loader made (not another mapping of the same file, such as a symbolizer's).
    public static func executableImage(in maps: [MapsEntry]) -> [MapsEntry] {
        guard let exe = executablePath else { return [] }
        // The file may be mapped again (a symbolizer reading its .symtab maps it whole): the image is
        // the run of mappings whose offsets grow, near each other, that holds executable text.
        var groups: [[MapsEntry]] = []
        for e in maps where e.path == exe {
            if let last = groups.last?.last, e.start >= last.end, e.start - last.end <= 1 << 24, e.offset > last.offset {
                groups[groups.count - 1].append(e)
            } else {
                groups.append([e])
            }
        }
        return groups.first { $0.contains(where: \.isExecutable) } ?? groups.first ?? []
    }
}

/// One mapping of /proc/self/smaps with its counters, in bytes.
public struct SmapsEntry: Sendable {
    public var mapping: MapsEntry
    /// `Key: N kB` fields converted to bytes (`Rss`, `ShmemPmdMapped`, `AnonHugePages`, ...).
    public var fields: [String: Int]

    public subscript(_ key: String) -> Int { fields[key] ?? 0 }

    /// Bytes of this mapping that the kernel maps with 2 MiB (PMD) entries: shmem and file THPs,
    /// anonymous THPs and hugetlb pages.
    public var hugeMappedBytes: Int {
        self["ShmemPmdMapped"] + self["FilePmdMapped"] + self["AnonHugePages"]
            + self["Shared_Hugetlb"] + self["Private_Hugetlb"]
    }
}

public enum Smaps {
    /// Parses smaps text.
    public static func parse(_ text: String) -> [SmapsEntry] {
        var out: [SmapsEntry] = []
        for line in text.split(separator: "\n") {
            // Mapping lines start with a hex range; field lines with "Key:".
            let head = line.prefix(while: { $0 != " " })
            if head.last != ":" {
                if let m = MapsEntry(line: line) { out.append(SmapsEntry(mapping: m, fields: [:])) }
                continue
            }
            guard !out.isEmpty else { continue }
            let rest = line[head.endIndex...].split(separator: " ")
            guard let n = rest.first.flatMap({ Int($0) }) else { continue }  // VmFlags and the like
            let scale = rest.count > 1 && rest[1] == "kB" ? 1024 : 1
            out[out.count - 1].fields[String(head.dropLast())] = n * scale
        }
        return out
    }

    /// Reads and parses /proc/self/smaps.
    public static func read() throws(SystemCallError) -> [SmapsEntry] {
        parse(try Sys.readText("/proc/self/smaps"))
    }

    /// The smaps entries that overlap `[start, end)`.
    public static func read(overlapping start: UInt, _ end: UInt) throws(SystemCallError) -> [SmapsEntry] {
        try read().filter { $0.mapping.start < end && $0.mapping.end > start }
    }
}
