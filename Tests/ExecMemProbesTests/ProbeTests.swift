// Instruction probes on a corpus of real compiled functions (clang and gcc, -O0 to -O3): at every
// instruction boundary of every function, the probe either fires with results unchanged or is
// refused with the instruction named; handlers see and may change registers; bad input is typed.

import ExecMem
import ExecMemLoader
import ExecMemProbes
import ExecMemTestSupport
import Foundation
import Synchronization
import Testing

let probeVariants: [(String, String)] = compilers.flatMap { cc in ["-O0", "-O1", "-O2", "-O3"].map { (cc, $0) } }

/// Jump probes everywhere (safe here: only the test's thread runs the corpus), and the automatic
/// choice, which makes a trap wherever a jump is refused or other threads cannot be checked.
let probeModes: [ProbeMode] = [.jump, .automatic]

/// The corpus loaded into a fresh allocator.
func loadCorpus(_ compiler: String, _ opt: String) throws -> (LoadedModule, ExecMemAllocator, String) {
    let dir = try scratch("execmem-probes")
    let object = try compile(compiler, "\(fixtures)/corpus.c", in: dir, flags: [opt])
    let allocator = try testAllocator()
    return (try ModuleLoader(allocator: allocator).load(files: [object]), allocator, dir)
}

/// Instruction starts of a function, by the decoder (stopping at bytes that do not decode).
func boundaries(_ f: Range<UInt>) -> [UInt] {
    var out: [UInt] = [], a = f.lowerBound
    while a < f.upperBound {
        guard let i = try? X86Decoder.decode(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: a), count: Int(f.upperBound - a))) else { break }
        out.append(a)
        a += UInt(i.length)
    }
    return out
}

@Suite(.enabled(if: !compilers.isEmpty, "needs a C compiler")) struct ProbeTests {
    @Test(arguments: probeVariants, probeModes)
    func everyInstructionOfTheCorpus(variant: (compiler: String, opt: String), mode: ProbeMode) throws {
        let (compiler, opt) = variant
        let (module, allocator, dir) = try loadCorpus(compiler, opt)
        defer { module.unload(); try? FileManager.default.removeItem(atPath: dir) }
        typealias Check = @convention(c) () -> Int
        let check = unsafeBitCast(module.address(of: "corpus_check")!, to: Check.self)
        let expected = check()
        #expect(check() == expected, "the corpus is deterministic")
        let probes = InstructionProbes(allocator: allocator)
        let fired = Atomic<Int>(0)
        var installed = 0, firedProbes = 0, traps = 0, refused: [String: Int] = [:]
        var firedIn: Set<String> = [], entryFired: Set<String> = [], entryInstalled: Set<String> = []
        let functions = module.functions.filter { $0.name.hasPrefix("corpus_") && $0.size > 0 }
        #expect(functions.count >= 12)
        for f in functions {
            let range = f.address..<(f.address + UInt(f.size))
            for (k, a) in boundaries(range).enumerated() {
                fired.store(0, ordering: .relaxed)
                let original = bytes(at: a, 16)
                let p: InstructionProbe
                do {
                    p = try probes.probe(a, function: range, mode: mode) { address, regs in
                        precondition(address == a && regs.pointee.rip == a)
                        fired.add(1, ordering: .relaxed)
                    }
                } catch {
                    guard case let .refused(at, instruction, reason) = error else { throw error }
                    #expect(at == a)
                    #expect(range.contains(instruction), "the refusal names an instruction of \(f.name)")
                    refused[String(reason.prefix(while: { $0 != "," && $0 != ":" })).replacingOccurrences(of: #"0x[0-9a-f]+"#, with: "X", options: .regularExpression), default: 0] += 1
                    continue
                }
                installed += 1
                if p.isTrap { traps += 1 }
                #expect(mode != .jump || !p.isTrap)
                #expect(bytes(at: a, 1) == [p.isTrap ? 0xCC : 0xE9])
                let result = check()
                #expect(result == expected, "\(f.name)+\(a - f.address) (\(compiler) \(opt)): \(result) != \(expected)")
                let n = fired.load(ordering: .relaxed)
                if n > 0 { firedProbes += 1 }
                if n > 0 { firedIn.insert(f.name) }
                if k == 0 && n > 0 { entryFired.insert(f.name) }
                if k == 0 { entryInstalled.insert(f.name) }
                try probes.remove(p)
                #expect(bytes(at: a, p.displacedBytes) == Array(original.prefix(p.displacedBytes)))
                probes.reclaim()
            }
        }
        #expect(check() == expected)
        // A function runs from its entry: where any probe fired, an entry probe (if placed) fired too.
        for name in firedIn.intersection(entryInstalled) { #expect(entryFired.contains(name), "\(name) ran, but its entry probe did not fire") }
        // Every function of the source ran (gcc may run a clone such as corpus_sum.constprop.0).
        for base in Set(functions.map { String($0.name.prefix { $0 != "." }) }) where base != "corpus_check" {
            #expect(firedIn.contains { $0.prefix { $0 != "." } == base }, "no probe fired in \(base)")
        }
        #expect(installed > 0 && firedProbes * 2 > installed, "most probes sit on executed code")
        print("probes \((compiler as NSString).lastPathComponent) \(opt) \(mode): \(installed) installed (\(traps) traps), \(firedProbes) fired, refused \(refused.values.reduce(0, +)): \(refused.sorted { $0.key < $1.key })")
        try expectNoWritableExecutable()
    }
}
