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
        } else if case let .global(name) = id {
            if name == "_GLOBAL_OFFSET_TABLE_" { return a.gotAddress }
            if name == "__dso_handle" { return a.dsoHandle }
            guard let v = external[name] else { throw .undefinedSymbol(name: name, object: objects[o].name) }
            return v
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

    func locate(_ id: Identity) throws(LoaderError) -> (Int, Int) {
        if let d = definition(id) { return d }
        if case let .global(name) = id { throw .badInput(object: "module", reason: "thread-local symbol '\(name)' is not defined by the module") }
        throw .badInput(object: "module", reason: "bad symbol")
    }

    func value(of id: Identity, _ a: Addresses) throws(LoaderError) -> UInt {
        if let d = definition(id) { return try symbolValue(d.object, d.symbol, a) }
        if case let .global(name) = id {
            if name == "_GLOBAL_OFFSET_TABLE_" { return a.gotAddress }
            if name == "__dso_handle" { return a.dsoHandle }
            if let v = external[name] { return v }
            throw .undefinedSymbol(name: name, object: "module")
        }
        return 0
    }

    /// Applies every relocation of every loaded section to `images`; returns how many rel32 went
    /// through a veneer because the target was out of reach.
    func relocate(_ images: inout [[UInt8]], _ a: Addresses) throws(LoaderError) -> Int {
        var throughVeneers = 0
        for (o, obj) in objects.enumerated() {
            for section in obj.elf.sections {
                guard let (bucket, sectionOffset) = layout.place[Layout.SectionKey(object: o, section: section.index)] else { continue }
                let key = Layout.SectionKey(object: o, section: section.index)
                for r in obj.relocations[section.index] ?? [] where !isInDiscardedFDE(key, r.offset) {
                    guard try apply(r, o, section, bucket, sectionOffset, &images, a) else { continue }
                    throughVeneers += 1
                }
            }
        }
        return throughVeneers
    }

    private func apply(_ r: ELFRelocation, _ o: Int, _ section: ELFSection, _ bucket: Bucket, _ sectionOffset: Int,
                       _ images: inout [[UInt8]], _ a: Addresses) throws(LoaderError) -> Bool {
        let obj = objects[o]
        let sym = obj.elf.symbols[r.symbolIndex]
        let name = sym.name.isEmpty ? (Int(sym.sectionIndex) < obj.elf.sections.count ? obj.elf.sections[Int(sym.sectionIndex)].name : "?") : sym.name
        let at = sectionOffset + Int(r.offset)
        let P = a.base[bucket.rawValue] + UInt(at)
        func overflow(_ v: Int64) -> LoaderError {
            .relocationOverflow(object: obj.name, section: section.name, offset: r.offset, type: r.type, symbol: name, value: v)
        }
        func width(_ n: Int) throws(LoaderError) {
            guard Int(r.offset) + n <= section.size else {
                throw .badInput(object: obj.name, reason: "\(Relocation.name(r.type)) at \(section.name)+0x\(String(r.offset, radix: 16)) runs past the section")
            }
        }
        func addend(_ n: Int) throws(LoaderError) -> Int64 {
            if let e = r.addend { return e }
            try width(n)  // REL: the addend is in place, and must lie in the section
            var v: Int64 = 0
            for i in 0..<n { v |= Int64(images[bucket.rawValue][at + i]) << (8 * i) }
            return n == 4 ? Int64(Int32(truncatingIfNeeded: v)) : v
        }
        func put32(_ v: Int64, signed: Bool = true) throws(LoaderError) {
            try width(4)
            if signed { guard Int32(exactly: v) != nil else { throw overflow(v) } } else { guard UInt32(exactly: v) != nil else { throw overflow(v) } }
            let u = UInt32(truncatingIfNeeded: v)
            for i in 0..<4 { images[bucket.rawValue][at + i] = UInt8(truncatingIfNeeded: u >> (8 * i)) }
        }
        func put64(_ v: Int64) throws(LoaderError) {
            try width(8)
            let u = UInt64(bitPattern: v)
            for i in 0..<8 { images[bucket.rawValue][at + i] = UInt8(truncatingIfNeeded: u >> (8 * i)) }
        }
        func i64(_ u: UInt) -> Int64 { Int64(bitPattern: UInt64(u)) }
        func slot(_ k: GotKey) -> UInt { a.gotAddress + UInt(got[k]! * 8) }
        let id = identity(o, r.symbolIndex)
        switch r.type {
        case 0:
            return false
        case Relocation.R_64:
            try put64(i64(try symbolValue(o, r.symbolIndex, a)) &+ addend(8))
        case Relocation.PC32, Relocation.PLT32:
            let A = try addend(4)
            let S = try symbolValue(o, r.symbolIndex, a)
            let direct = i64(S) &+ A &- i64(P)
            if Int32(exactly: direct) == nil, case let .global(n) = id, let v = veneers[n] {
                try put32(i64(a.veneerAddress + UInt(v * Link.veneerSize)) &+ A &- i64(P))  // through the veneer
                return true
            } else {
                try put32(direct)
            }
        case Relocation.GOTPCREL, Relocation.GOTPCRELX, Relocation.REX_GOTPCRELX:
            try put32(i64(slot(.address(id))) &+ addend(4) &- i64(P))
        case Relocation.R_32:
            try put32(i64(try symbolValue(o, r.symbolIndex, a)) &+ addend(4), signed: false)
        case Relocation.R_32S:
            try put32(i64(try symbolValue(o, r.symbolIndex, a)) &+ addend(4))
        case Relocation.PC64:
            try put64(i64(try symbolValue(o, r.symbolIndex, a)) &+ addend(8) &- i64(P))
        case Relocation.GOTOFF64:
            try put64(i64(try symbolValue(o, r.symbolIndex, a)) &+ addend(8) &- i64(a.gotAddress))
        case Relocation.GOTPC32:
            try put32(i64(a.gotAddress) &+ addend(4) &- i64(P))
        case Relocation.GOTPC64:
            try put64(i64(a.gotAddress) &+ addend(8) &- i64(P))
        case Relocation.TPOFF32:
            try put32(try tpoff(o, r.symbolIndex, a) &+ addend(4))
        case Relocation.TPOFF64:
            try put64(try tpoff(o, r.symbolIndex, a) &+ addend(8))
        case Relocation.GOTTPOFF:
            try put32(i64(slot(.tpoff(id))) &+ addend(4) &- i64(P))
        case Relocation.TLSGD:
            try put32(i64(slot(.tlsgd(id))) &+ addend(4) &- i64(P))
        case Relocation.TLSLD:
            try put32(i64(slot(.tlsld)) &+ addend(4) &- i64(P))
        case Relocation.DTPOFF32:
            _ = try tpoff(o, r.symbolIndex, a)
            try put32(i64(try symbolValue(o, r.symbolIndex, a)) &+ addend(4))
        case Relocation.DTPOFF64:
            _ = try tpoff(o, r.symbolIndex, a)
            try put64(i64(try symbolValue(o, r.symbolIndex, a)) &+ addend(8))
        default:
            throw .unsupportedRelocation(object: obj.name, section: section.name, offset: r.offset, type: r.type)
        }
        return false
    }

    /// Veneers: `jmp *slot(%rip)` per external function, padded with int3.
    func veneerCode(_ a: Addresses) -> [UInt8] {
        var out = [UInt8](repeating: 0xCC, count: veneers.count * Link.veneerSize)
        for (name, v) in veneers {
            let at = v * Link.veneerSize
            let slotAddress = a.gotAddress + UInt(got[.address(.global(name))]! * 8)
            let d = Int32(truncatingIfNeeded: Int64(bitPattern: UInt64(slotAddress)) - Int64(bitPattern: UInt64(a.veneerAddress + UInt(at + 6))))
            out[at] = 0xFF
            out[at + 1] = 0x25
            for i in 0..<4 { out[at + 2 + i] = UInt8(truncatingIfNeeded: UInt32(bitPattern: d) >> (8 * i)) }
        }
        return out
    }
}
