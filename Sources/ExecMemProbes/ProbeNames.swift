// Names of hooked and probed functions, for the code registry's names of hook stubs
// (`execmem_hook_<function>`), probe slots (`execmem_probe_<function>+<offset>`) and patch stubs
// (`execmem_patch_<function>`).
//
// A function is named by the registry when it is code ExecMem holds (a loaded module's function),
// else by the symbol table of the file mapped there (the host executable's .symtab, which dladdr
// does not read: Swift executables export no dynamic symbols; a shared library's .symtab or
// .dynsym), else by its address. Files are mapped read-only once and kept: a lookup is one pass over
// the symbol entries with no allocation but the name found.

import CExecMemLoaderRuntime
import ExecMem
import Glibc
import Synchronization

enum ProbeNames {
    /// The function at `address` (its symbol, `symbol+0x1c` inside one, or `0x...`).
    static func function(_ address: UInt) -> String {
        if let l = CodeRegistry.shared.symbolize(address) {
            return l.offset == 0 ? l.symbol : l.symbol + "+0x" + String(l.offset, radix: 16)
        }
        if let s = hostSymbol(address) { return s.offset == 0 ? s.name : s.name + "+0x" + String(s.offset, radix: 16) }
        return "0x" + String(address, radix: 16)
    }

    /// `execmem_probe_<function>+0x<offset>` for a probe at `address` of the function starting at `function`.
    static func probe(_ address: UInt, function: UInt) -> String {
        "execmem_probe_" + Self.function(function) + "+0x" + String(address - function, radix: 16)
    }

    // MARK: - Symbol tables of mapped files

    /// A file mapped read-only, as found by path.
    struct MappedFile: @unchecked Sendable {
        let base: UnsafeRawPointer
        let size: Int
    }

    static let files = Mutex<[String: MappedFile?]>([:])

    /// The function symbol of the file mapped at `address` that covers it.
    static func hostSymbol(_ address: UInt) -> (name: String, offset: Int)? {
        var path: UnsafePointer<CChar>? = nil
        var loadBase: UnsafeMutableRawPointer? = nil
        guard cem_dladdr(UnsafeRawPointer(bitPattern: address), &path, &loadBase) != 0, let path, let loadBase else { return nil }
        let p = String(cString: path)
        let file = files.withLock { cache -> MappedFile? in
            if let f = cache[p] { return f }
            let f = map(p)
            cache[p] = f
            return f
        }
        guard let file else { return nil }
        return lookup(file, address: address, loadBase: UInt(bitPattern: loadBase))
    }

    static func map(_ path: String) -> MappedFile? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 64 else { return nil }
        guard let m = mmap(nil, Int(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else { return nil }
        return MappedFile(base: UnsafeRawPointer(m), size: Int(st.st_size))
    }

    /// Every offset, size and index is checked against the file before it is read.
    static func lookup(_ f: MappedFile, address: UInt, loadBase: UInt) -> (name: String, offset: Int)? {
        let b = UnsafeRawBufferPointer(start: f.base, count: f.size)
        func u16(_ o: Int) -> Int? { o >= 0 && o + 2 <= b.count ? Int(b.loadUnaligned(fromByteOffset: o, as: UInt16.self)) : nil }
        func u32(_ o: Int) -> Int? { o >= 0 && o + 4 <= b.count ? Int(b.loadUnaligned(fromByteOffset: o, as: UInt32.self)) : nil }
        func u64(_ o: Int) -> UInt? { o >= 0 && o + 8 <= b.count ? UInt(b.loadUnaligned(fromByteOffset: o, as: UInt64.self)) : nil }
        guard b.count >= 64, b[0] == 0x7F, b[1] == 0x45, b[2] == 0x4C, b[3] == 0x46, b[4] == 2, b[5] == 1 else { return nil }
        guard let type = u16(16), let shoff = u64(0x28), let shentsize = u16(0x3A), let shnum = u16(0x3C),
              shentsize == 64, shoff < UInt(b.count), Int(shoff) + shnum * 64 <= b.count else { return nil }
        // ET_EXEC symbols hold run addresses; ET_DYN ones are offsets from the load base.
        let target = type == 2 ? address : address &- loadBase
        for wanted in [2, 11] {  // SHT_SYMTAB, then SHT_DYNSYM
            for s in 0..<shnum {
                let h = Int(shoff) + s * 64
                guard u32(h + 4) == wanted, let off = u64(h + 0x18), let size = u64(h + 0x20), let link = u32(h + 0x28),
                      off <= UInt(b.count), size <= UInt(b.count) - off, link < shnum else { continue }
                let sh = Int(shoff) + link * 64
                guard let stroff = u64(sh + 0x18), let strsize = u64(sh + 0x20), stroff <= UInt(b.count), strsize <= UInt(b.count) - stroff else { continue }
                var e = Int(off)
                while e + 24 <= Int(off + size) {
                    defer { e += 24 }
                    guard b[e + 4] & 0xF == 2, let value = u64(e + 8), let length = u64(e + 16), value != 0,
                          value <= target, target - value < max(length, 1), let name = u32(e), UInt(name) < strsize else { continue }
                    let start = Int(stroff) + name
                    var end = start
                    while end < Int(stroff + strsize), b[end] != 0 { end += 1 }
                    guard end > start else { continue }
                    return (String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<end]), as: UTF8.self), Int(target - value))
                }
            }
        }
        return nil
    }
}
