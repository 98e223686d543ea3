// Fuzz target: the eBPF verifier on raw bytecode (any bytes, truncated to whole instructions),
// with the maps the hostile generator's programs name (lddw map[0..2]) and the differential
// generator's helper 7 registered. Loading verifies only: nothing is compiled and no program runs.
import ExecMemBPF

let vm: BPFVM = {
    let vm = BPFVM()
    vm.register(BPFProgramGenerator.helperNumber, BPFProgramGenerator.helper)
    return vm
}()
let maps = try! BPFHostileGenerator.makeMaps(seed: 0)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVerifier(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size - size % 8))
    guard let program = try? decodeProgram(bytes) else { return 0 }
    _ = try? vm.load(program, name: "fuzz", maps: maps)
    return 0
}
