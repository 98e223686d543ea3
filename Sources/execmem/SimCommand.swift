// `execmem sim`: every policy on every workload from the real data, as tables, JSON and SVG.

import ArgumentParser
import ExecMemSim
import Foundation

extension FramePlacement: ExpressibleByArgument {}

/// "1G", "256M", "8388608".
func parseSize(_ s: String) -> Int? {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let u = s.last.flatMap({ units[Character($0.uppercased())] }) {
        guard let n = Int(s.dropLast()), n >= 0 else { return nil }
        let (v, overflow) = n.multipliedReportingOverflow(by: u)
        return overflow ? nil : v
    }
    return Int(s).flatMap { $0 >= 0 ? $0 : nil }
}

struct SimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Replay real kernel workloads on the seed's policies: legacy, legacy+pack, split range, typed blocks.")

    @Option(help: "Policies, comma-separated: \(PolicyKind.allCases.map(\.rawValue).joined(separator: ", ")).") var policies: String?
    @Option(help: "Workloads, comma-separated: \(WorkloadKind.allCases.map(\.rawValue).joined(separator: ", ")).") var workloads: String?
    @Option(help: "Modules loaded at boot.") var modules = 150
    @Option(help: "Seed for sampling modules and events.") var seed: UInt64 = 1
    @Option(help: "Size of the module range (e.g. 1G, 256M).") var rangeSize = "1G"
    @Option(help: "Where 4 KiB frames come from: scattered (a long-running server) or contiguous (fresh boot).") var physical: FramePlacement = .scattered
    @Option(help: "Data directory (modules.csv, bpf_programs.csv); the bundled copy by default.") var data: String?
    @Option(help: "Write SVG pictures into this directory.") var svg: String?
    @Flag(help: "Print JSON instead of tables.") var json = false
    @Flag(help: "No progress bar on standard error.") var quiet = false

    func validate() throws {
        guard (0...100_000).contains(modules) else { throw ValidationError("--modules must be 0 to 100,000, not \(modules)") }
        guard let range = parseSize(rangeSize), range >= 64 << 20, range <= 1 << 40 else {
            throw ValidationError("--range-size must be 64M to 1024G, not '\(rangeSize)'")
        }
    }

    func run() throws {
        guard let range = parseSize(rangeSize) else { throw ValidationError("bad --range-size '\(rangeSize)'") }
        func parse<T: RawRepresentable>(_ list: String?, _ all: [T]) throws -> [T] where T.RawValue == String {
            guard let list else { return all }
            return try list.split(separator: ",").map { name in
                guard let v = T(rawValue: String(name)) else { throw ValidationError("unknown '\(name)'; known: \(all.map(\.rawValue).joined(separator: ", "))") }
                return v
            }
        }
        let policyList = try parse(policies, PolicyKind.allCases), workloadList = try parse(workloads, WorkloadKind.allCases)
        var c = SimConfiguration()
        c.rangeSize = range
        c.framePlacement = physical
        c.workload.modules = modules
        c.workload.seed = seed
        let started = Date()
        do {
            let dataSet = try DataSet.load(directory: data)
            var lastDrawn = -1
            let results = try Simulation.runAll(policies: policyList, workloads: workloadList, data: dataSet, c) { label, fraction in
                guard !quiet else { return }
                let width = 30, done = Int(fraction * Double(width))
                if done == lastDrawn && fraction < 1 { return }
                lastDrawn = done
                let bar = String(repeating: "#", count: done) + String(repeating: ".", count: width - done)
                FileHandle.standardError.write(Data("\r[\(bar)] \(Int(fraction * 100))% \(label)            ".utf8))
                if fraction >= 1 { FileHandle.standardError.write(Data("\n".utf8)) }
            }
            if json {
                print(try SimReport.json(results))
            } else {
                print("ExecMem simulator: \(dataSet.modules.count) modules and \(dataSet.bpfSizes.count) BPF programs of real data; range \(rangeSize), seed \(seed), \(physical.rawValue) physical frames")
                for p in policyList { print("  \(p.rawValue): \(p.summary)") }
                print(SimReport.table(results), terminator: "")
                print(String(format: "%d runs in %.1f s", results.count, Date().timeIntervalSince(started)))
            }
            if let svg {
                let files = try SimSVG.write(results, to: svg)
                FileHandle.standardError.write(Data("wrote \(files.count) pictures to \(svg): \(files.joined(separator: ", "))\n".utf8))
            }
        } catch let e as SimError {
            throw fail(e.description)
        }
    }
}
