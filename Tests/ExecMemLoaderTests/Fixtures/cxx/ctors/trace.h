// Global constructors and destructors across objects: each prints what it constructs and destroys;
// std::atexit handlers (from a constructor and from main) run among the destructors, as registered.
#include <cstdio>

struct Trace {
    const char *name;
    explicit Trace(const char *n) : name(n) { std::printf("construct %s\n", n); }
    ~Trace() { std::printf("destroy %s\n", name); }
};

// An inline variable: defined in every object that includes this, constructed once (a guard in a
// COMDAT group), by the first object whose initializer runs.
inline Trace shared_inline{"inline variable"};

// A static data member of a template, instantiated in b.cc and c.cc: one copy, constructed once.
template <class T> struct Holder { static Trace trace; };
template <class T> Trace Holder<T>::trace{"template static member"};

const char *a_name();
const char *b_name();
const char *c_name();
Trace &b_local();
