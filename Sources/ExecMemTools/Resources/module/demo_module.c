/* The demo's built-in module: one section of every type, a constructor that uses init code and
 * init data and fills ro-after-init data, and calls to a host function the demo provides.
 * Every function starts with a 5-byte NOP so the demo can hook and live-patch it.
 * Built with: clang -O2 -fPIC -fpatchable-function-entry=5 -c demo_module.c -o demo_module.o */

extern long host_scale(long x);

static const long weights[8] = {3, 1, 4, 1, 5, 9, 2, 6};  /* rodata */
long calls;                                                  /* data (.bss) */
__attribute__((section(".data..ro_after_init"))) long table[16];
__attribute__((section(".init.text"), used, noinline)) static long init_seed(long i) { return i * 7 + 1; }
__attribute__((section(".init.data"), used)) static long init_offset = 100;

__attribute__((constructor)) static void setup(void) {
    for (long i = 0; i < 16; i++) table[i] = init_seed(i) + init_offset;
}

/* sum of host_scale(table[i] * weights[i % 8]) */
long demo_entry(long n) {
    long sum = 0;
    calls++;
    for (long i = 0; i < n && i < 16; i++) sum += host_scale(table[i] * weights[i % 8]);
    return sum;
}

long demo_calls(void) { return calls; }

/* A newer demo_entry for live patching: the same sum, plus one per element counted. */
long demo_entry_v2(long n) {
    long sum = 0;
    calls++;
    for (long i = 0; i < n && i < 16; i++) sum += host_scale(table[i] * weights[i % 8]) + 1;
    return sum;
}
