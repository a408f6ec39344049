/* fuzz_segment.c -- libFuzzer harness for the record reader of store.c.
 *
 * The input is the bytes of one segment file (docs/format.md, sections 2-3).
 * It is written into a scratch cache directory and read through the public
 * engine interface (store.h) three ways: opened whole; opened on its first
 * half and then grown to the whole by an append and a refresh; and cut to a
 * quarter under an open store (section 8).  Every candidate key (the key
 * fields of every 64-byte boundary) is looked up, described and gathered,
 * every record is verified, and one record is put and read back.
 *
 * Oracle: whatever the store serves must be the payload of a record of the
 * file whose header and payload checksums verify by this file's own reading
 * of docs/format.md (section 4); anything else aborts.  Crashes, leaks and
 * undefined behaviour are caught by the sanitizers. */
#include "hash.h"
#include "store.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HEADER_BYTES 128
#define ALIGN 64
/* Larger items are not gathered: a valid compressed header may claim any raw size. */
#define MAX_GATHER_BYTES (1u << 22)

static char dir[64];
static char seg_path[128];

static void clear_dir(void);

static void remove_scratch(void)
{
    clear_dir();
    rmdir(dir);
}
static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

#define SEGMENT_NAME "seg-fuzz-1-0000000000000000.tcs"

/* docs/format.md, section 4, written out again from the text: version 2 binds
 * the record to its segment's name and its offset, version 1 does not. */
static uint64_t spec_header_sum(const uint8_t *h, uint64_t off)
{
    uint64_t a = 0x74637368647231ULL;
    if (h[4] == 2) {
        uint64_t id = 0xcbf29ce484222325ULL;
        for (const char *c = SEGMENT_NAME; *c; c++)
            id = (id ^ (uint8_t)*c) * 0x100000001b3ULL;
        a = tc_fmix64(0x74637368647232ULL ^ tc_fmix64(id)) ^ off;
    }
    for (int i = 0; i < 16; i++)
        a = tc_fmix64(a ^ (i == 7 ? 0 : rd64(h + 8 * i))) + 0x9E3779B97F4A7C15ULL;
    return a;
}

static uint64_t spec_payload_sum(const uint8_t *p, uint64_t n)
{
    uint64_t s = tc_fmix64(0x7463737061793176ULL ^ n);
    for (uint64_t off = 0; off < n; off += TC_HASH_BLOCK_BYTES) {
        uint64_t len = n - off < TC_HASH_BLOCK_BYTES ? n - off : TC_HASH_BLOCK_BYTES;
        uint64_t h[2];
        tc_hash_block(p + off, (size_t)len, h);
        s = tc_fmix64(s ^ h[0]) + h[1];
    }
    return s;
}

/* 1 if a whole, valid record (section 6's checks, both checksums) with this key
 * starts at data + off, and (when want_payload) its stored bytes equal `got`. */
static int spec_record_ok(const uint8_t *data, size_t size, size_t off, uint64_t k0, uint64_t k1,
                          const uint8_t *got, uint64_t got_len)
{
    if (off + HEADER_BYTES > size)
        return 0;
    const uint8_t *h = data + off;
    if (h[0] != 'T' || h[1] != 'C' || h[2] != 'R' || h[3] != '1' || (h[4] != 1 && h[4] != 2) ||
        h[5] != 0)
        return 0;
    if (rd64(h + 8) != k0 || rd64(h + 16) != k1 || spec_header_sum(h, off) != rd64(h + 56))
        return 0;
    int ndim = h[6], flags = h[7];
    if (ndim > 8 || (flags & ~1) != 0)
        return 0;
    uint64_t dtype = rd64(h + 24), bits = (dtype >> 8) & 0xff, lanes = (dtype >> 16) & 0xffff;
    if ((dtype >> 32) != 0 || bits * lanes == 0 || bits * lanes % 8 != 0)
        return 0;
    uint64_t n = bits * lanes / 8;
    for (int d = 0; d < 8; d++) {
        int64_t e = (int64_t)rd64(h + 64 + 8 * d);
        if (d >= ndim ? e != 0 : (e < 0 || __builtin_mul_overflow(n, (uint64_t)e, &n)))
            return 0;
    }
    uint64_t raw = rd64(h + 32), stored = rd64(h + 40);
    if (n != raw || ((flags & 1) ? stored >= raw : stored != raw))
        return 0;
    if (stored > size - off - HEADER_BYTES)
        return 0;
    if (spec_payload_sum(h + HEADER_BYTES, stored) != rd64(h + 48))
        return 0;
    if (got != NULL && !(flags & 1))
        return got_len == raw && memcmp(got, h + HEADER_BYTES, raw) == 0;
    return got == NULL || got_len == raw;
}

static int served_from_file(const uint8_t *data, size_t size, uint64_t k0, uint64_t k1,
                            const uint8_t *got, uint64_t got_len)
{
    for (size_t off = 0; off + HEADER_BYTES <= size; off += ALIGN) {
        if (spec_record_ok(data, size, off, k0, k1, got, got_len))
            return 1;
    }
    return 0;
}

