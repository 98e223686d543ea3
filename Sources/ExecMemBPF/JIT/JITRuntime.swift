// How a compiled program runs: the entry point and the code's lifetime (freed, and trap-filled by
// the allocator, with the program).

import ExecMem

typealias JITEntry = @convention(c) (UInt64, UInt64, UnsafeMutablePointer<UInt64>) -> UInt64

/// Compiled code in a packed BPF-kind text allocation.
final class JITCode: @unchecked Sendable {
    let allocator: ExecMemAllocator
    let allocation: Allocation
    let entry: JITEntry

    init(allocator: ExecMemAllocator, allocation: Allocation) {
        self.allocator = allocator
        self.allocation = allocation
        entry = unsafeBitCast(UnsafeRawPointer(bitPattern: allocation.address)!, to: JITEntry.self)
    }

    deinit { try? allocator.free(allocation) }

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
