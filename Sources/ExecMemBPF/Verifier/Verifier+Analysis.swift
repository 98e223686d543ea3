// The verifier's abstract interpreter: a worklist over basic blocks of every function, each block
// entered with the join of the states flowing into it (widened at loop headers after a few rounds,
// so the analysis ends), until nothing changes. Functions are analysed once for all their call
// sites: a callee starts from the join of its callers' argument registers, and a call site continues
// with the join of the callee's results (its summary). When the fixed point is reached, each
// instruction was last analysed in its final state, so what it recorded (the check its access needs,
// the registers it may read) holds on every path.
//
//   block   a run of instructions entered only at its first: function starts, jump targets and the
//           instruction after a jump, an exit or a local call begin one
//   summary what a function returns (r0, in its caller's frame terms) and whether it may write
//           stack memory outside its own frame (so callers must forget their spilled registers)

struct Analysis {
    let program: [BPFInstruction]
    var code: [BPFDecoded]
    let functions: [Int]
    let helpers: [Int32: BPFHelper]
    let maps: [BPFMap]
    let thresholds: Thresholds
    let limit: Int

    /// Function index of each instruction.
    var functionOf: [Int32]
    /// Block index of each instruction that starts a block, else -1.
    var blockAt: [Int32]
    var blockStart: [Int] = []
    var blockEnd: [Int] = []
    var isLoopHeader: [Bool]
    let hasBackEdge: Bool
    var entry: [AbstractState] = []
    var entered: [Bool] = []
    var visits: [Int] = []
    var queued: [Bool] = []
    var worklist = MinHeap()
    /// Block successors seen (for the termination check), each once.
    var successors: [[Int32]] = []

    struct Summary: Equatable {
        var result: AbstractValue? = nil
        var writesAbove = false
        var changes = 0
    }
    var summaries: [Summary]
    /// Blocks that end in a local call to each function.
    var callSites: [Set<Int>]
    var calls: [Set<Int>]

    var reached: [Bool]
    var readable: [UInt16]
    var needsZeroedStack = false
    var analysedBlocks = 0, analysedInstructions = 0
    /// Blocks with exactly one predecessor that is not a loop's back edge: analysed straight from it.
    var single: [Bool] = []
    var pending: [(Int, AbstractState)] = []

    /// Rounds of plain joins at a loop header or function entry before widening.
    static let joinsBeforeWidening = 1

    init(program: [BPFInstruction], code: [BPFDecoded], functions: [Int], helpers: [Int32: BPFHelper], maps: [BPFMap], limit: Int) {
        self.limit = limit
        self.program = program
        self.code = code
        self.functions = functions
        self.helpers = helpers
        self.maps = maps
        let n = program.count
        functionOf = [Int32](repeating: 0, count: n)
        var f = 0
        for i in 0..<n {
            while f + 1 < functions.count && functions[f + 1] <= i { f += 1 }
            functionOf[i] = Int32(f)
        }
        var constants: [Int64] = []
        var backEdge = false
        var leader = [Bool](repeating: false, count: n + 1)
        isLoopHeader = [Bool](repeating: false, count: n)
        for s in functions { leader[s] = true }
        for (i, d) in code.enumerated() {
            switch d.operation {
            case .jump(let c, _, let register):
                leader[Int(d.target)] = true
                leader[i + 1] = true
                if Int(d.target) <= i { isLoopHeader[Int(d.target)] = true; backEdge = true }
                if c != nil && !register { constants.append(d.imm) }
            case .exit, .callLocal:
                leader[i + 1] = true
            case .alu(_, _, false):
                constants.append(d.imm)
            default:
                break
            }
        }
        for s in functions { isLoopHeader[s] = true }  // recursion joins there
        thresholds = Thresholds(constants)
        hasBackEdge = backEdge
        blockAt = [Int32](repeating: -1, count: n)
        for i in 0..<n where leader[i] && !(i > 0 && program[i - 1].opcode == BPF.LDDW && code[i - 1].operation == .lddw) {
            blockAt[i] = Int32(blockStart.count)
            blockStart.append(i)
        }
        for k in blockStart.indices { blockEnd.append(k + 1 < blockStart.count ? blockStart[k + 1] : n) }
        // Predecessors of each block (function entries count as many: their callers join there).
        var predecessors = [Int](repeating: 0, count: blockStart.count)
        for s in functions { predecessors[Int(blockAt[s])] = 2 }
        for k in blockStart.indices {
            let last = blockEnd[k] - 1
            var p = last
            if p > 0 && code[p - 1].operation == .lddw && blockStart[k] <= p - 1 { p -= 1 }
            switch code[p].operation {
            case .jump(let c, _, _):
                predecessors[Int(blockAt[Int(code[p].target)])] += 1
                if c != nil && p + 1 < n { predecessors[Int(blockAt[p + 1])] += 1 }
            case .exit, .unreachable:
                break
            default:
                let next = p + (code[p].operation == .lddw ? 2 : 1)
                if next < n && blockAt[next] >= 0 { predecessors[Int(blockAt[next])] += 1 }
            }
        }
        // A block that ends in a local call is analysed again when its callee's summary changes,
        // from its kept entry state: it must keep one.
        let headers = isLoopHeader, starts = blockStart, ends = blockEnd, decoded = code
        single = starts.indices.map { k in
            predecessors[k] == 1 && !headers[starts[k]] && decoded[ends[k] - 1].operation != .callLocal
        }
        entry = [AbstractState](repeating: AbstractState.entry, count: blockStart.count)
        entered = [Bool](repeating: false, count: blockStart.count)
        successors = [[Int32]](repeating: [], count: blockStart.count)
        visits = [Int](repeating: 0, count: blockStart.count)
        queued = [Bool](repeating: false, count: blockStart.count)
        summaries = [Summary](repeating: Summary(), count: functions.count)
        callSites = [Set<Int>](repeating: [], count: functions.count)
        calls = [Set<Int>](repeating: [], count: functions.count)
        reached = [Bool](repeating: false, count: n)
        readable = [UInt16](repeating: 0, count: n)
    }

