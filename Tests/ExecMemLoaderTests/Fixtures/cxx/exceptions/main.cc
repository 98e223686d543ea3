#include "errors.h"
#include <cstdio>
#include <exception>
static int local_throw(int v) { Noisy n("local"); if (v) throw v; return 0; }
static void rethrow(int how) { Noisy n("rethrow"); try { fail_in_other_object(how); } catch (...) { std::puts("rethrowing"); throw; } }
int main() {
    try { local_throw(5); } catch (int e) { std::printf("caught local %d\n", e); }
    for (int how = 0; how < 4; how++) {
        try { rethrow(how); }
        catch (const AppError &e) { std::printf("AppError %s %d\n", e.what(), e.code); }
        catch (const std::logic_error &e) { std::printf("logic_error %s\n", e.what()); }
        catch (int e) { std::printf("int %d\n", e); }
    }
    std::exception_ptr p;
    try { fail_in_other_object(0); } catch (...) { p = std::current_exception(); }
    try { std::rethrow_exception(p); } catch (const std::runtime_error &e) { std::printf("exception_ptr %s\n", e.what()); }
    return 0;
}
