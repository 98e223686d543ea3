#include "tl.h"
#include <thread>
#include <mutex>
static std::mutex m;
static int local_use(const char *who) {
    thread_local Tracked local("local");
    std::lock_guard<std::mutex> g(m);
    std::printf("%s: tracked %d local %d plain %d other %d\n", who, tracked.id, local.id, plain, other_object_reads());
    plain++;
    return local.id;
}
int main() {
    local_use("main");
    std::thread t([] { local_use("thread"); });
    t.join();
    std::printf("main again plain %d\n", plain);
    return 0;
}
