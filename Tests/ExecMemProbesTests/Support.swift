// Shared pieces of the probe tests: the host sample functions' addresses, an allocator near the
// executable, and the W^X scan.

import CExecMemProbeSamples
import ExecMem
import ExecMemProbes
import ExecMemSystem
import Foundation
import Testing

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

typealias Binary = @convention(c) (Int, Int) -> Int

/// The address of a C function of the host.
func address(_ f: Binary) -> UInt { unsafeBitCast(f, to: UInt.self) }

let addAddress = address(cem_sample_add)
let addV2Address = address(cem_sample_add_v2)

/// One allocator for every probe test (near the executable, as the shared one is).
let probeAllocator: ExecMemAllocator = try! ExecMemAllocator.shared()

/// Fails the test when any mapping is writable and executable.
func expectNoWritableExecutable(_ where_: String = #function) throws {
    let bad = try ProcMaps.writableExecutable()
    #expect(bad.isEmpty, "rwx mappings after \(where_): \(bad)")
}

/// Reads `count` code bytes.
func bytes(at address: UInt, _ count: Int) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count))
}
