/* store_paths.c -- the store's less travelled paths, for .ci/coverage.sh:
 * damaged and truncated segments, resynchronisation, verify's problem
 * reports, hostile directory entries, sparse files, the arena, compression,
 * the byte limit, closed stores and the liveness rule, persisted index files
 * (docs/format.md section 9: who writes one, and records damaged after it was
 * written, found at their batched first use), modes and owners, segments
 * replaced or gone under a reader, files that may not grow.  Every served row
 * is checked against the bytes put for its key; exits non-zero on any
 * mismatch. */
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
#include <signal.h>
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

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw);

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

/* The path of the file in d whose name starts with prefix and ends with
 * suffix (the last listed, when several do), or "" when there is none. */
static void one_named(const char *d, const char *prefix, const char *suffix, char *path,
                      size_t len)
{
    DIR *dir = opendir(d);
    struct dirent *de;
    size_t lp = strlen(prefix), ls = strlen(suffix);
    path[0] = '\0';
    while (dir && (de = readdir(dir)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l >= lp + ls && strncmp(de->d_name, prefix, lp) == 0 &&
            strcmp(de->d_name + l - ls, suffix) == 0)
            snprintf(path, len, "%s/%s", d, de->d_name);
    }
    if (dir)
        closedir(dir);
}

static void one_segment(const char *d, char *path, size_t len)
{
    one_named(d, "seg-", "", path, len);
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
    /* a listing older than READDIR_FORCE_NS (1 s) is taken again though the mtime
     * did not move (NFS: a directory's mtime may lag its entries) */
    struct timespec second = {1, 100 * 1000000L};
    nanosleep(&second, NULL);
    CHECK(served(s, 1300, 1, 0) == 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.readdirs == readdirs + 2);
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

/* ---- persisted index files (docs/format.md section 9) ------------------------- */

/* Items of `numel` float32 values (numel * 4 bytes), ids first..first+n-1. */
static void numel_items(uint64_t first, size_t n, size_t numel, uint64_t *keys, float *it)
{
    for (size_t i = 0; i < n; i++) {
        keys[2 * i] = first + i;
        keys[2 * i + 1] = (first + i) * 7 + 1;
        for (size_t j = 0; j < numel; j++)
            it[i * numel + j] = (float)(first + i) * 0.25f - (float)j;
    }
}

static size_t put_numel(tc_store *s, uint64_t first, size_t n, size_t numel)
{
    uint64_t *keys = malloc(n * 2 * sizeof(uint64_t));
    float *it = malloc(n * numel * sizeof(float));
    int64_t shape[1] = {(int64_t)numel};
    size_t stored = 0;
    char err[256];
    CHECK(keys != NULL && it != NULL);
    if (keys != NULL && it != NULL) {
        numel_items(first, n, numel, keys, it);
        CHECK(tc_store_put(s, keys, n, F32, 1, shape, (uint8_t *)it, &stored, err,
                           sizeof(err)) == TC_STORE_OK);
    }
    free(keys);
    free(it);
    return stored;
}

/* Looks up then gathers the ids in `ids` (one lookup, one gather of them all);
 * every gathered row is compared with the bytes put for its id, and the
 * lookup's answer must be the gather's.  hit[i] says whether ids[i] was
 * served.  Returns the rows served. */
static size_t served_ids(tc_store *s, const uint64_t *ids, size_t n, size_t numel, uint8_t *hit)
{
    uint64_t *keys = malloc(n * 2 * sizeof(uint64_t));
    float *it = malloc(n * numel * sizeof(float)), *dest = malloc(n * numel * sizeof(float));
    uint8_t *present = malloc(n);
    int64_t shape[1] = {(int64_t)numel};
    char err[256];
    size_t count = 0;
    CHECK(keys != NULL && it != NULL && dest != NULL && present != NULL);
    if (keys == NULL || it == NULL || dest == NULL || present == NULL)
        goto out;
    for (size_t i = 0; i < n; i++)
        numel_items(ids[i], 1, numel, keys + 2 * i, it + i * numel);
    CHECK(tc_store_lookup(s, keys, n, present, err, sizeof(err)) == TC_STORE_OK);
    CHECK(tc_store_gather(s, keys, n, F32, 1, shape, (uint8_t *)dest, hit, err, sizeof(err)) ==
          TC_STORE_OK);
    for (size_t i = 0; i < n; i++) {
        CHECK(present[i] == hit[i]);
        if (hit[i]) {
            CHECK(memcmp(dest + i * numel, it + i * numel, numel * sizeof(float)) == 0);
            count++;
        }
    }
out:
    free(keys);
    free(it);
    free(dest);
    free(present);
    return count;
}

/* The index file of the one segment in d, or "" when there is none. */
static void one_index(const char *d, char *path, size_t len)
{
    one_named(d, "idx-", ".tci", path, len);
}

static size_t count_indexes(const char *d)
{
    DIR *dir = opendir(d);
    struct dirent *de;
    size_t n = 0;
    while (dir && (de = readdir(dir)) != NULL)
        n += strncmp(de->d_name, "idx-", 4) == 0;
    if (dir)
        closedir(dir);
    return n;
}

#define IDX_NUMEL 112 /* 448-byte items: 576-byte records, under SCAN_VERIFY_MIN */
#define IDX_N 2048    /* 1.18 MB of records: more than one verify batch (1 MiB) */

/* A writer's index, then records damaged after it was written: a reader that
 * adopts the index verifies each record at its first use, in batches, and
 * serves the intact ones exactly; every damaged one is a miss, counted
 * corrupt.  Batches split by distance and by size, a key asked twice, a
 * record the writer dropped before its close (not listed), and a file cut
 * short under the reader (the records past the cut are left to probe). */
static void index_verify(void)
{
    char d[128], seg[512], idx[512], err[256];
    const uint64_t rec = 128 + IDX_NUMEL * 4, base = 40000;
    snprintf(d, sizeof(d), "%s/index", root);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(put_numel(w, base, IDX_N, IDX_NUMEL) == IDX_N);
    one_segment(d, seg, sizeof(seg));
    /* the writer's own record 7 changed under it: its next read drops it, and
     * the index its close writes does not list it */
    patch(seg, (long)(7 * rec + 8), "\x5a", 1);
    uint64_t id7 = base + 7;
    uint8_t hit[IDX_N + 1];
    CHECK(served_ids(w, &id7, 1, IDX_NUMEL, hit) == 0);
    tc_store_free(w);
    one_index(d, idx, sizeof(idx));
    CHECK(idx[0] != '\0');

    /* damage after the index was written: key0, key1, raw_len, header_sum,
     * a payload byte */
    patch(seg, (long)(100 * rec + 8), "\x01", 1);
    patch(seg, (long)(101 * rec + 16), "\x01", 1);
    patch(seg, (long)(102 * rec + 32), "\x08", 1);
    patch(seg, (long)(103 * rec + 56), "\x01", 1);
    patch(seg, (long)(104 * rec + 128 + 8), "\x01", 1);

    /* every key in one lookup (two verify batches), id 0 asked twice */
    tc_store *s = open_dir(d, 0, 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == IDX_N - 1 &&
          st.corrupt == 0);
    uint64_t *ids = malloc((IDX_N + 1) * sizeof(uint64_t));
    CHECK(ids != NULL);
    if (ids == NULL)
        return;
    for (size_t i = 0; i < IDX_N; i++)
        ids[i] = base + i;
    ids[IDX_N] = base;
    CHECK(served_ids(s, ids, IDX_N + 1, IDX_NUMEL, hit) == IDX_N + 1 - 6);
    for (size_t i = 0; i <= IDX_N; i++)
        CHECK(hit[i] == !(i == 7 || (i >= 100 && i <= 104)));
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 5 &&
          st.records == IDX_N - 6);
    tc_store_verify_result r;
    CHECK(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK &&
          r.corrupt == 3 && r.records == IDX_N - 6); /* 100..103: one damaged stretch */
    tc_store_free(s);

    /* keys far apart (each its own read), damaged ones among them */
    s = open_dir(d, 0, 0);
    size_t n = 0;
    for (size_t i = 0; i < IDX_N; i += 20)
        ids[n++] = base + i;
    ids[n++] = base + 101;
    ids[n++] = base + 104;
    CHECK(served_ids(s, ids, n, IDX_NUMEL, hit) == n - 3); /* 100, 101, 104 */
    CHECK(!hit[5] && !hit[n - 2] && !hit[n - 1]);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 3);
    tc_store_free(s);

    /* cut inside record 2000's payload under a reader that adopted the index */
    s = open_dir(d, 0, 0);
    CHECK(truncate(seg, (off_t)(2000 * rec + 128 + 100)) == 0);
    n = 0;
    for (size_t i = 1990; i < 2010; i++)
        ids[n++] = base + i;
    CHECK(served_ids(s, ids, n, IDX_NUMEL, hit) == 10);
    for (size_t i = 0; i < n; i++)
        CHECK(hit[i] == (i < 10));
    tc_store_free(s);
    s = open_dir(d, 0, 0); /* the index now covers more than the file: scanned */
    n = 0;
    for (size_t i = 1990; i < 2010; i++)
        ids[n++] = base + i;
    CHECK(served_ids(s, ids, n, IDX_NUMEL, hit) == 10);
    CHECK(served_ids(s, ids, 10, IDX_NUMEL, hit) == 10);
    tc_store_free(s);
    free(ids);
}

