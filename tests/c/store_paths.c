/* store_paths.c -- the store's less travelled paths, for .ci/coverage.sh:
 * damaged and truncated segments, resynchronisation, verify's problem
 * reports, hostile directory entries, sparse files, the arena, compression,
 * the byte limit, closed stores and the liveness rule.  Every served row is
 * checked against the bytes put for its key; exits non-zero on any mismatch. */
#include "store.h"
#include "hash.h"
#include "zstd_dl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
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


/* ---- records made by hand, from docs/format.md sections 3 and 4 -------------- */

typedef struct {
    uint16_t version;
    uint8_t ndim, flags;
    uint64_t key0, key1, dtype_word, raw_len, stored_len, payload_sum;
    int64_t shape[8];
    uint32_t magic;
} hand_header;

static void le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t hand_payload_sum(const uint8_t *p, uint64_t n)
{
    uint64_t s = tc_fmix64(0x7463737061793176ULL ^ n);
    for (uint64_t off = 0; off < n; off += TC_HASH_BLOCK_BYTES) {
        uint64_t h[2];
        tc_hash_block(p + off, (size_t)(n - off < TC_HASH_BLOCK_BYTES ? n - off : TC_HASH_BLOCK_BYTES), h);
        s = tc_fmix64(s ^ h[0]) + h[1];
    }
    return s;
}

static uint64_t fnv_id(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        h = (h ^ *c) * 0x100000001b3ULL;
    return tc_fmix64(h);
}

/* Encodes h into b[128] with its header_sum for (segment name, offset). */
static void hand_encode(const hand_header *h, const char *seg_name, uint64_t offset, uint8_t *b)
{
    memset(b, 0, 128);
    uint32_t magic = h->magic ? h->magic : 0x31524354u;
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(magic >> (8 * i));
    b[4] = (uint8_t)h->version;
    b[5] = (uint8_t)(h->version >> 8);
    b[6] = h->ndim;
    b[7] = h->flags;
    le64(b + 8, h->key0);
    le64(b + 16, h->key1);
    le64(b + 24, h->dtype_word);
    le64(b + 32, h->raw_len);
    le64(b + 40, h->stored_len);
    le64(b + 48, h->payload_sum);
    for (int d = 0; d < 8; d++)
        le64(b + 64 + 8 * d, (uint64_t)h->shape[d]);
    uint64_t a = h->version == 1 ? 0x74637368647231ULL
                                 : tc_fmix64(0x74637368647232ULL ^ fnv_id(seg_name)) ^ offset;
    for (int i = 0; i < 16; i++)
        a = tc_fmix64(a ^ (i == 7 ? 0 : rd64(b + 8 * i))) + 0x9E3779B97F4A7C15ULL;
    le64(b + 56, a);
}

/* A whole record (header, payload, padding) of NUMEL float32 values into buf;
 * returns its length. */
static size_t hand_record(uint8_t *buf, int version, const char *seg_name, uint64_t offset,
                          uint64_t id, const float *values)
{
    hand_header h = {0};
    h.version = (uint16_t)version;
    h.ndim = 1;
    h.key0 = id;
    h.key1 = id * 7 + 1;
    h.dtype_word = F32;
    h.raw_len = h.stored_len = NUMEL * 4;
    h.shape[0] = NUMEL;
    memcpy(buf + 128, values, NUMEL * 4);
    h.payload_sum = hand_payload_sum(buf + 128, NUMEL * 4);
    hand_encode(&h, seg_name, offset, buf);
    size_t total = 128 + (NUMEL * 4 + 63) / 64 * 64;
    memset(buf + 128 + NUMEL * 4, 0, total - 128 - NUMEL * 4);
    return total;
}

static void write_file(const char *path, const void *b, size_t n, off_t off)
{
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    CHECK(fd >= 0 && pwrite(fd, b, n, off) == (ssize_t)n);
    close(fd);
}

static uint64_t faults_of(tc_store *s, int kind)
{
    char msg[256];
    return tc_store_fault_take(s, kind, msg, sizeof(msg));
}

static int problems;
static void on_problem(void *ctx, const char *seg, size_t si, uint64_t off, const char *why)
{
    (void)ctx, (void)seg, (void)si, (void)off, (void)why;
    problems++;
}


/* Records checked in memory (the object-store tier): each header check names
 * what failed, version 2 binds a record to its place and version 1 does not,
 * the payload sum, compressed payloads, and the copy out. */
