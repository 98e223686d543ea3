// The GDB JIT interface sink. GDB reads, from the process, a list of in-memory ELF files
// (`__jit_debug_descriptor`) and re-reads the list's changed entry each time the process calls
// `__jit_debug_register_code`. Each announcement costs GDB a read and a symbol-table build of that
// file, and GDB's cost per file grows with how many files it holds, so code is not announced per
// function: each 2 MiB block has one symbol file holding every function that starts in it, changed in
// place and re-announced once per batch. A registration with a debug object (a module's relocated
// DWARF) is announced as its own file.
//
// A block's file, with room to grow in place:
//
//   +------+-----------+-----------+--------------------+--------------------+----------------------+
//   | Ehdr | .shstrtab | Shdr x 6  | .symtab (capacity) | .strtab (capacity) | .eh_frame (capacity) |
//   +------+-----------+-----------+--------------------+--------------------+----------------------+
//   sections: null, .text (NOBITS at the block's address), .symtab, .strtab, .shstrtab, .eh_frame
//
// Symbols are STT_FUNC, global, with absolute addresses (ET_EXEC). Removing one moves the last symbol
// into its slot; names leave garbage in .strtab until the file is rebuilt (when full, or when half is
// garbage), so a change costs O(1) amortized. The .eh_frame holds the synthesized frames of the
// block's code, the same FDEs (absolute pc_begin) the unwinder sink gives libgcc: without them GDB
// guesses JIT frames from their prologues and loses the stack above an entry stub. Removed code's
// FDEs are emptied in place, like its symbols' names, until a rebuild.

import CExecMemDebug

/// One entry in GDB's list and the bytes it names; owns both.
final class GDBFile {
    let entry: UnsafeMutablePointer<cem_jit_code_entry>
    private(set) var bytes: UnsafeMutableRawBufferPointer
    private(set) var announced = false

    init(capacity: Int) {
        entry = .allocate(capacity: 1)
        entry.initialize(to: cem_jit_code_entry(next_entry: nil, prev_entry: nil, symfile_addr: nil, symfile_size: 0))
        bytes = .allocate(byteCount: capacity, alignment: 16)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    convenience init(copying object: [UInt8]) {
        self.init(capacity: max(object.count, 1))
        bytes.copyBytes(from: object)
    }

    deinit {
        if announced { cem_jit_unregister(entry) }
        entry.deallocate()
        bytes.deallocate()
    }

    /// Tells GDB of the file's current first `size` bytes (re-announcing a changed file).
    func announce(size: Int) -> Int {
        var n = 0
        if announced { cem_jit_unregister(entry); n += 1 }
        entry.pointee.symfile_addr = UnsafePointer(bytes.baseAddress!.assumingMemoryBound(to: CChar.self))
        entry.pointee.symfile_size = UInt64(size)
        cem_jit_register(entry)
        announced = true
        return n + 1
    }

    /// Takes the file out of GDB's list.
    func withdraw() -> Int {
        guard announced else { return 0 }
        cem_jit_unregister(entry)
        announced = false
        return 1
    }

    func write<T: FixedWidthInteger>(_ v: T, at offset: Int) {
        bytes.storeBytes(of: v.littleEndian, toByteOffset: offset, as: T.self)
    }
}

/// A block's symbol file.
struct BlockSymbolFile {
    static let ehdrSize = 64, shdrSize = 64, symSize = 24
    static let shstrtab: [UInt8] = Array("\0.text\0.symtab\0.strtab\0.shstrtab\0.eh_frame\0".utf8)  // 43 bytes
    static let shstrtabAt = ehdrSize
    static let shdrsAt = ehdrSize + 48
    static let symtabAt = shdrsAt + 6 * shdrSize

    /// What one registration put in the file: its symbols' slots and its FDEs' offsets, and what a
    /// rebuild writes again.
    struct Member {
        var symbols: [CodeSymbol]
        var frames: (UInt, [CodeFrame])?
        var slots: [Int] = []
        var fdes: [Int] = []
    }

