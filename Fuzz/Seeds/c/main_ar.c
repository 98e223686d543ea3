/* An object whose undefined symbols an archive (lib1, lib2) resolves. */
extern long lib1_twice(long);
extern long lib1_data[4];
long main_entry(long n) { return lib1_twice(n) + lib1_data[n & 3]; }
