/* The second object: globals and functions main reaches across objects. */
int shared_counter = 30;
static const char *message = "greetings";

static int add(int a, int b) { return a + b; }
static int multiply(int a, int b) { return a * b; }

double scale(double x) { return x * 1.5 + shared_counter; }
int (*pick_operation(int which))(int, int) { return which ? add : multiply; }
const char *greeting(void) { shared_counter += 1; return message; }
