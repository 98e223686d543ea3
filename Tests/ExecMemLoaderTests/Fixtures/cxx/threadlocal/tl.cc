#include "tl.h"
#include <atomic>
static std::atomic<int> next{1};
Tracked::Tracked(const char *w) : id(next++), where(w) { std::printf("Tracked(%s) %d\n", where, id); }
Tracked::~Tracked() { std::printf("~Tracked(%s) %d\n", where, id); std::fflush(stdout); }
thread_local Tracked tracked("global");
thread_local int plain = 7;
int other_object_reads() { return tracked.id * 100 + plain; }
