// A module for hook tests: a leaf, a loop that calls it, and a top-level entry.
__attribute__((noinline)) int leaf(int x) { return x * 3 + 1; }

__attribute__((noinline)) int middle(int x) {
    int s = 0;
    for (int i = 0; i < x; i++) s += leaf(i);
    return s;
}

int top(int n) { return middle(n) + leaf(n); }

// A replacement for leaf, for live patching.
int leaf_v2(int x) { return x * 3 + 2; }
