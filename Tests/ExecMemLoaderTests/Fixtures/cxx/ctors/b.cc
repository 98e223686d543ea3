#include "trace.h"

Trace b1("b1");
Trace b_first __attribute__((init_priority(150)))("b init_priority(150)");
__attribute__((constructor(200))) static void b_constructor200() { std::puts("constructor(200) b"); }
__attribute__((constructor)) static void b_constructor() { std::puts("constructor b"); }
__attribute__((constructor)) static void b_constructor2() { std::puts("constructor b 2"); }
__attribute__((destructor)) static void b_destructor() { std::puts("destructor b"); }
__attribute__((destructor)) static void b_destructor2() { std::puts("destructor b 2"); }
// A function-local static: constructed on first call, destroyed before the globals constructed earlier.
Trace &b_local() { static Trace t("b local static"); return t; }
const char *b_name() { return Holder<int>::trace.name; }
