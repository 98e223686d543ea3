// Hostile and arbitrary eBPF programs, for checking that the verifier and both engines hold up
// against programs that try to escape, not only against well-behaved ones (BPFProgramGenerator).
// Programs loop backwards (on a counter, on data, or forever), jump to function entries (main's
// instruction 0 included, thousands of times), nest local calls, recurse past the frame limit, use
// every memory the runtime knows (stack, context, map values) in and out of bounds, move pointers
// with scalars and from one region into another, read r1-r5 after calls and the stack before it is
// written, and call helpers by number and through callx. `BPFHostileTester` runs them on both engines.
//
// Most programs stay plausible for a Linux-like verifier: registers and the 64 bytes below r10 are
// written before they are read, pointers are dereferenced only at small offsets from r1 (kept in
// r6), r10 and map values, lookups are null-checked, pointers never reach r0, memory or a comparison,
// and loops are bounded. A program is hostile with probability `hostileFraction`; then 1 to 3 hostile
// shapes are let in. Every program records the shapes it holds.
//
//   main      r6 = context (r1), r7 = its length (r2), r9 = map value (optional), r0-r8 scalars
//   callees   r1 = scalar, or a pointer to 64 bytes of the caller's frame or to the context;
//             r0, r6-r9 written first (a callee gets them uninitialized, as on Linux)

import ExecMem

/// Deterministic hostile and arbitrary eBPF programs: `BPFHostileGenerator(seed:).generate()` always
/// gives the same program. A value type with no shared state: use one per thread.
public struct BPFHostileGenerator {
    // MARK: - Shapes and programs

    /// What a program contains; `BPFHostileTester` counts programs per shape.
    public struct Shape: OptionSet, Hashable, Sendable, CustomStringConvertible {
        /// One bit per shape.
        public let rawValue: UInt32
        /// A shape from its bit.
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// A BPFProgramGenerator program (valid by construction, every opcode class).
        public static let plain = Shape(rawValue: 1 << 0)
        /// A loop on a counter register, exit when it reaches 0.
        public static let counterLoop = Shape(rawValue: 1 << 1)
        /// A loop whose exit depends on context bytes (bounded by a mask, or on bytes it updates).
        public static let dataLoop = Shape(rawValue: 1 << 2)
        /// A loop that never exits: `ja -1`, `jeq rX, rX, -1`, an unmasked data loop.
        public static let infiniteLoop = Shape(rawValue: 1 << 3)
        /// A jump to a function's first instruction (main's 0 included), or into another function.
        public static let jumpToEntry = Shape(rawValue: 1 << 4)
        /// Local calls (call src=1), nested through several functions.
        public static let localCalls = Shape(rawValue: 1 << 5)
        /// A call of a function whose first instruction is also a jump target.
        public static let callToJumpTarget = Shape(rawValue: 1 << 6)
        /// Self or mutual recursion, some deeper than `BPF.maxCallDepth`.
        public static let recursion = Shape(rawValue: 1 << 7)
        /// Loads, stores and atomics through r10, or through a pointer into the caller's frame.
        public static let stackAccess = Shape(rawValue: 1 << 8)
        /// Reads of stack bytes never written (below the 64 written bytes, or before any write).
        public static let uninitializedStack = Shape(rawValue: 1 << 9)
        /// Loads, stores and atomics through the context pointer, in bounds.
        public static let contextAccess = Shape(rawValue: 1 << 10)
        /// Context accesses slightly or wildly out of bounds.
        public static let contextOutOfBounds = Shape(rawValue: 1 << 11)
        /// A pointer moved by a scalar register (constant or bounded by a mask) before an access.
        public static let pointerArithmetic = Shape(rawValue: 1 << 12)
        /// A pointer of one region moved into another (`r6 + (r10 - r6)`: the context pointer on the stack).
        public static let crossRegion = Shape(rawValue: 1 << 13)
        /// Map value pointers: a null-checked bpf_map_lookup_elem, or `lddw` src=2.
        public static let mapValue = Shape(rawValue: 1 << 14)
        /// bpf_map_update_elem and bpf_map_delete_elem.
        public static let mapUpdate = Shape(rawValue: 1 << 15)
        /// A lookup result used without its null check, or a map value accessed past its end.
        public static let uncheckedMap = Shape(rawValue: 1 << 16)
        /// Calls of the custom helper (`BPFProgramGenerator.helperNumber`).
        public static let helperCall = Shape(rawValue: 1 << 17)
        /// Reads of r1-r5 (and of every other register) after a call, before they are written.
        public static let clobberedRead = Shape(rawValue: 1 << 18)
        /// `call %rN` (callx), with a valid or an unknown helper number.
        public static let callx = Shape(rawValue: 1 << 19)
        /// Thousands of jumps to main's entry or a function's entry, or a jump into another function.
        public static let escapeEntry = Shape(rawValue: 1 << 20)
        /// Accesses above r10 or far below the frame, where a native stack keeps return addresses.
        public static let escapeFrame = Shape(rawValue: 1 << 21)
        /// An atomic at an offset its width does not divide.
        public static let misalignedAtomic = Shape(rawValue: 1 << 22)

