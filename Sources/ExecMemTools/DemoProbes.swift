// The demo's probes part, on the built-in module (compiled with -fpatchable-function-entry=5):
// hook demo_entry's entry and exit, check the handler saw the argument and the return value and
// that disabling restores the entry's bytes; live-patch demo_entry to demo_entry_v2 and back; and
// place an instruction probe inside demo_entry.

import ExecMem
import ExecMemLoader
import ExecMemProbes
import Synchronization

public struct ProbesDemoReport: Codable, Sendable {
    /// Functions of the module with a patchable entry.
    public var patchableFunctions: Int
    /// The argument and return value the entry and exit hooks saw for demo_entry(16).
    public var hookSawArgument: Int
    public var hookSawResult: Int
    public var resultWhileHooked: Int
    /// The entry's bytes read back after disabling equal those before hooking.
    public var entryBytesRestored: Bool
    /// demo_entry(16) while redirected to demo_entry_v2, and after reverting.
    public var livePatchedResult: Int
    public var revertedResult: Int
    /// An instruction probe inside demo_entry: times it fired in one call, and the result then.
    public var probeOffset: Int
    public var probeHits: Int
    public var resultWhileProbed: Int
    public var expected: Int
    public var expectedPatched: Int

    public var ok: Bool {
        patchableFunctions > 0 && hookSawArgument == 16 && hookSawResult == expected && resultWhileHooked == expected && entryBytesRestored
            && livePatchedResult == expectedPatched && revertedResult == expected && probeHits > 0 && resultWhileProbed == expected
    }

    static func run(_ module: LoadedModule, expected: Int) throws -> ProbesDemoReport {
        typealias Entry = @convention(c) (Int) -> Int
        let entryAddress = module.address(of: "demo_entry")!
        let entry = unsafeBitCast(UnsafeRawPointer(bitPattern: entryAddress)!, to: Entry.self)
        let hooks = FunctionHooks(allocator: module.allocator)
        let before = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: entryAddress), count: 5))
        let seen = Mutex<(Int, Int)>((0, 0))
        let hook = try hooks.hook(entryAddress, entry: { _, a in seen.withLock { $0.0 = Int(a[0]) } },
                                  exit: { _, v in seen.withLock { $0.1 = Int(bitPattern: UInt(v)) } })
        let hooked = entry(16)
        try hooks.disable(hook)
        let restored = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: entryAddress), count: 5)) == before
        try hooks.remove(hook)

        let patch = try hooks.redirect(entryAddress, to: module.address(of: "demo_entry_v2")!)
        let patched = entry(16)
        try hooks.revert(patch)
        let reverted = entry(16)

        // A probe on an instruction a little way into demo_entry (the first one at offset 8 or more
        // that the planner accepts).
        let f = module.functions.first { $0.name == "demo_entry" }!
        let range = f.address..<(f.address + UInt(f.size))
        let probes = InstructionProbes(allocator: module.allocator)
        let hits = Atomic<Int>(0)
        var probe: InstructionProbe? = nil
        var offset = 0
        var a = f.address
        while a < range.upperBound, probe == nil {
            let length = (try? X86Decoder.decode(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: a), count: Int(range.upperBound - a))).length) ?? 0
            guard length > 0 else { break }
            if a - f.address >= 8, let p = try? probes.probe(a, function: range, handler: { _, _ in hits.add(1, ordering: .relaxed) }) {
                probe = p
                offset = Int(a - f.address)
            }
            a += UInt(length)
        }
        let probed = entry(16)
        if let probe { try probes.remove(probe) }
        hooks.reclaim()
        probes.reclaim()
        let seenValues = seen.withLock { $0 }
        return ProbesDemoReport(
            patchableFunctions: module.patchableEntries.count, hookSawArgument: seenValues.0, hookSawResult: seenValues.1,
            resultWhileHooked: hooked, entryBytesRestored: restored, livePatchedResult: patched, revertedResult: reverted,
            probeOffset: offset, probeHits: hits.load(ordering: .relaxed), resultWhileProbed: probed,
            expected: expected, expectedPatched: expected + 16)
    }
}
