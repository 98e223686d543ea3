/* The second member: pulled in only through lib1. */
static long bias = 3;
long lib2_value(long x) { return x + bias; }