    // MARK: - The fixed point

    mutating func run() throws(BPFError) -> BPFVerifiedProgram {
        propagate(AbstractState.entry, to: 0, from: nil)
        while true {
            if let (b, state) = pending.popLast() {
                try analyse(block: b, state)
            } else if let b = worklist.pop() {
                queued[b] = false
                try analyse(block: b, entry[b])
            } else {
                break
            }
        }
        try checkTermination()
        var loopHeaders: [Int: UInt32] = [:]
        for (i, d) in code.enumerated() {
            if !reached[i] { code[i].operation = .unreachable; continue }
            if case .jump = d.operation, Int(d.target) <= i {
                let t = Int(d.target)
                loopHeaders[t] = max(loopHeaders[t] ?? 0, UInt32(i - t + 1))
            }
        }
        for (i, d) in code.enumerated() {
            if case .jump = d.operation, Int(d.target) <= i { code[i].charge = loopHeaders[Int(d.target)]! }
            if case .callLocal = d.operation {
                let g = Int(functionOf[Int(d.target)])
                code[i].charge = UInt32((g + 1 < functions.count ? functions[g + 1] : program.count) - functions[g])
            }
        }
        let zero = needsZeroedStack ? min(maxCallDepth(), BPF.maxCallDepth) * BPF.stackSize : 0
        var verified = BPFVerifiedProgram(instructions: program, code: code, functions: functions, stackZeroBytes: zero,
                                          readable: readable, loopHeaders: loopHeaders)
        verified.blocks = blockStart.count
        verified.blockAnalyses = analysedBlocks
        return verified
    }

    /// Joins `state` into the entry of the block at instruction `target`; queues it if that changed.
    /// A block entered from one place only is analysed next with `state` as it is (nothing to join,
    /// so its state need not be kept).
    mutating func propagate(_ state: consuming AbstractState, to target: Int, from: Int?) {
        let b = Int(blockAt[target])
        if let from, !successors[from].contains(Int32(b)) { successors[from].append(Int32(b)) }
        if single[b] && from != nil {
            pending.append((b, state))
            return
        }
        if entered[b] {
            visits[b] += 1
            // Plain joins first, then widening to the program's constants, then to the limits (a
            // counter stepping through every constant would otherwise take one round per constant).
            let widen: Thresholds? = !isLoopHeader[target] || visits[b] <= Self.joinsBeforeWidening ? nil
                : visits[b] <= 2 * Self.joinsBeforeWidening ? thresholds : Thresholds.none
            guard entry[b].join(state, widen: widen) else { return }
        } else {
            entry[b] = state
            entered[b] = true
        }
        if !queued[b] { queued[b] = true; worklist.push(b) }
    }