    let base: UInt
    private(set) var file: GDBFile
    /// `file`'s bytes (it owns them; they move only when `file` is replaced).
    private var bytes: UnsafeMutableRawPointer
    private var symbolCapacity: Int
    private var stringCapacity: Int
    /// Symbols in the file, index 0 the null symbol; `owners[i]` is symbol i's registration.
    private var owners: [UInt64] = [0]
    private var stringsUsed = 1
    private var garbage = 0
    private var members: [UInt64: Member] = [:]
    private var textEnd: UInt
    private var frameCapacity: Int
    /// Bytes of .eh_frame in use (the CIE first); `frameDead` of them are emptied FDEs.
    private var framesUsed = BlockFrameTable.cie.count
    private var frameDead = 0

    var isEmpty: Bool { members.isEmpty }
    /// .eh_frame's offset, 8-aligned as its section header says (and as its words are read).
    private static func framesAt(symbols: Int, strings: Int) -> Int { (symtabAt + symbols * symSize + strings + 7) & ~7 }
    private var framesAt: Int { Self.framesAt(symbols: symbolCapacity, strings: stringCapacity) }
    private var strtabAt: Int { Self.symtabAt + symbolCapacity * Self.symSize }
    var size: Int { framesAt + frameCapacity }

    init(base: UInt, symbols: Int = 256, strings: Int = 8192, frames: Int = 8192) {
        self.base = base
        symbolCapacity = max(symbols, 16)
        stringCapacity = max(strings, 256)
        frameCapacity = max(frames, 256)
        textEnd = base + UInt(ExecMemGeometry.blockSize)
        file = GDBFile(capacity: Self.framesAt(symbols: symbolCapacity, strings: stringCapacity) + frameCapacity)
        bytes = file.bytes.baseAddress!
        writeHeaders()
    }

    @inline(__always)
    private func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { bytes.storeBytes(of: v.littleEndian, toByteOffset: at, as: T.self) }

    mutating func add(_ id: UInt64, _ list: [CodeSymbol], frames f: (UInt, [CodeFrame])? = nil) {
        var need = 0
        for s in list { need += s.name.utf8.count + 1 }
        var frameBytes = 0
        if let f { for frame in f.1 { frameBytes += BlockFrameTable.fdeSize(frame) } }
        if owners.count + list.count > symbolCapacity || stringsUsed + need > stringCapacity || framesUsed + frameBytes > frameCapacity {
            grow(extraSymbols: list.count, extraStrings: need, extraFrames: frameBytes)
        }
        var m = Member(symbols: list, frames: f)
        if let f, !f.1.isEmpty {
            let region = UnsafeMutableRawBufferPointer(start: bytes + framesAt, count: frameCapacity)
            for frame in f.1 {
                m.fdes.append(framesUsed)
                framesUsed += BlockFrameTable.writeFDE(frame, base: f.0, into: region, at: framesUsed, cie: 0)
            }
        }
        for s in list {
            m.slots.append(owners.count)
            writeSymbol(s, index: owners.count)
            owners.append(id)
            textEnd = max(textEnd, s.address + UInt(max(s.size, 1)))
        }
        members[id] = m
        writeSizes()
    }

    mutating func remove(_ id: UInt64) {
        guard let m = members.removeValue(forKey: id) else { return }
        for s in m.symbols { garbage += s.name.utf8.count + 1 }
        if !m.fdes.isEmpty {
            let region = UnsafeMutableRawBufferPointer(start: bytes + framesAt, count: frameCapacity)
            for o in m.fdes { frameDead += BlockFrameTable.clearFDE(in: region, at: o) }
        }
        for i in m.slots.sorted(by: >) {
            let last = owners.count - 1
            if i != last {
                (bytes + Self.symtabAt + i * Self.symSize).copyMemory(from: bytes + Self.symtabAt + last * Self.symSize, byteCount: Self.symSize)
                let moved = owners[last]
                owners[i] = moved
                if let k = members[moved]?.slots.firstIndex(of: last) { members[moved]!.slots[k] = i }
            }
            owners.removeLast()
        }
        if (garbage > 4096 && garbage * 2 > stringsUsed) || (frameDead > 4096 && frameDead * 2 > framesUsed) {
            rebuild(extraSymbols: 0, extraStrings: 0, extraFrames: 0)
        }
        writeSizes()
    }

