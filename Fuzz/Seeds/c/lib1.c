/* An archive member defining what main_ar.c needs, and needing lib2's symbol. */
extern long lib2_value(long);
long lib1_twice(long x) { return 2 * lib2_value(x); }
long lib1_data[4] = {1, 2, 3, 4};