    mutating func analyse(block b: Int, _ state: AbstractState) throws(BPFError) {
        var s = state
        var i = blockStart[b]
        analysedBlocks += 1
        analysedInstructions += blockEnd[b] - i
        guard analysedInstructions <= limit else {
            throw fail(i, "the program is too complex to verify: the analysis went through \(limit) instructions without reaching a fixed point")
        }
        while i < blockEnd[b] {
            reached[i] = true
            readable[i] = s.readableMask
            let d = code[i]
            switch d.operation {
            case .jump(let condition, let wide, let register):
                try branch(&s, d, at: i, condition: condition, wide: wide, register: register, block: b)
                return
            case .exit:
                try exit(s, at: i)
                return
            case .callLocal:
                try callLocal(s, d, at: i, block: b)
                return
            case .lddw:
                transferLddw(&s, d, at: i)
                i += 2
                continue
            default:
                try transfer(&s, d, at: i)
            }
            i += 1
        }
        propagate(s, to: blockEnd[b], from: b)
    }

    // MARK: - Calls and exits

    mutating func exit(_ s: AbstractState, at i: Int) throws(BPFError) {
        let f = Int(functionOf[i])
        // Main returns r0 to the host; a function may return nothing (its caller may not read r0).
        // Main may also be called as a function: then it has a summary like any other.
        if f == 0 {
            guard s[0].isInitialized else { throw fail(i, "r0 is not initialized at exit") }
        }
        var r0 = s[0].crossingFunctions
        if case let .pointer(.stack, off) = r0 {
            if off.smin >= 0 {
                r0 = .pointer(.stack, Self.shift(off, -BPF.stackSize))
            } else if f == 0 {
                r0 = .uninitialized  // fine for the host; a caller of main may not read it
            } else {
                throw fail(i, "returns a pointer into its own stack frame, which is gone after the return")
            }
        }
        var sum = summaries[f]
        let joined = sum.result.map { old in sum.changes > Self.joinsBeforeWidening ? old.widened(to: old.join(r0), thresholds: sum.changes > 2 * Self.joinsBeforeWidening ? .none : thresholds) : old.join(r0) } ?? r0
        guard joined != sum.result else { return }
        sum.result = joined
        sum.changes += 1
        summaries[f] = sum
        for site in callSites[f] where !queued[site] { queued[site] = true; worklist.push(site) }
    }

    mutating func callLocal(_ s: AbstractState, _ d: BPFDecoded, at i: Int, block: Int) throws(BPFError) {
        let f = Int(functionOf[i]), g = Int(functionOf[Int(d.target)])
        callSites[g].insert(block)
        calls[f].insert(g)
        // The callee's view: r1-r5 as passed (stack pointers now point into its caller's frame),
        // a fresh frame, nothing else readable.
        var callee = AbstractState(registers: [AbstractValue](repeating: .uninitialized, count: 11))
        var passesStack = false
        for r in 1...5 {
            var v = s.registers[r].crossingFunctions
            if case let .pointer(.stack, off) = v { v = .pointer(.stack, Self.shift(off, BPF.stackSize)); passesStack = true }
            callee.registers[r] = v
        }
        callee.registers[10] = .pointer(.stack, .constant(0))
        callee.contextLength = s.contextLength
        propagate(callee, to: Int(d.target), from: nil)
        guard let result = summaries[g].result else { return }  // the callee has not returned yet
        var after = s
        after[0] = result
        for r: UInt8 in 1...5 { after[r] = .uninitialized }
        if passesStack || summaries[g].writesAbove { after.stack.spills = [] }
        if summaries[g].writesAbove { markWritesAbove(f) }
        propagate(after, to: i + 1, from: block)
    }

    /// Function `f` may write stack outside its own frame: its callers must forget their spills.
    mutating func markWritesAbove(_ f: Int) {
        guard !summaries[f].writesAbove else { return }
        summaries[f].writesAbove = true
        for site in callSites[f] where !queued[site] { queued[site] = true; worklist.push(site) }
    }

