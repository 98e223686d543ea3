// eBPF programs from ELF objects as `clang -target bpf -O2 -c` writes them (v1 to v4): program
// sections, functions in `.text` reached by local calls, maps declared in a `maps` section
// (`struct bpf_map_def`), and `.rodata`/`.data`/`.bss` turned into one-element array maps.
//
// Linking happens here as Linux's loader does it: an `lddw` relocated against a map becomes
// `lddw map[N]` (src 1, BPF_PSEUDO_MAP_FD with N the map's index), one against data becomes
// `lddw map[N]+offset` (src 2, BPF_PSEUDO_MAP_VALUE), and a call relocated against a function becomes
// a local call to where that function now lies. The verifier resolves the map references.
//
//   program = [ entry trampoline (when the entry is not first) ][ entry section ][ .text ]

import ExecMemELF

public struct BPFObject {
    public let file: ELFFile

    public init(bytes: [UInt8], name: String) throws(BPFError) {
        do { file = try ELFFile(bytes: bytes, name: name, machine: ELF.EM_BPF) } catch { throw .elf(error) }
        guard file.type == ELF.ET_REL else { throw .elf(.unsupported(file: name, what: "ELF type \(file.type) (an object from clang -c is expected)")) }
    }

    /// Functions in program sections (every executable section but `.text`), in file order.
    public var programFunctions: [String] {
        file.symbols.filter { s in
            s.type == ELF.STT_FUNC && Int(s.sectionIndex) < file.sections.count
                && file.sections[Int(s.sectionIndex)].isExecutable && file.sections[Int(s.sectionIndex)].name != ".text"
        }.map(\.name)
    }

    /// Every function, program sections and `.text`.
    public var allFunctions: [String] {
        file.symbols.filter { $0.type == ELF.STT_FUNC && !$0.isUndefined }.map(\.name)
    }
}

