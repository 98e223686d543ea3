// `execmem trace FILE... [--functions GLOB] [--entry SYMBOL] [-- ARGS...]`: load and run a module as
// `execmem load` does, with entry and exit hooks on its matching functions, and print the call
// tree with counts and times on standard error when it ends (also when the program calls exit).

import ArgumentParser
import ExecMem
import ExecMemLoader
import ExecMemProbes
import Foundation
import Glibc

/// The tracer whose report is still to be printed, for the atexit handler.
nonisolated(unsafe) private var pendingTracer: CallTracer?

private func printPendingReport() {
    guard let t = pendingTracer else { return }
    pendingTracer = nil
    flushStandardIO()
    FileHandle.standardError.write(Data(t.report().utf8))
}

struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Load and run a module like `load`, tracing entry and exit of its functions; print the call tree on standard error.",
        discussion: "Functions need patchable entries: compile with -fpatchable-function-entry=5 (clang or gcc).")

    @Argument(help: "Objects (.o) and archives (.a), then -- and the program's arguments.") var inputs: [String]
    @Option(help: "Trace the functions whose names match this shell glob.") var functions = "*"
    @Option(help: "The function to call: int SYMBOL(int argc, char **argv).") var entry = "main"
    @OptionGroup var observe: ObservabilityOptions

    func run() throws {
        let (files, arguments) = try splitProgramArguments(inputs)
        observe.apply()
        let loader = ModuleLoader(allocator: try observe.allocator())
        let module: LoadedModule
        do { module = try loader.load(files: files) } catch { throw fail(error.description) }
        let tracer = CallTracer(hooks: FunctionHooks(allocator: module.allocator))
        let skipped: [String]
        do { skipped = try tracer.trace(module, matching: functions) } catch { throw fail(error.description) }
        if tracer.traced.isEmpty {
            let why = skipped.isEmpty ? "no function matches '\(functions)'"
                : "none of the \(skipped.count) matching functions has a patchable entry; compile with -fpatchable-function-entry=5"
            throw fail(why)
        }
        if !skipped.isEmpty {
            FileHandle.standardError.write(Data("execmem trace: \(skipped.count) matching functions have no patchable entry and are not traced\n".utf8))
        }
        pendingTracer = tracer
        atexit { printPendingReport() }
        let status: Int32
        do { status = try module.callMain(entry, arguments: [files[0]] + arguments) } catch { throw fail(error.description) }
        printPendingReport()
        try? tracer.stop()
        module.unload()
        flushStandardIO()
        Glibc.exit(status)
    }
}
