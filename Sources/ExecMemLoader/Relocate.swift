// x86-64 relocations (System V psABI), applied to the section images once every address is known.
// S is the symbol's address, A the addend, P the place, GOT the module's GOT. Every 32-bit field is
// checked: a rel32 to a function out of reach goes through the module's veneer for it; anything else
// that does not fit is an error, never a truncated value.

import ExecMem
import ExecMemELF

extension Link {
    /// Addresses the relocator needs: each bucket's base, the TLS arena offset of the module.
    struct Addresses {
        var base: [UInt]
        var gotAddress: UInt
        var veneerAddress: UInt
        var dsoHandle: UInt
    }

    /// The address of a section (or its TLS offset for thread-local ones, in `tls`).
    func sectionAddress(_ o: Int, _ s: Int, _ a: Addresses) -> UInt? {
        guard let (b, off) = layout.place[Layout.SectionKey(object: o, section: s)] else { return nil }
        return a.base[b.rawValue] + UInt(off)
    }

    /// A symbol's address, or its offset in the module's TLS image when `tls` is true.
    func symbolValue(_ o: Int, _ s: Int, _ a: Addresses) throws(LoaderError) -> UInt {
        let id = identity(o, s)
        let (d, ds): (Int, Int)
        if let def = definition(id), !objects[def.object].elf.symbols[def.symbol].isUndefined {
            (d, ds) = def
        } else if case let .global(g) = id {
            if let v = external[Int(g)] { return v }
            return try special(g, a, object: objects[o].name)
        } else {
            throw .badInput(object: objects[o].name, reason: "local symbol \(s) is undefined")
        }
        let sym = objects[d].elf.symbols[ds]
        if sym.isAbsolute { return UInt(sym.value) }
        if sym.isCommon {
            // Only named globals are COMMON (Link.init places them): a local or nameless one is not.
            guard let at = layout.common[Layout.SymbolKey(object: d, symbol: ds)] else {
                throw .badInput(object: objects[d].name, reason: "COMMON symbol \(ds) '\(sym.name)' is not a named global (only those are placed)")
            }
            return a.base[Bucket.data.rawValue] + UInt(at)
        }
        let section = Int(sym.sectionIndex)
        // A symbol lies within its section (its end included): a value from the file, checked.
        guard section < objects[d].elf.sections.count, sym.value <= UInt64(objects[d].elf.sections[section].size) else {
            throw .badInput(object: objects[d].name, reason: "symbol '\(sym.name)' has value \(sym.value), outside its section \(section)")
        }
        if let t = layout.tls[Layout.SectionKey(object: d, section: section)] { return UInt(tlsBase + t) + UInt(sym.value) }
        guard let base = sectionAddress(d, section, a) else {
            throw .badInput(object: objects[d].name, reason: "symbol '\(sym.name)' is in section \(section), which is not loaded")
        }
        return base + UInt(sym.value)
    }

    /// The thread-pointer offset of a TLS symbol.
    func tpoff(_ o: Int, _ s: Int, _ a: Addresses) throws(LoaderError) -> Int64 {
        guard isTLS(o, s) || definition(identity(o, s)).map({ isTLS($0.object, $0.symbol) }) == true else {
            throw .badInput(object: objects[o].name, reason: "TLS relocation against '\(objects[o].elf.symbols[s].name)', which is not a thread-local variable of the module")
        }
        return TLSArena.offsetFromThreadPointer + Int64(try symbolValue(o, s, a))
    }

