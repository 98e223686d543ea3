// `execmem trace`: the call tree on standard error has the right counts per path, the program's
// output and exit status are its own, exit() from inside still prints the tree, and modules
// without patchable entries get a clear error.

import ExecMemTestSupport
import Foundation
import Testing

@Suite(.enabled(if: !compilers.isEmpty && FileManager.default.isExecutableFile(atPath: execmemBinary), "needs a C compiler and the execmem binary"))
struct TraceCommandTests {
    /// "calls depth name" for each line of the tree (columns: calls, total, self, then the name
    /// indented two spaces per level, from column 34).
    func rows(_ text: String) -> [String] {
        text.split(separator: "\n").compactMap { line -> String? in
            guard let calls = Int(line.prefix(10).trimmingCharacters(in: .whitespaces)), line.count > 34 else { return nil }
            let name = line.dropFirst(34)
            let depth = name.prefix { $0 == " " }.count / 2
            return "\(calls) \(depth) \(name.trimmingCharacters(in: .whitespaces))"
        }
    }

    /// The tree as "calls path" lines, sorted: the report orders siblings by time taken, which a
    /// busy machine can swap between two nearly equal ones; the tree itself must not change.
    func tree(_ text: String) -> [String] {
        var path: [String] = []
        return rows(text).map { row -> String in
            let f = row.split(separator: " ", maxSplits: 2).map(String.init)
            let depth = Int(f[1]) ?? 0
            path = Array(path.prefix(depth)) + [f[2]]
            return "\(f[0]) \(path.joined(separator: "/"))"
        }.sorted()
    }

    @Test(arguments: compilers)
    func callTreeCounts(compiler: String) throws {
        let dir = try scratch("execmem-trace")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compile(compiler, "\(fixtures)/traced.c", in: dir, flags: ["-O2", "-fpatchable-function-entry=5"])
        let r = try run(execmemBinary, ["trace", object, "--", "6"])
        #expect(r.status == 0)
        let expected: Int = (0..<6).map { $0 * 3 + 1 }.reduce(0, +) + 19
        #expect(r.output == "\(expected)\n")
        #expect(tree(r.errors) == ["1 main", "1 main/leaf", "1 main/middle", "6 main/middle/leaf"], "\(r.errors)")
        // Only functions matching the glob.
        let only = try run(execmemBinary, ["trace", object, "--functions", "le*", "--", "3"])
        #expect(rows(only.errors) == ["4 0 leaf"], "\(only.errors)")
        // exit() from inside a traced function: the tree is still printed, the status is the program's.
        let leaving = try run(execmemBinary, ["trace", object, "--", "2", "leave"], check: false)
        #expect(leaving.status == 7)
        #expect(leaving.output == "5\n", "leaf(0) + leaf(1)")
        #expect(rows(leaving.errors) == ["1 0 main", "1 1 middle", "2 2 leaf"], "\(leaving.errors)")
    }

    @Test func withoutPatchableEntries() throws {
        let dir = try scratch("execmem-trace")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = try compile(compilers[0], "\(fixtures)/traced.c", in: dir, flags: ["-O2"])
        let r = try run(execmemBinary, ["trace", object], check: false)
        #expect(r.status != 0)
        #expect(r.errors.contains("-fpatchable-function-entry=5"))
        let none = try run(execmemBinary, ["trace", object, "--functions", "nothing*"], check: false)
        #expect(none.status != 0 && none.errors.contains("no function matches"))
    }
}

@Suite(.enabled(if: !compilers.isEmpty && FileManager.default.isExecutableFile(atPath: execmemBinary), "needs a C compiler and the execmem binary"))
struct DeepTraceTests {
    /// A program recursing 50,000 deep: the call tree is merged, printed and freed without
    /// recursing on the host's stack (this overflowed it before), and the report stays linear.
    @Test func aFiftyThousandDeepRecursionIsTracedAndReported() throws {
        let dir = try scratch("execmem-deep")
        try "__attribute__((noinline)) int rec(int n) { return n == 0 ? 0 : 1 + rec(n - 1); }\nint main(void) { return rec(50000) == 50000 ? 0 : 1; }\n"
            .write(toFile: "\(dir)/deep.c", atomically: true, encoding: .utf8)
        let object = try compile(compilers[0], "\(dir)/deep.c", in: dir, flags: ["-O0", "-fpatchable-function-entry=5"])
        let r = try run(execmemBinary, ["trace", object], check: false)
        #expect(r.status == 0, "\(r.errors.suffix(300))")
        let rows = r.errors.split(separator: "\n").filter { $0.hasSuffix(" rec") }
        #expect(rows.count == 50_001, "every level of the recursion is a row")
        #expect(r.errors.contains("[depth 50000] rec"), "deep rows say their depth instead of indenting further")
        #expect(r.errors.utf8.count < 10 << 20, "the report is linear in the depth")
    }
}
