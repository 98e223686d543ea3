// iostream (cout, cerr, an ostringstream, std::endl and output left unflushed at return), std::thread.
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
void count_words(const std::string &);
std::vector<std::pair<std::string, int>> snapshot();
int main(int argc, char **argv) {
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; i++) threads.emplace_back([i] { for (int k = 0; k < 100; k++) count_words("the quick brown fox " + std::string(i % 2 ? "jumps" : "sleeps")); });
    for (auto &t : threads) t.join();
    for (auto &[w, n] : snapshot()) std::cout << w << ": " << n << '\n';
    std::ostringstream s;
    s << "hex " << std::hex << 255 << " float " << 1.5 << " argc " << argc;
    std::cout << s.str() << std::endl;
    std::cerr << "to stderr\n";
    std::cout << "no newline at the end";
    return 3;
}