        /// Every shape with its name, in report order.
        public static let named: [(Shape, String)] = [
            (.plain, "plain"), (.counterLoop, "counter-loop"), (.dataLoop, "data-loop"), (.infiniteLoop, "infinite-loop"),
            (.jumpToEntry, "jump-to-entry"), (.localCalls, "local-calls"), (.callToJumpTarget, "call-to-jump-target"),
            (.recursion, "recursion"), (.stackAccess, "stack"), (.uninitializedStack, "uninitialized-stack"),
            (.contextAccess, "context"), (.contextOutOfBounds, "context-out-of-bounds"), (.pointerArithmetic, "pointer-arithmetic"),
            (.crossRegion, "cross-region"), (.mapValue, "map-value"), (.mapUpdate, "map-update"), (.uncheckedMap, "unchecked-map"),
            (.helperCall, "helper-call"), (.clobberedRead, "clobbered-read"), (.callx, "callx"), (.escapeEntry, "escape-entry"),
            (.escapeFrame, "escape-frame"), (.misalignedAtomic, "misaligned-atomic"),
        ]
        /// The shapes only hostile programs get.
        public static let hostile: Shape = [.infiniteLoop, .recursion, .uninitializedStack, .contextOutOfBounds, .crossRegion,
                                            .uncheckedMap, .clobberedRead, .escapeEntry, .escapeFrame, .misalignedAtomic]
        /// The names of the shapes in this set, comma-separated.
        public var description: String { Self.named.filter { contains($0.0) }.map(\.1).joined(separator: ",") }
    }

    /// One generated program and what it runs over. Replay it with `BPFHostileGenerator(seed:)`.
    public struct Program: Sendable {
        /// The seed that generates it (and its maps' initial contents, `makeMaps(seed:)`).
        public let seed: UInt64
        /// The instructions, map references still in Linux's `lddw` src=1/src=2 form.
        public let code: [BPFInstruction]
        /// What the program contains.
        public let shapes: Shape
        /// The context memory (r1, r2) the program starts with: `contextSize` bytes.
        public let context: [UInt8]

        /// A program written by hand (its maps start from `makeMaps(seed:)`).
        public init(seed: UInt64 = 0, code: [BPFInstruction], shapes: Shape = [], context: [UInt8] = .init(repeating: 0, count: contextSize)) {
            self.seed = seed; self.code = code; self.shapes = shapes; self.context = context
        }
    }

    /// Bytes of context memory every program gets (the same as BPFProgramGenerator's).
    public static let contextSize = BPFProgramGenerator.memorySize
    /// The share of programs that are hostile when none is given.
    public static let defaultHostileFraction = 0.35
    /// Keys bpf_map_update_elem and bpf_map_delete_elem use on the hash map; a tester reads them back.
    public static let hashKeys: [UInt64] = [0, 1, 2, 3, 4, 5, 0x7FFF_FFFF, .max]  // what `st` of an imm32 can write
    /// The maps programs name by index in `lddw` src=1 and src=2: (name, type, key, value, entries).
    public static let mapDefinitions: [(String, BPFMapType, Int, Int, Int)] = [
        ("hostile_array", .array, 4, 32, 4), ("hostile_hash", .hash, 8, 16, 4), ("hostile_data", .array, 4, 64, 1),
    ]

