/* store.c -- the append-only segment store of docs/format.md: records, the
 * in-memory index, lookup, gather, put and the scan for other writers.
 *
 * It owns the segment files of one directory (or the chunks of an anonymous
 * arena) and an open-addressing index from a 128-bit key to (segment, offset).
 * It never includes Python.h, never takes a lock on a file (each writer appends
 * only to its own segment, docs/format.md section 5) and never serves a record
 * whose checksums have not verified (section 6).  Errors are negative
 * TC_STORE_E* codes with a message; nothing here aborts.  Whatever goes wrong
 * while serving or storing (I/O errors, files truncated or removed under us,
 * descriptor or memory exhaustion) is a *fault*: the rows it touches become
 * misses and the fault is counted per kind (store.h), so the cache can never
 * fail the job it serves.
 *
 * File segments are read with pread, never mapped (docs/architecture.md,
 * "Store: pread, not mmap"): a file truncated under a mapping would kill the
 * process with SIGBUS at the next touch, while a short pread is a miss.
 *
 * Lock order: s->lock (the rwlock guarding the index and the segment table)
 * before s->fd_lock (the descriptor cache) before s->fault_lock (fault
 * messages).  fd_lock and fault_lock are leaves: nothing is called with them
 * held that takes another lock, and none is held across a return to Python.
 * The binding releases the GIL before every call that takes s->lock, so no
 * thread waits on the store's locks while it holds the GIL. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* SEEK_DATA, SEEK_HOLE; setup.py defines it too */
#endif
#include "store.h"
#include "hash.h"
#include "zstd_dl.h"
#include "le_bytes.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* docs/format.md, section 3. */
#define REC_MAGIC 0x31524354u /* "TCR1" as little-endian bytes */
#define REC_VERSION 2          /* written; version 1 records are still read (section 3) */
#define REC_VERSION_V1 1
#define REC_HEADER_BYTES 128
#define REC_ALIGN 64          /* payloads start on a cache line, section 2 */
#define REC_FLAG_ZSTD 1u
#define HEADER_SEED 0x74637368647231ULL  /* "tcshdr1" */
#define HEADER_SEED_V2 0x74637368647232ULL /* "tcshdr2" */
#define PAYLOAD_SEED 0x7463737061793176ULL /* "tcspay1v" */
#define GAMMA 0x9E3779B97F4A7C15ULL

/* A put writes at most this many iovecs or bytes per pwritev (IOV_MAX is 1024 on Linux). */
#define PUT_MAX_IOV 1020
#define PUT_MAX_PENDING_BYTES (256u << 20)
/* Arena chunks: anonymous mappings touched only as records are written. */
#define ARENA_CHUNK_BYTES (64u << 20)
/* A scan reads segments through a window of this size (one pread per window). */
#define SCAN_WINDOW_BYTES (256u << 10)
/* The scan verifies the payloads of records at least this large that lie
 * whole in its window; smaller ones verify at first use. */
#define SCAN_VERIFY_MIN 512u
/* After a record this large, the scan reads only the next header's page. */
#define SCAN_SMALL_READ 4096u
/* Bytes a resynchronisation may read per segment per refresh; it resumes at
 * the next refresh, so a huge garbage file costs bounded time per call. */
#define RESYNC_BUDGET_BYTES (64ull << 20)
/* Payload verification reads at most this much at a time (a multiple of the
 * 16 KiB checksum block). */
#define VERIFY_CHUNK_BYTES (1u << 20)
/* Bytes of segments read through their index files that one store asks the
 * kernel to read ahead (index_adopt). */
#define PREFETCH_BYTES (1ull << 30)
/* Refresh: segments whose writer is gone are re-checked for growth a few per
 * directory listing, round robin, so one refresh costs O(active + this), not
 * O(segments); a refresh that does not list the directory re-checks none of them. */
#define REFRESH_IDLE_CHECKS 32
/* A listing is forced at least this often even when the directory's mtime is
 * unchanged (NFS caches attributes), and a listing taken less than this long
 * after the mtime it saw does not let the next refresh skip (coarse timestamps). */
#define READDIR_FORCE_NS (1000ull * 1000000ull)
#define MTIME_SLACK_NS (50ull * 1000000ull)
/* A writer on another host counts as live while its segment changed this recently. */
#define REMOTE_IDLE_NS (600ull * 1000000000ull)

/* The decoded header of docs/format.md section 3; bytes on disk go only
 * through header_encode / header_decode. */
typedef struct {
    uint32_t magic;
    uint16_t version;
    uint8_t ndim;
    uint8_t flags;
    uint64_t key0;
    uint64_t key1;
    uint64_t dtype_word;
    uint64_t raw_len;
    uint64_t stored_len;
    uint64_t payload_sum;
    uint64_t header_sum;
    int64_t shape[TC_STORE_MAX_NDIM];
} rec_header;

_Static_assert(REC_HEADER_BYTES % REC_ALIGN == 0, "payload stays aligned after the header");

typedef struct {
    char *path;        /* dir/name; NULL for an arena chunk */
    const char *name;  /* the file name inside path */
    uint64_t id;       /* segment_id(name), what version 2 records are bound to; 0: arena */
    int fd;            /* -1 while closed (reader segments are opened on demand) */
    unsigned pins;     /* calls reading through fd right now (fd_lock) */
    uint64_t last_use; /* fd cache clock (fd_lock) */
    dev_t dev;         /* identity checked at every reopen: a replaced file is gone */
    ino_t ino;
    uint8_t *base;     /* arena chunk memory (read-write anonymous); NULL for files */
    size_t map_len;    /* arena chunk bytes */
    uint64_t file_len; /* bytes known to exist (arena: bytes used) */
    uint64_t scan_end; /* records parsed up to here */
    uint64_t resync_from; /* a bad header at scan_end was searched past up to here */
    int64_t mtime_ns;  /* at the last look; a change lets a pending tail be read again */
    int resync_more;   /* the resync budget ran out: go on at the next refresh */
    int live_writer;   /* its writer may still append: checked at every refresh */
    int ignored;       /* named like a segment but not a regular file: never read */
    int gone;          /* removed or replaced: its records read as misses (atomic) */
    int has_v1;        /* holds version 1 records: never given an index file */
    int index_save;    /* scanned in full at open: write its index file (store_index.c) */
} segment;

enum { ENTRY_VERIFIED = 1u, ENTRY_DEAD = 2u };

typedef struct {
    uint64_t key0, key1;
    uint64_t offset;
    uint64_t raw_len; /* item bytes: a gather refuses a row of another size unread */
    uint32_t seg;   /* segment index + 1; 0 marks an empty slot */
    uint32_t state; /* ENTRY_* bits, changed atomically under the read lock */
} entry;

struct tc_store {
    pthread_rwlock_t lock;
    pthread_mutex_t fd_lock;
    pthread_mutex_t fault_lock;
    pid_t pid;
    uint64_t fork_gen; /* fork_generation when pid was last checked */
    int closed;
    char *dir; /* NULL: arena */
    char host[65];
    tc_store_options opt;
    segment *segs;
    size_t nsegs, cap_segs;
    uint32_t *names;    /* hash set of segment names: segment index + 1, 0 empty */
    size_t nnames;      /* slots (a power of two) */
    long own; /* segment this store appends to, -1 before the first put */
    entry *slots;
    size_t nslots, nused; /* nused counts dead entries too: they keep probe chains */
    /* descriptor cache (fd_lock): reader segments with fd >= 0 */
    size_t *open_segs;
    size_t nopen, cap_open, fd_cap;
    uint64_t fd_clock;
    /* refresh state (write lock) */
    size_t idle_cursor;
    int64_t dir_mtime_ns;
    int dir_fd; /* the directory as last listed, for fstat at a refresh; -1: stat by path */
    uint64_t last_readdir_ns;
    int readdir_trusted;
    int reindex; /* a segment went away: drop its entries, scan the others again */
    int stop_writing;
    char io_error[512];
    int full;
    uint64_t bytes_written, records_written, records, corrupt, bytes_indexed, refreshes;
    uint64_t readdirs, idle_rechecks, skipped, gone;
    uint64_t faults[TC_FAULT_KINDS];   /* atomic */
    uint64_t reported[TC_FAULT_KINDS]; /* written under fault_lock, read atomically */
    char fault_msg[TC_FAULT_KINDS][200]; /* fault_lock */
    uint8_t *scan_buf; /* SCAN_WINDOW_BYTES, for scans under the write lock */
    uint64_t prefetched; /* bytes of indexed segments handed to readahead (index_adopt) */
    uint64_t last_refresh_ns;
    struct tc_store *fork_prev, *fork_next; /* the list of open stores, for fork */
    int in_fork_list;
};

static void set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
    if (err_len == 0) /* err may be NULL only with err_len 0 */
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t mtime_of(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}

static uint64_t round_up(uint64_t n, uint64_t a)
{
    return (n + a - 1) / a * a;
}

size_t tc_store_itemsize(uint64_t dtype_word)
{
    uint64_t bits = (dtype_word >> 8) & 0xff;
    uint64_t lanes = (dtype_word >> 16) & 0xffff;
    if ((dtype_word >> 32) != 0 || bits * lanes == 0 || bits * lanes % 8 != 0)
        return 0;
    return (size_t)(bits * lanes / 8);
}

/* ---- faults ------------------------------------------------------------------ */

static const char *const fault_names[TC_FAULT_KINDS] = {
    [TC_FAULT_IO] = "io",
    [TC_FAULT_SHORT] = "short_read",
    [TC_FAULT_OPEN] = "open",
    [TC_FAULT_DIRECTORY] = "directory",
    [TC_FAULT_NOMEM] = "nomem",
    [TC_FAULT_CHANGED] = "changed",
    [TC_FAULT_MISMATCH] = "mismatch",
    [TC_FAULT_ZSTD] = "zstd",
    [TC_FAULT_WRITE] = "write",
    [TC_FAULT_INSECURE] = "insecure",
    [TC_FAULT_FOREIGN] = "foreign_owner",
};

const char *tc_store_fault_name(int kind)
{
    return kind >= 0 && kind < TC_FAULT_KINDS ? fault_names[kind] : "unknown";
}

static void fault(tc_store *s, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Counts one fault and keeps its message.  Any lock may be held but fault_lock. */
static void fault(tc_store *s, int kind, const char *fmt, ...)
{
    assert(kind >= 0 && kind < TC_FAULT_KINDS);
    __atomic_fetch_add(&s->faults[kind], 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&s->fault_lock);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->fault_msg[kind], sizeof(s->fault_msg[kind]), fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&s->fault_lock);
}

/* ---- bytes on disk: little-endian, whatever the host (docs/format.md, section 3) */


/* The one pair that turns a header into its 128 bytes and back. */
static void header_encode(const rec_header *h, uint8_t b[REC_HEADER_BYTES])
{
    tc_put_le32(b, h->magic);
    b[4] = (uint8_t)h->version;
    b[5] = (uint8_t)(h->version >> 8);
    b[6] = h->ndim;
    b[7] = h->flags;
    tc_put_le64(b + 8, h->key0);
    tc_put_le64(b + 16, h->key1);
    tc_put_le64(b + 24, h->dtype_word);
    tc_put_le64(b + 32, h->raw_len);
    tc_put_le64(b + 40, h->stored_len);
    tc_put_le64(b + 48, h->payload_sum);
    tc_put_le64(b + 56, h->header_sum);
    for (int d = 0; d < TC_STORE_MAX_NDIM; d++)
        tc_put_le64(b + 64 + 8 * d, (uint64_t)h->shape[d]);
}

static void header_decode(const uint8_t b[REC_HEADER_BYTES], rec_header *h)
{
    h->magic = tc_get_le32(b);
    h->version = (uint16_t)(b[4] | b[5] << 8);
    h->ndim = b[6];
    h->flags = b[7];
    h->key0 = tc_get_le64(b + 8);
    h->key1 = tc_get_le64(b + 16);
    h->dtype_word = tc_get_le64(b + 24);
    h->raw_len = tc_get_le64(b + 32);
    h->stored_len = tc_get_le64(b + 40);
    h->payload_sum = tc_get_le64(b + 48);
    h->header_sum = tc_get_le64(b + 56);
    for (int d = 0; d < TC_STORE_MAX_NDIM; d++)
        h->shape[d] = (int64_t)tc_get_le64(b + 64 + 8 * d);
}

/* ---- checksums (docs/format.md, section 4) ---------------------------------- */

/* Version 2 binds a record to where it lies: the checksum starts from the
 * segment's id (segment_id) and the record's offset, so a record copied into
 * another file or found at another offset (inside another record's payload,
 * say) never checks (docs/format.md, section 4). */
static uint64_t header_checksum(const rec_header *h, uint64_t segment_id, uint64_t offset)
{
    uint8_t b[REC_HEADER_BYTES];
    header_encode(h, b);
    uint64_t a = h->version == REC_VERSION_V1 ? HEADER_SEED
                                              : tc_fmix64(HEADER_SEED_V2 ^ segment_id) ^ offset;
    for (size_t i = 0; i < REC_HEADER_BYTES / 8; i++)
        a = tc_fmix64(a ^ (i == 7 ? 0 : tc_get_le64(b + 8 * i))) + GAMMA;
    return a;
}

/* The block-sum checksum of docs/format.md section 4, fed in pieces that are
 * whole 16 KiB blocks (the last piece may end with a shorter block).  The seed
 * tells its uses apart: PAYLOAD_SEED for a record's payload, another for an
 * index file's entries (store_index.c). */
uint64_t tc_store_sum_begin(uint64_t seed, uint64_t n)
{
    return tc_fmix64(seed ^ n);
}

uint64_t tc_store_sum_feed(uint64_t s, const uint8_t *p, uint64_t n)
{
    for (uint64_t off = 0; off < n; off += TC_HASH_BLOCK_BYTES) {
        uint64_t len = n - off < TC_HASH_BLOCK_BYTES ? n - off : TC_HASH_BLOCK_BYTES;
        uint64_t h[2];
        tc_hash_block(p + off, (size_t)len, h);
        s = tc_fmix64(s ^ h[0]) + h[1];
    }
    return s;
}

static uint64_t payload_sum_begin(uint64_t n)
{
    return tc_store_sum_begin(PAYLOAD_SEED, n);
}

static uint64_t payload_checksum(const uint8_t *p, uint64_t n)
{
    return tc_store_sum_feed(payload_sum_begin(n), p, n);
}

_Static_assert(VERIFY_CHUNK_BYTES % TC_HASH_BLOCK_BYTES == 0, "chunks are whole blocks");

/* ---- record validation (docs/format.md, section 6) -------------------------- */

enum { HDR_OK, HDR_SHORT, HDR_BAD };

/* Checks the header h of the record at `offset` of the segment `segment_id`,
 * with `avail` bytes of file from its start on.  On HDR_OK *total is the
 * record's length including padding; HDR_SHORT means the header is valid but
 * its payload is not all in the file yet.  On HDR_BAD, *why (when why is not
 * NULL) names the first check that failed. */
static int header_validate(const rec_header *h, uint64_t segment_id, uint64_t offset,
                           uint64_t avail, uint64_t *total, const char **why)
{
    const char *bad = NULL;
    if (h->magic != REC_MAGIC || (h->version != REC_VERSION && h->version != REC_VERSION_V1)) {
        bad = "bad magic or version";
        goto out;
    }
    if (header_checksum(h, segment_id, offset) != h->header_sum) {
        bad = "header checksum mismatch";
        goto out;
    }
    if (h->ndim > TC_STORE_MAX_NDIM || (h->flags & ~REC_FLAG_ZSTD) != 0) {
        bad = "ndim above 8 or unknown flag bits";
        goto out;
    }
    size_t itemsize = tc_store_itemsize(h->dtype_word);
    if (itemsize == 0) {
        bad = "dtype is not a whole number of bytes per element";
        goto out;
    }
    uint64_t n = itemsize;
    for (int d = 0; d < h->ndim; d++) {
        if (h->shape[d] < 0 || __builtin_mul_overflow(n, (uint64_t)h->shape[d], &n)) {
            bad = "negative or overflowing shape";
            goto out;
        }
    }
    for (int d = h->ndim; d < TC_STORE_MAX_NDIM; d++) {
        if (h->shape[d] != 0) {
            bad = "shape entries past ndim are not zero";
            goto out;
        }
    }
    if (n != h->raw_len) {
        bad = "raw_len differs from shape x element size";
        goto out;
    }
    if ((h->flags & REC_FLAG_ZSTD) ? h->stored_len >= h->raw_len : h->stored_len != h->raw_len) {
        bad = "stored_len inconsistent with raw_len and flags";
        goto out;
    }
    if (h->stored_len > UINT64_MAX / 2) {
        bad = "stored_len too large";
        goto out;
    }
    uint64_t t = REC_HEADER_BYTES + round_up(h->stored_len, REC_ALIGN);
    if (t > avail)
        return HDR_SHORT;
    *total = t;
    return HDR_OK;
out:
    if (why)
        *why = bad;
    return HDR_BAD;
}

