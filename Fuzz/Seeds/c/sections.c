/* Kernel-style section names the loader lays out by type, common symbols, aligned data. */
__attribute__((section(".data..ro_after_init"))) long table[16];
__attribute__((section(".init.text"), used, noinline)) static long init_seed(long i) { return i * 7 + 1; }
__attribute__((section(".init.data"), used)) static long init_offset = 100;
__attribute__((aligned(4096))) char page_aligned[4096];
__attribute__((aligned(64))) const char cache_line[64] = "cache line";
int common_value;
__attribute__((constructor)) static void fill(void) { for (long i = 0; i < 16; i++) table[i] = init_seed(i) + init_offset; }
long lookup(long i) { return table[i & 15] + page_aligned[i & 4095] + cache_line[i & 63] + common_value; }