    /// The GOT's contents.
    func gotContents(_ a: Addresses) throws(LoaderError) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: gotOrder.count)
        var i = 0
        while i < gotOrder.count {
            let k = gotOrder[i]
            switch k {
            case let .address(id):
                out[i] = UInt64(try value(of: id, a))
            case let .tpoff(id):
                let (o, s) = try locate(id)
                out[i] = UInt64(bitPattern: try tpoff(o, s, a))
            case let .tlsgd(id):
                let (o, s) = try locate(id)
                _ = try tpoff(o, s, a)  // must be one of ours
                out[i] = TLSArena.module
                out[i + 1] = UInt64(try symbolValue(o, s, a))
                i += 1
            case .tlsld:
                out[i] = TLSArena.module
                out[i + 1] = 0
                i += 1
            }
            i += 1
        }
        return out
    }

    /// The module's own `_GLOBAL_OFFSET_TABLE_` and `__dso_handle`.
    func special(_ g: Int32, _ a: Addresses, object: String) throws(LoaderError) -> UInt {
        switch name(g) {
        case "_GLOBAL_OFFSET_TABLE_": return a.gotAddress
        case "__dso_handle": return a.dsoHandle
        default: throw .undefinedSymbol(name: name(g), object: object)
        }
    }

    func locate(_ id: Identity) throws(LoaderError) -> (Int, Int) {
        if let d = definition(id) { return d }
        if case let .global(g) = id { throw .badInput(object: "module", reason: "thread-local symbol '\(name(g))' is not defined by the module") }
        throw .badInput(object: "module", reason: "bad symbol")
    }

    func value(of id: Identity, _ a: Addresses) throws(LoaderError) -> UInt {
        if let d = definition(id) { return try symbolValue(d.object, d.symbol, a) }
        if case let .global(g) = id {
            if let v = external[Int(g)] { return v }
            return try special(g, a, object: "module")
        }
        return 0
    }

    /// Applies every relocation of every loaded section to `images`; returns how many rel32 went
    /// through a veneer because the target was out of reach. Each symbol's value is computed once
    /// per object (relocations name the same symbols again and again), and bytes are written in
    /// place.
    func relocate(_ images: inout [[UInt8]], _ a: Addresses) throws(LoaderError) -> Int {
        var throughVeneers = 0
        for o in objects.indices {
            let symbols = objects[o].elf.symbols, sections = objects[o].elf.sections
            var values = [UInt](repeating: 0, count: symbols.count)
            var known = [Bool](repeating: false, count: symbols.count)
            for index in objects[o].relocations.keys.sorted() {
                let relocations = objects[o].relocations[index]!, section = sections[index]
                let key = Layout.SectionKey(object: o, section: index)
                guard let (bucket, sectionOffset) = layout.place[key] else { continue }
                let discarded = discardedFDEs[key] != nil
                var failure: LoaderError? = nil
                images[bucket.rawValue].withUnsafeMutableBytes { image in
                    do throws(LoaderError) {
                        for r in relocations where r.type != 0 && !(discarded && isInDiscardedFDE(key, r.offset)) {
                            let s = r.symbolIndex
                            if !known[s], needsValue(r.type) {
                                values[s] = try symbolValue(o, s, a)
                                known[s] = true
                            }
                            guard try apply(r, values[s], o, section, bucket, sectionOffset, image, a) else { continue }
                            throughVeneers += 1
                        }
                    } catch {
                        failure = error
                    }
                }
                if let failure { throw failure }
            }
        }
        return throughVeneers
    }

    /// Whether a relocation type uses S, the symbol's value (the GOT-relative ones use its slot).
    private func needsValue(_ type: UInt32) -> Bool {
        switch type {
        case Relocation.GOTPCREL, Relocation.GOTPCRELX, Relocation.REX_GOTPCRELX, Relocation.GOTPC32, Relocation.GOTPC64,
             Relocation.GOTTPOFF, Relocation.TLSGD, Relocation.TLSLD: false
        default: true
        }
    }

    private func apply(_ r: ELFRelocation, _ S: UInt, _ o: Int, _ section: ELFSection, _ bucket: Bucket, _ sectionOffset: Int,
                       _ image: UnsafeMutableRawBufferPointer, _ a: Addresses) throws(LoaderError) -> Bool {
        let at = sectionOffset + Int(r.offset)
        let P = a.base[bucket.rawValue] + UInt(at)
        func symbolName() -> String {
            let obj = objects[o], sym = obj.elf.symbols[r.symbolIndex]
            return sym.name.isEmpty ? (Int(sym.sectionIndex) < obj.elf.sections.count ? obj.elf.sections[Int(sym.sectionIndex)].name : "?") : sym.name
        }
        func overflow(_ v: Int64) -> LoaderError {
            .relocationOverflow(object: objects[o].name, section: section.name, offset: r.offset, type: r.type, symbol: symbolName(), value: v)
        }
        func width(_ n: Int) throws(LoaderError) {
            guard Int(r.offset) + n <= section.size else {
                throw .badInput(object: objects[o].name, reason: "\(Relocation.name(r.type)) at \(section.name)+0x\(String(r.offset, radix: 16)) runs past the section")
            }
        }
        func addend(_ n: Int) throws(LoaderError) -> Int64 {
            if let e = r.addend { return e }
            try width(n)  // REL: the addend is in place, and must lie in the section
            return n == 4 ? Int64(Int32(littleEndian: image.loadUnaligned(fromByteOffset: at, as: Int32.self)))
                          : Int64(littleEndian: image.loadUnaligned(fromByteOffset: at, as: Int64.self))
        }
        func put32(_ v: Int64, signed: Bool = true) throws(LoaderError) {
            try width(4)
            if signed { guard Int32(exactly: v) != nil else { throw overflow(v) } } else { guard UInt32(exactly: v) != nil else { throw overflow(v) } }
            image.storeBytes(of: UInt32(truncatingIfNeeded: v).littleEndian, toByteOffset: at, as: UInt32.self)
        }
        func put64(_ v: Int64) throws(LoaderError) {
            try width(8)
            image.storeBytes(of: UInt64(bitPattern: v).littleEndian, toByteOffset: at, as: UInt64.self)
        }
        func i64(_ u: UInt) -> Int64 { Int64(bitPattern: UInt64(u)) }
        func slot(_ k: GotKey) -> UInt { a.gotAddress + UInt(got[k]! * 8) }
        switch r.type {
        case 0:
            return false
        case Relocation.R_64:
            try put64(i64(S) &+ addend(8))
        case Relocation.PC32, Relocation.PLT32:
            let A = try addend(4)
            let direct = i64(S) &+ A &- i64(P)
            if Int32(exactly: direct) == nil, case let .global(g) = identity(o, r.symbolIndex), let v = veneers[g] {
                try put32(i64(a.veneerAddress + UInt(v * Link.veneerSize)) &+ A &- i64(P))  // through the veneer
                return true
            } else {
                try put32(direct)
            }
        case Relocation.GOTPCREL, Relocation.GOTPCRELX, Relocation.REX_GOTPCRELX:
            try put32(i64(slot(.address(identity(o, r.symbolIndex)))) &+ addend(4) &- i64(P))
        case Relocation.R_32:
            try put32(i64(S) &+ addend(4), signed: false)
        case Relocation.R_32S:
            try put32(i64(S) &+ addend(4))
        case Relocation.PC64:
            try put64(i64(S) &+ addend(8) &- i64(P))
        case Relocation.GOTOFF64:
            try put64(i64(S) &+ addend(8) &- i64(a.gotAddress))
        case Relocation.GOTPC32:
            try put32(i64(a.gotAddress) &+ addend(4) &- i64(P))
        case Relocation.GOTPC64:
            try put64(i64(a.gotAddress) &+ addend(8) &- i64(P))
        case Relocation.TPOFF32:
            try put32(try tpoff(o, r.symbolIndex, a) &+ addend(4))
        case Relocation.TPOFF64:
            try put64(try tpoff(o, r.symbolIndex, a) &+ addend(8))
        case Relocation.GOTTPOFF:
            try put32(i64(slot(.tpoff(identity(o, r.symbolIndex)))) &+ addend(4) &- i64(P))
        case Relocation.TLSGD:
            try put32(i64(slot(.tlsgd(identity(o, r.symbolIndex)))) &+ addend(4) &- i64(P))
        case Relocation.TLSLD:
            try put32(i64(slot(.tlsld)) &+ addend(4) &- i64(P))
        case Relocation.DTPOFF32:
            _ = try tpoff(o, r.symbolIndex, a)
            try put32(i64(S) &+ addend(4))
        case Relocation.DTPOFF64:
            _ = try tpoff(o, r.symbolIndex, a)
            try put64(i64(S) &+ addend(8))
        default:
            throw .unsupportedRelocation(object: objects[o].name, section: section.name, offset: r.offset, type: r.type)
        }
        return false
    }

    /// Veneers: `jmp *slot(%rip)` per external function, padded with int3.
    func veneerCode(_ a: Addresses) -> [UInt8] {
        var out = [UInt8](repeating: 0xCC, count: veneers.count * Link.veneerSize)
        for (g, v) in veneers {
            let at = v * Link.veneerSize
            let slotAddress = a.gotAddress + UInt(got[.address(.global(g))]! * 8)
            let d = Int32(truncatingIfNeeded: Int64(bitPattern: UInt64(slotAddress)) - Int64(bitPattern: UInt64(a.veneerAddress + UInt(at + 6))))
            out[at] = 0xFF
            out[at + 1] = 0x25
            for i in 0..<4 { out[at + 2 + i] = UInt8(truncatingIfNeeded: UInt32(bitPattern: d) >> (8 * i)) }
        }
        return out
    }
}
