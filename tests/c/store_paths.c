/* store_paths.c -- the store's less travelled paths, for .ci/coverage.sh:
 * damaged and truncated segments, resynchronisation, verify's problem
 * reports, hostile directory entries, sparse files, the arena, compression,
 * the byte limit, closed stores and the liveness rule.  Every served row is
 * checked against the bytes put for its key; exits non-zero on any mismatch. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NUMEL 300
static const uint64_t F32 = 2 | 32 << 8 | 1 << 16;
static const int64_t SHAPE[1] = {NUMEL};
static int failures;
static char root[64];

#define CHECK(c)                                                                             \
    do {                                                                                     \
        if (!(c)) {                                                                          \
            fprintf(stderr, "store_paths: line %d: %s\n", __LINE__, #c);                     \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

static void items(uint64_t first, size_t n, uint64_t *keys, float (*it)[NUMEL], int zeros)
{
    for (size_t i = 0; i < n; i++) {
        keys[2 * i] = first + i;
        keys[2 * i + 1] = (first + i) * 7 + 1;
        for (int j = 0; j < NUMEL; j++)
            it[i][j] = zeros ? 0.0f : (float)(first + i) * 0.5f + (float)j;
    }
}

static tc_store *open_dir(const char *d, int compress, uint64_t max_bytes)
{
    tc_store_options o = {0};
    o.compress = compress;
    o.zstd_level = 3;
    o.max_bytes = max_bytes;
    tc_store *s = NULL;
    char err[256];
    int rc = tc_store_open(d, &o, &s, err, sizeof(err));
    if (rc != TC_STORE_OK) {
        fprintf(stderr, "open %s: %s\n", d ? d : "(arena)", err);
        return NULL;
    }
    return s;
}

static size_t put(tc_store *s, uint64_t first, size_t n, int zeros)
{
    uint64_t keys[2 * 32];
    float it[32][NUMEL];
    items(first, n, keys, it, zeros);
    size_t stored = 0;
    char err[256];
    CHECK(tc_store_put(s, keys, n, F32, 1, SHAPE, (uint8_t *)it, &stored, err, sizeof(err)) ==
          TC_STORE_OK);
    return stored;
}

/* Rows served, each checked. */
static size_t served(tc_store *s, uint64_t first, size_t n, int zeros)
{
    uint64_t keys[2 * 32];
    float it[32][NUMEL], dest[32][NUMEL];
    uint8_t present[32], ok[32];
    items(first, n, keys, it, zeros);
    char err[256];
    CHECK(tc_store_lookup(s, keys, n, present, err, sizeof(err)) == TC_STORE_OK);
    CHECK(tc_store_gather(s, keys, n, F32, 1, SHAPE, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK);
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (ok[i]) {
            CHECK(memcmp(dest[i], it[i], sizeof(it[i])) == 0);
            count++;
        }
    }
    return count;
}

static void one_segment(const char *d, char *path, size_t len)
{
    DIR *dir = opendir(d);
    struct dirent *de;
    path[0] = '\0';
    while (dir && (de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, "seg-", 4) == 0)
            snprintf(path, len, "%s/%s", d, de->d_name);
    }
    if (dir)
        closedir(dir);
}

static void patch(const char *path, long off, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, bytes, n, off) == (ssize_t)n);
    close(fd);
}

