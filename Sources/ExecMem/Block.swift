// A committed run of blocks and the allocations in it. A packed block (one 2 MiB block) holds small
// allocations as runs of 64-byte chunks, marked in its bitmap; a large run (two or more blocks) holds
// exactly one allocation that starts at its base.
//
//   packed block, 2 MiB = 32,768 chunks of 64 B
//   +------+------+------+------+------+-----------------------------+
//   | A    | A    | free | B    | free |  ...  int3 (text) or zero   |
//   +------+------+------+------+------+-----------------------------+
//   bitmap  1      1      0      1      0
//   records [0: A (2 chunks)] [3: B (1 chunk)]
//
// Invariants (checked by `ExecMemAllocator.checkInvariants`):
//   - the bitmap's set bits are exactly the chunks of `records`, and `usedChunks` counts them;
//   - free chunks hold the type's fill byte (int3 for text, zero otherwise);
//   - a sealed record's pages are r-- (ro-after-init only; its records are whole pages);
//   - `openCount > 0` exactly when `openView` is set.

final class Block {
    let serial: UInt64
    let range: Int
    let slot: Int
    let run: CommittedRun
    /// Chunks in this run (32,768 per block).
    let chunkCount: Int
    var bitmap: ChunkBitmap
    /// Allocations by first chunk.
    var records: [Int32: Record] = [:]
    var usedChunks = 0
    /// Write views currently open on this run (single writes and batches), and the view's address.
    var openCount = 0
    var openView: UInt = 0
    var live = true

    struct Record {
        var id: UInt64
        var chunks: Int32
        var size: Int
        var kind: ExecMemKind
        var sealed: Bool
    }

    init(serial: UInt64, range: Int, slot: Int, run: CommittedRun) {
        self.serial = serial
        self.range = range
        self.slot = slot
        self.run = run
        chunkCount = run.length >> ExecMemGeometry.chunkShift
        bitmap = ChunkBitmap(count: run.length > ExecMemGeometry.blockSize ? 64 : chunkCount)
    }

    var base: UInt { run.address }
    var type: ExecMemType { run.type }
    var isLarge: Bool { run.length > ExecMemGeometry.blockSize }
    var isEmpty: Bool { records.isEmpty }
    var freeChunks: Int { chunkCount - usedChunks }

    /// Marks chunks taken from a free extent.
    func take(start: Int, chunks: Int) {
        bitmap.assign(true, start: start, length: chunks)
        usedChunks += chunks
    }

    /// Returns chunks to the bitmap and the free extents, merged with free neighbours.
    func give(start: Int, chunks: Int, to extents: inout FreeExtents) {
        bitmap.assign(false, start: start, length: chunks)
        usedChunks -= chunks
        let end = start + chunks
        let left = start > 0 && !bitmap[start - 1] ? (bitmap.lastSet(before: start).map { $0 + 1 } ?? 0) : start
        let right = end < chunkCount && !bitmap[end] ? (bitmap.firstSet(from: end, limit: chunkCount) ?? chunkCount) : end
        if left < start { extents.remove(self, start: left) }
        if right > end { extents.remove(self, start: end) }
        extents.insert(self, start: left, length: right - left)
    }
}
