// Options every command that runs code takes: --perf, --gdb and --backing, and the crash report
// they all install. `execmem selftest` runs code written and registered here, so perf and the crash
// report can be checked without any client.

import ArgumentParser
import ExecMem
import ExecMemLoader
import ExecMemTools
import Foundation
import Glibc

/// `--perf`, `--gdb`, `--backing`.
struct ObservabilityOptions: ParsableArguments {
    @Flag(help: "Name this run's code for perf: /tmp/perf-<pid>.map and jit-<pid>.dump (for perf inject --jit).") var perf = false
    @Flag(help: "Announce this run's code to gdb through the GDB JIT interface.") var gdb = false
    @Option(help: "Backing of the allocator code goes to: memfd, hugetlb or anonymous (default: the shared allocator's).") var backing: Backing?

    /// Switches the sinks on and installs the crash report; call before anything is loaded.
    func apply() {
        if let note = Observability.enable(perf: perf, gdb: gdb) {
            FileHandle.standardError.write(Data("execmem: \(note)\n".utf8))
        }
    }

    /// An allocator of the chosen backing, or nil for the process's shared one.
    func allocator() throws -> ExecMemAllocator? {
        guard let backing else { return nil }
        var c = ExecMemConfiguration()
        c.backing = backing
        do { return try ExecMemAllocator(c) } catch { throw fail(error.description) }
    }
}

struct SelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Run x86-64 written and registered by hand: a loop for perf, or a crash for the crash report.",
        shouldDisplay: false,
        subcommands: [Spin.self, Crash.self, LoadLoop.self])

    struct Spin: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "spin", abstract: "Spin in execmem_selftest_spin for a while.")
        @Option(help: "How long to spin.") var milliseconds = 500
        @OptionGroup var observe: ObservabilityOptions

        func run() throws {
            observe.apply()
            let code: SelfTestCode
            do { code = try SelfTestCode(allocator: try observe.allocator() ?? ExecMemAllocator.shared()) } catch { throw fail("\(error)") }
            print("pid \(getpid()): \(code.spin(milliseconds: milliseconds)) iterations")
        }
    }

    struct Crash: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "crash", abstract: "Call execmem_selftest_caller, which calls execmem_selftest_crash, which faults.")
        @Argument(help: "segv, ill or trap.") var how: SelfTestCode.Crash
        @OptionGroup var observe: ObservabilityOptions

        func run() throws {
            observe.apply()
            do { try SelfTestCode(allocator: try observe.allocator() ?? ExecMemAllocator.shared()).crash(how) } catch { throw fail("\(error)") }
            throw fail("execmem_selftest_crash returned")
        }
    }
}

extension SelfTestCode.Crash: ExpressibleByArgument {}

extension SelfTestCommand {
    /// Loads and unloads the same files again and again: something steady for a profiler.
    struct LoadLoop: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "load-loop", abstract: "Load and unload FILES N times (for perf record); print the fastest load.")
        @Argument(help: "Objects and archives, loaded as one module.") var files: [String]
        @Option(help: "How many loads.") var times = 100

        func run() throws {
            let loader = ModuleLoader()
            var best = Double.infinity, bestCPU = Double.infinity
            func cpu() -> Double {
                var ts = timespec()
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
                return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
            }
            for _ in 0..<max(1, times) {
                let t = DispatchTime.now().uptimeNanoseconds, c = cpu()
                let module: LoadedModule
                do { module = try loader.load(files: files) } catch { throw fail(error.description) }
                bestCPU = min(bestCPU, cpu() - c)
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t) / 1e6)
                module.unload()
            }
            print(String(format: "fastest load: %.3f ms wall, %.3f ms CPU (this thread)", best, bestCPU))
        }
    }
}
