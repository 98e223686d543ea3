// JIT_CODE_UNWINDING_INFO records (jitdump id 4), so `perf --call-graph=dwarf` walks through code
// ExecMem holds.
//
// `perf inject --jit` turns each JIT_CODE_LOAD into an ELF file (util/genelf.c) whose .text is the
// code at GEN_ELF_TEXT_OFFSET (0x80 in perf 6.1: ELF header + one program header, 16-aligned), and,
// when an unwinding record came before the load, an .eh_frame at ALIGN_8(0x80 + code_size) followed
// at once by an .eh_frame_hdr (the record's data is that .eh_frame, then the header:
// `eh_frame_hdr_size` bytes at its end). The file is mapped at the code's address with page offset
// GEN_ELF_TEXT_OFFSET and length ALIGN_8(code_size) + mapped_size (util/jitdump.c), so in the
// profile's address space the .eh_frame starts at `code + ALIGN_8(code_size)`. libunwind (perf's post-unwinder here) reads the header's table and the
// FDEs through that mapping, so every pc-relative field is encoded for that address.
//
// A table (see `records` for which symbol's record carries it):
//
//   CIE (zR, FDE pointers pcrel|sdata4)      one per distinct CIE the FDEs use
//   FDE FDE ...                             the FDEs covering the symbols, rules as they are
//   0 (u32)                                 terminator
//   .eh_frame_hdr                           version 1, eh_frame_ptr pcrel|sdata4, fde_count udata4,
//                                           table datarel|sdata4 sorted by initial location
//
// Synthesized frames (`CodeUnwind.frames`) use the registry's own initial rules (CFA = rsp + 8,
// return address at CFA - 8). A loaded module's `.eh_frame` (`CodeUnwind.section`) is parsed: each
// CIE's augmentation decides how its FDEs' pc_begin is encoded; personality and LSDA ('P', 'L') are
// dropped, perf only needs CFA rules ('S' is kept).

// MARK: - The records

enum PerfUnwindInfo {
    static let jitCodeUnwindingInfo: UInt32 = 4

    /// One frame description entry, before encoding: its range (run addresses), the CIE it uses, and
    /// its instructions.
    struct FDE {
        var start: UInt
        var length: Int
        var cie: Int
        var instructions: [UInt8]
    }

    /// One common information entry's rules (everything but the augmentation, which is rewritten).
    struct CIE: Hashable {
        var codeAlignment: UInt64
        var dataAlignment: Int64
        var returnRegister: UInt64
        var signalFrame: Bool
        var instructions: [UInt8]

        /// The registry's CIE: CFA = rsp + 8, return address at CFA - 8.
        static let synthesized = CIE(codeAlignment: 1, dataAlignment: -8, returnRegister: 16, signalFrame: false,
                                     instructions: [0x0C, 7, 8, 0x90, 1])
    }

    /// A registration's symbols and their declared code sizes (the JIT_CODE_LOAD's `code_size`).
    typealias Load = (symbol: CodeSymbol, codeSize: Int)

    /// Unwinding records for `loads` (one registration's symbols, by address), each to go right before
    /// its JIT_CODE_LOAD; nil entries have none.
    ///
    /// perf maps each generated file at its code with length ALIGN_8(code_size) + mapped_size, and a
    /// later map replaces the part of an earlier one it overlaps. Code here is packed (a function's
    /// table would lie over its neighbour's first bytes, whose map wins), so one table for the whole
    /// registration follows its last symbol, in that symbol's file, and every other symbol's header
    /// is placed (after zero padding) at the same address: libunwind reads the header's count from
    /// the sampled symbol's own file and the table and FDEs through the mappings, which show the last
    /// symbol's file there. Only the last symbol's map is extended over the table. When the padding
    /// would be too large (more than `paddingLimit` bytes in all), each symbol gets its own table
    /// after its code instead (right only where nothing follows it closely).
    static func records(for loads: [Load], cies: [CIE], fdes: [FDE], timestamp: UInt64, paddingLimit: Int = 4 << 20) -> [[UInt8]?] {
        guard let last = loads.last else { return [] }
        let base = { (l: Load) in Int64(bitPattern: UInt64(l.symbol.address)) + Int64((l.codeSize + 7) & ~7) }
        let lastBase = base(last)
        guard let shared = table(fdes: fdes, cies: cies, low: loads[0].symbol.address, high: last.symbol.address + UInt(last.codeSize), base: lastBase) else {
            return loads.map { _ in nil }
        }
        let hdrAddress = lastBase + Int64(shared.eh.count)
        let padding = loads.dropLast().reduce(Int64(0)) { $0 + max(0, hdrAddress - base($1)) }
        if padding > paddingLimit || loads.dropLast().contains(where: { base($0) > hdrAddress }) {
            return loads.map { l in
                table(fdes: fdes, cies: cies, low: l.symbol.address, high: l.symbol.address + UInt(l.codeSize), base: base(l))
                    .map { record($0.eh, $0.hdr, mapped: true, timestamp) }
            }
        }
        return loads.enumerated().map { i, l in
            if i == loads.count - 1 { return record(shared.eh, shared.hdr, mapped: true, timestamp) }
            let covered = fdes.contains { $0.start < l.symbol.address + UInt(l.codeSize) && $0.start + UInt($0.length) > l.symbol.address }
            guard covered else { return nil }
            return record([UInt8](repeating: 0, count: Int(hdrAddress - base(l))), shared.hdr, mapped: false, timestamp)
        }
    }

