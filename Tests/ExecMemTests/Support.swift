// Helpers the allocator tests share: tiny x86-64 functions to install and run, calls through
// function pointers, and read-backs of /proc/self/maps.

import ExecMem
import ExecMemSystem
import Testing

typealias Int32Function = @convention(c) (Int32) -> Int32

/// x86-64 bytes for `int f(int x) { return x + k; }`: `lea eax, [rdi + k]; ret`, padded in front
/// with NOPs to `size` bytes (at least 7).
func addFunction(_ k: Int32, size: Int = 7) -> [UInt8] {
    precondition(size >= 7)
    var code = [UInt8](repeating: 0x90, count: size - 7)
    code += [0x8D, 0x87]
    withUnsafeBytes(of: k.littleEndian) { code += $0 }
    code.append(0xC3)
    return code
}

/// Calls the `int f(int)` at `address`.
func call(_ address: UInt, _ x: Int32) -> Int32 {
    unsafeBitCast(UnsafeRawPointer(bitPattern: address)!, to: Int32Function.self)(x)
}

/// Reads `count` bytes at `address` (the run view is readable for every type).
func bytes(at address: UInt, count: Int) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count))
}

/// The `rwx` lines of /proc/self/maps; every scenario must leave none.
func expectNoWritableExecutable(sourceLocation: SourceLocation = #_sourceLocation) throws {
    let bad = try ProcMaps.writableExecutable()
    #expect(bad.isEmpty, "writable and executable mappings: \(bad)", sourceLocation: sourceLocation)
}

/// The protection /proc/self/maps shows at `address`, e.g. `r-x`.
func protection(at address: UInt) throws -> String? {
    try ProcMaps.read().first { $0.start <= address && address < $0.end }?.protection
}

/// A small configuration for tests: ranges of a few MiB so many allocators fit near the executable.
func smallConfiguration(range: Int = 64 << 20, fallback: Int = 16 << 20) -> ExecMemConfiguration {
    var c = ExecMemConfiguration()
    c.rangeSize = range
    c.fallbackSize = fallback
    return c
}

let kernel = KernelFeatures.probe()
