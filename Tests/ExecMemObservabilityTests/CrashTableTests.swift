// The registry's signal-safe table, read as the crash handler reads it: registered code is named
// with its offset and owner, the innermost range wins, and unregistering (or freeing the memory)
// empties the slot so the name disappears.

import CExecMemDebug
import ExecMem
import ExecMemTestSupport
import Testing

@Suite(.serialized)
struct CrashTableTests {
    /// What `cem_crash_table_lookup` says about `address`: `name+0xoff [owner]`, or nil.
    static func lookup(_ address: UInt) -> String? {
        var name = [CChar](repeating: 0, count: 128), owner = [CChar](repeating: 0, count: 48)
        let offset = cem_crash_table_lookup(address, &name, name.count, &owner, owner.count)
        guard offset >= 0 else { return nil }
        let n = String(cString: name), o = String(cString: owner)
        return n + (offset == 0 ? "" : "+0x" + String(offset, radix: 16)) + (o.isEmpty ? "" : " [\(o)]")
    }

    @Test func registeredCodeIsNamedAndForgotten() throws {
        CodeRegistry.shared.enable(.crashTable)
        let mem = try testAllocator()
        let a = try mem.allocate(.moduleText, size: 256)
        let h = CodeRegistry.shared.register(CodeRegistration(
            name: "mod", kind: .moduleFunction, address: a.address, size: 256, owner: "mod",
            symbols: [CodeSymbol(name: "first", address: a.address, size: 64), CodeSymbol(name: "second", address: a.address + 64, size: 100)]))
        #expect(Self.lookup(a.address) == "first [mod]")
        #expect(Self.lookup(a.address + 0x47) == "second+0x7 [mod]")
        // Between and after the functions: the registration itself.
        #expect(Self.lookup(a.address + 200) == "mod+0xc8 [mod]")
        #expect(Self.lookup(a.address + 256) == nil)
        // The same answer as the registry's own lookup.
        #expect(CodeRegistry.shared.symbolize(a.address + 0x47)?.description == "second+0x7 [mod]")
        CodeRegistry.shared.unregister(h)
        #expect(Self.lookup(a.address + 0x47) == nil)

        // A slot freed is reused; freeing the memory drops what is still registered in it.
        let b = try mem.allocate(.bpf, size: 64)
        CodeRegistry.shared.register(CodeRegistration(name: "bpf_prog_0123456789abcdef_x", kind: .bpfProgram, address: b.address, size: 64))
        #expect(Self.lookup(b.address + 1) == "bpf_prog_0123456789abcdef_x+0x1")
        try mem.free(b)
        #expect(Self.lookup(b.address + 1) == nil)
        try mem.free(a)
    }

    @Test func longNamesAreCut() throws {
        CodeRegistry.shared.enable(.crashTable)
        let mem = try testAllocator()
        let a = try mem.allocate(.bpf, size: 64)
        let long = String(repeating: "n", count: 300)
        let h = CodeRegistry.shared.register(CodeRegistration(name: long, kind: .other, address: a.address, size: 64, owner: String(repeating: "o", count: 100)))
        defer { CodeRegistry.shared.unregister(h) }
        let r = try #require(Self.lookup(a.address + 2))
        #expect(r == String(repeating: "n", count: 127) + "+0x2 [" + String(repeating: "o", count: 47) + "]")
    }
}
