// Functions of the host executable compiled with a patchable entry (clang's
// patchable_function_entry attribute, the per-function form of -fpatchable-function-entry=5), for
// the tests, the demo and the benchmarks to hook, redirect and probe; and twins without one.
#ifndef CEXECMEM_PROBE_SAMPLES_H
#define CEXECMEM_PROBE_SAMPLES_H

#include <stdint.h>

long cem_sample_add(long a, long b);
long cem_sample_add_v2(long a, long b);  // a live-patch replacement: a + b + 1000
long cem_sample_sum6(long a, long b, long c, long d, long e, long f);
double cem_sample_scale(double x, long k);  // x * k, arguments in xmm0 and rdi
long cem_sample_fib(long n);  // recursive: exit hooks nest
long cem_sample_empty(void);  // returns 0
long cem_sample_plain(long a);  // no patchable entry
long cem_sample_gcc_style(long a, long b);  // five one-byte NOPs, as gcc emits them
long cem_sample_empty_plain(void);  // cem_sample_empty without a patchable entry

/// Calls `f` `n` times through a pointer the compiler cannot see through; returns the sum.
long cem_sample_call_loop(long (*f)(void), long n);
/// Calls cem_sample_add(i, 1) for i in 0..<n and returns the sum (for threads hammering a hook).
long cem_sample_add_loop(long n);

#endif