static void records_in_memory(void)
{
    static uint8_t rec[8192];
    float v[NUMEL], out[NUMEL];
    for (int j = 0; j < NUMEL; j++)
        v[j] = (float)j * 0.25f;
    const char *name = "seg-h-1-00.tcs";
    uint64_t id = tc_store_segment_id(name);
    CHECK(id == fnv_id(name));
    tc_store_record r;
    char err[256];
    size_t total = hand_record(rec, 2, name, 640, 9, v);
    CHECK(tc_store_record_parse(rec, total, id, 640, 1, &r, err, sizeof(err)) == TC_STORE_OK &&
          r.total == total && r.version == 2 && r.key0 == 9 && r.key1 == 64 && !r.compressed &&
          r.ndim == 1 && r.shape[0] == NUMEL && r.raw_len == NUMEL * 4);
    memset(out, 0, sizeof(out));
    CHECK(tc_store_record_payload(rec, &r, (uint8_t *)out, sizeof(out), err, sizeof(err)) ==
              TC_STORE_OK &&
          memcmp(out, v, sizeof(v)) == 0);
    CHECK(tc_store_record_payload(rec, &r, (uint8_t *)out, sizeof(out) - 4, err, sizeof(err)) ==
          TC_STORE_EARG);
    /* version 2 at another offset or in another segment: refused */
    CHECK(tc_store_record_parse(rec, total, id, 704, 1, &r, err, sizeof(err)) ==
              TC_STORE_ECORRUPT &&
          strstr(err, "header checksum") != NULL);
    CHECK(tc_store_record_parse(rec, total, id + 1, 640, 1, &r, err, sizeof(err)) ==
          TC_STORE_ECORRUPT);
    /* short: below a header, and a payload cut */
    CHECK(tc_store_record_parse(rec, 100, id, 640, 1, &r, err, sizeof(err)) ==
              TC_STORE_ECORRUPT &&
          strstr(err, "truncated") != NULL);
    CHECK(tc_store_record_parse(rec, total - 64, id, 640, 1, &r, err, sizeof(err)) ==
              TC_STORE_ECORRUPT &&
          strstr(err, "truncated") != NULL);
    /* a payload bit flipped: refused when the payload is checked */
    rec[200] ^= 1;
    CHECK(tc_store_record_parse(rec, total, id, 640, 1, &r, err, sizeof(err)) ==
              TC_STORE_ECORRUPT &&
          strstr(err, "payload checksum") != NULL);
    CHECK(tc_store_record_parse(rec, total, id, 640, 0, &r, err, sizeof(err)) == TC_STORE_OK);
    /* version 1 is read anywhere */
    total = hand_record(rec, 1, name, 0, 10, v);
    CHECK(tc_store_record_parse(rec, total, 12345, 99 * 64, 1, &r, err, sizeof(err)) ==
              TC_STORE_OK &&
          r.version == 1 && r.key0 == 10);

    /* an empty item: nothing to copy, dest may be NULL */
    {
        hand_header z = {0};
        z.version = 2;
        z.ndim = 1;
        z.key0 = 12;
        z.dtype_word = F32;
        z.payload_sum = hand_payload_sum(rec + 128, 0);
        hand_encode(&z, name, 0, rec);
        CHECK(tc_store_record_parse(rec, 128, id, 0, 1, &r, err, sizeof(err)) == TC_STORE_OK &&
              r.total == 128 && r.raw_len == 0);
        CHECK(tc_store_record_payload(rec, &r, NULL, 0, err, sizeof(err)) == TC_STORE_OK);
    }

    /* every header check, each with a header_sum that matches */
    static const struct {
        int what;
        const char *why;
    } bad[] = {
        {0, "bad magic"},          {1, "bad magic or version"}, {2, "header checksum"},
        {3, "ndim above 8"},       {4, "unknown flag"},         {5, "whole number"},
        {6, "negative"},           {7, "overflowing"},          {8, "past ndim"},
        {9, "raw_len differs"},    {10, "inconsistent"},        {11, "inconsistent"},
        {12, "too large"},
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        hand_header h = {0};
        h.version = 2;
        h.ndim = 1;
        h.key0 = 1;
        h.dtype_word = F32;
        h.raw_len = h.stored_len = NUMEL * 4;
        h.shape[0] = NUMEL;
        switch (bad[k].what) {
        case 0: h.magic = 0x12345678u; break;
        case 1: h.version = 3; break;
        case 3: h.ndim = 9; break;
        case 4: h.flags = 2; break;
        case 5: h.dtype_word = 1 | 4 << 8 | 1 << 16; break;
        case 6: h.shape[0] = -1; break;
        case 7: h.ndim = 2; h.shape[1] = (int64_t)1 << 62; break;
        case 8: h.shape[1] = 5; break;
        case 9: h.raw_len = h.stored_len = 4; break;
        case 10: h.flags = 1; break;  /* compressed, yet not smaller */
        case 11: h.stored_len -= 4; break;
        case 12:
            h.dtype_word = 1 | 8 << 8 | 1 << 16;
            h.ndim = 2;
            h.shape[0] = 2;
            h.shape[1] = ((int64_t)1 << 62) + 1;
            h.raw_len = ((uint64_t)1 << 63) + 2;
            h.stored_len = ((uint64_t)1 << 63) + 1;
            h.flags = 1;
            break;
        }
        hand_encode(&h, name, 0, rec);
        if (bad[k].what == 2)
            rec[60] ^= 0x10;
        CHECK(tc_store_record_parse(rec, sizeof(rec), id, 0, 1, &r, err, sizeof(err)) ==
                  TC_STORE_ECORRUPT &&
              strstr(err, bad[k].why) != NULL);
    }

    /* compressed: copied out through libzstd; a frame that is not zstd fails */
    if (tc_zstd_available(NULL, 0)) {
        float zeros[NUMEL] = {0};
        hand_header h = {0};
        h.version = 2;
        h.ndim = 1;
        h.key0 = 11;
        h.dtype_word = F32;
        h.raw_len = NUMEL * 4;
        h.shape[0] = NUMEL;
        h.flags = 1;
        char zerr[200];
        h.stored_len = tc_zstd_compress(rec + 128, sizeof(rec) - 128, zeros, sizeof(zeros), 3, 0,
                                        zerr, sizeof(zerr));
        CHECK(h.stored_len > 0 && h.stored_len < h.raw_len);
        h.payload_sum = hand_payload_sum(rec + 128, h.stored_len);
        hand_encode(&h, name, 0, rec);
        CHECK(tc_store_record_parse(rec, sizeof(rec), id, 0, 1, &r, err, sizeof(err)) ==
                  TC_STORE_OK &&
              r.compressed);
        memset(out, 0xff, sizeof(out));
        CHECK(tc_store_record_payload(rec, &r, (uint8_t *)out, sizeof(out), err, sizeof(err)) ==
                  TC_STORE_OK &&
              memcmp(out, zeros, sizeof(zeros)) == 0);
        memset(rec + 128, 0x77, h.stored_len); /* checksummed garbage */
        h.payload_sum = hand_payload_sum(rec + 128, h.stored_len);
        hand_encode(&h, name, 0, rec);
        CHECK(tc_store_record_parse(rec, sizeof(rec), id, 0, 1, &r, err, sizeof(err)) ==
              TC_STORE_OK);
        CHECK(tc_store_record_payload(rec, &r, (uint8_t *)out, sizeof(out), err, sizeof(err)) ==
              TC_STORE_EZSTD);
    }
}

