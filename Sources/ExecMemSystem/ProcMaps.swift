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
        let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count >= 5 else { return nil }
        let range = fields[0].split(separator: "-")
        guard range.count == 2, let s = UInt(range[0], radix: 16), let e = UInt(range[1], radix: 16),
              let off = UInt(fields[2], radix: 16), let ino = UInt(fields[4]) else { return nil }
        start = s; end = e; perms = String(fields[1]); offset = off; inode = ino
        path = fields.count > 5 ? fields[5].trimmingLeadingSpaces() : ""
    }

    public init(start: UInt, end: UInt, perms: String, offset: UInt = 0, inode: UInt = 0, path: String = "") {
        self.start = start; self.end = end; self.perms = perms; self.offset = offset; self.inode = inode; self.path = path
    }
}

extension Substring {
    fileprivate func trimmingLeadingSpaces() -> String {
        String(self.drop(while: { $0 == " " }))
    }
}

public enum ProcMaps {
    /// Parses maps text (the whole file).
    public static func parse(_ text: String) -> [MapsEntry] {
        text.split(separator: "\n").compactMap { MapsEntry(line: $0) }
    }

    /// Reads and parses /proc/self/maps.
    public static func read() throws(SystemCallError) -> [MapsEntry] {
        parse(try Sys.readText("/proc/self/maps"))
    }

    /// The lines whose permissions are writable and executable at once.
    public static func writableExecutable() throws(SystemCallError) -> [MapsEntry] {
        try read().filter(\.isWritableAndExecutable)
    }

    /// The host executable's loaded image: the mappings of the file /proc/self/exe names that the
    /// loader made (not another mapping of the same file, such as a symbolizer's).
    public static func executableImage(in maps: [MapsEntry]) -> [MapsEntry] {
        guard let exe = try? Sys.readlink("/proc/self/exe") else { return [] }
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