static int header_check(const rec_header *h, uint64_t segment_id, uint64_t offset,
                        uint64_t avail, uint64_t *total)
{
    return header_validate(h, segment_id, offset, avail, total, NULL);
}

/* ---- the index: open addressing, linear probing ----------------------------- */

/* A key's slot is the high bits of its hash, so slots follow the hash's order
 * at every table size: a persisted index written in that order loads with
 * inserts that walk the table front to back (store_index.c), and a grow
 * rehashes front to back too. */
static size_t slot_of(const tc_store *s, uint64_t k0, uint64_t k1)
{
    return (size_t)(tc_index_key_order(k0, k1) >> (64 - __builtin_ctzll((uint64_t)s->nslots)));
}

static entry *index_find(const tc_store *s, uint64_t k0, uint64_t k1)
{
    if (s->nslots == 0)
        return NULL;
    for (size_t i = slot_of(s, k0, k1);; i = (i + 1) & (s->nslots - 1)) {
        entry *e = &s->slots[i];
        if (e->seg == 0)
            return NULL;
        if (e->key0 == k0 && e->key1 == k1)
            return e;
    }
}

static int entry_live(const entry *e)
{
    return e != NULL && !(__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) & ENTRY_DEAD);
}

/* Tables of 2 MiB or more are mapped with huge pages where the kernel allows
 * them: a table of a million keys (84 MB) otherwise costs 20,000 page faults,
 * a quarter of the time an open with a persisted index takes. */
#define SLOTS_MAP_BYTES (2u << 20)

static entry *slots_alloc(size_t n)
{
    size_t bytes = n * sizeof(entry);
    if (bytes < SLOTS_MAP_BYTES)
        return calloc(n, sizeof(entry));
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

static void slots_free(entry *p, size_t n)
{
    if (p != NULL && n * sizeof(entry) >= SLOTS_MAP_BYTES)
        munmap(p, n * sizeof(entry));
    else
        free(p);
}

/* Re-makes the table with n slots (a power of two above the entries). */
static int index_resize(tc_store *s, size_t n)
{
    entry *slots = slots_alloc(n);
    if (slots == NULL)
        return -1;
    entry *old = s->slots;
    size_t old_n = s->nslots;
    s->slots = slots;
    s->nslots = n;
    s->nused = 0;
    for (size_t i = 0; i < old_n; i++) {
        entry *e = &old[i];
        if (e->seg == 0 || (e->state & ENTRY_DEAD))
            continue;
        size_t j = slot_of(s, e->key0, e->key1);
        while (slots[j].seg != 0)
            j = (j + 1) & (n - 1);
        slots[j] = *e;
        s->nused++;
    }
    slots_free(old, old_n);
    return 0;
}

static int index_grow(tc_store *s)
{
    return index_resize(s, s->nslots ? s->nslots * 2 : 1024);
}

/* Room for `more` entries without a grow (one resize instead of a doubling
 * per power of two when a persisted index brings many at once). */
static int index_reserve(tc_store *s, size_t more)
{
    size_t n = s->nslots ? s->nslots : 1024;
    while ((s->nused + more + 1) * 10 > n * 7)
        n *= 2;
    return n == s->nslots ? 0 : index_resize(s, n);
}

/* Adds key -> (seg, offset) unless a live entry has the key (first valid wins,
 * docs/format.md section 7).  Returns 1 if added, 0 if present, -1 without memory. */
static int index_insert(tc_store *s, uint64_t k0, uint64_t k1, size_t seg, uint64_t offset,
                        uint64_t raw_len, uint32_t state)
{
    entry *e = index_find(s, k0, k1);
    if (e != NULL && !(e->state & ENTRY_DEAD))
        return 0;
    if (e == NULL) {
        if ((s->nused + 1) * 10 > s->nslots * 7) {
            if (index_grow(s) < 0)
                return -1;
        }
        size_t i = slot_of(s, k0, k1);
        while (s->slots[i].seg != 0)
            i = (i + 1) & (s->nslots - 1);
        e = &s->slots[i];
        s->nused++;
    }
    e->key0 = k0;
    e->key1 = k1;
    e->offset = offset;
    e->raw_len = raw_len;
    e->seg = (uint32_t)(seg + 1);
    e->state = state;
    s->records++;
    s->bytes_indexed += raw_len;
    return 1;
}

/* Called with only the read lock held, so the counters move atomically. */
static void entry_kill(tc_store *s, entry *e, int corrupt)
{
    uint32_t was = __atomic_fetch_or(&e->state, ENTRY_DEAD, __ATOMIC_ACQ_REL);
    if (was & ENTRY_DEAD)
        return;
    __atomic_fetch_sub(&s->records, 1, __ATOMIC_RELAXED);
    __atomic_fetch_sub(&s->bytes_indexed, e->raw_len, __ATOMIC_RELAXED);
    if (corrupt)
        __atomic_fetch_add(&s->corrupt, 1, __ATOMIC_RELAXED);
}

/* ---- segment descriptors ----------------------------------------------------- */

/* Moves a descriptor to 3 or above: a process whose stdin, stdout or stderr is
 * closed would otherwise get a segment as fd 0-2, and stray writes to stderr
 * would land in the cache (SQLite learnt this the hard way). */
static int fd_above_stdio(int fd)
{
    if (fd < 0 || fd > 2)
        return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int saved = errno;
    close(fd);
    errno = saved;
    return moved;
}

/* Opens a segment for reading without blocking on a FIFO or a device, and
 * only if it is a regular file.  Returns the fd, or -1 with errno (ENODEV for
 * a non-regular file). */
static int open_segment_file(const char *path, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -1;
    if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
        int saved = S_ISREG(st->st_mode) ? errno : ENODEV;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd_above_stdio(fd);
}

/* Marks a segment removed or replaced: its records read as misses from now on. */
static void segment_gone(tc_store *s, segment *g)
{
    if (!__atomic_exchange_n(&g->gone, 1, __ATOMIC_ACQ_REL)) {
        __atomic_fetch_add(&s->gone, 1, __ATOMIC_RELAXED);
        /* A merged segment (compact) may hold its records now: list the
         * directory, and index again the keys whose entries pointed here. */
        __atomic_store_n(&s->readdir_trusted, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->reindex, 1, __ATOMIC_RELEASE);
    }
}

static void fd_close_locked(tc_store *s, size_t k)
{
    segment *g = &s->segs[s->open_segs[k]];
    close(g->fd);
    g->fd = -1;
    s->open_segs[k] = s->open_segs[--s->nopen];
}

/* Closes least recently used unpinned descriptors until at most `keep` are open
 * (pinned ones may keep the cache over its cap until they are released). */
static void fd_trim_locked(tc_store *s, size_t keep)
{
    while (s->nopen > keep) {
        size_t victim = SIZE_MAX;
        for (size_t k = 0; k < s->nopen; k++) {
            const segment *o = &s->segs[s->open_segs[k]];
            if (o->pins == 0 &&
                (victim == SIZE_MAX || o->last_use < s->segs[s->open_segs[victim]].last_use))
                victim = k;
        }
        if (victim == SIZE_MAX)
            return;
        fd_close_locked(s, victim);
    }
}

/* A descriptor of segment si for reading, pinned until seg_release.  Reader
 * segments keep no fd between calls beyond a small cache (fd_cap, from
 * RLIMIT_NOFILE), so thousands of segments cost no descriptors; a reopen checks
 * the inode, so a file replaced under its name is never read as the old one.
 * Returns the fd, or -1 after counting the fault (or marking the segment gone). */
static int seg_acquire(tc_store *s, size_t si)
{
    segment *g = &s->segs[si];
    assert(g->path != NULL && !g->ignored);
    if ((long)si == s->own)
        return g->fd;
    pthread_mutex_lock(&s->fd_lock);
    if (__atomic_load_n(&g->gone, __ATOMIC_ACQUIRE)) {
        pthread_mutex_unlock(&s->fd_lock);
        return -1;
    }
    if (g->fd < 0) {
        if (s->nopen == s->cap_open) {
            size_t cap = s->cap_open ? 2 * s->cap_open : 8;
            size_t *p = realloc(s->open_segs, cap * sizeof(*p));
            if (p == NULL) {
                pthread_mutex_unlock(&s->fd_lock);
                fault(s, TC_FAULT_NOMEM, "out of memory opening segment %s", g->name);
                return -1;
            }
            s->open_segs = p;
            s->cap_open = cap;
        }
        struct stat st;
        int fd = open_segment_file(g->path, &st);
        if (fd < 0 || st.st_dev != g->dev || st.st_ino != g->ino) {
            int e = errno;
            if (fd >= 0 || e == ENOENT || e == ENODEV || e == ELOOP) {
                if (fd >= 0)
                    close(fd);
                segment_gone(s, g);
            } else {
                fault(s, TC_FAULT_OPEN, "cannot open segment %s: %s", g->path, strerror(e));
            }
            pthread_mutex_unlock(&s->fd_lock);
            return -1;
        }
        /* Only now, with a descriptor in hand, evict the least recently used
         * unpinned one at the cap: a failed open costs no working descriptor. */
        fd_trim_locked(s, s->fd_cap ? s->fd_cap - 1 : 0);
        g->fd = fd;
        s->open_segs[s->nopen++] = si;
    }
    g->pins++;
    g->last_use = ++s->fd_clock;
    int fd = g->fd;
    pthread_mutex_unlock(&s->fd_lock);
    return fd;
}

static void seg_release(tc_store *s, size_t si)
{
    if ((long)si == s->own)
        return;
    pthread_mutex_lock(&s->fd_lock);
    segment *g = &s->segs[si];
    assert(g->pins > 0);
    g->pins--;
    if (g->pins == 0 && s->nopen > s->fd_cap) {
        for (size_t k = 0; k < s->nopen; k++) {
            if (s->open_segs[k] == si) {
                fd_close_locked(s, k);
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->fd_lock);
}

/* "No fault" where a fault kind is returned (kinds start at 0). */
#define NO_FAULT (-1)

/* Moves *iov / *niov past `done` bytes (a short read or write): whole iovecs
 * are dropped, and the first left starts `done` bytes further in. */
static void iov_advance(struct iovec **iov, int *niov, size_t done)
{
    while (*niov > 0 && done >= (*iov)->iov_len) {
        done -= (*iov)->iov_len;
        (*iov)++;
        (*niov)--;
    }
    if (*niov > 0) {
        (*iov)->iov_base = (uint8_t *)(*iov)->iov_base + done;
        (*iov)->iov_len -= done;
    }
}

/* Reads exactly the iovecs at off.  NO_FAULT on success, else the fault kind
 * (SHORT: the file ends first, IO: a read error) with *errnum set for IO. */
static int read_fully(int fd, struct iovec *iov, int niov, uint64_t off, int *errnum)
{
    while (niov > 0) {
        ssize_t r = preadv(fd, iov, niov, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *errnum = errno;
            return TC_FAULT_IO;
        }
        if (r == 0)
            return TC_FAULT_SHORT;
        off += (uint64_t)r;
        iov_advance(&iov, &niov, (size_t)r);
    }
    return NO_FAULT;
}

/* Reads [off, off + sum of iov) of segment si (file or arena chunk).  Returns 0,
 * or -1 after counting the fault (a segment found gone is not a fault). */
static int seg_read(tc_store *s, size_t si, uint64_t off, struct iovec *iov, int niov)
{
    segment *g = &s->segs[si];
    if (g->path == NULL) {
        /* An arena record is indexed once all its bytes are in its chunk, and a
         * chunk never shrinks: reads of indexed records are in bounds. */
        for (int i = 0; i < niov; i++) {
            memcpy(iov[i].iov_base, g->base + off, iov[i].iov_len);
            off += iov[i].iov_len;
        }
        return 0;
    }
    int fd = seg_acquire(s, si);
    if (fd < 0)
        return -1;
    int errnum = 0;
    int kind = read_fully(fd, iov, niov, off, &errnum);
    seg_release(s, si);
    if (kind == TC_FAULT_IO)
        fault(s, kind, "reading segment %s: %s", g->path, strerror(errnum));
    else if (kind == TC_FAULT_SHORT)
        fault(s, kind, "segment %s ends before a record it held (truncated while in use)",
              g->path);
    return kind == NO_FAULT ? 0 : -1;
}

static int read_header(tc_store *s, size_t si, uint64_t off, rec_header *h)
{
    uint8_t b[REC_HEADER_BYTES];
    struct iovec iov = {b, sizeof(b)};
    if (seg_read(s, si, off, &iov, 1) < 0)
        return -1;
    header_decode(b, h);
    return 0;
}

/* Checks the payload of the record h at off against payload_sum, reading it in
 * chunks.  A payload with a hole in it never came from a write (pwritev writes
 * every byte), so a sparse file claiming a huge record is refused before its
 * terabyte of zeros is hashed.  Returns 1 (verifies), 0 (does not), -1 (fault). */
static int payload_verify(tc_store *s, size_t si, uint64_t off, const rec_header *h)
{
    segment *g = &s->segs[si];
    uint64_t start = off + REC_HEADER_BYTES, n = h->stored_len;
    if (g->path == NULL)
        return payload_checksum(g->base + start, n) == h->payload_sum; /* in bounds: seg_read */
    if (n == 0)
        return payload_checksum(NULL, 0) == h->payload_sum;
    int fd = seg_acquire(s, si);
    if (fd < 0)
        return -1;
    int rc = 1;
    if (n > VERIFY_CHUNK_BYTES) {
        off_t hole = lseek(fd, (off_t)start, SEEK_HOLE);
        if (hole >= 0 && (uint64_t)hole < start + n) {
            seg_release(s, si);
            return 0;
        }
    }
    size_t chunk = n < VERIFY_CHUNK_BYTES ? (size_t)n : VERIFY_CHUNK_BYTES;
    uint8_t *buf = malloc(chunk);
    if (buf == NULL) {
        seg_release(s, si);
        fault(s, TC_FAULT_NOMEM, "out of memory verifying a record of %s", g->name);
        return -1;
    }
    uint64_t sum = payload_sum_begin(n);
    for (uint64_t done = 0; done < n;) {
        size_t len = n - done < chunk ? (size_t)(n - done) : chunk;
        struct iovec iov = {buf, len};
        int errnum = 0;
        int kind = read_fully(fd, &iov, 1, start + done, &errnum);
        if (kind != NO_FAULT) {
            if (kind == TC_FAULT_IO)
                fault(s, kind, "reading segment %s: %s", g->path, strerror(errnum));
            else
                fault(s, kind, "segment %s ends before a record it held (truncated while in "
                      "use)", g->path);
            rc = -1;
            break;
        }
        sum = tc_store_sum_feed(sum, buf, len);
        done += len;
    }
    free(buf);
    seg_release(s, si);
    if (rc < 0)
        return -1;
    return sum == h->payload_sum;
}

/* The header of a live entry, read again and checked at every use: in full
 * before its payload has verified, afterwards the fields that bound reads and
 * name the record (docs/format.md, section 6).  Returns 1 with *h filled, 0 if
 * the entry is dead or was killed (changed, gone), -1 on a fault. */
static int entry_header(tc_store *s, entry *e, rec_header *h)
{
    size_t si = e->seg - 1;
    const segment *g = &s->segs[si];
    if (__atomic_load_n(&g->gone, __ATOMIC_ACQUIRE)) {
        entry_kill(s, e, 0);
        return 0;
    }
    if (read_header(s, si, e->offset, h) < 0) {
        if (__atomic_load_n(&g->gone, __ATOMIC_ACQUIRE))
            entry_kill(s, e, 0);
        return -1;
    }
    uint64_t total;
    if (h->key0 != e->key0 || h->key1 != e->key1 || h->raw_len != e->raw_len ||
        header_check(h, g->id, e->offset, UINT64_MAX / 2, &total) != HDR_OK) {
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) & ENTRY_VERIFIED)
            fault(s, TC_FAULT_CHANGED,
                  "a record in %s changed on disk after it was verified and is dropped; do "
                  "not edit segments in use", g->name); /* an arena's bytes never change */
        entry_kill(s, e, 1);
        return 0;
    }
    return 1;
}

/* A live entry (indexed, its segment not gone), verified or not, or NULL. */
static entry *probe_live(tc_store *s, uint64_t k0, uint64_t k1)
{
    entry *e = index_find(s, k0, k1);
    if (!entry_live(e))
        return NULL;
    if (__atomic_load_n(&s->segs[e->seg - 1].gone, __ATOMIC_ACQUIRE)) {
        entry_kill(s, e, 0);
        return NULL;
    }
    return e;
}

/* A live entry whose record verifies, or NULL (a miss).  The payload checksum is
 * checked at the first use of a record, not at scan (docs/format.md, section 6);
 * later lookups trust the index and gathers re-check the header they read. */
static entry *probe(tc_store *s, uint64_t k0, uint64_t k1)
{
    entry *e = probe_live(s, k0, k1);
    if (e == NULL || (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) & ENTRY_VERIFIED))
        return e;
    rec_header h;
    if (entry_header(s, e, &h) <= 0)
        return NULL;
    int ok = payload_verify(s, e->seg - 1, e->offset, &h);
    if (ok < 0)
        return NULL;
    if (!ok) {
        entry_kill(s, e, 1);
        return NULL;
    }
    __atomic_fetch_or(&e->state, ENTRY_VERIFIED, __ATOMIC_ACQ_REL);
    return e;
}

