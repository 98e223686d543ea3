// `execmem bpf ...`: run, assemble, disassemble, the conformance suite and its plugin protocol, and
// differential fuzzing, over ExecMemBPF.

import ArgumentParser
@_spi(Benchmark) import ExecMemBPF
import Foundation

extension BPFEngine: ExpressibleByArgument {}

struct BPFCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bpf",
        abstract: "eBPF: verifier, interpreter and an x86-64 JIT that packs programs into shared 2 MiB blocks.",
        subcommands: [Run.self, Verify.self, Asm.self, Disasm.self, Conformance.self, Plugin.self, Fuzz.self])
}

/// Reads a whole file, or standard input for "-".
func readInput(_ path: String) throws -> [UInt8] {
    if path == "-" { return Array(FileHandle.standardInput.readDataToEndOfFile()) }
    guard let d = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
    return Array(d)
}

func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("execmem: \(message)\n".utf8))
    return ExitCode.failure
}

/// A program from a file: an ELF object, a conformance `.data` file, assembly (`.s`/`.asm`) or raw
/// bytecode. Returns the program and the memory the file carries (`.data` files).
func loadProgram(_ path: String, function: String?, vm: BPFVM) throws -> (BPFProgram, [UInt8]) {
    let bytes = try readInput(path)
    let name = URL(fileURLWithPath: path).lastPathComponent
    if bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) {
        return (try vm.load(elf: bytes, name: name, function: function), [])
    }
    if path.hasSuffix(".data") {
        let test = try ConformanceTest(name: name, text: String(decoding: bytes, as: UTF8.self))
        return (try vm.load(test.program, name: name), test.memory)
    }
    if path.hasSuffix(".s") || path.hasSuffix(".asm") {
        return (try vm.load(assembly: String(decoding: bytes, as: UTF8.self), name: name), [])
    }
    return (try vm.load(try decodeProgram(bytes), name: name), [])
}

extension BPFCommand {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run", abstract: "Run a program (.o, .data, .s or raw bytecode) and print r0 in hex.")
        @Argument(help: "The program.") var file: String
        @Option(help: "A file of raw bytes given to the program as r1 (address) and r2 (length).") var mem: String?
        @Option(help: "The function to run, for ELF objects.") var function: String?
        @Option(help: "jit or interpreter.") var engine: BPFEngine = .jit
        @Option(help: "Instruction budget of the run (a run that needs more stops with an error).") var budget: UInt64 = BPFProgram.defaultBudget
        @Option(help: "Write the JIT's machine code to this file (for objdump -b binary -m i386:x86-64).") var dumpJit: String?
        @Option(help: "Run this many times (on a copy of the memory made once) and print the time per run.") var times: Int = 0
        @OptionGroup var observe: ObservabilityOptions

        func validate() throws {
            guard (0...1_000_000_000).contains(times) else { throw ValidationError("--times must be 0 to 1,000,000,000, not \(times)") }
        }

