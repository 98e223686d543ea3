// Preparing fresh blocks off the allocation path. A 2 MiB text block needs its pages faulted in, 2 MiB
// of int3 and a MADV_COLLAPSE before all of it can be handed out; done at once, that is about 1.7 ms,
// paid by whichever allocation happened to need a new block (the first one of every program). So a
// commit prepares only what that allocation needs (64 KiB granules of int3), and the rest, collapse
// included, is a `PendingFinish` the allocator's serial background queue runs right after:
//
//   commit (caller)     [ prepared: faulted in, int3 | not yet handed out ..................... ]
//   finish (queue)        MADV_COLLAPSE (copies the prepared pages, holes become zeros),
//                         then int3 into the rest, through the write view, now one 2 MiB page
//   adopt (arena lock)  [ free space: one extent from the end of the last allocation to 2 MiB  ]
//
// Nothing else changes: the run view is r-x and the write view rw- from the start (no mapping is ever
// both, and none is made or changed afterwards, which perf would take for new code), and the kernel
// keeps the bytes of the prepared part while it collapses them under code that runs or is being
// written. Until the rest is filled it reads as zero, and nothing is handed out there. The finished run is adopted lazily, under the arena's lock, by whoever
// looks next: an allocation that does not fit the prepared part (it waits for the finish, or runs it
// itself if the queue has not started it), `statistics()`, `settle()`. The queue never takes an
// arena lock, so waiting for it under one cannot deadlock. Before a block is decommitted (released,
// or the allocator deinitialized) its finish is cancelled if it has not started, or waited for.

import Dispatch
import ExecMemSystem
import Synchronization

/// The rest of one block's preparation (`ExecMemBackend.finishCommit`), done once: by the allocator's
/// background queue, or by the first thread that needs the block before the queue gets to it.
final class PendingFinish: Sendable {
    private enum Phase: Sendable {
        case queued
        case running
        case finished(CommittedRun)
        case cancelled
    }

    let run: CommittedRun
    private let backend: any ExecMemBackend
    private let phase = Mutex<Phase>(.queued)
    /// Entered at creation, left once: when the work has finished or was cancelled before it started.
    private let over = DispatchGroup()

    init(run: CommittedRun, backend: any ExecMemBackend) {
        self.run = run
        self.backend = backend
        over.enter()
    }

    /// Runs the work unless it has started or been cancelled (the background queue's entry).
    func runIfQueued() {
        let claimed = phase.withLock { p -> Bool in
            guard case .queued = p else { return false }
            p = .running
            return true
        }
        guard claimed else { return }
        let finished = backend.finishCommit(run)
        phase.withLock { $0 = .finished(finished) }
        over.leave()
    }

    /// The finished run: the work runs here if it has not started, or is waited for if it runs
    /// elsewhere. Nil when it was cancelled.
    func finishNow() -> CommittedRun? {
        runIfQueued()
        over.wait()
        return result
    }

    /// The finished run if the work is done, without waiting.
    var result: CommittedRun? {
        phase.withLock { p -> CommittedRun? in
            if case let .finished(r) = p { return r }
            return nil
        }
    }

    /// Makes sure the work no longer touches the run: it will not start, or it has ended. Called
    /// before the run is decommitted.
    func cancel() {
        let cancelled = phase.withLock { p -> Bool in
            guard case .queued = p else { return false }
            p = .cancelled
            return true
        }
        if cancelled { over.leave() } else { over.wait() }
    }
}

extension ExecMemAllocator {
    /// Waits until every block committed so far is fully prepared: filled with its type's fill byte
    /// and collapsed to 2 MiB pages, or its collapse has failed and `notes` says why.
    ///
    /// A fresh block is prepared before `allocate` returns only as far as that allocation needs; the
    /// rest, and the collapse, run on a background queue right after, so `statistics()` taken just
    /// after the first allocations may show 4 KiB pages that are about to become 2 MiB ones. Call
    /// this before measuring huge-page coverage. Work the queue has not started runs on the calling
    /// thread. Safe from any thread, concurrently with every other call; it returns once the blocks
    /// committed before it was called are done (blocks committed meanwhile may still be pending).
    public func settle() {
        for arena in arenas {
            let pending = arena.withLock { s in s.unfinished.compactMap { s.blocks[$0].finishing } }
            if pending.isEmpty { continue }
            for f in pending { _ = f.finishNow() }
            arena.withLock { s in adoptFinished(&s) }
        }
    }

    /// Starts the rest of block `id`'s preparation on the background queue.
    func queueFinish(_ s: inout ArenaState, _ id: Int) {
        let f = PendingFinish(run: s.blocks[id].run, backend: backend)
        s.blocks[id].finishing = f
        s.unfinished.append(id)
        finisher.async { f.runIfQueued() }
    }

    /// Adopts every finish that is done, without waiting for the others.
    func adoptFinished(_ s: inout ArenaState) {
        for id in s.unfinished {
            if let run = s.blocks[id].finishing?.result { adopt(&s, id, run) }
        }
    }

    /// Finishes the pending blocks of range `r` now (waiting for the queue, or doing its work here),
    /// so that a request their prepared parts cannot hold can use them whole. Returns whether any
    /// block gained free chunks.
    func finishPending(_ s: inout ArenaState, range r: Int) -> Bool {
        var grew = false
        for id in s.unfinished where s.blocks[id].range == r {
            guard let run = s.blocks[id].finishing?.finishNow() else { continue }
            let before = s.blocks[id].readyChunks
            adopt(&s, id, run)
            grew = grew || s.blocks[id].readyChunks > before
        }
        return grew
    }

    /// Takes a finished run into block `id`: its newly prepared chunks become free space and its
    /// collapse outcome is counted.
    private func adopt(_ s: inout ArenaState, _ id: Int, _ run: CommittedRun) {
        s.unfinished.removeAll { $0 == id }
        s.blocks[id].finishing = nil
        s.blocks[id].run = run
        noteCollapse(&s, run)
        s.extendPrepared(id, to: run.preparedLength >> ExecMemGeometry.chunkShift)
    }

    /// Stops block `id`'s pending preparation before its run is decommitted.
    func cancelFinish(_ s: inout ArenaState, _ id: Int) {
        guard let f = s.blocks[id].finishing else { return }
        f.cancel()
        s.blocks[id].finishing = nil
        s.unfinished.removeAll { $0 == id }
    }

    /// Counts a run whose collapse failed, and notes the first failure of each type.
    func noteCollapse(_ s: inout ArenaState, _ run: CommittedRun) {
        guard !run.finishPending, !run.hugeMapped, run.type.wantsHugePages, let note = run.note else { return }
        s.collapseFailures += 1
        if s.collapseFailures == 1 { pool.withLock { $0.notes.append("\(run.type) at \(hex(run.address)): \(note)") } }
    }
}
