// What this kernel offers ExecMem, found by trying rather than by version numbers: the THP modes,
// whether MADV_COLLAPSE really gives a memfd's executable view a 2 MiB mapping (read back from smaps),
// the hugetlb pool, memfd itself, membarrier, and the mapping-count limit. `execmem doctor` prints it;
// tests use it to state why they skip.

import ExecMemSystem

public struct KernelFeatures: Sendable, Codable {
    public var kernelRelease: String
    /// `/sys/kernel/mm/transparent_hugepage/enabled` and `shmem_enabled`, the bracketed choice.
    public var thpMode: String
    public var shmemThpMode: String
    public var memfdWorks: Bool
    /// MADV_COLLAPSE on a memfd's r-x view gave `ShmemPmdMapped: 2048 kB`.
    public var collapseOnMemfd: Bool
    public var collapseDetail: String
    /// MADV_COLLAPSE on anonymous memory gave `AnonHugePages: 2048 kB`.
    public var collapseOnAnonymous: Bool
    public var hugetlbPagesTotal: Int
    public var hugetlbPagesFree: Int
    public var hugetlbPageSize: Int
    public var membarrier: Membarrier.Mode
    public var maxMapCount: Int?

    /// Probes the running kernel (maps and unmaps a few 2 MiB blocks).
    public static func probe() -> KernelFeatures {
        let meminfo = (try? Sys.readText("/proc/meminfo")) ?? ""
        func mem(_ key: String) -> Int {
            for line in meminfo.split(separator: "\n") where line.hasPrefix(key + ":") {
                let parts = line.split(separator: " ")
                if parts.count >= 2, let n = Int(parts[1]) { return parts.count > 2 && parts[2] == "kB" ? n * 1024 : n }
            }
            return 0
        }
        let memfd = (try? Sys.memfdCreate(name: "execmem-probe", flags: SysConst.mfdCloexec)).map { fd -> Bool in
            Sys.close(fd: fd); return true
        } ?? false
        let collapse = probeCollapse(memfd: true)
        return KernelFeatures(
            kernelRelease: ((try? Sys.readText("/proc/sys/kernel/osrelease")) ?? "unknown").trimmingCharacters(),
            thpMode: bracketed((try? Sys.readText("/sys/kernel/mm/transparent_hugepage/enabled")) ?? ""),
            shmemThpMode: bracketed((try? Sys.readText("/sys/kernel/mm/transparent_hugepage/shmem_enabled")) ?? ""),
            memfdWorks: memfd,
            collapseOnMemfd: collapse.works, collapseDetail: collapse.detail,
            collapseOnAnonymous: probeCollapse(memfd: false).works,
            hugetlbPagesTotal: mem("HugePages_Total"), hugetlbPagesFree: mem("HugePages_Free"),
            hugetlbPageSize: mem("Hugepagesize"),
            membarrier: Membarrier.register(),
            maxMapCount: Int(((try? Sys.readText("/proc/sys/vm/max_map_count")) ?? "").trimmingCharacters()))
    }

    /// Commits one text block with the memfd (or anonymous) backend in a private 4 MiB range and reads
    /// smaps back.
    static func probeCollapse(memfd: Bool) -> (works: Bool, detail: String) {
        let backend: any ExecMemBackend = memfd ? MemfdBackend() : AnonymousBackend()
        let size = 2 * ExecMemGeometry.blockSize
        guard let base = try? backend.reserve(size: size, at: nil) else { return (false, "cannot reserve a probe range") }
        defer { backend.release(base: base, size: size) }
        let run: CommittedRun
        do {
            run = try backend.commit(rangeBase: base, rangeSize: size, offset: 0, length: ExecMemGeometry.blockSize, type: .text)
        } catch {
            return (false, "commit failed: \(error)")
        }
        defer { backend.decommit(run) }
        let huge = backend.hugeMappedBytes(of: [run])[0]
        if huge == run.length { return (true, "a 2 MiB r-x view of a \(backend.name) block is mapped by one 2 MiB page") }
        return (false, run.note ?? "smaps shows \(huge) of \(run.length) bytes in 2 MiB mappings")
    }

    /// The bracketed choice in a sysfs mode file: `always [madvise] never` -> `madvise`.
    static func bracketed(_ text: String) -> String {
        guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close else {
            return text.trimmingCharacters()
        }
        return String(text[text.index(after: open)..<close])
    }
}

extension String {
    func trimmingCharacters() -> String {
        String(self.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