/* Segments written by hand: version 1 records among version 2 ones, garbage,
 * a hole and a record after it (the resync skips the hole), and verified
 * records whose headers then change on disk, one field each. */
static void hand_segments(void)
{
    char d[128], p[512], err[256];
    snprintf(d, sizeof(d), "%s/hand", root);
    CHECK(mkdir(d, 0755) == 0);
    static uint8_t buf[1 << 16];
    float v[6][NUMEL];
    uint64_t keys[12];
    items(800, 6, keys, v, 0);
    const char *name = "seg-hand-1-0000000000000001.tcs";
    snprintf(p, sizeof(p), "%s/%s", d, name);
    size_t off = 0, at[6];
    for (int k = 0; k < 5; k++) {
        at[k] = off;
        off += hand_record(buf + off, k % 2 ? 2 : 1, name, off, 800 + (uint64_t)k, v[k]);
    }
    memset(buf + off, 0x5a, 4096); /* garbage, then a hole up to 1 MiB */
    write_file(p, buf, off + 4096, 0);
    at[5] = 1 << 20;
    size_t n = hand_record(buf, 2, name, at[5], 805, v[5]);
    write_file(p, buf, n, (off_t)at[5]);
    tc_store *s = open_dir(d, 0, 0);
    CHECK(served(s, 800, 6, 0) == 6);
    /* garbage at the end: searched to its end, nothing found; a record
     * appended after it is found by the search going on from there */
    struct stat fst;
    CHECK(stat(p, &fst) == 0);
    size_t tail = (size_t)fst.st_size;
    memset(buf, 0x33, 1000);
    write_file(p, buf, 1000, (off_t)tail);
    size_t added = 9;
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 0);
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 0);
    float v6[1][NUMEL];
    uint64_t k6[2];
    items(806, 1, k6, v6, 0);
    size_t at6 = (tail + 1000 + 63) / 64 * 64;
    n = hand_record(buf, 2, name, at6, 806, v6[0]);
    write_file(p, buf, n, (off_t)at6);
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 1);
    CHECK(served(s, 806, 1, 0) == 1);
    tc_store_verify_result r;
    problems = 0;
    CHECK(tc_store_verify(s, &r, on_problem, NULL, err, sizeof(err)) == TC_STORE_OK &&
          r.records == 7 && r.corrupt == 2 && problems == 2);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 2 && st.records == 7);
    /* every record verified: now each header changes in one field */
    uint8_t b8[8];
    patch(p, (long)at[0], "\x00", 1);              /* magic */
    patch(p, (long)at[1] + 4, "\x03", 1);          /* version 3 */
    le64(b8, NUMEL * 4 + 64);
    patch(p, (long)at[2] + 40, b8, 8);             /* stored_len above raw_len */
    patch(p, (long)at[3] + 7, "\x02", 1);          /* an unknown flag */
    le64(b8, NUMEL * 4 - 64);
    patch(p, (long)at[4] + 40, b8, 8);             /* stored_len below, not compressed */
    CHECK(served(s, 800, 6, 0) == 1);
    CHECK(faults_of(s, TC_FAULT_CHANGED) == 5);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 2);
    tc_store_free(s);
    /* a fresh reader: the changed records fail their checks, nothing is served wrong */
    s = open_dir(d, 0, 0);
    CHECK(served(s, 800, 6, 0) == 1);
    tc_store_free(s);
}

/* Items above the 1 MiB verification chunk: verified at first use in chunks;
 * one with a changed byte is dropped; one whose payload is a hole is refused
 * without reading it. */
static void big_records(void)
{
    char d[128], p[512], seg[512], err[256];
    snprintf(d, sizeof(d), "%s/big", root);
    const uint64_t U8 = 1 | 8 << 8 | 1 << 16;
    const int64_t big = (3 << 20) / 2;
    uint8_t *item = malloc((size_t)big * 2), *dest = malloc((size_t)big * 2);
    for (int64_t i = 0; i < big * 2; i++)
        item[i] = (uint8_t)(i * 131 + (i >> 9));
    uint64_t keys[4] = {900, 901, 902, 903};
    size_t stored = 0;
    tc_store *w = open_dir(d, 0, 0);
    CHECK(tc_store_put(w, keys, 2, U8, 1, &big, item, &stored, err, sizeof(err)) ==
              TC_STORE_OK && stored == 2);
    tc_store_free(w);
    one_segment(d, seg, sizeof(seg));
    uint64_t total = 128 + ((uint64_t)big + 63) / 64 * 64;
    patch(seg, (long)(total + 128 + (uint64_t)big - 10), "\x01", 1); /* 2nd item, last chunk */
    /* a header over a hole of 2 MiB, in a segment of its own */
    hand_header h = {0};
    h.version = 2;
    h.ndim = 1;
    h.key0 = 910;
    h.key1 = 911;
    h.dtype_word = U8;
    h.raw_len = h.stored_len = 2u << 20;
    h.shape[0] = 2 << 20;
    h.payload_sum = 12345;
    uint8_t hb[128];
    snprintf(p, sizeof(p), "%s/seg-hole-1-0000000000000002.tcs", d);
    hand_encode(&h, "seg-hole-1-0000000000000002.tcs", 0, hb);
    write_file(p, hb, 128, 0);
    CHECK(truncate(p, 128 + (2 << 20)) == 0);
    tc_store *s = open_dir(d, 0, 0);
    uint64_t k4[6] = {900, 901, 901, 902, 910, 911};
    uint8_t present[3], ok[2];
    CHECK(tc_store_lookup(s, k4, 3, present, err, sizeof(err)) == TC_STORE_OK && present[0] &&
          !present[1] && !present[2]);
    CHECK(tc_store_gather(s, keys, 2, U8, 1, &big, dest, ok, err, sizeof(err)) == TC_STORE_OK &&
          ok[0] && !ok[1] && memcmp(dest, item, (size_t)big) == 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 2 && st.records == 1);
    tc_store_free(s);
    free(item);
    free(dest);
}

