// Pictures of the results, as plain SVG: a map of the module range over time for each workload (one
// panel per policy, one column per sample, one row per 2 MiB slot, coloured by type), bar charts of
// direct-map splits, page-table entries for code and waste per policy, and splits over time.

import ExecMem
import Foundation

public enum SimSVG {
    static let typeColors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]  // text, rodata, data, ro-after-init
    static let policyColors = ["#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e"]
    static let font = "font-family=\"Helvetica, Arial, sans-serif\""

    static func escape(_ s: String) -> String { s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;") }

    /// Writes every picture into `directory`; returns the file names.
    public static func write(_ results: [SimResult], to directory: String) throws -> [String] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var files: [(String, String)] = []
        for w in WorkloadKind.allCases {
            let rows = results.filter { $0.workload == w }
            if !rows.isEmpty { files.append(("map-\(w.rawValue).svg", map(rows, workload: w))) }
        }
        files.append(("splits.svg", bars(results, title: "Direct-map large pages split by permission changes", log: false) { Double($0.final.directMapSplits) }))
        files.append(("code-entries.svg", bars(results, title: "Page-table entries mapping code (4 KiB PTEs + 2 MiB PMDs), log scale", log: true) { Double($0.final.textEntries) }))
        files.append(("waste.svg", bars(results, title: "Waste: physical memory reserved but not used (MiB)", log: false) { Double($0.final.wasteBytes) / Double(1 << 20) }))
        files.append(("range.svg", bars(results, title: "Peak module range used (MiB)", log: false) { Double($0.peakRangeUsed) / Double(1 << 20) }))
        if let mixed = Optional(results.filter { $0.workload == .mixed }), !mixed.isEmpty {
            files.append(("splits-over-time.svg", lines(mixed, title: "Direct-map splits over the mixed workload") { Double($0.directMapSplits) }))
        }
        for (name, body) in files { try body.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
        return files.map(\.0)
    }

    /// The range over time: a panel per policy.
    static func map(_ results: [SimResult], workload: WorkloadKind) -> String {
        var used = 0
        for r in results { for m in r.maps { for (slot, t) in m.enumerated() where t >= 0 { used = max(used, slot) } } }
        let slots = results.first?.maps.first?.count ?? 1
        let rows: Int = min(slots, max(32, used + 4))
        let cell: Int = max(2, min(8, 480 / rows))
        let column: Int = 8
        let panelWidth: Int = (results.first?.maps.count ?? 1) * column
        let width = results.count * (panelWidth + 40) + 40, height = rows * cell + 110
        var s = header(width, height, "Module range over time, \(workload.rawValue) workload (first \(rows * 2) MiB)")
        for (p, r) in results.enumerated() {
            let x0 = 40 + p * (panelWidth + 40)
            s += "<text x=\"\(x0)\" y=\"58\" font-size=\"12\" \(font)>\(escape(r.policy.rawValue))</text>\n"
            s += "<rect x=\"\(x0)\" y=\"66\" width=\"\(panelWidth)\" height=\"\(rows * cell)\" fill=\"#f4f4f4\"/>\n"
            for (t, m) in r.maps.enumerated() {
                for slot in 0..<min(rows, m.count) where m[slot] >= 0 {
                    s += "<rect x=\"\(x0 + t * column)\" y=\"\(66 + slot * cell)\" width=\"\(column)\" height=\"\(cell)\" fill=\"\(typeColors[Int(m[slot])])\"/>\n"
                }
            }
        }
        s += legend(["text", "rodata", "data", "ro-after-init"], typeColors, y: height - 22)
        s += "<text x=\"40\" y=\"\(height - 36)\" font-size=\"11\" \(font)>time runs left to right; each row is one 2 MiB slot from the range's base</text>\n"
        return s + "</svg>\n"
    }

    /// Grouped bars: a group per workload, a bar per policy.
    static func bars(_ results: [SimResult], title: String, log: Bool, value: (SimResult) -> Double) -> String {
        let workloads = WorkloadKind.allCases.filter { w in results.contains { $0.workload == w } }
        let policies = PolicyKind.allCases.filter { p in results.contains { $0.policy == p } }
        let group = policies.count * 26 + 30, width = 80 + workloads.count * group, height = 360, plot = 240
        let maxValue = max(1, results.map(value).max() ?? 1)
        func scale(_ v: Double) -> Double { log ? Foundation.log10(v + 1) / Foundation.log10(maxValue + 1) : v / maxValue }
        var s = header(width, height, title)
        s += "<line x1=\"60\" y1=\"\(60 + plot)\" x2=\"\(width - 10)\" y2=\"\(60 + plot)\" stroke=\"#333\"/>\n"
        for (w, wk) in workloads.enumerated() {
            let x0 = 70 + w * group
            for (p, pk) in policies.enumerated() {
                guard let r = results.first(where: { $0.workload == wk && $0.policy == pk }) else { continue }
                let v = value(r), h = Int((scale(v) * Double(plot)).rounded())
                let x = x0 + p * 26
                s += "<rect x=\"\(x)\" y=\"\(60 + plot - h)\" width=\"22\" height=\"\(h)\" fill=\"\(policyColors[p % policyColors.count])\"/>\n"
                s += "<text x=\"\(x + 11)\" y=\"\(56 + plot - h)\" font-size=\"9\" text-anchor=\"middle\" \(font)>\(formatted(v))</text>\n"
            }
            s += "<text x=\"\(x0 + policies.count * 13)\" y=\"\(78 + plot)\" font-size=\"12\" text-anchor=\"middle\" \(font)>\(wk.rawValue)</text>\n"
        }
        s += legend(policies.map(\.rawValue), policyColors, y: height - 22)
        return s + "</svg>\n"
    }

    /// One line per policy over the samples of a workload.
    static func lines(_ results: [SimResult], title: String, value: (Measure) -> Double) -> String {
        let width = 640, height = 360, plot = 240
        let maxValue = max(1, results.flatMap { $0.history.map(value) }.max() ?? 1)
        let maxEvent = Double(max(1, results.map(\.events).max() ?? 1))
        var s = header(width, height, title)
        s += "<line x1=\"60\" y1=\"\(60 + plot)\" x2=\"\(width - 20)\" y2=\"\(60 + plot)\" stroke=\"#333\"/>\n"
        s += "<text x=\"56\" y=\"66\" font-size=\"10\" text-anchor=\"end\" \(font)>\(formatted(maxValue))</text>\n"
        for (p, r) in results.enumerated() {
            let points = r.history.map { m in
                "\(60 + Int(Double(m.event) / maxEvent * Double(width - 80))),\(60 + plot - Int(value(m) / maxValue * Double(plot)))"
            }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(policyColors[PolicyKind.allCases.firstIndex(of: r.policy)! % policyColors.count])\" stroke-width=\"2\" points=\"\(points)\"/>\n"
        }
        s += "<text x=\"\(width / 2)\" y=\"\(78 + plot)\" font-size=\"11\" text-anchor=\"middle\" \(font)>events</text>\n"
        s += legend(results.map(\.policy.rawValue), results.map { policyColors[PolicyKind.allCases.firstIndex(of: $0.policy)! % policyColors.count] }, y: height - 22)
        return s + "</svg>\n"
    }

    static func header(_ w: Int, _ h: Int, _ title: String) -> String {
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(w)\" height=\"\(h)\" viewBox=\"0 0 \(w) \(h)\">\n"
            + "<rect width=\"\(w)\" height=\"\(h)\" fill=\"white\"/>\n"
            + "<text x=\"20\" y=\"30\" font-size=\"16\" \(font)>\(escape(title))</text>\n"
    }

    static func legend(_ names: [String], _ colors: [String], y: Int) -> String {
        var s = ""
        for (i, n) in names.enumerated() {
            let x = 40 + i * 140
            s += "<rect x=\"\(x)\" y=\"\(y - 10)\" width=\"12\" height=\"12\" fill=\"\(colors[i % colors.count])\"/>"
            s += "<text x=\"\(x + 18)\" y=\"\(y)\" font-size=\"12\" \(font)>\(escape(n))</text>\n"
        }
        return s
    }

    static func formatted(_ v: Double) -> String {
        v >= 100 || v == v.rounded() ? String(Int(v.rounded())) : String(format: "%.1f", v)
    }
}