    /// Fresh maps as `mapDefinitions` says, filled from `seed` (array values, hash keys 0 and 1), so
    /// that each engine's run starts from the same contents. Throws only if a definition is bad.
    public static func makeMaps(seed: UInt64) throws(BPFError) -> [BPFMap] {
        var maps: [BPFMap] = []
        for (name, type, key, value, entries) in mapDefinitions {
            maps.append(try BPFMap(name: name, type: type, keySize: key, valueSize: value, maxEntries: entries))
        }
        try fill(maps, seed: seed)
        return maps
    }

    /// Gives `maps` (from `makeMaps`, fresh or reset) their initial contents for `seed`.
    static func fill(_ maps: [BPFMap], seed: UInt64) throws(BPFError) {
        var rng = SplitMix64(state: seed ^ 0x4D41_5053)
        for (m, (_, type, key, value, entries)) in zip(maps, mapDefinitions) {
            for k in 0..<(type == .array ? entries : 2) {
                let keyBytes = (0..<key).map { UInt8(truncatingIfNeeded: k >> (8 * $0)) }
                try m.update(keyBytes, rng.bytes(value))
            }
        }
    }

    /// Probability that a program is hostile, 0...1.
    public var hostileFraction: Double

    /// A generator whose programs depend only on `seed` and `hostileFraction`.
    public init(seed: UInt64, hostileFraction: Double = defaultHostileFraction) {
        self.seed = seed
        self.hostileFraction = hostileFraction
        rng = SplitMix64(state: seed)
    }

    // MARK: - State

    enum Fixup { case offset, imm }
    enum Argument { case scalar, stack, context }
    enum Kind {
        case main
        case plain(Argument)
        /// Its entry is a loop head: r1 counts up to the limit.
        case selfLoop(limit: Int32)
        /// Calls itself (or its partner) while r1 < depth.
        case recursive(depth: Int32, partner: Int?)
        case partner(of: Int)
    }

    /// What the function being generated may use. Invariant: `writable` and `readable` hold scalars only.
    struct Scope {
        var function = 0
        var writable: [UInt8] = []
        var readable: [UInt8] = []
        var context: UInt8?
        var argStack = false
        var mapValue: (register: UInt8, room: Int)?
        var contextStoreEnd = BPFHostileGenerator.contextSize
    }

    let seed: UInt64
    var rng: SplitMix64
    var code: [BPFInstruction] = []
    /// Label -> instruction index, once placed.
    var labels: [Int?] = []
    var fixups: [(at: Int, label: Int, kind: Fixup)] = []
    var shapes: Shape = []
    /// The hostile shapes this program may contain.
    var allowed: Shape = []
    /// Whether this program uses maps (3 in 5 do), so that the rest run on any loader.
    var useMaps = false
    var functions: [(kind: Kind, entry: Int)] = []
    var scope = Scope()
    /// Functions some call site names (the others get a call at the end of main).
    var called: Set<Int> = []

    // MARK: - Programs

