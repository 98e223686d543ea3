// The loader's integer ids for global names (GlobalNames) and its per-section arrays (SectionMap):
// ids are dense and stable, look-ups find exactly what was added, the table grows without losing a
// name, and names chosen to collide cost probes, not wrong answers.

@testable import ExecMemLoader
import Testing

@Suite struct SymbolTableTests {
    @Test func idsAreDenseStableAndFoundAgain() {
        var t = GlobalNames()
        let names = (0..<10_000).map { "sym_\($0)_\(String(repeating: "x", count: $0 % 40))" }
        let ids = names.map { t.id($0) }
        #expect(ids == (0..<Int32(names.count)).map { $0 })
        #expect(names.map { t.id($0) } == ids)  // a second mention gives the same id
        #expect(names.map { t.lookup($0) } == ids.map { Optional($0) })
        #expect(t.names == names)
        #expect(t.lookup("never_added") == nil)
        #expect(t.lookup("") == nil)
        #expect(t.id("") == Int32(names.count))
    }

    /// Names that all want one slot (picked here with the process's own hash; a file cannot aim at a
    /// seeded one, but the bound holds either way): all are found, and those past `maxProbes` go to
    /// the overflow dictionary (no run of probes is longer).
    @Test func namesChosenToCrowdOneSlotAreAllFound() {
        // 1,200 names whose hashes share their low 12 bits: one slot of every table up to 4,096.
        var crowd: [String] = []
        var n = 0
        while crowd.count < 1_200 {
            let name = "crowd_\(n)"
            if GlobalNames.hash(name) & 0xFFF == 0x5A5 { crowd.append(name) }
            n += 1
        }
        var t = GlobalNames()
        for (i, name) in crowd.enumerated() { #expect(t.id(name) == Int32(i)) }
        #expect(t.overflowCount >= crowd.count - GlobalNames.maxProbes)
        for (i, name) in crowd.enumerated() {
            #expect(t.lookup(name) == Int32(i))
            #expect(t.id(name) == Int32(i))
        }
        #expect(t.count == crowd.count)
        // Names that hash elsewhere still go in slots.
        let others = (0..<5_000).map { "other_\($0)" }
        for name in others { _ = t.id(name) }
        #expect(others.allSatisfy { t.lookup($0) != nil })
        #expect(crowd.enumerated().allSatisfy { t.lookup($0.element) == Int32($0.offset) })
    }

    @Test func sectionMapAnswersNilOutsideItsRows() {
        var m = SectionMap<Int>(sectionCounts: [3, 0, 2])
        m[Layout.SectionKey(object: 0, section: 2)] = 7
        m[Layout.SectionKey(object: 2, section: 0)] = 9
        #expect(m[Layout.SectionKey(object: 0, section: 2)] == 7)
        #expect(m[Layout.SectionKey(object: 2, section: 0)] == 9)
        #expect(m[Layout.SectionKey(object: 0, section: 0)] == nil)
        #expect(m[Layout.SectionKey(object: 1, section: 0)] == nil)  // an object without sections
        #expect(m[Layout.SectionKey(object: 0, section: 3)] == nil)  // past the row
        #expect(m[Layout.SectionKey(object: 0, section: -1)] == nil)
        #expect(m[Layout.SectionKey(object: 5, section: 0)] == nil)  // past the objects
    }
}