/* Who writes an index and who does not: a writer of many large records
 * (worth no index), a reader that met damage while scanning a finished
 * writer's segment (no index), compaction merging many small records (an
 * index for the merged segment, the merged ones' removed), and a table large
 * enough to be mapped (a writer of 23,000 records and a reader adopting them). */
static void index_writers(void)
{
    char d[128], seg[512], idx[512], err[256];
    const uint64_t big = 128 + (NUMEL * 4 + 63) / 64 * 64;
    uint8_t hit[1100];
    uint64_t ids[1100];

    /* 1100 records of 1.2 KB: no index at the writer's close */
    snprintf(d, sizeof(d), "%s/index-big", root);
    tc_store *w = open_dir(d, 0, 0);
    for (size_t done = 0; done < 1100; done += 20)
        CHECK(put(w, 50000 + done, 20, 0) == 20);
    tc_store_free(w);
    CHECK(count_indexes(d) == 0);
    tc_store *s = open_dir(d, 0, 0);
    CHECK(served(s, 50000, 32, 0) == 32 && served(s, 51068, 32, 0) == 32);
    tc_store_free(s);

    /* a finished writer's 1100 records, one payload damaged: the reader's scan
     * counts it and leaves no index behind */
    snprintf(d, sizeof(d), "%s/index-damaged", root);
    put_in_child(d, 52000, 1100);
    CHECK(count_indexes(d) == 0);
    one_segment(d, seg, sizeof(seg));
    patch(seg, (long)(500 * big + 128 + 40), "\x77", 1);
    s = open_dir(d, 0, 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 1 && st.records == 1099);
    CHECK(count_indexes(d) == 0);
    CHECK(served(s, 52480, 32, 0) == 31);
    tc_store_free(s);

    /* a finished writer's 1100 small records (its index file removed) and
     * garbage after them: the reader serves every record, counts nothing
     * corrupt (the tail may be a write in progress) and, with the tail still
     * to be searched again, writes no index */
    snprintf(d, sizeof(d), "%s/index-tail", root);
    {
        pid_t pid = fork();
        if (pid == 0) {
            tc_store *cw = open_dir(d, 0, 0);
            int bad = cw == NULL || put_numel(cw, 89000, 1100, IDX_NUMEL) != 1100;
            tc_store_free(cw);
            exit(bad);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0);
    }
    one_index(d, idx, sizeof(idx));
    CHECK(idx[0] != '\0' && unlink(idx) == 0);
    one_segment(d, seg, sizeof(seg));
    {
        struct stat sb;
        char junk[4096];
        memset(junk, 0x5a, sizeof(junk));
        CHECK(stat(seg, &sb) == 0 && sb.st_size == 1100 * (128 + IDX_NUMEL * 4));
        write_file(seg, junk, sizeof(junk), sb.st_size);
    }
    s = open_dir(d, 0, 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 1100 && st.corrupt == 0);
    CHECK(count_indexes(d) == 0);
    for (size_t i = 0; i < 1100; i++)
        ids[i] = 89000 + i;
    CHECK(served_ids(s, ids, 1100, IDX_NUMEL, hit) == 1100);
    tc_store_free(s);

    /* compaction of two finished writers of 600 small records each: the merged
     * segment gets an index, which a reader adopts and verifies */
    snprintf(d, sizeof(d), "%s/index-compact", root);
    for (int c = 0; c < 2; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            tc_store *cw = open_dir(d, 0, 0);
            int bad = cw == NULL || put_numel(cw, 60000 + 600 * (uint64_t)c, 600, IDX_NUMEL) != 600;
            tc_store_free(cw);
            exit(bad);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0);
    }
    CHECK(count_indexes(d) == 0); /* 600 each: too few for an index */
    tc_store_compact_result cr;
    char merged[256];
    CHECK(tc_store_compact(d, 3600, &cr, merged, sizeof(merged), err, sizeof(err)) ==
          TC_STORE_OK && cr.removed == 2 && cr.records == 1200);
    CHECK(count_indexes(d) == 1);
    s = open_dir(d, 0, 0);
    for (size_t i = 0; i < 1100; i++)
        ids[i] = 60000 + i;
    CHECK(served_ids(s, ids, 1100, IDX_NUMEL, hit) == 1100);
    for (size_t i = 0; i < 100; i++)
        ids[i] = 61100 + i;
    CHECK(served_ids(s, ids, 100, IDX_NUMEL, hit) == 100);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 1200 && st.corrupt == 0);
    tc_store_free(s);

    /* compaction of two writers' 1100 large records: no index for the merged segment */
    snprintf(d, sizeof(d), "%s/index-compact-big", root);
    put_in_child(d, 53000, 550);
    put_in_child(d, 53550, 550);
    CHECK(tc_store_compact(d, 3600, &cr, merged, sizeof(merged), err, sizeof(err)) ==
          TC_STORE_OK && cr.removed == 2 && cr.records == 1100);
    CHECK(count_indexes(d) == 0);
    s = open_dir(d, 0, 0);
    CHECK(served(s, 53000, 32, 0) == 32 && served(s, 54068, 32, 0) == 32);
    tc_store_free(s);

    /* 23,000 records of one float: the table (65,536 slots of 40 bytes) is
     * mapped, in the writer as it grows and in the reader adopting the index */
    snprintf(d, sizeof(d), "%s/index-large-table", root);
    w = open_dir(d, 0, 0);
    CHECK(put_numel(w, 100000, 23000, 1) == 23000);
    tc_store_free(w);
    one_index(d, idx, sizeof(idx));
    CHECK(idx[0] != '\0');
    s = open_dir(d, 0, 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 23000);
    for (size_t i = 0; i < 1100; i++)
        ids[i] = 100000 + 20 * i;
    CHECK(served_ids(s, ids, 1100, 1, hit) == 1100);
    tc_store_free(s);
}

