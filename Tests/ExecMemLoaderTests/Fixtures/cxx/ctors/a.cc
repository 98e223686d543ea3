#include "trace.h"
#include <cstdlib>

Trace a1("a1"), a2("a2");
static Trace a_internal("a internal");
static void a_atexit() { std::puts("atexit handler of a's constructor"); }
__attribute__((constructor)) static void a_constructor() { std::puts("constructor a"); std::atexit(a_atexit); }
__attribute__((constructor(101))) static void a_early() { std::puts("constructor(101) a"); }
__attribute__((destructor)) static void a_destructor() { std::puts("destructor a"); }
__attribute__((destructor(101))) static void a_late() { std::puts("destructor(101) a"); }
const char *a_name() { return a1.name; }
