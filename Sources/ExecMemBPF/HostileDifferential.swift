// The differential runner for hostile programs: each program is loaded (a verifier rejection is an
// outcome, counted by reason), then run on the interpreter and on the JIT, each over a fresh copy of
// the context and maps reset to their initial contents, under an instruction budget. The two runs
// must agree exactly on the result (r0 or the thrown BPFError), the context afterwards and the maps
// afterwards; any difference, or a write just outside the context memory, is a bug, kept with its
// seed and disassembly for replay.
//
//   context buffer   [ 64 guard bytes | contextSize bytes the program gets | 64 guard bytes ]
//
// Both engines run over the same addresses (the context buffer refilled, the same maps reset, the
// same thread's stack), so even a program that computes with addresses (a pointer moved from one
// region into another, whose fault names the offset it reached) gives the same numbers on both.

import ExecMem

/// Runs BPFHostileGenerator programs on both engines and reports what happened. One tester may be
/// used from one thread at a time (use one per worker); the VM may be shared.
public struct BPFHostileTester {
    /// The VM programs are loaded into; the tester registers the custom helper (number 7) on it.
    public let vm: BPFVM
    /// Share of hostile programs the generator makes.
    public var hostileFraction: Double
    /// How many mismatches a report keeps in full.
    public var keep = 5

    /// A tester over `vm`, registering `BPFProgramGenerator.helper` as helper 7.
    public init(vm: BPFVM, hostileFraction: Double = BPFHostileGenerator.defaultHostileFraction) {
        self.vm = vm
        self.hostileFraction = hostileFraction
        vm.register(BPFProgramGenerator.helperNumber, BPFProgramGenerator.helper)
    }

    /// How one program went.
    public enum Outcome: Equatable, Sendable {
        /// The verifier (or the loader) refused it.
        case rejected(BPFError)
        /// Both engines ended the same way: r0, or the same error.
        case agreed(Result<UInt64, BPFError>)
        /// The engines differ, or one wrote outside the context memory: a bug, described.
        case mismatch(String)
    }

    /// A disagreement, with what replays it: `BPFHostileGenerator(seed:hostileFraction:).generate()`.
    public struct Mismatch: Sendable, CustomStringConvertible {
        /// The program's seed.
        public let seed: UInt64
        /// What the program contains.
        public let shapes: BPFHostileGenerator.Shape
        /// What differs: results, context bytes, map probes, guard bytes.
        public let detail: String
        /// The program, as `BPFDisassembler.text` prints it.
        public let disassembly: String
        /// Seed, shapes, what differs, then the program.
        public var description: String { "seed \(seed) [\(shapes)]: \(detail)\n\(disassembly)" }
    }

    /// Counts over a run of many programs. Reports of several workers add up with `merge`.
    public struct Report: Sendable, CustomStringConvertible {
        /// Programs generated.
        public var generated = 0
        /// Programs the verifier (or the loader) refused.
        public var rejected = 0
        /// Rejections by the first words of the verifier's reason.
        public var rejectedBy: [String: Int] = [:]
        /// Programs that loaded and ran on both engines.
        public var accepted = 0
        /// Runs where both engines returned the same r0.
        public var ranToR0 = 0
        /// Runs where both engines threw the same error.
        public var runtimeErrors = 0
        /// Those errors by the first words of their reason.
        public var runtimeErrorsBy: [String: Int] = [:]
        /// Programs whose two runs differ (or that wrote outside the context): bugs.
        public var mismatches = 0
        /// Programs holding each shape, and how many of those the verifier accepted.
        public var shapesGenerated: [String: Int] = [:]
        /// Of `shapesGenerated`, those the verifier accepted.
        public var shapesAccepted: [String: Int] = [:]
        /// The first `keep` mismatches.
        public var found: [Mismatch] = []

        /// An empty report.
        public init() {}

        /// Adds `other`'s counts (and its mismatches, up to `keep` in all).
        public mutating func merge(_ other: Report, keep: Int = 5) {
            generated += other.generated; rejected += other.rejected; accepted += other.accepted
            ranToR0 += other.ranToR0; runtimeErrors += other.runtimeErrors; mismatches += other.mismatches
            rejectedBy.merge(other.rejectedBy, uniquingKeysWith: +)
            runtimeErrorsBy.merge(other.runtimeErrorsBy, uniquingKeysWith: +)
            shapesGenerated.merge(other.shapesGenerated, uniquingKeysWith: +)
            shapesAccepted.merge(other.shapesAccepted, uniquingKeysWith: +)
            found += other.found.prefix(max(0, keep - found.count))
        }

