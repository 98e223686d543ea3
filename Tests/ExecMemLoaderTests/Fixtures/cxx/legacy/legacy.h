// .ctors and .dtors written by hand (g++ emits .init_array only; clang -fno-use-init-array emits
// them). crtstuff ran .ctors last entry first and .dtors first entry first; GNU ld copies them into
// .init_array and .fini_array with each section's entries reversed, .ctors.N at priority 65535 - N
// (gold does not reverse them). aligned(8): a gap of zeros between arrays would be called.
#include <cstdio>
typedef void (*Entry)();
#define ENTRIES(where, name, ...) static Entry name[] __attribute__((section(where), used, aligned(8))) = {__VA_ARGS__}
const char *other();
