#include "shapes.h"
#include <thread>
#include <chrono>
Shape::~Shape() {}
int Square::area() const { return s * s; }
const char *Square::name() const { return "square"; }
Shape *make(int kind, int a) { if (kind == 0) return new Square(a); return new Rect(a, a + 1); }
int guarded_constructions = 0;
Guarded::Guarded() : value(42) { std::this_thread::sleep_for(std::chrono::milliseconds(50)); guarded_constructions++; }
Guarded::~Guarded() { std::printf("~Guarded %d\n", guarded_constructions); }
Guarded &guarded() { static Guarded g; return g; }
const void *b_twice_int() { return reinterpret_cast<const void *>(&twice<int>); }
const void *b_twice_double() { twice(1.5); return reinterpret_cast<const void *>(&twice<double>); }
const void *b_counter() { return &shared_counter(); }
const void *b_inline() { return inline_identity(); }
const void *b_rect_typeinfo() { return &typeid(Rect); }
