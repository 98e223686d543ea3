// C++ exceptions and forced unwinding through loaded code, in process: each object's .eh_frame is
// registered with libgcc's unwinder at load. An exception thrown in one module is caught in another
// module, in another object of the same module, through a host frame and in the host; the locals'
// destructors run on the way (counted); `pthread_exit` from loaded code on its own thread runs the
// cleanup handler and destructors of every loaded frame. Init text is unwindable while init runs and
// holds no frames once it is freed. Without the registration each of these calls std::terminate.

import CExecMemCxxHost
import ExecMem
import ExecMemLoader
import ExecMemTestSupport
import Foundation
import Testing

/// The address of a C function (for `ModuleLoader.provide`).
func address<F>(of function: F) -> UInt { UInt(bitPattern: unsafeBitCast(function, to: UnsafeRawPointer.self)) }

typealias IntToInt = @convention(c) (Int32) -> Int32
typealias NoArgs = @convention(c) () -> Int32

func function<F>(_ module: LoadedModule, _ name: String, as type: F.Type) throws -> F {
    unsafeBitCast(UnsafeRawPointer(bitPattern: try #require(module.address(of: name), "\(name) in \(module.name)"))!, to: type)
}

func int32(_ module: LoadedModule, _ name: String) throws -> Int32 {
    UnsafePointer<Int32>(bitPattern: try #require(module.address(of: name), "\(name) in \(module.name)"))!.pointee
}

/// The thrower: `b_inner` throws its argument (an int) past `b_throw`; both have a counted local.
/// `Local` is an inline class in both modules' objects (its destructor a COMDAT group).
let throwerSource = """
    int destroyed = 0;
    struct Local { ~Local() { destroyed++; } };
    extern "C" __attribute__((noinline)) int b_inner(int v) { Local l; if (v > 0) throw v; return 0; }
    extern "C" __attribute__((noinline)) int b_throw(int v) { Local l; return b_inner(v) + 1; }
    """

/// The catcher, in another module: catches what the thrower throws, directly, through a host frame,
/// or lets it go to the host. Its second object catches too, from the first object's frames.
let catcherSource = """
    extern int destroyed;
    struct Local { ~Local() { destroyed++; } };
    extern "C" int b_throw(int);
    extern "C" int cem_host_call(int (*)(int), int);
    extern "C" int a_catch_from_b(int v) { Local l; try { return b_throw(v); } catch (int e) { return e * 10; } }
    extern "C" int a_catch_through_host(int v) { Local l; try { return cem_host_call(b_throw, v); } catch (int e) { return e * 100; } }
    extern "C" __attribute__((noinline)) int a_throw_to_host(void) { Local l; return b_throw(7); }
    extern "C" __attribute__((noinline)) int a_rethrow(int v) { Local l; try { return b_throw(v); } catch (int e) { throw e + 1; } }
    """

let secondObjectSource = """
    extern int destroyed;
    struct Local { ~Local() { destroyed++; } };
    extern "C" int a_rethrow(int);
    extern "C" int c_catch_from_first_object(int v) { Local l; try { return a_rethrow(v); } catch (int e) { return -e; } }
    """

let exitSource = """
    #include <pthread.h>
    int exit_destroyed = 0, cleanups = 0;
    struct Exit { ~Exit() { exit_destroyed++; } };
    static void cleanup(void *p) { ++*static_cast<int *>(p); }
    __attribute__((noinline)) static void leave(long v) { Exit e; pthread_exit(reinterpret_cast<void *>(v)); }
    static void *body(void *arg) {
        Exit e;
        pthread_cleanup_push(cleanup, &cleanups);
        leave(reinterpret_cast<long>(arg));
        pthread_cleanup_pop(0);
        return nullptr;
    }
    extern "C" long run_thread(long v) {
        pthread_t t;
        void *r = nullptr;
        if (pthread_create(&t, nullptr, body, reinterpret_cast<void *>(v)) != 0) return -1;
        pthread_join(t, &r);
        return reinterpret_cast<long>(r);
    }
    """

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: gxx), "needs g++")) struct UnwindTests {
    func loader() throws -> ModuleLoader {
        let loader = ModuleLoader(allocator: try testAllocator())
        loader.provide("cem_host_call", address(of: cem_host_call as @convention(c) (IntToInt?, Int32) -> Int32))
        return loader
    }

    // Not -fno-pic: `throw` takes typeid(int), libstdc++'s data, with an absolute 32-bit address
    // (ld would make a copy relocation), and no range in the low 2 GiB can reach the library.
    // With g++ and clang++ (those present: see cxxCompilers).
    @Test(arguments: cxxCompilers, [["-O0"], ["-O1"], ["-O2"], ["-O2", "-fPIC"], ["-O2", "-ffunction-sections"]])
    func exceptionsCrossModulesObjectsAndTheHost(compiler: String, flags: [String]) throws {
        let dir = try scratch()
        let loader = try loader()
        let thrower = try loader.load(files: [try compileCxx("thrower", throwerSource, in: dir, flags: flags, compiler: compiler)], name: "thrower")
        let catcher = try loader.load(files: [try compileCxx("catcher", catcherSource, in: dir, flags: flags, compiler: compiler),
                                              try compileCxx("second", secondObjectSource, in: dir, flags: flags, compiler: compiler)], name: "catcher")
        func destroyed() throws -> Int32 { try int32(thrower, "destroyed") }

        // Caught in another module: b_inner's and b_throw's locals unwound, then the catcher's returns.
        var before = try destroyed()
        #expect(try function(catcher, "a_catch_from_b", as: IntToInt.self)(3) == 30)
        #expect(try destroyed() - before == 3)
        #expect(try function(catcher, "a_catch_from_b", as: IntToInt.self)(0) == 1, "no throw: the plain return")

        // Through a host C++ frame (whose local is destroyed too) between thrower and catcher.
        before = try destroyed()
        let hostBefore = cem_host_destructors()
        #expect(try function(catcher, "a_catch_through_host", as: IntToInt.self)(4) == 400)
        #expect(try destroyed() - before == 3)
        #expect(cem_host_destructors() - hostBefore == 1)

        // Caught in the host, through both modules.
        before = try destroyed()
        var caught: Int32 = 0
        #expect(cem_host_catch(try function(catcher, "a_throw_to_host", as: NoArgs.self), &caught) == 7)
        #expect(caught == 1)
        #expect(try destroyed() - before == 3)

        // One object of a module catches what the other rethrows.
        before = try destroyed()
        #expect(try function(catcher, "c_catch_from_first_object", as: IntToInt.self)(5) == -6)
        #expect(try destroyed() - before == 4)

        catcher.unload()
        thrower.unload()
    }

    @Test(arguments: [["-O0"], ["-O2"]])
    func pthreadExitUnwindsLoadedFrames(flags: [String]) throws {
        let dir = try scratch()
        let module = try loader().load(files: [try compileCxx("exit", exitSource, in: dir, flags: flags)], name: "exit")
        typealias RunThread = @convention(c) (Int) -> Int
        #expect(try function(module, "run_thread", as: RunThread.self)(42) == 42, "pthread_join sees pthread_exit's value")
        #expect(try int32(module, "exit_destroyed") == 2, "leave's and body's locals were destroyed")
        #expect(try int32(module, "cleanups") == 1, "the cleanup handler ran")
        module.unload()
    }

    /// A constructor in init text throws and catches while init runs; once init memory is freed,
    /// the unwinder has no frame there (the allocator gives the hole to other code) and the
    /// registry no name, while core text keeps both.
    @Test func initTextIsUnwindableWhileInitRunsOnly() throws {
        let dir = try scratch()
        let object = try compileCxx("init", """
            int init_caught = 0, init_had_frame = 0, init_had_name = 0;
            extern "C" int cem_host_has_fde(const void *);
            extern "C" int registered_as_init_thrower(const void *);
            __attribute__((section(".init.text"), noinline)) static int init_thrower(int v) { if (v) throw v; return 0; }
            __attribute__((constructor, section(".init.text"))) static void setup() {
                init_had_frame = cem_host_has_fde(reinterpret_cast<const void *>(&init_thrower));
                init_had_name = registered_as_init_thrower(reinterpret_cast<const void *>(&init_thrower));
                try { init_thrower(5); } catch (int e) { init_caught = e; }
            }
            extern "C" int core_fn(int v) { try { if (v) throw v; } catch (int e) { return e + 1; } return 0; }
            """, in: dir, flags: ["-O1"])
        let loader = try loader()
        loader.provide("cem_host_has_fde", address(of: cem_host_has_fde as @convention(c) (UnsafeRawPointer?) -> Int32))
        let named: @convention(c) (UnsafeRawPointer?) -> Int32 = { p in
            let l = CodeRegistry.shared.symbolize(UInt(bitPattern: p))
            return l.map { $0.symbol.contains("init_thrower") && $0.offset == 0 && $0.owner == "init" } == true ? 1 : 0
        }
        loader.provide("registered_as_init_thrower", address(of: named))
        let module = try loader.load(files: [object], name: "init")
        #expect(try int32(module, "init_caught") == 5, "the constructor caught its own exception in init text")
        #expect(try int32(module, "init_had_frame") == 1, "init text had frames while init ran")
        #expect(try int32(module, "init_had_name") == 1, "init text was named while init ran")
        #expect(!module.freedInitAllocations.isEmpty)
        let initThrower = try #require(module.functions.first { $0.name.contains("init_thrower") })
        #expect(cem_host_has_fde(UnsafeRawPointer(bitPattern: initThrower.address)) == 0, "no frame left in freed init text")
        #expect(CodeRegistry.shared.symbolize(initThrower.address) == nil, "no name left in freed init text")
        let core = try #require(module.address(of: "core_fn"))
        #expect(cem_host_has_fde(UnsafeRawPointer(bitPattern: core)) == 1)
        #expect(CodeRegistry.shared.symbolize(core)?.symbol == "core_fn")
        #expect(try function(module, "core_fn", as: IntToInt.self)(8) == 9, "core text still throws and catches")
        module.unload()
        #expect(cem_host_has_fde(UnsafeRawPointer(bitPattern: core)) == 0)
    }
}