/* Modes: a directory others may write without the sticky bit is refused in
 * strict mode and reported otherwise; with the sticky bit it is fine; the
 * modes asked for new directories and segments are the ones they get. */
static void dir_modes(void)
{
    char d[128], sub[192], seg[512], err[256];
    tc_store_options o = {0};
    tc_store *s = NULL;
    snprintf(d, sizeof(d), "%s/open-to-all", root);
    CHECK(mkdir(d, 0755) == 0 && chmod(d, 0777) == 0);
    o.strict = 1;
    CHECK(tc_store_open(d, &o, &s, err, sizeof(err)) == TC_STORE_EPERM && s == NULL);
    CHECK(strstr(err, "writable by other users") != NULL);
    o.strict = 0;
    CHECK(tc_store_open(d, &o, &s, err, sizeof(err)) == TC_STORE_OK && s != NULL);
    CHECK(faults_of(s, TC_FAULT_INSECURE) == 1);
    CHECK(put(s, 80000, 4, 0) == 4 && served(s, 80000, 4, 0) == 4);
    tc_store_free(s);
    CHECK(chmod(d, 01777) == 0); /* sticky: others cannot replace our files */
    o.strict = 1;
    s = NULL;
    CHECK(tc_store_open(d, &o, &s, err, sizeof(err)) == TC_STORE_OK && s != NULL);
    CHECK(faults_of(s, TC_FAULT_INSECURE) == 0 && served(s, 80000, 4, 0) == 4);
    tc_store_free(s);

    snprintf(sub, sizeof(sub), "%s/private/cache", root);
    o.strict = 1;
    o.dir_mode = 0700;
    o.file_mode = 0600;
    s = NULL;
    CHECK(tc_store_open(sub, &o, &s, err, sizeof(err)) == TC_STORE_OK && s != NULL);
    CHECK(put(s, 80100, 4, 0) == 4);
    tc_store_free(s);
    struct stat st;
    CHECK(stat(sub, &st) == 0 && (st.st_mode & 0777) == 0700);
    one_segment(sub, seg, sizeof(seg));
    CHECK(stat(seg, &st) == 0 && (st.st_mode & 0777) == 0600);
    s = open_dir(sub, 0, 0);
    CHECK(served(s, 80100, 4, 0) == 4);
    tc_store_free(s);
}

/* A segment owned by another user (chown: this runs as root in CI, else the
 * case is skipped) is ignored with a fault unless the store reads a cache
 * shared between users; either way nothing wrong is served. */
static void foreign_owner(void)
{
    char d[128], seg[512], err[256];
    if (geteuid() != 0)
        return;
    snprintf(d, sizeof(d), "%s/foreign", root);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(put(w, 81000, 6, 0) == 6);
    tc_store_free(w);
    one_segment(d, seg, sizeof(seg));
    CHECK(chown(seg, 54321, 54321) == 0);
    tc_store *s = open_dir(d, 0, 0);
    CHECK(faults_of(s, TC_FAULT_FOREIGN) == 1 && served(s, 81000, 6, 0) == 0);
    tc_store_free(s);
    tc_store_options o = {0};
    o.allow_other_owners = 1;
    s = NULL;
    CHECK(tc_store_open(d, &o, &s, err, sizeof(err)) == TC_STORE_OK && s != NULL);
    CHECK(faults_of(s, TC_FAULT_FOREIGN) == 0 && served(s, 81000, 6, 0) == 6);
    tc_store_free(s);
}

/* Forty segments (forty finished writers): the reader's segment
 * table and its name table grow past their first sizes, rehashing the names
 * already known, and every row is served from its own segment. */
