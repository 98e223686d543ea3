// A program for `execmem trace`: main calls middle once and leaf once; middle calls leaf n times.
// With a second argument it leaves through exit() from inside middle.
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int leaf(int x) { return x * 3 + 1; }

__attribute__((noinline)) int middle(int x, int leave) {
    int s = 0;
    for (int i = 0; i < x; i++) s += leaf(i);
    if (leave) {
        printf("%d\n", s);
        exit(7);
    }
    return s;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    int r = middle(n, argc > 2) + leaf(n);
    printf("%d\n", r);
    return 0;
}
