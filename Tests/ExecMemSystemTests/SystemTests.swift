// The system layer: errors name their call, /proc parsers read real and hand-made files, and the
// W^X guard refuses a writable and executable protection before the kernel sees it.

import ExecMemSystem
#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import Testing

@Suite struct SystemTests {
    @Test func errorsNameTheirCall() {
        #expect { try Sys.munmap(address: 1, length: 4096) } throws: { e in
            guard let e = e as? SystemCallError else { return false }
            return e.call == "munmap" && e.errno == .invalidArgument && e.description.contains("munmap failed")
        }
        #expect { try Sys.madvise(address: 0x1000, length: 4096, advice: SysConst.madvCollapse, name: "MADV_COLLAPSE") } throws: { e in
            (e as? SystemCallError)?.call == "madvise(MADV_COLLAPSE)"
        }
        #expect { try Sys.readFile("/nonexistent/execmem") } throws: { e in
            guard let e = e as? SystemCallError else { return false }
            return e.call == "open" && e.errno == .noSuchFileOrDirectory && e.detail == "/nonexistent/execmem"
        }
    }

    @Test func memfdMappingsRoundTrip() throws {
        let fd = try Sys.memfdCreate(name: "execmem-systest", flags: SysConst.mfdCloexec)
        defer { Sys.close(fd: fd) }
        try Sys.ftruncate(fd: fd, length: 8192)
        let w = try Sys.mmap(length: 8192, protection: [.read, .write], flags: SysConst.mapShared, fd: fd)
        let r = try Sys.mmap(length: 8192, protection: [.read], flags: SysConst.mapShared, fd: fd)
        UnsafeMutableRawPointer(bitPattern: w)!.storeBytes(of: 0xDEAD_BEEF, as: UInt32.self)
        #expect(UnsafeRawPointer(bitPattern: r)!.load(as: UInt32.self) == 0xDEAD_BEEF)
        let maps = try ProcMaps.read()
        #expect(maps.first { $0.start == r }?.protection == "r--")
        #expect(maps.first { $0.start == w }?.protection == "rw-")
        #expect(maps.first { $0.start == r }?.path.hasPrefix("/memfd:execmem-systest") == true)
        try Sys.munmap(address: w, length: 8192)
        try Sys.munmap(address: r, length: 8192)
    }

    /// A second mapping of the executable's file (as a symbolizer makes) is not part of its image:
    /// taking it in made the image span up to the mapping, and every range placed "near" it far.
    @Test func theExecutableImageIgnoresOtherMappingsOfItsFile() throws {
        let before = ProcMaps.executableImage(in: try ProcMaps.read())
        let exe = try Sys.readlink("/proc/self/exe")
        let fd = try Sys.open(exe, flags: O_RDONLY)
        defer { Sys.close(fd: fd) }
        let extra = try Sys.mmap(length: 1 << 16, protection: [.read], flags: SysConst.mapPrivate, fd: fd)
        defer { try? Sys.munmap(address: extra, length: 1 << 16) }
        let maps = try ProcMaps.read()
        #expect(maps.contains { $0.start == extra && $0.path == exe }, "the second mapping is there")
        let image = ProcMaps.executableImage(in: maps)
        #expect(image.map(\.start) == before.map(\.start) && !image.isEmpty)
        #expect(!image.contains { $0.start == extra })
        #expect(image.contains { $0.isExecutable })
    }

    @Test func parsesMapsAndSmaps() {
        let maps = ProcMaps.parse("""
        55d0c0a00000-55d0c0a21000 r-xp 00001000 fd:01 123  /usr/bin/execmem
        7f00c0000000-7f00c0200000 rwxp 00000000 00:00 0
        7f00c0200000-7f00c0400000 r-xs 00200000 00:01 1025                       /memfd:execmem-text (deleted)
        """)
        #expect(maps.count == 3)
        #expect(maps[0].path == "/usr/bin/execmem" && maps[0].offset == 0x1000 && maps[0].inode == 123)
        #expect(maps[1].isWritableAndExecutable && maps[1].path.isEmpty)
        #expect(maps[2].path == "/memfd:execmem-text (deleted)" && maps[2].length == 2 << 20)
        let smaps = Smaps.parse("""
        7f00c0200000-7f00c0400000 r-xs 00200000 00:01 1025                       /memfd:execmem-text (deleted)
        Size:               2048 kB
        Rss:                2048 kB
        ShmemPmdMapped:     2048 kB
        VmFlags: rd ex sh mr mw me ms sd
        7f00c0400000-7f00c0600000 r-xp 00000000 00:00 0
        AnonHugePages:      1024 kB
        """)
        #expect(smaps.count == 2)
        #expect(smaps[0]["ShmemPmdMapped"] == 2 << 20 && smaps[0].hugeMappedBytes == 2 << 20)
        #expect(smaps[1].hugeMappedBytes == 1 << 20 && smaps[1].mapping.perms == "r-xp")
    }

    /// The maps line parser as it was written first, field by field over Substrings: the reference
    /// the byte parser must agree with.
    func referenceEntry(_ line: Substring) -> MapsEntry? {
        let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count >= 5 else { return nil }
        let range = fields[0].split(separator: "-")
        guard range.count == 2, let s = UInt(range[0], radix: 16), let e = UInt(range[1], radix: 16),
              let off = UInt(fields[2], radix: 16), let ino = UInt(fields[4]) else { return nil }
        let path = fields.count > 5 ? String(fields[5].drop(while: { $0 == " " })) : ""
        return MapsEntry(start: s, end: e, perms: String(fields[1]), offset: off, inode: ino, path: path)
    }

    @Test func mapsParserAgreesWithTheFieldSplitOnRealAndOddLines() throws {
        let odd = """
        7f00c0200000-7f00c0400000 r-xs 00200000 00:01 1025                       /dev/zero (deleted)
          7f00c0400000-7f00c0600000   rw-p 00000000 00:00 0
        7FFFC0000000-7FFFC0021000 rw-p 0000ABCD 00:00 0    [stack]  two  spaces
        7f00c0000000-7f00c0200000 rwxp 00000000 00:00 0 x
        7f00c0000000 rwxp 00000000 00:00 0
        7f00c0000000-7f00c0200000 rwxp 00000000 00:00
        7f00c0000000-7g00c0200000 rwxp 00000000 00:00 0
        7f00c0000000-7f00c0200000 rwxp 0000000z 00:00 0
        7f00c0000000-7f00c0200000 rwxp 00000000 00:00 12a /x
        10000000000000000-7f00c0200000 rwxp 00000000 00:00 0
        7f00c0000000-7f00c0200000 rwxp 00000000 00:00 99999999999999999999 /x

        not a maps line
        """
        let text = try Sys.readText("/proc/self/maps") + odd
        let reference = text.split(separator: "\n").compactMap { referenceEntry($0) }
        let parsed = ProcMaps.parse(text)
        #expect(parsed == reference)
        #expect(parsed.count >= 6, "the real lines and the four well-formed odd ones")
        #expect(parsed.contains { $0.path == "[stack]  two  spaces" && $0.offset == 0xABCD && $0.start == 0x7FFF_C000_0000 })
    }

    @Test func readsTheRealProcFiles() throws {
        let maps = try ProcMaps.read()
        #expect(!ProcMaps.executableImage(in: maps).isEmpty)
        let smaps = try Smaps.read()
        #expect(smaps.count >= maps.count / 2)
        #expect(smaps.contains { $0["Rss"] > 0 })
    }

    @Test func membarrierQueryAnswers() throws {
        let supported = try Sys.membarrier(command: SysConst.membarrierQuery, name: "QUERY")
        #expect(supported >= 0)
    }
}
