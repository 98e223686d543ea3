// The one checked reader every parser of files goes through: the ELF reader, the archive reader, the
// module loader and the eBPF ELF loader. Every field read from a file is untrusted, so each read is
// bounds-checked, each conversion is exact (`Int(exactly:)`, never a mask or a clamp that would turn
// a malformed value into a valid one), each `offset + size` is checked against its container with
// overflow-checked arithmetic, and each error names the structure, the field and its value.

#if canImport(Glibc)
import Glibc
#endif

/// Little-endian reads of a file's bytes, each checked.
///
/// A value type over the file's bytes (shared, not copied); `Sendable`, usable from any thread.
public struct ELFReader: Sendable {
    /// The whole file.
    public let bytes: [UInt8]
    /// The file's name, for errors.
    public let file: String

    /// A reader over `bytes`, named `file` in errors.
    public init(_ bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
    }

    /// The byte at `at`. - Throws: `ELFError.truncated` naming `field`.
    public func u8(_ at: Int, _ field: @autoclosure () -> String = "byte") throws(ELFError) -> UInt8 {
        guard at >= 0, at < bytes.count else { throw .truncated(file: file, what: field(), offset: at, size: bytes.count) }
        return bytes[at]
    }

    /// The little-endian `T` at `at`. - Throws: `ELFError.truncated` naming `field`.
    public func le<T: FixedWidthInteger>(_ at: Int, as: T.Type = T.self, _ field: @autoclosure () -> String = "field") throws(ELFError) -> T {
        let n = MemoryLayout<T>.size
        guard at >= 0, n <= bytes.count, at <= bytes.count - n else {
            throw .truncated(file: file, what: "\(field()) (\(n) bytes)", offset: at, size: bytes.count)
        }
        return T(littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: T.self) })
    }

    /// `value` as an `Int`, exactly. - Throws: `ELFError.malformed` naming `field` and the value.
    public func int<T: BinaryInteger>(_ value: T, _ field: @autoclosure () -> String) throws(ELFError) -> Int {
        guard let v = Int(exactly: value) else { throw .malformed(file: file, what: "\(field()) \(value) is too large") }
        return v
    }

    /// `[offset, offset + size)`, which must lie within `container` (the whole file by default).
    /// - Throws: `ELFError.truncated` naming `what` when it does not, or the sum overflows.
    public func range(_ offset: Int, _ size: Int, within container: Range<Int>? = nil, _ what: @autoclosure () -> String) throws(ELFError) -> Range<Int> {
        let c = container ?? 0..<bytes.count
        let (end, overflow) = offset.addingReportingOverflow(size)
        guard offset >= 0, size >= 0, !overflow, offset >= c.lowerBound, end <= c.upperBound else {
            throw .truncated(file: file, what: "\(what()) (\(size) bytes)", offset: offset, size: c.upperBound)
        }
        return offset..<end
    }

    /// The NUL-terminated string at `at`, which must end before `limit`.
    public func cString(_ at: Int, limit: Int) throws(ELFError) -> String {
        try terminatedString(at, limit: limit).string
    }

    /// The NUL-terminated string at `at`, which must end before `limit`, and where its NUL is.
    func terminatedString(_ at: Int, limit: Int) throws(ELFError) -> (string: String, nul: Int) {
        guard at >= 0, at < limit, limit <= bytes.count else {
            throw .truncated(file: file, what: "string", offset: at, size: limit)
        }
        let found: (String, Int)? = bytes.withUnsafeBytes { p in
            let start = p.baseAddress! + at
            guard let nul = memchr(start, 0, limit - at) else { return nil }
            let n = start.distance(to: UnsafeRawPointer(nul))
            return (String(decoding: UnsafeRawBufferPointer(start: start, count: n), as: UTF8.self), at + n)
        }
        guard let found else { throw .malformed(file: file, what: "string at \(at) is not terminated within its table") }
        return found
    }
}

/// What the names of a set of inputs (one file, or every object of one load) may take together:
/// `ELFFile.nameBytesPerFileByte` bytes per byte of input, plus 1 MiB. A `Sendable` value type:
/// pass it `inout` to the readers that share it; threads that read in parallel each keep their own.
public struct ELFNameBudget: Sendable {
    /// Bytes still available.
    public internal(set) var remaining: Int
    /// The whole budget, for error messages.
    public let limit: Int

    /// The budget of inputs of `inputBytes` bytes in all.
    public init(inputBytes: Int) {
        let (scaled, overflow) = ELFFile.nameBytesPerFileByte.multipliedReportingOverflow(by: max(0, inputBytes))
        limit = overflow ? Int.max / 2 : min(Int.max / 2, scaled + (1 << 20))
        remaining = limit
    }
}

/// Names read from one file's string tables, each offset decoded once, charged to a budget: names
/// may overlap in a table, so decoding one String per reference could take memory quadratic in the
/// file's size.
struct NameTable {
    /// Names by their file offset, each with where its terminator is (for `name`; -1 for `intern`'s).
    private var names: [Int: (name: String, end: Int)] = [:]
    /// Per string table (by where it starts), where the names decoded in order end: a name starting
    /// at or after it was not decoded before, so it needs no look-up (tables are read front to back;
    /// only names reached out of order, shared tails or repeated offsets, go through `names`).
    private var frontiers: [(table: Int, end: Int)] = []
    var budget: ELFNameBudget

    init(budget: ELFNameBudget) { self.budget = budget }

    /// The string at `table.lowerBound + offset`, which must start and end inside `table`.
    mutating func name(_ r: ELFReader, at offset: Int, in table: Range<Int>, _ what: @autoclosure () -> String) throws(ELFError) -> String {
        guard offset >= 0, offset < table.count else {
            throw .malformed(file: r.file, what: "\(what()) name offset \(offset) is outside its string table (\(table.count) bytes)")
        }
        let at = table.lowerBound + offset
        var f = frontiers.firstIndex { $0.table == table.lowerBound } ?? -1
        if f < 0 { f = frontiers.count; frontiers.append((table.lowerBound, table.lowerBound)) }
        if at >= frontiers[f].end {
            let (s, nul) = try r.terminatedString(at, limit: table.upperBound)
            try charge(s, file: r.file)
            frontiers[f].end = nul + 1
            return s
        }
        if let known = names[at] {
            // Decoded for a table that starts here too but ends later (section names and symbol
            // names may share bytes): it must end inside this one as well.
            guard known.end < table.upperBound else {
                throw .malformed(file: r.file, what: "string at \(at) is not terminated within its table")
            }
            return known.name
        }
        let (s, nul) = try r.terminatedString(at, limit: table.upperBound)
        try charge(s, file: r.file)
        names[at] = (s, nul)
        return s
    }

    /// The name known by `key` (a file offset), made by `make` the first time only.
    mutating func intern(_ key: Int, file: String, _ make: () throws(ELFError) -> String) throws(ELFError) -> String {
        if let known = names[key] { return known.name }
        let s = try make()
        try charge(s, file: file)
        names[key] = (s, -1)
        return s
    }

    private mutating func charge(_ s: String, file: String) throws(ELFError) {
        budget.remaining -= s.utf8.count
        guard budget.remaining >= 0 else {
            throw .malformed(file: file, what: "names take more than \(budget.limit) bytes in all (ELFFile.nameBytesPerFileByte = \(ELFFile.nameBytesPerFileByte) per byte of input)")
        }
    }
}
