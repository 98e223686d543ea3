// Every option of the command is validated: values that used to trap (`--scale 1e30`,
// `--functions 100000000`) are usage errors naming the option, with exit status 64.

import ExecMemTestSupport
import Foundation
import Testing

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: execmemBinary), "needs the execmem binary"))
struct CommandLineTests {
    @Test(arguments: [
        (["bench", "--scale", "1e30"], "--scale"), (["bench", "--scale", "nan"], "--scale"), (["bench", "--scale", "-1"], "--scale"),
        (["demo", "--functions", "100000000"], "--functions"), (["demo", "--bpf-programs", "-1"], "--bpf-programs"),
        (["sim", "--range-size", "99999999999999G"], "--range-size"), (["sim", "--modules", "100000000"], "--modules"),
        (["bpf", "fuzz", "--length", "0"], "--length"), (["bpf", "fuzz", "--count", "-5"], "--count"),
        (["bpf", "run", "x.s", "--times", "-1"], "--times"), (["bpf", "verify", "x.s", "--times", "100000000000"], "--times"),
    ])
    func badValuesAreUsageErrors(_ c: (arguments: [String], option: String)) throws {
        let r = try run(execmemBinary, c.arguments, check: false)
        #expect(r.status == 64, "\(c.arguments): status \(r.status), \(r.errors)")
        #expect(r.errors.contains(c.option), "\(c.arguments): \(r.errors)")
    }
}