static void many_segments(void)
{
    char d[128];
    snprintf(d, sizeof(d), "%s/many", root);
    for (uint64_t k = 0; k < 40; k++)
        put_in_child(d, 82000 + k, 1);
    tc_store *s = open_dir(d, 0, 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.segments == 40 && st.records == 40);
    /* a forced refresh lists the directory and re-checks every finished
     * writer's segment; once the directory's mtime is older than the 50 ms
     * slack, that listing is trusted */
    usleep(120 * 1000);
    char err[256];
    size_t added = 0;
    uint64_t rechecked = st.idle_rechecks;
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.idle_rechecks == rechecked + 40);
    /* then a miss refreshes and finds nothing; the finished writers' segments
     * are re-checked only with a listing of the directory (a rename or removal
     * moves its mtime; one is forced each second), at most 32 per listing, not
     * at every miss: 20 misses re-checked 640 before this rule */
    uint64_t before = st.refreshes, listed = st.readdirs;
    rechecked = st.idle_rechecks;
    for (int i = 0; i < 20; i++)
        CHECK(served(s, 82999, 1, 0) == 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.refreshes >= before + 20 &&
          st.records == 40);
    CHECK(st.idle_rechecks - rechecked <= 32 * (st.readdirs - listed));
    CHECK(served(s, 82000, 32, 0) == 32 && served(s, 82032, 8, 0) == 8);
    /* a child of this reader-writer (descriptors cached for the segments read)
     * leaves its parent's segment to the parent and writes its own */
    CHECK(put(s, 82040, 1, 0) == 1);
    pid_t kid = fork();
    if (kid == 0) {
        int bad = served(s, 82040, 1, 0) != 1 || put(s, 82041, 1, 0) != 1 ||
                  served(s, 82000, 32, 0) != 32 || served(s, 82041, 1, 0) != 1;
        tc_store_free(s);
        exit(bad || failures);
    }
    int kst = 0;
    CHECK(kid > 0 && waitpid(kid, &kst, 0) == kid && WIFEXITED(kst) && WEXITSTATUS(kst) == 0);
    CHECK(put(s, 82042, 1, 0) == 1 && served(s, 82040, 3, 0) == 3);
    tc_store_free(s);
    s = open_dir(d, 0, 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.segments == 42 && st.records == 43);
    tc_store_free(s);
}

/* One-row gathers (the unbatched path) of verified records whose file was cut
 * under the reader: inside a plain payload, inside a compressed payload, and
 * inside a header.  Each is a miss counted corrupt; the rows before the cut
 * are still served exactly. */
