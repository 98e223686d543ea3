/* Thread-local storage, constructors and destructors, init_array/fini_array, weak symbols. */
__thread long tls_counter = 5;
__thread char tls_buffer[64];
static long log_value;
__attribute__((weak)) long weak_hook(long x) { return x + 1; }
__attribute__((constructor)) static void setup(void) { log_value = 42; tls_buffer[0] = 1; }
__attribute__((destructor)) static void teardown(void) { log_value = 0; }
__attribute__((constructor(101))) static void early(void) { tls_counter++; }
long tls_entry(long n) { tls_counter += n; return tls_counter + tls_buffer[0] + weak_hook(log_value); }