static void copy_into(const char *from, const char *dir)
{
    const char *base = strrchr(from, '/');
    char to[512];
    snprintf(to, sizeof(to), "%s/%s", dir, base ? base + 1 : from);
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_EXCL, 0644);
    char buf[65536];
    ssize_t got;
    CHECK(in >= 0 && out >= 0);
    while (in >= 0 && out >= 0 && (got = read(in, buf, sizeof(buf))) > 0)
        CHECK(write(out, buf, (size_t)got) == got);
    close(in);
    close(out);
}

/* Puts first..first+n-1 from a forked child that then exits (a finished writer). */
static void put_in_child(const char *d, uint64_t first, size_t n)
{
    pid_t pid = fork();
    if (pid == 0) {
        tc_store *w = open_dir(d, 0, 0);
        int bad = w == NULL;
        for (size_t done = 0; !bad && done < n; done += 32)
            bad = put(w, first + done, n - done < 32 ? n - done : 32, 0) !=
                  (n - done < 32 ? n - done : 32);
        tc_store_free(w);
        exit(bad);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A reader keeping one descriptor (RLIMIT_NOFILE 64) over a segment A and a
 * later copy C of its keys (and one more), both merged by a compaction.  Its
 * gather finds A removed; the refresh's reindex pass then indexes the keys
 * from C, whose descriptor it still holds, and only the refresh's re-check
 * finds C removed too: the refresh repeats its pass (the merged segment,
 * listed meanwhile, holds the keys), so one gather serves every row through
 * one refresh. */
static void removed_between_passes(void)
{
    char d[128], d2[128], seg[512], err[256];
    snprintf(d, sizeof(d), "%s/passes", root);
    snprintf(d2, sizeof(d2), "%s/passes-dup", root);
    put_in_child(d, 1000, 8);
    put_in_child(d2, 1000, 9);
    struct rlimit was, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &was) == 0);
    low = was;
    low.rlim_cur = 64;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    tc_store *s = open_dir(d, 0, 0);
    CHECK(setrlimit(RLIMIT_NOFILE, &was) == 0);
    CHECK(served(s, 1000, 8, 0) == 8);
    CHECK(put(s, 1100, 2, 0) == 2); /* its own segment: live, never merged nor re-scanned */
    one_segment(d2, seg, sizeof(seg));
    copy_into(seg, d);
    char fifo[512];
    snprintf(fifo, sizeof(fifo), "%s/seg-fifo-1-0.tcs", d); /* ignored throughout */
    CHECK(mkfifo(fifo, 0644) == 0);
    size_t added = 9;
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 1);
    CHECK(served(s, 1008, 1, 0) == 1); /* C's descriptor is now the one kept */
    tc_store_compact_result cr;
    char merged[256];
    CHECK(tc_store_compact(d, 0, &cr, merged, sizeof(merged), err, sizeof(err)) ==
              TC_STORE_OK &&
          cr.removed == 2 && cr.records == 9 && cr.duplicates == 8 && cr.live == 1);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK);
    uint64_t refreshes = st.refreshes;
    CHECK(served(s, 1000, 8, 0) == 8);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.refreshes == refreshes + 1 &&
          st.gone == 2 && st.records == 11);
    CHECK(served(s, 1100, 2, 0) == 2);

    tc_store_free(s);
}

/* Compaction of a writer that put 600 records in one call (more than one
 * pwritev takes) and of a damaged segment: a bad header is searched past, a
 * bad payload dropped, every intact record merged once. */
static void compaction_paths(void)
{
    char d[128], seg[512], err[256];
    const size_t rec = 128 + NUMEL * 4 + (64 - (NUMEL * 4) % 64) % 64;
    snprintf(d, sizeof(d), "%s/compact-many", root);
    pid_t pid = fork();
    if (pid == 0) {
        enum { MANY = 600 };
        uint64_t *keys = malloc(2 * MANY * sizeof(uint64_t));
        float(*it)[NUMEL] = malloc(MANY * sizeof(*it));
        items(3000, MANY, keys, it, 0);
        tc_store *w = open_dir(d, 0, 0);
        size_t stored = 0;
        int bad = w == NULL ||
                  tc_store_put(w, keys, MANY, F32, 1, SHAPE, (uint8_t *)it, &stored, err,
                               sizeof(err)) != TC_STORE_OK ||
                  stored != MANY;
        tc_store_free(w);
        free(keys);
        free(it);
        exit(bad);
    }
    int wst = 0;
    CHECK(pid > 0 && waitpid(pid, &wst, 0) == pid && WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    char d2[128];
    snprintf(d2, sizeof(d2), "%s/compact-damaged", root);
    put_in_child(d2, 4000, 8);
    one_segment(d2, seg, sizeof(seg));
    patch(seg, (long)(2 * rec + 30), "\xff\xff", 2);          /* header of record 2 */
    patch(seg, (long)(5 * rec + 128 + 10), "\x01\x02\x03", 3); /* payload of record 5 */
    {
        uint8_t junk[1000];
        memset(junk, 0x5a, sizeof(junk));
        write_file(seg, junk, sizeof(junk), (off_t)(8 * rec)); /* no header after it */
    }
    copy_into(seg, d);
    tc_store_compact_result cr;
    char merged[256];
    CHECK(tc_store_compact(d, 0, &cr, merged, sizeof(merged), err, sizeof(err)) ==
              TC_STORE_OK &&
          cr.removed == 2 && cr.records == 606 && cr.dropped == 1 && cr.duplicates == 0);
    tc_store *s = open_dir(d, 0, 0);
    tc_store_verify_result r;
    CHECK(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK &&
          r.records == 606 && r.corrupt == 0 && r.segments == 1);
    size_t all = 0;
    for (uint64_t k = 0; k < 600; k += 30)
        all += served(s, 3000 + k, 30, 0);
    CHECK(all == 600);
    CHECK(served(s, 4000, 8, 0) == 6);
    tc_store_free(s);
}

/* Segment names spell this host's name with '_' for every character but
 * letters, digits, '.' and '_' (docs/format.md section 1: no '-'), and "host"
 * for an empty one.  Needs a UTS namespace of its own (root); skipped else. */
static void host_names(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        if (unshare(CLONE_NEWUTS) != 0)
            exit(77);
        static const struct {
            const char *set, *want;
        } names[] = {
            {"Odd-host name!", "Odd_host_name_"},
            {"a.b_c-9", "a.b_c_9"},
            {"", "host"},
        };
        int bad = 0;
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
            char d[160], seg[512], want[320];
            if (sethostname(names[k].set, strlen(names[k].set)) != 0)
                exit(77);
            snprintf(d, sizeof(d), "%s/host-%zu", root, k);
            tc_store *w = open_dir(d, 0, 0);
            bad |= w == NULL || put(w, 1, 1, 0) != 1;
            tc_store_free(w);
            one_segment(d, seg, sizeof(seg));
            snprintf(want, sizeof(want), "%s/seg-%s-%ld-", d, names[k].want, (long)getpid());
            bad |= strncmp(seg, want, strlen(want)) != 0;
        }
        exit(bad || failures);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
          (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 77));
}

