// Fixtures of the loader tests; compilers, processes and scratch directories come from ExecMemTestSupport.

import ExecMemTestSupport
import Foundation

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// Compiles fixture `name.c` into `dir` with `flags`; returns the object's path.
func compile(_ compiler: String, _ name: String, in dir: String, flags: [String]) throws -> String {
    try ExecMemTestSupport.compile(compiler, "\(fixtures)/\(name).c", in: dir, flags: flags)
}