static void gather_cut(void)
{
    char d[128], seg[512], err[256];
    const uint64_t rec = 128 + (NUMEL * 4 + 63) / 64 * 64;
    float dest[NUMEL];
    uint8_t ok[1];
    uint64_t key[2];
    tc_store_stats st;

    snprintf(d, sizeof(d), "%s/gather-cut", root);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(put(w, 83000, 6, 0) == 6);
    tc_store_free(w);
    one_segment(d, seg, sizeof(seg));
    tc_store *s = open_dir(d, 0, 0);
    CHECK(served(s, 83000, 6, 0) == 6); /* verified */
    patch(seg, (long)(1 * rec + 32), "\xb4", 1); /* raw_len of record 1: 1204 bytes */
    key[0] = 83001;
    key[1] = 83001 * 7 + 1;
    CHECK(tc_store_gather(s, key, 1, F32, 1, SHAPE, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK && !ok[0]);
    CHECK(faults_of(s, TC_FAULT_CHANGED) == 1);
    CHECK(truncate(seg, (off_t)(5 * rec + 128 + 400)) == 0);
    key[0] = 83005;
    key[1] = 83005 * 7 + 1;
    CHECK(tc_store_gather(s, key, 1, F32, 1, SHAPE, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK && !ok[0]);
    CHECK(faults_of(s, TC_FAULT_SHORT) == 1);
    CHECK(truncate(seg, (off_t)(4 * rec + 50)) == 0); /* inside record 4's header */
    key[0] = 83004;
    key[1] = 83004 * 7 + 1;
    CHECK(tc_store_gather(s, key, 1, F32, 1, SHAPE, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK && !ok[0]);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 3);
    CHECK(served(s, 83000, 4, 0) == 3);
    tc_store_free(s);

    /* compressed records (zeros: a few dozen bytes each), the last one cut
     * inside its payload */
    snprintf(d, sizeof(d), "%s/gather-cut-zstd", root);
    tc_store_options zo = {0};
    zo.compress = 1;
    zo.zstd_level = 3;
    w = NULL;
    if (tc_store_open(d, &zo, &w, err, sizeof(err)) != TC_STORE_OK)
        return; /* no libzstd here */
    CHECK(put(w, 83100, 4, 1) == 4);
    tc_store_free(w);
    one_segment(d, seg, sizeof(seg));
    struct stat sb;
    CHECK(stat(seg, &sb) == 0 && sb.st_size == 4 * 192); /* 128 + a 64-byte payload each */
    s = open_dir(d, 0, 0);
    CHECK(served(s, 83100, 4, 1) == 4);
    CHECK(truncate(seg, (off_t)(3 * 192 + 128 + 4)) == 0);
    key[0] = 83103;
    key[1] = 83103 * 7 + 1;
    CHECK(tc_store_gather(s, key, 1, F32, 1, SHAPE, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK && !ok[0]);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 1);
    CHECK(served(s, 83100, 3, 1) == 3);
    tc_store_free(s);
}

/* Batches in every order reach every row: a gather (and a first lookup, which
 * verifies small records in batched reads) sorts its rows by segment and
 * offset with its own merge sort (insertion-sorted runs of 8, merged bottom
 * up).  Two segments; batch sizes around the run length and its powers of two,
 * shuffled, in order, reversed, with keys repeated and keys absent; each
 * batch's rows are compared with the bytes put, and lookup's answer with
 * gather's (served_ids). */
static void gather_orders(void)
{
    char d[128];
    const size_t numel = 16, stored = 300;
    snprintf(d, sizeof(d), "%s/gather-orders", root);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(put_numel(w, 90000, stored / 2, numel) == stored / 2);
    tc_store_free(w);
    w = open_dir(d, 0, 0);
    CHECK(put_numel(w, 90000 + stored / 2, stored / 2, numel) == stored / 2);
    tc_store_free(w);
    static const size_t sizes[] = {2, 3, 7, 8, 9, 16, 17, 24, 25, 40, 64, 65, 100, 300};
    uint64_t ids[400];
    uint8_t hit[400];
    uint64_t x = 12345;
    for (size_t t = 0; t < sizeof(sizes) / sizeof(sizes[0]); t++) {
        size_t n = sizes[t];
        for (int order = 0; order < 3; order++) {
            tc_store *s = open_dir(d, 0, 0); /* fresh: unverified small records */
            for (size_t i = 0; i < n; i++)
                ids[i] = 90000 + (order == 0 ? i : order == 1 ? n - 1 - i : 0);
            if (order == 2) {
                /* shuffled: a random pick of rows, one in 8 absent and one in 16 repeated */
                for (size_t i = 0; i < n; i++) {
                    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
                    ids[i] = 90000 + (x >> 33) % stored;
                    if ((x >> 20) % 8 == 0)
                        ids[i] = 95000 + i; /* absent */
                    else if (i > 0 && (x >> 24) % 16 == 0)
                        ids[i] = ids[i / 2];
                }
            }
            size_t expect = 0;
            for (size_t i = 0; i < n; i++)
                expect += ids[i] < 90000 + stored;
            CHECK(served_ids(s, ids, n, numel, hit) == expect);
            for (size_t i = 0; i < n; i++)
                CHECK(hit[i] == (ids[i] < 90000 + stored));
            tc_store_free(s);
        }
    }
}

/* A writer whose file may not grow (RLIMIT_FSIZE, SIGXFSZ ignored) stops
 * writing with an error it can report, keeps serving what it wrote, and a
 * reader serves those rows exactly.  Then a record damaged under its writer
 * and put again (a second copy of the key in the same segment): verify
 * counts the damaged copy, and every row is served from the good one. */
/* The call path's lookup (tc_store_lookup_unverified), over a segment opened
 * from its index (records not read at the open): a record not checked yet counts
 * as present, the gather checks it in its destination at its first use and does
 * not serve a damaged one, and the next lookup (either kind) knows. */
static void unverified_lookup(void)
{
    char d[128], seg[512], err[256];
    const uint64_t rec = 128 + IDX_NUMEL * 4, base = 90000;
    snprintf(d, sizeof(d), "%s/unverified", root);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(put_numel(w, base, IDX_N, IDX_NUMEL) == IDX_N);
    tc_store_free(w); /* writes the index */
    one_segment(d, seg, sizeof(seg));
    patch(seg, (long)(1 * rec + 128 + 40), "\x07", 1); /* payload of record 1 */
    patch(seg, (long)(4 * rec + 8), "\x07", 1);        /* key0 in record 4's header */
    tc_store *s = open_dir(d, 0, 0);
    uint64_t keys[2 * 7];
    float it[7 * IDX_NUMEL], dest[7 * IDX_NUMEL];
    uint8_t present[7], ok[7];
    int64_t shape[1] = {IDX_NUMEL};
    numel_items(base, 7, IDX_NUMEL, keys, it);
    keys[12] = 1; /* never stored: a miss, and a refresh */
    CHECK(tc_store_lookup_unverified(s, keys, 7, present, err, sizeof(err)) == TC_STORE_OK);
    CHECK(memcmp(present, "\1\1\1\1\1\1\0", 7) == 0);
    CHECK(tc_store_gather(s, keys, 6, F32, 1, shape, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK);
    CHECK(memcmp(ok, "\1\0\1\1\0\1", 6) == 0);
    for (int i = 0; i < 6; i++)
        CHECK(!ok[i] || memcmp(dest + i * IDX_NUMEL, it + i * IDX_NUMEL, IDX_NUMEL * 4) == 0);
    CHECK(tc_store_lookup_unverified(s, keys, 7, present, err, sizeof(err)) == TC_STORE_OK);
    CHECK(memcmp(present, "\1\0\1\1\0\1\0", 7) == 0);
    CHECK(tc_store_lookup(s, keys, 7, present, err, sizeof(err)) == TC_STORE_OK);
    CHECK(memcmp(present, "\1\0\1\1\0\1\0", 7) == 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.corrupt == 2);
    tc_store_close(s);
    CHECK(tc_store_lookup_unverified(s, keys, 7, present, err, sizeof(err)) ==
          TC_STORE_ECLOSED);
    tc_store_free(s);
}

/* A refresh between listings compares the directory's mtime: through the
 * descriptor of the last listing, or by path where descriptors are scarce (a
 * store opened at RLIMIT_NOFILE < 128).  Either way a new segment is seen at the
 * next lookup that misses, and a removed directory is a fault, not an error. */
static void dir_mtime_checks(void)
{
    char d[128], err[256];
    for (int scarce = 0; scarce < 2; scarce++) {
        snprintf(d, sizeof(d), "%s/mtime-%d", root, scarce);
        tc_store *w = open_dir(d, 0, 0);
        CHECK(put(w, 700, 2, 0) == 2);
        tc_store_free(w);
        struct rlimit was;
        CHECK(getrlimit(RLIMIT_NOFILE, &was) == 0);
        if (scarce) {
            struct rlimit low = {64, was.rlim_max};
            CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
        }
        nanosleep(&(struct timespec){0, 60 * 1000000L}, NULL); /* past the mtime slack */
        tc_store *s = open_dir(d, 0, 0);
        CHECK(setrlimit(RLIMIT_NOFILE, &was) == 0);
        uint64_t keys[2 * 4];
        float it[4][NUMEL];
        uint8_t present[4];
        items(710, 4, keys, it, 0);
        tc_store_stats before, after;
        CHECK(tc_store_stats_get(s, &before) == TC_STORE_OK);
        CHECK(tc_store_lookup(s, keys, 1, present, err, sizeof(err)) == TC_STORE_OK &&
              !present[0]);
        CHECK(tc_store_stats_get(s, &after) == TC_STORE_OK &&
              after.refreshes == before.refreshes + 1 && after.readdirs == before.readdirs);
        w = open_dir(d, 0, 0); /* another writer: a new segment */
        CHECK(put(w, 710, 1, 0) == 1);
        tc_store_free(w);
        CHECK(tc_store_lookup(s, keys, 1, present, err, sizeof(err)) == TC_STORE_OK &&
              present[0]);
        CHECK(nftw(d, remove_entry, 8, FTW_DEPTH | FTW_PHYS) == 0);
        CHECK(tc_store_lookup(s, keys + 2, 1, present, err, sizeof(err)) == TC_STORE_OK &&
              !present[0]);
        CHECK(tc_store_stats_get(s, &after) == TC_STORE_OK && after.faults[TC_FAULT_DIRECTORY] >= 1);
        tc_store_free(s);
    }
}

static void write_limits(void)
{
    char d[128], seg[512], err[256], msg[256];
    const uint64_t rec = 128 + (NUMEL * 4 + 63) / 64 * 64;
    snprintf(d, sizeof(d), "%s/fsize", root);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(tc_store_io_error(w, msg, sizeof(msg)) == 0);
    struct rlimit was, low;
    CHECK(getrlimit(RLIMIT_FSIZE, &was) == 0);
    void (*old)(int) = signal(SIGXFSZ, SIG_IGN);
    low = was;
    low.rlim_cur = 3 * rec + 100; /* room for three records and part of a fourth */
    CHECK(setrlimit(RLIMIT_FSIZE, &low) == 0);
    size_t stored = put(w, 84000, 4, 0);
    size_t more = put(w, 84004, 4, 0); /* refused at once: writing stopped */
    CHECK(setrlimit(RLIMIT_FSIZE, &was) == 0);
    signal(SIGXFSZ, old);
    CHECK(stored == 3 && more == 0);
    CHECK(tc_store_io_error(w, msg, sizeof(msg)) == 1 && strstr(msg, "writing segment") != NULL);
    CHECK(served(w, 84000, 8, 0) == 3);
    tc_store_free(w);
    tc_store *s = open_dir(d, 0, 0);
    tc_store_stats st;
    CHECK(served(s, 84000, 8, 0) == 3);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 3);
    tc_store_free(s);

    snprintf(d, sizeof(d), "%s/rewrite", root);
    w = open_dir(d, 0, 0);
    CHECK(put(w, 84100, 4, 0) == 4);
    one_segment(d, seg, sizeof(seg));
    patch(seg, (long)(1 * rec + 128 + 20), "\x33", 1);
    CHECK(served(w, 84100, 4, 0) == 3);
    CHECK(put(w, 84101, 1, 0) == 1); /* stored again, at the end of the segment */
    CHECK(served(w, 84100, 4, 0) == 4);
    tc_store_verify_result r;
    CHECK(tc_store_verify(w, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK &&
          r.corrupt == 1 && r.records == 4);
    tc_store_free(w);
    s = open_dir(d, 0, 0);
    CHECK(served(s, 84100, 4, 0) == 4);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 4 && st.corrupt == 1);
    tc_store_free(s);
}

/* A finished writer's segment of 1100 version 1 records (made by hand; its
 * pid is not running): the reader scans and serves them all, but writes no
 * index for a segment holding version 1 records. */
static void index_not_for_v1(void)
{
    char d[128], p[512], host[65] = "", name[160];
    const size_t rec = 128 + (NUMEL * 4 + 63) / 64 * 64, n = 1100;
    gethostname(host, sizeof(host) - 1);
    snprintf(d, sizeof(d), "%s/index-v1", root);
    CHECK(mkdir(d, 0755) == 0);
    snprintf(name, sizeof(name), "seg-%s-99999999-00000000000000a1.tcs", host);
    snprintf(p, sizeof(p), "%s/%s", d, name);
    uint8_t *buf = malloc(n * rec);
    CHECK(buf != NULL);
    if (buf == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        uint64_t key[2];
        float it[1][NUMEL];
        items(85000 + i, 1, key, it, 0);
        CHECK(hand_record(buf + i * rec, 1, name, i * rec, 85000 + i, it[0]) == rec);
    }
    write_file(p, buf, n * rec, 0);
    free(buf);
    tc_store *s = open_dir(d, 0, 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == n && st.corrupt == 0);
    CHECK(count_indexes(d) == 0);
    CHECK(served(s, 85000, 32, 0) == 32 && served(s, 85000 + n - 32, 32, 0) == 32);
    /* a child of this reader (it never wrote) reads through the descriptors it
     * inherited */
    pid_t kid = fork();
    if (kid == 0) {
        int bad = served(s, 85500, 32, 0) != 32;
        tc_store_free(s);
        exit(bad);
    }
    int kst = 0;
    CHECK(kid > 0 && waitpid(kid, &kst, 0) == kid && WIFEXITED(kst) && WEXITSTATUS(kst) == 0);
    tc_store_free(s);
}

/* Keys repeated inside one put are stored once (the repeat found first or
 * last among those staged); keys sharing key0 are different keys.  Then
 * compaction of keys whose key0 is 0 (the merge's key set tells them from
 * its empty slots by both words). */
static void key_words(void)
{
    char d[128], err[256];
    snprintf(d, sizeof(d), "%s/keywords", root);
    tc_store *w = open_dir(d, 0, 0);
    uint64_t keys[2 * 5] = {86000, 1, 86001, 2, 86000, 1, 86000, 3, 86001, 2};
    float it[5][16], dest[5][16];
    int64_t shape[1] = {16};
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 16; j++)
            it[i][j] = (float)(keys[2 * i] + keys[2 * i + 1]) + (float)j;
    size_t stored = 0;
    CHECK(tc_store_put(w, keys, 5, F32, 1, shape, (uint8_t *)it, &stored, err, sizeof(err)) ==
          TC_STORE_OK && stored == 3);
    tc_store_free(w);
    tc_store *s = open_dir(d, 0, 0);
    uint8_t ok[5];
    CHECK(tc_store_gather(s, keys, 5, F32, 1, shape, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK);
    for (int i = 0; i < 5; i++)
        CHECK(ok[i] && memcmp(dest[i], it[i], sizeof(it[i])) == 0);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 3);
    /* an item of no elements: an empty payload, verified as such */
    uint64_t empty[2] = {86100, 1};
    int64_t none[1] = {0};
    CHECK(tc_store_put(s, empty, 1, F32, 1, none, (uint8_t *)it, &stored, err, sizeof(err)) ==
          TC_STORE_OK && stored == 1);
    tc_store_verify_result r;
    CHECK(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK &&
          r.records == 4 && r.corrupt == 0);
    CHECK(tc_store_gather(s, empty, 1, F32, 1, none, (uint8_t *)dest, ok, err, sizeof(err)) ==
          TC_STORE_OK && ok[0]);
    tc_store_free(s);

    snprintf(d, sizeof(d), "%s/key0-zero", root);
    for (int c = 0; c < 2; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            tc_store *cw = open_dir(d, 0, 0);
            int bad = cw == NULL;
            uint64_t k[2 * 100];
            float x[100][16];
            for (int round = 0; !bad && round < 6; round++) {
                for (int i = 0; i < 100; i++) {
                    k[2 * i] = 0;
                    k[2 * i + 1] = 1 + 600 * (uint64_t)c + 100 * (uint64_t)round + (uint64_t)i;
                    for (int j = 0; j < 16; j++)
                        x[i][j] = (float)k[2 * i + 1] * 3.0f + (float)j;
                }
                size_t done = 0;
                bad = tc_store_put(cw, k, 100, F32, 1, shape, (uint8_t *)x, &done, err,
                                   sizeof(err)) != TC_STORE_OK || done != 100;
            }
            tc_store_free(cw);
            exit(bad);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0);
    }
    tc_store_compact_result cr;
    char merged[256];
    CHECK(tc_store_compact(d, 3600, &cr, merged, sizeof(merged), err, sizeof(err)) ==
          TC_STORE_OK && cr.removed == 2 && cr.records == 1200);
    s = open_dir(d, 0, 0);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 1200 && st.corrupt == 0);
    for (uint64_t first = 1; first <= 1200; first += 100) {
        uint64_t k[2 * 100];
        float x[100][16], y[100][16];
        uint8_t got[100];
        for (int i = 0; i < 100; i++) {
            k[2 * i] = 0;
            k[2 * i + 1] = first + (uint64_t)i;
            for (int j = 0; j < 16; j++)
                x[i][j] = (float)k[2 * i + 1] * 3.0f + (float)j;
        }
        CHECK(tc_store_gather(s, k, 100, F32, 1, shape, (uint8_t *)y, got, err, sizeof(err)) ==
              TC_STORE_OK);
        for (int i = 0; i < 100; i++)
            CHECK(got[i] && memcmp(x[i], y[i], sizeof(x[i])) == 0);
    }
    tc_store_free(s);
}