    // MARK: - Branches

    mutating func branch(_ s: AbstractState, _ d: BPFDecoded, at i: Int, condition: BPFCondition?, wide: Bool, register: Bool,
                         block: Int) throws(BPFError) {
        var s = s
        try branch(&s, d, at: i, condition: condition, wide: wide, register: register, block: block)
    }

    mutating func branch(_ s: inout AbstractState, _ d: BPFDecoded, at i: Int, condition: BPFCondition?, wide: Bool, register: Bool,
                         block: Int) throws(BPFError) {
        let target = Int(d.target)
        guard let condition else { propagate(s, to: target, from: block); return }
        let a = try read(s, d.dst, at: i)
        let b = register ? try read(s, d.src, at: i) : .constant(UInt64(bitPattern: d.imm))
        let (taken, notTaken) = refine(s, d, condition: condition, wide: wide, register: register, a, b)
        if let taken { propagate(taken, to: target, from: block) }
        if let notTaken { propagate(notTaken, to: i + 1, from: block) }
    }

    /// The states after the jump is taken and after it is not; nil for an edge no value can take.
    func refine(_ s: AbstractState, _ d: BPFDecoded, condition: BPFCondition, wide: Bool, register: Bool,
                _ a: AbstractValue, _ b: AbstractValue) -> (AbstractState?, AbstractState?) {
        // The same register on both sides.
        if register && d.dst == d.src {
            switch condition {
            case .eq, .ge, .le, .sge, .sle: return (s, nil)
            case .ne, .gt, .lt, .sgt, .slt: return (nil, s)
            case .set: return refine(s, d, condition: .ne, wide: wide, register: false, a, .constant(0))
            }
        }
        // A null test of a map lookup's result (64-bit compares only: a pointer's low half may be 0).
        if wide, case let .mapValueOrNull(m, id) = a, b.bounds?.constant == 0, condition == .eq || condition == .ne {
            func narrowed(null: Bool) -> AbstractState {
                var t = s
                let value: AbstractValue = null ? .constant(0) : .pointer(.map(m), .constant(0))
                if id != 0 {
                    t.mapValues { v in if case .mapValueOrNull(m, id) = v { return value }; return v }
                } else {
                    t[d.dst] = value
                }
                return t
            }
            return condition == .eq ? (narrowed(null: true), narrowed(null: false)) : (narrowed(null: false), narrowed(null: true))
        }
        guard case let .scalar(x, xl) = a, case let .scalar(y, yl) = b else { return (s, s) }
        // JMP32 sees the low halves: the same numbers when both fit (and are below 2^31 for signed).
        let comparable = wide || (x.fits32 && y.fits32 && (![.sgt, .sge, .slt, .sle].contains(condition) || (x.umax <= UInt64(Int32.max) && y.umax <= UInt64(Int32.max))))
        if !comparable {
            if let p = x.constant, let q = y.constant {
                let t = compare(condition, UInt64(UInt32(truncatingIfNeeded: p)), UInt64(UInt32(truncatingIfNeeded: q)), narrow: true)
                return t ? (s, nil) : (nil, s)
            }
            return (s, s)
        }
        func apply(_ c: BPFCondition?, holds: Bool) -> AbstractState? {
            guard let c else {  // `set` not taken: a & b == 0
                if let p = x.constant, let q = y.constant, p & q != 0 { return nil }
                return s
            }
            guard let (nx, ny) = Bounds.refine(c, x, y) else { return nil }
            var t = s
            t[d.dst] = .scalar(nx, length: xl)
            if register { t[d.src] = .scalar(ny, length: yl) }
            if xl { t.contextLength = max(t.contextLength, nx.umin) }
            if register && yl { t.contextLength = max(t.contextLength, ny.umin) }
            return t
        }
        return (apply(condition, holds: true), apply(condition == .set ? nil : condition.negated, holds: false))
    }

    // MARK: - Termination

