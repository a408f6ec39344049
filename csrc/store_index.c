/* store_index.c -- the persisted index of a segment (docs/format.md, section 9).
 *
 * Opening a directory costs one header read and check per record (store.c,
 * segment_scan): about 0.8 s for a million small records, most of it placing
 * keys at random in the in-memory table.  A segment's index file lists the
 * records of a prefix [0, covered) of the segment (key, offset, item bytes),
 * ordered by the hash whose high bits pick a key's slot in that table, so a
 * reader loads it with one read, one checksum at memory speed and inserts that
 * walk the table front to back; it then scans only [covered, end).
 *
 * An index is a hint, never an authority: its entries are indexed unverified,
 * so the first use of each record reads and checks its header in full (bound
 * to the segment's id and the offset, keys and size compared with the entry)
 * and its payload checksum, exactly as for a record the scan found.  An entry
 * that points at wrong bytes is a miss.  Files are written like the layout
 * sidecar (an O_EXCL|O_NOFOLLOW temporary file, then rename) and read like
 * segments (O_NOFOLLOW|O_NONBLOCK, regular files only, the owner rule, size
 * bounds); anything that does not check is ignored and the segment is scanned.
 * Plain C, no Python; store.c decides when to read and write one. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "store.h"
#include "hash.h"
#include "le_bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define IDX_MAGIC 0x31494354u /* "TCI1" as little-endian bytes */
#define IDX_VERSION 1
#define IDX_HEADER_BYTES 64
#define IDX_ENTRY_BYTES 32
#define IDX_HEADER_SEED 0x746369686472ULL /* "tcihdr" */
#define IDX_ENTRIES_SEED 0x746369656e74ULL /* "tcient" */
#define IDX_GAMMA 0x9E3779B97F4A7C15ULL
/* The smallest record (a header and an empty payload), so an index of a prefix
 * of `covered` bytes lists at most covered / this entries. */
#define IDX_MIN_RECORD_BYTES 128u

_Static_assert(sizeof(tc_index_entry) == IDX_ENTRY_BYTES, "entries decode in place");


uint64_t tc_index_key_order(uint64_t key0, uint64_t key1)
{
    return tc_fmix64(key0 ^ (key1 * IDX_GAMMA));
}

/* Entry arrays of 2 MiB or more are mapped with huge pages where the kernel
 * allows them (a million entries: 16 page faults instead of 8,000). */
#define IDX_MAP_BYTES (2u << 20)

