#include "legacy.h"

static void ctor_b() { std::puts("ctor b"); }
static void ctor_b_early() { std::puts("ctor b .ctors.65435"); }
static void dtor_b1() { std::puts("dtor b1"); }
static void dtor_b2() { std::puts("dtor b2"); }
static void dtor_b_late() { std::puts("dtor b .dtors.65435"); }
ENTRIES(".ctors", ctors_b, ctor_b);
ENTRIES(".ctors.65435", ctors_b_early, ctor_b_early);
ENTRIES(".dtors", dtors_b, dtor_b1, dtor_b2);
ENTRIES(".dtors.65435", dtors_b_late, dtor_b_late);
const char *other() { return "b"; }
