#include "errors.h"
#include <cstdio>
Noisy::Noisy(const char *n) : n(n) {}
Noisy::~Noisy() { std::printf("unwound %s\n", n); }
void fail_in_other_object(int how) {
    Noisy guard("thrower");
    switch (how) {
    case 0: throw AppError("app", 7);
    case 1: throw std::out_of_range("range");
    case 2: throw 42;
    case 3: { std::string s("abc"); s.at(10); }
    }
}
