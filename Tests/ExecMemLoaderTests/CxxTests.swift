// C++ programs (Fixtures/cxx) compiled at test time with g++ and clang++ at -O0, -O1 and -O2, run by
// `execmem load` as objects and as a main object with an archive of the rest, give the exit status,
// standard output and standard error of the same objects linked natively (g++, GNU ld): global
// constructors and destructors in order across objects (.init_array/.fini_array with priorities,
// init_priority, inline variables, template static members, function-local statics, std::atexit,
// and .ctors and .dtors), virtual calls, RTTI, dynamic_cast, COMDAT templates and inline functions
// (one copy), thread-safe statics, thread_local objects in main and a std::thread, exceptions
// across objects, and the host's libstdc++ (iostream, string, map, vector, thread, mutex).
// In process: two modules' exit handlers (__cxa_atexit and atexit, on each module's own
// __dso_handle) run at their own unload, once; the thread_local destructors of the unloading thread
// run at unload, a std::thread's at its exit, and those of a thread that outlives the module are
// dropped rather than run on freed code. Exceptions in process (within an object, across objects
// and modules, into the host) are UnwindTests'.

import ExecMemLoader
import ExecMemTestSupport
import Foundation
import Synchronization
import Testing

/// What modules' `cem_record` received (tests run in parallel: each filters by its own tag).
private let records = Mutex<[String]>([])
private let record: @convention(c) (UnsafePointer<CChar>?) -> Void = { p in
    let s = String(cString: p!)
    records.withLock { $0.append(s) }
}

private func recorded(_ tag: String) -> [String] { records.withLock { $0.filter { $0.hasPrefix(tag + " ") } } }

/// A tag no other test case uses, and a C identifier.
private func uniqueTag(_ v: CxxVariant, _ name: String) -> String {
    "\(name)\(v.isClang ? "clang" : "gcc")\(v.flags.joined().filter { $0.isLetter || $0.isNumber })\(UInt32.random(in: 0...UInt32.max))"
}

@Suite struct CxxTests {
    // A missing compiler's cases are left out of every C++ test (see cxxCompilers): these say so.
    @Test(.enabled(if: cxxCompilers.contains(gxx), "needs \(gxx): the C++ tests run without their g++ cases"))
    func gxxIsPresent() {}

    @Test(.enabled(if: cxxCompilers.contains(clangxx), "needs \(clangxx): the C++ tests run without their clang++ cases"))
    func clangxxIsPresent() {}

    @Test(arguments: CxxVariant.all)
    func constructorsAndDestructorsRunInNativeOrder(variant: CxxVariant) throws {
        let dir = try scratch()
        let objects = try variant.compile("ctors", ["main", "a", "b", "c"], in: dir)
        let objectsRun = try runNativeAndLoaded(objects, in: dir)
        expectSameRun(objectsRun, "\(variant) objects")
        expectSameRun(try runNativeAndLoaded(objects, in: dir, archive: true), "\(variant) archive")
        #expect(objectsRun.native.output.contains("destructor(101) a"), "the program ran to its last destructor")
        // Each destructor once.
        for line in objectsRun.loaded.output.split(separator: "\n") where line.hasPrefix("destroy") || line.hasPrefix("destructor") {
            #expect(objectsRun.loaded.output.components(separatedBy: "\(line)\n").count == 2, "\(line) once")
        }
    }

