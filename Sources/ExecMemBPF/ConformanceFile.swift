// The conformance suite's `.data` files: sections `-- asm`, `-- raw`, `-- mem`, `-- result`,
// `-- error` (others ignored), as ../shared/bpf-conformance/README.md describes.

public struct ConformanceTest: Sendable {
    public var name: String
    public var program: [BPFInstruction]
    public var memory: [UInt8]
    /// Expected r0 (the last `-- result` line), if any.
    public var result: UInt64?
    /// Expected error text, if the run must fail.
    public var error: String?

    public init(name: String, text: String) throws(BPFError) {
        self.name = name
        var sections: [String: [String]] = [:]
        var current: String? = nil
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let l = String(line)
            if l.hasPrefix("--") {
                current = String(l.dropFirst(2)).trimmed
                sections[current!, default: []] = sections[current!] ?? []
                continue
            }
            if let c = current { sections[c, default: []].append(l) }
        }
        if let raw = sections["raw"] {
            var insns: [BPFInstruction] = []
            for (n, line) in raw.enumerated() {
                let t = String(line.prefix { $0 != "#" }).trimmed
                if t.isEmpty { continue }
                guard let v = BPFAssembler.parseBits(t.hasPrefix("0x") ? t : "0x" + t) else {
                    throw .assembler(line: n + 1, text: t, reason: "bad raw instruction word")
                }
                insns.append(BPFInstruction(word: v))
            }
            program = insns
        } else if let asm = sections["asm"] {
            program = try BPFAssembler.assemble(asm.joined(separator: "\n"))
        } else {
            throw .malformed("\(name): no -- asm or -- raw section")
        }
        memory = []
        for line in sections["mem"] ?? [] {
            for tok in line.prefix(while: { $0 != "#" }).split(whereSeparator: { $0 == " " || $0 == "\t" }) {
                guard let b = UInt8(tok, radix: 16) else { throw .malformed("\(name): bad memory byte '\(tok)'") }
                memory.append(b)
            }
        }
        result = nil
        for line in sections["result"] ?? [] {
            let t = String(line.prefix { $0 != "#" }).trimmed
            if t.isEmpty { continue }
            let v = t.contains("0x") ? UInt64(t.replacingPrefix("0x"), radix: 16) : Int64(t).map { UInt64(bitPattern: $0) } ?? UInt64(t)
            guard let v else { throw .malformed("\(name): bad result '\(t)'") }
            result = v
        }
        let errorText = (sections["error"] ?? []).map(\.trimmed).filter { !$0.isEmpty }.joined(separator: " ")
        error = errorText.isEmpty ? nil : errorText
    }
}

extension String {
    func replacingPrefix(_ p: String) -> String { hasPrefix(p) ? String(dropFirst(p.count)) : self }
}

/// Runs conformance files the way the suite's runner does, with its one helper: number 5, which
/// returns its first argument and stops the program (r0 = 0) when that is 0.
public struct ConformanceRunner: Sendable {
    public let vm: BPFVM
    public let engine: BPFEngine

    public init(engine: BPFEngine, vm: BPFVM = BPFVM()) {
        self.vm = vm
        self.engine = engine
        vm.register(5, BPFHelper(name: "unwind", unwindsOnZero: true, c: { a, _, _, _, _ in a }))
    }

    public struct Outcome: Sendable {
        public let name: String
        public let passed: Bool
        public let detail: String
    }

    /// Runs one test; never throws (a failure is an outcome).
    public func run(_ test: ConformanceTest) -> Outcome {
        do throws(BPFError) {
            let program = try vm.load(test.program, name: test.name)
            let r0 = try program.run(bytes: test.memory, engine: engine)
            if let expected = test.error { return Outcome(name: test.name, passed: false, detail: "expected error '\(expected)', got r0 0x\(String(r0, radix: 16))") }
            guard let expected = test.result else { return Outcome(name: test.name, passed: true, detail: "") }
            return Outcome(name: test.name, passed: r0 == expected,
                           detail: r0 == expected ? "" : "r0 0x\(String(r0, radix: 16)), expected 0x\(String(expected, radix: 16))")
        } catch {
            if let expected = test.error, error.description.contains(expected) { return Outcome(name: test.name, passed: true, detail: "") }
            return Outcome(name: test.name, passed: false, detail: error.description)
        }
    }

    public func run(file path: String, text: String) -> Outcome {
        let name = String(path.split(separator: "/").last ?? Substring(path))
        do throws(BPFError) {
            return run(try ConformanceTest(name: name, text: text))
        } catch {
            return Outcome(name: name, passed: false, detail: error.description)
        }
    }
}