/* ---- segments ---------------------------------------------------------------- */

static uint64_t name_hash(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a, then mixed */
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        h = (h ^ *c) * 0x100000001b3ULL;
    return tc_fmix64(h);
}

/* The id a version 2 record is bound to: FNV-1a of the segment's file name,
 * mixed (docs/format.md, section 4).  Segments are never renamed. */
static uint64_t segment_id(const char *name)
{
    return name_hash(name);
}

/* The segment named `name`, or -1.  Names live in a hash set so that listing a
 * directory of N segments costs O(N), not O(N^2). */
static long name_find(const tc_store *s, const char *name)
{
    if (s->nnames == 0)
        return -1;
    for (size_t i = name_hash(name) & (s->nnames - 1);; i = (i + 1) & (s->nnames - 1)) {
        uint32_t v = s->names[i];
        if (v == 0)
            return -1;
        if (strcmp(s->segs[v - 1].name, name) == 0)
            return (long)v - 1;
    }
}

static void name_put(uint32_t *names, size_t n, const char *name, size_t si)
{
    size_t i = name_hash(name) & (n - 1);
    while (names[i] != 0)
        i = (i + 1) & (n - 1);
    names[i] = (uint32_t)(si + 1);
}

/* Adds a segment (path NULL: an arena chunk); the caller fills it in.  Takes
 * ownership of path.  Returns its index or -1 without memory. */
static long segment_add(tc_store *s, char *path, int fd)
{
    if (s->nsegs == s->cap_segs) {
        size_t cap = s->cap_segs ? s->cap_segs * 2 : 16;
        segment *segs = realloc(s->segs, cap * sizeof(segment));
        if (segs == NULL)
            return -1;
        s->segs = segs;
        s->cap_segs = cap;
    }
    if (path != NULL && (s->nsegs + 1) * 2 > s->nnames) {
        size_t n = s->nnames ? 2 * s->nnames : 64;
        uint32_t *names = calloc(n, sizeof(*names));
        if (names == NULL)
            return -1;
        for (size_t i = 0; i < s->nsegs; i++) {
            if (s->segs[i].path != NULL)
                name_put(names, n, s->segs[i].name, i);
        }
        free(s->names);
        s->names = names;
        s->nnames = n;
    }
    size_t si = s->nsegs++;
    segment *g = &s->segs[si];
    memset(g, 0, sizeof(*g));
    g->path = path;
    g->fd = fd;
    if (path != NULL) {
        const char *slash = strrchr(path, '/');
        g->name = slash + 1; /* path_join made it: dir/name */
        g->id = segment_id(g->name);
        name_put(s->names, s->nnames, g->name, si);
    }
    return (long)si;
}

