// BPF maps: array and hash maps that programs reach through Linux's helper numbers
// (bpf_map_lookup_elem 1, bpf_map_update_elem 2, bpf_map_delete_elem 3) and the host reaches
// through Swift methods. A map's values live in one slab allocated once, so a pointer a lookup hands
// to a program stays inside memory the bounds checks know (the slab is one region), whatever later
// updates and deletes do; ELF data sections (.rodata, .data, .bss) are array maps of one element.

import Glibc
import Synchronization

/// Map types, with Linux's numbers.
public enum BPFMapType: UInt32, Sendable, Codable {
    case hash = 1
    case array = 2
}

/// Linux's update flags.
public enum BPFUpdateFlag: UInt64, Sendable {
    case any = 0
    case noExist = 1
    case exist = 2
}

/// A map: values in one slab allocated (and zeroed) at creation, keys for hash maps.
///
/// Thread-safe: programs and the host may use it from any threads at once (hash maps index under a
/// lock; values are plain memory, as in Linux). It lives as long as the programs that hold it.
public final class BPFMap: @unchecked Sendable {
    /// The most memory one map may take (values and keys): 256 MiB. Larger definitions (from an
    /// ELF object's `maps` section, or a data section) are refused with a typed error.
    public static let maxBytes = 256 << 20

    /// The map's name (an ELF symbol or section name).
    public let name: String
    /// Hash or array.
    public let type: BPFMapType
    /// Bytes of a key (4 for arrays).
    public let keySize: Int
    /// Bytes of a value.
    public let valueSize: Int
    /// Entries it can hold.
    public let maxEntries: Int
    /// Read-only to programs (a .rodata section).
    public let readOnly: Bool
    /// Value slab: `maxEntries` values of `valueStride` bytes.
    let values: UnsafeMutableRawPointer
    let valueStride: Int
    /// Hash maps: key bytes per slot, and which slots are used, under `lock`.
    private let keys: UnsafeMutableRawPointer?
    private let lock = Mutex<HashIndex>(HashIndex())

    struct HashIndex {
        /// Key bytes -> slot.
        var slots: [[UInt8]: Int] = [:]
        /// Slots deleted and not yet reused (the last one is reused first), then slots never used,
        /// from `nextFresh` on: memory in proportion to the entries used, not to `maxEntries`.
        var free: [Int] = []
        var nextFresh = 0

        mutating func take(_ maxEntries: Int) -> Int? {
            if let slot = free.popLast() { return slot }
            guard nextFresh < maxEntries else { return nil }
            nextFresh += 1
            return nextFresh - 1
        }
    }

    /// The bytes a map of this shape takes (its value slab and, for hash maps, its key slab), or nil
    /// when that is not a number.
    static func footprint(type: BPFMapType, keySize: Int, valueSize: Int, maxEntries: Int) -> Int? {
        let stride = (valueSize + 7) & ~7
        let (bytes, o1) = stride.multipliedReportingOverflow(by: maxEntries)
        let (keyBytes, o2) = keySize.multipliedReportingOverflow(by: type == .hash ? maxEntries : 0)
        let (total, o3) = bytes.addingReportingOverflow(keyBytes)
        return o1 || o2 || o3 ? nil : total
    }

    /// A map with every value zero.
    /// - Throws: `BPFError.map` for non-positive or too large sizes (limits 2^26-byte values, 2^24 entries,
    ///   512-byte keys, `maxBytes` in all).
    public init(name: String, type: BPFMapType, keySize: Int, valueSize: Int, maxEntries: Int, readOnly: Bool = false) throws(BPFError) {
        guard keySize > 0, valueSize > 0, maxEntries > 0 else {
            throw .map(name: name, reason: "key size \(keySize), value size \(valueSize) and max entries \(maxEntries) must be positive")
        }
        if type == .array && keySize != 4 { throw .map(name: name, reason: "array maps take 4-byte keys, not \(keySize)") }
        guard valueSize <= 1 << 26, maxEntries <= 1 << 24, keySize <= 512 else {
            throw .map(name: name, reason: "too large (value \(valueSize), entries \(maxEntries), key \(keySize); limits 2^26, 2^24, 512)")
        }
        guard let bytes = Self.footprint(type: type, keySize: keySize, valueSize: valueSize, maxEntries: maxEntries), bytes <= Self.maxBytes else {
            throw .map(name: name, reason: "\(maxEntries) entries of \(valueSize)-byte values need more than the \(Self.maxBytes >> 20) MiB a map may have (BPFMap.maxBytes)")
        }
        self.name = name; self.type = type; self.keySize = keySize; self.valueSize = valueSize
        self.maxEntries = maxEntries; self.readOnly = readOnly
        valueStride = (valueSize + 7) & ~7
        // calloc: a large slab is fresh zero pages, taking memory only where it is used.
        guard let values = calloc(1, valueStride * maxEntries) else {
            throw .map(name: name, reason: "cannot allocate \(valueStride * maxEntries) bytes of values")
        }
        var keys: UnsafeMutableRawPointer? = nil
        if type == .hash {
            keys = malloc(keySize * maxEntries)
            guard keys != nil else {
                free(values)
                throw .map(name: name, reason: "cannot allocate \(keySize * maxEntries) bytes of keys")
            }
        }
        self.values = values
        self.keys = keys
    }

