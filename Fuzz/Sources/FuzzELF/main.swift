// Fuzz target: the ELF reader. Parses any bytes as an ELF64 file, then walks what the loader and
// the eBPF linker walk afterwards: every section's contents and every REL/RELA section's entries.
import ExecMemELF

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzELF(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let file = try? ELFFile(bytes: bytes, name: "fuzz.o") else { return 0 }
    var sink = file.symbols.count
    for section in file.sections {
        sink &+= file.contents(section).count
        if let relocations = try? file.relocations(for: section) { sink &+= relocations.count }
    }
    for symbol in file.symbols { sink &+= symbol.name.utf8.count }
    _ = file.section(named: ".text")
    return sink == -1 ? 1 : 0
}
