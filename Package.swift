// swift-tools-version: 6.1
// ExecMem: one allocator for memory that holds code, for user space on Linux.
// Targets follow the data: C shim -> system layer -> allocator -> clients -> tools -> CLI.
import PackageDescription

let package = Package(
    name: "ExecMem",
    products: [
        .library(name: "ExecMem", targets: ["ExecMem"]),
        .library(name: "ExecMemBPF", targets: ["ExecMemBPF"]),
        .library(name: "ExecMemSim", targets: ["ExecMemSim"]),
        .library(name: "ExecMemELF", targets: ["ExecMemELF"]),
        .library(name: "ExecMemLoader", targets: ["ExecMemLoader"]),
        .library(name: "ExecMemProbes", targets: ["ExecMemProbes"]),
        .executable(name: "execmem", targets: ["execmem"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
    ],
    targets: [
        // Declarations Swift's Glibc module cannot see (memfd_create, MADV_COLLAPSE, membarrier).
        .target(name: "CExecMemShims"),
        // What debuggers and the unwinder look for by C name: the GDB JIT interface, __register_frame.
        .target(name: "CExecMemDebug"),
        // The commands' crash report: a signal handler naming faulting code from the registry's
        // signal-safe table.
        .target(name: "CExecMemCrash", dependencies: ["CExecMemDebug"]),
        // One Swift wrapper per kernel call; errno becomes a typed error naming the call.
        .target(
            name: "ExecMemSystem",
            dependencies: ["CExecMemShims", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // Ranges, types, blocks, packing, write views, statistics.
        .target(name: "ExecMem", dependencies: ["ExecMemSystem", "CExecMemDebug"]),
        // One ELF reader: headers, sections, symbols, relocations, ar archives.
        .target(name: "ExecMemELF"),
        // eBPF: assembler, ELF programs, maps, verifier, interpreter, x86-64 JIT into packed text.
        .target(
            name: "ExecMemBPF",
            dependencies: ["ExecMem", "ExecMemELF", .product(name: "Atomics", package: "swift-atomics")]
        ),
        // What the module loader needs from C: a static TLS arena, dladdr, dlsym.
        .target(name: "CExecMemLoaderRuntime"),
        // Relocatable objects and archives laid out by type, linked, run.
        .target(name: "ExecMemLoader", dependencies: ["ExecMem", "ExecMemSystem", "ExecMemELF", "CExecMemLoaderRuntime"]),
        // What probes need from C: the int3 handler of live patching, exit-hook shadow stacks.
        .target(name: "CExecMemProbeRuntime"),
        // Host functions with patchable entries, for tests, demo and benchmarks to hook.
        .target(name: "CExecMemProbeSamples"),
        // Text poking, entry hooks, live patches, instruction probes.
        .target(name: "ExecMemProbes", dependencies: ["ExecMem", "ExecMemSystem", "ExecMemLoader", "CExecMemProbeRuntime"]),
        // The simulator: the allocator core over a model of kernel page tables, on real workloads.
        .target(name: "ExecMemSim", dependencies: ["ExecMem"], resources: [.copy("Resources/data")]),
        // Doctor, demo and benchmarks as values, printed by the CLI and checked by tests.
        .target(
            name: "ExecMemTools",
            dependencies: ["ExecMem", "ExecMemSystem", "ExecMemBPF", "ExecMemSim", "ExecMemLoader", "ExecMemProbes", "CExecMemProbeSamples", "CExecMemCrash"],
            resources: [.copy("Resources/bpf"), .copy("Resources/module")]
        ),
        // Linked with the static Swift runtime and Foundation, so the dynamic loader binds four C
        // libraries at start instead of twenty Swift ones as well. The modules are compiled against the
        // shared Foundation, whose objects do not autolink the static Foundation's own parts: those are
        // named here. lld packs the 80,000 relative relocations of the position-independent image
        // (DT_RELR, glibc 2.36+), which gold cannot. Test targets only run the binary, so none links
        // this target (they would inherit the flags, and a test bundle needs the shared runtime the
        // test frameworks use).
        .executableTarget(
            name: "execmem",
            dependencies: ["ExecMemTools", "ExecMemSystem", "ExecMemBPF", "ExecMemSim", "ExecMemLoader", "ExecMemProbes", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            linkerSettings: [.unsafeFlags(["-static-stdlib", "-lCoreFoundation", "-l_FoundationICU", "-l_FoundationCShims",
                                           "-l_FoundationCollections", "-lswiftSynchronization",
                                           "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"])]
        ),
        // Helpers several test targets share (compilers, processes, scratch directories).
        .target(name: "ExecMemTestSupport", dependencies: ["ExecMem"], path: "Tests/ExecMemTestSupport"),
        // C++ host frames the loader's tests throw exceptions through and catch them in.
        .target(name: "CExecMemCxxHost", path: "Tests/CExecMemCxxHost"),
        .testTarget(name: "ExecMemSystemTests", dependencies: ["ExecMemSystem"]),
        .testTarget(name: "ExecMemTests", dependencies: ["ExecMem", "ExecMemSystem", "ExecMemELF", "CExecMemDebug"]),
        .testTarget(name: "ExecMemELFTests", dependencies: ["ExecMemELF"]),
        .testTarget(name: "ExecMemBPFTests", dependencies: ["ExecMemTestSupport", "ExecMemBPF", "ExecMem", "ExecMemSystem", "ExecMemTools"]),
        .testTarget(
            name: "ExecMemLoaderTests", dependencies: ["ExecMemTestSupport", "ExecMemLoader", "ExecMem", "ExecMemSystem", "ExecMemELF", "CExecMemCxxHost"],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "ExecMemProbesTests", dependencies: ["ExecMemTestSupport", "ExecMemProbes", "ExecMemLoader", "ExecMem", "ExecMemSystem", "CExecMemProbeSamples"],
            exclude: ["Fixtures"]
        ),
        .testTarget(name: "ExecMemSimTests", dependencies: ["ExecMemSim", "ExecMem"]),
        .testTarget(name: "ExecMemObservabilityTests", dependencies: ["ExecMemTestSupport", "ExecMemTools", "ExecMem", "ExecMemBPF", "CExecMemDebug"]),
        .testTarget(name: "ExecMemToolsTests", dependencies: ["ExecMemTools", "ExecMem", "ExecMemSystem"]),
    ],
    swiftLanguageModes: [.v6]
)