/* The arena: an item larger than a chunk gets a mapping of its own, and the
 * next record a new chunk; a key twice in one put is stored once. */
static void arena_chunks(void)
{
    const uint64_t U8 = 1 | 8 << 8 | 1 << 16;
    const int64_t big = (65 << 20) - 128, one = 100; /* fills its mapping exactly */
    uint8_t *item = malloc((size_t)big), *dest = malloc((size_t)big);
    for (int64_t i = 0; i < big; i++)
        item[i] = (uint8_t)(i ^ (i >> 11));
    tc_store *s = open_dir(NULL, 0, 0);
    uint64_t keys[6] = {1, 2, 3, 4, 3, 4};
    size_t stored = 0;
    uint8_t ok[2];
    char err[256];
    CHECK(tc_store_put(s, keys, 1, U8, 1, &big, item, &stored, err, sizeof(err)) ==
              TC_STORE_OK && stored == 1);
    CHECK(tc_store_put(s, keys + 2, 2, U8, 1, &one, item + 5, &stored, err, sizeof(err)) ==
              TC_STORE_OK && stored == 1); /* the same key twice */
    memset(dest, 0, (size_t)big);
    CHECK(tc_store_gather(s, keys, 1, U8, 1, &big, dest, ok, err, sizeof(err)) == TC_STORE_OK &&
          ok[0] && memcmp(dest, item, (size_t)big) == 0);
    CHECK(tc_store_gather(s, keys + 2, 2, U8, 1, &one, dest, ok, err, sizeof(err)) ==
              TC_STORE_OK &&
          ok[0] && ok[1] && memcmp(dest, item + 5, 100) == 0 && memcmp(dest + 100, item + 5, 100) == 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 2 && st.segments == 2);
    tc_store_free(s);
    free(item);
    free(dest);
}

/* Calls at the edges: empty items (also compressed, and in the arena), the
 * key (0, 0), a key twice in one put, incompressible items, arguments
 * refused, dtype and shape mismatches of the same size, a full store, fault
 * and error reporting, records changed on disk before their first use, and a
 * compaction of all that (empty payloads, a torn tail, a live writer, a
 * FIFO) without `merged`. */
