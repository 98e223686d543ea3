// Integer ids for what a load looks up again and again. Every global name of a load gets a dense id
// the first time any object mentions it (one hash per symbol of each file, never one per
// relocation); each object keeps the id of each of its symbols, and everything keyed by a global
// (definitions, host addresses, GOT slots, veneers) is an array indexed by id. Sections are found by
// (object, section index) in arrays, not hashed.

import ExecMemELF

/// The global names of one load and their ids (0, 1, 2 ... in order of first mention), in an open
/// addressing table hashed over the names' UTF-8 bytes with the standard library's `Hasher`
/// (SipHash, seeded per process; no Unicode normalization, which `Dictionary<String, _>` pays). The
/// hash must be one the files cannot aim at: a load's names come from its files, and with linear
/// probing names of one slot cost probes quadratic in their number (an unseeded FNV-1a let a 21 MB
/// object of 131,072 globals chosen to agree in their hashes' low 47 bits take 49 s to link). As a
/// second bound, a name that would need more than `maxProbes` probes goes to a `Dictionary`.
struct GlobalNames {
    /// Slot -> id + 1 (0: empty).
    private var slots = [Int32](repeating: 0, count: 1024)
    private var hashes: [UInt64] = []
    /// Names that found no slot within `maxProbes`.
    private var overflow: [String: Int32] = [:]
    /// The name of each id.
    private(set) var names: [String] = []

    /// The most slots one look-up visits before the overflow dictionary answers.
    static let maxProbes = 32

    var count: Int { names.count }

    /// How many names are in the overflow dictionary (for tests).
    var overflowCount: Int { overflow.count }

    static func hash(_ name: String) -> UInt64 {
        var name = name
        return name.withUTF8 { bytes in
            var h = Hasher()
            h.combine(bytes: UnsafeRawBufferPointer(bytes))
            return UInt64(UInt(bitPattern: h.finalize()))
        }
    }

    /// The slot holding `name`, else the empty slot where it would go, else nil (every slot of its
    /// `maxProbes` was taken by other names).
    private func find(_ name: String, _ h: UInt64) -> (slot: Int, found: Bool)? {
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        for _ in 0..<Self.maxProbes {
            if slots[i] == 0 { return (i, false) }
            let id = Int(slots[i] - 1)
            if hashes[id] == h && names[id] == name { return (i, true) }
            i = (i + 1) & mask
        }
        return nil
    }

    /// The id of `name`, made if new.
    mutating func id(_ name: String) -> Int32 {
        let h = Self.hash(name)
        let place = find(name, h)
        if let place, place.found { return slots[place.slot] - 1 }
        if !overflow.isEmpty, let known = overflow[name] { return known }
        let id = Int32(names.count)
        names.append(name)
        hashes.append(h)
        if let place { slots[place.slot] = id + 1 } else { overflow[name] = id }
        if names.count * 2 > slots.count { grow() }
        return id
    }

    /// Twice the slots, every name placed again (those that find no slot within `maxProbes` go to
    /// the overflow dictionary).
    private mutating func grow() {
        slots = [Int32](repeating: 0, count: slots.count * 2)
        let mask = slots.count - 1
        for (id, h) in hashes.enumerated() where overflow.isEmpty || overflow[names[id]] == nil {
            var i = Int(truncatingIfNeeded: h) & mask, probes = 0
            while slots[i] != 0 && probes < Self.maxProbes { i = (i + 1) & mask; probes += 1 }
            if slots[i] == 0 { slots[i] = Int32(id) + 1 } else { overflow[names[id]] = Int32(id) }
        }
    }

    /// The id of `name`, if any object mentioned it.
    func lookup(_ name: String) -> Int32? {
        if let place = find(name, Self.hash(name)), place.found { return slots[place.slot] - 1 }
        return overflow.isEmpty ? nil : overflow[name]
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