        func run() throws {
            observe.apply()
            do {
                let vm = BPFVM(allocator: try observe.allocator())
                let (program, fileMemory) = try loadProgram(file, function: function, vm: vm)
                let memory = try mem.map(readInput) ?? fileMemory
                let r0 = try program.run(bytes: memory, engine: engine, budget: budget)
                if times > 0 {
                    var copy = memory
                    let (engine, budget, times) = (self.engine, self.budget, self.times)
                    let started = Date()
                    let failure: BPFError? = copy.withUnsafeMutableBytes { m in
                        let memory = m.count == 0 ? nil : m
                        do throws(BPFError) {
                            for _ in 0..<times { _ = try program.run(memory: memory, engine: engine, budget: budget) }
                        } catch { return error }
                        return nil
                    }
                    if let failure { throw failure }
                    print(String(format: "%.1f ns/run", Date().timeIntervalSince(started) * 1e9 / Double(times)))
                }
                if let dumpJit, let code = program.jitBytes { try Data(code).write(to: URL(fileURLWithPath: dumpJit)) }
                print("0x" + String(r0, radix: 16))
            } catch let e as BPFError {
                throw fail(e.description)
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "verify", abstract: "Verify a program and print what the verifier proved (or why it refuses it).")
        @Argument(help: "The program (.o, .data, .s or raw bytecode).") var file: String
        @Option(help: "The function, for ELF objects.") var function: String?
        @Flag(help: "Print each instruction with the registers readable there and how its access is checked.") var listing = false
        @Option(help: "Verify this many times and print the time per verification.") var times: Int = 0

        func validate() throws {
            guard (0...10_000_000).contains(times) else { throw ValidationError("--times must be 0 to 10,000,000, not \(times)") }
        }

        func run() throws {
            do {
                let (program, _) = try loadProgram(file, function: function, vm: BPFVM())
                if self.times > 0 {
                    let verifier = BPFVerifier(helpers: BPFVM().helpers, maps: program.maps)
                    let started = Date()
                    for _ in 0..<self.times { _ = try verifier.verify(program.instructions) }
                    print(String(format: "verify: %.1f us", Date().timeIntervalSince(started) * 1e6 / Double(self.times)))
                }
                let v = program.verified
                print("\(v.instructions.count) instructions in \(v.functions.count) function\(v.functions.count == 1 ? "" : "s"): accepted")
                print("memory accesses: \(v.provenAccesses) proven in bounds (no run-time check), \(v.checkedAccesses) checked against their region")
                print("loops: \(v.loopHeaders.count) (each back edge charges the budget: \(v.loopHeaders.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")))")
                print("analysis: \(v.blocks) blocks, \(v.blockAnalyses) block analyses to the fixed point")
                print("stack cleared per run: \(v.stackZeroBytes) bytes\(v.stackZeroBytes == 0 ? " (every stack read follows a write)" : "")")
                if v.unreachableInstructions > 0 { print("unreachable instructions: \(v.unreachableInstructions)") }
                if listing {
                    var i = 0
                    while i < v.instructions.count {
                        let insn = v.instructions[i]
                        let regs = (0...10).filter { v.readable[i] & (1 << $0) != 0 }.map { "r\($0)" }.joined(separator: " ")
                        let text = BPFDisassembler.text(insn, next: i + 1 < v.instructions.count ? v.instructions[i + 1] : nil)
                        let note = v.accessNote(at: i).map { "  ; \($0)" } ?? ""
                        print(String(format: "%5d  ", i) + text.padding(toLength: 36, withPad: " ", startingAt: 0) + " [\(regs)]" + note)
                        i += insn.opcode == BPF.LDDW ? 2 : 1
                    }
                }
            } catch let e as BPFError {
                throw fail(e.description)
            }
        }
    }

    struct Asm: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "asm", abstract: "Assemble conformance-dialect assembly into raw bytecode.")
        @Argument(help: "Assembly source, or - for standard input.") var file: String
        @Option(name: .shortAndLong, help: "Output file (default: standard output).") var output: String?
        @Flag(help: "Print one 64-bit hex word per instruction (the .data files' raw form) instead of bytes.") var words = false

        func run() throws {
            do {
                let program = try BPFAssembler.assemble(String(decoding: try readInput(file), as: UTF8.self))
                if words {
                    print(program.map { "0x" + String(format: "%016llx", $0.word) }.joined(separator: "\n"))
                } else if let output {
                    try Data(encodeProgram(program)).write(to: URL(fileURLWithPath: output))
                } else {
                    FileHandle.standardOutput.write(Data(encodeProgram(program)))
                }
            } catch let e as BPFError {
                throw fail(e.description)
            }
        }
    }

    struct Disasm: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "disasm", abstract: "Disassemble raw bytecode, an ELF object's function or a .data file.")
        @Argument(help: "The program.") var file: String
        @Option(help: "The function, for ELF objects.") var function: String?

        func run() throws {
            do {
                let bytes = try readInput(file)
                let program: [BPFInstruction]
                if bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) {
                    program = try BPFVM().load(elf: bytes, name: file, function: function).instructions
                } else if file.hasSuffix(".data") {
                    program = try ConformanceTest(name: file, text: String(decoding: bytes, as: UTF8.self)).program
                } else {
                    program = try decodeProgram(bytes)
                }
                print(BPFDisassembler.text(program), terminator: "")
            } catch let e as BPFError {
                throw fail(e.description)
            }
        }
    }

    struct Conformance: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "conformance", abstract: "Run a directory of conformance .data files; one line per failure, then N passed, M failed.")
        @Argument(help: "Directory of .data files (e.g. ../shared/bpf-conformance/tests).") var directory: String
        @Option(help: "jit or interpreter.") var engine: BPFEngine = .jit

        func run() throws {
            guard let files = try? FileManager.default.contentsOfDirectory(atPath: directory) else { throw fail("cannot read directory \(directory)") }
            let runner = ConformanceRunner(engine: engine)
            var passed = 0, failed = 0
            for name in files.filter({ $0.hasSuffix(".data") }).sorted() {
                let text = (try? String(contentsOfFile: directory + "/" + name, encoding: .utf8)) ?? ""
                let outcome = runner.run(file: name, text: text)
                if outcome.passed { passed += 1 } else { failed += 1; print("FAIL \(name): \(outcome.detail)") }
            }
            print("\(passed) passed, \(failed) failed")
            if failed > 0 || passed == 0 { throw ExitCode.failure }
        }
    }

    struct Plugin: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "plugin",
            abstract: "The conformance plugin protocol: program as hex on standard input, r0 in hex on standard output.")
        @Argument(help: "The context memory as hex bytes.") var memory: String = ""
        @Option(help: "jit or interpreter.") var engine: BPFEngine = .jit

        func run() throws {
            func hexBytes(_ s: String) -> [UInt8]? {
                let digits = s.filter { !$0.isWhitespace }
                guard digits.count % 2 == 0 else { return nil }
                var out: [UInt8] = []
                var i = digits.startIndex
                while i < digits.endIndex {
                    let j = digits.index(i, offsetBy: 2)
                    guard let b = UInt8(digits[i..<j], radix: 16) else { return nil }
                    out.append(b)
                    i = j
                }
                return out
            }
            let input = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            guard let code = hexBytes(input) else { throw fail("the program on standard input is not hex bytes") }
            guard let mem = hexBytes(memory) else { throw fail("the memory argument is not hex bytes") }
            let runner = ConformanceRunner(engine: engine)
            do {
                let program = try runner.vm.load(try decodeProgram(code), name: "plugin")
                print(String(try program.run(bytes: mem, engine: engine), radix: 16))
            } catch let e as BPFError {
                throw fail(e.description)
            }
        }
    }

    struct Fuzz: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "fuzz", abstract: "Differential fuzzing: generated programs on the JIT and the interpreter must agree.")
        @Option(help: "Programs to run.") var count = 100_000
        @Option(help: "First seed.") var seed: UInt64 = 1
        @Option(help: "Random instructions per program.") var length = 40
        @Flag(help: "Hostile and arbitrary programs (BPFHostileTester): loops, re-entry, recursion, out-of-bounds, maps.") var hostile = false
        @Option(help: "Instructions each run may execute (default: the programs' own, 1,000,000).") var budget: UInt64?

        func validate() throws {
            guard (0...1_000_000_000).contains(count) else { throw ValidationError("--count must be 0 to 1,000,000,000, not \(count)") }
            guard (1...100_000).contains(length) else { throw ValidationError("--length must be 1 to 100,000, not \(length)") }
        }

        func run() throws {
            if hostile {
                let report = BPFHostileTester(vm: BPFVM()).run(count: count, seed: seed, budget: budget)
                print(report)
                if report.mismatches > 0 { throw ExitCode.failure }
                return
            }
            let tester = DifferentialTester(vm: BPFVM())
            let started = Date()
            let mismatches = tester.run(count: count, seed: seed, length: length)
            for m in mismatches { print(m) }
            print("\(count) programs from seed \(seed): \(mismatches.isEmpty ? "JIT and interpreter agree" : "\(mismatches.count) mismatches") (\(Int(Date().timeIntervalSince(started) * 1000)) ms)")
            if !mismatches.isEmpty { throw ExitCode.failure }
        }
    }
}
