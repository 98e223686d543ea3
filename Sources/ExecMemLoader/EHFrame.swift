// Each object's `.eh_frame`, made into a table libgcc's `__register_frame` can take on its own: the
// layout leaves a zero word after it (what crtend.o gives a linked program), and the FDEs no loaded
// code backs are made empty before anything reads them.
//
// An FDE names its function with a relocation in its pc_begin field. When that function's section was
// left out (a later copy of a COMDAT group: an inline function, a template), ld removes the FDE; here
// the table cannot shrink (every FDE's CIE pointer is relative to its own place), so the FDE stays,
// its relocations are not applied, and its pc_range is zero: it covers no address, and libgcc skips
// it. FDEs of init text are emptied the same way once init memory is freed (`initRanges`), so a frame
// lookup never finds a module's frame in memory the allocator has given to other code.
//
//   .eh_frame of one object, in rodata          record: length (u32), id (u32: 0 = CIE, else
//   +-----+-----+-----+-- ... --+------+                the distance back to its CIE), body
//   | CIE | FDE | FDE |         | 0000 |        FDE body: pc_begin, pc_range (the CIE's 'R'
//   +-----+-----+-----+-- ... --+------+                encoding), augmentation, instructions

import ExecMem
import ExecMemELF

/// The records of one `.eh_frame` section, as far as the loader needs them.
struct EHFrame {
    /// One FDE: where it is in the section, and its pc_begin field.
    struct FDE {
        /// The record's bytes, from its length field to its end.
        let record: Range<Int>
        /// Offset of pc_begin in the section; pc_range follows it, of the same width.
        let pcBegin: Int
        /// Bytes of pc_begin and of pc_range (from the CIE's FDE encoding).
        let width: Int
        /// The CIE's FDE pointer encoding (DW_EH_PE_absptr or DW_EH_PE_pcrel, of a fixed-size format).
        var encoding: UInt8 = 0
    }

    let fdes: [FDE]

    /// The terminator after each object's table: one zero word.
    static let terminatorBytes = 4