static int problems;
static void on_problem(void *ctx, const char *seg, size_t si, uint64_t off, const char *why)
{
    (void)ctx, (void)seg, (void)si, (void)off, (void)why;
    problems++;
}

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/tc-paths-XXXXXX");
    if (mkdtemp(root) == NULL)
        return 2;
    char d[128], seg[512], err[256];
    const size_t rec = 128 + NUMEL * 4 + (64 - (NUMEL * 4) % 64) % 64;

    /* damage: a bad header (resync), a bad payload, a torn tail, then a cut */
    snprintf(d, sizeof(d), "%s/damage", root);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(put(w, 0, 8, 0) == 8);
    tc_store_free(w);
    one_segment(d, seg, sizeof(seg));
    patch(seg, (long)(2 * rec + 30), "\xff\xff", 2);          /* header of record 2 */
    patch(seg, (long)(5 * rec + 128 + 10), "\x01\x02\x03", 3); /* payload of record 5 */
    CHECK(truncate(seg, (off_t)(8 * rec - 100)) == 0);         /* torn last record */
    tc_store *s = open_dir(d, 0, 0);
    CHECK(served(s, 0, 8, 0) == 5);
    tc_store_verify_result r;
    problems = 0;
    CHECK(tc_store_verify(s, &r, on_problem, NULL, err, sizeof(err)) == TC_STORE_OK);
    CHECK(r.corrupt == 2 && r.torn == 1 && problems == 3);
    CHECK(truncate(seg, (off_t)(3 * rec)) == 0); /* cut under the open store */
    size_t added;
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK);
    CHECK(served(s, 0, 8, 0) == 2);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK);
    tc_store_free(s);

    /* garbage only (no header anywhere), a sparse hole, FIFO, socket, directory */
    snprintf(d, sizeof(d), "%s/hostile", root);
    w = open_dir(d, 0, 0);
    CHECK(put(w, 100, 4, 0) == 4);
    tc_store_free(w);
    char p[512];
    snprintf(p, sizeof(p), "%s/seg-garbage-1-0.tcs", d);
    int fd = open(p, O_WRONLY | O_CREAT, 0644);
    char junk[4096];
    memset(junk, 0x5a, sizeof(junk));
    CHECK(write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk));
    CHECK(ftruncate(fd, (off_t)1 << 32) == 0); /* 4 GiB, a hole after the junk */
    close(fd);
    snprintf(p, sizeof(p), "%s/seg-fifo-1-0.tcs", d);
    CHECK(mkfifo(p, 0644) == 0);
    snprintf(p, sizeof(p), "%s/seg-dir-1-0.tcs", d);
    CHECK(mkdir(p, 0755) == 0);
    snprintf(p, sizeof(p), "%s/seg-sock-1-0.tcs", d);
    int sk = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t plen = strlen(p);
    if (plen >= sizeof(sa.sun_path))
        return 2;
    memcpy(sa.sun_path, p, plen + 1);
    CHECK(bind(sk, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    s = open_dir(d, 0, 0);
    CHECK(served(s, 100, 4, 0) == 4);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.skipped == 3);
    CHECK(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK);
    tc_store_free(s);
    close(sk);

    /* the arena, the byte limit, compression, a closed store */
    s = open_dir(NULL, 0, 3 * rec);
    CHECK(put(s, 200, 5, 0) == 3);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.full);
    CHECK(served(s, 200, 5, 0) == 3);
    CHECK(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK && r.records == 3);
    uint64_t key[2] = {200, 200 * 7 + 1}, dtype;
    int ndim;
    int64_t shape[TC_STORE_MAX_NDIM];
    CHECK(tc_store_entry_info(s, key, &dtype, &ndim, shape, err, sizeof(err)) == TC_STORE_OK &&
          dtype == F32 && ndim == 1 && shape[0] == NUMEL);
    key[0] = 999;
    CHECK(tc_store_entry_info(s, key, &dtype, &ndim, shape, err, sizeof(err)) ==
          TC_STORE_EMISSING);
    tc_store_close(s);
    uint8_t present[1];
    CHECK(tc_store_lookup(s, key, 1, present, err, sizeof(err)) == TC_STORE_ECLOSED);
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_ECLOSED);
    tc_store_free(s);
    snprintf(d, sizeof(d), "%s/zstd", root);
    tc_store_options zo = {0};
    zo.compress = 1;
    zo.zstd_level = 3;
    s = NULL;
    if (tc_store_open(d, &zo, &s, err, sizeof(err)) == TC_STORE_OK) {
        CHECK(put(s, 300, 4, 1) == 4);
        CHECK(served(s, 300, 4, 1) == 4);
        tc_store_free(s);
        s = open_dir(d, 0, 0);
        CHECK(served(s, 300, 4, 1) == 4);
        tc_store_free(s);
    }

    /* liveness: this process, a pid that is not running, another host */
    char name[128];
    char host[65] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(name, sizeof(name), "seg-%s-%ld-0000000000000000.tcs", host, (long)getpid());
    int64_t now = (int64_t)time(NULL) * 1000000000LL;
    CHECK(tc_store_writer_may_append(name, now, now, 1000000000LL, host));
    CHECK(!tc_store_writer_may_append("seg-elsewhere-1-0.tcs", 0, now, 1000000000LL, host));
    CHECK(tc_store_writer_may_append("seg-elsewhere-1-0.tcs", now, now, 1000000000LL, host));
    CHECK(tc_store_writer_may_append("seg-nodash.tcs", 0, now, 1, host));

    /* batched gather: rows of one put read back in one preadv, mixed with
     * absent keys, a key asked twice, a record changed after it verified and a
     * file cut short under the reader; every served row is exact */
    snprintf(d, sizeof(d), "%s/batch", root);
    w = open_dir(d, 0, 0);
    CHECK(put(w, 500, 16, 0) == 16);
    tc_store_free(w);
    one_segment(d, seg, sizeof(seg));
    s = open_dir(d, 0, 0);
    CHECK(served(s, 500, 16, 0) == 16);
    {
        uint64_t keys[2 * 6];
        float it[6][NUMEL], dest[6][NUMEL];
        uint8_t ok[6];
        items(500, 6, keys, it, 0);
        keys[2 * 1] = 777; /* absent */
        keys[2 * 3] = keys[2 * 2]; /* the same key twice */
        keys[2 * 3 + 1] = keys[2 * 2 + 1];
        memcpy(it[3], it[2], sizeof(it[2]));
        CHECK(tc_store_gather(s, keys, 6, F32, 1, SHAPE, (uint8_t *)dest, ok, err,
                              sizeof(err)) == TC_STORE_OK);
        CHECK(ok[0] && !ok[1] && ok[2] && ok[3] && ok[4] && ok[5]);
        for (int i = 0; i < 6; i++)
            CHECK(!ok[i] || memcmp(dest[i], it[i], sizeof(it[i])) == 0);
        /* another item shape of the same size, and another size: misses */
        int64_t other[2] = {2, NUMEL / 2};
        CHECK(tc_store_gather(s, keys, 2, F32, 2, other, (uint8_t *)dest, ok, err,
                              sizeof(err)) == TC_STORE_OK && !ok[0] && !ok[1]);
        int64_t shorter[1] = {NUMEL - 1};
        CHECK(tc_store_gather(s, keys, 2, F32, 1, shorter, (uint8_t *)dest, ok, err,
                              sizeof(err)) == TC_STORE_OK && !ok[0] && !ok[1]);
        CHECK(tc_store_fault_take(s, TC_FAULT_MISMATCH, err, sizeof(err)) >= 2);
    }
    patch(seg, (long)(3 * rec + 8), "\x42", 1);   /* key of record 3, after it verified */
    CHECK(served(s, 500, 16, 0) == 15);
    CHECK(tc_store_fault_take(s, TC_FAULT_CHANGED, err, sizeof(err)) == 1);
    CHECK(truncate(seg, (off_t)(10 * rec + 200)) == 0); /* cut inside record 10 */
    CHECK(served(s, 500, 16, 0) == 9);
    /* the miss on record 3 refreshed, saw the file shrink, dropped 10..15 */
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 9);
    CHECK(unlink(seg) == 0); /* removed: its rows are misses, not faults */
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK);
    CHECK(served(s, 500, 16, 0) == 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.gone == 1 && st.records == 0);
    tc_store_free(s);

    /* a reader at RLIMIT_NOFILE=64 keeps one descriptor: rows spread over four
     * segments are served through the cache, and a segment replaced under its
     * name (another inode) is gone, never read as the old one */
    snprintf(d, sizeof(d), "%s/fdcache", root);
    for (int k = 0; k < 4; k++) {
        w = open_dir(d, 0, 0);
        CHECK(put(w, 600 + 8 * (uint64_t)k, 8, 0) == 8);
        tc_store_free(w);
    }
    {
        struct rlimit was, low;
        CHECK(getrlimit(RLIMIT_NOFILE, &was) == 0);
        low = was;
        low.rlim_cur = 64;
        CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
        s = open_dir(d, 0, 0);
        CHECK(setrlimit(RLIMIT_NOFILE, &was) == 0);
        for (int round = 0; round < 2; round++)
            CHECK(served(s, 600, 32, 0) == 32);
        CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.open_fds <= 1);
        /* replace the segment holding ids 600..607 by a copy (a new inode) */
        uint64_t k0[2] = {600, 600 * 7 + 1};
        char victim[512] = "";
        DIR *dir = opendir(d);
        struct dirent *de;
        while (dir && (de = readdir(dir)) != NULL) {
            if (strncmp(de->d_name, "seg-", 4) != 0)
                continue;
            snprintf(p, sizeof(p), "%s/%s", d, de->d_name);
            int f = open(p, O_RDONLY);
            uint8_t hb[16];
            if (f >= 0 && pread(f, hb, 16, 0) == 16 && memcmp(hb + 8, k0, 8) == 0)
                snprintf(victim, sizeof(victim), "%s", p);
            if (f >= 0)
                close(f);
        }
        if (dir)
            closedir(dir);
        CHECK(victim[0] != '\0');
        char copy[sizeof(victim) + 8];
        snprintf(copy, sizeof(copy), "%s.copy", victim);
        int in = open(victim, O_RDONLY), out = open(copy, O_WRONLY | O_CREAT, 0644);
        char buf[65536];
        ssize_t got;
        while (in >= 0 && out >= 0 && (got = read(in, buf, sizeof(buf))) > 0)
            CHECK(write(out, buf, (size_t)got) == got);
        close(in);
        close(out);
        CHECK(rename(copy, victim) == 0);
        /* served only from segments still the same file; nothing wrong served */
        size_t again = served(s, 600, 32, 0);
        CHECK(again == 24 || again == 32);
        CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK);
        CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.gone == 1);
        /* the copy is another file under a known name: not read by this store */
        CHECK(served(s, 600, 32, 0) == 24);
        tc_store_free(s);
    }

    /* fork: the child keeps reading its parent's segment through the inherited
     * descriptor and writes a segment of its own; the parent then serves both */
    snprintf(d, sizeof(d), "%s/fork", root);
    s = open_dir(d, 0, 0);
    CHECK(put(s, 700, 4, 0) == 4);
    pid_t kid = fork();
    if (kid == 0) {
        int bad = served(s, 700, 4, 0) != 4 || put(s, 710, 4, 0) != 4 ||
                  served(s, 710, 4, 0) != 4;
        tc_store_free(s);
        exit(bad || failures); /* exit, not _exit: coverage data is written at exit */
    }
    int kst = 0;
    CHECK(kid > 0 && waitpid(kid, &kst, 0) == kid && WIFEXITED(kst) && WEXITSTATUS(kst) == 0);
    CHECK(put(s, 720, 4, 0) == 4); /* still appending to its own segment */
    CHECK(served(s, 700, 4, 0) == 4 && served(s, 710, 4, 0) == 4 && served(s, 720, 4, 0) == 4);
    tc_store_free(s);
    s = open_dir(d, 0, 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.segments == 2 && st.records == 12);
    tc_store_free(s);

    /* arguments refused with a message, names and sizes */
    CHECK(strcmp(tc_store_fault_name(TC_FAULT_KINDS), "unknown") == 0);
    CHECK(strcmp(tc_store_fault_name(TC_FAULT_SHORT), "short_read") == 0);
    CHECK(tc_store_itemsize(1 | 4 << 8 | 1 << 16) == 0);        /* 4-bit elements */
    CHECK(tc_store_itemsize(2 | 32 << 8 | 0 << 16) == 0);       /* no lanes */
    CHECK(tc_store_itemsize(F32 | (uint64_t)1 << 40) == 0);     /* stray high bits */
    CHECK(tc_store_itemsize(5 | 64 << 8 | 2 << 16) == 16);      /* complex64 as 2 lanes */
    tc_store_options none = {0};
    CHECK(tc_store_open("", &none, &s, err, sizeof(err)) == TC_STORE_EARG && s == NULL);
    snprintf(p, sizeof(p), "%s/a-file", root);
    fd = open(p, O_WRONLY | O_CREAT, 0644);
    close(fd);
    CHECK(tc_store_open(p, &none, &s, err, sizeof(err)) == TC_STORE_EIO && s == NULL);
    snprintf(p, sizeof(p), "%s/a-file/below", root);
    CHECK(tc_store_open(p, &none, &s, err, sizeof(err)) == TC_STORE_EIO && s == NULL);
    s = open_dir(NULL, 0, 0);
    {
        uint64_t k[2] = {1, 2};
        float x[NUMEL] = {0};
        size_t stored = 0;
        int64_t deep[9] = {1, 1, 1, 1, 1, 1, 1, 1, NUMEL};
        int64_t neg[1] = {-1};
        uint8_t ok[1];
        CHECK(tc_store_put(s, k, 1, F32, 9, deep, (uint8_t *)x, &stored, err, sizeof(err)) ==
              TC_STORE_EARG);
        CHECK(tc_store_put(s, k, 1, F32, 1, neg, (uint8_t *)x, &stored, err, sizeof(err)) ==
              TC_STORE_EARG);
        CHECK(tc_store_put(s, k, 1, 1 | 4 << 8 | 1 << 16, 1, SHAPE, (uint8_t *)x, &stored, err,
                           sizeof(err)) == TC_STORE_EARG);
        CHECK(tc_store_gather(s, k, 1, 1 | 4 << 8 | 1 << 16, 1, SHAPE, (uint8_t *)x, ok, err,
                              sizeof(err)) == TC_STORE_EARG);
        CHECK(tc_store_put(s, k, 0, F32, 1, SHAPE, (uint8_t *)x, &stored, err, sizeof(err)) ==
              TC_STORE_OK && stored == 0);
        tc_store_close(s);
        CHECK(tc_store_gather(s, k, 1, F32, 1, SHAPE, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_ECLOSED);
        CHECK(tc_store_put(s, k, 1, F32, 1, SHAPE, (uint8_t *)x, &stored, err, sizeof(err)) ==
              TC_STORE_ECLOSED);
        uint64_t dt;
        int nd;
        int64_t sh[TC_STORE_MAX_NDIM];
        CHECK(tc_store_entry_info(s, k, &dt, &nd, sh, err, sizeof(err)) == TC_STORE_ECLOSED);
        CHECK(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_ECLOSED);
    }
    tc_store_free(s);
    tc_store_free(NULL);

    /* names that do not say who wrote them are judged by their age */
    CHECK(tc_store_writer_may_append("other.tcs", 0, now, 1, host)); /* not ours: careful */
    CHECK(!tc_store_writer_may_append("seg-h-notapid-0.tcs", 0, now, 1, host));
    CHECK(!tc_store_writer_may_append("seg-h-0-0.tcs", 0, now, 1, host));
    CHECK(!tc_store_writer_may_append("seg-h-12-", 0, now, 1, NULL));
    snprintf(name, sizeof(name), "seg-%s-99999999-0.tcs", host);
    CHECK(!tc_store_writer_may_append(name, 0, now, 1, host)); /* no such pid */

    /* compaction of two finished writers (forked children) */
    snprintf(d, sizeof(d), "%s/compact", root);
    for (int c = 0; c < 2; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            tc_store *cw = open_dir(d, 0, 0);
            put(cw, 400 + 10 * (uint64_t)c, 5, 0);
            tc_store_free(cw);
            exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
    }
    tc_store *reader = open_dir(d, 0, 0);
    CHECK(served(reader, 400, 5, 0) == 5);
    tc_store_compact_result cr;
    char merged[256];
    CHECK(tc_store_compact(d, 3600, &cr, merged, sizeof(merged), err, sizeof(err)) ==
          TC_STORE_OK && cr.removed == 2 && cr.records == 10);
    CHECK(served(reader, 400, 5, 0) == 5 && served(reader, 410, 5, 0) == 5);
    tc_store_free(reader);

    if (failures) {
        fprintf(stderr, "store_paths: %d failures (scratch left in %s)\n", failures, root);
        return 1;
    }
    printf("store_paths: OK\n");
    return 0;
}