    /// Generates the program of this seed (the same one on every call).
    public mutating func generate() -> Program {
        rng = SplitMix64(state: seed)
        code = []; labels = []; fixups = []; shapes = []; allowed = []; called = []; functions = []
        let hostile = Double(rng.next() >> 11) / Double(1 << 53) < hostileFraction
        let context = rng.bytes(Self.contextSize)
        if !hostile && random(5) == 0 {
            var plain = BPFProgramGenerator(seed: rng.next())
            return Program(seed: seed, code: plain.generate(length: 20 + random(40)), shapes: .plain, context: context)
        }
        if hostile {
            let list = Self.Shape.named.map(\.0).filter { Shape.hostile.contains($0) }
            for _ in 0...random(3) { allowed.insert(list[random(list.count)]) }
        }
        useMaps = random(5) < 3 || allowed.contains(.uncheckedMap)
        functions = [(.main, newLabel())]
        for _ in 0..<random(4) { functions.append((.plain([.scalar, .scalar, .stack, .context][random(4)]), newLabel())) }
        if random(4) == 0 { functions.append((.selfLoop(limit: Int32(2 + random(14))), newLabel())) }
        if allowed.contains(.escapeEntry) && random(2) == 0 { functions.append((.selfLoop(limit: Int32(1000 + random(4000))), newLabel())) }
        if allowed.contains(.recursion) {
            let depth: Int32 = random(4) == 0 ? .max : Int32(3 + random(10))
            if random(2) == 0 {
                functions.append((.recursive(depth: depth, partner: nil), newLabel()))
            } else {
                functions.append((.recursive(depth: depth, partner: functions.count + 1), newLabel()))
                functions.append((.partner(of: functions.count - 1), newLabel()))
            }
        }
        for f in functions.indices { function(f) }
        for (at, label, kind) in fixups {
            let delta = labels[label]! - at - 1
            if kind == .offset { code[at].offset = Int16(truncatingIfNeeded: delta) } else { code[at].imm = Int32(delta) }
        }
        return Program(seed: seed, code: code, shapes: shapes, context: context)
    }

    mutating func function(_ f: Int) {
        place(functions[f].entry)
        scope = Scope(function: f)
        switch functions[f].kind {
        case .main: main()
        case let .plain(argument):
            scope.writable = [0, 2, 3, 4, 5, 6, 7, 8, 9]
            for r: UInt8 in [0, 6, 7, 8, 9] { constant(r) }
            switch argument {
            case .scalar: scope.writable.append(1)
            case .stack: scope.argStack = true
            case .context: scope.context = 1; scope.contextStoreEnd = 56  // main's re-entry counter may live at 56
            }
            scope.readable = scope.writable
            initializeStack()
            block(3 + random(10), depth: 1)
            exit()
        case let .selfLoop(limit):
            shapes.insert(limit > 100 ? [.jumpToEntry, .escapeEntry] : .jumpToEntry)
            aluK(BPF.ADD, 1, 1)
            movX(0, 1)
            for _ in 0..<random(3) { aluX([BPF.ADD, BPF.XOR, BPF.MUL][random(3)], 0, UInt8(2 + random(4))) }
            store(8, 10, -8, 1)
            load(8, 2, 10, -8)
            jump(BPF.JMP | BPF.JLT, 1, imm: limit, to: functions[f].entry)
            exit()
        case let .recursive(depth, partner):
            shapes.insert(.recursion)
            movX(0, 1)
            let done = newLabel()
            jump(BPF.JMP | BPF.JGE, 1, imm: depth, to: done)
            aluK(BPF.ADD, 1, 1)
            callLocal(functions[partner ?? f].entry)
            place(done)
            exit()
        case let .partner(of):
            aluK(BPF.ADD, 1, 1)
            callLocal(functions[of].entry)
            exit()
        }
    }