static void write_file(const char *path, const uint8_t *data, size_t size, int flags)
{
    int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);
    if (fd < 0)
        abort();
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0)
            abort();
        done += (size_t)w;
    }
    close(fd);
}

static void clear_dir(void)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        abort();
    struct dirent *de;
    char path[512];
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
}

/* The call path's read (csrc/call.c): a lookup that leaves records unverified,
 * the first present row's header naming the item shape, and one gather of every
 * present row, which verifies each record at its first use in its destination.
 * Served rows must be whole valid records of the file. */
static void read_keys_unverified(tc_store *s, const uint8_t *data, size_t size,
                                 const uint64_t *keys, size_t nkeys, int oracle)
{
    char err[512];
    uint8_t *present = calloc(nkeys, 1);
    uint64_t *rows = calloc(nkeys, 16);
    if (present == NULL || rows == NULL)
        abort();
    if (tc_store_lookup_unverified(s, keys, nkeys, present, err, sizeof(err)) != TC_STORE_OK)
        abort();
    size_t n = 0;
    for (size_t i = 0; i < nkeys; i++) {
        if (present[i]) {
            rows[2 * n] = keys[2 * i];
            rows[2 * n + 1] = keys[2 * i + 1];
            n++;
        }
    }
    uint64_t dtype_word;
    int ndim;
    int64_t shape[TC_STORE_MAX_NDIM];
    uint64_t raw = 0;
    if (n > 0 && tc_store_entry_info(s, rows, &dtype_word, &ndim, shape, err, sizeof(err)) ==
                     TC_STORE_OK) {
        raw = tc_store_itemsize(dtype_word);
        for (int d = 0; d < ndim; d++)
            raw *= (uint64_t)shape[d];
    }
    if (n > 0 && raw > 0 && raw * n <= MAX_GATHER_BYTES) {
        uint8_t *dest = malloc(raw * n);
        uint8_t *served = calloc(n, 1);
        if (dest == NULL || served == NULL)
            abort();
        if (tc_store_gather(s, rows, n, dtype_word, ndim, shape, dest, served, err,
                            sizeof(err)) != TC_STORE_OK)
            abort();
        for (size_t r = 0; r < n; r++) {
            if (served[r] && oracle && !served_from_file(data, size, rows[2 * r],
                                                         rows[2 * r + 1], dest + r * raw, raw)) {
                fprintf(stderr, "served an unverified key (%llx, %llx) that no valid record "
                        "of the file holds\n", (unsigned long long)rows[2 * r],
                        (unsigned long long)rows[2 * r + 1]);
                abort();
            }
        }
        free(dest);
        free(served);
    }
    free(present);
    free(rows);
}

/* Looks up, describes and gathers every candidate key; checks what is served
 * against `data` (the file as it is now) when `oracle` is set. */
static void read_keys(tc_store *s, const uint8_t *data, size_t size, int oracle)
{
    char err[512];
    size_t nkeys = size / ALIGN + 1;
    uint64_t *keys = calloc(nkeys, 16);
    uint8_t *present = calloc(nkeys, 1);
    if (keys == NULL || present == NULL)
        abort();
    for (size_t i = 0; i + 1 < nkeys; i++) {
        if (i * ALIGN + 24 <= size) {
            keys[2 * i] = rd64(data + i * ALIGN + 8);
            keys[2 * i + 1] = rd64(data + i * ALIGN + 16);
        }
    }
    /* first, while the fresh store has verified nothing: the call path's read */
    read_keys_unverified(s, data, size, keys, nkeys, oracle);
    if (tc_store_lookup(s, keys, nkeys, present, err, sizeof(err)) != TC_STORE_OK)
        abort();
    for (size_t i = 0; i < nkeys; i++) {
        if (!present[i])
            continue;
        uint64_t dtype_word;
        int ndim;
        int64_t shape[TC_STORE_MAX_NDIM];
        if (tc_store_entry_info(s, &keys[2 * i], &dtype_word, &ndim, shape, err,
                                sizeof(err)) != TC_STORE_OK)
            continue; /* a payload that failed since the lookup is dropped, not served */
        uint64_t raw = tc_store_itemsize(dtype_word);
        for (int d = 0; d < ndim; d++)
            raw *= (uint64_t)shape[d];
        if (raw > MAX_GATHER_BYTES)
            continue;
        uint8_t *dest = malloc(raw ? raw : 1);
        if (dest == NULL)
            abort();
        uint8_t served = 0;
        int rc = tc_store_gather(s, &keys[2 * i], 1, dtype_word, ndim, shape, dest, &served,
                                 err, sizeof(err));
        if (rc != TC_STORE_OK)
            abort(); /* only bad arguments or a closed store are errors */
        if (served && oracle && !served_from_file(data, size, keys[2 * i], keys[2 * i + 1],
                                                   dest, raw)) {
            fprintf(stderr, "served key (%llx, %llx) that no valid record of the file holds\n",
                    (unsigned long long)keys[2 * i], (unsigned long long)keys[2 * i + 1]);
            abort();
        }
        /* A destination of another shape must be refused, never written past:
         * dest is too small for the other shape, so only an unread row is safe. */
        int64_t other[TC_STORE_MAX_NDIM] = {0};
        memcpy(other, shape, sizeof(other));
        other[0] = other[0] > 0 ? other[0] - 1 : 1;
        uint64_t other_raw = tc_store_itemsize(dtype_word);
        for (int d = 0; d < ndim; d++)
            other_raw *= (uint64_t)other[d];
        uint8_t *small = malloc(other_raw ? other_raw : 1);
        if (small == NULL)
            abort();
        if (ndim > 0 && (tc_store_gather(s, &keys[2 * i], 1, dtype_word, ndim, other, small,
                                         &served, err, sizeof(err)) != TC_STORE_OK ||
                         served))
            abort();
        free(small);
        free(dest);
    }
    free(keys);
    free(present);
}

