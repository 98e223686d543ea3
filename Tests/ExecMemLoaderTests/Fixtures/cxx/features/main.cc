#include "shapes.h"
#include <thread>
#include <vector>
int main() {
    Shape *s = make(0, 3), *r = make(1, 4);
    std::printf("areas %d %d names %s %s\n", s->area(), r->area(), s->name(), r->name());
    std::printf("typeid %s %s\n", typeid(*s).name(), typeid(*r).name());
    std::printf("dynamic_cast square:%d rect:%d cross:%d\n", dynamic_cast<Square *>(s) != nullptr, dynamic_cast<Rect *>(r) != nullptr, dynamic_cast<Square *>(r) != nullptr);
    std::printf("typeinfo same %d eq %d\n", &typeid(Rect) == b_rect_typeinfo(), typeid(*r) == typeid(Rect));
    std::printf("twice %d %g\n", twice(21), twice(1.25));
    std::printf("one copy: twice<int> %d twice<double> %d counter %d inline %d\n", reinterpret_cast<const void *>(&twice<int>) == b_twice_int(),
        reinterpret_cast<const void *>(&twice<double>) == b_twice_double(), static_cast<const void *>(&shared_counter()) == b_counter(), inline_identity() == b_inline());
    shared_counter() += 5;
    std::vector<std::thread> ts;
    int seen[4] = {};
    for (int i = 0; i < 4; i++) ts.emplace_back([&seen, i] { seen[i] = guarded().value; });
    for (auto &t : ts) t.join();
    std::printf("guarded %d %d %d %d constructions %d\n", seen[0], seen[1], seen[2], seen[3], guarded_constructions);
    delete s; delete r;
    return 0;
}