    /// main: re-entry counter (optional), prologue, body, re-entry jump (optional), exit.
    mutating func main() {
        let escape = allowed.contains(.escapeEntry) && random(2) == 0
        let reentry = escape || random(10) == 0
        if reentry {  // runs on every entry: bump the counter at context + 56
            load(8, 3, 1, 56)
            aluK(BPF.ADD, 3, 1)
            store(8, 1, 56, 3)
            scope.contextStoreEnd = 56
        }
        if allowed.contains(.uninitializedStack) && random(2) == 0 {  // the first stack read, before any write
            shapes.insert(.uninitializedStack)
            load(8, 8, 10, -8 * Int16(1 + random(8)))
            store(8, 1, Int16(8 * random(7)), 8)
        }
        for _ in 0..<random(3) { shapes.insert(.contextAccess); load(BPF.sizes[random(4)], 3, 1, Int16(random(56))) }
        movX(6, 1)
        movX(7, 2)
        scope.context = 6
        scope.writable = [0, 1, 2, 3, 4, 5, 7, 8]
        if useMaps && random(3) == 0 {
            shapes.insert(.mapValue)
            var map = [0, 2][random(2)]
            var offset = 8 * random(Self.mapDefinitions[map].3 / 8 - 1)
            if allowed.contains(.uncheckedMap) && random(2) == 0 {
                // Past element 0's value but inside the array's slab: what lies beyond the slab
                // differs from one set of maps to the next, so the two engines could not agree.
                shapes.insert(.uncheckedMap)
                map = 0
                offset = 32 + 8 * random(11)
            }
            let size = Self.mapDefinitions[map].3
            lddw(9, src: 2, UInt64(map) | UInt64(offset) << 32)
            if offset >= size { load(BPF.sizes[random(4)], 3, 9, 0) }
            scope.mapValue = (9, size - offset)
        } else {
            scope.writable.append(9)
        }
        scope.readable = scope.writable
        for r in scope.writable { constant(r) }
        initializeStack()
        block(escape ? 4 + random(8) : 8 + random(30), depth: 0)
        for f in functions.indices.dropFirst() where !called.contains(f) {  // no function is unreachable
            if case .partner = functions[f].kind { continue }
            call(f)
        }
        if reentry {
            shapes.insert(escape ? [.jumpToEntry, .escapeEntry] : .jumpToEntry)
            let out = newLabel()
            load(8, 3, 6, 56)
            aluK(BPF.AND, 3, escape ? Int32(1 << (10 + random(3))) - 1 : Int32(1 + 2 * random(2)))
            jump(BPF.JMP | BPF.JEQ, 3, imm: 0, to: out)
            movX(1, 6)
            movK(2, Int32(Self.contextSize))
            ja(functions[0].entry)
            place(out)
        }
        exit()
    }

    // MARK: - Blocks

    mutating func block(_ n: Int, depth: Int) {
        for _ in 0..<n { item(depth: depth) }
    }

    mutating func item(depth: Int) {
        switch random(24) {
        case 0...4: alu()
        case 5, 6: if depth < 3 { ifBlock(depth) } else { alu() }
        case 7: if depth < 2 { counterLoop(depth) } else { alu() }
        case 8: if depth < 2 { dataLoop(depth) } else { alu() }
        case 9...11: access()
        case 12: pointerArithmetic()
        case 13: spill()
        case 14: helperCall()
        case 15: localCall()
        case 16, 17: if useMaps { mapOperation() } else { access() }
        default: if !allowed.isEmpty { hostileItem(depth) } else { access() }
        }
    }

    mutating func alu() {
        let ops = [BPF.ADD, BPF.SUB, BPF.MUL, BPF.DIV, BPF.OR, BPF.AND, BPF.LSH, BPF.RSH, BPF.NEG, BPF.MOD, BPF.XOR, BPF.MOV, BPF.ARSH]
        let op = ops[random(ops.count)], cls = random(3) == 0 ? BPF.ALU : BPF.ALU64
        let d = writable(), signed: Int16 = (op == BPF.DIV || op == BPF.MOD) ? Int16(random(2)) : 0
        switch random(8) {
        case 0: if random(2) == 0 { emit(cls | BPF.END | (cls == BPF.ALU ? BPF.X : 0), d, imm: [16, 32, 64][random(3)]) }
                else { emit(BPF.ALU64 | BPF.MOV | BPF.X, d, readable(), offset: [8, 16, 32][random(3)]) }
        case 1: lddw(d, src: 0, rng.next())
        default:
            if op == BPF.NEG { emit(cls | op, d) }
            else if random(2) == 0 { emit(cls | op | BPF.X, d, readable(), offset: signed) }
            else { emit(cls | op, d, offset: signed, imm: imm()) }
        }
    }