    /// Reads the records of `bytes` (a section of `object`); every length, pointer and encoding is
    /// checked against the section.
    init(_ bytes: [UInt8], object: String, section: String) throws(LoaderError) {
        func bad(_ at: Int, _ what: String) -> LoaderError {
            .badInput(object: object, reason: "\(section)+0x\(String(at, radix: 16)): \(what)")
        }
        func u32(_ at: Int) throws(LoaderError) -> UInt32 {
            guard at >= 0, at <= bytes.count - 4 else { throw bad(at, "a 4-byte field runs past the section (\(bytes.count) bytes)") }
            return UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        // First pass: the records, and each CIE's FDE encoding width.
        var records: [(start: Int, body: Int, end: Int, id: UInt32)] = []
        var cieWidths: [Int: (width: Int, encoding: UInt8)] = [:]
        var at = 0
        while at < bytes.count {
            let length = try u32(at)
            if length == 0 { break }  // a terminator already in the object
            guard length != 0xFFFF_FFFF else { throw bad(at, "64-bit .eh_frame records are not supported") }
            let body = at + 4
            guard Int(length) >= 4, Int(length) <= bytes.count - body else {
                throw bad(at, "record length \(length) runs past the section (\(bytes.count) bytes)")
            }
            let end = body + Int(length)
            let id = try u32(body)
            if id == 0 { cieWidths[at] = try Self.fdeWidth(cie: bytes, body: body + 4, end: end, bad: bad) }
            records.append((at, body, end, id))
            at = end
        }
        // Second pass: each FDE by its CIE.
        var fdes: [FDE] = []
        for r in records where r.id != 0 {
            let cie = r.body - Int(r.id)
            guard let (width, encoding) = cieWidths[cie] else { throw bad(r.start, "FDE's CIE pointer \(r.id) names no CIE") }
            guard r.body + 4 + 2 * width <= r.end else { throw bad(r.start, "FDE of \(r.end - r.start) bytes is too short for its pc_begin and pc_range") }
            fdes.append(FDE(record: r.start..<r.end, pcBegin: r.body + 4, width: width, encoding: encoding))
        }
        self.fdes = fdes
    }

    /// The width of pc_begin in the FDEs of the CIE whose body (after its id) is `bytes[body..<end]`.
    private static func fdeWidth(cie bytes: [UInt8], body: Int, end: Int, bad: (Int, String) -> LoaderError) throws(LoaderError) -> (width: Int, encoding: UInt8) {
        var p = body
        func byte() throws(LoaderError) -> UInt8 {
            guard p < end else { throw bad(p, "CIE ends inside its header") }
            defer { p += 1 }
            return bytes[p]
        }
        func leb() throws(LoaderError) {
            while try byte() & 0x80 != 0 {}
        }
        let version = try byte()
        guard version == 1 || version == 3 else { throw bad(body, "CIE version \(version) (1 or 3 expected)") }
        var augmentation: [UInt8] = []
        while case let c = try byte(), c != 0 { augmentation.append(c) }
        try leb()  // code alignment
        try leb()  // data alignment
        if version == 1 { _ = try byte() } else { try leb() }  // return address register
        guard augmentation.first == UInt8(ascii: "z") else {
            guard augmentation.isEmpty else { throw bad(body, "CIE augmentation '\(String(decoding: augmentation, as: UTF8.self))' without 'z'") }
            return (8, 0)  // absptr
        }
        try leb()  // augmentation data length
        var encoding: UInt8 = 0
        for c in augmentation.dropFirst() {
            switch c {
            case UInt8(ascii: "R"): encoding = try byte()
            case UInt8(ascii: "L"):
                // libgcc reads the LSDA pointer with this encoding: one it has no base for aborts it.
                let e = try byte()
                guard e == 0xFF || (width(e) != nil && isPlain(e)) else { throw bad(p - 1, "LSDA encoding 0x\(String(e, radix: 16))") }
            case UInt8(ascii: "P"):
                let e = try byte()
                guard let w = width(e), isPlain(e & 0x7F) else { throw bad(p - 1, "personality encoding 0x\(String(e, radix: 16))") }
                p += w
            case UInt8(ascii: "S"), UInt8(ascii: "B"): break
            default: throw bad(body, "CIE augmentation '\(String(decoding: augmentation, as: UTF8.self))'")
            }
        }
        // Only what a linker and libgcc agree on: an absolute or pc-relative value of fixed size. libgcc
        // aborts on an FDE encoding it has no base for (funcrel, or 0x50-0x70 beyond aligned) and
        // dereferences an indirect one (DW_EH_PE_indirect), at the first frame lookup in the process.
        guard p <= end, let w = width(encoding), isPlain(encoding) else { throw bad(body, "CIE with FDE encoding 0x\(String(encoding, radix: 16))") }
        return (w, encoding)
    }

    /// Whether `encoding` is absptr or pcrel, not indirect (the formats `width` takes).
    static func isPlain(_ encoding: UInt8) -> Bool { encoding & 0xF0 == 0x00 || encoding & 0xF0 == 0x10 }

    /// Bytes of a fixed-size DW_EH_PE encoding (nil for LEB128 and omitted values).
    static func width(_ encoding: UInt8) -> Int? {
        switch encoding & 0x0F {
        case 0x00, 0x04, 0x0C: 8
        case 0x02, 0x0A: 2
        case 0x03, 0x0B: 4
        default: nil
        }
    }
}

extension Link {
    /// One object's `.eh_frame` as laid out (in rodata; in data when the object made it writable).
    struct FrameTable {
        let object: Int
        let bucket: Bucket
        /// Offset of the section in its bucket; its terminator follows its `size` bytes.
        let offset: Int
        let size: Int
        /// Offsets in the bucket and widths of the pc_range fields of FDEs of init text.
        var initRanges: [(offset: Int, width: Int)] = []
        /// The table's FDEs (offsets in the section).
        var fdes: [EHFrame.FDE] = []
    }

    /// Reads every loaded `.eh_frame`: finds the FDEs of functions left out (their relocations are
    /// skipped and their pc_range zeroed in `discardedFDEs`) and those of init text.
    mutating func planFrames() throws(LoaderError) {
        for (o, obj) in objects.enumerated() {
            for s in obj.elf.sections where s.name == ".eh_frame" && s.hasFileBytes && s.size > 0 {
                let key = Layout.SectionKey(object: o, section: s.index)
                guard let (bucket, offset) = layout.place[key], bucket == .rodata || bucket == .data else { continue }
                let table = try EHFrame(Array(obj.elf.contents(s)), object: obj.name, section: s.name)
                let relocations = obj.relocations[s.index] ?? []  // in offset order (ELFFile.relocations)
                // The last relocation of a type other than R_NONE at `offset`, found by binary search.
                func relocation(at offset: UInt64) -> ELFRelocation? {
                    var lo = 0, hi = relocations.count
                    while lo < hi {
                        let mid = (lo + hi) / 2
                        if relocations[mid].offset <= offset { lo = mid + 1 } else { hi = mid }
                    }
                    var i = lo - 1
                    while i >= 0 && relocations[i].offset == offset {
                        if relocations[i].type != 0 { return relocations[i] }
                        i -= 1
                    }
                    return nil
                }
                var frame = FrameTable(object: o, bucket: bucket, offset: offset, size: s.size, fdes: table.fdes)
                var discarded: [EHFrame.FDE] = []
                for f in table.fdes {
                    guard let r = relocation(at: UInt64(f.pcBegin)), r.symbolIndex < obj.elf.symbols.count else { continue }
                    let sym = obj.elf.symbols[r.symbolIndex]
                    guard sym.binding == ELF.STB_LOCAL, !sym.isUndefined, sym.sectionIndex < ELF.SHN_LORESERVE else { continue }
                    let target = Layout.SectionKey(object: o, section: Int(sym.sectionIndex))
                    if let (b, _) = layout.place[target] {
                        if b.isInit { frame.initRanges.append((offset + f.pcBegin + f.width, f.width)) }
                    } else if layout.tls[target] == nil {
                        discarded.append(f)
                    }
                }
                if !discarded.isEmpty { discardedFDEs[key] = discarded }
                frames.append(frame)
            }
        }
    }