/* Copies the file at path to a new inode under the same name. */
static void replace_by_copy(const char *path)
{
    char copy[600];
    snprintf(copy, sizeof(copy), "%s.copy", path);
    int in = open(path, O_RDONLY), out = open(copy, O_WRONLY | O_CREAT | O_EXCL, 0644);
    char buf[65536];
    ssize_t got;
    CHECK(in >= 0 && out >= 0);
    while (in >= 0 && out >= 0 && (got = read(in, buf, sizeof(buf))) > 0)
        CHECK(write(out, buf, (size_t)got) == got);
    close(in);
    close(out);
    CHECK(rename(copy, path) == 0);
}

/* Two segments indexed from their index files by a reader keeping one
 * descriptor, both then replaced under their names (new inodes): the one not
 * cached is found gone at its first read, and a batch of its unverified
 * entries is not verified from the replacement; its rows are misses, the
 * other segment's (read through the descriptor it holds) are served. */
static void index_gone(void)
{
    char d[128], p[512], err[256];
    snprintf(d, sizeof(d), "%s/index-gone", root);
    for (uint64_t k = 0; k < 2; k++) {
        tc_store *w = open_dir(d, 0, 0);
        CHECK(put_numel(w, 87000 + 2000 * k, 1100, IDX_NUMEL) == 1100);
        tc_store_free(w);
    }
    CHECK(count_indexes(d) == 2);
    struct rlimit was, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &was) == 0);
    low = was;
    low.rlim_cur = 63; /* one descriptor in the cache */
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    tc_store_options o = {0};
    o.refresh_ms = 3600 * 1000; /* no refresh after a miss: the entries stay */
    tc_store *s = NULL;
    CHECK(tc_store_open(d, &o, &s, err, sizeof(err)) == TC_STORE_OK && s != NULL);
    CHECK(setrlimit(RLIMIT_NOFILE, &was) == 0);
    if (s == NULL)
        return;
    DIR *dir = opendir(d);
    struct dirent *de;
    while (dir && (de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, "seg-", 4) != 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", d, de->d_name);
        replace_by_copy(p);
    }
    if (dir)
        closedir(dir);
    uint64_t ids[10], keys[2 * 10];
    uint8_t hit[10], present[10];
    size_t first[2];
    for (uint64_t k = 0; k < 2; k++) { /* lookups: no refresh within refresh_ms */
        keys[0] = 87000 + 2000 * k;
        keys[1] = keys[0] * 7 + 1;
        CHECK(tc_store_lookup(s, keys, 1, present, err, sizeof(err)) == TC_STORE_OK);
        first[k] = present[0];
    }
    CHECK(first[0] + first[1] == 1); /* one segment cached, one found gone */
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.gone == 1);
    for (uint64_t k = 0; k < 2; k++) {
        size_t n = 0;
        for (size_t i = 0; i < 10; i++) {
            keys[2 * i] = 87001 + 2000 * k + 50 * i;
            keys[2 * i + 1] = keys[2 * i] * 7 + 1;
        }
        CHECK(tc_store_lookup(s, keys, 10, present, err, sizeof(err)) == TC_STORE_OK);
        for (size_t i = 0; i < 10; i++)
            n += present[i];
        CHECK(n == (first[k] ? 10 : 0));
    }
    /* a gather serves the cached segment's rows (the bytes it indexed, from
     * the descriptor it holds); its misses refresh, which finds that segment
     * replaced too: neither copy (new files under known names) is read */
    for (size_t i = 0; i < 10; i++)
        ids[i] = 87000 + 2000 * (i % 2) + 100 * i;
    CHECK(served_ids(s, ids, 10, IDX_NUMEL, hit) == 5);
    for (size_t i = 0; i < 10; i++)
        CHECK(hit[i] == first[i % 2]);
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.gone == 2);
    CHECK(served_ids(s, ids, 10, IDX_NUMEL, hit) == 0);
    tc_store_free(s);
}

