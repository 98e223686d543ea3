// Hooks on loaded modules (clang and gcc, -fpatchable-function-entry=5) and thousands of hooks
// packed into shared trace blocks.

import ExecMem
import ExecMemLoader
import ExecMemProbes
import ExecMemSystem
import ExecMemTestSupport
import Foundation
import Synchronization
import Testing

typealias IntFunction = @convention(c) (Int32) -> Int32

@Suite(.serialized) struct ModuleHookTests {
    @Test(.enabled(if: !compilers.isEmpty, "needs a C compiler"), arguments: compilers)
    func hooksOnALoadedModule(compiler: String) throws {
        let dir = try scratch("execmem-probes")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compile(compiler, "\(fixtures)/hooked.c", in: dir, flags: ["-O2", "-fpatchable-function-entry=5"])
        let allocator = try testAllocator()
        let module = try ModuleLoader(allocator: allocator).load(files: [object])
        defer { module.unload() }
        let names = ["leaf", "middle", "top", "leaf_v2"]
        #expect(module.patchableEntries.count >= names.count)
        let top = unsafeBitCast(module.address(of: "top")!, to: IntFunction.self)
        let plain = top(10)
        #expect(plain == (0..<10).reduce(0) { $0 + $1 * 3 + 1 } + 31)

        let hooks = FunctionHooks(allocator: allocator)
        let counts = Mutex<[UInt: Int]>([:])
        let exits = Mutex<[UInt: [UInt64]]>([:])
        let hooked = try hooks.hook(names.dropLast().map { module.address(of: $0)! },
                                    entry: { f, _ in counts.withLock { $0[f, default: 0] += 1 } },
                                    exit: { f, v in exits.withLock { $0[f, default: []].append(v) } })
        #expect(top(10) == plain)
        let c = counts.withLock { $0 }
        #expect(c[module.address(of: "leaf")!] == 11)
        #expect(c[module.address(of: "middle")!] == 1)
        #expect(c[module.address(of: "top")!] == 1)
        #expect(exits.withLock { $0[module.address(of: "top")!] } == [UInt64(plain)])
        #expect(exits.withLock { $0[module.address(of: "middle")!] } == [UInt64(plain - 31)])

        // Live-patch leaf to leaf_v2 (the leaf hook must go first: one owner per entry).
        try hooks.remove(hooked[0])
        let patch = try hooks.redirect(module.address(of: "leaf")!, to: module.address(of: "leaf_v2")!)
        #expect(top(10) == plain + 11)
        try hooks.revert(patch)
        #expect(top(10) == plain)
        for h in hooked.dropFirst() { try hooks.remove(h) }
        #expect(top(10) == plain)
        try expectNoWritableExecutable()
    }

    /// Generated functions `f_k(x) = x + k`, each starting with a 5-byte NOP, in allocator text.
    func generate(_ n: Int, in allocator: ExecMemAllocator) throws -> [Allocation] {
        try (0..<n).map { k in
            let a = try allocator.allocate(.moduleText, size: 16)
            var code: [UInt8] = [0x0F, 0x1F, 0x44, 0x00, 0x00, 0x48, 0x8D, 0x87]  // nop5; lea rax, [rdi+imm32]
            withUnsafeBytes(of: Int32(k).littleEndian) { code += $0 }
            code.append(0xC3)
            try allocator.write(code, to: a)
            return a
        }
    }

    @Test func thousandsOfHooksShareTraceBlocks() throws {
        let allocator = try testAllocator()
        let functions = try generate(3000, in: allocator)
        allocator.makeVisible()
        let hooks = FunctionHooks(allocator: allocator)
        let fired = Atomic<Int>(0)
        let all = try hooks.hook(functions.map(\.address), entry: { _, a in fired.add(Int(a[0]), ordering: .relaxed) })
        for (k, f) in functions.enumerated() {
            let fn = unsafeBitCast(f.address, to: (@convention(c) (Int) -> Int).self)
            #expect(fn(7) == 7 + k)
        }
        #expect(fired.load(ordering: .relaxed) == 7 * 3000)
        let stats = allocator.statistics(readBack: false)
        #expect(stats[.trace].allocations == 3000 + 2, "one stub per hook, plus the shared body and exit trampoline")
        #expect(stats[.text].blocks == 1, "3000 functions and 3000 stubs fit one 2 MiB text block")
        try hooks.disable(all)
        for f in functions { #expect(bytes(at: f.address, 5) == [0x0F, 0x1F, 0x44, 0x00, 0x00]) }
        try expectNoWritableExecutable()
    }
}
