// Fuzz target: the `ar` archive reader (GNU and BSD symbol tables and long names), then the ELF
// reader on every member, as the module loader does with the members it pulls in.
import ExecMemELF

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzArchive(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let archive = try? Archive(bytes: bytes, name: "fuzz.a") else { return 0 }
    var sink = archive.symbolIndex.count
    for (_, index) in archive.symbolIndex { precondition(archive.members.indices.contains(index), "symbol index out of range") }
    for member in archive.members {
        sink &+= member.name.utf8.count
        if let file = try? ELFFile(bytes: member.bytes, name: member.name) {
            for section in file.sections { if let r = try? file.relocations(for: section) { sink &+= r.count } }
        }
    }
    return sink == -1 ? 1 : 0
}