    /// An .eh_frame (the CIEs and FDEs overlapping `[low, high)`, terminated) and its .eh_frame_hdr,
    /// encoded for an .eh_frame at run address `base` with the header right after it.
    static func table(fdes: [FDE], cies: [CIE], low: UInt, high: UInt, base: Int64) -> (eh: [UInt8], hdr: [UInt8])? {
        let mine = fdes.filter { $0.start < high && $0.start + UInt($0.length) > low && $0.length > 0 }.sorted { $0.start < $1.start }
        guard !mine.isEmpty else { return nil }
        var eh: [UInt8] = []
        var cieOffsets: [Int: Int] = [:]
        for f in mine where cieOffsets[f.cie] == nil {
            cieOffsets[f.cie] = eh.count
            appendCIE(cies[f.cie], to: &eh)
        }
        var entries: [(Int64, Int)] = []
        for f in mine {
            let at = eh.count
            var body: [UInt8] = []
            body.appendLE(UInt32(at + 4 - cieOffsets[f.cie]!))                        // CIE pointer
            let target = Int64(bitPattern: UInt64(f.start))
            guard let pc = Int32(exactly: target - (base + Int64(at) + 8)), let range = UInt32(exactly: f.length) else { return nil }
            body.appendLE(pc)                                                          // pc_begin, pcrel|sdata4
            body.appendLE(range)                                                       // pc_range
            body.append(0)                                                             // augmentation data length
            body += f.instructions
            while (body.count + 4) % 8 != 0 { body.append(0) }                         // DW_CFA_nop
            eh.appendLE(UInt32(body.count))
            eh += body
            entries.append((target, at))
        }
        eh.appendLE(UInt32(0))
        let hdrAddress = base + Int64(eh.count)
        var hdr: [UInt8] = [1, 0x1B, 0x03, 0x3B]
        hdr.appendLE(Int32(-(eh.count + 4)))                                           // eh_frame_ptr: back to base
        hdr.appendLE(UInt32(entries.count))
        for (start, at) in entries {
            guard let s = Int32(exactly: start - hdrAddress) else { return nil }
            hdr.appendLE(s)
            hdr.appendLE(Int32(at - eh.count))
        }
        return (eh, hdr)
    }

    /// The record: header, then the .eh_frame and its header, padded to 8 bytes. `mapped` extends the
    /// load's mapping over them.
    static func record(_ eh: [UInt8], _ hdr: [UInt8], mapped: Bool, _ timestamp: UInt64) -> [UInt8] {
        let unwinding = eh.count + hdr.count
        let content = 16 + 24 + unwinding
        let total = (content + 7) & ~7
        var rec: [UInt8] = []
        rec.reserveCapacity(total)
        rec.appendLE(jitCodeUnwindingInfo); rec.appendLE(UInt32(total)); rec.appendLE(timestamp)
        rec.appendLE(UInt64(unwinding)); rec.appendLE(UInt64(hdr.count)); rec.appendLE(UInt64(mapped ? unwinding : 0))
        rec += eh
        rec += hdr
        rec += [UInt8](repeating: 0, count: total - content)
        return rec
    }

