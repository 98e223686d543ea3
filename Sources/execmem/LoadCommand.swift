// `execmem load FILE... [--entry SYMBOL] [-- ARGS...]`: run relocatable objects and archives as one
// module and exit with what its main returns.

import ArgumentParser
import ExecMem
import ExecMemLoader
import Foundation
import Glibc

struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Load ELF objects and archives as one module laid out by type, run int SYMBOL(argc, argv), exit with its result.")

    @Argument(help: "Objects (.o) and archives (.a), then -- and the program's arguments.") var inputs: [String]
    @Option(help: "The function to call: int SYMBOL(int argc, char **argv).") var entry = "main"
    @Flag(help: "Print where each section went (type, address, size) on standard error.") var map = false
    @Flag(help: "Print the allocator's statistics after the run on standard error.") var stats = false
    @OptionGroup var observe: ObservabilityOptions

    func run() throws {
        let (files, arguments) = try splitProgramArguments(inputs)
        observe.apply()
        let loader = ModuleLoader(allocator: try observe.allocator())
        let module: LoadedModule
        do {
            module = try loader.load(files: files)
        } catch {
            throw fail(error.description)
        }
        if map {
            var text = "module \(module.name): sections by type\n"
            for s in module.sections { text += "  \(s)\n" }
            for a in module.freedInitAllocations { text += "  freed after init: \(a.kind) 0x\(String(a.address, radix: 16)) \(a.size)\n" }
            FileHandle.standardError.write(Data(text.utf8))
        }
        let status: Int32
        do {
            status = try module.callMain(entry, arguments: [files[0]] + arguments)
        } catch {
            throw fail(error.description)
        }
        if stats {
            var text = ""
            for a in loader.allocators {
                a.settle()
                let s = a.statistics()
                text += "allocator at 0x\(String(a.primaryBase, radix: 16)) (\(s.backend), \(s.layout))\n"
                for t in s.types where t.blocks > 0 {
                    text += "  \(t.type): \(t.blocks) blocks, \(t.allocations) allocations, \(t.usedBytes) bytes used, \(t.freeBytes) free, 2 MiB pages \(percent(t.hugePageCoverage))\n"
                }
            }
            FileHandle.standardError.write(Data(text.utf8))
        }
        // As after a C program's main: destructors, then every stdio buffer flushed.
        module.unload()
        flushStandardIO()
        Glibc.exit(status)
    }
}

/// Splits `FILE... -- ARGS...`: everything after `--` is the program's (the parser hands it over
/// with the files).
func splitProgramArguments(_ inputs: [String]) throws -> (files: [String], arguments: [String]) {
    let all = CommandLine.arguments
    let arguments = all.firstIndex(of: "--").map { Array(all[($0 + 1)...]) } ?? []
    let files = Array(inputs.dropLast(min(arguments.count, inputs.count)))
    guard !files.isEmpty else { throw ValidationError("give at least one object or archive") }
    return (files, arguments)
}

private func percent(_ x: Double) -> String { "\(Int((x * 100).rounded()))%" }
