// Integer ids for what a load looks up again and again. Every global name of a load gets a dense id
// the first time any object mentions it (one hash per symbol of each file, never one per
// relocation); each object keeps the id of each of its symbols, and everything keyed by a global
// (definitions, host addresses, GOT slots, veneers) is an array indexed by id. Sections are found by
// (object, section index) in arrays, not hashed.

import ExecMemELF

/// The global names of one load and their ids (0, 1, 2 ... in order of first mention).
struct GlobalNames {
    private var ids: [String: Int32] = [:]
    /// The name of each id.
    private(set) var names: [String] = []

    var count: Int { names.count }

    /// The id of `name`, made if new.
    mutating func id(_ name: String) -> Int32 {
        if let i = ids[name] { return i }
        let i = Int32(names.count)
        ids[name] = i
        names.append(name)
        return i
    }

    /// The id of `name`, if any object mentioned it.
    func lookup(_ name: String) -> Int32? { ids[name] }

    /// For each symbol of `elf`, the id of its name when it is a named global (defined or not),
    /// else -1 (locals, sections, files).
    mutating func ids(of elf: ELFFile) -> [Int32] {
        elf.symbols.map { $0.isGlobal && !$0.name.isEmpty ? id($0.name) : -1 }
    }
}

/// Values by (object, section index), in arrays: what `Layout` knows about each loaded section.
struct SectionMap<Value> {
    private var rows: [[Value?]]

    /// A map for objects with `sectionCounts[o]` sections each.
    init(sectionCounts: [Int]) { rows = sectionCounts.map { [Value?](repeating: nil, count: $0) } }

    subscript(key: Layout.SectionKey) -> Value? {
        get { key.object < rows.count && key.section >= 0 && key.section < rows[key.object].count ? rows[key.object][key.section] : nil }
        set { rows[key.object][key.section] = newValue }
    }

    /// The row of one object (section index -> value), for loops over its sections.
    func row(_ object: Int) -> [Value?] { rows[object] }
}
