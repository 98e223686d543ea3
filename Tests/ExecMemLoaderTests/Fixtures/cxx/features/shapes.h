// Virtual calls, RTTI and dynamic_cast across objects, templates and inline functions defined in
// both objects (COMDAT: one copy used, the addresses compared), a function-local static initialized
// once under contention (the thread-safe guard, __cxa_guard_acquire).
#include <cstdio>
#include <typeinfo>

struct Shape {
    virtual ~Shape();  // the key function: Shape's vtable and typeinfo are in shapes.cc
    virtual int area() const = 0;
    virtual const char *name() const { return "shape"; }
};
struct Square : Shape {
    int s;
    explicit Square(int s) : s(s) {}
    int area() const override;
    const char *name() const override;
};
// No key function: Rect's vtable and typeinfo are COMDAT, in both objects.
struct Rect : Shape {
    int w, h;
    Rect(int w, int h) : w(w), h(h) {}
    int area() const override { return w * h; }
};
Shape *make(int kind, int a);

template <class T> T twice(T x) { return x + x; }
inline int &shared_counter() { static int c = 0; return c; }
inline const void *inline_identity() { return reinterpret_cast<const void *>(&inline_identity); }

struct Guarded { int value; Guarded(); ~Guarded(); };
Guarded &guarded();
extern int guarded_constructions;

// shapes.cc's view of the COMDAT copies.
const void *b_twice_int();
const void *b_twice_double();
const void *b_counter();
const void *b_inline();
const void *b_rect_typeinfo();
