// The assembler and disassembler: every conformance program disassembles to text that assembles back
// to the same instructions, and the encodings of the newer forms are RFC 9669's.

@testable import ExecMemBPF
import Testing

@Suite struct AssemblerTests {
    @Test(.enabled(if: conformanceDirectory != nil, Comment(rawValue: conformanceMissing)))
    func disassemblyRoundTripsForEveryConformanceProgram() throws {
        for (name, text) in try conformanceFiles() {
            let program = try ConformanceTest(name: name, text: text).program
            let again = try BPFAssembler.assemble(BPFDisassembler.text(program))
            #expect(again == program, "\(name)")
        }
    }

    @Test func encodingsOfTheNewerForms() throws {
        let cases: [(String, BPFInstruction)] = [
            ("sdiv %r1, %r2", BPFInstruction(opcode: 0x3F, dst: 1, src: 2, offset: 1)),
            ("smod32 %r1, -3", BPFInstruction(opcode: 0x94, dst: 1, offset: 1, imm: -3)),
            ("movsx832 %r1, %r2", BPFInstruction(opcode: 0xBC, dst: 1, src: 2, offset: 8)),
            ("movsx3264 %r1, %r2", BPFInstruction(opcode: 0xBF, dst: 1, src: 2, offset: 32)),
            ("ldxsh %r1, [%r2-4]", BPFInstruction(opcode: 0x89, dst: 1, src: 2, offset: -4)),
            ("bswap32 %r3", BPFInstruction(opcode: 0xD7, dst: 3, imm: 32)),
            ("be16 %r3", BPFInstruction(opcode: 0xDC, dst: 3, imm: 16)),
            ("le64 %r3", BPFInstruction(opcode: 0xD4, dst: 3, imm: 64)),
            ("ja32 +2", BPFInstruction(opcode: 0x06, imm: 2)),
            ("call %r2", BPFInstruction(opcode: 0x8D, dst: 2)),
            ("call local +3", BPFInstruction(opcode: 0x85, src: 1, imm: 3)),
            ("lock fetch add [%r10-8], %r1", BPFInstruction(opcode: 0xDB, dst: 10, src: 1, offset: -8, imm: 0x01)),
            ("lock cmpxchg32 [%r1+4], %r2", BPFInstruction(opcode: 0xC3, dst: 1, src: 2, offset: 4, imm: 0xF1)),
            ("lock xchg [%r1+0], %r2", BPFInstruction(opcode: 0xDB, dst: 1, src: 2, imm: 0xE1)),
        ]
        for (text, expected) in cases {
            #expect(try BPFAssembler.assemble(text) == [expected], "\(text)")
            #expect(try BPFAssembler.assemble(BPFDisassembler.text(expected, next: nil)) == [expected], "\(text) round trip")
        }
        let lddw = try BPFAssembler.assemble("lddw %r0, 0x1122334455667788")
        #expect(lddw.map(\.word) == [0x5566_7788_0000_0018, 0x1122_3344_0000_0000])
        #expect(encodeProgram(lddw) == lddw.flatMap(\.bytes))
        #expect(try decodeProgram(encodeProgram(lddw)) == lddw)
    }
}