extension BPFVM {
    /// Loads `function` (default: the first function of the first program section) from an object;
    /// `budget` is each run's default instruction budget.
    public func load(elf bytes: [UInt8], name: String = "object", function: String? = nil,
                     budget: UInt64 = BPFProgram.defaultBudget) throws(BPFError) -> BPFProgram {
        let object = try BPFObject(bytes: bytes, name: name)
        let f = object.file
        let wanted = function ?? object.programFunctions.first ?? object.allFunctions.first
        guard let wanted, let entry = f.symbols.first(where: { $0.name == wanted && $0.type == ELF.STT_FUNC && !$0.isUndefined }) else {
            throw .link(section: name, offset: 0, reason: function.map { "no function named '\($0)' (functions: \(object.allFunctions.joined(separator: ", ")))" }
                        ?? "the object has no functions")
        }
        // Every field below comes from the file: checked before it is used.
        guard Int(entry.sectionIndex) < f.sections.count, entry.sectionIndex != 0, f.sections[Int(entry.sectionIndex)].isExecutable else {
            throw .link(section: name, offset: 0, reason: "function '\(wanted)' is in section \(entry.sectionIndex), which is not a code section of this object")
        }
        let entrySection = f.sections[Int(entry.sectionIndex)]
        guard entry.value % 8 == 0, entry.value < UInt64(entrySection.size) else {
            throw .link(section: entrySection.name, offset: 0, reason: "function '\(wanted)' starts at \(entry.value), not at an instruction of its \(entrySection.size)-byte section")
        }
        // Maps and data sections.
        var maps: [BPFMap] = []
        var mapBySymbol: [Int: Int] = [:]  // symbol index -> index in maps
        var dataMap: [Int: Int] = [:]  // section index -> index in maps
        // Symbols by section, once (a file may have many sections named "maps").
        var symbolsBySection: [Int: [ELFSymbol]] = [:]
        for sym in f.symbols where sym.sectionIndex != ELF.SHN_UNDEF && sym.sectionIndex < ELF.SHN_LORESERVE && sym.type != ELF.STT_SECTION {
            symbolsBySection[Int(sym.sectionIndex), default: []].append(sym)
        }
        var mapBytes = 0  // all of one object's maps together stay within BPFMap.maxBytes
        func admit(_ bytes: Int, _ what: String) throws(BPFError) {
            mapBytes += bytes
            guard mapBytes <= BPFMap.maxBytes else {
                throw .link(section: what, offset: 0, reason: "the object's maps and data sections need more than the \(BPFMap.maxBytes >> 20) MiB all of them may take (BPFMap.maxBytes)")
            }
        }
        for s in f.sections where s.isAllocated && !s.isExecutable && s.size > 0 {
            if s.name == "maps" {
                guard s.hasFileBytes else { throw .link(section: "maps", offset: 0, reason: "the maps section has no bytes in the file (NOBITS)") }
                for sym in symbolsBySection[s.index] ?? [] {
                    guard s.size >= 20, sym.value <= UInt64(s.size - 20), s.hasFileBytes else {
                        throw .link(section: "maps", offset: 0, reason: "map '\(sym.name)' at \(sym.value) is not a whole struct bpf_map_def inside the \(s.size)-byte section")
                    }
                    let at = s.offset + Int(sym.value)
                    let reader = ELFReader(f.bytes, file: name)
                    var words: [UInt32] = []
                    for (k, field) in ["type", "key_size", "value_size", "max_entries"].enumerated() {
                        do throws(ELFError) { words.append(try reader.le(at + 4 * k, as: UInt32.self, "bpf_map_def.\(field) of map '\(sym.name)'")) } catch { throw .elf(error) }
                    }
                    guard let type = BPFMapType(rawValue: words[0]) else {
                        throw .link(section: "maps", offset: Int(sym.value), reason: "map '\(sym.name)' has type \(words[0]); only hash (1) and array (2) are supported")
                    }
                    let footprint = BPFMap.footprint(type: type, keySize: Int(words[1]), valueSize: Int(words[2]), maxEntries: Int(words[3]))
                    try admit(footprint ?? Int.max / 2, "maps")
                    let m = try BPFMap(name: sym.name, type: type, keySize: Int(words[1]), valueSize: Int(words[2]), maxEntries: Int(words[3]))
                    mapBySymbol[sym.index] = maps.count
                    maps.append(m)
                }
            } else if s.name == ".maps" {
                throw .link(section: ".maps", offset: 0, reason: "BTF-defined maps are not supported; declare maps as SEC(\"maps\") struct bpf_map_def")
            } else if s.name.hasPrefix(".rodata") || s.name.hasPrefix(".data") || s.name.hasPrefix(".bss") {
                try admit(BPFMap.footprint(type: .array, keySize: 4, valueSize: s.size, maxEntries: 1) ?? Int.max / 2, s.name)
                let m = try BPFMap(name: s.name, type: .array, keySize: 4, valueSize: s.size, maxEntries: 1, readOnly: !s.isWritable)
                if s.hasFileBytes { m.initialize(f.contents(s), at: 0) }
                dataMap[s.index] = maps.count
                maps.append(m)
            }
        }
        // Lay out the code.
        var code: [BPFInstruction] = []
        var sectionStart: [Int: Int] = [:]
        let entryOffset = Int(entry.value) / 8
        if entryOffset != 0 {  // call the entry, then exit with its r0
            code.append(BPFInstruction(opcode: BPF.JMP | BPF.CALL, src: BPF.callLocal, imm: 0))
            code.append(BPFInstruction(opcode: BPF.JMP | BPF.EXIT))
        }
        var order = [entrySection]
        if let text = f.section(named: ".text"), text.index != entrySection.index, text.size > 0 { order.append(text) }
        for s in order {
            guard s.size % 8 == 0 else { throw .link(section: s.name, offset: s.size, reason: "size \(s.size) is not a whole number of instructions") }
            guard s.hasFileBytes else { throw .link(section: s.name, offset: 0, reason: "a code section with no bytes in the file (NOBITS)") }
            sectionStart[s.index] = code.count
            code += try decodeProgram(Array(f.contents(s)))
        }
        if entryOffset != 0 { code[0].imm = Int32(sectionStart[entrySection.index]! + entryOffset - 1) }
        // Relocate.
        for s in order {
            let relocations: [ELFRelocation]
            do { relocations = try f.relocations(for: s) } catch { throw .elf(error) }
            for r in relocations {
                guard r.offset % 8 == 0, r.offset < UInt64(s.size) else {
                    throw .link(section: s.name, offset: Int(clamping: r.offset), reason: "relocation at \(r.offset) is not on an instruction of the \(s.size)-byte section")
                }
                let at = sectionStart[s.index]! + Int(r.offset) / 8
                guard r.symbolIndex < f.symbols.count else { throw .link(section: s.name, offset: Int(r.offset), reason: "bad symbol index \(r.symbolIndex)") }
                let sym = f.symbols[r.symbolIndex]
                switch r.type {
                case 1:  // R_BPF_64_64: lddw of a map or data address
                    guard code[at].opcode == BPF.LDDW, at + 1 < code.count else {
                        throw .link(section: s.name, offset: Int(r.offset), reason: "R_BPF_64_64 on an instruction that is not lddw")
                    }
                    // Linux's pseudo loads: src 1 = the map, src 2 = a pointer into the map's value.
                    if let m = mapBySymbol[sym.index] {
                        code[at].src = 1
                        code[at].imm = Int32(m)
                        code[at + 1].imm = 0
                    } else if let index = dataMap[Int(sym.sectionIndex)] {
                        let m = maps[index]
                        let addend = UInt64(UInt32(bitPattern: code[at].imm)) | UInt64(UInt32(bitPattern: code[at + 1].imm)) << 32
                        let (off, overflow) = sym.value.addingReportingOverflow(addend)
                        guard !overflow, off <= UInt64(m.valueSize) else { throw .link(section: s.name, offset: Int(r.offset), reason: "offset \(off) past the end of \(m.name)") }
                        code[at].src = 2
                        code[at].imm = Int32(index)
                        code[at + 1].imm = Int32(truncatingIfNeeded: off)
                    } else {
                        throw .link(section: s.name, offset: Int(r.offset), reason: "lddw of '\(sym.name)', which is neither a map nor in a data section")
                    }
                case 10:  // R_BPF_64_32: a call to a function
                    guard code[at].opcode == BPF.JMP | BPF.CALL, code[at].src == BPF.callLocal else {
                        throw .link(section: s.name, offset: Int(r.offset), reason: "R_BPF_64_32 on an instruction that is not a local call")
                    }
                    guard let base = sectionStart[Int(sym.sectionIndex)], let section = order.first(where: { $0.index == Int(sym.sectionIndex) }),
                          sym.value % 8 == 0, sym.value < UInt64(section.size) else {
                        throw .link(section: s.name, offset: Int(r.offset), reason: "call to '\(sym.name)', which is not an instruction of a code section this program links")
                    }
                    let target = sym.type == ELF.STT_SECTION
                        ? base + Int(sym.value) / 8 + Int(code[at].imm) + 1
                        : base + Int(sym.value) / 8
                    guard target >= 0, target < code.count else {
                        throw .link(section: s.name, offset: Int(r.offset), reason: "call to '\(sym.name)' lands at \(target), outside the program")
                    }
                    code[at].imm = Int32(target - at - 1)
                default:
                    throw .link(section: s.name, offset: Int(r.offset), reason: "unsupported relocation type \(r.type) against '\(sym.name)'")
                }
            }
        }
        return try load(code, name: wanted, maps: maps, budget: budget)
    }
}

extension BPFProgram {
    /// The map a program's object declared (or a data section's, by section name).
    public func map(named n: String) -> BPFMap? { maps.first { $0.name == n } }
}
