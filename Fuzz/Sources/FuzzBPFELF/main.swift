// Fuzz target: the eBPF ELF loader (sections, maps, data maps, relocations, local calls) and the
// verifier behind it. Loading verifies only: nothing is compiled and no program runs.
import ExecMemBPF

let vm = BPFVM()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBPFELF(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? vm.load(elf: bytes, name: "fuzz.bpf.o")
    return 0
}
