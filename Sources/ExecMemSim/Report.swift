// The simulator's outputs: a table per workload for people, JSON for programs.

import ExecMem
import Foundation

public enum SimReport {
    static func mib(_ b: Int) -> String { String(format: "%.1f", Double(b) / Double(1 << 20)) }

    /// One table per workload: a row per policy.
    public static func table(_ results: [SimResult]) -> String {
        var out = ""
        for w in WorkloadKind.allCases {
            let rows = results.filter { $0.workload == w }
            guard let first = rows.first else { continue }
            out += "\n\(w.summary) (\(first.events) events\(first.modulesLoaded > 0 ? ", \(first.modulesLoaded) module loads" : ""))\n"
            var cells = [["policy", "text 2M/4K MiB", "rodata 2M/4K", "data 2M/4K", "code PTEs+PMDs", "direct-map splits",
                          "PMD splits", "reserved MiB", "used MiB", "waste", "peak range MiB", "failed loads"]]
            for r in rows {
                let m = r.final
                let t = ExecMemType.text.rawValue, ro = ExecMemType.rodata.rawValue, d = ExecMemType.data.rawValue
                let waste = m.reservedBytes == 0 ? 0 : Double(m.wasteBytes) / Double(m.reservedBytes)
                cells.append([r.policy.rawValue, "\(mib(m.hugeBytes[t]))/\(mib(m.smallBytes[t]))", "\(mib(m.hugeBytes[ro]))/\(mib(m.smallBytes[ro]))",
                              "\(mib(m.hugeBytes[d]))/\(mib(m.smallBytes[d]))", "\(m.textEntries)", "\(m.directMapSplits)", "\(m.pmdSplits)",
                              mib(m.reservedBytes), mib(m.usedBytes), String(format: "%.0f%%", waste * 100), mib(r.peakRangeUsed),
                              "\(r.moduleLoadFailures + r.otherFailures)"])
            }
            var widths = [Int](repeating: 0, count: cells[0].count)
            for row in cells { for (i, c) in row.enumerated() { widths[i] = max(widths[i], c.count) } }
            for row in cells {
                out += "  " + row.enumerated().map { i, c in
                    i == 0 ? c + String(repeating: " ", count: widths[i] - c.count) : String(repeating: " ", count: widths[i] - c.count) + c
                }.joined(separator: "  ") + "\n"
            }
        }
        return out
    }

    /// The results without the per-sample maps (which are for pictures), as one JSON document.
    public static func json(_ results: [SimResult], includeMaps: Bool = false) throws -> String {
        let trimmed = results.map { r -> SimResult in var r = r; if !includeMaps { r.maps = [] }; return r }
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try e.encode(trimmed), as: UTF8.self)
    }
}
