// See CExecMemProbeSamples.h.
#include "CExecMemProbeSamples.h"

#define PATCHABLE __attribute__((patchable_function_entry(5, 0), noinline))

PATCHABLE long cem_sample_add(long a, long b) { return a + b; }
PATCHABLE long cem_sample_add_v2(long a, long b) { return a + b + 1000; }
PATCHABLE long cem_sample_sum6(long a, long b, long c, long d, long e, long f) {
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
}
PATCHABLE double cem_sample_scale(double x, long k) { return x * (double)k; }
PATCHABLE long cem_sample_fib(long n) { return n < 2 ? n : cem_sample_fib(n - 1) + cem_sample_fib(n - 2); }
PATCHABLE long cem_sample_empty(void) { return 0; }
__attribute__((noinline)) long cem_sample_plain(long a) { return a * 7; }
__attribute__((noinline)) long cem_sample_empty_plain(void) { return 0; }

__asm__(".text\n"
        ".globl cem_sample_gcc_style\n"
        ".type cem_sample_gcc_style, @function\n"
        "cem_sample_gcc_style:\n"
        "  nop\n  nop\n  nop\n  nop\n  nop\n"
        "  lea (%rdi,%rsi), %rax\n"
        "  ret\n"
        ".size cem_sample_gcc_style, .-cem_sample_gcc_style\n");

long cem_sample_call_loop(long (*f)(void), long n) {
    long (*volatile g)(void) = f;
    long sum = 0;
    for (long i = 0; i < n; i++) sum += g();
    return sum;
}

long cem_sample_add_loop(long n) {
    long (*volatile g)(long, long) = cem_sample_add;
    long sum = 0;
    for (long i = 0; i < n; i++) sum += g(i, 1);
    return sum;
}
