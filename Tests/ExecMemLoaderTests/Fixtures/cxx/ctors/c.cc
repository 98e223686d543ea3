#include "trace.h"

Trace c1("c1");
__attribute__((constructor)) static void c_constructor() { std::puts("constructor c"); }
__attribute__((destructor)) static void c_destructor() { std::puts("destructor c"); }
const char *c_name() { return Holder<int>::trace.name == b_name() ? c1.name : "two copies"; }