/* Segments replaced under their names by a directory and by a symbolic link
 * (to the moved original) while a reader keeping one descriptor indexes
 * them: small records, so the scan left them unverified and a lookup reads
 * each header.  Those it must open again are found gone (not regular, not
 * followed), never read; the one whose descriptor it holds is still served,
 * exactly. */
static void replaced_by_others(void)
{
    char d[128], p[512], aside[600], err[256];
    snprintf(d, sizeof(d), "%s/replaced", root);
    for (uint64_t k = 0; k < 4; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            tc_store *cw = open_dir(d, 0, 0);
            int bad = cw == NULL || put_numel(cw, 90000 + 10 * k, 4, IDX_NUMEL) != 4;
            tc_store_free(cw);
            exit(bad);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0);
    }
    struct rlimit was, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &was) == 0);
    low = was;
    low.rlim_cur = 63; /* one descriptor in the cache */
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    tc_store_options o = {0};
    o.refresh_ms = 3600 * 1000; /* no refresh after a miss: each is opened again */
    tc_store *s = NULL;
    CHECK(tc_store_open(d, &o, &s, err, sizeof(err)) == TC_STORE_OK && s != NULL);
    CHECK(setrlimit(RLIMIT_NOFILE, &was) == 0);
    if (s == NULL)
        return;
    DIR *dir = opendir(d);
    struct dirent *de;
    int k = 0;
    char names[4][256];
    while (dir && (de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, "seg-", 4) == 0 && k < 4)
            snprintf(names[k++], sizeof(names[0]), "%s", de->d_name);
    }
    if (dir)
        closedir(dir);
    CHECK(k == 4);
    for (int i = 0; i < k; i++) {
        snprintf(p, sizeof(p), "%s/%s", d, names[i]);
        snprintf(aside, sizeof(aside), "%s/aside-%d", d, i);
        CHECK(rename(p, aside) == 0);
        if (i % 2 == 0)
            CHECK(mkdir(p, 0755) == 0);
        else
            CHECK(symlink(aside, p) == 0);
    }
    size_t hits = 0;
    for (uint64_t j = 0; j < 4; j++) {
        uint64_t key[2] = {90000 + 10 * j, (90000 + 10 * j) * 7 + 1};
        uint8_t present[1];
        CHECK(tc_store_lookup(s, key, 1, present, err, sizeof(err)) == TC_STORE_OK);
        hits += present[0];
    }
    CHECK(hits == 1); /* through the descriptor held */
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.gone == 3);
    uint64_t ids[16];
    uint8_t hit[16];
    for (size_t i = 0; i < 16; i++)
        ids[i] = 90000 + 10 * (i / 4) + i % 4;
    CHECK(served_ids(s, ids, 16, IDX_NUMEL, hit) <= 4);
    tc_store_free(s);
}

