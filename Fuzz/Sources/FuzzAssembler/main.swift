// Fuzz target: the eBPF assembler (the conformance suite's dialect) on any text; what it
// assembles is also decoded back from its bytes and disassembled.
import ExecMemBPF

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAssembler(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let source = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let program = try? BPFAssembler.assemble(source) else { return 0 }
    let bytes = encodeProgram(program)
    precondition((try? decodeProgram(bytes)) == program, "assembled program does not decode back to itself")
    var sink = 0
    for insn in program { sink &+= insn.description.utf8.count }
    return sink == -1 ? 1 : 0
}
