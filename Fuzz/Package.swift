// swift-tools-version: 6.1
// Coverage-guided fuzz targets for ExecMem's parsers of hostile input (libFuzzer).
// A separate package so that a plain `swift build` of the project never needs the fuzzer:
//
//   swift build -c release --sanitize=fuzzer --package-path Fuzz
//   Fuzz/run.sh elf 60            (see README.md)
//
// Each executable defines LLVMFuzzerTestOneInput; libFuzzer's runtime provides main (SwiftPM
// renames an executable's own entry point to <Target>_main on Linux, so the two do not clash).
import PackageDescription

let executables: [(String, [Target.Dependency])] = [
    ("FuzzELF", [.product(name: "ExecMemELF", package: "ExecMem")]),
    ("FuzzArchive", [.product(name: "ExecMemELF", package: "ExecMem")]),
    ("FuzzBPFELF", [.product(name: "ExecMemBPF", package: "ExecMem")]),
    ("FuzzLoader", [.product(name: "ExecMemLoader", package: "ExecMem"), .product(name: "ExecMem", package: "ExecMem")]),
    ("FuzzAssembler", [.product(name: "ExecMemBPF", package: "ExecMem")]),
    ("FuzzVerifier", [.product(name: "ExecMemBPF", package: "ExecMem")]),
]

let package = Package(
    name: "ExecMemFuzz",
    products: executables.map { .executable(name: $0.0, targets: [$0.0]) },
    dependencies: [.package(name: "ExecMem", path: "..")],
    targets: executables.map { .executableTarget(name: $0.0, dependencies: $0.1) },
    swiftLanguageModes: [.v6]
)
