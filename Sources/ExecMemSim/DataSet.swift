// The real data the simulator replays (../shared/data, bundled here as Resources/data): every module
// of Debian 12's 6.1 kernel with the bytes its loader gives each memory type, the symbol-table space
// it appends, and the sizes of real BPF programs. Rows are checked as they are read; a bad one is an
// error naming the file, line and column.

import Foundation

public enum SimError: Error, CustomStringConvertible, Sendable, Equatable {
    case data(file: String, line: Int, reason: String)
    case configuration(String)
    case io(String)

    public var description: String {
        switch self {
        case let .data(file, line, reason): "\(file):\(line): \(reason)"
        case let .configuration(what): "impossible configuration: \(what)"
        case let .io(what): what
        }
    }
}

/// One module's memory by type, in bytes (as `layout_sections()` of Linux 6.1 sizes them).
public struct ModuleRow: Sendable, Equatable {
    public var name: String
    public var text: Int, rodata: Int, roAfterInit: Int, data: Int
    public var initText: Int, initData: Int, initRodata: Int

    public init(name: String, text: Int, rodata: Int, roAfterInit: Int, data: Int, initText: Int, initData: Int, initRodata: Int) {
        self.name = name; self.text = text; self.rodata = rodata; self.roAfterInit = roAfterInit; self.data = data
        self.initText = initText; self.initData = initData; self.initRodata = initRodata
    }

    public var coreBytes: Int { text + rodata + roAfterInit + data }
    public var initBytes: Int { initText + initData + initRodata }
}

public struct DataSet: Sendable {
    public var modules: [ModuleRow]
    /// BPF programs' sizes in 8-byte instruction slots.
    public var bpfSizes: [Int]

    public init(modules: [ModuleRow], bpfSizes: [Int]) {
        self.modules = modules
        self.bpfSizes = bpfSizes
    }

    /// The bundled copy of the data.
    public static var bundledDirectory: String { (Bundle.module.resourcePath ?? Bundle.module.bundlePath) + "/data" }

    /// Reads `modules.csv` (with `modules_detail.csv` for the symbol tables, when present) and
    /// `bpf_programs.csv` from `directory`, which may be the shared data folder's layout
    /// (kernel-modules-6.1/, bpf-programs/) or a flat one.
    public static func load(directory: String? = nil, withSymbolTables: Bool = true) throws(SimError) -> DataSet {
        let dir = directory ?? bundledDirectory
        func find(_ file: String, _ sub: String) -> String? {
            [dir + "/" + file, dir + "/" + sub + "/" + file].first { FileManager.default.fileExists(atPath: $0) }
        }
        guard let modulesPath = find("modules.csv", "kernel-modules-6.1") else { throw .io("no modules.csv in \(dir)") }
        guard let bpfPath = find("bpf_programs.csv", "bpf-programs") else { throw .io("no bpf_programs.csv in \(dir)") }
        var modules = try parseModules(try read(modulesPath), file: "modules.csv")
        if withSymbolTables, let detail = find("modules_detail.csv", "kernel-modules-6.1") {
            let extra = try parseSymbolTables(try read(detail), file: "modules_detail.csv")
            for i in modules.indices {
                guard let (core, initial) = extra[modules[i].name] else { continue }
                modules[i].data = core
                modules[i].initData = initial
            }
        }
        return DataSet(modules: modules, bpfSizes: try parseBPF(try read(bpfPath), file: "bpf_programs.csv"))
    }

    static func read(_ path: String) throws(SimError) -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw .io("cannot read \(path)") }
        return text
    }

    /// Rows as dictionaries keyed by the header, with the line number (1 is the header).
    static func rows(_ text: String, file: String, required: [String]) throws(SimError) -> [(Int, [String: String])] {
        let lines = text.split(whereSeparator: \.isNewline).map(String.init)
        guard let header = lines.first?.split(separator: ",", omittingEmptySubsequences: false).map({ String($0).trimmingCharacters(in: .whitespaces) }) else {
            throw .data(file: file, line: 1, reason: "empty file")
        }
        for column in required where !header.contains(column) { throw .data(file: file, line: 1, reason: "missing column '\(column)'") }
        var out: [(Int, [String: String])] = []
        for (n, line) in lines.enumerated().dropFirst() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map { String($0).trimmingCharacters(in: .whitespaces) }
            guard fields.count == header.count else {
                throw .data(file: file, line: n + 1, reason: "\(fields.count) fields, the header has \(header.count)")
            }
            out.append((n + 1, Dictionary(zip(header, fields), uniquingKeysWith: { a, _ in a })))
        }
        if out.isEmpty { throw .data(file: file, line: 2, reason: "no rows") }
        return out
    }

    /// The most a size column may hold: a section of 1 GiB (the loader's module limit), or a BPF
    /// program of 1,000,000 instructions (the verifier's); sums and page counts stay far from overflow.
    static let maxBytes = 1 << 30, maxInstructions = 1_000_000

    static func int(_ row: [String: String], _ key: String, file: String, line: Int, limit: Int = maxBytes) throws(SimError) -> Int {
        guard let s = row[key], let v = Int(s), v >= 0 else {
            throw .data(file: file, line: line, reason: "column '\(key)' is '\(row[key] ?? "")', not a byte count")
        }
        guard v <= limit else { throw .data(file: file, line: line, reason: "column '\(key)' is \(v), more than the \(limit) the simulator takes") }
        return v
    }

    static func parseModules(_ text: String, file: String) throws(SimError) -> [ModuleRow] {
        let columns = ["module", "text", "rodata", "ro_after_init", "data", "init_text", "init_data", "init_rodata"]
        var out: [ModuleRow] = []
        for (line, r) in try rows(text, file: file, required: columns) {
            guard let name = r["module"], !name.isEmpty else { throw .data(file: file, line: line, reason: "empty module name") }
            out.append(ModuleRow(name: name, text: try int(r, "text", file: file, line: line), rodata: try int(r, "rodata", file: file, line: line),
                                 roAfterInit: try int(r, "ro_after_init", file: file, line: line), data: try int(r, "data", file: file, line: line),
                                 initText: try int(r, "init_text", file: file, line: line), initData: try int(r, "init_data", file: file, line: line),
                                 initRodata: try int(r, "init_rodata", file: file, line: line)))
        }
        return out
    }

    /// Module -> (data with its core symbol table, init data with its init symbol table).
    static func parseSymbolTables(_ text: String, file: String) throws(SimError) -> [String: (Int, Int)] {
        var out: [String: (Int, Int)] = [:]
        for (line, r) in try rows(text, file: file, required: ["module", "data_with_kallsyms", "init_data_with_kallsyms"]) {
            out[r["module"]!] = (try int(r, "data_with_kallsyms", file: file, line: line), try int(r, "init_data_with_kallsyms", file: file, line: line))
        }
        return out
    }

    static func parseBPF(_ text: String, file: String) throws(SimError) -> [Int] {
        try rows(text, file: file, required: ["insn_slots"]).map { (line, r) throws(SimError) -> Int in
            let v = try int(r, "insn_slots", file: file, line: line, limit: maxInstructions)
            guard v > 0 else { throw .data(file: file, line: line, reason: "a program of 0 instructions") }
            return v
        }
    }
}
