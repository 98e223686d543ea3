// The x86-64 length decoder agrees with the toolchain's llvm-objdump on every instruction of several
// real binaries and archives on this machine.

import ExecMemProbes
import Foundation
import Testing

let objdump = "/opt/swift/usr/bin/llvm-objdump"

/// Instruction starts, lengths and the byte stream of every executable section, from llvm-objdump.
func disassemble(_ path: String) throws -> (bytes: [[UInt8]], starts: [[(Int, Int)]]) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: objdump)
    p.arguments = ["-d", path]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    var streams: [[UInt8]] = [], starts: [[(Int, Int)]] = []
    var bytes: [UInt8] = [], current: [(Int, Int)] = []
    var expected: UInt64? = nil
    var pendingPrefix = 0
    func flush() {
        pendingPrefix = 0
        if !bytes.isEmpty { streams.append(bytes); starts.append(current) }
        bytes = []; current = []
    }
    for line in data.split(separator: UInt8(ascii: "\n")) {
        // "    4000: 48 83 ec 08      \tsubq ..."
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), line.first == UInt8(ascii: " "),
              let address = UInt64(String(decoding: line[line.startIndex..<colon], as: UTF8.self).trimmingCharacters(in: .whitespaces), radix: 16) else {
            flush(); expected = nil
            continue
        }
        let rest = line[(colon + 1)...]
        let hexPart = rest.prefix { $0 != UInt8(ascii: "\t") }
        let text = String(decoding: rest.dropFirst(hexPart.count), as: UTF8.self)
        let insn = String(decoding: hexPart, as: UTF8.self).split(separator: " ").compactMap { UInt8($0, radix: 16) }
        guard !insn.isEmpty else { continue }
        if let e = expected, e != address { flush() }
        // objdump prints a lock/rep prefix on a line of its own: it belongs to the next instruction.
        if insn.count == 1 && [0xF0, 0xF2, 0xF3].contains(insn[0]) && !text.contains("(bad)") {
            pendingPrefix += 1
            bytes += insn
            expected = address + 1
            continue
        }
        // "(bad)" and data objdump could not decode are kept as bytes but not compared.
        if !text.contains("(bad)") && !text.contains("<unknown>") { current.append((bytes.count - pendingPrefix, insn.count + pendingPrefix)) }
        pendingPrefix = 0
        bytes += insn
        expected = address + UInt64(insn.count)
    }
    flush()
    return (streams, starts)
}

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: objdump), "needs the toolchain's llvm-objdump"))
struct DecoderTests {
    static let corpus = ["/usr/bin/ls", "/usr/lib/x86_64-linux-gnu/libz.a", "/usr/bin/python3.11",
                         "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/x86_64-linux-gnu/libsqlite3.a"]
        .filter { FileManager.default.fileExists(atPath: $0) }

    @Test(arguments: corpus)
    func lengthsMatchLLVMObjdump(path: String) throws {
        let (streams, starts) = try disassemble(path)
        var checked = 0, mismatches: [String] = []
        for (bytes, insns) in zip(streams, starts) {
            bytes.withUnsafeBytes { b in
                for (at, length) in insns {
                    let window = UnsafeRawBufferPointer(rebasing: b[at..<min(b.count, at + 15)])
                    let got = try? X86Decoder.decode(window)
                    if got?.length != length && mismatches.count < 10 {
                        mismatches.append("\(bytes[at..<min(bytes.count, at + length)].map { String(format: "%02x", $0) }.joined(separator: " ")): objdump \(length), decoder \(got.map { "\($0.length)" } ?? "error")")
                    }
                    checked += 1
                }
            }
        }
        #expect(checked > 1000, "\(path): \(checked) instructions")
        #expect(mismatches.isEmpty, "\(path): \(mismatches.joined(separator: "\n"))")
    }

    @Test func branchesAndRIPRelativeOperandsAreFound() throws {
        let call = try X86Decoder.decode([0xE8, 1, 0, 0, 0])
        #expect(call.branch == .call && call.branchDisplacementOffset == 1 && call.length == 5)
        let jcc = try X86Decoder.decode([0x0F, 0x84, 1, 0, 0, 0])
        #expect(jcc.branch == .conditional(short: false, condition: 4) && jcc.branchDisplacementOffset == 2)
        let short = try X86Decoder.decode([0x75, 0x10])
        #expect(short.branch == .conditional(short: true, condition: 5) && short.length == 2)
        let rip = try X86Decoder.decode([0x48, 0x8B, 0x05, 0x10, 0x20, 0, 0])  // mov rax, [rip + 0x2010]
        #expect(rip.ripDisplacementOffset == 3 && rip.length == 7)
        let ripImm = try X86Decoder.decode([0xC7, 0x05, 1, 0, 0, 0, 2, 0, 0, 0])  // mov dword [rip + 1], 2
        #expect(ripImm.ripDisplacementOffset == 2 && ripImm.length == 10)
        #expect(try X86Decoder.decode([0xC3]).endsFlow)
        #expect(try X86Decoder.decode([0xCC]).isTrap)
        #expect(try X86Decoder.decode([0xE2, 0x00]).branch == .loop)
        #expect(throws: X86DecodeError.invalid(opcode: 0x06, at: 0)) { try X86Decoder.decode([0x06]) }
        #expect(throws: X86DecodeError.truncated(at: 1)) { try X86Decoder.decode([0x48]) }
    }
}
