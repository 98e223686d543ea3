// The public eBPF conformance suite (313 tests), read from ../shared/bpf-conformance/tests, on both
// engines. Every file must pass.

import ExecMemBPF
import Testing

@Suite struct ConformanceTests {
    @Test(.enabled(if: conformanceDirectory != nil, Comment(rawValue: conformanceMissing)), arguments: BPFEngine.allCases)
    func everyTestPasses(engine: BPFEngine) throws {
        let files = try conformanceFiles()
        #expect(files.count == 313)
        let runner = ConformanceRunner(engine: engine, vm: BPFVM(allocator: try testAllocator()))
        var failures: [String] = []
        for (name, text) in files {
            let outcome = runner.run(file: name, text: text)
            if !outcome.passed { failures.append("\(name): \(outcome.detail)") }
        }
        #expect(failures.isEmpty, "\(failures.count) failures on \(engine):\n\(failures.joined(separator: "\n"))")
    }
}
