/* Call-cost benchmark: a loop calling a host function, and one calling another module's function. */
extern long host_inc(long x);
extern long module_inc(long x);

__attribute__((noinline)) long loop_host(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s = host_inc(s);
    return s;
}

__attribute__((noinline)) long loop_module(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s = module_inc(s);
    return s;
}
