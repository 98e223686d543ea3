#include "trace.h"

int main() {
    std::printf("main: %s, %s, %s, %s, %s\n", a_name(), b_name(), c_name(), b_local().name, shared_inline.name);
    b_local();
    return 0;
}