    deinit {
        free(values)
        free(keys)
    }

    /// The handle programs carry in registers (what `lddw` of a map loads).
    public var handle: UInt { UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque()) }

    /// The bytes programs may address: the value slab.
    var region: MemoryRegion {
        MemoryRegion(start: UInt(bitPattern: values), end: UInt(bitPattern: values) + UInt(valueStride * maxEntries), writable: !readOnly)
    }

    // MARK: - Program side (raw pointers, already bounds-checked by the caller)

    /// The value for the key at `key`, or nil.
    func lookup(key: UnsafeRawPointer) -> UnsafeMutableRawPointer? {
        switch type {
        case .array:
            let i = Int(key.loadUnaligned(as: UInt32.self))
            return i < maxEntries ? values + i * valueStride : nil
        case .hash:
            let k = Array(UnsafeRawBufferPointer(start: key, count: keySize))
            return lock.withLock { $0.slots[k] }.map { values + $0 * valueStride }
        }
    }

    /// Linux's return values: 0, or -EEXIST, -ENOENT, -E2BIG, -EINVAL, -EPERM.
    func update(key: UnsafeRawPointer, value: UnsafeRawPointer, flags: UInt64) -> Int64 {
        guard let flag = BPFUpdateFlag(rawValue: flags) else { return -22 }
        if readOnly { return -1 }
        switch type {
        case .array:
            let i = Int(key.loadUnaligned(as: UInt32.self))
            guard i < maxEntries else { return -7 }
            if flag == .noExist { return -17 }  // every array element exists
            (values + i * valueStride).copyMemory(from: value, byteCount: valueSize)
            return 0
        case .hash:
            let k = Array(UnsafeRawBufferPointer(start: key, count: keySize))
            let slot: Int? = lock.withLock { s -> Int? in
                if let existing = s.slots[k] { return flag == .noExist ? -17 : existing }
                if flag == .exist { return -2 }
                guard let fresh = s.take(maxEntries) else { return -7 }
                s.slots[k] = fresh
                return fresh
            }
            guard let slot, slot >= 0 else { return Int64(slot ?? -7) }
            keys!.advanced(by: slot * keySize).copyMemory(from: key, byteCount: keySize)
            (values + slot * valueStride).copyMemory(from: value, byteCount: valueSize)
            return 0
        }
    }

    func delete(key: UnsafeRawPointer) -> Int64 {
        switch type {
        case .array:
            return -22  // array elements cannot be deleted
        case .hash:
            if readOnly { return -1 }
            let k = Array(UnsafeRawBufferPointer(start: key, count: keySize))
            return lock.withLock { s -> Int64 in
                guard let slot = s.slots.removeValue(forKey: k) else { return -2 }
                s.free.append(slot)
                return 0
            }
        }
    }

    // MARK: - Host side

    /// The value for `key`, or nil. - Throws: `BPFError.map` for a key of the wrong size.
    public func lookup(_ key: [UInt8]) throws(BPFError) -> [UInt8]? {
        guard key.count == keySize else { throw .map(name: name, reason: "key of \(key.count) bytes, the map takes \(keySize)") }
        return key.withUnsafeBytes { k in lookup(key: k.baseAddress!).map { Array(UnsafeRawBufferPointer(start: $0, count: valueSize)) } }
    }

    /// Sets the value for `key` (Linux's flags). - Throws: `BPFError.map` for wrong sizes, a full map, or a flag refused.
    public func update(_ key: [UInt8], _ value: [UInt8], flag: BPFUpdateFlag = .any) throws(BPFError) {
        guard key.count == keySize, value.count == valueSize else {
            throw .map(name: name, reason: "key/value of \(key.count)/\(value.count) bytes, the map takes \(keySize)/\(valueSize)")
        }
        let r = key.withUnsafeBytes { k in value.withUnsafeBytes { v in update(key: k.baseAddress!, value: v.baseAddress!, flags: flag.rawValue) } }
        if r != 0 { throw .map(name: name, reason: "update failed with errno \(-r)") }
    }

    /// Removes `key` (hash maps). - Throws: `BPFError.map` when absent or for arrays.
    public func delete(_ key: [UInt8]) throws(BPFError) {
        guard key.count == keySize else { throw .map(name: name, reason: "key of \(key.count) bytes, the map takes \(keySize)") }
        let r = key.withUnsafeBytes { delete(key: $0.baseAddress!) }
        if r != 0 { throw .map(name: name, reason: "delete failed with errno \(-r)") }
    }

    /// Back to how `init` left it: no hash entries, every value zero, slots handed out in the same
    /// order again (so a differential test can replay a run over the same addresses).
    func reset() {
        values.initializeMemory(as: UInt8.self, repeating: 0, count: valueStride * maxEntries)
        lock.withLock { index in
            index = HashIndex()
        }
    }

    /// Number of entries (hash) or elements (array).
    public var count: Int { type == .array ? maxEntries : lock.withLock { $0.slots.count } }

    /// Writes raw bytes at `offset` of element 0 (ELF data sections at load time).
    func initialize(_ bytes: ArraySlice<UInt8>, at offset: Int) {
        bytes.withUnsafeBytes { (values + offset).copyMemory(from: $0.baseAddress!, byteCount: min($0.count, valueSize - offset)) }
    }
}