        /// A few lines of counts, shapes as generated/accepted, then the mismatches kept.
        public var description: String {
            func list(_ d: [String: Int]) -> String {
                d.sorted { ($1.value, $0.key) < ($0.value, $1.key) }.map { "    \($0.value)  \($0.key)" }.joined(separator: "\n")
            }
            let shapes = BPFHostileGenerator.Shape.named.map { "\($0.1) \(shapesGenerated[$0.1] ?? 0)/\(shapesAccepted[$0.1] ?? 0)" }
            var lines = [
                "\(generated) generated, \(rejected) rejected by the verifier, \(accepted) accepted: \(ranToR0) ran to r0, \(runtimeErrors) ended with a runtime error, \(mismatches) mismatches",
                "  rejected by:", list(rejectedBy), "  runtime errors:", list(runtimeErrorsBy),
                "  shapes (generated/accepted): " + shapes.joined(separator: ", "),
            ]
            lines += found.map(\.description)
            return lines.joined(separator: "\n")
        }
    }

    /// Generates `count` programs from `seed` on (program k has seed `seed + k`), runs each on both
    /// engines with `budget` instructions per run (nil: the programs' default), and counts.
    public func run(count: Int, seed: UInt64, budget: UInt64? = nil) -> Report {
        var report = Report()
        let buffer = ContextBuffer()
        for k in 0..<count {
            var g = BPFHostileGenerator(seed: seed &+ UInt64(k), hostileFraction: hostileFraction)
            let p = g.generate()
            report.generated += 1
            for (shape, name) in BPFHostileGenerator.Shape.named where p.shapes.contains(shape) { report.shapesGenerated[name, default: 0] += 1 }
            switch compare(p, budget: budget, buffer: buffer) {
            case let .rejected(e):
                report.rejected += 1
                report.rejectedBy[Self.category(e), default: 0] += 1
                continue
            case .agreed(.success):
                report.ranToR0 += 1
            case let .agreed(.failure(e)):
                report.runtimeErrors += 1
                report.runtimeErrorsBy[Self.category(e), default: 0] += 1
            case let .mismatch(detail):
                report.mismatches += 1
                if report.found.count < keep {
                    report.found.append(Mismatch(seed: p.seed, shapes: p.shapes, detail: detail, disassembly: BPFDisassembler.text(p.code)))
                }
            }
            report.accepted += 1
            for (shape, name) in BPFHostileGenerator.Shape.named where p.shapes.contains(shape) { report.shapesAccepted[name, default: 0] += 1 }
        }
        return report
    }

    /// Loads and runs one program on both engines and compares; maps start from `makeMaps(seed:)`
    /// of the program's seed.
    public func compare(_ program: BPFHostileGenerator.Program, budget: UInt64? = nil) -> Outcome {
        compare(program, budget: budget, buffer: ContextBuffer())
    }

    /// Only loads the program (the verifier), without running it: nil if accepted, else the error.
    public func verify(_ program: BPFHostileGenerator.Program) -> BPFError? {
        do throws(BPFError) {
            _ = try vm.load(program.code, name: "hostile-\(program.seed)", maps: try BPFHostileGenerator.makeMaps(seed: program.seed))
            return nil
        } catch {
            return error
        }
    }

    // MARK: - One program

    /// What one engine's run left behind.
    struct EngineRun {
        var result: Result<UInt64, BPFError>
        var context: [UInt8]
        var maps: [[UInt8]?]
        var guardsIntact: Bool
        /// Where each map's value slab was during this run.
        var slabs: [UInt]
    }

