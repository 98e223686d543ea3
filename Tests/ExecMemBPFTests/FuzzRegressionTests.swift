// The inputs the eBPF fuzz targets once crashed on (Fuzz/Regressions/<target>/, see Fuzz/README.md),
// run through the same entry points as the targets: each must now give a typed error with the text
// of its `.error` file.

import ExecMemBPF
import ExecMemTestSupport
import Testing

@Suite struct BPFFuzzRegressionTests {
    @Test(arguments: fuzzRegressions("bpfelf"))
    func bpfELF(_ input: FuzzRegression) {
        let error = errorText {
            _ = try BPFVM().load(elf: input.bytes, name: input.name)
        }
        #expect(error?.contains(input.expectedError) == true, "\(input.name): \(error ?? "loaded without an error")")
    }

    @Test(arguments: fuzzRegressions("assembler"))
    func assembler(_ input: FuzzRegression) {
        let error = errorText {
            _ = try BPFAssembler.assemble(String(decoding: input.bytes, as: UTF8.self))
        }
        #expect(error?.contains(input.expectedError) == true, "\(input.name): \(error ?? "assembled without an error")")
    }

    /// The verifier target's setting: the hostile generator's maps, the differential generator's helper.
    @Test(arguments: fuzzRegressions("verifier"))
    func verifier(_ input: FuzzRegression) throws {
        let vm = BPFVM()
        vm.register(BPFProgramGenerator.helperNumber, BPFProgramGenerator.helper)
        let maps = try BPFHostileGenerator.makeMaps(seed: 0)
        let error = errorText {
            let program = try decodeProgram(Array(input.bytes.prefix(input.bytes.count - input.bytes.count % 8)))
            _ = try vm.load(program, name: input.name, maps: maps)
        }
        #expect(error?.contains(input.expectedError) == true, "\(input.name): \(error ?? "verified without an error")")
    }
}
