/* One section of each type, to read protections back: text, rodata, data, ro-after-init, init text
 * and init data. */
const char table[4096] = "read only";
int counter = 1;
__attribute__((section(".data..ro_after_init"))) int after_init = 0;
__attribute__((section(".init.text"), used)) int init_function(void) { return 5; }
__attribute__((section(".init.data"), used)) int init_value = 9;

static void __attribute__((constructor)) initialize(void) { after_init = init_function() + init_value + counter; }

int read_after_init(void) { return after_init; }
int bump(void) { return ++counter; }
const char *name(void) { return table; }
