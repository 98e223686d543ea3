// C programs compiled at test time, loaded by `execmem load`, give the same output and exit status as
// the same objects linked natively: clang and gcc, -O0 to -O3, PIE (the distribution's default), PIC
// and non-PIC, with and without -ffunction-sections/-fdata-sections; and the distribution's static
// zlib with a driver.

import ExecMemTestSupport
import Foundation
import Testing

@Suite struct ProgramTests {
    static let variants: [[String]] = [
        ["-O0"], ["-O1"], ["-O2"], ["-O3"], ["-O2", "-fPIC"], ["-O2", "-fno-pic"],
        ["-O2", "-ffunction-sections", "-fdata-sections"], ["-O0", "-fPIE", "-ffunction-sections"],
    ]

    @Test(.enabled(if: !compilers.isEmpty, "needs clang or gcc"), arguments: variants)
    func twoObjectProgramMatchesNativeLink(flags: [String]) throws {
        let dir = try scratch()
        for cc in compilers {
            let main = try compile(cc, "main", in: dir, flags: flags)
            let lib = try compile(cc, "lib", in: dir, flags: flags)
            let native = "\(dir)/native-\((cc as NSString).lastPathComponent)"
            try run(cc, [main, lib, "-o", native] + (flags.contains("-fno-pic") ? ["-no-pie"] : []))
            let expected = try run(native, ["one", "two"], check: false)
            let loaded = try run(execmemBinary, ["load", main, lib, "--", "one", "two"], check: false)
            #expect(loaded.errors.isEmpty, "\(cc) \(flags): \(loaded.errors)")
            #expect(loaded.status == expected.status, "\(cc) \(flags)")
            // argv[0] is the first file; everything else is the same.
            let normalize = { (s: String) in s.replacingOccurrences(of: main, with: "PROGRAM").replacingOccurrences(of: native, with: "PROGRAM") }
            #expect(normalize(loaded.output) == normalize(expected.output), "\(cc) \(flags)")
            #expect(loaded.output.contains("destructor: counter"), "destructors ran and stdout was flushed into a pipe")
        }
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/usr/lib/x86_64-linux-gnu/libz.a") && !compilers.isEmpty,
                   "needs the distribution's static zlib (zlib1g-dev)"))
    func distributionZlibArchiveMatchesNativeLink() throws {
        let dir = try scratch()
        let archive = "/usr/lib/x86_64-linux-gnu/libz.a"
        for cc in compilers {
            let driver = try compile(cc, "zdriver", in: dir, flags: ["-O2"])
            let native = "\(dir)/zdriver-native"
            try run(cc, [driver, archive, "-o", native])
            let expected = try run(native, [])
            let loaded = try run(execmemBinary, ["load", driver, archive], check: false)
            #expect(loaded.status == 0 && loaded.errors.isEmpty, "\(loaded.errors)")
            #expect(loaded.output == expected.output)
            #expect(expected.output.contains("round trip ok"))
        }
    }

    @Test(.enabled(if: !compilers.isEmpty, "needs a C compiler"))
    func mapAndStatsGoToStandardError() throws {
        let dir = try scratch()
        let main = try compile(compilers[0], "main", in: dir, flags: ["-O1"])
        let lib = try compile(compilers[0], "lib", in: dir, flags: ["-O1"])
        let r = try run(execmemBinary, ["load", main, lib, "--map", "--stats"], check: false)
        #expect(r.errors.contains("sections by type") && r.errors.contains(".text") && r.errors.contains("rodata"))
        #expect(r.errors.contains("allocator at 0x"))
        #expect(!r.output.contains("sections by type"), "the program's own output stays clean")
        let missing = try run(execmemBinary, ["load", main], check: false)
        #expect(missing.status != 0 && missing.errors.contains("undefined symbol 'shared_counter'"))
    }
}