    /// .ctors/.dtors as clang -fno-use-init-array emits them (the constructors program) and as
    /// pointers placed by hand (both compilers): run where GNU ld puts them.
    @Test(arguments: CxxVariant.all)
    func ctorsAndDtorsSectionsRunAsWithGnuLd(variant: CxxVariant) throws {
        let dir = try scratch()
        let legacy = try variant.compile("legacy", ["a", "b"], in: dir)
        let run = try runNativeAndLoaded(legacy, in: dir)
        expectSameRun(run, "\(variant) .ctors by hand")
        #expect(run.native.output.hasPrefix("ctor b .ctors.65435\n") && run.native.output.hasSuffix("dtor b .dtors.65435\n"), "\(run.native.output)")
        if variant.isClang {
            let objects = try variant.compile("ctors", ["main", "a", "b", "c"], in: dir, extraFlags: ["-fno-use-init-array"])
            for o in objects { #expect(try ExecMemTestSupport.run("/usr/bin/readelf", ["-SW", o]).output.contains(".ctors"), "clang emitted .ctors in \(o)") }
            expectSameRun(try runNativeAndLoaded(objects, in: dir), "\(variant) -fno-use-init-array")
            expectSameRun(try runNativeAndLoaded(objects, in: dir, archive: true), "\(variant) -fno-use-init-array, archive")
        }
    }

    @Test(arguments: CxxVariant.all)
    func virtualCallsRTTIAndCOMDATCopiesAcrossObjects(variant: CxxVariant) throws {
        let dir = try scratch()
        let objects = try variant.compile("features", ["main", "shapes"], in: dir)
        let run = try runNativeAndLoaded(objects, in: dir)
        expectSameRun(run, "\(variant) objects")
        expectSameRun(try runNativeAndLoaded(objects, in: dir, archive: true), "\(variant) archive")
        #expect(run.loaded.output.contains("one copy: twice<int> 1 twice<double> 1 counter 1 inline 1"), "\(run.loaded.output)")
        #expect(run.loaded.output.contains("guarded 42 42 42 42 constructions 1\n~Guarded 1\n"), "\(run.loaded.output)")
    }

    /// Non-trivial thread_local objects from main and a std::thread; -fPIC too (general-dynamic TLS,
    /// __tls_get_addr). The main thread's destructors run at unload (they ran from exit(), on the
    /// freed module: SIGTRAP); the std::thread reads the .tdata value (it read 0).
    @Test(arguments: CxxVariant.all + cxxCompilers.map { CxxVariant(compiler: $0, flags: ["-O2", "-fPIC"]) })
    func threadLocalObjectsInMainAndAStdThread(variant: CxxVariant) throws {
        let dir = try scratch()
        let objects = try variant.compile("threadlocal", ["main", "tl"], in: dir)
        let run = try runNativeAndLoaded(objects, in: dir)
        expectSameRun(run, "\(variant)")
        #expect(run.native.output.hasSuffix("~Tracked(global) 2\n~Tracked(local) 1\n"), "\(run.native.output)")
    }

    @Test(arguments: CxxVariant.all)
    func exceptionsAcrossObjectsAsNative(variant: CxxVariant) throws {
        let dir = try scratch()
        let objects = try variant.compile("exceptions", ["main", "thrower"], in: dir)
        let run = try runNativeAndLoaded(objects, in: dir)
        expectSameRun(run, "\(variant)")
        #expect(run.native.output.contains("exception_ptr app"))
    }

    @Test(arguments: CxxVariant.all)
    func hostLibstdcxxIostreamContainersThreads(variant: CxxVariant) throws {
        let dir = try scratch()
        let objects = try variant.compile("stdlib", ["main", "words"], in: dir)
        let run = try runNativeAndLoaded(objects, in: dir, arguments: ["x", "y"])
        expectSameRun(run, "\(variant) objects")
        expectSameRun(try runNativeAndLoaded(objects, in: dir, archive: true, arguments: ["x", "y"]), "\(variant) archive")
        #expect(run.native.output.hasPrefix("brown: 400\nfox: 400\njumps: 200\n") && run.native.output.hasSuffix("argc 3\nno newline at the end"))
        #expect(run.native.errors == "to stderr\n")
    }

    // MARK: - In process

    /// The module of `exitHandlersRunAtTheirModulesUnloadOnly`: two globals with destructors, a
    /// function-local static with one, a std::atexit handler, a .fini_array entry, and its __dso_handle.
    private func exitHandlerModule(_ tag: String) -> String {
        """
        #include <cstdlib>
        extern "C" void cem_record(const char *);
        extern "C" void *__dso_handle;
        namespace {
        struct Rec { const char *name; explicit Rec(const char *n) : name(n) {} ~Rec() { cem_record(name); } };
        Rec first("\(tag) global 1"), second("\(tag) global 2");
        Rec &local() { static Rec r("\(tag) local static"); return r; }
        __attribute__((destructor)) void fini() { cem_record("\(tag) fini_array"); }
        void bye() { cem_record("\(tag) atexit"); }
        }
        extern "C" const void *\(tag)_dso() { return &__dso_handle; }
        extern "C" int \(tag)_use() { int r = local().name[0] + first.name[0] + second.name[0]; std::atexit(bye); return r; }
        """
    }

    @Test(arguments: CxxVariant.all)
    func exitHandlersRunAtTheirModulesUnloadOnly(variant: CxxVariant) throws {
        let dir = try scratch()
        let loader = ModuleLoader(allocator: try testAllocator())
        loader.provide("cem_record", address(of: record))
        let tags = [uniqueTag(variant, "a"), uniqueTag(variant, "b")]
        var modules: [LoadedModule] = []
        for t in tags {
            let object = try compileCxx(t, exitHandlerModule(t), in: dir, flags: variant.flags, compiler: variant.compiler)
            modules.append(try loader.load(files: [object], name: t))
        }
        typealias Pointer = @convention(c) () -> UnsafeRawPointer?
        var handles: [UInt] = []
        for (t, m) in zip(tags, modules) {
            #expect(try function(m, "\(t)_use", as: NoArgs.self)() > 0)
            let dso = UInt(bitPattern: try function(m, "\(t)_dso", as: Pointer.self)())
            let data = try #require(m.allocations["data"])
            #expect(dso >= data.address && dso < data.address + UInt(data.size), "\(t)'s __dso_handle is a word of its own data")
            handles.append(dso)
        }
        #expect(handles[0] != handles[1])
        #expect(recorded(tags[0]).isEmpty && recorded(tags[1]).isEmpty, "nothing ran before unload")
        let expected = { (t: String) in ["\(t) atexit", "\(t) local static", "\(t) global 2", "\(t) global 1", "\(t) fini_array"] }
        modules[0].unload()
        #expect(recorded(tags[0]) == expected(tags[0]), "the first module's handlers, last registered first, then .fini_array")
        #expect(recorded(tags[1]).isEmpty, "the second module's wait for its own unload")
        modules[0].unload()
        #expect(recorded(tags[0]) == expected(tags[0]), "a second unload runs nothing")
        modules[1].unload()
        #expect(recorded(tags[1]) == expected(tags[1]))
        #expect(recorded(tags[0]) == expected(tags[0]), "once")
    }

    /// A thread_local object constructed on the loading thread, in a std::thread the module starts,
    /// and in a thread that existed before the load and exits after the unload.
    @Test(arguments: CxxVariant.all)
    func threadLocalDestructorsRunAtUnloadOrThreadExit(variant: CxxVariant) throws {
        let dir = try scratch()
        let tag = uniqueTag(variant, "t")
        let object = try compileCxx(tag, """
            #include <thread>
            extern "C" void cem_record(const char *);
            struct Rec { const char *name; explicit Rec(const char *n) : name(n) {} ~Rec() { cem_record(name); } };
            thread_local Rec here("\(tag) thread_local");
            thread_local int value = 7;
            extern "C" int \(tag)_touch() { return here.name[0] ? value : -1; }
            extern "C" int \(tag)_in_std_thread() { int r = 0; std::thread t([&] { r = \(tag)_touch(); }); t.join(); return r; }
            """, in: dir, flags: variant.flags, compiler: variant.compiler)

        // A thread started before the load: it touches the object after the load, and exits after the unload.
        let loaded = DispatchSemaphore(value: 0), touched = DispatchSemaphore(value: 0), unloaded = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var touch: NoArgs? = nil
        nonisolated(unsafe) var earlierThreadSaw: Int32 = -2
        let earlier = try startThread {
            loaded.wait()
            earlierThreadSaw = touch!()
            touched.signal()
            unloaded.wait()
        }

        let loader = ModuleLoader(allocator: try testAllocator())
        loader.provide("cem_record", address(of: record))
        let module = try loader.load(files: [object], name: tag)
        #expect(try function(module, "\(tag)_in_std_thread", as: NoArgs.self)() == 7, "a thread created after the load starts with .tdata's values")
        #expect(recorded(tag).count == 1, "the std::thread's destructor ran at its exit")
        #expect(try function(module, "\(tag)_touch", as: NoArgs.self)() == 7, "the loading thread has .tdata's values")
        touch = try function(module, "\(tag)_touch", as: NoArgs.self)
        loaded.signal()
        touched.wait()
        #expect(earlierThreadSaw == 0, "a thread that existed before the load sees zeros (the documented limitation)")
        #expect(recorded(tag).count == 1)
        module.unload()
        #expect(recorded(tag).count == 2, "the unloading thread's destructor ran at unload")
        unloaded.signal()
        joinThread(earlier)
        #expect(recorded(tag).count == 2, "the earlier thread's was dropped at unload, not run at its exit on freed code")
    }
}

/// A pthread running `body` (Foundation's Thread cannot be joined: its thread-local destructors
/// must have run when the test looks).
private final class ThreadBody { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

private func startThread(_ body: @escaping () -> Void) throws -> pthread_t {
    var t = pthread_t()
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    let e = pthread_create(&t, nil, { arg in
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, box)
    guard e == 0 else { throw Failure("pthread_create: \(e)") }
    return t
}

private func joinThread(_ t: pthread_t) { pthread_join(t, nil) }
