/* store_stress.c -- threads and forks on one store, for ThreadSanitizer
 * (.ci/tsan.sh) and coverage (.ci/coverage.sh).
 *
 * Four threads put, look up, gather, refresh, verify and read stats on one
 * directory store while a fifth forks children that use the inherited store
 * (put, lookup, gather) and exit.  Every served row is checked against the
 * content its key defines; a fresh reader then checks the whole directory.
 * Exits non-zero on any wrong byte or unexpected error; TSan reports races. */
#include "store.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NUMEL 24
#define BATCH 16
#define THREADS 4
static const uint64_t I64 = 0 | 64 << 8 | 1 << 16; /* DLPack int64 */
static char dir[64];
static tc_store *store;
static int iterations = 200;
static volatile int failed;

static void item_of(const uint64_t *key, int64_t *out)
{
    for (int j = 0; j < NUMEL; j++)
        out[j] = (int64_t)(key[0] * 1000003u + (uint64_t)j * (key[1] | 1));
}

static void fail(const char *what, const char *err)
{
    fprintf(stderr, "store_stress: %s: %s\n", what, err ? err : "");
    failed = 1;
}

/* Puts, looks up and gathers one batch of keys first..first+BATCH-1 (salted). */
static void round_trip(tc_store *s, uint64_t first, uint64_t salt)
{
    uint64_t keys[2 * BATCH];
    int64_t items[BATCH][NUMEL], dest[BATCH][NUMEL];
    for (int i = 0; i < BATCH; i++) {
        keys[2 * i] = first + (uint64_t)i;
        keys[2 * i + 1] = (first + (uint64_t)i) * 31 + salt;
        item_of(&keys[2 * i], items[i]);
    }
    int64_t shape[1] = {NUMEL};
    char err[512];
    size_t stored = 0;
    if (tc_store_put(s, keys, BATCH, I64, 1, shape, (const uint8_t *)items, &stored, err,
                     sizeof(err)) != TC_STORE_OK)
        fail("put", err);
    uint8_t present[BATCH], served[BATCH];
    if (tc_store_lookup(s, keys, BATCH, present, err, sizeof(err)) != TC_STORE_OK)
        fail("lookup", err);
    memset(dest, 0xff, sizeof(dest));
    if (tc_store_gather(s, keys, BATCH, I64, 1, shape, (uint8_t *)dest, served, err,
                        sizeof(err)) != TC_STORE_OK)
        fail("gather", err);
    for (int i = 0; i < BATCH; i++) {
        if (served[i] && memcmp(dest[i], items[i], sizeof(items[i])) != 0)
            fail("gather", "served bytes differ from what was put");
    }
}

static void *worker(void *arg)
{
    long t = (long)arg;
    char err[512];
    for (int it = 0; it < iterations && !failed; it++) {
        /* overlapping key ranges: threads race to store the same keys */
        round_trip(store, (uint64_t)((it * THREADS + t) % 97) * BATCH, (uint64_t)(it % 3));
        size_t added;
        if (it % 7 == 0 && tc_store_refresh(store, &added, err, sizeof(err)) != TC_STORE_OK)
            fail("refresh", err);
        tc_store_stats st;
        tc_store_stats_get(store, &st);
        char msg[256];
        for (int k = 0; k < TC_FAULT_KINDS; k++) {
            if (tc_store_fault_take(store, k, msg, sizeof(msg)))
                fail("unexpected fault", msg);
        }
        if (it % 50 == 49) {
            tc_store_verify_result r;
            if (tc_store_verify(store, &r, NULL, NULL, err, sizeof(err)) != TC_STORE_OK)
                fail("verify", err);
            if (r.corrupt != 0)
                fail("verify", "corrupt records");
        }
    }
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    for (int it = 0; it < iterations / 20 && !failed; it++) {
        pid_t pid = fork();
        if (pid == 0) {
            /* the child uses the inherited store: a new segment of its own */
            round_trip(store, 100000 + (uint64_t)it * BATCH, 0);
            _exit(failed ? 1 : 0);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            fail("fork", "child failed");
        usleep(2000);
    }
    return NULL;
}

static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *de;
    char path[512];
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        iterations = atoi(argv[1]);
    snprintf(dir, sizeof(dir), "/tmp/tc-stress-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return 2;
    tc_store_options opt = {0};
    char err[512];
    if (tc_store_open(dir, &opt, &store, err, sizeof(err)) != TC_STORE_OK) {
        fprintf(stderr, "open: %s\n", err);
        return 2;
    }
    pthread_t th[THREADS + 1];
    for (long t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    pthread_create(&th[THREADS], NULL, forker, NULL);
    for (int t = 0; t <= THREADS; t++)
        pthread_join(th[t], NULL);
    tc_store_free(store);

    /* a fresh reader: everything verifies and every key reads back exactly */
    tc_store *fresh;
    if (tc_store_open(dir, &opt, &fresh, err, sizeof(err)) != TC_STORE_OK)
        return 2;
    tc_store_verify_result r;
    if (tc_store_verify(fresh, &r, NULL, NULL, err, sizeof(err)) != TC_STORE_OK ||
        r.corrupt != 0)
        fail("final verify", err);
    for (uint64_t first = 0; first < 97 * BATCH; first += BATCH)
        round_trip(fresh, first, 0);
    tc_store_free(fresh);
    remove_dir();
    if (failed)
        return 1;
    printf("store_stress: OK (%d iterations x %d threads, %d forks)\n", iterations, THREADS,
           iterations / 20);
    return 0;
}