    /// Zeroes pc_range of every discarded FDE in the rodata image (their relocations are skipped).
    func emptyDiscardedFDEs(_ images: inout [[UInt8]]) {
        for (key, fdes) in discardedFDEs {
            guard let (bucket, offset) = layout.place[key] else { continue }
            for f in fdes {
                for i in 0..<f.width { images[bucket.rawValue][offset + f.pcBegin + f.width + i] = 0 }
            }
        }
    }

    /// Checks, in the relocated images, that every FDE libgcc will see covers only the module's own
    /// text: a pc_begin relocated against a host function (or with an addend that lands elsewhere),
    /// or a pc_range past the text, would put the module's rules over code it does not own, and
    /// libgcc searches registered tables before the executable's and libraries' own.
    func checkFrameRanges(_ images: [[UInt8]], _ a: Addresses) throws(LoaderError) {
        let text = [Bucket.text, .initText].compactMap { b -> Range<UInt>? in
            let size = layout.size[b.rawValue]
            return size > 0 ? a.base[b.rawValue]..<(a.base[b.rawValue] + UInt(size)) : nil
        }
        for t in frames {
            let image = images[t.bucket.rawValue]
            func read(_ at: Int, _ width: Int, signed: Bool) -> UInt64 {
                var v: UInt64 = 0
                for i in 0..<width { v |= UInt64(image[t.offset + at + i]) << (8 * UInt64(i)) }
                if signed && width < 8 && v >> (8 * UInt64(width) - 1) & 1 == 1 { v |= ~0 << (8 * UInt64(width)) }
                return v
            }
            for f in t.fdes {
                let format = f.encoding & 0x0F
                // As libgcc reads them (classify_object_over_fdes, linear_search_fdes): both fields
                // in the encoding's format, sign-extended for the signed ones, pc_begin pc-relative
                // when the encoding says so.
                let range = read(f.pcBegin + f.width, f.width, signed: format >= 0x09)
                var begin = read(f.pcBegin, f.width, signed: format >= 0x09)
                if f.encoding & 0x70 == 0x10 { begin = begin &+ UInt64(a.base[t.bucket.rawValue] + UInt(t.offset + f.pcBegin)) }
                // libgcc skips an FDE whose pc_begin is zero in the encoding's bits, and one of no range.
                let mask: UInt64 = f.width < 8 ? (1 << (8 * UInt64(f.width))) - 1 : ~0
                if range == 0 || begin & mask == 0 { continue }
                let (end, overflow) = begin.addingReportingOverflow(range)
                guard !overflow, text.contains(where: { UInt64($0.lowerBound) <= begin && end <= UInt64($0.upperBound) }) else {
                    throw .badInput(object: objects[t.object].name, reason: ".eh_frame+0x\(String(f.record.lowerBound, radix: 16)): FDE covers 0x\(String(begin, radix: 16))-0x\(String(end, radix: 16)), outside the module's text")
                }
            }
        }
    }

    /// Whether a relocation at `offset` of section `key` lies in a discarded FDE (and is not applied).
    func isInDiscardedFDE(_ key: Layout.SectionKey, _ offset: UInt64) -> Bool {
        // In section order (read so): the last one starting at or before `offset`.
        guard let fdes = discardedFDEs[key] else { return false }
        let at = Int(clamping: offset)
        var lo = 0, hi = fdes.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if fdes[mid].record.lowerBound <= at { lo = mid + 1 } else { hi = mid }
        }
        return lo > 0 && fdes[lo - 1].record.contains(at)
    }
}
