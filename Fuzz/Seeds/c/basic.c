/* Functions, rodata, data, bss, a switch table, function pointers in data (R_X86_64_64). */
static const char *const names[] = {"zero", "one", "two", "three", "four", "five"};
static const int weights[8] = {3, 1, 4, 1, 5, 9, 2, 6};
int counter = 7;
long scratch[32];
static int add(int a, int b) { return a + b; }
static int mul(int a, int b) { return a * b; }
int (*const ops[2])(int, int) = {add, mul};
int classify(int x) {
    switch (x) {
    case 0: return 11; case 1: return 23; case 2: return 5; case 3: return 99;
    case 4: return 13; case 5: return 7; case 6: return 1; default: return -1;
    }
}
const char *name_of(unsigned i) { return i < 6 ? names[i] : "many"; }
long entry(long n) {
    long s = 0;
    for (long i = 0; i < n && i < 32; i++) { scratch[i] += weights[i & 7]; s += ops[i & 1]((int)i, counter) + classify((int)i); }
    counter++;
    return s;
}
