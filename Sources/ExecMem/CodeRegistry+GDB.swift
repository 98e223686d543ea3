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

    let base: UInt
    private(set) var file: GDBFile
    private var symbolCapacity: Int
    private var stringCapacity: Int
    /// Symbols in the file, index 0 the null symbol; `owners[i]` is symbol i's registration.
    private var owners: [UInt64] = [0]
    private var stringsUsed = 1
    private var garbage = 0
    private var slots: [UInt64: [Int]] = [:]
    private var symbols: [UInt64: [CodeSymbol]] = [:]
    private var textEnd: UInt
    private var frameCapacity: Int
    /// Bytes of .eh_frame in use (the CIE first); `frameDead` of them are emptied FDEs.
    private var framesUsed = BlockFrameTable.cie.count
    private var frameDead = 0
    private var frames: [UInt64: (UInt, [CodeFrame])] = [:]
    private var fdes: [UInt64: [Int]] = [:]

    var isEmpty: Bool { symbols.isEmpty }
    /// .eh_frame's offset, 8-aligned as its section header says (and as its words are read).
    private var framesAt: Int { (Self.symtabAt + symbolCapacity * Self.symSize + stringCapacity + 7) & ~7 }
    var size: Int { framesAt + frameCapacity }

    init(base: UInt, symbols: Int = 64, strings: Int = 2048, frames: Int = 2048) {
        self.base = base
        symbolCapacity = max(symbols, 16)
        stringCapacity = max(strings, 256)
        frameCapacity = max(frames, 256)
        textEnd = base + UInt(ExecMemGeometry.blockSize)
        file = GDBFile(capacity: ((Self.symtabAt + symbolCapacity * Self.symSize + stringCapacity + 7) & ~7) + frameCapacity)
        writeHeaders()
    }

    mutating func add(_ id: UInt64, _ list: [CodeSymbol], frames f: (UInt, [CodeFrame])? = nil) {
        let need = list.reduce(0) { $0 + $1.name.utf8.count + 1 }
        let frameBytes = f?.1.reduce(0) { $0 + BlockFrameTable.fdeSize($1) } ?? 0
        if owners.count + list.count > symbolCapacity || stringsUsed + need > stringCapacity || framesUsed + frameBytes > frameCapacity {
            rebuild(extraSymbols: list.count, extraStrings: need, extraFrames: frameBytes)
        }
        if let f, !f.1.isEmpty {
            frames[id] = f
            let region = UnsafeMutableRawBufferPointer(rebasing: file.bytes[framesAt...])
            var mine: [Int] = []
            for frame in f.1 {
                mine.append(framesUsed)
                framesUsed += BlockFrameTable.writeFDE(frame, base: f.0, into: region, at: framesUsed, cie: 0)
            }
            fdes[id] = mine
        }
        symbols[id] = list
        var mine: [Int] = []
        for s in list {
            mine.append(owners.count)
            writeSymbol(s, index: owners.count)
            owners.append(id)
            textEnd = max(textEnd, s.address + UInt(max(s.size, 1)))
        }
        slots[id] = mine
        writeSizes()
    }

    mutating func remove(_ id: UInt64) {
        guard let mine = slots.removeValue(forKey: id), let list = symbols.removeValue(forKey: id) else { return }
        garbage += list.reduce(0) { $0 + $1.name.utf8.count + 1 }
        frames[id] = nil
        if let offsets = fdes.removeValue(forKey: id) {
            let region = UnsafeMutableRawBufferPointer(rebasing: file.bytes[framesAt...])
            for o in offsets { frameDead += BlockFrameTable.clearFDE(in: region, at: o) }
        }
        for i in mine.sorted(by: >) {
            let last = owners.count - 1
            if i != last {
                let from = Self.symtabAt + last * Self.symSize, to = Self.symtabAt + i * Self.symSize
                (file.bytes.baseAddress! + to).copyMemory(from: file.bytes.baseAddress! + from, byteCount: Self.symSize)
                let moved = owners[last]
                owners[i] = moved
                if var m = slots[moved], let k = m.firstIndex(of: last) { m[k] = i; slots[moved] = m }
            }
            owners.removeLast()
        }
        if (garbage > 4096 && garbage * 2 > stringsUsed) || (frameDead > 4096 && frameDead * 2 > framesUsed) {
            rebuild(extraSymbols: 0, extraStrings: 0, extraFrames: 0)
        }
        writeSizes()
    }

    /// Lays the file out again, with room for what is about to be added (capacity doubles).
    private mutating func rebuild(extraSymbols: Int, extraStrings: Int, extraFrames: Int) {
        let live = symbols, liveFrames = frames
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
        owners = [0]; stringsUsed = 1; garbage = 0; slots = [:]; symbols = [:]
        framesUsed = BlockFrameTable.cie.count; frameDead = 0; frames = [:]; fdes = [:]
        writeHeaders()
        for id in live.keys.sorted() { add(id, live[id]!, frames: liveFrames[id]) }
        // GDB keeps reading the old file until the next announcement replaces it.
        if old.announced { _ = old.withdraw() }
    }

    private mutating func writeSymbol(_ s: CodeSymbol, index: Int) {
        let name = Array(s.name.utf8)
        let nameAt = stringsUsed
        let strtab = Self.symtabAt + symbolCapacity * Self.symSize
        file.bytes.baseAddress!.advanced(by: strtab + nameAt).copyMemory(from: name, byteCount: name.count)
        file.bytes.storeBytes(of: 0, toByteOffset: strtab + nameAt + name.count, as: UInt8.self)
        stringsUsed += name.count + 1
        let at = Self.symtabAt + index * Self.symSize
        file.write(UInt32(nameAt), at: at)
        file.write(UInt8(0x12), at: at + 4)  // STB_GLOBAL, STT_FUNC
        file.write(UInt8(0), at: at + 5)
        file.write(UInt16(1), at: at + 6)  // .text
        file.write(UInt64(s.address), at: at + 8)
        file.write(UInt64(max(s.size, 1)), at: at + 16)
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
        file.write(UInt64(textEnd - base), at: Self.shdrsAt + 1 * Self.shdrSize + 32)
        file.write(UInt64(owners.count * Self.symSize), at: Self.shdrsAt + 2 * Self.shdrSize + 32)
        file.write(UInt64(stringsUsed), at: Self.shdrsAt + 3 * Self.shdrSize + 32)
        file.write(UInt64(framesUsed), at: Self.shdrsAt + 5 * Self.shdrSize + 32)
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
