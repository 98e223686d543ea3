/* The smallest module the loader benchmark loads: one function, no relocations. */
long bench_main(void) { return 42; }
