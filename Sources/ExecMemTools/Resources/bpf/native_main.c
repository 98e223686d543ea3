/* Native harness: reads the context memory from a file, calls entry(mem, len) and prints r0 and the
 * memory afterwards, in hex, as the eBPF tests print them. */
#include <stdio.h>
#include <stdlib.h>
typedef unsigned long long u64;
u64 entry(unsigned char *mem, u64 len);
int main(int argc, char **argv) {
    static unsigned char mem[1 << 16];
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 2;
    size_t n = fread(mem, 1, sizeof mem, f);
    fclose(f);
    u64 r0 = entry(n ? mem : 0, n);
    printf("%llx\n", r0);
    for (size_t i = 0; i < n; i++) printf("%02x", mem[i]);
    printf("\n");
    return 0;
}