    /// Moves the file to one with room for what is about to be added (each region at least doubles).
    /// Slots, string offsets and FDE offsets are relative to their regions, so the regions are copied
    /// as they are: growing costs a copy of the bytes, not a re-add of every member.
    private mutating func grow(extraSymbols: Int, extraStrings: Int, extraFrames: Int) {
        let old = file, oldBytes = bytes
        let oldStrtab = strtabAt, oldFrames = framesAt
        symbolCapacity = max(symbolCapacity * 2, owners.count + extraSymbols)
        stringCapacity = max(stringCapacity * 2, stringsUsed + extraStrings)
        frameCapacity = max(frameCapacity * 2, framesUsed + extraFrames)
        file = GDBFile(capacity: size)
        bytes = file.bytes.baseAddress!
        writeHeaders()
        (bytes + Self.symtabAt).copyMemory(from: oldBytes + Self.symtabAt, byteCount: owners.count * Self.symSize)
        (bytes + strtabAt).copyMemory(from: oldBytes + oldStrtab, byteCount: stringsUsed)
        (bytes + framesAt).copyMemory(from: oldBytes + oldFrames, byteCount: framesUsed)
        writeSizes()
        // GDB keeps reading the old file until the next announcement replaces it.
        if old.announced { _ = old.withdraw() }
    }

    /// Lays the file out again without what removed members left (garbage names, emptied FDEs).
    private mutating func rebuild(extraSymbols: Int, extraStrings: Int, extraFrames: Int) {
        let live = members
        var syms = owners.count - 1 + extraSymbols, strs = stringsUsed - garbage + extraStrings
        var frameBytes = framesUsed - frameDead + extraFrames
        syms = max(symbolCapacity, syms * 2)
        strs = max(stringCapacity, strs * 2)
        frameBytes = max(frameCapacity, frameBytes * 2)
        if syms == symbolCapacity && strs == stringCapacity && frameBytes == frameCapacity { syms += 1 }  // a compaction still needs a new file
        let old = file
        symbolCapacity = syms
        stringCapacity = strs
        frameCapacity = frameBytes
        file = GDBFile(capacity: size)
        bytes = file.bytes.baseAddress!
        owners = [0]; stringsUsed = 1; garbage = 0; members = [:]
        framesUsed = BlockFrameTable.cie.count; frameDead = 0
        writeHeaders()
        for id in live.keys.sorted() { add(id, live[id]!.symbols, frames: live[id]!.frames) }
        // GDB keeps reading the old file until the next announcement replaces it.
        if old.announced { _ = old.withdraw() }
    }

    private mutating func writeSymbol(_ s: CodeSymbol, index: Int) {
        let nameAt = stringsUsed
        var name = s.name
        let count = name.withUTF8 { u in
            (bytes + strtabAt + nameAt).copyMemory(from: u.baseAddress!, byteCount: u.count)
            return u.count
        }
        bytes.storeBytes(of: 0, toByteOffset: strtabAt + nameAt + count, as: UInt8.self)
        stringsUsed += count + 1
        let at = Self.symtabAt + index * Self.symSize
        put(UInt32(nameAt), at)
        put(UInt8(0x12), at + 4)  // STB_GLOBAL, STT_FUNC
        put(UInt8(0), at + 5)
        put(UInt16(1), at + 6)  // .text
        put(UInt64(s.address), at + 8)
        put(UInt64(max(s.size, 1)), at + 16)
    }