static void edges(void)
{
    char d[128], seg[512], err[256], p[512];
    const uint64_t I32 = 0 | 32 << 8 | 1 << 16;
    const int64_t zero[1] = {0}, two[2] = {10, 30}, flip[2] = {30, 10}, tiny[1] = {8};
    float x[NUMEL] = {0};
    uint8_t ok[4], present[4];
    size_t stored = 0;
    snprintf(d, sizeof(d), "%s/edges", root);
    pid_t pid = fork();
    if (pid == 0) { /* a finished writer */
        tc_store *w = open_dir(d, 1, 0);
        if (w == NULL)
            w = open_dir(d, 0, 0);
        uint64_t k[8] = {0, 0, 5, 6, 5, 6, 7, 8};
        int bad = tc_store_put(w, k, 4, F32, 1, zero, (uint8_t *)x, &stored, err, sizeof(err)) !=
                      TC_STORE_OK || stored != 3;
        uint8_t noise[4 * 300]; /* incompressible: stored as is */
        uint64_t xs = 88172645463325252ULL;
        for (size_t i = 0; i < sizeof(noise); i++) {
            xs ^= xs << 13;
            xs ^= xs >> 7;
            xs ^= xs << 17;
            noise[i] = (uint8_t)(xs >> 32);
        }
        uint64_t k2[2] = {20, 21};
        bad |= tc_store_put(w, k2, 1, F32, 2, two, noise, &stored, err, sizeof(err)) !=
                   TC_STORE_OK || stored != 1;
        tc_store_free(w);
        exit(bad);
    }
    int wst = 0;
    CHECK(pid > 0 && waitpid(pid, &wst, 0) == pid && WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    tc_store *s = open_dir(d, 0, 0);
    uint64_t k[6] = {0, 0, 5, 6, 7, 8};
    CHECK(tc_store_lookup(s, k, 3, present, err, sizeof(err)) == TC_STORE_OK && present[0] &&
          present[1] && present[2]);
    CHECK(tc_store_gather(s, k, 3, F32, 1, zero, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && ok[0] && ok[1] && ok[2]);
    CHECK(tc_store_gather(s, k, 1, F32, 1, zero, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && ok[0]);
    /* the same bytes as another dtype, or another shape of the same size: misses */
    uint64_t k2[2] = {20, 21};
    CHECK(tc_store_gather(s, k2, 1, F32, 2, two, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && ok[0]);
    CHECK(tc_store_gather(s, k2, 1, I32, 2, two, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && !ok[0]);
    CHECK(tc_store_gather(s, k2, 1, F32, 2, flip, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && !ok[0]);
    CHECK(faults_of(s, TC_FAULT_MISMATCH) == 2);
    char msg[64];
    CHECK(tc_store_fault_take(s, TC_FAULT_MISMATCH, msg, sizeof(msg)) == 0); /* no news */
    /* arguments refused */
    int64_t neg[1] = {-1}, huge[2] = {(int64_t)1 << 62, 8};
    CHECK(tc_store_gather(s, k2, 1, F32, 1, neg, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && !ok[0]);
    CHECK(tc_store_gather(s, k2, 1, F32, 2, huge, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && !ok[0]);
    CHECK(tc_store_put(s, k2, 1, F32, -1, zero, (uint8_t *)x, &stored, err, sizeof(err)) ==
          TC_STORE_EARG);
    CHECK(tc_store_put(s, k2, 1, F32, 2, huge, (uint8_t *)x, &stored, err, sizeof(err)) ==
          TC_STORE_EARG);
    /* reporting: no buffer, no such kind, no write error */
    CHECK(faults_of(s, TC_FAULT_MISMATCH) == 2); /* the two refused shapes */
    CHECK(tc_store_gather(s, k2, 1, I32, 2, two, (uint8_t *)x, ok, err, sizeof(err)) ==
          TC_STORE_OK);
    CHECK(tc_store_fault_take(s, TC_FAULT_MISMATCH, NULL, 0) == 1);
    CHECK(tc_store_fault_take(s, -1, msg, sizeof(msg)) == 0);
    CHECK(tc_store_fault_take(s, TC_FAULT_KINDS, msg, sizeof(msg)) == 0);
    CHECK(strcmp(tc_store_fault_name(-1), "unknown") == 0);
    CHECK(tc_store_io_error(s, msg, sizeof(msg)) == 0);
    tc_store *none = NULL;
    tc_store_options o = {0};
    CHECK(tc_store_open("", &o, &none, NULL, 0) == TC_STORE_EARG);
    tc_store_free(s);

    /* records of 32 bytes are verified at first use, not by the scan: changed
     * on disk before it, they are dropped without a "changed" fault; a
     * verified one whose header then changes is found by entry_info */
    snprintf(d, sizeof(d), "%s/tiny", root);
    pid = fork();
    if (pid == 0) {
        tc_store *w = open_dir(d, 0, 0);
        uint64_t tk[16] = {30, 1, 31, 1, 32, 1, 33, 1, 34, 1, 35, 1, 36, 1, 37, 1};
        int32_t v[8][8] = {{1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}};
        int bad = tc_store_put(w, tk, 8, I32, 1, tiny, (uint8_t *)v, &stored, err,
                               sizeof(err)) != TC_STORE_OK || stored != 8;
        tc_store_free(w);
        exit(bad);
    }
    CHECK(pid > 0 && waitpid(pid, &wst, 0) == pid && WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    one_segment(d, seg, sizeof(seg));
    s = open_dir(d, 0, 0);
    const long rec32 = 128 + 64;
    patch(seg, 8, "\x77", 1);             /* key0 of record 0 */
    patch(seg, rec32 + 8, "\x77", 1);     /* key0 of record 1 */
    patch(seg, 3 * rec32 + 16, "\x77", 1); /* key1 of record 3 */
    patch(seg, 4 * rec32 + 32, "\x40", 1); /* raw_len of record 4 */
    patch(seg, 5 * rec32 + 16, "\x77", 1); /* key1 of record 5 */
    patch(seg, 6 * rec32 + 32, "\x40", 1); /* raw_len of record 6 */
    uint64_t tk[16] = {30, 1, 31, 1, 32, 1, 33, 1, 34, 1, 35, 1, 36, 1, 37, 1};
    int32_t got[4][8];
    for (int r0 = 0; r0 < 8; r0 += 3) /* records 0, 3, 6 by lookup */
        CHECK(tc_store_lookup(s, tk + 2 * r0, 1, present, err, sizeof(err)) == TC_STORE_OK &&
              !present[0]);
    CHECK(tc_store_lookup(s, tk + 8, 1, present, err, sizeof(err)) == TC_STORE_OK && !present[0]);
    for (int r1 = 1; r1 < 8; r1 += 4) /* records 1, 5 by gather */
        CHECK(tc_store_gather(s, tk + 2 * r1, 1, I32, 1, tiny, (uint8_t *)got, ok, err,
                              sizeof(err)) == TC_STORE_OK && !ok[0]);
    CHECK(faults_of(s, TC_FAULT_CHANGED) == 0);
    CHECK(tc_store_lookup(s, tk + 4, 1, present, err, sizeof(err)) == TC_STORE_OK && present[0]);
    patch(seg, 2 * rec32 + 8, "\x77", 1); /* key of record 2, verified now */
    uint64_t dt;
    int nd;
    int64_t sh[TC_STORE_MAX_NDIM];
    CHECK(tc_store_entry_info(s, tk + 4, &dt, &nd, sh, err, sizeof(err)) == TC_STORE_EMISSING);
    CHECK(faults_of(s, TC_FAULT_CHANGED) == 1);
    CHECK(tc_store_gather(s, tk + 14, 1, I32, 1, tiny, (uint8_t *)got, ok, err, sizeof(err)) ==
              TC_STORE_OK && ok[0] && got[0][0] == 8);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 1 && st.corrupt == 7);
    tc_store_close(s);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_ECLOSED);
    tc_store_free(s);

    /* a full store stores nothing more; a key twice in one put is stored once */
    snprintf(d, sizeof(d), "%s/full", root);
    s = open_dir(d, 0, 2 * (128 + 64));
    uint64_t fk[8] = {40, 1, 40, 1, 41, 1, 42, 1};
    int32_t v[4][8] = {{1}, {1}, {2}, {3}};
    CHECK(tc_store_put(s, fk, 4, I32, 1, tiny, (uint8_t *)v, &stored, err, sizeof(err)) ==
              TC_STORE_OK && stored == 2);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.full);
    CHECK(tc_store_put(s, fk + 6, 1, I32, 1, tiny, (uint8_t *)v[3], &stored, err, sizeof(err)) ==
              TC_STORE_OK && stored == 0);
    tc_store_free(s);

    /* compaction: empty payloads and the key (0, 0), changed headers searched
     * past up to a torn tail (nothing of that segment merged), a writer
     * still running (this process), a FIFO under a segment's name, no `merged` */
    snprintf(d, sizeof(d), "%s/edges", root);
    snprintf(p, sizeof(p), "%s/seg-fifo-1-0.tcs", d);
    CHECK(mkfifo(p, 0644) == 0);
    char t[128];
    snprintf(t, sizeof(t), "%s/tiny", root);
    one_segment(t, seg, sizeof(seg));
    CHECK(truncate(seg, 8 * rec32 - 10) == 0);
    copy_into(seg, d);
    s = open_dir(d, 0, 0);
    CHECK(put(s, 50, 2, 0) == 2); /* this process's segment: live, kept */
    tc_store_free(s);
    tc_store_compact_result cr;
    CHECK(tc_store_compact(d, 0, &cr, NULL, 0, err, sizeof(err)) == TC_STORE_OK &&
          cr.live == 1 && cr.removed == 2 && cr.records == 4);
    s = open_dir(d, 0, 0);
    CHECK(tc_store_gather(s, k, 3, F32, 1, zero, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && ok[0] && ok[1] && ok[2]);
    CHECK(served(s, 50, 2, 0) == 2);
    CHECK(tc_store_gather(s, tk + 14, 1, I32, 1, tiny, (uint8_t *)got, ok, err, sizeof(err)) ==
              TC_STORE_OK && !ok[0]); /* the torn one */
    tc_store_free(s);

    /* a lookup's refresh at most every refresh_ms; two stores freed oldest first */
    tc_store_options slow = {0};
    slow.refresh_ms = 3600 * 1000;
    tc_store *a = NULL;
    CHECK(tc_store_open(d, &slow, &a, err, sizeof(err)) == TC_STORE_OK);
    CHECK(tc_store_stats_get(a, &st) == TC_STORE_OK);
    uint64_t before = st.refreshes;
    uint64_t absent[2] = {999, 999};
    CHECK(tc_store_lookup(a, absent, 1, present, err, sizeof(err)) == TC_STORE_OK && !present[0]);
    CHECK(tc_store_stats_get(a, &st) == TC_STORE_OK && st.refreshes == before);
    tc_store *b = open_dir(NULL, 0, 0);
    tc_store_free(a);
    tc_store_free(b);

    /* the arena: empty items */
    s = open_dir(NULL, 0, 0);
    CHECK(tc_store_put(s, k, 2, F32, 1, zero, (uint8_t *)x, &stored, err, sizeof(err)) ==
              TC_STORE_OK && stored == 2);
    CHECK(tc_store_gather(s, k, 2, F32, 1, zero, (uint8_t *)x, ok, err, sizeof(err)) ==
              TC_STORE_OK && ok[0] && ok[1]);
    tc_store_free(s);
}

/* A lookup's refresh lists the directory only when its mtime changed (a
 * listing taken well after the last change is trusted); a segment replaced
 * under its name is found gone by the refresh's re-check; a compressed record
 * whose frame is not zstd is a fault, never served. */
static void refresh_paths(void)
{
    char d[128], seg[512], err[256];
    snprintf(d, sizeof(d), "%s/mtime", root);
    put_in_child(d, 1200, 4);
    struct timespec pause = {0, 120 * 1000000L}; /* past the 50 ms mtime slack */
    nanosleep(&pause, NULL);
    tc_store *s = open_dir(d, 0, 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK);
    uint64_t readdirs = st.readdirs;
    CHECK(served(s, 1204, 1, 0) == 0); /* a miss: mtime unchanged, no listing */
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.readdirs == readdirs);
    put_in_child(d, 1204, 1);
    CHECK(served(s, 1204, 1, 0) == 1); /* the mtime moved: listed, found */
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.readdirs == readdirs + 1);
    /* replace the first writer's segment by a copy of itself (another inode) */
    char victim[512] = "", copy[600];
    DIR *dir = opendir(d);
    struct dirent *de;
    struct stat fst;
    while (dir && (de = readdir(dir)) != NULL) {
        snprintf(seg, sizeof(seg), "%s/%s", d, de->d_name);
        if (strncmp(de->d_name, "seg-", 4) == 0 && stat(seg, &fst) == 0 &&
            fst.st_size > 2000)
            snprintf(victim, sizeof(victim), "%s", seg);
    }
    if (dir)
        closedir(dir);
    CHECK(victim[0] != '\0');
    snprintf(copy, sizeof(copy), "%s.new", victim);
    CHECK(link(victim, copy) == 0 && unlink(victim) == 0);
    int in = open(copy, O_RDONLY), out = open(victim, O_WRONLY | O_CREAT | O_EXCL, 0644);
    char buf[65536];
    ssize_t got;
    while (in >= 0 && out >= 0 && (got = read(in, buf, sizeof(buf))) > 0)
        CHECK(write(out, buf, (size_t)got) == got);
    close(in);
    close(out);
    CHECK(unlink(copy) == 0);
    size_t added;
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.gone == 1);
    CHECK(served(s, 1200, 5, 0) == 1); /* the copy is not read under the old name */
    tc_store_free(s);

    /* the directory of a reader that knows no segment removed under it: the
     * refresh's look at its mtime fails, the listing then fails, counted */
    snprintf(d, sizeof(d), "%s/gone-dir", root);
    CHECK(mkdir(d, 0755) == 0);
    nanosleep(&pause, NULL);
    s = open_dir(d, 0, 0);
    CHECK(rmdir(d) == 0);
    CHECK(served(s, 1, 1, 0) == 0);
    CHECK(faults_of(s, TC_FAULT_DIRECTORY) == 1);
    tc_store_free(s);

    /* a zstd-flagged record whose checksummed payload is not a zstd frame */
    if (!tc_zstd_available(NULL, 0))
        return;
    snprintf(d, sizeof(d), "%s/badframe", root);
    CHECK(mkdir(d, 0755) == 0);
    const char *name = "seg-hand-1-0000000000000003.tcs";
    snprintf(seg, sizeof(seg), "%s/%s", d, name);
    static uint8_t rec[4096];
    hand_header h = {0};
    h.version = 2;
    h.ndim = 1;
    h.key0 = 1300;
    h.key1 = 1300 * 7 + 1;
    h.dtype_word = F32;
    h.raw_len = NUMEL * 4;
    h.shape[0] = NUMEL;
    h.flags = 1;
    h.stored_len = 100;
    memset(rec + 128, 0x42, 100);
    h.payload_sum = hand_payload_sum(rec + 128, 100);
    hand_encode(&h, name, 0, rec);
    write_file(seg, rec, 128 + 128, 0);
    s = open_dir(d, 0, 0);
    CHECK(served(s, 1300, 1, 0) == 0);
    CHECK(faults_of(s, TC_FAULT_ZSTD) == 1);
    tc_store_free(s);
}

/* More garbage than one refresh may search (64 MiB): the search stops at its
 * budget and goes on at the next refresh, which finds the record after it;
 * a compaction keeps such a segment (walked in part) until a walk ends. */
static void resync_budget(void)
{
    char d[128], p[512], err[256];
    snprintf(d, sizeof(d), "%s/budget", root);
    CHECK(mkdir(d, 0755) == 0);
    const char *name = "seg-hand-1-0000000000000004.tcs";
    snprintf(p, sizeof(p), "%s/%s", d, name);
    static uint8_t buf[1 << 20];
    float v[1][NUMEL];
    uint64_t k[2];
    items(1400, 1, k, v, 0);
    size_t first = hand_record(buf, 2, name, 0, 1400, v[0]);
    write_file(p, buf, first, 0);
    memset(buf, 0x5a, sizeof(buf));
    const size_t garbage = 80u << 20;
    int fd = open(p, O_WRONLY);
    for (size_t off = 0; fd >= 0 && off < garbage; off += sizeof(buf))
        CHECK(pwrite(fd, buf, sizeof(buf), (off_t)(first + off)) == (ssize_t)sizeof(buf));
    close(fd);
    items(1401, 1, k, v, 0);
    size_t n = hand_record(buf, 2, name, first + garbage, 1401, v[0]);
    write_file(p, buf, n, (off_t)(first + garbage));
    tc_store *s = open_dir(d, 0, 0);
    CHECK(served(s, 1400, 1, 0) == 1);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 1);
    size_t added = 0;
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 1);
    CHECK(served(s, 1400, 2, 0) == 2);
    tc_store_free(s);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path); /* best effort: go on */
    return 0;
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
    CHECK(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK && r.corrupt == 2 &&
          r.torn == 1);
    size_t added;
    CHECK(truncate(seg, (off_t)(8 * rec - 200)) == 0); /* less of the torn tail */
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 0);
    CHECK(served(s, 0, 8, 0) == 5);
    CHECK(truncate(seg, (off_t)(3 * rec)) == 0); /* cut under the open store */
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
    snprintf(p, sizeof(p), "%s/notaseg-1-0.tcs", d); /* names not read at all */
    CHECK(mkfifo(p, 0644) == 0);
    snprintf(p, sizeof(p), "%s/seg-file-1-0.txt", d);
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
        low.rlim_cur = 63; /* a 64th of it rounds to 0: one descriptor still */
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
    tc_store *ar = open_dir(NULL, 0, 0), *rd = open_dir(d, 0, 0);
    CHECK(put(ar, 730, 2, 0) == 2);
    pid_t kid = fork();
    if (kid == 0) {
        int bad = served(s, 700, 4, 0) != 4 || put(s, 710, 4, 0) != 4 ||
                  served(s, 710, 4, 0) != 4 || served(ar, 730, 2, 0) != 2 ||
                  served(rd, 700, 4, 0) != 4;
        tc_store_free(ar);
        tc_store_free(rd);
        tc_store_free(s);
        exit(bad || failures); /* exit, not _exit: coverage data is written at exit */
    }
    int kst = 0;
    CHECK(kid > 0 && waitpid(kid, &kst, 0) == kid && WIFEXITED(kst) && WEXITSTATUS(kst) == 0);
    tc_store_free(ar);
    tc_store_free(rd);
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
    snprintf(name, sizeof(name), "seg-%s-99999999999999999999-0.tcs", host); /* ERANGE */
    CHECK(!tc_store_writer_may_append(name, 0, now, 1, host));
    snprintf(name, sizeof(name), "seg-%s-3000000000-0.tcs", host); /* above any pid */
    CHECK(!tc_store_writer_may_append(name, 0, now, 1, host));
    char other_host[70];
    snprintf(other_host, sizeof(other_host), "%s", host);
    other_host[0] = other_host[0] == 'x' ? 'y' : 'x'; /* as long as ours, not ours */
    snprintf(name, sizeof(name), "seg-%s-%ld-0.tcs", other_host, (long)getpid());
    CHECK(!tc_store_writer_may_append(name, 0, now, 1, host));

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

    records_in_memory();
    hand_segments();
    big_records();
    removed_between_passes();
    compaction_paths();
    host_names();
    arena_chunks();
    edges();
    refresh_paths();
    resync_budget();

    if (failures) {
        fprintf(stderr, "store_paths: %d failures (scratch left in %s)\n", failures, root);
        return 1;
    }
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS); /* the scratch: ~90 MB */
    printf("store_paths: OK\n");
    return 0;
}
