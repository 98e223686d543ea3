// The `execmem` command: argument parsing and printing over ExecMemTools. Nothing here decides
// anything; every figure comes from the libraries.

import ArgumentParser
import ExecMem
import ExecMemTools
import Foundation

@main
struct ExecMemCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "execmem",
        abstract: "One allocator for memory that holds code: 2 MiB pages kept, one range near the executable, typed, W^X.",
        version: ExecMemVersion.string,
        subcommands: [Demo.self, Doctor.self, Bench.self, BPFCommand.self, SimCommand.self, LoadCommand.self, TraceCommand.self, SelfTestCommand.self],
        defaultSubcommand: Demo.self)

    /// `execmem --version` answers before ArgumentParser builds its command tree: parsing instantiates
    /// every subcommand's arguments (about 3 ms, mostly the runtime's protocol-conformance lookups),
    /// three times what starting the process costs. Everything else goes through the parser.
    static func main() {
        if CommandLine.arguments.count == 2 && CommandLine.arguments[1] == "--version" {
            print(ExecMemVersion.string)
            return
        }
        main(nil)
    }
}

/// Prints a Codable value as one JSON object.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

extension ExecMemCommand {
    struct Demo: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "demo",
            abstract: "Install, run and free a few thousand generated functions; show statistics, 2 MiB coverage and a W^X scan.")

        @Option(help: "Number of functions to generate.") var functions = 4000
        @Option(help: "Number of eBPF programs to JIT-compile.") var bpfPrograms = 3000
        @Option(help: "Seed for the generated functions.") var seed: UInt64 = 1
        @Option(help: "Backing: memfd, hugetlb or anonymous.") var backing: Backing = .memfd
        @Option(help: "Write views: persistent or transient.") var writeView: WriteViewMode = .persistent
        @Flag(help: "Lay blocks out in fixed per-type sub-ranges instead of one typed pool.") var splitRange = false
        @Flag(help: "Print one JSON object instead of text.") var json = false
        @Flag(help: "Name the demo's code for perf: /tmp/perf-<pid>.map and jit-<pid>.dump.") var perf = false
        @Flag(help: "Announce the demo's code to gdb through the GDB JIT interface.") var gdb = false

        func validate() throws {
            guard (1...1_000_000).contains(functions) else { throw ValidationError("--functions must be 1 to 1,000,000, not \(functions)") }
            guard (0...1_000_000).contains(bpfPrograms) else { throw ValidationError("--bpf-programs must be 0 to 1,000,000, not \(bpfPrograms)") }
        }

        func run() throws {
            Observability.enable(perf: perf, gdb: gdb)
            var config = ExecMemConfiguration()
            config.backing = backing
            config.writeView = writeView
            if splitRange { config.layout = .defaultSplit }
            let report = try ExecMemTools.Demo.run(functions: functions, bpfPrograms: bpfPrograms, seed: seed, allocator: ExecMemAllocator(config))
            if json { try printJSON(report) } else { printDemo(report) }
            if !report.ok { throw ExitCode.failure }
        }
    }

    struct Doctor: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "doctor",
            abstract: "What this kernel offers (THP, MADV_COLLAPSE, hugetlb, memfd, membarrier, placement) and what ExecMem will do.")

        @Flag(help: "Print one JSON object instead of text.") var json = false

        func run() throws {
            let report = ExecMemTools.Doctor.run()
            if json { try printJSON(report) } else { printDoctor(report) }
        }
    }

    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench",
            abstract: "Benchmarks, each beside its baseline measured in the same run: \(ExecMemTools.Bench.names.joined(separator: ", ")).")

        @Argument(help: "One benchmark; all when omitted.") var name: String?
        @Option(help: "Scale the timed loops (0.1 for a quick look).") var scale = 1.0
        @Flag(help: "Print JSON instead of text.") var json = false
        @Flag(help: "Name the benchmarks' code for perf (the figures then include what the perf sinks cost).") var perf = false

        func validate() throws {
            guard scale.isFinite, scale > 0, scale <= 100 else { throw ValidationError("--scale must be a number above 0 and at most 100, not \(scale)") }
        }

        func run() throws {
            #if DEBUG
            FileHandle.standardError.write(Data("execmem bench: this is a debug build; use swift run -c release execmem bench\n".utf8))
            #endif
            if let name, !ExecMemTools.Bench.names.contains(name) {
                throw ValidationError("unknown benchmark '\(name)'; known: \(ExecMemTools.Bench.names.joined(separator: ", "))")
            }
            if perf { Observability.enable(perf: true) }
            let results = try ExecMemTools.Bench.run(name, scale: scale)
            if json { try printJSON(results) } else { printBench(results) }
        }
    }
}

extension Backing: ExpressibleByArgument {}
extension WriteViewMode: ExpressibleByArgument {}