    private static func appendCIE(_ c: CIE, to out: inout [UInt8]) {
        var body: [UInt8] = [0, 0, 0, 0, 1]                                            // CIE id 0, version 1
        body += Array((c.signalFrame ? "zRS" : "zR").utf8) + [0]
        uleb(c.codeAlignment, into: &body)
        sleb(c.dataAlignment, into: &body)
        guard c.returnRegister < 256 else { return }
        body.append(UInt8(c.returnRegister))                                           // version 1: one byte
        body += [1, 0x1B]                                                              // aug data: pcrel|sdata4
        body += c.instructions
        while (body.count + 4) % 8 != 0 { body.append(0) }
        out.appendLE(UInt32(body.count))
        out += body
    }

    /// Unsigned LEB128 (DWARF), appended to `out`; CFIProgram encodes with it too.
    static func uleb(_ v: UInt64, into out: inout [UInt8]) {
        var v = v
        repeat {
            var b = UInt8(v & 0x7F)
            v >>= 7
            if v != 0 { b |= 0x80 }
            out.append(b)
        } while v != 0
    }

    /// Signed LEB128 (DWARF), appended to `out`.
    static func sleb(_ v: Int64, into out: inout [UInt8]) {
        var v = v
        while true {
            let b = UInt8(v & 0x7F)
            v >>= 7
            if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) { out.append(b); return }
            out.append(b | 0x80)
        }
    }

    // MARK: - Frames of a registration

    /// The CIEs and FDEs of `r`'s call-frame information, or nil when it has none.
    static func frames(of r: CodeRegistration) -> (cies: [CIE], fdes: [FDE])? {
        switch r.unwind {
        case .frames(let list)?:
            let fdes = list.map { FDE(start: r.address + UInt($0.offset), length: $0.length, cie: 0, instructions: $0.instructions) }
            return fdes.isEmpty ? nil : ([.synthesized], fdes)
        case .section(let address)?:
            var parser = EHFrameParser(address: address, limit: r)
            return parser.parse()
        case nil:
            return nil
        }
    }
}

// MARK: - A loaded module's .eh_frame

/// Reads a relocated, zero-terminated `.eh_frame` in memory (already validated by the loader; every
/// read is still bounded by the entry's own length, and anything unexpected ends the walk).
struct EHFrameParser {
    let address: UInt
    /// The registration's span: FDEs elsewhere (another object's text, freed init text) are skipped.
    let low: UInt, high: UInt
    private var cies: [PerfUnwindInfo.CIE] = []
    private var cieIndex: [UInt: Int] = [:]
    /// Per CIE: its FDE pointer encoding, and whether FDEs carry augmentation data ('z').
    private var cieEncoding: [Int: (UInt8, Bool)] = [:]

    init(address: UInt, limit r: CodeRegistration) {
        self.address = address
        low = r.address
        high = r.address + UInt(max(r.size, 1))
    }

    mutating func parse() -> (cies: [PerfUnwindInfo.CIE], fdes: [PerfUnwindInfo.FDE])? {
        var fdes: [PerfUnwindInfo.FDE] = []
        var at = address
        // A module's table is small; the bound only stops a walk that never finds its terminator.
        for _ in 0..<1_000_000 {
            let length = UInt(Self.load(at, as: UInt32.self))
            if length == 0 || length == 0xFFFF_FFFF { break }   // terminator; 64-bit DWARF is not used on x86-64 .eh_frame
            let body = at + 4, end = body + length
            let id = Self.load(body, as: UInt32.self)
            if id == 0 {
                _ = cie(at: at)
            } else if let f = fde(body: body, end: end, pointer: UInt(id)) {
                fdes.append(f)
            }
            at = end
        }
        return fdes.isEmpty ? nil : (cies, fdes)
    }