    /// A forward conditional jump over a block, with an else block sometimes.
    mutating func ifBlock(_ depth: Int) {
        let ops = [BPF.JEQ, BPF.JGT, BPF.JGE, BPF.JSET, BPF.JNE, BPF.JSGT, BPF.JSGE, BPF.JLT, BPF.JLE, BPF.JSLT, BPF.JSLE]
        let opcode = (random(2) == 0 ? BPF.JMP : BPF.JMP32) | ops[random(ops.count)]
        dropArgumentPointer()  // a call on one path only would leave r1 a pointer on the other
        let skip = newLabel()
        if random(2) == 0 { jump(opcode | BPF.X, readable(), readable(), to: skip) } else { jump(opcode, readable(), imm: imm(), to: skip) }
        block(1 + random(4), depth: depth + 1)
        if random(3) == 0 {
            let end = newLabel()
            ja(end, wide: random(2) == 0)
            place(skip)
            block(1 + random(3), depth: depth + 1)
            place(end)
        } else {
            place(skip)
        }
    }

    /// do { body } while (--c != 0), or while (c != 0) { body; c-- } with the jump back a ja.
    mutating func counterLoop(_ depth: Int) {
        guard let c = counter() else { return alu() }
        shapes.insert(.counterLoop)
        movK(c, Int32(1 + random(8)))
        loop(counter: c, depth: depth)
    }

    /// A loop on min(context byte, 15), or one that bumps a context byte by 3 until it is 0 mod 8.
    mutating func dataLoop(_ depth: Int) {
        dropArgumentPointer()
        guard let base = scope.context, let c = counter() else { return counterLoop(depth) }
        shapes.insert(.dataLoop)
        let at = Int16(random(scope.contextStoreEnd))
        if random(2) == 0 {
            load(1, c, base, at)
            if allowed.contains(.infiniteLoop) && random(2) == 0 { shapes.insert(.infiniteLoop); load(4, c, base, Int16(random(60))) }
            else { aluK(BPF.AND, c, 15) }
            loop(counter: c, depth: depth, mayBeZero: true)
        } else {
            let head = newLabel()
            place(head)
            for _ in 0..<random(3) { alu() }  // a body with stores could keep resetting the byte
            load(1, c, base, at)
            aluK(BPF.ADD, c, 3)
            store(1, base, at, c)
            aluK(BPF.AND, c, 7)
            jump(BPF.JMP | BPF.JNE, c, imm: 0, to: head)
            release(c)
        }
    }

    /// `mayBeZero`: the counter may start at 0, so the test comes first.
    mutating func loop(counter c: UInt8, depth: Int, mayBeZero: Bool = false) {
        dropArgumentPointer()  // a call in the body would clobber it on the way back to the head
        let head = newLabel()
        if !mayBeZero && random(2) == 0 {
            place(head)
            block(1 + random(5), depth: depth + 1)
            aluK(BPF.SUB, c, 1)
            jump(BPF.JMP | [BPF.JNE, BPF.JSGT, BPF.JGT][random(3)], c, imm: 0, to: head)
        } else {
            let out = newLabel()
            place(head)
            jump(BPF.JMP | BPF.JEQ, c, imm: 0, to: out)
            block(1 + random(5), depth: depth + 1)
            aluK(BPF.SUB, c, 1)
            ja(head, wide: random(2) == 0)
            place(out)
        }
        release(c)
    }

    // MARK: - Registers, labels, encoding

    mutating func random(_ n: Int) -> Int { rng.below(n) }
    mutating func imm() -> Int32 { rng.immediate() }
    mutating func writable(except x: UInt8? = nil) -> UInt8 { pick(scope.writable, except: x) }
    mutating func readable(except x: UInt8? = nil) -> UInt8 { pick(scope.readable, except: x) }
    mutating func pick(_ from: [UInt8], except x: UInt8?) -> UInt8 {
        let c = from.filter { $0 != x }
        return c[random(c.count)]
    }
    /// A callee-saved scalar register for a loop counter, taken out of `writable` until released.
    mutating func counter() -> UInt8? {
        let c = scope.writable.filter { $0 >= 6 }
        guard !c.isEmpty else { return nil }
        let r = c[random(c.count)]
        scope.writable.removeAll { $0 == r }
        return r
    }
    mutating func release(_ r: UInt8) { scope.writable.append(r) }
    /// Ends the use of r1 as a pointer argument (it becomes a scalar).
    mutating func dropArgumentPointer() {
        guard scope.context == 1 || scope.argStack else { return }
        scope.context = scope.context == 1 ? nil : scope.context
        scope.argStack = false
        movK(1, imm())
        scope.writable.append(1); scope.readable.append(1)
    }
    mutating func constant(_ r: UInt8) { if random(2) == 0 { movK(r, imm()) } else { lddw(r, src: 0, rng.next()) } }
    mutating func initializeStack() { for k in 1...8 { storeImm(8, 10, Int16(-8 * k), imm()) } }
    mutating func offset(in range: Range<Int>, size: Int, align: Int) -> Int16 {
        let slots = (range.count - size) / align + 1
        return Int16(range.lowerBound + align * random(max(1, slots)))
    }