static void *entries_alloc(size_t bytes)
{
    if (bytes < IDX_MAP_BYTES)
        return malloc(bytes ? bytes : 1);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

void tc_index_free(tc_index_entry *e, size_t count)
{
    if (e != NULL && count * IDX_ENTRY_BYTES >= IDX_MAP_BYTES)
        munmap(e, count * IDX_ENTRY_BYTES);
    else
        free(e);
}

/* idx-<rest>.tci for seg-<rest>.tcs; -1 if seg_name is not a segment's name. */
int tc_index_name(const char *seg_name, char *buf, size_t len)
{
    size_t n = strlen(seg_name);
    if (n <= 8 || strncmp(seg_name, "seg-", 4) != 0 || strcmp(seg_name + n - 4, ".tcs") != 0)
        return -1;
    int w = snprintf(buf, len, "idx-%.*s.tci", (int)(n - 8), seg_name + 4);
    return w < 0 || (size_t)w >= len ? -1 : 0;
}

/* The header's checksum: its words 0..6 chained from the seed and the segment
 * id (format.md, section 9); word 7 is the checksum itself. */
static uint64_t header_sum(const uint8_t b[IDX_HEADER_BYTES], uint64_t seg_id)
{
    uint64_t a = tc_fmix64(IDX_HEADER_SEED ^ seg_id);
    for (int i = 0; i < 7; i++)
        a = tc_fmix64(a ^ tc_get_le64(b + 8 * i)) + IDX_GAMMA;
    return a;
}

/* The entries' checksum: payload_sum of format.md section 4 with its own seed
 * (store.c's block sum, shared). */
static uint64_t entries_sum(const uint8_t *p, uint64_t n)
{
    return tc_store_sum_feed(tc_store_sum_begin(IDX_ENTRIES_SEED, n), p, n);
}

static int read_all(int fd, uint8_t *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

long tc_index_read(const char *dir, const char *seg_name, const tc_index_segment *seg,
                   int allow_other_owners, tc_index_entry **out, tc_index_head *head,
                   const char **why)
{
    *out = NULL;
    memset(head, 0, sizeof(*head));
    const char *bad = NULL;
    char name[300], path[4096 + 300];
    uint8_t *buf = NULL;
    int fd = -1;
    if (tc_index_name(seg_name, name, sizeof(name)) < 0 ||
        snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path)) {
        bad = "no index name";
        goto fail;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        bad = errno == ENOENT ? "none" : "cannot open";
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        bad = "not a regular file";
        goto fail;
    }
    if (st.st_uid != geteuid() && !allow_other_owners) {
        bad = "owned by another user";
        goto fail;
    }
    /* Size bounds before reading: a header and whole entries, no more entries
     * than the segment's length allows (a 1 TiB sparse file is refused here). */
    uint64_t size = (uint64_t)st.st_size;
    if (size < IDX_HEADER_BYTES || (size - IDX_HEADER_BYTES) % IDX_ENTRY_BYTES != 0 ||
        (size - IDX_HEADER_BYTES) / IDX_ENTRY_BYTES > seg->len / IDX_MIN_RECORD_BYTES) {
        bad = "size out of bounds";
        goto fail;
    }
    uint8_t hb[IDX_HEADER_BYTES];
    if (read_all(fd, hb, sizeof(hb), 0) < 0) {
        bad = "short header";
        goto fail;
    }
    if ((uint32_t)tc_get_le64(hb) != IDX_MAGIC || ((tc_get_le64(hb) >> 32) & 0xffff) != IDX_VERSION ||
        (tc_get_le64(hb) >> 48) != IDX_ENTRY_BYTES) {
        bad = "bad magic, version or entry size";
        goto fail;
    }
    if (header_sum(hb, seg->id) != tc_get_le64(hb + 56)) {
        bad = "header checksum mismatch";
        goto fail;
    }
    head->seg_id = tc_get_le64(hb + 8);
    head->seg_ino = tc_get_le64(hb + 16);
    head->covered = tc_get_le64(hb + 24);
    head->count = tc_get_le64(hb + 32);
    head->corrupt = tc_get_le64(hb + 40);
    uint64_t sum = tc_get_le64(hb + 48);
    /* Bound to this segment: its name (the id), this file (the inode), and a
     * prefix that the file still holds (an index older than the segment covers
     * less; a segment shorter than the prefix is not the one indexed). */
    if (head->seg_id != seg->id || head->seg_ino != seg->ino) {
        bad = "written for another segment file";
        goto fail;
    }
    if (head->covered > seg->len || head->covered % 64 != 0) {
        bad = "covers more than the segment holds";
        goto fail;
    }
    if (head->count != (size - IDX_HEADER_BYTES) / IDX_ENTRY_BYTES ||
        head->count > head->covered / IDX_MIN_RECORD_BYTES) {
        bad = "entry count inconsistent";
        goto fail;
    }
    size_t nbytes = (size_t)(head->count * IDX_ENTRY_BYTES);
    buf = entries_alloc(nbytes);
    if (buf == NULL) {
        bad = "out of memory";
        goto fail;
    }
    if (read_all(fd, buf, nbytes, IDX_HEADER_BYTES) < 0) {
        bad = "short read";
        goto fail;
    }
    if (entries_sum(buf, nbytes) != sum) {
        bad = "entries checksum mismatch";
        goto fail;
    }
    /* Decoded in place (the struct is the same four words); each entry must lie
     * in the prefix on a record boundary.  What it points at is checked at first
     * use, like every record. */
    tc_index_entry *e = (tc_index_entry *)(void *)buf;
    for (size_t i = 0; i < head->count; i++) {
        const uint8_t *p = buf + i * IDX_ENTRY_BYTES;
        tc_index_entry v = {tc_get_le64(p), tc_get_le64(p + 8), tc_get_le64(p + 16), tc_get_le64(p + 24)};
        if (v.offset % 64 != 0 || v.offset > head->covered - IDX_MIN_RECORD_BYTES ||
            v.raw_len > (UINT64_MAX >> 2)) {
            bad = "entry out of bounds";
            goto fail;
        }
        e[i] = v;
    }
    close(fd);
    *out = e;
    return (long)head->count;
fail:
    if (fd >= 0)
        close(fd);
    if (buf != NULL)
        tc_index_free((tc_index_entry *)(void *)buf, (size_t)head->count);
    if (why)
        *why = bad;
    return -1;
}

/* Radix sort of the entries by the top 16 bits of tc_index_key_order: what a
 * loader needs is that consecutive entries land near each other in its table,
 * whatever its size (a table of 2^k slots sends a key to its top k bits). */
static int order_entries(tc_index_entry *e, size_t n)
{
    if (n < 2)
        return 0;
    enum { BUCKETS = 1 << 16 };
    size_t *start = calloc(BUCKETS + 1, sizeof(size_t));
    tc_index_entry *tmp = malloc(n * sizeof(*tmp));
    if (start == NULL || tmp == NULL) {
        free(start);
        free(tmp);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        start[(tc_index_key_order(e[i].key0, e[i].key1) >> 48) + 1]++;
    for (size_t b = 0; b < BUCKETS; b++)
        start[b + 1] += start[b];
    for (size_t i = 0; i < n; i++)
        tmp[start[tc_index_key_order(e[i].key0, e[i].key1) >> 48]++] = e[i];
    memcpy(e, tmp, n * sizeof(*tmp));
    free(tmp);
    free(start);
    return 0;
}

int tc_index_write(const char *dir, const char *seg_name, const tc_index_head *head,
                   tc_index_entry *entries, unsigned file_mode)
{
    char name[300], path[4096 + 300], tmp[4096 + 400];
    if (tc_index_name(seg_name, name, sizeof(name)) < 0 ||
        snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
        return -1;
    size_t n = (size_t)head->count;
    if (order_entries(entries, n) < 0)
        return -1;
    /* encoded in place, little-endian */
    uint8_t *p = (uint8_t *)(void *)entries;
    for (size_t i = 0; i < n; i++) {
        tc_index_entry v = entries[i];
        tc_put_le64(p + i * IDX_ENTRY_BYTES, v.key0);
        tc_put_le64(p + i * IDX_ENTRY_BYTES + 8, v.key1);
        tc_put_le64(p + i * IDX_ENTRY_BYTES + 16, v.offset);
        tc_put_le64(p + i * IDX_ENTRY_BYTES + 24, v.raw_len);
    }
    uint8_t hb[IDX_HEADER_BYTES];
    tc_put_le64(hb, (uint64_t)IDX_MAGIC | (uint64_t)IDX_VERSION << 32 |
                     (uint64_t)IDX_ENTRY_BYTES << 48);
    tc_put_le64(hb + 8, head->seg_id);
    tc_put_le64(hb + 16, head->seg_ino);
    tc_put_le64(hb + 24, head->covered);
    tc_put_le64(hb + 32, head->count);
    tc_put_le64(hb + 40, head->corrupt);
    tc_put_le64(hb + 48, entries_sum(p, (uint64_t)n * IDX_ENTRY_BYTES));
    tc_put_le64(hb + 56, header_sum(hb, head->seg_id));
    /* The temporary file's name is unpredictable and made with O_EXCL|O_NOFOLLOW,
     * so a planted link or file is never followed or overwritten; rename makes
     * the whole file appear at once (a reader sees the old index or the new). */
    uint64_t rnd;
    if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd))
        rnd = tc_fmix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^
                        (uint64_t)(uintptr_t)&rnd);
    snprintf(tmp, sizeof(tmp), "%s/.%s.%ld.%016llx.tmp", dir, name, (long)getpid(),
             (unsigned long long)rnd);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  file_mode ? (mode_t)file_mode : 0666);
    if (fd < 0)
        return -1;
    int ok = tc_store_write_fully(fd, hb, sizeof(hb), 0) == 0 &&
             tc_store_write_fully(fd, p, n * IDX_ENTRY_BYTES, IDX_HEADER_BYTES) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        int saved = errno;
        unlink(tmp);
        errno = saved;
        return -1;
    }
    return 0;
}

void tc_index_remove(const char *dir, const char *seg_name)
{
    char name[300], path[4096 + 300];
    if (tc_index_name(seg_name, name, sizeof(name)) == 0 &&
        snprintf(path, sizeof(path), "%s/%s", dir, name) < (int)sizeof(path))
        unlink(path);
}
