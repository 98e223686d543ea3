// thread_local objects with constructors and destructors (the TLS wrapper and init functions,
// __tls_init, __cxa_thread_atexit): one defined in another object, one function-local, and a
// constant-initialized int (.tdata) read through the wrapper; used from main and from a std::thread.
#include <cstdio>
struct Tracked { int id; const char *where; Tracked(const char *w); ~Tracked(); };
extern thread_local Tracked tracked;       // defined in tl.cc: non-trivial, reached through the TLS wrapper
extern thread_local int plain;             // initialized .tdata
int other_object_reads();
