// What a load starts from: relocatable objects, and the members of archives that define symbols the
// objects still need, pulled in as a linker does (repeatedly, until nothing more resolves).

import ExecMemELF
import ExecMemSystem

/// One relocatable object taking part in a load.
struct InputObject {
    let name: String
    let elf: ELFFile
    /// The id (`GlobalNames`) of each symbol that is a named global, -1 for the others.
    let globalID: [Int32]
    /// Sections left out: later copies of a COMDAT group already loaded.
    var excluded: Set<Int> = []
    /// Section index -> its relocations, read once by `Link.plan` for the placed sections.
    var relocations: [Int: [ELFRelocation]] = [:]
}

public struct LoaderInput: Sendable {
    public let name: String
    public let bytes: [UInt8]
    public init(name: String, bytes: [UInt8]) { self.name = name; self.bytes = bytes }

    /// The most bytes `file` reads: 4 GiB. A larger file (a sparse one, `/dev/zero`) is a
    /// `LoaderError.io`, not an allocation that traps or reads that never end.
    public static let maxFileBytes = 1 << 32

    /// Reads a file (straight into the input's bytes: one copy from the page cache) of at most
    /// `limit` bytes.
    public static func file(_ path: String, limit: Int = LoaderInput.maxFileBytes) throws(LoaderError) -> LoaderInput {
        do { return LoaderInput(name: path, bytes: try Sys.readFile(path, limit: limit)) } catch { throw .io(path: path, reason: "cannot read the file: \(error)") }
    }
}

enum Inputs {
    /// The objects given, plus the archive members they need, and the ids of their global names.
    static func resolve(_ inputs: [LoaderInput]) throws(LoaderError) -> (objects: [InputObject], names: GlobalNames) {
        var objects: [InputObject] = []
        var archives: [Archive] = []
        var globals = GlobalNames()
        // The names of every object of the load, given or pulled from an archive, share one budget
        // in proportion to the load's input bytes (each member's own would add 1 MiB per member).
        var names = ELFNameBudget(inputBytes: inputs.reduce(0) { $0 + $1.bytes.count })
        for input in inputs {
            do {
                if Archive.isArchive(input.bytes) {
                    archives.append(try Archive(bytes: input.bytes, name: input.name))
                } else {
                    let elf = try ELFFile(bytes: input.bytes, name: input.name, machine: ELF.EM_X86_64, names: &names)
                    objects.append(InputObject(name: input.name, elf: elf, globalID: globals.ids(of: elf)))
                }
            } catch {
                throw .elf(error)
            }
        }
        for o in objects where o.elf.type != ELF.ET_REL {
            throw .badInput(object: o.name, reason: "ELF type \(o.elf.type) is not a relocatable object (ET_REL)")
        }
        guard !archives.isEmpty else { return (objects, globals) }
        // As ld does with a group: each archive is searched until it resolves nothing more (so a
        // member's needs are met from its own archive first), then the next, round again while any
        // archive has symbols it has not looked at. Each archive looks at each symbol once: one
        // whose member was taken, or that it does not define, is never looked at by it again.
        var taken = [Set<Int>](repeating: [], count: archives.count)  // member indexes pulled
        // Members read to see whether they really define a COMMON symbol, but not pulled (yet): each
        // is read once, however many COMMON symbols its archive's index names it for.
        var read: [MemberKey: (elf: ELFFile, data: Set<String>)] = [:]
        var pending = [[Int32]](repeating: [], count: archives.count)
        var symbols = SymbolSets()
        // Only to the archives whose index names it: pending work is bounded by the indexes' sizes.
        func add(_ o: InputObject) {
            symbols.add(o, names: globals) { id, name in
                for i in archives.indices where archives[i].symbolIndex[name] != nil { pending[i].append(id) }
            }
        }
        for o in objects { add(o) }
        for i in pending.indices { pending[i].sort { globals.names[Int($0)] < globals.names[Int($1)] } }
        while let i = pending.indices.first(where: { !pending[$0].isEmpty }) {
            var next = 0
            while next < pending[i].count {
                let symbol = pending[i][next]
                next += 1
                guard symbols.isUnresolved(symbol), let m = archives[i].symbolIndex[globals.names[Int(symbol)]], !taken[i].contains(m) else { continue }
                let key = MemberKey(archive: i, member: m)
                let elf: ELFFile
                if let known = read[key] { elf = known.elf } else {
                    let member = archives[i].members[m]
                    // The member's name as errors show it, at most 256 bytes of it (a long name may be
                    // shared by many members; a copy each would not be).
                    let memberName = member.name.utf8.count > 256 ? String(member.name.prefix(256)) + "..." : member.name
                    do { elf = try ELFFile(bytes: member.bytes, name: "\(archives[i].name)(\(memberName))", machine: ELF.EM_X86_64, names: &names) } catch { throw .elf(error) }
                }
                // A COMMON symbol pulls a member only for a real definition (as ld's
                // elf_link_is_defined_archive_symbol: global data, not COMMON): archive indexes
                // name COMMON declarations too, and another one changes nothing.
                if symbols.isCommon(symbol) {
                    let data = read[key]?.data ?? Set(elf.symbols.lazy.filter(Self.isDataDefinition).map(\.name))
                    guard data.contains(globals.names[Int(symbol)]) else {
                        read[key] = (elf, data)
                        continue
                    }
                }
                taken[i].insert(m)
                read[key] = nil
                objects.append(InputObject(name: elf.name, elf: elf, globalID: globals.ids(of: elf)))
                add(objects[objects.count - 1])
            }
            pending[i] = []
        }
        return (objects, globals)
    }

