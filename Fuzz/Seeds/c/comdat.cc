// C++: COMDAT groups (inline functions and templates), a vtable, a static initializer.
template <typename T> struct Box { T v; explicit Box(T x) : v(x) {} virtual ~Box() {} virtual T get() const { return v; } };
template <typename T> inline T twice(T x) { return x + x; }
struct Init { int v; Init() : v(twice(21)) {} };
static Init init;
int cxx_entry(int x) { Box<int> b(x); Box<long> c(x); return twice(b.get()) + (int)c.get() + init.v; }
