// The module loader's one error type: each case names the object, section, offset, symbol or
// relocation type it is about.

import ExecMem
import ExecMemELF

public enum LoaderError: Error, CustomStringConvertible, Sendable, Equatable {
    case io(path: String, reason: String)
    case elf(ELFError)
    case unsupportedRelocation(object: String, section: String, offset: UInt64, type: UInt32)
    case undefinedSymbol(name: String, object: String)
    case duplicateDefinition(name: String, first: String, second: String)
    case relocationOverflow(object: String, section: String, offset: UInt64, type: UInt32, symbol: String, value: Int64)
    case badInput(object: String, reason: String)
    case placement(String)
    case tlsExhausted(needed: Int, available: Int)
    case noEntry(symbol: String, module: String)
    case allocator(ExecMemError)

    public var description: String {
        switch self {
        case let .io(path, reason): "\(path): \(reason)"
        case let .elf(e): e.description
        case let .unsupportedRelocation(o, s, off, t): "\(o): \(s)+0x\(String(off, radix: 16)): unsupported relocation type \(t) (\(Relocation.name(t)))"
        case let .undefinedSymbol(n, o): "\(o): undefined symbol '\(n)'"
        case let .duplicateDefinition(n, a, b): "duplicate definition of '\(n)' in \(a) and \(b)"
        case let .relocationOverflow(o, s, off, t, sym, v):
            "\(o): \(s)+0x\(String(off, radix: 16)): \(Relocation.name(t)) against '\(sym)' overflows (value \(v))"
        case let .badInput(o, reason): "\(o): \(reason)"
        case let .placement(what): "placement: \(what)"
        case let .tlsExhausted(n, a): "thread-local storage: the module needs \(n) bytes, \(a) are left"
        case let .noEntry(s, m): "\(m): no function named '\(s)'"
        case let .allocator(e): "allocator: \(e)"
        }
    }
}

/// x86-64 relocation types (System V psABI).
public enum Relocation {
    public static let R_64: UInt32 = 1, PC32: UInt32 = 2, GOT32: UInt32 = 3, PLT32: UInt32 = 4
    public static let GOTPCREL: UInt32 = 9, R_32: UInt32 = 10, R_32S: UInt32 = 11
    public static let DTPOFF64: UInt32 = 17, TPOFF64: UInt32 = 18, TLSGD: UInt32 = 19, TLSLD: UInt32 = 20
    public static let DTPOFF32: UInt32 = 21, GOTTPOFF: UInt32 = 22, TPOFF32: UInt32 = 23, PC64: UInt32 = 24
    public static let GOTOFF64: UInt32 = 25, GOTPC32: UInt32 = 26, GOTPC64: UInt32 = 29
    public static let GOTPCRELX: UInt32 = 41, REX_GOTPCRELX: UInt32 = 42

    public static func name(_ t: UInt32) -> String {
        let names: [UInt32: String] = [0: "R_X86_64_NONE", 1: "R_X86_64_64", 2: "R_X86_64_PC32", 3: "R_X86_64_GOT32", 4: "R_X86_64_PLT32",
                                       5: "R_X86_64_COPY", 6: "R_X86_64_GLOB_DAT", 7: "R_X86_64_JUMP_SLOT", 8: "R_X86_64_RELATIVE",
                                       9: "R_X86_64_GOTPCREL", 10: "R_X86_64_32", 11: "R_X86_64_32S", 12: "R_X86_64_16", 13: "R_X86_64_PC16",
                                       14: "R_X86_64_8", 15: "R_X86_64_PC8", 16: "R_X86_64_DTPMOD64", 17: "R_X86_64_DTPOFF64",
                                       18: "R_X86_64_TPOFF64", 19: "R_X86_64_TLSGD", 20: "R_X86_64_TLSLD", 21: "R_X86_64_DTPOFF32",
                                       22: "R_X86_64_GOTTPOFF", 23: "R_X86_64_TPOFF32", 24: "R_X86_64_PC64", 25: "R_X86_64_GOTOFF64",
                                       26: "R_X86_64_GOTPC32", 29: "R_X86_64_GOTPC64", 41: "R_X86_64_GOTPCRELX", 42: "R_X86_64_REX_GOTPCRELX"]
        return names[t] ?? "type \(t)"
    }
}