    struct MemberKey: Hashable { let archive: Int; let member: Int }

    /// Whether `s` is a definition that makes ld pull its archive member for a COMMON symbol
    /// (`is_global_data_symbol_definition`): global (not weak), not a function, defined, not COMMON.
    static func isDataDefinition(_ s: ELFSymbol) -> Bool {
        (s.binding == ELF.STB_GLOBAL || s.binding == ELF.STB_GNU_UNIQUE) && s.type != ELF.STT_FUNC && !s.isUndefined && !s.isCommon && !s.name.isEmpty
    }

    /// Global symbols defined and referenced (undefined, not weak) by the objects, by id.
    struct SymbolSets {
        private var defined: [Bool] = []
        /// Referenced (undefined, not weak), not defined by any object so far, and defined by a
        /// member of an archive (the others, host symbols say, are resolved later, not here).
        private var unresolved: [Bool] = []
        /// Some object has the symbol as COMMON.
        private var common: [Bool] = []

        func isUnresolved(_ id: Int32) -> Bool { Int(id) < unresolved.count && unresolved[Int(id)] }
        func isCommon(_ id: Int32) -> Bool { Int(id) < common.count && common[Int(id)] }

        /// Adds an object's symbols; `becameUnresolved(id, name)` is called for each symbol that
        /// becomes unresolved, and says nothing when no archive defines it.
        mutating func add(_ o: InputObject, names: GlobalNames, becameUnresolved: (Int32, String) -> Void) {
            if defined.count < names.count {
                defined += [Bool](repeating: false, count: names.count - defined.count)
                unresolved += [Bool](repeating: false, count: names.count - unresolved.count)
                common += [Bool](repeating: false, count: names.count - common.count)
            }
            let symbols = o.elf.symbols
            for (s, id) in o.globalID.enumerated() where id >= 0 && symbols[s].isGlobal && !symbols[s].isUndefined && !symbols[s].isCommon {
                defined[Int(id)] = true
                unresolved[Int(id)] = false
            }
            // A COMMON symbol is a tentative definition: as ld does, a member that really defines
            // it is pulled (its definition then wins over the COMMON one).
            for (s, id) in o.globalID.enumerated() where id >= 0 && symbols[s].isGlobal && symbols[s].isCommon { common[Int(id)] = true }
            for (s, id) in o.globalID.enumerated() where id >= 0 && symbols[s].isGlobal && (symbols[s].isUndefined && !symbols[s].isWeak || symbols[s].isCommon)
                && !defined[Int(id)] && !unresolved[Int(id)] {
                unresolved[Int(id)] = true
                becameUnresolved(id, names.names[Int(id)])
            }
        }
    }
}

extension LoaderInput {
    /// The marker that separates the loader inputs of one fuzz input: "\0FZNEXT\0".
    @_spi(Fuzzing) public static let fuzzMarker: [UInt8] = [0, 0x46, 0x5A, 0x4E, 0x45, 0x58, 0x54, 0]

    /// Splits one fuzz input into at most `limit` loader inputs at `fuzzMarker` (an input without it
    /// is one object), named `fuzz0.o`, `fuzz1.o`...: the fuzz target and its regression tests share it.
    @_spi(Fuzzing) public static func fuzzInputs(_ bytes: [UInt8], limit: Int = 4) -> [LoaderInput] {
        var parts: [[UInt8]] = []
        var start = 0, i = 0
        while i + fuzzMarker.count <= bytes.count, parts.count < limit - 1 {
            if bytes[i] == 0, bytes[i..<(i + fuzzMarker.count)].elementsEqual(fuzzMarker) {
                parts.append(Array(bytes[start..<i]))
                i += fuzzMarker.count
                start = i
            } else {
                i += 1
            }
        }
        parts.append(Array(bytes[start...]))
        return parts.enumerated().map { LoaderInput(name: "fuzz\($0.offset).o", bytes: $0.element) }
    }
}