    func compare(_ p: BPFHostileGenerator.Program, budget: UInt64?, buffer: ContextBuffer) -> Outcome {
        let maps: [BPFMap], program: BPFProgram
        do throws(BPFError) {
            maps = try BPFHostileGenerator.makeMaps(seed: p.seed)
            program = try vm.load(p.code, name: "hostile-\(p.seed)", maps: maps)
        } catch {
            return .rejected(error)
        }
        var runs: [EngineRun] = []
        for engine in [BPFEngine.interpreter, .jit] {
            if engine == .jit {
                for m in maps { m.reset() }
                do throws(BPFError) { try BPFHostileGenerator.fill(maps, seed: p.seed) } catch { return .mismatch("refilling the maps failed: \(error)") }
            }
            let context = buffer.fill(p.context)
            let result = Result { () throws(BPFError) in try program.run(memory: context, engine: engine, budget: budget) }
            runs.append(EngineRun(result: result, context: Array(context), maps: Self.contents(maps),
                                  guardsIntact: buffer.guardsIntact, slabs: maps.map(\.region.start)))
        }
        program.unload()
        let (i, j) = (runs[0], runs[1])
        let sameResult = Self.agree(i, j)
        if sameResult && i.context == j.context && i.maps == j.maps && i.guardsIntact == j.guardsIntact {
            return i.guardsIntact ? .agreed(i.result) : .mismatch("both engines wrote outside the context memory")
        }
        var why: [String] = []
        if !sameResult { why.append("interpreter \(Self.text(i.result)), JIT \(Self.text(j.result))") }
        if i.context != j.context {
            let at = zip(i.context, j.context).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            why.append("context differs at bytes \(at.prefix(8).map(String.init).joined(separator: ","))")
        }
        for (k, (a, b)) in zip(i.maps, j.maps).enumerated() where a != b { why.append("map probe \(k) differs") }
        if !i.guardsIntact { why.append("the interpreter wrote outside the context memory") }
        if !j.guardsIntact { why.append("the JIT wrote outside the context memory") }
        return .mismatch(why.joined(separator: "; "))
    }

    static func text(_ r: Result<UInt64, BPFError>) -> String {
        switch r {
        case let .success(v): "r0 0x\(String(v, radix: 16))"
        case let .failure(e): "\(e)"
        }
    }

    /// Every array element, the hash map's count and each of `hashKeys`' values.
    static func contents(_ maps: [BPFMap]) -> [[UInt8]?] {
        var out: [[UInt8]?] = []
        for m in maps {
            if m.type == .array {
                for k in 0..<m.maxEntries { out.append(try? m.lookup((0..<4).map { UInt8(truncatingIfNeeded: k >> (8 * $0)) })) }
            } else {
                out.append([UInt8(truncatingIfNeeded: m.count)])
                for key in BPFHostileGenerator.hashKeys {
                    out.append(try? m.lookup((0..<m.keySize).map { UInt8(truncatingIfNeeded: key >> (8 * $0)) }))
                }
            }
        }
        return out
    }

    /// Equal results, or runtime errors at the same instruction whose reasons differ only in an
    /// address that sits at the same offset from the same map's slab in both runs.
    static func agree(_ a: EngineRun, _ b: EngineRun) -> Bool { a.result == b.result }

    /// The first words of an error's reason, numbers replaced by `#`: "out-of-bounds access of #".
    public static func category(_ e: BPFError) -> String {
        let reason: String
        switch e {
        case let .verifier(_, r), let .runtime(_, r): reason = r
        default: reason = "\(e)"
        }
        let words = reason.split(separator: " ").prefix(4).map { $0.contains(where: \.isNumber) ? "#" : String($0) }
        return words.joined(separator: " ")
    }
}

/// The context memory between guard bytes, at one address for the tester's life.
final class ContextBuffer {
    static let guardBytes = 64, pattern: UInt8 = 0xA5
    let base: UnsafeMutableRawBufferPointer
    let size = BPFHostileGenerator.contextSize

    init() {
        base = .allocate(byteCount: 2 * Self.guardBytes + size, alignment: 16)
    }

    deinit { base.deallocate() }

    /// Fills the guards and copies `bytes` into the middle; returns the middle.
    func fill(_ bytes: [UInt8]) -> UnsafeMutableRawBufferPointer {
        base.initializeMemory(as: UInt8.self, repeating: Self.pattern)
        let middle = UnsafeMutableRawBufferPointer(rebasing: base[Self.guardBytes..<(Self.guardBytes + size)])
        bytes.withUnsafeBytes { middle.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(size))) }
        return middle
    }

    var guardsIntact: Bool {
        base[..<Self.guardBytes].allSatisfy { $0 == Self.pattern } && base[(Self.guardBytes + size)...].allSatisfy { $0 == Self.pattern }
    }
}