static void read_all(tc_store *s, const uint8_t *data, size_t size)
{
    read_keys(s, data, size, 1);
}

static tc_store *open_store(void)
{
    tc_store_options opt = {0};
    tc_store *s = NULL;
    char err[512];
    if (tc_store_open(dir, &opt, &s, err, sizeof(err)) != TC_STORE_OK)
        abort();
    return s;
}

static void verify_all(tc_store *s, size_t size)
{
    tc_store_verify_result r;
    char err[512];
    if (tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) != TC_STORE_OK)
        abort();
    /* Verified records are whole records of this file. */
    if (r.bytes > size || r.records * HEADER_BYTES > r.bytes)
        abort();
}

/* One record of our own next to the fuzzed segment, read back exactly. */
static void put_and_read_back(tc_store *s)
{
    uint64_t key[2] = {0x0123456789abcdefULL, 0xfedcba9876543210ULL};
    int64_t shape[1] = {5};
    uint8_t src[20], dest[20];
    for (int i = 0; i < 20; i++)
        src[i] = (uint8_t)(i * 7 + 1);
    size_t stored = 0;
    uint8_t served = 0;
    char err[512];
    uint64_t f32 = 2 | 32 << 8 | 1 << 16;
    if (tc_store_put(s, key, 1, f32, 1, shape, src, &stored, err, sizeof(err)) != TC_STORE_OK)
        abort();
    if (tc_store_gather(s, key, 1, f32, 1, shape, dest, &served, err, sizeof(err)) !=
            TC_STORE_OK ||
        (served && memcmp(src, dest, sizeof(src)) != 0))
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof(dir), "/tmp/tc-fuzz-XXXXXX");
    if (mkdtemp(dir) == NULL)
        abort();
    snprintf(seg_path, sizeof(seg_path), "%s/" SEGMENT_NAME, dir);
    atexit(remove_scratch);
    tc_hash_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* 1. The whole file at open. */
    clear_dir();
    write_file(seg_path, data, size, O_TRUNC);
    tc_store *s = open_store();
    read_all(s, data, size);
    verify_all(s, size);
    read_all(s, data, size); /* after verify dropped what failed */
    put_and_read_back(s);
    tc_store_free(s);

    /* 2. The first half at open, the rest appended by a writer later. */
    clear_dir();
    size_t half = size / 2;
    write_file(seg_path, data, half, O_TRUNC);
    s = open_store();
    read_all(s, data, half);
    write_file(seg_path, data + half, size - half, O_APPEND);
    size_t added = 0;
    char err[512];
    if (tc_store_refresh(s, &added, err, sizeof(err)) != TC_STORE_OK)
        abort();
    read_all(s, data, size);

    /* 3. Cut to a quarter under the open store (docs/format.md, section 8). */
    size_t quarter = size / 4;
    if (truncate(seg_path, (off_t)quarter) != 0)
        abort();
    if (tc_store_refresh(s, &added, err, sizeof(err)) != TC_STORE_OK)
        abort();
    read_all(s, data, quarter);
    verify_all(s, quarter);
    tc_store_free(s);

    /* 4. Out of contract (section 8 says not to): the file rewritten in place
     * under an open store, its first half replaced by its second.  Records the
     * store verified before are trusted without a second payload check (their
     * header is checked again), so only memory safety is checked here, not
     * what is served. */
    clear_dir();
    write_file(seg_path, data, half, O_TRUNC);
    s = open_store();
    read_all(s, data, half);
    int fd = open(seg_path, O_WRONLY);
    if (fd < 0 || pwrite(fd, data + half, size - half, 0) != (ssize_t)(size - half))
        abort();
    close(fd);
    read_keys(s, data + half, size - half, 0);
    verify_all(s, size - half);
    tc_store_free(s);
    return 0;
}
