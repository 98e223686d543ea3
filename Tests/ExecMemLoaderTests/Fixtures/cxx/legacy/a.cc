#include "legacy.h"

static int constructed = 0;
static void ctor_a1() { std::printf("ctor a1 (%d before)\n", constructed++); }
static void ctor_a2() { std::printf("ctor a2 (%d before)\n", constructed++); }
static void ctor_a_early() { std::printf("ctor a .ctors.65335 (%d before)\n", constructed++); }
static void init_array_a() { std::printf("init_array a (%d before)\n", constructed++); }
static void dtor_a1() { std::puts("dtor a1"); }
static void dtor_a2() { std::puts("dtor a2"); }
static void fini_array_a() { std::puts("fini_array a"); }
ENTRIES(".ctors", ctors_a, ctor_a2, ctor_a1);
ENTRIES(".ctors.65335", ctors_a_early, ctor_a_early);
ENTRIES(".init_array", init_array_entries_a, init_array_a);
ENTRIES(".dtors", dtors_a, dtor_a1, dtor_a2);
ENTRIES(".fini_array", fini_array_entries_a, fini_array_a);
int main() { std::printf("main %s\n", other()); return 0; }