    private func writeHeaders() {
        let f = file
        // Ehdr: ELFCLASS64, little-endian, ET_EXEC, EM_X86_64.
        for (i, b) in [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0].enumerated() { f.write(UInt8(b), at: i) }
        f.write(UInt16(2), at: 16); f.write(UInt16(62), at: 18); f.write(UInt32(1), at: 20)
        f.write(UInt64(Self.shdrsAt), at: 40)
        f.write(UInt16(Self.ehdrSize), at: 52); f.write(UInt16(Self.shdrSize), at: 58)
        f.write(UInt16(6), at: 60); f.write(UInt16(4), at: 62)
        f.bytes.baseAddress!.advanced(by: Self.shstrtabAt).copyMemory(from: Self.shstrtab, byteCount: Self.shstrtab.count)
        func shdr(_ i: Int, name: Int, type: UInt32, flags: UInt64, addr: UInt64, offset: Int, size: Int, link: UInt32 = 0,
                  info: UInt32 = 0, align: UInt64 = 1, entsize: UInt64 = 0) {
            let at = Self.shdrsAt + i * Self.shdrSize
            f.write(UInt32(name), at: at); f.write(type, at: at + 4); f.write(flags, at: at + 8); f.write(addr, at: at + 16)
            f.write(UInt64(offset), at: at + 24); f.write(UInt64(size), at: at + 32); f.write(link, at: at + 40)
            f.write(info, at: at + 44); f.write(align, at: at + 48); f.write(entsize, at: at + 56)
        }
        let strtab = Self.symtabAt + symbolCapacity * Self.symSize
        shdr(1, name: 1, type: 8, flags: 6, addr: UInt64(base), offset: Self.symtabAt, size: Int(textEnd - base), align: 16)
        shdr(2, name: 7, type: 2, flags: 0, addr: 0, offset: Self.symtabAt, size: Self.symSize, link: 3, info: 1, align: 8, entsize: 24)
        shdr(3, name: 15, type: 3, flags: 0, addr: 0, offset: strtab, size: 1)
        shdr(4, name: 23, type: 3, flags: 0, addr: 0, offset: Self.shstrtabAt, size: Self.shstrtab.count)
        // Absolute pc_begin: the FDEs mean the same wherever GDB thinks the section is.
        shdr(5, name: 33, type: 1, flags: 0, addr: 0, offset: framesAt, size: framesUsed, align: 8)
        f.bytes.baseAddress!.advanced(by: framesAt).copyMemory(from: BlockFrameTable.cie, byteCount: BlockFrameTable.cie.count)
    }

    private func writeSizes() {
        put(UInt64(textEnd - base), Self.shdrsAt + 1 * Self.shdrSize + 32)
        put(UInt64(owners.count * Self.symSize), Self.shdrsAt + 2 * Self.shdrSize + 32)
        put(UInt64(stringsUsed), Self.shdrsAt + 3 * Self.shdrSize + 32)
        put(UInt64(framesUsed), Self.shdrsAt + 5 * Self.shdrSize + 32)
    }
}

struct GDBSink: ~Copyable {
    private var files: [UInt: BlockSymbolFile] = [:]
    private var debugFiles: [UInt64: GDBFile] = [:]
    private var dirty: Set<UInt> = []
    /// Calls of `__jit_debug_register_code` so far.
    private(set) var announcements = 0

    var fileCount: Int { files.values.filter { $0.file.announced }.count + debugFiles.count }

    mutating func add(_ id: UInt64, _ r: CodeRegistration) {
        if let object = r.debugObject {
            let f = GDBFile(copying: object)
            announcements += f.announce(size: object.count)
            debugFiles[id] = f
            return
        }
        let block = r.address >> UInt(ExecMemGeometry.blockShift)
        var frames: (UInt, [CodeFrame])? = nil
        if case .frames(let list)? = r.unwind { frames = (r.address, list) }
        files[block, default: BlockSymbolFile(base: block << UInt(ExecMemGeometry.blockShift))].add(id, r.symbols, frames: frames)
        dirty.insert(block)
    }

    mutating func remove(_ id: UInt64, _ r: CodeRegistration) {
        if let f = debugFiles.removeValue(forKey: id) {
            announcements += f.withdraw()
            return
        }
        let block = r.address >> UInt(ExecMemGeometry.blockShift)
        guard files[block] != nil else { return }
        files[block]!.remove(id)
        dirty.insert(block)
    }

    mutating func flush() {
        for block in dirty {
            guard let f = files[block] else { continue }
            if f.isEmpty {
                announcements += f.file.withdraw()
                files[block] = nil
            } else {
                announcements += f.file.announce(size: f.size)
            }
        }
        dirty.removeAll(keepingCapacity: true)
    }
}
