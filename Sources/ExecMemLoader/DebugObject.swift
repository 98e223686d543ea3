// The file GDB reads for a loaded object compiled with -g: the object itself, still ET_REL, with each
// loaded section's sh_addr set to where the section was loaded. GDB's JIT interface takes every
// allocated section's sh_addr as its absolute address (jit.c), places the symbols there, and relocates
// the debug sections itself (symfile_relocate_debug_section, through BFD) against those addresses: so
// DWARF's line table and ranges name load addresses without the loader relocating a byte of them.
// (Relocating the debug sections here and writing ET_EXEC works too, but is more code for the same.)
// Sections that were not loaded (a COMDAT group's later copy) lose SHF_ALLOC, so GDB places nothing
// at address 0 for them; thread-local sections keep their file addresses (GDB finds those through
// the thread library, which knows nothing of the loader's TLS arena).
//
// Checked against GDB 13.1: `break` by name resolves in the file, and a backtrace inside it shows
// `function (args) at file.c:line` (Tests/ExecMemLoaderTests/ObservabilityTests.swift).

import ExecMemELF

enum DebugObject {
    /// Whether GDB would find DWARF in the object (a `.debug_info` section with bytes).
    static func hasDWARF(_ elf: ELFFile) -> Bool {
        elf.sections.contains { $0.name == ".debug_info" && $0.hasFileBytes && $0.size > 0 }
    }

    /// A copy of `elf`'s file with each section that `address` places at its load address; nil when
    /// the object has no DWARF or its section headers cannot be read back (ELFFile read them already).
    static func make(_ elf: ELFFile, address: (ELFSection) -> UInt?) -> [UInt8]? {
        guard hasDWARF(elf) else { return nil }
        let reader = ELFReader(elf.bytes, file: elf.name)
        var out = elf.bytes
        do throws(ELFError) {
            let shoff = try reader.le(0x28, as: UInt64.self, "e_shoff")
            let shentsize = try reader.le(0x3A, as: UInt16.self, "e_shentsize")
            guard shentsize == 64, let table = Int(exactly: shoff) else { return nil }
            for s in elf.sections where s.isAllocated {
                let (header, overflow) = table.addingReportingOverflow(s.index &* 64)
                guard !overflow, header >= 0, header <= out.count - 64 else { return nil }
                if let a = address(s) {
                    put(UInt64(a), at: header + 16, in: &out)  // sh_addr
                } else if s.flags & ELF.SHF_TLS == 0 {
                    put(s.flags & ~ELF.SHF_ALLOC, at: header + 8, in: &out)  // sh_flags
                }
            }
        } catch {
            return nil
        }
        return out
    }

    private static func put(_ v: UInt64, at offset: Int, in bytes: inout [UInt8]) {
        for i in 0..<8 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}
