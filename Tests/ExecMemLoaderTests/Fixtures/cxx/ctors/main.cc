#include "trace.h"
#include <cstdlib>

static void main_atexit() { std::puts("atexit handler of main"); }
static void main_quick_exit() { std::puts("never: no quick_exit"); }

int main() {
    std::atexit(main_atexit);
    std::at_quick_exit(main_quick_exit);
    std::printf("main: %s, %s, %s, %s, %s\n", a_name(), b_name(), c_name(), b_local().name, shared_inline.name);
    b_local();
    return 0;
}
