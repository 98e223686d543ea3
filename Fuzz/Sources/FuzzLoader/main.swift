// Fuzz target: the module loader's read, link, layout and relocation, without running any code
// (ModuleLoader.linkWithoutRunning: no constructor or destructor runs, the module is unloaded at once).
//
// One input may hold several loader inputs (objects or archives) separated by the 8-byte marker
// "\0FZNEXT\0" (LoaderInput.fuzzInputs: at most 4 are used); an input without the marker is one object.
//
// Inputs the loader would refuse at once (a part that is not an x86-64 relocatable object or an
// archive) are refused here first, by the same readers: every Link reads /proc/self/maps before it
// reads its inputs (about 1 ms), which would otherwise cap this target at ~800 inputs/s.
@_spi(Fuzzing) import ExecMemLoader
import ExecMem
import ExecMemELF

/// One allocator for the whole process, with a modest range: 64 MiB, no fallback.
let allocator: ExecMemAllocator = {
    var c = ExecMemConfiguration()
    c.rangeSize = 64 << 20
    c.fallbackSize = 0
    c.retainedEmptyBlocks = 1
    return try! ExecMemAllocator(c)
}()
/// Modules of at most 32 MiB: a file of a few KB may declare a .bss up to the loader's limit, and the
/// allocator commits (and, for 2 MiB pages, touches) what it hands out; 32 MiB keeps an input well
/// under the campaign's 512 MiB and 1 s.
let loader = ModuleLoader(allocator: allocator, moduleLimit: 32 << 20)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLoader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let inputs = LoaderInput.fuzzInputs(Array(UnsafeBufferPointer(start: data, count: size)))
    for input in inputs {
        if Archive.isArchive(input.bytes) {
            guard (try? Archive(bytes: input.bytes, name: input.name)) != nil else { return 0 }
        } else {
            guard let elf = try? ELFFile(bytes: input.bytes, name: input.name, machine: ELF.EM_X86_64), elf.type == ELF.ET_REL else { return 0 }
        }
    }
    try? loader.linkWithoutRunning(inputs, name: "fuzz")
    // Loaded or refused, nothing may be left allocated.
    for a in [allocator] + loader.placedAllocators {
        let live = a.statistics(readBack: false).total
        precondition(live.allocations == 0, "\(live.allocations) allocations left after \(inputs.map(\.bytes.count)) bytes of input")
    }
    return 0
}