/* With stdin closed, descriptor 0 is free: a segment opened then must not
 * take it (stray reads and writes to 0-2 would land in the cache). */
static void stdio_closed(void)
{
    char d[128];
    snprintf(d, sizeof(d), "%s/stdio", root);
    int saved = dup(0);
    CHECK(saved >= 0 && close(0) == 0);
    tc_store *w = open_dir(d, 0, 0);
    CHECK(put(w, 91000, 4, 0) == 4 && served(w, 91000, 4, 0) == 4);
    struct stat st;
    CHECK(fstat(0, &st) < 0 && errno == EBADF); /* still closed: not a segment */
    tc_store_free(w);
    tc_store *s = open_dir(d, 0, 0);
    CHECK(served(s, 91000, 4, 0) == 4);
    CHECK(fstat(0, &st) < 0 && errno == EBADF);
    tc_store_free(s);
    CHECK(dup2(saved, 0) == 0);
    close(saved);
}

/* The reader's table: a record dropped (changed under its writer) is left out
 * when the table grows, and an index file adopted by a refresh into a table
 * with room for it needs no resize.  Every row is served exactly. */
static void table_sizes(void)
{
    char d[128], seg[512], err[256];
    const uint64_t rec = 128 + 64;
    snprintf(d, sizeof(d), "%s/table", root);
    tc_store *s = open_dir(d, 0, 0);
    CHECK(put_numel(s, 92000, 600, 16) == 600);
    one_segment(d, seg, sizeof(seg));
    patch(seg, (long)(10 * rec + 8), "\x01", 1); /* key of record 10 */
    uint64_t ids[1100];
    uint8_t hit[1100];
    ids[0] = 92010;
    CHECK(served_ids(s, ids, 1, 16, hit) == 0); /* dropped */
    CHECK(put_numel(s, 92600, 2400, 16) == 2400); /* the table grows past it */
    for (size_t i = 0; i < 1000; i++)
        ids[i] = 92000 + 2 * i;
    CHECK(served_ids(s, ids, 1000, 16, hit) == 999);
    for (size_t i = 0; i < 1000; i++)
        CHECK(hit[i] == (ids[i] != 92010));
    /* another writer's 1100 records and their index, found by a refresh */
    pid_t pid = fork();
    if (pid == 0) {
        tc_store *cw = open_dir(d, 0, 0);
        int bad = cw == NULL || put_numel(cw, 96000, 1100, 16) != 1100;
        tc_store_free(cw);
        exit(bad);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0);
    CHECK(count_indexes(d) == 1);
    size_t added = 0;
    CHECK(tc_store_refresh(s, &added, err, sizeof(err)) == TC_STORE_OK && added == 1100);
    for (size_t i = 0; i < 1100; i++)
        ids[i] = 96000 + i;
    CHECK(served_ids(s, ids, 1100, 16, hit) == 1100);
    tc_store_stats st;
    CHECK(tc_store_stats_get(s, &st) == TC_STORE_OK && st.records == 600 - 1 + 2400 + 1100);
    tc_store_free(s);
}

/* The index file's checksums are pinned: index files written by an earlier
 * build must still be adopted, so a change to the entries' block sum or the
 * header sum (a shared helper with another seed, say) must fail here.  Fixed
 * entries of a fixed segment name and inode; the expected words were taken
 * from the build before store_index.c shared store.c's sum and write helpers. */
#define PINNED_ENTRIES_SUM 0x498e02d5daa53f79ULL
#define PINNED_HEADER_SUM 0xf569aba4072b142aULL
static void index_sums_pinned(void)
{
    char d[128], p[512];
    snprintf(d, sizeof(d), "%s/pinned", root);
    CHECK(mkdir(d, 0755) == 0);
    enum { PN = 700 }; /* 22,400 entry bytes: a whole 16 KiB block and a short one */
    tc_index_entry *e = malloc(PN * sizeof(*e));
    CHECK(e != NULL);
    if (e == NULL)
        return;
    for (size_t i = 0; i < PN; i++)
        e[i] = (tc_index_entry){0x0123456789abcdefULL * (i + 1), i * 7 + 1, i * 192, 32};
    tc_index_head h = {tc_store_segment_id("seg-pinned.tcs"), 4242, PN * 192, PN, 3};
    CHECK(tc_index_write(d, "seg-pinned.tcs", &h, e, 0644) == 0);
    free(e);
    snprintf(p, sizeof(p), "%s/idx-pinned.tci", d);
    uint8_t hb[64];
    int fd = open(p, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, hb, sizeof(hb), 0) == (ssize_t)sizeof(hb));
    if (fd >= 0)
        close(fd);
    printf("store_paths: pinned index sums %016llx %016llx\n", (unsigned long long)rd64(hb + 48),
           (unsigned long long)rd64(hb + 56));
    CHECK(rd64(hb + 48) == PINNED_ENTRIES_SUM);
    CHECK(rd64(hb + 56) == PINNED_HEADER_SUM);
    tc_index_segment seg = {h.seg_id, 4242, PN * 192};
    tc_index_entry *back = NULL;
    tc_index_head got;
    const char *why = NULL;
    CHECK(tc_index_read(d, "seg-pinned.tcs", &seg, 0, &back, &got, &why) == PN);
    tc_index_free(back, PN);
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
    index_verify();
    index_writers();
    dir_modes();
    foreign_owner();
    many_segments();
    gather_cut();
    gather_orders();
    unverified_lookup();
    dir_mtime_checks();
    write_limits();
    index_not_for_v1();
    key_words();
    index_gone();
    replaced_by_others();
    stdio_closed();
    table_sizes();
    index_sums_pinned();

    if (failures) {
        fprintf(stderr, "store_paths: %d failures (scratch left in %s)\n", failures, root);
        return 1;
    }
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS); /* the scratch: ~90 MB */
    printf("store_paths: OK\n");
    return 0;
}
