// What JIT code calls back into, and how a compiled program runs: the entry point, the out-of-line
// bounds check for map regions, the callx dispatcher, and the code's lifetime (freed, and trap-filled
// by the allocator, with the program).

import ExecMem

typealias JITEntry = @convention(c) (UInt64, UInt64, UnsafeMutablePointer<UInt64>) -> UInt64

/// The slow bounds check: `info` = instruction << 8 | size << 1 | write. Returns 1 if allowed; else
/// records the fault and returns 0.
let jitSlowCheck: @convention(c) (UnsafeMutablePointer<UInt64>, UInt64, UInt64) -> UInt64 = { block, address, info in
    let run = Unmanaged<RunContext>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(block[RunContext.Field.selfPointer.rawValue]))!).takeUnretainedValue()
    let size = Int(info >> 1 & 0x7F), write = info & 1 == 1
    if run.accessible(address, size, write: write) { return 1 }
    run.fault(.outOfBounds, index: Int(info >> 8), address: address, size: size)
    return 0
}

/// `callx`: the helper whose number is in the register (r9 here), called with r1-r5.
let jitCallX: @convention(c) (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) -> UInt64 = { a, b, c, d, e, number in
    guard let run = RunContext.current else { return 0 }
    guard let n = Int32(exactly: Int64(bitPattern: number)), let h = run.program?.helpers[n] else {
        run.set(.fault, RunFault.unknownHelper.rawValue)
        run.set(.faultAddress, number)
        return 0
    }
    let r = h.call(a, b, c, d, e)
    if h.unwindsOnZero && r == 0 { run.set(.unwound, 1) }
    return r
}

/// Compiled code in a packed BPF-kind text allocation.
final class JITCode: @unchecked Sendable {
    let allocator: ExecMemAllocator
    let allocation: Allocation

    init(allocator: ExecMemAllocator, allocation: Allocation) {
        self.allocator = allocator
        self.allocation = allocation
    }

    deinit { try? allocator.free(allocation) }

    func run(_ program: BPFProgram, memory: UnsafeMutableRawBufferPointer?, at address: UInt? = nil) throws(BPFError) -> UInt64 {
        let run = RunContext.acquire()
        run.begin(program, memory: memory)
        defer { run.end() }
        let entry = unsafeBitCast(UnsafeRawPointer(bitPattern: address ?? allocation.address)!, to: JITEntry.self)
        let r1 = UInt64(UInt(bitPattern: memory?.baseAddress)), r2 = UInt64(memory?.count ?? 0)
        let result = run.asCurrent { entry(r1, r2, run.block) }
        if let e = run.error() { throw e }
        return result
    }
}
