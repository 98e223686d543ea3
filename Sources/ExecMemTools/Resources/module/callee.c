/* The other module of the call-cost benchmark. */
__attribute__((noinline)) long module_inc(long x) { return x + 1; }
