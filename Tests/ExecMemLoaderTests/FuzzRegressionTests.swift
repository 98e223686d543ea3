// The inputs the fuzz targets once crashed on (Fuzz/Regressions/<target>/, see Fuzz/README.md), run
// through the same entry points as the targets: each must now give a typed error with the text of
// its `.error` file.

import ExecMem
import ExecMemELF
@_spi(Fuzzing) import ExecMemLoader
import ExecMemTestSupport
import Testing

@Suite struct FuzzRegressionTests {
    /// The fuzz target's allocator: a 64 MiB range, no fallback.
    static let loader: ModuleLoader = {
        var c = ExecMemConfiguration()
        c.rangeSize = 64 << 20
        c.fallbackSize = 0
        return ModuleLoader(allocator: try! ExecMemAllocator(c), moduleLimit: 32 << 20)
    }()

    @Test(arguments: fuzzRegressions("elf"))
    func elf(_ input: FuzzRegression) {
        let error = errorText {
            let file = try ELFFile(bytes: input.bytes, name: input.name)
            for section in file.sections { _ = try file.relocations(for: section) }
        }
        #expect(error?.contains(input.expectedError) == true, "\(input.name): \(error ?? "read without an error")")
    }

    @Test(arguments: fuzzRegressions("archive"))
    func archive(_ input: FuzzRegression) {
        let error = errorText {
            let archive = try Archive(bytes: input.bytes, name: input.name)
            for member in archive.members { _ = try ELFFile(bytes: member.bytes, name: member.name) }
        }
        #expect(error?.contains(input.expectedError) == true, "\(input.name): \(error ?? "read without an error")")
    }

    @Test(arguments: fuzzRegressions("loader"))
    func loader(_ input: FuzzRegression) {
        let error = errorText {
            try Self.loader.linkWithoutRunning(LoaderInput.fuzzInputs(input.bytes), name: input.name)
        }
        #expect(error?.contains(input.expectedError) == true, "\(input.name): \(error ?? "linked without an error")")
    }
}
