// The chunk bitmap against a plain array of Bools, on random operations.

@testable import ExecMem
import Testing

@Suite struct ChunkBitmapTests {
    @Test func matchesAReferenceModel() {
        var rng = SplitMix64(state: 42)
        var bitmap = ChunkBitmap(count: 4096)
        var model = [Bool](repeating: false, count: 4096)
        var live: [(Int, Int)] = []
        for _ in 0..<4_000 {
            if rng.next() % 3 != 0 || live.isEmpty {
                let length = Int(rng.next() % 70) + 1
                let alignment = 1 << Int(rng.next() % 5)
                let expected = (0...(4096 - length)).first { s in s % alignment == 0 && !model[s..<(s + length)].contains(true) }
                let got = bitmap.findClearRun(length: length, alignment: alignment, from: 0)
                #expect(got == expected)
                if let s = got {
                    bitmap.assign(true, start: s, length: length)
                    for i in s..<(s + length) { model[i] = true }
                    live.append((s, length))
                }
            } else {
                let (s, length) = live.remove(at: Int(rng.next() % UInt64(live.count)))
                bitmap.assign(false, start: s, length: length)
                for i in s..<(s + length) { model[i] = false }
            }
        }
        #expect(bitmap.population == model.filter { $0 }.count)
        for i in stride(from: 0, through: 4096, by: 37) {
            #expect(bitmap.lastSet(before: i) == (0..<i).last { model[$0] }, "lastSet(before: \(i))")
        }
        #expect((0..<4096).allSatisfy { bitmap[$0] == model[$0] })
        var longest = 0, current = 0
        for b in model { current = b ? 0 : current + 1; longest = max(longest, current) }
        #expect(bitmap.longestClearRun == longest)
    }

    @Test func edges() {
        var b = ChunkBitmap(count: 128)
        #expect(b.findClearRun(length: 128, alignment: 1, from: 0) == 0)
        #expect(b.findClearRun(length: 129, alignment: 1, from: 0) == nil)
        b.assign(true, start: 63, length: 2)
        #expect(b.lastSet(before: 63) == nil && b.lastSet(before: 64) == 63 && b.lastSet(before: 128) == 64)
        #expect(b.firstSet(from: 0, limit: 128) == 63)
        #expect(b.firstClear(from: 63) == 65)
        #expect(b.findClearRun(length: 64, alignment: 1, from: 0) == nil)
        #expect(b.findClearRun(length: 63, alignment: 1, from: 0) == 0)
        #expect(b.findClearRun(length: 63, alignment: 1, from: 1) == 65)
        #expect(b.longestClearRun == 63)
        b.assign(true, start: 0, length: 128)
        #expect(b.firstClear(from: 0) == 128)
        #expect(b.findClearRun(length: 1, alignment: 1, from: 0) == nil)
    }
}

@Suite struct FreeExtentsTests {
    /// Allocating and freeing through an arena's extents keeps exactly one extent per maximal free run.
    @Test func extentsTrackTheBitmap() throws {
        let run = CommittedRun(address: 1 << 30, length: ExecMemGeometry.blockSize, type: .text, hugeMapped: false)
        var s = ArenaState(type: .text, slotsPerRange: 4)
        s.prepareTables()
        s.rangeBase[0] = 1 << 30
        s.blocks[0] = BlockState(id: 0, range: 0, slot: 0, serial: 1, run: run)
        s.owner[0] = 0
        s.committed.insert(0)
        s.addPackedBlock(0)
        var rng = SplitMix64(state: 5)
        var live: [(Int, Int)] = []
        for _ in 0..<5000 {
            if rng.next() % 5 < 3 || live.isEmpty {
                let n = Int(rng.next() % 300) + 1
                let alignment = 1 << Int(rng.next() % 4)
                let before = s.blocks[0].bitmap
                guard let (id, start) = s.takeChunks(n, alignment: alignment, range: 0) else { continue }
                #expect(id == 0 && start % alignment == 0)
                #expect(before.all(false, start: start, length: n))
                live.append((start, n))
            } else {
                let (start, n) = live.remove(at: Int(rng.next() % UInt64(live.count)))
                s.giveChunks(0, start: start, chunks: n)
            }
        }
        let block = s.blocks[0]
        var runs = 0, i = block.bitmap.firstClear(from: 0)
        while i < block.chunkCount {
            let end = block.bitmap.firstSet(from: i, limit: block.chunkCount) ?? block.chunkCount
            #expect(block.meta[i] & ArenaState.extentTag != 0)
            runs += 1
            i = block.bitmap.firstClear(from: end)
        }
        #expect(s.extents(of: 0).count == runs)
        for (start, n) in live { s.giveChunks(0, start: start, chunks: n) }
        #expect(s.extents(of: 0).count == 1)
        #expect(s.bins[15].first?.length == Int32(ExecMemGeometry.chunksPerBlock))
        #expect(s.binMasks[0] == 1 << 15)
    }
}