    mutating func newLabel() -> Int { labels.append(nil); return labels.count - 1 }
    mutating func place(_ l: Int) { labels[l] = code.count }

    mutating func emit(_ opcode: UInt8, _ dst: UInt8 = 0, _ src: UInt8 = 0, offset: Int16 = 0, imm: Int32 = 0) {
        code.append(BPFInstruction(opcode: opcode, dst: dst, src: src, offset: offset, imm: imm))
    }
    mutating func movK(_ d: UInt8, _ v: Int32) { emit(BPF.ALU64 | BPF.MOV, d, imm: v) }
    mutating func movX(_ d: UInt8, _ s: UInt8) { emit(BPF.ALU64 | BPF.MOV | BPF.X, d, s) }
    mutating func aluK(_ op: UInt8, _ d: UInt8, _ v: Int32) { emit(BPF.ALU64 | op, d, imm: v) }
    mutating func aluX(_ op: UInt8, _ d: UInt8, _ s: UInt8) { emit(BPF.ALU64 | op | BPF.X, d, s) }
    mutating func load(_ size: Int, _ d: UInt8, _ base: UInt8, _ at: Int16, signExtend: Bool = false) {
        emit(BPF.LDX | (signExtend && size < 8 ? BPF.MEMSX : BPF.MEM) | BPF.sizeBits(size), d, base, offset: at)
    }
    mutating func store(_ size: Int, _ base: UInt8, _ at: Int16, _ s: UInt8) { emit(BPF.STX | BPF.MEM | BPF.sizeBits(size), base, s, offset: at) }
    mutating func storeImm(_ size: Int, _ base: UInt8, _ at: Int16, _ v: Int32) { emit(BPF.ST | BPF.MEM | BPF.sizeBits(size), base, offset: at, imm: v) }
    mutating func jump(_ opcode: UInt8, _ d: UInt8, _ s: UInt8 = 0, imm: Int32 = 0, to label: Int) {
        emit(opcode, d, s, imm: imm)
        fixups.append((code.count - 1, label, .offset))
    }
    mutating func ja(_ label: Int, wide: Bool = false) {
        emit(wide ? BPF.JMP32 | BPF.JA : BPF.JMP | BPF.JA)
        fixups.append((code.count - 1, label, wide ? .imm : .offset))
    }
    mutating func callLocal(_ label: Int) {
        emit(BPF.JMP | BPF.CALL, 0, BPF.callLocal)
        fixups.append((code.count - 1, label, .imm))
    }
    mutating func exit() { emit(BPF.JMP | BPF.EXIT) }
    /// `lddw`: src 0 loads `v`; src 1 (BPF_PSEUDO_MAP_FD) map `v`'s handle; src 2 (BPF_PSEUDO_MAP_VALUE)
    /// the address of map `v & 0xFFFFFFFF`'s value at byte `v >> 32` (Linux's encoding).
    mutating func lddw(_ d: UInt8, src: UInt8, _ v: UInt64) {
        emit(BPF.LDDW, d, src, imm: Int32(truncatingIfNeeded: v))
        emit(0, imm: Int32(truncatingIfNeeded: v >> 32))
    }
}

extension BPF {
    /// Access sizes in bytes.
    static let sizes = [1, 2, 4, 8]
    /// The size field of a load or store of `bytes` bytes.
    static func sizeBits(_ bytes: Int) -> UInt8 { [1: B, 2: H, 4: W, 8: DW][bytes]! }
}
