// `execmem doctor`: what this kernel offers and what ExecMem will therefore do. Every answer comes
// from trying (a probe block committed and read back from smaps, a range reserved and released),
// not from version numbers.

import ExecMem
import ExecMemSystem

public struct DoctorReport: Codable, Sendable {
    public var kernel: KernelFeatures
    /// Where a default (1 GiB) range lands, and whether it reaches the executable.
    public var rangeBase: UInt?
    public var rangeSize: Int
    public var rangePlacement: String
    public var executable: HostImage?
    public var rangeReachesExecutable: Bool
    /// Largest distance from the range to the far end of the executable's image.
    public var maxDistanceToExecutable: UInt?
    /// Mappings ExecMem needs for a full default range (run view and write view per block), against
    /// the limit.
    public var mappingsNeededForFullRange: Int
    /// What ExecMem will do on this machine.
    public var plan: [String]
}

public enum Doctor {
    public static func run() -> DoctorReport {
        let k = KernelFeatures.probe()
        var base: UInt? = nil, placement = "not reserved", reaches = false, distance: UInt? = nil
        var image: HostImage? = HostImage.current()
        var config = ExecMemConfiguration()
        config.fallbackSize = 0
        do {
            let mem = try ExecMemAllocator(config)
            base = mem.primaryBase
            placement = mem.notes.first ?? ""
            reaches = mem.primaryReachesExecutable
            image = mem.hostImage
            if let i = image {
                let end = mem.primaryBase + UInt(mem.primarySize)
                distance = max(end, i.end) - min(mem.primaryBase, i.start)
            }
        } catch {
            placement = "failed: \(error)"
        }
        let blocks = config.rangeSize >> ExecMemGeometry.blockShift
        var plan: [String] = []
        if k.memfdWorks {
            plan.append("back blocks with a memfd per type; write text and rodata through a separate rw- view (persistent alias)")
        } else {
            plan.append("memfd is unavailable: back blocks with anonymous memory and flip whole blocks rw-/r-x to write")
        }
        if k.hugetlbPagesFree >= 1 {
            plan.append("\(k.hugetlbPagesFree) free hugetlb pages: the hugetlb backing (--backing hugetlb) guarantees 2 MiB pages")
        } else {
            plan.append("no hugetlb pages reserved (as root: echo N > /proc/sys/vm/nr_hugepages to use the hugetlb backing)")
        }
        if k.collapseOnMemfd {
            plan.append("collapse each block's run view to one 2 MiB page with MADV_COLLAPSE (works here although shmem THP is '\(k.shmemThpMode)')")
        } else {
            plan.append("MADV_COLLAPSE does not give memfd views 2 MiB pages here (\(k.collapseDetail)): blocks stay on 4 KiB pages, reported, not failed")
        }
        plan.append(reaches
            ? "place the range within rel32 of the executable: generated code calls host functions with call rel32"
            : "the range cannot reach the executable: calls to host functions go through an indirect call")
        switch k.membarrier {
        case .syncCore: plan.append("make new code visible to other threads with membarrier(PRIVATE_EXPEDITED_SYNC_CORE)")
        case .expedited: plan.append("make new code visible with membarrier(PRIVATE_EXPEDITED); its interrupt serializes each core")
        case .unavailable: plan.append("membarrier is unavailable: callers must serialize other threads themselves before they run new code")
        }
        if let limit = k.maxMapCount, limit < 4 * blocks {
            plan.append("vm.max_map_count \(limit) is low for a full range (\(2 * blocks) mappings): raise it or use a smaller range")
        }
        return DoctorReport(kernel: k, rangeBase: base, rangeSize: config.rangeSize, rangePlacement: placement,
                            executable: image, rangeReachesExecutable: reaches, maxDistanceToExecutable: distance,
                            mappingsNeededForFullRange: 2 * blocks, plan: plan)
    }
}
