// A corpus of ordinary C for instruction probes: loops, a switch (a jump table at -O2), recursion,
// globals reached RIP-relative, strings, floating point, function pointers, struct copies.
// corpus_check runs everything and folds the results into one number.
#include <stddef.h>

static int table[64];
static const char *words[] = {"probe", "kprobe", "uprobe", "ftrace", "livepatch", "execmem"};
long counter;

struct point { long x, y, z; };

__attribute__((noinline)) long corpus_scale(long x) { return x * 7 + 3; }

__attribute__((noinline)) long corpus_sum(const int *a, int n) {
    long s = 0;
    for (int i = 0; i < n; i++) s += a[i];
    return s;
}

__attribute__((noinline)) int corpus_classify(int c) {
    switch (c) {
    case 0: return 11;
    case 1: return 23;
    case 2: return 37;
    case 3: return 41;
    case 4: return 53;
    case 5: return 67;
    case 6: return 79;
    case 7: return 83;
    default: return -1;
    }
}

__attribute__((noinline)) long corpus_fib(long n) { return n < 2 ? n : corpus_fib(n - 1) + corpus_fib(n - 2); }

__attribute__((noinline)) size_t corpus_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

__attribute__((noinline)) unsigned corpus_hash(const char *s) {
    unsigned h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

__attribute__((noinline)) double corpus_poly(double x) {
    double r = 0;
    for (int i = 0; i < 5; i++) r = r * x + (double)(i + 1) / 3.0;
    return r;
}

__attribute__((noinline)) struct point corpus_cross(struct point a, struct point b) {
    struct point r = {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
    return r;
}

__attribute__((noinline)) long corpus_apply(long (*f)(long), long x, int times) {
    for (int i = 0; i < times; i++) x = f(x) % 1000003;
    return x;
}

__attribute__((noinline)) void corpus_fill(int seed) {
    for (int i = 0; i < 64; i++) table[i] = (seed * (i + 1)) ^ (i << 3);
    counter = seed + 1;
}

__attribute__((noinline)) int corpus_max(const int *a, int n) {
    int m = a[0];
    for (int i = 1; i < n; i++)
        if (a[i] > m) m = a[i];
    return m;
}

long corpus_check(void) {
    long r = 0;
    corpus_fill(5);
    r += corpus_sum(table, 64);
    r += corpus_max(table, 64);
    for (int c = -1; c < 10; c++) r = r * 3 + corpus_classify(c);
    r += corpus_fib(15);
    for (unsigned i = 0; i < sizeof words / sizeof *words; i++) r += (long)corpus_strlen(words[i]) * corpus_hash(words[i]);
    r += (long)(corpus_poly(1.5) * 1000);
    struct point a = {1, 2, 3}, b = {4, 5, 6}, c = corpus_cross(a, b);
    r += c.x * 100 + c.y * 10 + c.z;
    r += corpus_apply(corpus_scale, 12, 20);
    return r + counter;
}