static int is_segment_name(const char *name)
{
    size_t n = strlen(name);
    return n > 8 && strncmp(name, "seg-", 4) == 0 && strcmp(name + n - 4, ".tcs") == 0;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* This host's name as segment names spell it (docs/format.md, section 1). */
static void host_name(char host[65])
{
    static const char keep[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._";
    char buf[65] = "";
    gethostname(buf, sizeof(buf) - 1); /* fails only for a name this long: cut */
    buf[sizeof(buf) - 1] = '\0';
    for (size_t i = strspn(buf, keep); buf[i] != '\0'; i += 1 + strspn(buf + i + 1, keep))
        buf[i] = '_';
    snprintf(host, 65, "%s", buf[0] != '\0' ? buf : "host");
}

int tc_store_writer_may_append(const char *name, int64_t mtime_ns, int64_t now_wall_ns,
                               int64_t idle_ns, const char *host)
{
    /* seg-<host>-<pid>-<rand>.tcs; <host> has no '-' (section 1) */
    if (strncmp(name, "seg-", 4) != 0)
        return 1;
    const char *h = name + 4, *dash = strchr(h, '-');
    if (dash == NULL)
        return 1;
    char *end;
    errno = 0;
    long pid = strtol(dash + 1, &end, 10);
    int named_pid = errno == 0 && end != dash + 1 && *end == '-' && pid > 0 && pid <= INT_MAX;
    size_t hl = (size_t)(dash - h);
    if (named_pid && host != NULL && strlen(host) == hl && strncmp(h, host, hl) == 0) {
        /* This host: the pid tells.  A reused pid only makes us careful. */
        return kill((pid_t)pid, 0) == 0 || errno == EPERM;
    }
    /* Another host (or a name we did not make): live while it recently changed. */
    return now_wall_ns - mtime_ns < idle_ns;
}

/* ---- scan -------------------------------------------------------------------- */

/* A window of a file segment's bytes read by one pread, for the scan. */
typedef struct {
    uint8_t *buf;
    size_t cap;
    uint64_t start;
    size_t len;
    int fd;
    uint64_t bytes_read;
} window;

/* The bytes [off, off + need) of segment g, or NULL if a read found fewer
 * (the file shrank) or failed (*fault_kind is then set).  Reads `want` bytes
 * from off when the window does not hold them.  Callers pass
 * off + need <= g->file_len and need <= want <= w->cap (a header, a window). */
static const uint8_t *win_get(segment *g, window *w, uint64_t off, size_t need, size_t want,
                              int *fault_kind, int *errnum)
{
    if (g->path == NULL)
        return g->base + off;
    if (off >= w->start && off + need <= w->start + w->len)
        return w->buf + (off - w->start);
    if (want > g->file_len - off)
        want = (size_t)(g->file_len - off);
    w->start = off;
    w->len = 0;
    for (;;) {
        ssize_t r = pread(w->fd, w->buf, want, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *fault_kind = TC_FAULT_IO;
            *errnum = errno;
            return NULL;
        }
        w->len = (size_t)r;
        w->bytes_read += (uint64_t)r;
        break;
    }
    if (w->len < need)
        return NULL; /* the file is shorter than it was: a later refresh sees that */
    return w->buf;
}

/* Resynchronisation (docs/format.md, section 6): the first 64-byte aligned
 * offset from o on that holds a header which checks.  Holes are skipped with
 * SEEK_DATA (they read as zeros and hold no header), and once `budget` bytes
 * have been read the search stops with *more set (the scan goes on at its next
 * refresh, so a huge garbage file costs bounded time per call).  Returns 1
 * with *at the header's offset, else 0 with *at where the search stopped. */
static int resync_search(segment *g, window *w, uint64_t o, uint64_t budget, uint64_t *at,
                         int *more, int *fault_kind, int *errnum)
{
    uint64_t budget_end = w->bytes_read + budget;
    *more = 0;
    while (o + REC_HEADER_BYTES <= g->file_len) {
        if (g->path != NULL && !(o >= w->start && o + REC_HEADER_BYTES <= w->start + w->len)) {
            if (w->bytes_read >= budget_end) {
                *more = 1;
                break;
            }
            off_t d = lseek(w->fd, (off_t)o, SEEK_DATA);
            if (d < 0 && errno == ENXIO) {
                o = g->file_len; /* only a hole is left */
                break;
            }
            if (d > (off_t)o) {
                o = round_up((uint64_t)d, REC_ALIGN);
                continue;
            }
        }
        const uint8_t *b = win_get(g, w, o, REC_HEADER_BYTES, w->cap, fault_kind, errnum);
        if (b == NULL)
            break;
        if (tc_get_le32(b) == REC_MAGIC) {
            rec_header h;
            header_decode(b, &h);
            uint64_t total;
            if (header_check(&h, g->id, o, g->file_len - o, &total) != HDR_BAD) {
                *at = o;
                return 1;
            }
        }
        o += REC_ALIGN;
    }
    *at = o;
    return 0;
}

/* Indexes the records of file segment si between scan_end and file_len (an
 * arena's records are indexed as they are put: it is never scanned).  A valid
 * header whose payload is not all there yet stops the scan: the writer may
 * still be writing.  Returns 0, or -1 without memory. */
static int segment_scan(tc_store *s, size_t si, size_t *added)
{
    segment *g = &s->segs[si];
    if (g->scan_end + REC_HEADER_BYTES > g->file_len && !g->resync_more)
        return 0;
    window w = {s->scan_buf, SCAN_WINDOW_BYTES, 0, 0, -1, 0};
    w.fd = seg_acquire(s, si);
    if (w.fd < 0)
        return 0;
    int rc = 0, kind = NO_FAULT, errnum = 0;
    size_t want = SCAN_WINDOW_BYTES;
    for (;;) {
        if (g->scan_end + REC_HEADER_BYTES > g->file_len)
            break;
        const uint8_t *b = win_get(g, &w, g->scan_end, REC_HEADER_BYTES, want, &kind, &errnum);
        if (b == NULL)
            break;
        rec_header h;
        header_decode(b, &h);
        uint64_t total = 0;
        int hc = header_check(&h, g->id, g->scan_end, g->file_len - g->scan_end, &total);
        if (hc == HDR_SHORT)
            break;
        if (hc == HDR_BAD) {
            /* a search cut short by its budget goes on from where it stopped */
            uint64_t from = g->resync_from > g->scan_end ? g->resync_from
                                                         : g->scan_end + REC_ALIGN, next;
            if (!resync_search(g, &w, from, RESYNC_BUDGET_BYTES, &next, &g->resync_more,
                               &kind, &errnum)) {
                g->resync_from = next;
                break; /* maybe a write in progress; look again next time */
            }
            s->corrupt++;
            g->scan_end = next;
            g->resync_from = 0;
            continue;
        }
        /* A record whose bytes the window holds already is verified now, at
         * memory speed, so its first use reads it once like any later one
         * (docs/format.md, section 6).  Tiny payloads (where the checksum's
         * fixed cost would dominate a scan of millions) and records larger
         * than the window verify at first use. */
        uint32_t state = 0;
        if (h.version == REC_VERSION_V1)
            g->has_v1 = 1;
        int whole = g->scan_end + total <= w.start + w.len;
        if (whole && h.stored_len >= SCAN_VERIFY_MIN &&
            !entry_live(index_find(s, h.key0, h.key1))) {
            if (payload_checksum(b + REC_HEADER_BYTES, h.stored_len) != h.payload_sum) {
                /* dropped as at first use: counted, never served */
                s->corrupt++;
                g->scan_end += total;
                continue;
            }
            state = ENTRY_VERIFIED;
        }
        int ins = index_insert(s, h.key0, h.key1, si, g->scan_end, h.raw_len, state);
        if (ins < 0) {
            rc = -1;
            break;
        }
        *added += (size_t)ins;
        g->scan_end += total;
        want = total > SCAN_WINDOW_BYTES / 2 ? SCAN_SMALL_READ : SCAN_WINDOW_BYTES;
    }
    seg_release(s, si);
    if (kind != NO_FAULT)
        fault(s, kind, "reading segment %s: %s", g->path, strerror(errnum));
    return rc;
}

/* A segment that shrank was truncated behind our back (docs/format.md, section
 * 8): drop its records past the new end before anything reads them. */
static void segment_shrunk(tc_store *s, size_t si, uint64_t len)
{
    for (size_t i = 0; i < s->nslots; i++) {
        entry *e = &s->slots[i];
        if (e->seg == si + 1 && !(e->state & ENTRY_DEAD) &&
            e->offset + REC_HEADER_BYTES + e->raw_len > len)
            entry_kill(s, e, 1);
    }
    segment *g = &s->segs[si];
    g->file_len = len;
    if (g->scan_end > len)
        g->scan_end = len;
    g->resync_from = 0;
}

/* Looks at one known segment again: growth, shrinkage, a pending tail whose
 * bytes may have arrived since (NFS shows a length before its bytes), or a
 * replacement under the same name (gone). */
static int segment_recheck(tc_store *s, size_t si, int64_t now_wall, size_t *added)
{
    segment *g = &s->segs[si];
    struct stat st;
    errno = 0; /* a file replaced under its name leaves errno as it was */
    if (fstatat(AT_FDCWD, g->path, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != g->dev ||
        st.st_ino != g->ino) {
        if (errno == ENOENT || errno == ENOTDIR || errno == 0) {
            segment_gone(s, g);
            return 0;
        }
        /* EACCES, ESTALE, EIO...: try again next time */
        fault(s, TC_FAULT_IO, "cannot stat segment %s: %s", g->path, strerror(errno));
        return 0;
    }
    int64_t mt = mtime_of(&st);
    uint64_t len = (uint64_t)st.st_size;
    int changed = mt != g->mtime_ns;
    g->mtime_ns = mt;
    g->live_writer = tc_store_writer_may_append(g->name, mt, now_wall, REMOTE_IDLE_NS, s->host);
    if (len < g->file_len) {
        segment_shrunk(s, si, len);
        return 0;
    }
    if (len == g->file_len && !(g->scan_end < len && (changed || g->resync_more)))
        return 0;
    if (len == g->file_len && changed)
        g->resync_from = 0; /* bytes under a pending tail may have changed */
    g->file_len = len;
    return segment_scan(s, si, added);
}

/* ---- the persisted index (store_index.c, docs/format.md section 9) ----------- */

/* Indexes segment si from its index file, if one checks: its entries go in
 * unverified (each record is checked in full at its first use, so an entry
 * pointing at wrong bytes is a miss) and the scan goes on from the prefix the
 * file covers.  Without one, or on any doubt, nothing changes: the scan reads
 * the segment from scan_end as before. */
static void index_adopt(tc_store *s, size_t si, size_t *added)
{
    segment *g = &s->segs[si];
    if (g->scan_end != 0)
        return;
    tc_index_segment seg = {g->id, (uint64_t)g->ino, g->file_len};
    tc_index_entry *ents = NULL;
    tc_index_head head;
    long n = tc_index_read(s->dir, g->name, &seg, s->opt.allow_other_owners, &ents, &head,
                           NULL);
    if (n < 0)
        return;
    if (index_reserve(s, (size_t)n) < 0) {
        tc_index_free(ents, (size_t)n);
        return; /* scanned instead */
    }
    for (long i = 0; i < n; i++) {
        int ins = index_insert(s, ents[i].key0, ents[i].key1, si, ents[i].offset,
                               ents[i].raw_len, 0);
        *added += ins > 0 ? (size_t)ins : 0;
    }
    tc_index_free(ents, (size_t)n);
    g->scan_end = head.covered;
    s->corrupt += head.corrupt;
    /* The scan would have read these bytes; ask for them in the background
     * instead, so that first uses read from the page cache, not from the disk
     * one record at a time (bounded: a huge cache must not flush the page
     * cache at every open). */
    if (g->fd >= 0 && s->prefetched < PREFETCH_BYTES) {
        uint64_t len = PREFETCH_BYTES - s->prefetched;
        len = head.covered < len ? head.covered : len;
        posix_fadvise(g->fd, 0, (off_t)len, POSIX_FADV_WILLNEED);
        s->prefetched += len;
    }
}

/* A segment gets an index file when it has many records and they are small
 * on average: the scan then spends its time on headers and keys, which the
 * file saves.  Records of SCAN_VERIFY_MIN bytes or more have their payloads
 * verified by the scan at memory speed while it reads them; with an index,
 * each would be read again at its first use, so a first batch of 3 KB
 * records costs about 2x more and the open saves less than it costs. */
static int index_worth(size_t count, uint64_t raw_bytes)
{
    return count >= TC_INDEX_MIN_RECORDS && raw_bytes < (uint64_t)count * SCAN_VERIFY_MIN;
}

/* Writes the index files of the segments marked index_save (this store's own
 * segment at close; segments of finished writers that an open scanned in
 * full): the live entries of each that lie in its scanned prefix, found in one
 * pass over the table.  Keys whose first copy lies in another segment are not
 * listed (the scan would not index them there either).  Best effort: a
 * directory we may not write, or no memory, leaves the segment to be scanned. */
static void index_save_marked(tc_store *s)
{
    size_t nsegs = s->nsegs, marked = 0;
    for (size_t si = 0; si < nsegs; si++)
        marked += s->segs[si].index_save != 0;
    if (marked == 0 || s->dir == NULL)
        return;
    size_t *count = calloc(nsegs, sizeof(size_t));
    uint64_t *raw = calloc(nsegs, sizeof(uint64_t));
    tc_index_entry **ents = calloc(nsegs, sizeof(*ents));
    if (count == NULL || raw == NULL || ents == NULL)
        goto out;
    for (size_t i = 0; i < s->nslots; i++) {
        const entry *e = &s->slots[i];
        if (e->seg != 0 && !(e->state & ENTRY_DEAD) && s->segs[e->seg - 1].index_save &&
            e->offset < s->segs[e->seg - 1].scan_end) {
            count[e->seg - 1]++;
            raw[e->seg - 1] += e->raw_len;
        }
    }
    for (size_t si = 0; si < nsegs; si++) {
        if (s->segs[si].index_save && index_worth(count[si], raw[si]))
            ents[si] = malloc(count[si] * sizeof(tc_index_entry));
        count[si] = 0;
    }
    for (size_t i = 0; i < s->nslots; i++) {
        const entry *e = &s->slots[i];
        size_t si = e->seg - 1;
        if (e->seg != 0 && !(e->state & ENTRY_DEAD) && ents[si] != NULL &&
            e->offset < s->segs[si].scan_end)
            ents[si][count[si]++] = (tc_index_entry){e->key0, e->key1, e->offset, e->raw_len};
    }
    for (size_t si = 0; si < nsegs; si++) {
        segment *g = &s->segs[si];
        if (ents[si] != NULL) {
            tc_index_head head = {g->id, (uint64_t)g->ino, g->scan_end, count[si], 0};
            tc_index_write(s->dir, g->name, &head, ents[si], s->opt.file_mode);
        }
    }
out:
    for (size_t si = 0; si < nsegs; si++) {
        s->segs[si].index_save = 0;
        if (ents != NULL)
            free(ents[si]);
    }
    free(ents);
    free(raw);
    free(count);
}

/* A directory entry not seen before: a segment to index, or a name to ignore
 * (recorded, so it is looked at once).  Returns 0, or -1 without memory. */
static int segment_discover(tc_store *s, const char *name, unsigned char d_type,
                            int64_t now_wall, size_t *added)
{
    char *path = path_join(s->dir, name);
    if (path == NULL)
        return -1;
    struct stat st;
    memset(&st, 0, sizeof(st));
    int fd = -1;
    int regular = d_type == DT_REG || d_type == DT_UNKNOWN;
    if (regular) {
        fd = open_segment_file(path, &st);
        if (fd < 0 && errno != ENODEV && errno != ELOOP) {
            if (errno != ENOENT) {
                fault(s, TC_FAULT_OPEN, "cannot open segment %s: %s", path, strerror(errno));
                s->readdir_trusted = 0; /* look at it again at the next refresh */
            }
            free(path);
            return 0;
        }
    }
    long si = segment_add(s, path, -1);
    if (si < 0) {
        if (fd >= 0)
            close(fd);
        free(path);
        return -1;
    }
    segment *g = &s->segs[si];
    if (fd >= 0 && st.st_uid != geteuid() && !s->opt.allow_other_owners) {
        /* Checksums stop accidents, not other users: anyone who can write here
         * can plant records that verify.  Another user's segment is read only
         * when the store was told to (a team cache). */
        fault(s, TC_FAULT_FOREIGN,
              "ignoring segment %s owned by uid %ld (not this user); pass "
              "allow_other_owners=True to read a cache shared between users", path,
              (long)st.st_uid);
        close(fd);
        fd = -1;
        g->ignored = 1;
        return 0;
    }
    if (fd < 0) {
        /* a FIFO, socket, device, directory or link under a segment's name */
        g->ignored = 1;
        s->skipped++;
        return 0;
    }
    g->dev = st.st_dev;
    g->ino = st.st_ino;
    g->mtime_ns = mtime_of(&st);
    g->live_writer =
        tc_store_writer_may_append(g->name, g->mtime_ns, now_wall, REMOTE_IDLE_NS, s->host);
    g->file_len = (uint64_t)st.st_size;
    /* hand the descriptor to the cache so the scan reuses it */
    pthread_mutex_lock(&s->fd_lock);
    int cached = 0;
    if (s->nopen == s->cap_open) {
        size_t cap = s->cap_open ? 2 * s->cap_open : 8;
        size_t *p = realloc(s->open_segs, cap * sizeof(*p));
        if (p != NULL) {
            s->open_segs = p;
            s->cap_open = cap;
        }
    }
    if (s->nopen < s->cap_open) { /* else the scan opens it again through the cache */
        g->fd = fd;
        g->last_use = ++s->fd_clock;
        s->open_segs[s->nopen++] = (size_t)si;
        cached = 1;
    }
    pthread_mutex_unlock(&s->fd_lock);
    if (!cached)
        close(fd);
    uint64_t corrupt = s->corrupt;
    index_adopt(s, (size_t)si, added);
    size_t before = *added;
    uint64_t from = g->scan_end;
    int rc = segment_scan(s, (size_t)si, added);
    g = &s->segs[si];
    /* A long scan of a clean segment whose writer is gone leaves an index file
     * behind for the next open (written at the end of tc_store_open). */
    if (rc == 0 && *added - before >= TC_INDEX_MIN_RECORDS && g->scan_end > from &&
        s->corrupt == corrupt && !g->live_writer && !g->has_v1 && !g->resync_more &&
        g->resync_from == 0)
        g->index_save = 1;
    /* trim the cache back to its cap now, not at the next read */
    pthread_mutex_lock(&s->fd_lock);
    fd_trim_locked(s, s->fd_cap);
    pthread_mutex_unlock(&s->fd_lock);
    return rc;
}

/* Lists the directory for new segment files. */
static int refresh_readdir(tc_store *s, int64_t now_wall, size_t *added)
{
    s->readdirs++;
    s->readdir_trusted = 1;
    /* The descriptor held for the next refreshes' fstat is this listing's
     * directory (a directory replaced under the path is held from its next
     * listing on); a failed listing holds none, so the next refresh lists again. */
    if (s->dir_fd >= 0)
        close(s->dir_fd);
    s->dir_fd = -1;
    DIR *d = opendir(s->dir);
    if (d == NULL) {
        fault(s, TC_FAULT_DIRECTORY, "cannot read cache directory %s: %s", s->dir,
              strerror(errno));
        s->readdir_trusted = 0;
        return 0;
    }
    int dfd = dirfd(d);
    struct stat dst;
    if (fstat(dfd, &dst) == 0) {
        s->dir_mtime_ns = mtime_of(&dst);
        /* Held only where descriptors are not scarce (the segment cache gets at
         * least two): at RLIMIT_NOFILE < 128 a refresh stats the path instead. */
        if (s->fd_cap > 1)
            s->dir_fd = fcntl(dfd, F_DUPFD_CLOEXEC, 3);
        /* A file made in the same timestamp tick as this listing would leave the
         * mtime unchanged: trust the mtime only once it is older than the slack. */
        if (now_wall - s->dir_mtime_ns < (int64_t)MTIME_SLACK_NS)
            s->readdir_trusted = 0;
    } else {
        s->readdir_trusted = 0;
    }
    struct dirent *de;
    int rc = 0;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        if (!is_segment_name(de->d_name) || name_find(s, de->d_name) >= 0)
            continue;
        if (segment_discover(s, de->d_name, de->d_type, now_wall, added) < 0) {
            rc = -1;
            break;
        }
        errno = 0;
    }
    if (rc == 0 && errno != 0) {
        fault(s, TC_FAULT_DIRECTORY, "cannot list cache directory %s: %s", s->dir,
              strerror(errno));
        s->readdir_trusted = 0;
    }
    closedir(d);
    s->last_readdir_ns = now_ns();
    return rc;
}

/* After segments went away (a compaction merged them, a clear): entries of
 * removed segments go, and every other segment is scanned from the start, so a
 * key whose entry went finds its other copies (a merged segment, a duplicate).
 * Rare.  Returns 0, or -1 without memory. */
static int reindex_pass(tc_store *s, size_t *added)
{
    uint64_t corrupt = s->corrupt; /* damage seen before is not counted twice */
    for (size_t i = 0; i < s->nslots; i++) {
        entry *e = &s->slots[i];
        if (e->seg != 0 && s->segs[e->seg - 1].gone)
            entry_kill(s, e, 0);
    }
    for (size_t si = 0; si < s->nsegs; si++) {
        segment *g = &s->segs[si];
        if ((long)si == s->own || g->ignored || g->gone)
            continue;
        g->scan_end = 0;
        g->resync_from = 0;
        g->resync_more = 0;
        if (segment_scan(s, si, added) < 0)
            return -1;
    }
    s->corrupt = corrupt;
    return 0;
}

/* Picks up grown tails of known segments and new segment files (docs/format.md
 * section 7).  Per call it re-checks the segments whose writer may still
 * append and REFRESH_IDLE_CHECKS of the others (round robin), and lists the
 * directory only when its mtime changed, a listing is untrusted, or
 * READDIR_FORCE_NS passed: a miss costs O(live writers), not O(segments).
 * `force` lists the directory and re-checks every segment.  Write lock held.
 * Faults are counted; only running out of memory fails (TC_STORE_ENOMEM). */
static int refresh_locked(tc_store *s, size_t *added, int force, char *err, size_t err_len)
{
    s->last_refresh_ns = now_ns();
    if (s->dir == NULL)
        return TC_STORE_OK;
    s->refreshes++;
    int64_t now_wall = wall_ns();
    size_t n = s->nsegs, idle_left = force ? n : REFRESH_IDLE_CHECKS;
    if (__atomic_exchange_n(&s->reindex, 0, __ATOMIC_ACQ_REL) && reindex_pass(s, added) < 0)
        goto nomem;
    for (size_t si = 0; si < n; si++) {
        segment *g = &s->segs[si];
        if ((long)si == s->own || g->ignored || g->gone || !g->live_writer)
            continue;
        if (segment_recheck(s, si, now_wall, added) < 0)
            goto nomem;
    }
    /* The directory is listed when its mtime moved (a segment was made, renamed
     * or removed), when the last listing is not trusted (coarse timestamps), when
     * forced, and at least every READDIR_FORCE_NS. */
    int list = force || !s->readdir_trusted ||
               now_ns() - s->last_readdir_ns >= READDIR_FORCE_NS;
    if (!list) {
        /* fstat of the held directory costs a third of a stat by path (no path
         * walk: 0.55 against 1.7-1.9 us on this project's VM, per miss).  A
         * directory removed since (no links left) or unreadable is listed by
         * path, which faults if it is gone; one renamed away and replaced under
         * the path is found at the next forced listing, within READDIR_FORCE_NS. */
        struct stat dst;
        if (s->dir_fd >= 0)
            list = fstat(s->dir_fd, &dst) < 0 || dst.st_nlink == 0 ||
                   mtime_of(&dst) != s->dir_mtime_ns;
        else
            list = stat(s->dir, &dst) < 0 || mtime_of(&dst) != s->dir_mtime_ns;
    }
    /* Idle segments (no writer that may still append) change only by a rename or
     * removal, which moves the directory's mtime, or by damage or a writer back
     * from a long pause: they are re-checked with a listing, a few each time
     * (round robin from where the last pass stopped; the cursor moves below, so
     * the start is kept: a moving start skipped segments, and a forced refresh did
     * not re-check them all), not at every refresh: with many old segments, each
     * miss paid one stat per idle segment, up to REFRESH_IDLE_CHECKS of them. */
    size_t start = s->idle_cursor;
    for (size_t k = 0; list && k < n && idle_left > 0; k++) {
        size_t si = (start + k) % n;
        segment *g = &s->segs[si];
        if ((long)si == s->own || g->ignored || g->gone || g->live_writer)
            continue;
        idle_left--;
        s->idle_cursor = si + 1;
        s->idle_rechecks++;
        if (segment_recheck(s, si, now_wall, added) < 0)
            goto nomem;
    }
    if (list && refresh_readdir(s, now_wall, added) < 0)
        goto nomem;
    /* The rechecks and scans above (a reindex pass included) may have found
     * more segments gone, removed by the same compaction: their keys were just
     * indexed from them, or their copies in the merged segment (listed just
     * now) were not.  Another pass; each marks a segment gone for good, so
     * this ends. */
    while (__atomic_exchange_n(&s->reindex, 0, __ATOMIC_ACQ_REL)) {
        if (reindex_pass(s, added) < 0)
            goto nomem;
    }
    return TC_STORE_OK;
nomem:
    fault(s, TC_FAULT_NOMEM, "out of memory while indexing %s", s->dir);
    set_err(err, err_len, "out of memory while indexing %s", s->dir);
    return TC_STORE_ENOMEM;
}

/* ---- fork (docs/format.md, section 5) --------------------------------------- */

/* Another thread may be inside a store call (its GIL released) when a thread
 * forks.  A child has only the forking thread, so a lock held at that moment
 * would stay held forever and the index or segment table could be half
 * updated.  Every open store is therefore write-locked around fork(): the child
 * starts with consistent stores and fresh locks.  The forking thread holds no
 * store lock (fork is never called from inside a store call), so this waits
 * only for calls in progress, which never wait for the forking thread.  The
 * leaf locks (fd_lock, fault_lock) are only taken under s->lock, so none is
 * held once the write lock is. */
static pthread_mutex_t fork_list_lock = PTHREAD_MUTEX_INITIALIZER;
static tc_store *fork_list;
static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
    pthread_mutex_lock(&fork_list_lock);
    for (tc_store *s = fork_list; s != NULL; s = s->fork_next)
        pthread_rwlock_wrlock(&s->lock);
}

static void fork_parent(void)
{
    for (tc_store *s = fork_list; s != NULL; s = s->fork_next)
        pthread_rwlock_unlock(&s->lock);
    pthread_mutex_unlock(&fork_list_lock);
}

/* Bumped in every child at fork(): a store compares it with the generation it
 * saw last, so the common case of fork_check costs one load, not a getpid(). */
static uint64_t fork_generation;

static void fork_child(void)
{
    __atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELEASE);
    for (tc_store *s = fork_list; s != NULL; s = s->fork_next) {
        pthread_rwlock_init(&s->lock, NULL);
        pthread_mutex_init(&s->fd_lock, NULL);
        pthread_mutex_init(&s->fault_lock, NULL);
    }
    pthread_mutex_init(&fork_list_lock, NULL);
}

