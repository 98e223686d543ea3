// Integer ids for what a load looks up again and again. Every global name of a load gets a dense id
// the first time any object mentions it (one hash per symbol of each file, never one per
// relocation); each object keeps the id of each of its symbols, and everything keyed by a global
// (definitions, host addresses, GOT slots, veneers) is an array indexed by id. Sections are found by
// (object, section index) in arrays, not hashed.

import ExecMemELF

/// The global names of one load and their ids (0, 1, 2 ... in order of first mention), in an open
/// addressing table hashed with FNV-1a over the names' UTF-8 bytes: a load looks up every global of
/// every file, and this is cheaper than `Dictionary`'s seeded SipHash (a load's names come from
/// its own files, which choose them, but a collision only costs probes: the table stays at most
/// half full and equal hashes are compared by bytes).
struct GlobalNames {
    /// Slot -> id + 1 (0: empty).
    private var slots = [Int32](repeating: 0, count: 1024)
    private var hashes: [UInt64] = []
    /// The name of each id.
    private(set) var names: [String] = []

    var count: Int { names.count }

    private static func hash(_ name: String) -> UInt64 {
        var name = name
        return name.withUTF8 { bytes in
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            return h
        }
    }

    /// The slot holding `name`, or the empty slot where it would go.
    private func find(_ name: String, _ h: UInt64) -> Int {
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: h ^ (h >> 29)) & mask
        while slots[i] != 0 {
            let id = Int(slots[i] - 1)
            if hashes[id] == h && names[id] == name { return i }
            i = (i + 1) & mask
        }
        return i
    }

    /// The id of `name`, made if new.
    mutating func id(_ name: String) -> Int32 {
        let h = Self.hash(name)
        let i = find(name, h)
        if slots[i] != 0 { return slots[i] - 1 }
        let id = Int32(names.count)
        names.append(name)
        hashes.append(h)
        slots[i] = id + 1
        if names.count * 2 > slots.count { grow() }
        return id
    }

    private mutating func grow() {
        slots = [Int32](repeating: 0, count: slots.count * 2)
        let mask = slots.count - 1
        for (id, h) in hashes.enumerated() {
            var i = Int(truncatingIfNeeded: h ^ (h >> 29)) & mask
            while slots[i] != 0 { i = (i + 1) & mask }
            slots[i] = Int32(id) + 1
        }
    }

    /// The id of `name`, if any object mentioned it.
    func lookup(_ name: String) -> Int32? {
        let i = find(name, Self.hash(name))
        return slots[i] != 0 ? slots[i] - 1 : nil
    }

    /// For each symbol of `elf`, the id of its name when it is a named global (defined or not),
    /// else -1 (locals, sections, files).
    mutating func ids(of elf: ELFFile) -> [Int32] {
        elf.symbols.map { $0.binding != ELF.STB_LOCAL && !$0.name.isEmpty ? id($0.name) : -1 }
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
