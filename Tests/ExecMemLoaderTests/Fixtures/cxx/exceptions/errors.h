// Exceptions thrown in one object and caught in the other (a class of the program, standard ones,
// an int, one libstdc++ throws), rethrown, through std::exception_ptr; locals destroyed on the way.
#include <stdexcept>
#include <string>
struct AppError : std::runtime_error { int code; AppError(const std::string &m, int c) : std::runtime_error(m), code(c) {} };
struct Noisy { const char *n; explicit Noisy(const char *n); ~Noisy(); };
void fail_in_other_object(int how);