static void fork_handlers_install(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void fork_list_add(tc_store *s)
{
    pthread_once(&fork_handlers_once, fork_handlers_install);
    pthread_mutex_lock(&fork_list_lock);
    s->fork_prev = NULL;
    s->fork_next = fork_list;
    if (fork_list != NULL)
        fork_list->fork_prev = s;
    fork_list = s;
    s->in_fork_list = 1;
    pthread_mutex_unlock(&fork_list_lock);
}

static void fork_list_remove(tc_store *s)
{
    pthread_mutex_lock(&fork_list_lock);
    if (s->in_fork_list) {
        if (s->fork_prev != NULL)
            s->fork_prev->fork_next = s->fork_next;
        else
            fork_list = s->fork_next;
        if (s->fork_next != NULL)
            s->fork_next->fork_prev = s->fork_prev;
        s->in_fork_list = 0;
    }
    pthread_mutex_unlock(&fork_list_lock);
}

/* A forked child must never append to its parent's segment: it forgets it as
 * its own (it becomes a segment like any other writer's, read through the
 * descriptor cache) and makes a new one at its first put.  (Its locks were
 * re-made by fork_child.) */
static void fork_check(tc_store *s)
{
    uint64_t gen = __atomic_load_n(&fork_generation, __ATOMIC_ACQUIRE);
    if (gen == __atomic_load_n(&s->fork_gen, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&s->fork_gen, gen, __ATOMIC_RELAXED);
    pid_t pid = getpid();
    if (pid == s->pid)
        return;
    s->pid = pid;
    if (s->dir != NULL && s->own >= 0) {
        segment *g = &s->segs[s->own];
        g->scan_end = g->file_len;
        g->live_writer = 1;
        s->own = -1;
        /* its descriptor joins the cache (which may go over its cap until the next release) */
        size_t si = (size_t)(g - s->segs);
        if (s->nopen == s->cap_open) {
            size_t *p = realloc(s->open_segs, (s->cap_open + 8) * sizeof(*p));
            if (p == NULL) {
                close(g->fd);
                g->fd = -1;
                return;
            }
            s->open_segs = p;
            s->cap_open += 8;
        }
        assert(s->nopen < s->cap_open);
        s->open_segs[s->nopen++] = si;
    }
}

static uint64_t random64(void)
{
    uint64_t r;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) == (ssize_t)sizeof(r))
        return r;
    /* No entropy yet (early boot): time, pid and an address are unique enough
     * together with the host name in the segment name. */
    return tc_fmix64(now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&r);
}

/* Creates this writer's segment: docs/format.md, section 5 (naming). */
static int open_own_segment(tc_store *s)
{
    char name[160];
    snprintf(name, sizeof(name), "seg-%s-%ld-%016llx.tcs", s->host, (long)getpid(),
             (unsigned long long)random64());
    char *path = path_join(s->dir, name);
    if (path == NULL) {
        snprintf(s->io_error, sizeof(s->io_error), "out of memory creating a segment");
        s->stop_writing = 1;
        fault(s, TC_FAULT_NOMEM, "out of memory creating a segment");
        return -1;
    }
    int fd = fd_above_stdio(open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                                 s->opt.file_mode ? (mode_t)s->opt.file_mode : 0666));
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(s->io_error, sizeof(s->io_error), "cannot create segment %s: %s", path,
                 strerror(errno));
        fault(s, TC_FAULT_WRITE, "%s", s->io_error);
        if (fd >= 0)
            close(fd);
        free(path);
        s->stop_writing = 1;
        return -1;
    }
    long si = segment_add(s, path, fd);
    if (si < 0) {
        close(fd);
        unlink(path);
        free(path);
        snprintf(s->io_error, sizeof(s->io_error), "out of memory creating a segment");
        fault(s, TC_FAULT_NOMEM, "out of memory creating a segment");
        s->stop_writing = 1;
        return -1;
    }
    s->segs[si].dev = st.st_dev;
    s->segs[si].ino = st.st_ino;
    s->segs[si].live_writer = 1;
    s->own = si;
    return 0;
}

/* ---- open / close ----------------------------------------------------------- */

/* Writable by users other than the owner and the group, without the sticky
 * bit that would stop them replacing others' files. */
static int others_may_write(const struct stat *st)
{
    return (st->st_mode & S_IWOTH) && !(st->st_mode & S_ISVTX);
}

/* Creates dir and its missing parents with `mode`.  *insecure names the first
 * of dir and the parents made here that others may write (or stays ""). */
static int make_dirs(const char *dir, unsigned mode, char *insecure, size_t insecure_len,
                     char *err, size_t err_len)
{
    char *p = strdup(dir);
    if (p == NULL) {
        set_err(err, err_len, "out of memory");
        return TC_STORE_ENOMEM;
    }
    for (char *c = p + 1;; c++) {
        if (*c == '/' || *c == '\0') {
            char was = *c;
            *c = '\0';
            int made = mkdir(p, mode ? (mode_t)mode : 0777) == 0;
            if (!made && errno != EEXIST) {
                set_err(err, err_len, "cannot create cache directory %s: %s", p,
                        strerror(errno));
                free(p);
                return TC_STORE_EIO;
            }
            struct stat st;
            if ((made || was == '\0') && insecure[0] == '\0' && stat(p, &st) == 0 &&
                S_ISDIR(st.st_mode) && others_may_write(&st))
                snprintf(insecure, insecure_len, "%s", p);
            *c = was;
            if (was == '\0')
                break;
        }
    }
    free(p);
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        set_err(err, err_len, "cache path %s exists and is not a directory", dir);
        return TC_STORE_EIO;
    }
    return TC_STORE_OK;
}

/* Descriptors a reader keeps for segments between calls: a small share of
 * RLIMIT_NOFILE, so that a process at a low limit keeps its fds for itself. */
static size_t fd_cache_cap(void)
{
    struct rlimit rl = {32 * 64, 32 * 64}; /* getrlimit cannot fail for NOFILE */
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t cap = rl.rlim_cur / 64; /* RLIM_INFINITY (not allowed for NOFILE) would be capped */
    return cap < 1 ? 1 : cap > 32 ? 32 : cap;
}

int tc_store_open(const char *dir, const tc_store_options *opt, tc_store **out, char *err,
                  size_t err_len)
{
    *out = NULL;
    tc_hash_init();
    if (opt->compress && !tc_zstd_available(NULL, 0)) {
        set_err(err, err_len,
                "zstd compression was asked for but libzstd.so.1 could not be loaded; "
                "install libzstd (apt-get install libzstd1, or conda install zstd) or "
                "pass zstd_level=None");
        return TC_STORE_EZSTD;
    }
    if (dir != NULL && dir[0] == '\0') {
        set_err(err, err_len, "path must not be empty; pass None for an in-memory store");
        return TC_STORE_EARG;
    }
    tc_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        set_err(err, err_len, "out of memory");
        return TC_STORE_ENOMEM;
    }
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->fd_lock, NULL);
    pthread_mutex_init(&s->fault_lock, NULL);
    s->pid = getpid();
    s->fork_gen = __atomic_load_n(&fork_generation, __ATOMIC_ACQUIRE);
    s->own = -1;
    s->dir_fd = -1;
    s->opt = *opt;
    s->fd_cap = fd_cache_cap();
    host_name(s->host);
    if (dir != NULL) {
        char insecure[PATH_MAX] = "";
        int rc = make_dirs(dir, opt->dir_mode, insecure, sizeof(insecure), err, err_len);
        if (rc == TC_STORE_OK && insecure[0] != '\0') {
            if (opt->strict) {
                set_err(err, err_len,
                        "cache directory %s is writable by other users (mode %s without the "
                        "sticky bit), who could plant records that verify; chmod o-w it or "
                        "use a private directory (strict mode refuses it)", insecure,
                        "o+w");
                rc = TC_STORE_EPERM;
            } else {
                fault(s, TC_FAULT_INSECURE,
                      "cache directory %s is writable by other users without the sticky "
                      "bit: they could plant records that verify; chmod o-w it, or set "
                      "strict to refuse such directories", insecure);
            }
        }
        if (rc == TC_STORE_OK) {
            s->dir = strdup(dir);
            s->scan_buf = malloc(SCAN_WINDOW_BYTES);
            if (s->dir == NULL || s->scan_buf == NULL) {
                set_err(err, err_len, "out of memory");
                rc = TC_STORE_ENOMEM;
            }
        }
        size_t added = 0;
        if (rc == TC_STORE_OK)
            rc = refresh_locked(s, &added, 1, err, err_len);
        if (rc == TC_STORE_OK)
            index_save_marked(s);
        /* A listing that failed (EMFILE, EIO) is a fault like any other: the
         * store opens empty-handed and the next refresh lists again. */
        if (rc != TC_STORE_OK) {
            tc_store_free(s);
            return rc;
        }
    }
    fork_list_add(s);
    *out = s;
    return TC_STORE_OK;
}

static void close_locked(tc_store *s)
{
    if (s->closed)
        return;
    s->closed = 1;
    if (s->dir != NULL && s->own >= 0 && !s->stop_writing && s->segs[s->own].fd >= 0) {
        /* the next open reads this segment's index instead of scanning it */
        s->segs[s->own].index_save = 1;
        index_save_marked(s);
    }
    for (size_t i = 0; i < s->nsegs; i++) {
        segment *g = &s->segs[i];
        if (g->path == NULL) /* an arena chunk is added with its mapping */
            munmap(g->base, g->map_len);
        if (g->fd >= 0)
            close(g->fd);
        free(g->path);
    }
    free(s->segs);
    s->segs = NULL;
    s->nsegs = s->cap_segs = 0;
    free(s->names);
    s->names = NULL;
    s->nnames = 0;
    free(s->open_segs);
    s->open_segs = NULL;
    s->nopen = s->cap_open = 0;
    slots_free(s->slots, s->nslots);
    s->slots = NULL;
    s->nslots = s->nused = 0;
    free(s->scan_buf);
    s->scan_buf = NULL;
    if (s->dir_fd >= 0)
        close(s->dir_fd);
    s->dir_fd = -1;
}

void tc_store_close(tc_store *s)
{
    fork_check(s);
    pthread_rwlock_wrlock(&s->lock);
    close_locked(s);
    pthread_rwlock_unlock(&s->lock);
}

void tc_store_free(tc_store *s)
{
    if (s == NULL)
        return;
    fork_list_remove(s);
    tc_store_close(s);
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->fd_lock);
    pthread_mutex_destroy(&s->fault_lock);
    free(s->dir);
    free(s);
}

static int closed_err(char *err, size_t err_len)
{
    set_err(err, err_len, "store is closed");
    return TC_STORE_ECLOSED;
}

/* ---- lookup / entry_info / gather ------------------------------------------- */

static ssize_t read_most(int fd, struct iovec *iov, int niov, uint64_t off);

/* Bytes a lookup reads at once to verify records at their first use. */
#define VERIFY_BATCH_BYTES (1u << 20)

/* A row of a batch and its entry, to be read in file order. */
typedef struct {
    entry *e;
    size_t row;
} place_slot;

static int place_before(const place_slot *x, const place_slot *y)
{
    if (x->e->seg != y->e->seg)
        return x->e->seg < y->e->seg;
    return x->e->offset < y->e->offset;
}

/* Insertion-sorted runs, then merged bottom up. */
#define PLACE_RUN 8

/* Sorts a[0, n) by place (segment, then offset), stably, with tmp (n slots)
 * for the merges.  A batch already in order (rows stored by one put) costs one
 * pass.  The comparisons are inline: qsort's call per comparison took 15-25 us
 * of a warm gather of 256 random rows (~300 us), twice that in a fresh
 * process's first call (docs/architecture.md). */
static void place_sort(place_slot *a, place_slot *tmp, size_t n)
{
    size_t i = 1;
    while (i < n && !place_before(&a[i], &a[i - 1]))
        i++;
    if (i >= n)
        return;
    for (size_t lo = 0; lo < n; lo += PLACE_RUN) {
        size_t hi = n - lo < PLACE_RUN ? n : lo + PLACE_RUN;
        for (size_t j = lo + 1; j < hi; j++) {
            place_slot v = a[j];
            size_t k = j;
            for (; k > lo && place_before(&v, &a[k - 1]); k--)
                a[k] = a[k - 1];
            a[k] = v;
        }
    }
    place_slot *src = a, *dst = tmp;
    for (size_t w = PLACE_RUN; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            /* n - lo > w: the last run may stand alone, and is copied */
            size_t mid = n - lo > w ? lo + w : n;
            size_t hi = n - mid > w ? mid + w : n;
            size_t p = lo, q = mid, o = lo;
            while (p < mid && q < hi)
                dst[o++] = place_before(&src[q], &src[p]) ? src[q++] : src[p++];
            while (p < mid)
                dst[o++] = src[p++];
            while (q < hi)
                dst[o++] = src[q++];
        }
        place_slot *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, n * sizeof(*a));
}

/* First use of many records at once (a fresh process's first batch, records
 * indexed from an index file): the unverified live entries among keys are
 * sorted by place and read in runs of up to VERIFY_BATCH_BYTES with one pread
 * each, then each record's header is checked in full (bound to its place, key
 * and size compared with the entry) and its payload checksum computed from
 * memory.  Entries that check become verified, those that do not are dropped
 * as probe would drop them; any other (a read fault, a record larger than a
 * run) is left to probe's one-record path.  Read lock held. */
static void verify_batch(tc_store *s, const uint64_t *keys, size_t n)
{
    if (s->dir == NULL || n < 2)
        return;
    place_slot *todo = NULL; /* n slots, then n for the sort */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        entry *e = index_find(s, keys[2 * i], keys[2 * i + 1]);
        if (!entry_live(e) || (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) & ENTRY_VERIFIED) ||
            __atomic_load_n(&s->segs[e->seg - 1].gone, __ATOMIC_ACQUIRE) ||
            e->raw_len > VERIFY_BATCH_BYTES / 2)
            continue;
        if (todo == NULL && (todo = malloc(2 * n * sizeof(*todo))) == NULL)
            return;
        todo[m++] = (place_slot){e, i};
    }
    uint8_t *buf = m >= 2 ? malloc(VERIFY_BATCH_BYTES) : NULL;
    if (buf == NULL) {
        free(todo);
        return;
    }
    place_sort(todo, todo + n, m);
    for (size_t a = 0; a < m;) {
        size_t si = todo[a].e->seg - 1;
        uint64_t start = todo[a].e->offset, end = start;
        size_t b = a;
        /* a run: same segment, records close together, all within the buffer */
        for (; b < m && todo[b].e->seg == todo[a].e->seg; b++) {
            uint64_t rec_end = todo[b].e->offset + REC_HEADER_BYTES +
                               round_up(todo[b].e->raw_len, REC_ALIGN);
            if (b > a && (todo[b].e->offset > end + SCAN_SMALL_READ ||
                          rec_end - start > VERIFY_BATCH_BYTES))
                break;
            if (rec_end > end)
                end = rec_end;
        }
        int fd = seg_acquire(s, si);
        ssize_t got = -1;
        if (fd >= 0) {
            struct iovec iov = {buf, (size_t)(end - start)};
            got = read_most(fd, &iov, 1, start);
            seg_release(s, si);
        }
        const segment *g = &s->segs[si];
        for (size_t k = a; k < b && got > 0; k++) {
            entry *e = todo[k].e;
            uint64_t at = e->offset - start;
            if (at + REC_HEADER_BYTES > (uint64_t)got ||
                (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) & (ENTRY_VERIFIED | ENTRY_DEAD)))
                continue;
            rec_header h;
            header_decode(buf + at, &h);
            uint64_t total;
            if (h.key0 != e->key0 || h.key1 != e->key1 || h.raw_len != e->raw_len ||
                header_check(&h, g->id, e->offset, UINT64_MAX / 2, &total) != HDR_OK) {
                entry_kill(s, e, 1); /* as entry_header drops it */
                continue;
            }
            if (at + REC_HEADER_BYTES + h.stored_len > (uint64_t)got)
                continue; /* cut short: probe reads it alone and decides */
            if (payload_checksum(buf + at + REC_HEADER_BYTES, h.stored_len) != h.payload_sum)
                entry_kill(s, e, 1);
            else
                __atomic_fetch_or(&e->state, ENTRY_VERIFIED, __ATOMIC_ACQ_REL);
        }
        a = b;
    }
    free(buf);
    free(todo);
}

