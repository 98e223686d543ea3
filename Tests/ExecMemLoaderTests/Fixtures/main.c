/* A program in two objects: libc calls, printf of floats, malloc/free, qsort with a callback defined
 * here, function pointers across objects, setjmp/longjmp, static and global data, a constructor and a
 * destructor with side effects, a __thread variable and a large .bss. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int shared_counter;
extern double scale(double x);
extern int (*pick_operation(int which))(int, int);
extern const char *greeting(void);

static char large_bss[4 << 20];
static int initialized_static = 7;
__thread int per_thread = 11;
static jmp_buf env;
static int constructed;

__attribute__((constructor)) static void setup(void) { constructed = getenv("PATH") != NULL ? 100 : 200; }
__attribute__((destructor)) static void teardown(void) { printf("destructor: counter %d\n", shared_counter); }

static int by_value(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void jump(int depth) { if (depth == 0) longjmp(env, 42); jump(depth - 1); }

int main(int argc, char **argv) {
    int values[] = {42, 7, 19, 3, 88, 1};
    qsort(values, 6, sizeof values[0], by_value);
    printf("sorted:");
    for (int i = 0; i < 6; i++) printf(" %d", values[i]);
    printf("\nfloats: %.4f %e %g\n", scale(2.5), scale(1e-3), 1.0 / 3.0);
    char *heap = malloc(64);
    snprintf(heap, 64, "%s/%d", greeting(), argc);
    printf("heap: %s (%zu)\n", heap, strlen(heap));
    free(heap);
    int (*op)(int, int) = pick_operation(argc % 2);
    printf("operation: %d\n", op(6, 7));
    int jumped = setjmp(env);
    if (!jumped) jump(5);
    printf("longjmp: %d\n", jumped);
    volatile char *big = large_bss;
    big[(4 << 20) - 1] = 5;
    per_thread += 1;
    shared_counter += initialized_static;
    printf("statics: %d %d %d %d\n", big[(4 << 20) - 1], per_thread, initialized_static, constructed);
    for (int i = 1; i < argc; i++) printf("arg %d: %s\n", i, argv[i]);
    return shared_counter % 50;
}
