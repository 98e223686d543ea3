// C++ host frames for the loader's observability tests (see CExecMemCxxHost.h).
#include "CExecMemCxxHost.h"
#include <atomic>
#include <unwind.h>

namespace {
std::atomic<int> destructors{0};
struct Counted {
    ~Counted() { destructors.fetch_add(1); }
};
}  // namespace

extern "C" int cem_host_catch(int (*fn)(void), int *caught) {
    *caught = 0;
    try {
        return fn();
    } catch (int v) {
        *caught = 1;
        return v;
    } catch (...) {
        *caught = 1;
        return -1;
    }
}

extern "C" __attribute__((noinline)) int cem_host_call(int (*fn)(int), int value) {
    Counted c;
    return fn(value) + 1;
}

extern "C" int cem_host_destructors(void) { return destructors.load(); }

// libgcc's, not in its installed header.
struct dwarf_eh_bases { void *tbase; void *dbase; void *func; };
extern "C" const void *_Unwind_Find_FDE(void *pc, struct dwarf_eh_bases *bases);

extern "C" int cem_host_has_fde(const void *pc) {
    struct dwarf_eh_bases bases;
    return _Unwind_Find_FDE(const_cast<void *>(pc), &bases) != nullptr;
}