static int lookup(tc_store *s, const uint64_t *keys, size_t n, int verify, uint8_t *present,
                  char *err, size_t err_len)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    if (s->closed) {
        pthread_rwlock_unlock(&s->lock);
        return closed_err(err, err_len);
    }
    size_t misses = 0;
    /* Unverified (the call path, csrc/call.c): a record not yet checked counts as
     * present and the gather that follows verifies it in its destination, where
     * its bytes land anyway, so a fresh process reads each record once, not once
     * here and again there; a record that fails is not served, and the call
     * computes its row. */
    entry *(*find)(tc_store *, uint64_t, uint64_t) = verify ? probe : probe_live;
    if (verify)
        verify_batch(s, keys, n);
    for (size_t i = 0; i < n; i++) {
        present[i] = find(s, keys[2 * i], keys[2 * i + 1]) != NULL;
        misses += !present[i];
    }
    uint64_t since = now_ns() - s->last_refresh_ns;
    pthread_rwlock_unlock(&s->lock);
    if (misses == 0 || s->dir == NULL || since < s->opt.refresh_ms * 1000000ULL)
        return TC_STORE_OK;
    /* Bounded pick-up of other writers' records: one scan per call, at most one
     * per refresh_ms (docs/format.md, section 7). */
    pthread_rwlock_wrlock(&s->lock);
    int rc = TC_STORE_OK;
    if (s->closed) {
        rc = closed_err(err, err_len);
    } else {
        size_t added = 0;
        if (now_ns() - s->last_refresh_ns >= s->opt.refresh_ms * 1000000ULL)
            refresh_locked(s, &added, 0, NULL, 0); /* a fault leaves the rows missing */
        for (size_t i = 0; i < n; i++) {
            if (!present[i])
                present[i] = find(s, keys[2 * i], keys[2 * i + 1]) != NULL;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

int tc_store_lookup(tc_store *s, const uint64_t *keys, size_t n, uint8_t *present, char *err,
                    size_t err_len)
{
    return lookup(s, keys, n, 1, present, err, err_len);
}

int tc_store_lookup_unverified(tc_store *s, const uint64_t *keys, size_t n, uint8_t *present,
                               char *err, size_t err_len)
{
    return lookup(s, keys, n, 0, present, err, err_len);
}

int tc_store_entry_info(tc_store *s, const uint64_t key[2], uint64_t *dtype_word, int *ndim,
                        int64_t shape[TC_STORE_MAX_NDIM], char *err, size_t err_len)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    int rc = TC_STORE_OK;
    rec_header h;
    entry *e = NULL;
    if (s->closed) {
        rc = closed_err(err, err_len);
    } else if ((e = probe(s, key[0], key[1])) == NULL || entry_header(s, e, &h) <= 0) {
        set_err(err, err_len, "key (%lld, %lld) is not in the store", (long long)key[0],
                (long long)key[1]);
        rc = TC_STORE_EMISSING;
    } else {
        *dtype_word = h.dtype_word;
        *ndim = h.ndim;
        for (int d = 0; d < TC_STORE_MAX_NDIM; d++)
            shape[d] = h.shape[d];
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

static int shape_equal(const rec_header *h, uint64_t dtype_word, int ndim, const int64_t *shape)
{
    if (h->dtype_word != dtype_word || h->ndim != ndim)
        return 0;
    for (int d = 0; d < ndim; d++) {
        if (h->shape[d] != shape[d])
            return 0;
    }
    return 1;
}

/* The live entry of a row about to be read, or NULL (a miss: absent, its
 * segment gone, or a record of another size, which is never read). */
static entry *gather_entry(tc_store *s, uint64_t k0, uint64_t k1, uint64_t item_bytes)
{
    entry *e = index_find(s, k0, k1);
    if (!entry_live(e))
        return NULL;
    if (__atomic_load_n(&s->segs[e->seg - 1].gone, __ATOMIC_ACQUIRE)) {
        entry_kill(s, e, 0);
        return NULL;
    }
    if (e->raw_len != item_bytes) {
        fault(s, TC_FAULT_MISMATCH,
              "a stored record has %llu bytes per item where dest has %llu (same key, "
              "different output dtype or shape)",
              (unsigned long long)e->raw_len, (unsigned long long)item_bytes);
        return NULL;
    }
    return e;
}

/* Finishes a row whose header bytes hb and first item_bytes payload bytes
 * (in row; an arena record's payload is read in place) were read from e's
 * place: re-checks the header, verifies the payload at its first use,
 * decompresses where needed.  Returns 1 if served. */
static int gather_finish(tc_store *s, entry *e, const uint8_t hb[REC_HEADER_BYTES],
                         uint64_t dtype_word, int ndim, const int64_t *shape,
                         uint64_t item_bytes, uint8_t *row)
{
    const segment *g = &s->segs[e->seg - 1];
    int verified = (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) & ENTRY_VERIFIED) != 0;
    rec_header h;
    header_decode(hb, &h);
    uint64_t total;
    /* A verified record's header is checked field by field (what bounds the
     * copy and names the record), not re-hashed: the hit path stays a few
     * loads per row on top of the read. */
    int header_ok = verified ? h.magic == REC_MAGIC &&
                                   (h.version == REC_VERSION || h.version == REC_VERSION_V1) &&
                                   h.stored_len <= h.raw_len &&
                                   (h.flags & ~REC_FLAG_ZSTD) == 0 &&
                                   ((h.flags & REC_FLAG_ZSTD) || h.stored_len == h.raw_len)
                             : header_check(&h, g->id, e->offset, UINT64_MAX / 2, &total) ==
                                   HDR_OK;
    if (h.key0 != e->key0 || h.key1 != e->key1 || h.raw_len != item_bytes || !header_ok) {
        if (verified)
            fault(s, TC_FAULT_CHANGED,
                  "a record in %s changed on disk after it was verified and is dropped; do "
                  "not edit segments in use", g->name); /* an arena's bytes never change */
        entry_kill(s, e, 1);
        return 0;
    }
    if (!shape_equal(&h, dtype_word, ndim, shape)) {
        fault(s, TC_FAULT_MISMATCH,
              "a stored record's dtype word 0x%llx or item shape differs from dest's",
              (unsigned long long)h.dtype_word);
        return 0;
    }
    /* an arena record is read in place (in bounds: see seg_read) */
    const uint8_t *payload = g->path == NULL ? g->base + e->offset + REC_HEADER_BYTES : row;
    if (!verified) {
        if (payload_checksum(payload, h.stored_len) != h.payload_sum) {
            entry_kill(s, e, 1);
            return 0;
        }
        __atomic_fetch_or(&e->state, ENTRY_VERIFIED, __ATOMIC_ACQ_REL);
    }
    if (h.flags & REC_FLAG_ZSTD) {
        void *frame = malloc((size_t)h.stored_len + 1); /* + 1: never malloc(0) */
        if (frame == NULL) {
            fault(s, TC_FAULT_NOMEM, "out of memory decompressing a record");
            return 0;
        }
        memcpy(frame, payload, (size_t)h.stored_len);
        char zerr[200];
        int zrc = tc_zstd_decompress(row, h.raw_len, frame, h.stored_len, zerr, sizeof(zerr));
        free(frame);
        if (zrc < 0) {
            fault(s, TC_FAULT_ZSTD,
                  "cannot decompress a record (%s); install libzstd (apt-get install "
                  "libzstd1, or conda install zstd)", zerr);
            return 0;
        }
    } else if (g->path == NULL && h.raw_len) {
        memcpy(row, payload, (size_t)h.raw_len);
    }
    return 1;
}

/* Serves one row on its own: reads the record's header and payload in one
 * preadv (the payload straight into the row), then gather_finish.  Returns 1
 * if served. */
static int gather_row(tc_store *s, uint64_t k0, uint64_t k1, uint64_t dtype_word, int ndim,
                      const int64_t *shape, uint64_t item_bytes, uint8_t *row)
{
    entry *e = gather_entry(s, k0, k1, item_bytes);
    if (e == NULL)
        return 0;
    size_t si = e->seg - 1;
    const segment *g = &s->segs[si];
    uint8_t hb[REC_HEADER_BYTES];
    /* The row receives the payload, or the start of a compressed one (shorter
     * than the row) followed by whatever comes next in the file. */
    struct iovec iov[2] = {{hb, sizeof(hb)}, {row, (size_t)item_bytes}};
    if (g->path == NULL) {
        memcpy(hb, g->base + e->offset, sizeof(hb)); /* in bounds: seg_read */
    } else {
        int fd = seg_acquire(s, si);
        if (fd < 0) {
            if (__atomic_load_n(&g->gone, __ATOMIC_ACQUIRE))
                entry_kill(s, e, 0);
            return 0;
        }
        int errnum = 0;
        int kind = read_fully(fd, iov, item_bytes ? 2 : 1, e->offset, &errnum);
        seg_release(s, si);
        if (kind == TC_FAULT_SHORT) {
            /* A compressed record near the end of its file is shorter than the
             * row: read its header, then exactly its payload. */
            struct iovec one = {hb, sizeof(hb)};
            if (seg_read(s, si, e->offset, &one, 1) < 0) {
                entry_kill(s, e, 1);
                return 0;
            }
            rec_header peek;
            header_decode(hb, &peek);
            if (!(peek.flags & REC_FLAG_ZSTD) || peek.stored_len >= item_bytes) {
                fault(s, TC_FAULT_SHORT,
                      "segment %s ends before a record it held (truncated while in use)",
                      g->path);
                entry_kill(s, e, 1);
                return 0;
            }
            struct iovec pay = {row, (size_t)peek.stored_len};
            if (seg_read(s, si, e->offset + REC_HEADER_BYTES, &pay, 1) < 0) {
                entry_kill(s, e, 1);
                return 0;
            }
            kind = NO_FAULT;
        }
        if (kind != NO_FAULT) {
            fault(s, kind, "reading segment %s: %s", g->path, strerror(errnum));
            return 0;
        }
    }
    return gather_finish(s, e, hb, dtype_word, ndim, shape, item_bytes, row);
}

/* Reads as many bytes of the iovecs at off as the file holds, retrying on
 * EINTR and short counts.  Returns the bytes read, or -1 on a read error
 * before any byte (the rows then go through gather_row, which counts it). */
static ssize_t read_most(int fd, struct iovec *iov, int niov, uint64_t off)
{
    size_t got = 0;
    while (niov > 0) {
        ssize_t r = preadv(fd, iov, niov, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return got ? (ssize_t)got : r;
        got += (size_t)r;
        iov_advance(&iov, &niov, (size_t)r);
    }
    return (ssize_t)got;
}

/* Records per coalesced read: header, row and padding iovecs each, under IOV_MAX. */
#define GATHER_RUN_MAX (PUT_MAX_IOV / 3)

/* Serves the rows of a file store's gather with few system calls: the rows'
 * records sorted by (segment, offset), one descriptor pin per segment, and one
 * preadv per run of records that lie end to end in their file (a batch stored
 * by one put reads back in one call).  Each row reads exactly the bytes that
 * gather_row would read and is finished by the same checks; a row whose bytes
 * did not all arrive (a file cut short, a read error) is done again by
 * gather_row, which decides and counts the fault.  Returns -1 without memory
 * (the caller then serves row by row). */
static int gather_batched(tc_store *s, const uint64_t *keys, size_t n, uint64_t dtype_word,
                          int ndim, const int64_t *shape, uint64_t item_bytes, uint8_t *dest,
                          uint8_t *served)
{
    place_slot *slots = malloc(2 * n * sizeof(*slots)); /* n rows, then n for the sort */
    uint8_t(*hbs)[REC_HEADER_BYTES] = malloc(GATHER_RUN_MAX * REC_HEADER_BYTES);
    struct iovec *iov = malloc(3 * GATHER_RUN_MAX * sizeof(*iov));
    if (slots == NULL || hbs == NULL || iov == NULL) {
        free(slots);
        free(hbs);
        free(iov);
        return -1;
    }
    uint8_t pad[REC_ALIGN];
    uint64_t span = REC_HEADER_BYTES + round_up(item_bytes, REC_ALIGN);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        entry *e = gather_entry(s, keys[2 * i], keys[2 * i + 1], item_bytes);
        served[i] = 0;
        if (e != NULL)
            slots[m++] = (place_slot){e, i};
    }
    place_sort(slots, slots + n, m);
    for (size_t a = 0; a < m;) {
        size_t si = slots[a].e->seg - 1;
        size_t b = a + 1;
        while (b < m && slots[b].e->seg == slots[a].e->seg)
            b++;
        int fd = seg_acquire(s, si);
        if (fd < 0) {
            /* counted once by seg_acquire (or the segment is gone) */
            for (size_t k = a; k < b; k++) {
                if (__atomic_load_n(&s->segs[si].gone, __ATOMIC_ACQUIRE))
                    entry_kill(s, slots[k].e, 0);
            }
            a = b;
            continue;
        }
        for (size_t r = a; r < b;) {
            /* a run: records end to end, each read as header, row, padding */
            size_t q = r;
            int niov = 0;
            for (; q < b && q - r < GATHER_RUN_MAX; q++) {
                if (q > r && slots[q].e->offset != slots[q - 1].e->offset + span)
                    break;
                iov[niov++] = (struct iovec){hbs[q - r], REC_HEADER_BYTES};
                if (item_bytes)
                    iov[niov++] = (struct iovec){dest + slots[q].row * item_bytes,
                                                 (size_t)item_bytes};
                if (span > REC_HEADER_BYTES + item_bytes)
                    iov[niov++] = (struct iovec){pad, (size_t)(span - REC_HEADER_BYTES -
                                                               item_bytes)};
            }
            ssize_t got = read_most(fd, iov, niov, slots[r].e->offset);
            for (size_t k = r; k < q; k++) {
                uint8_t *row = dest + slots[k].row * item_bytes;
                uint64_t need = (uint64_t)(k - r) * span + REC_HEADER_BYTES + item_bytes;
                if (got >= 0 && (uint64_t)got >= need)
                    served[slots[k].row] = (uint8_t)gather_finish(
                        s, slots[k].e, hbs[k - r], dtype_word, ndim, shape, item_bytes, row);
                else
                    served[slots[k].row] = (uint8_t)gather_row(
                        s, keys[2 * slots[k].row], keys[2 * slots[k].row + 1], dtype_word,
                        ndim, shape, item_bytes, row);
            }
            r = q;
        }
        seg_release(s, si);
        a = b;
    }
    free(slots);
    free(hbs);
    free(iov);
    return 0;
}

int tc_store_gather(tc_store *s, const uint64_t *keys, size_t n, uint64_t dtype_word, int ndim,
                    const int64_t *shape, uint8_t *dest, uint8_t *served, char *err,
                    size_t err_len)
{
    fork_check(s);
    uint64_t item_bytes = tc_store_itemsize(dtype_word);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(item_bytes, (uint64_t)shape[d], &item_bytes))
            item_bytes = 0;
    }
    if (item_bytes == 0 && tc_store_itemsize(dtype_word) == 0) {
        set_err(err, err_len, "dtype word 0x%llx is not a whole number of bytes per element",
                (unsigned long long)dtype_word);
        return TC_STORE_EARG;
    }
    pthread_rwlock_rdlock(&s->lock);
    int rc = TC_STORE_OK;
    if (s->closed) {
        pthread_rwlock_unlock(&s->lock);
        return closed_err(err, err_len);
    }
    size_t unserved = 0;
    if (s->dir == NULL || n < 2 ||
        gather_batched(s, keys, n, dtype_word, ndim, shape, item_bytes, dest, served) < 0) {
        for (size_t i = 0; i < n; i++)
            served[i] = (uint8_t)gather_row(s, keys[2 * i], keys[2 * i + 1], dtype_word, ndim,
                                            shape, item_bytes, dest + i * item_bytes);
    }
    for (size_t i = 0; i < n; i++)
        unserved += !served[i];
    int reindex = __atomic_load_n(&s->reindex, __ATOMIC_ACQUIRE);
    pthread_rwlock_unlock(&s->lock);
    if (unserved == 0 || !reindex)
        return TC_STORE_OK;
    /* Segments went away during this gather (a compaction merged them, most
     * likely): index their records' other copies now and serve those rows,
     * rather than have every reader recompute them.  The refresh repeats its
     * reindex pass until no more segments are found gone (refresh_locked),
     * and the rows are served under the same write lock.  (Only a file
     * segment is ever found gone: an arena never sets reindex.) */
    pthread_rwlock_wrlock(&s->lock);
    if (s->closed) {
        rc = closed_err(err, err_len);
    } else {
        size_t added = 0;
        refresh_locked(s, &added, 0, NULL, 0); /* a fault leaves the rows missing */
        for (size_t i = 0; i < n; i++) {
            if (!served[i] && probe(s, keys[2 * i], keys[2 * i + 1]) != NULL)
                served[i] = (uint8_t)gather_row(s, keys[2 * i], keys[2 * i + 1], dtype_word,
                                                ndim, shape, item_bytes, dest + i * item_bytes);
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}
/* ---- put -------------------------------------------------------------------- */

typedef struct {
    uint64_t key0, key1;
    uint64_t offset, raw_len, total;
} staged;

typedef struct {
    struct iovec iov[PUT_MAX_IOV];
    int niov;
    uint64_t bytes;
    staged *recs;
    size_t nrecs;
    void **buffers; /* compressed payloads, freed after the write */
    size_t nbuffers;
} put_batch;

static const uint8_t zero_pad[REC_ALIGN];

static void batch_release(put_batch *b)
{
    for (size_t i = 0; i < b->nbuffers; i++)
        free(b->buffers[i]);
    b->nbuffers = 0;
    b->niov = 0;
    b->bytes = 0;
    b->nrecs = 0;
}

static void stop_writing(tc_store *s, const char *what, int errnum)
{
    if (!s->stop_writing) {
        snprintf(s->io_error, sizeof(s->io_error), "%s: %s", what, strerror(errnum));
        fault(s, errnum == ENOMEM ? TC_FAULT_NOMEM : TC_FAULT_WRITE, "%s", s->io_error);
    }
    s->stop_writing = 1;
}

/* Appends the staged records to our segment in one pwritev loop and indexes
 * those that reached the file whole.  Returns the number indexed. */
static size_t batch_flush(tc_store *s, put_batch *b)
{
    if (b->nrecs == 0)
        return 0;
    segment *g = &s->segs[s->own];
    uint64_t start = g->file_len, done = 0;
    struct iovec *iov = b->iov;
    int niov = b->niov;
    while (done < b->bytes) {
        ssize_t w = pwritev(g->fd, iov, niov, (off_t)(start + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            char what[300];
            snprintf(what, sizeof(what), "writing segment %s", g->name);
            stop_writing(s, what, w < 0 ? errno : ENOSPC);
            break;
        }
        done += (uint64_t)w;
        iov_advance(&iov, &niov, (size_t)w);
    }
    g->file_len = start + done;
    g->scan_end = g->file_len;
    size_t indexed = 0;
    for (size_t i = 0; i < b->nrecs; i++) {
        staged *r = &b->recs[i];
        if (r->offset + r->total > start + done)
            break;
        /* Unverified: our own records are checked at their first use like
         * anyone else's, since their bytes may change on disk after the write
         * (docs/format.md, section 6). */
        int ins = index_insert(s, r->key0, r->key1, (size_t)s->own, r->offset, r->raw_len, 0);
        if (ins < 0) {
            stop_writing(s, "indexing a record", ENOMEM);
            break;
        }
        indexed += (size_t)ins;
        s->records_written++;
        s->bytes_written += r->total;
    }
    batch_release(b);
    return indexed;
}

/* Room for one record in the arena: a new anonymous chunk when the current is full. */
static uint8_t *arena_reserve(tc_store *s, uint64_t total, size_t *seg, uint64_t *offset)
{
    if (s->own >= 0) {
        segment *g = &s->segs[s->own];
        if (g->file_len + total <= g->map_len) {
            *seg = (size_t)s->own;
            *offset = g->file_len;
            return g->base + g->file_len;
        }
    }
    uint64_t len = total > ARENA_CHUNK_BYTES ? round_up(total, (uint64_t)sysconf(_SC_PAGESIZE))
                                             : ARENA_CHUNK_BYTES;
    void *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* Huge pages where the kernel allows them: a gather touches records all over
     * the arena, and 4 KiB pages would cost a TLB miss per record. */
    madvise(p, (size_t)len, MADV_HUGEPAGE);
    long si = segment_add(s, NULL, -1);
    if (si < 0) {
        munmap(p, (size_t)len);
        return NULL;
    }
    s->segs[si].live_writer = 1;
    s->segs[si].base = p;
    s->segs[si].map_len = (size_t)len;
    s->own = si;
    *seg = (size_t)si;
    *offset = 0;
    return p;
}

static int put_locked(tc_store *s, const uint64_t *keys, size_t n, uint64_t dtype_word, int ndim,
                      const int64_t *shape, const uint8_t *src, size_t *stored, char *err,
                      size_t err_len)
{
    size_t itemsize = tc_store_itemsize(dtype_word);
    if (itemsize == 0) {
        set_err(err, err_len, "dtype word 0x%llx is not a whole number of bytes per element",
                (unsigned long long)dtype_word);
        return TC_STORE_EARG;
    }
    if (ndim < 0 || ndim > TC_STORE_MAX_NDIM) {
        set_err(err, err_len, "items have %d dimensions; the store keeps at most %d per item",
                ndim, TC_STORE_MAX_NDIM);
        return TC_STORE_EARG;
    }
    uint64_t item_bytes = itemsize;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(item_bytes, (uint64_t)shape[d], &item_bytes)) {
            set_err(err, err_len, "item shape is invalid or too large");
            return TC_STORE_EARG;
        }
    }
    if (s->stop_writing || s->full || n == 0)
        return TC_STORE_OK;

    put_batch b;
    memset(&b, 0, sizeof(b));
    b.recs = malloc(n * sizeof(staged)); /* n > 0 here */
    b.buffers = malloc(n * sizeof(void *));
    uint8_t(*headers)[REC_HEADER_BYTES] = malloc(n * REC_HEADER_BYTES);
    if (b.recs == NULL || b.buffers == NULL || headers == NULL) {
        free(b.recs);
        free(b.buffers);
        free(headers);
        /* storing is best effort: a put without memory stores nothing */
        fault(s, TC_FAULT_NOMEM, "out of memory staging %zu records", n);
        return TC_STORE_OK;
    }
    /* Bytes this call has staged but not yet written count against max_bytes. */
    uint64_t staged_bytes = 0;
    for (size_t i = 0; i < n && !s->stop_writing; i++) {
        uint64_t k0 = keys[2 * i], k1 = keys[2 * i + 1];
        if (entry_live(index_find(s, k0, k1)))
            continue;
        int dup = 0; /* a key twice in one batch is stored once */
        for (size_t j = 0; j < b.nrecs && !dup; j++)
            dup = b.recs[j].key0 == k0 && b.recs[j].key1 == k1;
        if (dup)
            continue;
        const uint8_t *payload = src + i * item_bytes;
        uint64_t stored_len = item_bytes;
        uint8_t flags = 0;
        void *zbuf = NULL;
        if (s->opt.compress && item_bytes > 0) {
            size_t cap = tc_zstd_bound((size_t)item_bytes);
            zbuf = malloc(cap); /* cap is 0 only without libzstd: compresses nothing */
            char zerr[200];
            size_t c = zbuf ? tc_zstd_compress(zbuf, cap, payload, (size_t)item_bytes,
                                               s->opt.zstd_level, s->opt.zstd_threads, zerr,
                                               sizeof(zerr))
                            : 0;
            if (c > 0 && c < item_bytes) {
                payload = zbuf;
                stored_len = c;
                flags = REC_FLAG_ZSTD;
            } else {
                free(zbuf); /* incompressible (or no memory): stored as is */
                zbuf = NULL;
            }
        }
        uint64_t total = REC_HEADER_BYTES + round_up(stored_len, REC_ALIGN);
        if (s->opt.max_bytes &&
            s->bytes_written + staged_bytes + total > s->opt.max_bytes) {
            free(zbuf);
            s->full = 1;
            break;
        }
        if (s->dir != NULL &&
            (b.niov + 3 > PUT_MAX_IOV || b.bytes + total > PUT_MAX_PENDING_BYTES)) {
            *stored += batch_flush(s, &b);
            staged_bytes = 0;
            if (s->stop_writing) {
                free(zbuf);
                break;
            }
        }
        /* This writer's segment is made at its first record, not at its first
         * put: a put whose keys are all stored already leaves no empty file. */
        if (s->dir != NULL && s->own < 0 && open_own_segment(s) < 0) {
            free(zbuf);
            break;
        }
        /* The record's place first: version 2 headers are bound to it. */
        size_t seg = 0;
        uint64_t off = 0;
        uint8_t *dst = NULL;
        if (s->dir == NULL) {
            dst = arena_reserve(s, total, &seg, &off);
            if (dst == NULL) {
                free(zbuf);
                stop_writing(s, "allocating arena memory", ENOMEM);
                break;
            }
        } else {
            seg = (size_t)s->own;
            off = s->segs[seg].file_len + b.bytes;
        }
        rec_header h;
        memset(&h, 0, sizeof(h));
        h.magic = REC_MAGIC;
        h.version = REC_VERSION;
        h.ndim = (uint8_t)ndim;
        h.flags = flags;
        h.key0 = k0;
        h.key1 = k1;
        h.dtype_word = dtype_word;
        h.raw_len = item_bytes;
        h.stored_len = stored_len;
        for (int d = 0; d < ndim; d++)
            h.shape[d] = shape[d];
        h.payload_sum = payload_checksum(payload, stored_len);
        h.header_sum = header_checksum(&h, s->segs[seg].id, off);
        uint8_t *hb = headers[b.nrecs];
        header_encode(&h, hb);
        uint64_t pad = total - REC_HEADER_BYTES - stored_len;

        if (s->dir == NULL) {
            memcpy(dst, hb, REC_HEADER_BYTES);
            /* An empty item's source may be NULL, which memcpy must not get. */
            if (stored_len)
                memcpy(dst + REC_HEADER_BYTES, payload, (size_t)stored_len);
            free(zbuf);
            s->segs[seg].file_len = off + total;
            if (index_insert(s, k0, k1, seg, off, item_bytes, ENTRY_VERIFIED) < 0) {
                stop_writing(s, "indexing a record", ENOMEM);
                break;
            }
            s->records_written++;
            s->bytes_written += total;
            (*stored)++;
            continue;
        }

        staged *r = &b.recs[b.nrecs++];
        r->key0 = k0;
        r->key1 = k1;
        r->offset = off;
        r->raw_len = item_bytes;
        r->total = total;
        if (zbuf)
            b.buffers[b.nbuffers++] = zbuf;
        b.iov[b.niov++] = (struct iovec){hb, REC_HEADER_BYTES};
        if (stored_len)
            b.iov[b.niov++] = (struct iovec){(void *)payload, (size_t)stored_len};
        if (pad)
            b.iov[b.niov++] = (struct iovec){(void *)zero_pad, (size_t)pad};
        b.bytes += total;
        staged_bytes += total;
    }
    if (s->dir != NULL)
        *stored += batch_flush(s, &b);
    batch_release(&b);
    free(b.recs);
    free(b.buffers);
    free(headers);
    return TC_STORE_OK;
}

int tc_store_put(tc_store *s, const uint64_t *keys, size_t n, uint64_t dtype_word, int ndim,
                 const int64_t *shape, const uint8_t *src, size_t *stored, char *err,
                 size_t err_len)
{
    *stored = 0;
    fork_check(s);
    pthread_rwlock_wrlock(&s->lock);
    int rc = s->closed ? closed_err(err, err_len)
                       : put_locked(s, keys, n, dtype_word, ndim, shape, src, stored, err,
                                    err_len);
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

int tc_store_refresh(tc_store *s, size_t *added, char *err, size_t err_len)
{
    *added = 0;
    fork_check(s);
    pthread_rwlock_wrlock(&s->lock);
    int rc = s->closed ? closed_err(err, err_len) : refresh_locked(s, added, 1, err, err_len);
    if (rc == TC_STORE_ENOMEM)
        rc = TC_STORE_OK; /* counted as a fault; the index stays as it was */
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* ---- verify ----------------------------------------------------------------- */

/* Walks one segment like segment_scan but from offset 0, checking every payload.
 * Read lock held: index entries change state only atomically (entry_kill). */
static void segment_verify(tc_store *s, size_t si, tc_store_verify_result *r,
                           tc_store_problem_fn problem, void *ctx, uint8_t *buf)
{
    segment *g = &s->segs[si];
    window w = {buf, SCAN_WINDOW_BYTES, 0, 0, -1, 0};
    if (g->path != NULL && (w.fd = seg_acquire(s, si)) < 0)
        return;
    uint64_t off = 0, len = g->file_len;
    int kind = NO_FAULT, errnum = 0;
    while (off + REC_HEADER_BYTES <= len) {
        const uint8_t *b = win_get(g, &w, off, REC_HEADER_BYTES, SCAN_WINDOW_BYTES, &kind, &errnum);
        if (b == NULL)
            break;
        rec_header h;
        header_decode(b, &h);
        uint64_t total = 0;
        const char *why = NULL;
        int rc = header_validate(&h, g->id, off, len - off, &total, &why);
        if (rc == HDR_SHORT) {
            /* A header that checks over a payload not yet all there: a write in
             * progress or a writer that died (section 6).  Never served. */
            r->torn++;
            if (problem)
                problem(ctx, g->name, si, off,
                        "record runs past the end of the segment (torn tail or write in "
                        "progress)");
            break;
        }
        if (rc == HDR_BAD) {
            r->corrupt++;
            if (problem)
                problem(ctx, g->name, si, off, why);
            /* Resynchronise as the scan does, through the whole file (a budget
             * of twice its length never runs out): holes are skipped. */
            int more;
            resync_search(g, &w, off + REC_ALIGN, 2 * len, &off, &more, &kind, &errnum);
            continue;
        }
        entry *e = index_find(s, h.key0, h.key1);
        int indexed_here = e != NULL && e->seg == si + 1 && e->offset == off;
        int ok = payload_verify(s, si, off, &h);
        if (ok < 0)
            break; /* a fault (counted): the rest of this segment is not judged */
        if (!ok) {
            r->corrupt++;
            if (problem)
                problem(ctx, g->name, si, off, "payload checksum mismatch");
            if (indexed_here)
                entry_kill(s, e, 1);
        } else {
            r->records++;
            r->bytes += total;
            if (indexed_here)
                __atomic_fetch_or(&e->state, ENTRY_VERIFIED, __ATOMIC_ACQ_REL);
        }
        off += total;
    }
    if (g->path != NULL)
        seg_release(s, si);
    if (kind != NO_FAULT)
        fault(s, kind, "reading segment %s: %s", g->path, strerror(errnum));
}

int tc_store_verify(tc_store *s, tc_store_verify_result *r, tc_store_problem_fn problem,
                    void *ctx, char *err, size_t err_len)
{
    memset(r, 0, sizeof(*r));
    fork_check(s);
    pthread_rwlock_wrlock(&s->lock);
    size_t added = 0;
    int rc = s->closed ? closed_err(err, err_len) : refresh_locked(s, &added, 1, err, err_len);
    pthread_rwlock_unlock(&s->lock);
    if (rc != TC_STORE_OK)
        return rc;
    uint8_t *buf = malloc(SCAN_WINDOW_BYTES);
    if (buf == NULL) {
        set_err(err, err_len, "out of memory");
        return TC_STORE_ENOMEM;
    }
    /* The walk reads payloads: only the read lock, so lookups and gathers go on. */
    pthread_rwlock_rdlock(&s->lock);
    if (s->closed) {
        rc = closed_err(err, err_len);
    } else {
        for (size_t si = 0; si < s->nsegs; si++) {
            if (s->segs[si].ignored || s->segs[si].gone)
                continue;
            segment_verify(s, si, r, problem, ctx, buf);
            r->segments++;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    free(buf);
    return rc;
}

int tc_store_stats_get(tc_store *s, tc_store_stats *st)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    memset(st, 0, sizeof(*st));
    st->records = __atomic_load_n(&s->records, __ATOMIC_RELAXED);
    for (size_t i = 0; i < s->nsegs; i++)
        st->segments += !s->segs[i].ignored && !s->segs[i].gone;
    st->corrupt = __atomic_load_n(&s->corrupt, __ATOMIC_RELAXED);
    st->bytes_written = s->bytes_written;
    st->records_written = s->records_written;
    st->bytes_indexed = __atomic_load_n(&s->bytes_indexed, __ATOMIC_RELAXED);
    st->refreshes = s->refreshes;
    st->readdirs = s->readdirs;
    st->idle_rechecks = s->idle_rechecks;
    st->skipped = s->skipped;
    st->gone = __atomic_load_n(&s->gone, __ATOMIC_RELAXED);
    pthread_mutex_lock(&s->fd_lock);
    st->open_fds = s->nopen + (s->own >= 0 && s->dir != NULL);
    pthread_mutex_unlock(&s->fd_lock);
    for (int k = 0; k < TC_FAULT_KINDS; k++)
        st->faults[k] = __atomic_load_n(&s->faults[k], __ATOMIC_RELAXED);
    st->full = s->full;
    int closed = s->closed;
    pthread_rwlock_unlock(&s->lock);
    return closed ? TC_STORE_ECLOSED : TC_STORE_OK;
}

int tc_store_io_error(tc_store *s, char *buf, size_t len)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    int have = s->io_error[0] != '\0';
    if (have)
        snprintf(buf, len, "%s", s->io_error);
    pthread_rwlock_unlock(&s->lock);
    return have;
}

int tc_store_faults_pending(tc_store *s)
{
    for (int k = 0; k < TC_FAULT_KINDS; k++)
        if (__atomic_load_n(&s->faults[k], __ATOMIC_RELAXED) !=
            __atomic_load_n(&s->reported[k], __ATOMIC_RELAXED))
            return 1;
    return 0;
}

uint64_t tc_store_fault_take(tc_store *s, int kind, char *buf, size_t len)
{
    if (kind < 0 || kind >= TC_FAULT_KINDS)
        return 0;
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    pthread_mutex_lock(&s->fault_lock);
    uint64_t now = __atomic_load_n(&s->faults[kind], __ATOMIC_RELAXED);
    uint64_t news = now - s->reported[kind];
    __atomic_store_n(&s->reported[kind], now, __ATOMIC_RELAXED);
    if (news && len > 0) /* buf may be NULL only with len 0 */
        snprintf(buf, len, "%s", s->fault_msg[kind]);
    pthread_mutex_unlock(&s->fault_lock);
    pthread_rwlock_unlock(&s->lock);
    return news;
}

/* ---- compaction (docs/multiprocess.md, "Compaction") ------------------------ */

/* The keys already written to the merged segment: open addressing, no deletes. */
typedef struct {
    uint64_t *keys; /* pairs; (0, 0) marks an empty slot, so that key is kept aside */
    size_t n, used;
    int have_zero;
} key_set;

/* 1 if added, 0 if present, -1 without memory. */
static int key_set_add(key_set *k, uint64_t k0, uint64_t k1)
{
    if (k0 == 0 && k1 == 0) {
        int had = k->have_zero;
        k->have_zero = 1;
        return !had;
    }
    if ((k->used + 1) * 2 > k->n) {
        size_t n = k->n ? 2 * k->n : 1024;
        uint64_t *keys = calloc(2 * n, sizeof(uint64_t));
        if (keys == NULL)
            return -1;
        for (size_t i = 0; i < k->n; i++) {
            if (k->keys[2 * i] == 0 && k->keys[2 * i + 1] == 0)
                continue;
            size_t j = (size_t)tc_fmix64(k->keys[2 * i] ^ (k->keys[2 * i + 1] * GAMMA)) & (n - 1);
            while (keys[2 * j] != 0 || keys[2 * j + 1] != 0)
                j = (j + 1) & (n - 1);
            keys[2 * j] = k->keys[2 * i];
            keys[2 * j + 1] = k->keys[2 * i + 1];
        }
        free(k->keys);
        k->keys = keys;
        k->n = n;
    }
    size_t j = (size_t)tc_fmix64(k0 ^ (k1 * GAMMA)) & (k->n - 1);
    for (;; j = (j + 1) & (k->n - 1)) {
        if (k->keys[2 * j] == k0 && k->keys[2 * j + 1] == k1)
            return 0;
        if (k->keys[2 * j] == 0 && k->keys[2 * j + 1] == 0)
            break;
    }
    k->keys[2 * j] = k0;
    k->keys[2 * j + 1] = k1;
    k->used++;
    return 1;
}

/* Shared with store_index.c (declared in store.h). */
int tc_store_write_fully(int fd, const void *p, size_t n, uint64_t off)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = pwrite(fd, b, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return -1;
        }
        b += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Copies the verified records of segment si whose keys are new to `seen` to
 * out_fd at *out_off.  A record is copied chunk by chunk while its payload
 * checksum is computed; one that fails is overwritten by the next.  Returns 1
 * (walked to its end), 0 (walked in part: keep the segment), or -1 with err set
 * (a write failed or no memory: the merge is abandoned). */
/* The records written to a merged segment, for its index file. */
typedef struct {
    tc_index_entry *e;
    size_t n, cap;
    int failed; /* out of memory: no index (the segment is scanned instead) */
} index_list;

static void index_list_add(index_list *l, uint64_t k0, uint64_t k1, uint64_t off,
                           uint64_t raw_len)
{
    if (l->failed)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 1024;
        tc_index_entry *e = realloc(l->e, cap * sizeof(*e));
        if (e == NULL) {
            l->failed = 1;
            return;
        }
        l->e = e;
        l->cap = cap;
    }
    l->e[l->n++] = (tc_index_entry){k0, k1, off, raw_len};
}

static int compact_segment(tc_store *s, size_t si, key_set *seen, int out_fd, uint64_t out_id,
                           uint64_t *out_off, uint8_t *chunk, tc_store_compact_result *r,
                           index_list *il, char *err, size_t err_len)
{
    segment *g = &s->segs[si];
    window w = {s->scan_buf, SCAN_WINDOW_BYTES, 0, 0, -1, 0};
    if ((w.fd = seg_acquire(s, si)) < 0)
        return 0;
    int rc = 0, kind = NO_FAULT, errnum = 0, more;
    uint64_t off = 0;
    while (off + REC_HEADER_BYTES <= g->file_len) {
        const uint8_t *b = win_get(g, &w, off, REC_HEADER_BYTES, SCAN_WINDOW_BYTES, &kind, &errnum);
        if (b == NULL)
            break;
        uint8_t hb[REC_HEADER_BYTES];
        memcpy(hb, b, sizeof(hb));
        rec_header h;
        header_decode(hb, &h);
        uint64_t total = 0;
        int hc = header_check(&h, g->id, off, g->file_len - off, &total);
        if (hc == HDR_SHORT) {
            off = g->file_len; /* a torn tail: its writer is gone, it ends the walk */
            break;
        }
        if (hc == HDR_BAD) {
            /* not found: at the end, or stopped early (a read, the budget) */
            if (!resync_search(g, &w, off + REC_ALIGN, RESYNC_BUDGET_BYTES, &off, &more,
                               &kind, &errnum))
                break;
            continue;
        }
        int fresh = key_set_add(seen, h.key0, h.key1);
        if (fresh < 0) {
            set_err(err, err_len, "out of memory merging %s", s->dir);
            rc = -1;
            break;
        }
        if (fresh) {
            /* header (bound again to its new place), payload in chunks
             * (checksummed on the way), padding */
            uint64_t sum = payload_sum_begin(h.stored_len), start = *out_off;
            h.version = REC_VERSION;
            h.header_sum = header_checksum(&h, out_id, start);
            header_encode(&h, hb);
            if (tc_store_write_fully(out_fd, hb, sizeof(hb), start) < 0) {
                set_err(err, err_len, "writing the merged segment in %s: %s", s->dir,
                        strerror(errno));
                rc = -1;
                break;
            }
            int ok = 1;
            for (uint64_t done = 0; done < h.stored_len;) {
                size_t len = h.stored_len - done < VERIFY_CHUNK_BYTES
                                 ? (size_t)(h.stored_len - done) : VERIFY_CHUNK_BYTES;
                struct iovec iov = {chunk, len};
                if ((kind = read_fully(w.fd, &iov, 1, off + REC_HEADER_BYTES + done,
                                       &errnum)) != NO_FAULT) {
                    ok = 0;
                    break;
                }
                sum = tc_store_sum_feed(sum, chunk, len);
                if (tc_store_write_fully(out_fd, chunk, len, start + REC_HEADER_BYTES + done) <
                    0) {
                    set_err(err, err_len, "writing the merged segment in %s: %s", s->dir,
                            strerror(errno));
                    rc = -1;
                    break;
                }
                done += len;
            }
            if (rc < 0)
                break;
            if (ok == 1 && sum == h.payload_sum) {
                uint64_t pad = total - REC_HEADER_BYTES - h.stored_len;
                if (pad && tc_store_write_fully(out_fd, zero_pad, (size_t)pad,
                                       start + REC_HEADER_BYTES + h.stored_len) < 0) {
                    set_err(err, err_len, "writing the merged segment in %s: %s", s->dir,
                            strerror(errno));
                    rc = -1;
                    break;
                }
                *out_off = start + total;
                index_list_add(il, h.key0, h.key1, start, h.raw_len);
                r->records++;
                r->bytes += total;
            } else {
                r->dropped++;
            }
            if (kind != NO_FAULT)
                break;
        } else {
            r->duplicates++;
        }
        off += total;
    }
    seg_release(s, si);
    if (rc < 0)
        return -1;
    /* A segment walked only in part (a read that failed or came up short, a
     * resync budget spent) may hold records that were not merged: it must not
     * be removed.  Walked to its end means no header fits after `off`. */
    return kind == NO_FAULT && off + REC_HEADER_BYTES > g->file_len ? 1 : 0;
}

int tc_store_compact(const char *dir, int64_t min_idle_s, tc_store_compact_result *r,
                     char *merged, size_t merged_len, char *err, size_t err_len)
{
    memset(r, 0, sizeof(*r));
    if (merged_len) /* merged may be NULL only with merged_len 0 */
        merged[0] = '\0';
    tc_store_options opt = {0};
    tc_store *s = NULL;
    int rc = tc_store_open(dir, &opt, &s, err, err_len);
    if (rc != TC_STORE_OK)
        return rc;
    pthread_rwlock_wrlock(&s->lock);
    int64_t now_wall = wall_ns();
    int64_t idle_ns = min_idle_s * 1000000000LL;
    size_t *victims = calloc(s->nsegs ? s->nsegs : 1, sizeof(size_t));
    uint8_t *chunk = malloc(VERIFY_CHUNK_BYTES);
    key_set seen = {0};
    index_list il = {0};
    size_t nv = 0;
    char tmp_path[PATH_MAX] = "", final_path[PATH_MAX] = "";
    int out_fd = -1;
    if (victims == NULL || chunk == NULL) {
        set_err(err, err_len, "out of memory");
        rc = TC_STORE_ENOMEM;
        goto done;
    }
    for (size_t si = 0; si < s->nsegs; si++) {
        segment *g = &s->segs[si];
        if (g->ignored || g->gone)
            continue;
        r->segments++;
        if (tc_store_writer_may_append(g->name, g->mtime_ns, now_wall, idle_ns, s->host))
            r->live++;
        else
            victims[nv++] = si;
    }
    if (nv < 2) {
        r->kept = r->segments;
        goto done; /* nothing to merge */
    }
    uint64_t rnd = random64();
    char name[160];
    snprintf(name, sizeof(name), "seg-%s-%ld-%016llx.tcs", s->host, (long)getpid(),
             (unsigned long long)rnd);
    snprintf(final_path, sizeof(final_path), "%s/%s", dir, name);
    snprintf(tmp_path, sizeof(tmp_path), "%s/.%s.compact.tmp", dir, name);
    out_fd = fd_above_stdio(
        open(tmp_path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666));
    if (out_fd < 0) {
        set_err(err, err_len, "cannot create %s: %s", tmp_path, strerror(errno));
        tmp_path[0] = '\0';
        rc = TC_STORE_EIO;
        goto done;
    }
    uint64_t out_off = 0;
    for (size_t v = 0; v < nv; v++) {
        int walked = compact_segment(s, victims[v], &seen, out_fd, segment_id(name), &out_off,
                                     chunk, r, &il, err, err_len);
        if (walked < 0) {
            rc = TC_STORE_EIO;
            goto done;
        }
        if (!walked)
            s->segs[victims[v]].live_writer = -1; /* marks it: not to be removed */
    }
    /* Durable before anything is removed: the data, then the name. */
    if (ftruncate(out_fd, (off_t)out_off) < 0 || fsync(out_fd) < 0 ||
        rename(tmp_path, final_path) < 0) {
        set_err(err, err_len, "cannot complete the merged segment %s: %s", final_path,
                strerror(errno));
        rc = TC_STORE_EIO;
        goto done;
    }
    tmp_path[0] = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0) {
        set_err(err, err_len, "cannot sync directory %s: %s", dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        rc = TC_STORE_EIO;
        goto done;
    }
    if (merged_len)
        snprintf(merged, merged_len, "%s", name);
    /* its index file, so that the next open reads the merged records without a
     * scan (after the rename: an index never names a segment that is not there) */
    struct stat ost;
    uint64_t il_raw = 0;
    for (size_t i = 0; i < il.n; i++)
        il_raw += il.e[i].raw_len;
    if (!il.failed && index_worth(il.n, il_raw) && fstat(out_fd, &ost) == 0) {
        tc_index_head head = {segment_id(name), (uint64_t)ost.st_ino, out_off, il.n, 0};
        tc_index_write(dir, name, &head, il.e, 0);
    }
    /* Remove a merged segment only if it is still the file we read, unchanged. */
    for (size_t v = 0; v < nv; v++) {
        segment *g = &s->segs[victims[v]];
        struct stat st;
        if (g->live_writer != -1 &&
            fstatat(AT_FDCWD, g->path, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == g->dev &&
            st.st_ino == g->ino && (uint64_t)st.st_size == g->file_len &&
            mtime_of(&st) == g->mtime_ns &&
            !tc_store_writer_may_append(g->name, g->mtime_ns, wall_ns(), idle_ns, s->host) &&
            unlink(g->path) == 0) {
            r->removed++;
            tc_index_remove(dir, g->name);
        } else {
            r->kept++;
        }
    }
    r->kept += r->segments - nv;
    fsync(dfd);
    close(dfd);
done:
    if (out_fd >= 0)
        close(out_fd);
    if (tmp_path[0])
        unlink(tmp_path);
    pthread_rwlock_unlock(&s->lock);
    free(seen.keys);
    free(il.e);
    free(chunk);
    free(victims);
    tc_store_free(s);
    return rc;
}

/* ---- records held in memory (issue 15: the object-store tier) ----------------
 * A record fetched from elsewhere (an object store, docs/remote.md) is checked
 * exactly as a local read checks it: header_validate bound to the segment it
 * was written in and its offset there, then payload_sum over its stored bytes.
 * Nothing above this section calls these functions. */

uint64_t tc_store_segment_id(const char *name)
{
    return segment_id(name);
}

int tc_store_record_parse(const uint8_t *buf, size_t len, uint64_t seg_id, uint64_t offset,
                          int check_payload, tc_store_record *r, char *err, size_t err_len)
{
    memset(r, 0, sizeof(*r));
    if (len < REC_HEADER_BYTES) {
        set_err(err, err_len, "record truncated: %zu bytes, a header needs %d", len,
                REC_HEADER_BYTES);
        return TC_STORE_ECORRUPT;
    }
    rec_header h;
    header_decode(buf, &h);
    uint64_t total = 0;
    const char *why = NULL;
    int v = header_validate(&h, seg_id, offset, (uint64_t)len, &total, &why);
    if (v == HDR_BAD) {
        set_err(err, err_len, "bad record header: %s", why); /* set on HDR_BAD */
        return TC_STORE_ECORRUPT;
    }
    if (v == HDR_SHORT) {
        set_err(err, err_len, "record truncated: %zu bytes of a record of %llu", len,
                (unsigned long long)(REC_HEADER_BYTES + round_up(h.stored_len, REC_ALIGN)));
        return TC_STORE_ECORRUPT;
    }
    if (check_payload &&
        payload_checksum(buf + REC_HEADER_BYTES, h.stored_len) != h.payload_sum) {
        set_err(err, err_len, "payload checksum mismatch");
        return TC_STORE_ECORRUPT;
    }
    r->key0 = h.key0;
    r->key1 = h.key1;
    r->dtype_word = h.dtype_word;
    r->raw_len = h.raw_len;
    r->stored_len = h.stored_len;
    r->total = total;
    r->compressed = (h.flags & REC_FLAG_ZSTD) != 0;
    r->version = h.version;
    r->ndim = h.ndim;
    for (int d = 0; d < TC_STORE_MAX_NDIM; d++)
        r->shape[d] = h.shape[d];
    return TC_STORE_OK;
}

int tc_store_record_payload(const uint8_t *buf, const tc_store_record *r, uint8_t *dest,
                            size_t dest_len, char *err, size_t err_len)
{
    if (dest_len != r->raw_len) {
        set_err(err, err_len, "destination holds %zu bytes, the item %llu", dest_len,
                (unsigned long long)r->raw_len);
        return TC_STORE_EARG;
    }
    const uint8_t *payload = buf + REC_HEADER_BYTES;
    if (!r->compressed) {
        if (dest_len)
            memcpy(dest, payload, dest_len);
        return TC_STORE_OK;
    }
    char zerr[200] = "";
    if (tc_zstd_decompress(dest, (size_t)r->raw_len, payload, (size_t)r->stored_len, zerr,
                           sizeof(zerr)) != 0) {
        set_err(err, err_len, "cannot decompress a record (%s); install libzstd (apt-get "
                "install libzstd1, or conda install zstd)", zerr);
        return TC_STORE_EZSTD;
    }
    return TC_STORE_OK;
}