    private mutating func cie(at entry: UInt) -> Int? {
        if let i = cieIndex[entry] { return i }
        let length = UInt(Self.load(entry, as: UInt32.self))
        var r = Reader(at: entry + 8, end: entry + 4 + length)
        guard let version = r.byte(), version == 1 || version == 3 else { return nil }
        var aug: [UInt8] = []
        while let b = r.byte(), b != 0 { aug.append(b) }
        guard let ca = r.uleb(), let da = r.sleb() else { return nil }
        guard let ra = version == 1 ? r.byte().map(UInt64.init) : r.uleb() else { return nil }
        var encoding: UInt8 = 0, signal = false
        let hasData = aug.first == UInt8(ascii: "z")
        if hasData {
            guard let n = r.uleb() else { return nil }
            let dataEnd = r.at + UInt(n)
            for c in aug.dropFirst() {
                switch c {
                case UInt8(ascii: "R"): guard let e = r.byte() else { return nil }; encoding = e
                case UInt8(ascii: "P"):
                    guard let e = r.byte(), r.skipPointer(e) else { return nil }
                case UInt8(ascii: "L"): guard r.byte() != nil else { return nil }
                case UInt8(ascii: "S"): signal = true
                default: return nil   // an augmentation we cannot skip: the data length still lets us, but its meaning is unknown
                }
            }
            r.at = dataEnd
        } else if !aug.isEmpty {
            return nil
        }
        guard r.at <= r.end else { return nil }
        let c = PerfUnwindInfo.CIE(codeAlignment: ca, dataAlignment: da, returnRegister: ra, signalFrame: signal,
                                   instructions: Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: r.at), count: Int(r.end - r.at))))
        cies.append(c)
        cieIndex[entry] = cies.count - 1
        cieEncoding[cies.count - 1] = (encoding, hasData)
        return cies.count - 1
    }

    private mutating func fde(body: UInt, end: UInt, pointer: UInt) -> PerfUnwindInfo.FDE? {
        guard pointer <= body, let c = cie(at: body - pointer), let (encoding, hasData) = cieEncoding[c] else { return nil }
        var r = Reader(at: body + 4, end: end)
        guard let start = r.pointer(encoding), let range = r.pointer(encoding & 0x0F) else { return nil }
        if hasData {
            guard let n = r.uleb() else { return nil }
            r.at += UInt(n)
        }
        guard r.at <= end, start != 0, range > 0, start < high, start &+ range > low, range < 1 << 31 else { return nil }
        return PerfUnwindInfo.FDE(start: start, length: Int(range), cie: c,
                                  instructions: Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: r.at), count: Int(end - r.at))))
    }

    static func load<T: FixedWidthInteger>(_ address: UInt, as: T.Type) -> T {
        T(littleEndian: UnsafeRawPointer(bitPattern: address)!.loadUnaligned(as: T.self))
    }

    /// Bounded reads inside one entry.
    struct Reader {
        var at: UInt
        let end: UInt

        init(at: UInt, end: UInt) { self.at = at; self.end = end }

        mutating func byte() -> UInt8? {
            guard at < end else { return nil }
            defer { at += 1 }
            return EHFrameParser.load(at, as: UInt8.self)
        }

        mutating func uleb() -> UInt64? {
            var v: UInt64 = 0, shift: UInt64 = 0
            while let b = byte() {
                if shift < 64 { v |= UInt64(b & 0x7F) << shift }
                if b & 0x80 == 0 { return v }
                shift += 7
            }
            return nil
        }

        mutating func sleb() -> Int64? {
            var v: Int64 = 0, shift: Int64 = 0
            while let b = byte() {
                if shift < 64 { v |= Int64(b & 0x7F) << shift }
                shift += 7
                if b & 0x80 == 0 {
                    if shift < 64 && b & 0x40 != 0 { v |= -1 << shift }
                    return v
                }
            }
            return nil
        }

        private static func size(_ encoding: UInt8) -> UInt? {
            switch encoding & 0x0F {
            case 0x00, 0x04, 0x0C: return 8   // absptr, udata8, sdata8
            case 0x02, 0x0A: return 2
            case 0x03, 0x0B: return 4
            default: return nil               // uleb/sleb pointers do not occur in .eh_frame's FDE pointers
            }
        }

        /// An encoded pointer: the value format in the low nibble, pcrel (0x10) applied; datarel and
        /// the others have no base here and fail. Indirect (0x80) pointers are not FDE pointers.
        mutating func pointer(_ encoding: UInt8) -> UInt? {
            guard encoding != 0xFF, let n = Self.size(encoding), at + n <= end else { return nil }
            let field = at
            var v: UInt
            switch encoding & 0x0F {
            case 0x02: v = UInt(EHFrameParser.load(at, as: UInt16.self))
            case 0x0A: v = UInt(bitPattern: Int(EHFrameParser.load(at, as: Int16.self)))
            case 0x03: v = UInt(EHFrameParser.load(at, as: UInt32.self))
            case 0x0B: v = UInt(bitPattern: Int(EHFrameParser.load(at, as: Int32.self)))
            default: v = UInt(EHFrameParser.load(at, as: UInt64.self))
            }
            at += n
            switch encoding & 0x70 {
            case 0x00: return v
            case 0x10: return field &+ v
            default: return nil
            }
        }

        mutating func skipPointer(_ encoding: UInt8) -> Bool {
            guard let n = Self.size(encoding), at + n <= end else { return false }
            at += n
            return true
        }
    }
}