    /// Rejects loops that no path leaves: a strongly connected set of blocks with no edge out and no exit.
    func checkTermination() throws(BPFError) {
        guard hasBackEdge else { return }  // no cycle without a jump back (calls are summarised)
        let successors = self.successors.map { $0.map(Int.init) }
        for sccBlocks in StronglyConnected.components(successors) {
            let members = Set(sccBlocks)
            let cyclic = sccBlocks.count > 1 || successors[sccBlocks[0]].contains(sccBlocks[0])
            guard cyclic else { continue }
            let leaves = sccBlocks.contains { b in
                successors[b].contains { !members.contains($0) } || code[blockEnd[b] - 1].operation == .exit
                    || (code[blockEnd[b] - 1].operation == .callLocal && summaries[Int(functionOf[Int(code[blockEnd[b] - 1].target)])].result == nil)
            }
            if !leaves {
                let first = sccBlocks.map { blockStart[$0] }.min()!, last = sccBlocks.map { blockEnd[$0] - 1 }.max()!
                throw fail(first, "infinite loop: no path from instructions \(first)...\(last) reaches an exit")
            }
        }
    }

    /// Deepest chain of calls from main, up to the limit (a cycle reaches it): level by level.
    func maxCallDepth() -> Int {
        var level: Set<Int> = [0], depth = 1
        while depth < BPF.maxCallDepth {
            var next = Set<Int>()
            for f in level { next.formUnion(calls[f]) }
            if next.isEmpty { break }
            level = next
            depth += 1
        }
        return depth
    }

    // MARK: - Helpers

    func fail(_ i: Int, _ why: String) -> BPFError {
        .verifier(index: i, reason: "\(why) (\(BPFDisassembler.text(program[i], next: i + 1 < program.count ? program[i + 1] : nil)))")
    }

    /// The value of register `r`, which must have been written.
    func read(_ s: AbstractState, _ r: UInt8, at i: Int) throws(BPFError) -> AbstractValue {
        let v = s[r]
        guard v.isInitialized else {
            let afterCall = (1...5).contains(r) ? " (r1-r5 are not preserved by calls: write it after the call)" : ""
            throw fail(i, "r\(r) is read before it is written on some path\(afterCall)")
        }
        return v
    }

    /// `b + delta` on offset bounds, unbounded on overflow.
    static func shift(_ b: Bounds, _ delta: Int) -> Bounds { Bounds.alu64(.add, b, .constant(UInt64(bitPattern: Int64(delta)))) }
}

/// A binary min-heap of block indices (blocks are analysed roughly in program order).
struct MinHeap {
    var items: [Int] = []
    mutating func push(_ v: Int) {
        items.append(v)
        var k = items.count - 1
        while k > 0 { let p = (k - 1) / 2; if items[p] <= items[k] { break }; items.swapAt(p, k); k = p }
    }
    mutating func pop() -> Int? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var k = 0
            while true {
                let l = 2 * k + 1, r = l + 1
                var m = k
                if l < items.count && items[l] < items[m] { m = l }
                if r < items.count && items[r] < items[m] { m = r }
                if m == k { break }
                items.swapAt(m, k); k = m
            }
        }
        return top
    }
}

/// Tarjan's strongly connected components, iterative (programs can hold a million blocks).
enum StronglyConnected {
    static func components(_ successors: [[Int]]) -> [[Int]] {
        let n = successors.count
        var index = [Int](repeating: -1, count: n), low = [Int](repeating: 0, count: n), onStack = [Bool](repeating: false, count: n)
        var stack: [Int] = [], out: [[Int]] = [], next = 0
        for root in 0..<n where index[root] < 0 {
            var work: [(node: Int, edge: Int)] = [(root, 0)]
            index[root] = next; low[root] = next; next += 1
            stack.append(root); onStack[root] = true
            while let (v, e) = work.last {
                if e < successors[v].count {
                    work[work.count - 1].edge += 1
                    let w = successors[v][e]
                    if index[w] < 0 {
                        index[w] = next; low[w] = next; next += 1
                        stack.append(w); onStack[w] = true
                        work.append((w, 0))
                    } else if onStack[w] {
                        low[v] = min(low[v], index[w])
                    }
                } else {
                    work.removeLast()
                    if let (p, _) = work.last { low[p] = min(low[p], low[v]) }
                    if low[v] == index[v] {
                        var c: [Int] = []
                        while true { let w = stack.removeLast(); onStack[w] = false; c.append(w); if w == v { break } }
                        out.append(c)
                    }
                }
            }
        }
        return out
    }
}
