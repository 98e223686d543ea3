/* Load-and-run benchmark driver for SQLite: an in-memory table of 500 rows, then a query. */
#include <sqlite3.h>
#include <stddef.h>

static int add(void *sum, int columns, char **values, char **names) {
    (void)columns; (void)names;
    long v = 0;
    for (const char *p = values[0]; p && *p; p++) v = v * 10 + (*p - '0');
    *(long *)sum += v;
    return 0;
}

long bench_main(void) {
    sqlite3 *db;
    long sum = 0;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) return -1;
    sqlite3_exec(db, "create table t(a integer, b text); begin;", NULL, NULL, NULL);
    sqlite3_stmt *insert;
    sqlite3_prepare_v2(db, "insert into t values(?, 'row')", -1, &insert, NULL);
    for (int i = 0; i < 500; i++) {
        sqlite3_bind_int(insert, 1, i * 3);
        sqlite3_step(insert);
        sqlite3_reset(insert);
    }
    sqlite3_finalize(insert);
    sqlite3_exec(db, "commit; select sum(a) from t where a % 2 = 0;", add, &sum, NULL);
    sqlite3_close(db);
    return sum;
}
