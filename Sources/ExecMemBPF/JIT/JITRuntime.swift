// How a compiled program runs: the entry point and the code's lifetime (freed, and trap-filled by
// the allocator, with the program).

import ExecMem

typealias JITEntry = @convention(c) (UInt64, UInt64, UnsafeMutablePointer<UInt64>) -> UInt64

/// Compiled code in a packed BPF-kind text allocation.
final class JITCode: @unchecked Sendable {
    let allocator: ExecMemAllocator
    let allocation: Allocation

    init(allocator: ExecMemAllocator, allocation: Allocation) {
        self.allocator = allocator
        self.allocation = allocation
    }

    deinit { try? allocator.free(allocation) }

    func run(_ program: BPFProgram, memory: UnsafeMutableRawBufferPointer?, budget: UInt64, at address: UInt? = nil) throws(BPFError) -> UInt64 {
        let run = RunContext.acquire()
        defer { run.end() }
        guard run.begin(program, memory: memory, budget: budget) else { throw run.error()! }
        let entry = unsafeBitCast(UnsafeRawPointer(bitPattern: address ?? allocation.address)!, to: JITEntry.self)
        let r1 = UInt64(UInt(bitPattern: memory?.baseAddress)), r2 = UInt64(memory?.count ?? 0)
        let result = run.asCurrent { entry(r1, r2, run.block) }
        if let e = run.error() { throw e }
        return result
    }
}
