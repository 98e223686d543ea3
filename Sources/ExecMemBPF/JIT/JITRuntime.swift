// How a compiled program runs: the entry point and the code's lifetime (named in the code registry
// while it is runnable, then freed, and trap-filled by the allocator, with the program); and the
// names it is known by, as Linux names BPF programs in kallsyms, perf and bpftool.

import ExecMem

typealias JITEntry = @convention(c) (UInt64, UInt64, UnsafeMutablePointer<UInt64>) -> UInt64

/// Compiled code in a packed BPF-kind text allocation.
final class JITCode: @unchecked Sendable {
    let allocator: ExecMemAllocator
    let allocation: Allocation
    let entry: JITEntry
    /// The entry stub, the program, the out-of-line paths (JIT+Frames.swift), registered until deinit.
    let handles: [CodeHandle]

    init(allocator: ExecMemAllocator, allocation: Allocation, registrations: [CodeRegistration]) {
        self.allocator = allocator
        self.allocation = allocation
        entry = unsafeBitCast(UnsafeRawPointer(bitPattern: allocation.address)!, to: JITEntry.self)
        handles = CodeRegistry.shared.batch { registrations.map { CodeRegistry.shared.register($0) } }
    }

    deinit {
        // Unnamed before the memory can be reused.
        CodeRegistry.shared.batch { for h in handles { CodeRegistry.shared.unregister(h) } }
        try? allocator.free(allocation)
    }

    func run(_ program: BPFProgram, memory: UnsafeMutableRawBufferPointer?, budget: UInt64, at address: UInt? = nil) throws(BPFError) -> UInt64 {
        let entry = address.map { unsafeBitCast(UnsafeRawPointer(bitPattern: $0)!, to: JITEntry.self) } ?? self.entry
        return try RunContext.withContext { run throws(BPFError) in
            defer { run.end() }
            guard run.begin(program, memory: memory, budget: budget) else { throw run.error()! }
            let r1 = UInt64(UInt(bitPattern: memory?.baseAddress)), r2 = UInt64(memory?.count ?? 0)
            let result = run.asCurrent { entry(r1, r2, run.block) }
            if run.get(.fault) != 0, let e = run.error() { throw e }
            return result
        }
    }
}

// MARK: - Names

extension BPFProgram {
    /// Linux's program tag (`bpf_prog_calc_tag`): the first 8 bytes of the SHA-1 of the instructions
    /// as loaded, with the immediates of map references (`lddw` src 1 and 2, both halves) zeroed, as
    /// 16 lowercase hex digits. The same program has the same tag here and in `bpftool prog`.
    public var tag: String { BPFNames.tag(instructions[...]) }

    /// The name perf, gdb and backtraces show for the program's JIT code, `bpf_prog_<tag>_<name>`
    /// (Linux's kallsyms name): the load name keeps `[A-Za-z0-9_.]` and at most 15 characters, and
    /// `_<name>` is left out when nothing is left.
    public var symbolName: String { BPFNames(self).program }
}

/// The names of one compilation's pieces.
struct BPFNames {
    let tag: String
    let suffix: String
    let program: String
    let functions: [Int]
    let instructions: [BPFInstruction]

    init(_ p: BPFProgram) {
        tag = Self.tag(p.instructions[...])
        let kept = p.name.unicodeScalars.filter { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_" || $0 == ".") }
        let name = String(String.UnicodeScalarView(kept.prefix(15)))
        suffix = name.isEmpty ? "" : "_" + name
        program = "bpf_prog_" + tag + suffix
        functions = p.functions
        instructions = p.instructions
    }

    /// Subprogram `f` (a bpf-to-bpf call target) as Linux names it without BTF: its own
    /// instructions' tag and `F`.
    func subprogram(_ f: Int) -> String {
        let end = f + 1 < functions.count ? functions[f + 1] : instructions.count
        return "bpf_prog_" + Self.tag(instructions[functions[f]..<end]) + "_F"
    }

    var entry: String { "bpf_jit_entry_" + tag + suffix }
    var fault: String { "bpf_jit_fault_" + tag + suffix }
    var exit: String { "bpf_jit_exit_" + tag + suffix }

    /// `bpf_prog_calc_tag` over `code`.
    static func tag(_ code: ArraySlice<BPFInstruction>) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(code.count * 8)
        var wasMapLoad = false
        for var insn in code {
            if !wasMapLoad && insn.opcode == BPF.LDDW && (insn.src == 1 || insn.src == 2) {
                wasMapLoad = true
                insn.imm = 0
            } else if wasMapLoad && insn.opcode == 0 && insn.dst == 0 && insn.src == 0 && insn.offset == 0 {
                wasMapLoad = false
                insn.imm = 0
            } else {
                wasMapLoad = false
            }
            bytes += insn.bytes
        }
        return SHA1.hex(SHA1.digest(bytes).prefix(8))
    }
}
