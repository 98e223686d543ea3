// The eBPF client's one error type. Every case says where: the source line, the instruction index,
// the ELF section and offset, the map.

import ExecMem
import ExecMemELF

/// Everything that can go wrong loading or running a program, each case saying where.
public enum BPFError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Bytecode that is not a whole number of instructions, a `.data` file without a program.
    case malformed(String)
    /// An assembly line that does not parse.
    case assembler(line: Int, text: String, reason: String)
    /// The verifier refused the program before any engine saw it.
    case verifier(index: Int, reason: String)
    /// The program did something at run time that cannot complete (out-of-bounds access, unknown
    /// helper reached through callx, call chain too deep).
    case runtime(index: Int, reason: String)
    /// The ELF object is malformed or uses something unsupported.
    case elf(ELFError)
    /// Linking an ELF program failed (unknown relocation, missing function or map).
    case link(section: String, offset: Int, reason: String)
    /// A map operation from the host failed (wrong key size, full, bad definition).
    case map(name: String, reason: String)
    /// The allocator refused the JIT's memory.
    case allocator(ExecMemError)

    /// One line: the case and where.
    public var description: String {
        switch self {
        case let .malformed(what): "malformed program: \(what)"
        case let .assembler(line, text, reason): "assembler, line \(line) '\(text)': \(reason)"
        case let .verifier(index, reason): "verifier: instruction \(index): \(reason)"
        case let .runtime(index, reason): "runtime error at instruction \(index): \(reason)"
        case let .elf(e): e.description
        case let .link(section, offset, reason): "link: \(section)+\(offset): \(reason)"
        case let .map(name, reason): "map '\(name)': \(reason)"
        case let .allocator(e): "allocator: \(e)"
        }
    }
}
