// std::string, std::map, std::vector, std::mutex and a global with a destructor, from the host's libstdc++.
#include <map>
#include <mutex>
#include <string>
#include <vector>
static std::mutex lock;
static std::map<std::string, int> counts;   // a global with a non-trivial destructor (__cxa_atexit)
void count_words(const std::string &text) {
    std::string word;
    std::lock_guard<std::mutex> g(lock);
    for (char c : text + " ") {
        if (c == ' ') { if (!word.empty()) counts[word]++; word.clear(); } else word += c;
    }
}
std::vector<std::pair<std::string, int>> snapshot() { std::lock_guard<std::mutex> g(lock); return {counts.begin(), counts.end()}; }
