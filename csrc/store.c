/* store.c -- the append-only segment store of docs/format.md: records, the
 * in-memory index, lookup, gather, put and the scan for other writers.
 *
 * It owns the segment files of one directory (or the chunks of an anonymous
 * arena), their read-only mappings and an open-addressing index from a 128-bit
 * key to (segment, offset).  It never includes Python.h, never takes a lock on
 * a file (each writer appends only to its own segment, docs/format.md section
 * 5) and never serves a record whose checksums have not verified (section 6).
 * Errors are negative TC_STORE_E* codes with a message; nothing here aborts. */
#include "store.h"
#include "hash.h"
#include "zstd_dl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* docs/format.md, section 3. */
#define REC_MAGIC 0x31524354u /* "TCR1" as little-endian bytes */
#define REC_VERSION 1
#define REC_HEADER_BYTES 128
#define REC_ALIGN 64          /* payloads start on a cache line, section 2 */
#define REC_FLAG_ZSTD 1u
#define HEADER_SEED 0x74637368647231ULL  /* "tcshdr1" */
#define PAYLOAD_SEED 0x7463737061793176ULL /* "tcspay1v" */
#define GAMMA 0x9E3779B97F4A7C15ULL

/* A put writes at most this many iovecs or bytes per pwritev (IOV_MAX is 1024 on Linux). */
#define PUT_MAX_IOV 1020
#define PUT_MAX_PENDING_BYTES (256u << 20)
/* Arena chunks: anonymous mappings touched only as records are written. */
#define ARENA_CHUNK_BYTES (64u << 20)

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

_Static_assert(sizeof(rec_header) == REC_HEADER_BYTES, "record header is 128 bytes");
_Static_assert(REC_HEADER_BYTES % REC_ALIGN == 0, "payload stays aligned after the header");

typedef struct {
    char *name;        /* file name in the directory; NULL for an arena chunk */
    int fd;            /* -1 for an arena chunk */
    uint8_t *base;     /* read-only mapping (arena: read-write anonymous memory) */
    size_t map_len;    /* bytes mapped; may run past the end of the file */
    uint64_t file_len; /* bytes known to exist (arena: bytes used) */
    uint64_t scan_end; /* records parsed up to here */
    uint64_t resync_from; /* a bad header at scan_end was searched past up to here */
} segment;

enum { ENTRY_VERIFIED = 1u, ENTRY_DEAD = 2u };

typedef struct {
    uint64_t key0, key1;
    uint64_t offset;
    uint32_t seg;   /* segment index + 1; 0 marks an empty slot */
    uint32_t state; /* ENTRY_* bits, changed atomically under the read lock */
} entry;

struct tc_store {
    pthread_rwlock_t lock;
    pid_t pid;
    int closed;
    char *dir; /* NULL: arena */
    tc_store_options opt;
    segment *segs;
    size_t nsegs, cap_segs;
    long own; /* segment this store appends to, -1 before the first put */
    entry *slots;
    size_t nslots, nused; /* nused counts dead entries too: they keep probe chains */
    int stop_writing;
    char io_error[512];
    int full;
    uint64_t bytes_written, records_written, records, corrupt, bytes_indexed, refreshes;
    uint64_t last_refresh_ns;
    struct tc_store *fork_prev, *fork_next; /* the list of open stores, for fork */
    int in_fork_list;
};

static void set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_len, const char *fmt, ...)
{
    if (err == NULL || err_len == 0)
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

/* ---- checksums (docs/format.md, section 4) ---------------------------------- */

static uint64_t header_checksum(const rec_header *h)
{
    uint64_t w[REC_HEADER_BYTES / 8];
    memcpy(w, h, sizeof(w));
    w[7] = 0; /* the header_sum field itself */
    uint64_t a = HEADER_SEED;
    for (size_t i = 0; i < REC_HEADER_BYTES / 8; i++)
        a = tc_fmix64(a ^ w[i]) + GAMMA;
    return a;
}

static uint64_t payload_checksum(const uint8_t *p, uint64_t n)
{
    uint64_t s = tc_fmix64(PAYLOAD_SEED ^ n);
    for (uint64_t off = 0; off < n; off += TC_HASH_BLOCK_BYTES) {
        uint64_t len = n - off < TC_HASH_BLOCK_BYTES ? n - off : TC_HASH_BLOCK_BYTES;
        uint64_t h[2];
        tc_hash_block(p + off, (size_t)len, h);
        s = tc_fmix64(s ^ h[0]) + h[1];
    }
    return s;
}

/* ---- record validation (docs/format.md, section 6) -------------------------- */

enum { HDR_OK, HDR_SHORT, HDR_BAD };

/* Checks the header at h, with `avail` bytes of file from h on (>= 128).  On
 * HDR_OK *total is the record's length including padding; HDR_SHORT means the
 * header is valid but its payload is not all in the file yet.  On HDR_BAD,
 * *why (when why is not NULL) names the first check that failed. */
static int header_validate(const rec_header *h, uint64_t avail, uint64_t *total,
                           const char **why)
{
    const char *bad = NULL;
    if (h->magic != REC_MAGIC || h->version != REC_VERSION) {
        bad = "bad magic or version";
        goto out;
    }
    if (header_checksum(h) != h->header_sum) {
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

static int header_check(const rec_header *h, uint64_t avail, uint64_t *total)
{
    return header_validate(h, avail, total, NULL);
}

/* ---- the index: open addressing, linear probing ----------------------------- */

static size_t slot_of(const tc_store *s, uint64_t k0, uint64_t k1)
{
    return (size_t)tc_fmix64(k0 ^ (k1 * GAMMA)) & (s->nslots - 1);
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

static int index_grow(tc_store *s)
{
    size_t n = s->nslots ? s->nslots * 2 : 1024;
    entry *slots = calloc(n, sizeof(entry));
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
    free(old);
    return 0;
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
    const segment *g = &s->segs[e->seg - 1];
    __atomic_fetch_sub(&s->records, 1, __ATOMIC_RELAXED);
    /* Past the end of a shrunk file the header cannot be read. */
    if (e->offset + REC_HEADER_BYTES <= g->file_len) {
        const rec_header *h = (const rec_header *)(g->base + e->offset);
        __atomic_fetch_sub(&s->bytes_indexed, h->raw_len, __ATOMIC_RELAXED);
    }
    if (corrupt)
        __atomic_fetch_add(&s->corrupt, 1, __ATOMIC_RELAXED);
}

/* The header of a live entry.  Before its first use it is validated in full
 * again; after that (the entry is verified) only the fields that bound memory
 * reads are, which keeps a hit to a few loads (docs/format.md, section 6). */
static const rec_header *entry_header(const tc_store *s, const entry *e, int verified)
{
    const segment *g = &s->segs[e->seg - 1];
    if (e->offset + REC_HEADER_BYTES > g->file_len)
        return NULL;
    const rec_header *h = (const rec_header *)(g->base + e->offset);
    uint64_t avail = g->file_len - e->offset, total;
    if (h->key0 != e->key0 || h->key1 != e->key1)
        return NULL;
    if (verified)
        return h->magic == REC_MAGIC && h->stored_len <= avail - REC_HEADER_BYTES ? h : NULL;
    return header_check(h, avail, &total) == HDR_OK ? h : NULL;
}

/* A live, verified entry for the key, or NULL.  The payload checksum is checked
 * at the first use of a record, not at scan (docs/format.md, section 6). */
static entry *probe(tc_store *s, uint64_t k0, uint64_t k1, const rec_header **hdr)
{
    entry *e = index_find(s, k0, k1);
    if (!entry_live(e))
        return NULL;
    int verified = (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) & ENTRY_VERIFIED) != 0;
    const rec_header *h = entry_header(s, e, verified);
    if (h == NULL) {
        entry_kill(s, e, 1);
        return NULL;
    }
    if (!verified) {
        if (payload_checksum((const uint8_t *)h + REC_HEADER_BYTES, h->stored_len) !=
            h->payload_sum) {
            entry_kill(s, e, 1);
            return NULL;
        }
        __atomic_fetch_or(&e->state, ENTRY_VERIFIED, __ATOMIC_ACQ_REL);
    }
    if (hdr)
        *hdr = h;
    return e;
}

/* ---- segments --------------------------------------------------------------- */

static long segment_add(tc_store *s, char *name, int fd)
{
    if (s->nsegs == s->cap_segs) {
        size_t cap = s->cap_segs ? s->cap_segs * 2 : 16;
        segment *segs = realloc(s->segs, cap * sizeof(segment));
        if (segs == NULL)
            return -1;
        s->segs = segs;
        s->cap_segs = cap;
    }
    segment *g = &s->segs[s->nsegs];
    memset(g, 0, sizeof(*g));
    g->name = name;
    g->fd = fd;
    return (long)s->nsegs++;
}

/* Maps at least `need` bytes of a file segment.  The mapping may run past the
 * end of the file: those pages are never touched until the file has grown over
 * them, and a shared mapping sees the growth without a remap. */
static int segment_map(segment *g, uint64_t need, char *err, size_t err_len)
{
    if (need <= g->map_len)
        return 0;
    uint64_t len = need > 2 * (uint64_t)g->map_len ? need : 2 * (uint64_t)g->map_len;
    len = round_up(len < (1u << 20) ? (1u << 20) : len, (uint64_t)sysconf(_SC_PAGESIZE));
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, g->fd, 0);
    if (p == MAP_FAILED) {
        set_err(err, err_len, "cannot map segment %s: %s", g->name, strerror(errno));
        return -1;
    }
    if (g->base)
        munmap(g->base, g->map_len);
    g->base = p;
    g->map_len = (size_t)len;
    return 0;
}

/* Finds the next 64-byte aligned offset after a bad header that holds a header
 * which checks (docs/format.md, section 6: resynchronisation). */
static int segment_resync(segment *g, uint64_t *next)
{
    uint64_t o = g->resync_from > g->scan_end ? g->resync_from : g->scan_end + REC_ALIGN;
    for (; o + REC_HEADER_BYTES <= g->file_len; o += REC_ALIGN) {
        const rec_header *h = (const rec_header *)(g->base + o);
        uint64_t total;
        if (h->magic == REC_MAGIC && header_check(h, g->file_len - o, &total) != HDR_BAD) {
            *next = o;
            return 1;
        }
    }
    g->resync_from = o;
    return 0;
}

/* Indexes the records between scan_end and file_len.  A valid header whose
 * payload is not all there yet stops the scan: the writer may still be writing. */
static int segment_scan(tc_store *s, size_t si, size_t *added)
{
    for (;;) {
        segment *g = &s->segs[si];
        if (g->scan_end + REC_HEADER_BYTES > g->file_len)
            return 0;
        const rec_header *h = (const rec_header *)(g->base + g->scan_end);
        uint64_t total = 0;
        int rc = header_check(h, g->file_len - g->scan_end, &total);
        if (rc == HDR_SHORT)
            return 0;
        if (rc == HDR_BAD) {
            uint64_t next;
            if (!segment_resync(g, &next))
                return 0; /* maybe a write in progress; look again next time */
            s->corrupt++;
            g->scan_end = next;
            g->resync_from = 0;
            continue;
        }
        int ins = index_insert(s, h->key0, h->key1, si, g->scan_end, h->raw_len, 0);
        if (ins < 0)
            return -1;
        *added += (size_t)ins;
        g->scan_end += total;
    }
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

/* A segment that shrank was truncated behind our back (docs/format.md, section
 * 8): drop its records past the new end before anything reads them. */
static void segment_shrunk(tc_store *s, size_t si, uint64_t len)
{
    for (size_t i = 0; i < s->nslots; i++) {
        entry *e = &s->slots[i];
        if (e->seg == si + 1 && !(e->state & ENTRY_DEAD) && e->offset + REC_HEADER_BYTES > len) {
            e->state |= ENTRY_DEAD;
            s->records--;
            s->corrupt++;
        }
    }
    segment *g = &s->segs[si];
    g->file_len = len;
    if (g->scan_end > len)
        g->scan_end = len;
    g->resync_from = 0;
}

/* Picks up grown tails of known segments and new segment files.  Write lock held. */
static int refresh_locked(tc_store *s, size_t *added, char *err, size_t err_len)
{
    s->last_refresh_ns = now_ns();
    if (s->dir == NULL)
        return 0;
    s->refreshes++;
    for (size_t si = 0; si < s->nsegs; si++) {
        segment *g = &s->segs[si];
        if ((long)si == s->own)
            continue;
        struct stat st;
        if (fstat(g->fd, &st) < 0)
            continue;
        uint64_t len = (uint64_t)st.st_size;
        if (len < g->file_len) {
            segment_shrunk(s, si, len);
            continue;
        }
        if (len == g->file_len)
            continue;
        if (segment_map(g, len, err, err_len) < 0)
            return TC_STORE_EIO;
        g->file_len = len;
        if (segment_scan(s, si, added) < 0)
            goto nomem;
    }
    DIR *d = opendir(s->dir);
    if (d == NULL) {
        set_err(err, err_len, "cannot read cache directory %s: %s", s->dir, strerror(errno));
        return TC_STORE_EIO;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_segment_name(de->d_name))
            continue;
        int known = 0;
        for (size_t si = 0; si < s->nsegs && !known; si++)
            known = s->segs[si].name && strcmp(s->segs[si].name, de->d_name) == 0;
        if (known)
            continue;
        char *path = path_join(s->dir, de->d_name);
        char *name = strdup(de->d_name);
        if (path == NULL || name == NULL) {
            free(path);
            free(name);
            closedir(d);
            goto nomem;
        }
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        free(path);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            /* A link or a non-file under a segment's name is not ours to read. */
            if (fd >= 0)
                close(fd);
            free(name);
            continue;
        }
        long si = segment_add(s, name, fd);
        if (si < 0) {
            close(fd);
            free(name);
            closedir(d);
            goto nomem;
        }
        segment *g = &s->segs[si];
        if (st.st_size > 0) {
            if (segment_map(g, (uint64_t)st.st_size, err, err_len) < 0) {
                closedir(d);
                return TC_STORE_EIO;
            }
            g->file_len = (uint64_t)st.st_size;
            if (segment_scan(s, (size_t)si, added) < 0) {
                closedir(d);
                goto nomem;
            }
        }
    }
    closedir(d);
    return TC_STORE_OK;
nomem:
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
 * only for calls in progress, which never wait for the forking thread. */
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

static void fork_child(void)
{
    for (tc_store *s = fork_list; s != NULL; s = s->fork_next)
        pthread_rwlock_init(&s->lock, NULL);
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
 * its own (keeping the read-only mapping) and makes a new one at its first put.
 * (Its lock was re-made by fork_child.) */
static void fork_check(tc_store *s)
{
    pid_t pid = getpid();
    if (pid == s->pid)
        return;
    s->pid = pid;
    if (s->dir != NULL && s->own >= 0) {
        segment *g = &s->segs[s->own];
        g->scan_end = g->file_len;
        s->own = -1;
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
    char host[65] = "host";
    if (gethostname(host, sizeof(host) - 1) == 0) {
        host[sizeof(host) - 1] = '\0';
        for (char *c = host; *c; c++) {
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '.' || *c == '_'))
                *c = '_';
        }
    }
    if (host[0] == '\0')
        snprintf(host, sizeof(host), "host");
    char name[160];
    snprintf(name, sizeof(name), "seg-%s-%ld-%016llx.tcs", host, (long)getpid(),
             (unsigned long long)random64());
    char *path = path_join(s->dir, name);
    char *owned_name = strdup(name);
    if (path == NULL || owned_name == NULL) {
        free(path);
        free(owned_name);
        snprintf(s->io_error, sizeof(s->io_error), "out of memory creating a segment");
        s->stop_writing = 1;
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0) {
        snprintf(s->io_error, sizeof(s->io_error), "cannot create segment %s: %s", path,
                 strerror(errno));
        free(path);
        free(owned_name);
        s->stop_writing = 1;
        return -1;
    }
    free(path);
    long si = segment_add(s, owned_name, fd);
    if (si < 0) {
        close(fd);
        free(owned_name);
        snprintf(s->io_error, sizeof(s->io_error), "out of memory creating a segment");
        s->stop_writing = 1;
        return -1;
    }
    s->own = si;
    return 0;
}

/* ---- open / close ----------------------------------------------------------- */

static int make_dirs(const char *dir, char *err, size_t err_len)
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
            if (mkdir(p, 0777) < 0 && errno != EEXIST) {
                set_err(err, err_len, "cannot create cache directory %s: %s", p,
                        strerror(errno));
                free(p);
                return TC_STORE_EIO;
            }
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
    s->pid = getpid();
    s->own = -1;
    s->opt = *opt;
    if (dir != NULL) {
        int rc = make_dirs(dir, err, err_len);
        if (rc == TC_STORE_OK) {
            s->dir = strdup(dir);
            if (s->dir == NULL) {
                set_err(err, err_len, "out of memory");
                rc = TC_STORE_ENOMEM;
            }
        }
        size_t added = 0;
        if (rc == TC_STORE_OK)
            rc = refresh_locked(s, &added, err, err_len);
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
    for (size_t i = 0; i < s->nsegs; i++) {
        segment *g = &s->segs[i];
        if (g->base)
            munmap(g->base, g->map_len);
        if (g->fd >= 0)
            close(g->fd);
        free(g->name);
    }
    free(s->segs);
    s->segs = NULL;
    s->nsegs = s->cap_segs = 0;
    free(s->slots);
    s->slots = NULL;
    s->nslots = s->nused = 0;
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
    free(s->dir);
    free(s);
}

static int closed_err(char *err, size_t err_len)
{
    set_err(err, err_len, "store is closed");
    return TC_STORE_ECLOSED;
}

/* ---- lookup / entry_info / gather ------------------------------------------- */

int tc_store_lookup(tc_store *s, const uint64_t *keys, size_t n, uint8_t *present, char *err,
                    size_t err_len)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    if (s->closed) {
        pthread_rwlock_unlock(&s->lock);
        return closed_err(err, err_len);
    }
    size_t misses = 0;
    for (size_t i = 0; i < n; i++) {
        present[i] = probe(s, keys[2 * i], keys[2 * i + 1], NULL) != NULL;
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
            rc = refresh_locked(s, &added, err, err_len);
        if (rc == TC_STORE_OK) {
            for (size_t i = 0; i < n; i++) {
                if (!present[i])
                    present[i] = probe(s, keys[2 * i], keys[2 * i + 1], NULL) != NULL;
            }
        }
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

int tc_store_entry_info(tc_store *s, const uint64_t key[2], uint64_t *dtype_word, int *ndim,
                        int64_t shape[TC_STORE_MAX_NDIM], char *err, size_t err_len)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    int rc = TC_STORE_OK;
    const rec_header *h = NULL;
    if (s->closed) {
        rc = closed_err(err, err_len);
    } else if (probe(s, key[0], key[1], &h) == NULL) {
        set_err(err, err_len, "key (%lld, %lld) is not in the store", (long long)key[0],
                (long long)key[1]);
        rc = TC_STORE_EMISSING;
    } else {
        *dtype_word = h->dtype_word;
        *ndim = h->ndim;
        for (int d = 0; d < TC_STORE_MAX_NDIM; d++)
            shape[d] = h->shape[d];
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

int tc_store_gather(tc_store *s, const uint64_t *keys, size_t n, uint64_t dtype_word, int ndim,
                    const int64_t *shape, uint8_t *dest, size_t *bad_row, char *err,
                    size_t err_len)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    int rc = TC_STORE_OK;
    if (s->closed) {
        rc = closed_err(err, err_len);
        goto done;
    }
    /* The bytes of one dest row.  A verified record is re-checked only for the
     * fields that bound reads (entry_header); these two compares keep the copy
     * inside dest and inside the record even if its header was rewritten in
     * place after it verified (docs/format.md, section 8 says not to). */
    uint64_t item_bytes = tc_store_itemsize(dtype_word);
    for (int d = 0; d < ndim; d++) {
        if (__builtin_mul_overflow(item_bytes, (uint64_t)shape[d], &item_bytes))
            item_bytes = UINT64_MAX;
    }
    for (size_t i = 0; i < n; i++) {
        const rec_header *h = NULL;
        entry *e = probe(s, keys[2 * i], keys[2 * i + 1], &h);
        if (e == NULL) {
            *bad_row = i;
            set_err(err, err_len, "row %zu: key (%lld, %lld) is not in the store", i,
                    (long long)keys[2 * i], (long long)keys[2 * i + 1]);
            rc = TC_STORE_EMISSING;
            goto done;
        }
        if (!shape_equal(h, dtype_word, ndim, shape)) {
            *bad_row = i;
            char got[160];
            int pos = snprintf(got, sizeof(got), "dtype word 0x%llx, item shape (",
                               (unsigned long long)h->dtype_word);
            for (int d = 0; d < h->ndim && pos < (int)sizeof(got) - 24; d++)
                pos += snprintf(got + pos, sizeof(got) - (size_t)pos, "%s%lld",
                                d ? ", " : "", (long long)h->shape[d]);
            snprintf(got + pos, sizeof(got) - (size_t)pos, ")");
            set_err(err, err_len,
                    "row %zu: the stored record has %s, which differs from dest's dtype or "
                    "item shape", i, got);
            rc = TC_STORE_EMISMATCH;
            goto done;
        }
        if (h->raw_len != item_bytes ||
            (!(h->flags & REC_FLAG_ZSTD) && h->stored_len != h->raw_len)) {
            entry_kill(s, e, 1);
            *bad_row = i;
            set_err(err, err_len,
                    "row %zu: the record of key (%lld, %lld) changed on disk after it was "
                    "verified and is dropped; do not edit segments in use", i,
                    (long long)keys[2 * i], (long long)keys[2 * i + 1]);
            rc = TC_STORE_ECORRUPT;
            goto done;
        }
        uint8_t *row = dest + i * item_bytes;
        const uint8_t *payload = (const uint8_t *)h + REC_HEADER_BYTES;
        if (h->flags & REC_FLAG_ZSTD) {
            char zerr[200];
            if (tc_zstd_decompress(row, h->raw_len, payload, h->stored_len, zerr,
                                   sizeof(zerr)) < 0) {
                *bad_row = i;
                set_err(err, err_len,
                        "row %zu: cannot decompress the record (%s); install libzstd "
                        "(apt-get install libzstd1, or conda install zstd)", i, zerr);
                rc = TC_STORE_EZSTD;
                goto done;
            }
        } else if (h->raw_len) {
            memcpy(row, payload, h->raw_len);
        }
    }
done:
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* ---- put -------------------------------------------------------------------- */

typedef struct {
    uint64_t key0, key1;
    uint64_t offset, raw_len;
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
    if (!s->stop_writing)
        snprintf(s->io_error, sizeof(s->io_error), "%s: %s", what, strerror(errnum));
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
        while (niov > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            niov--;
        }
        if (niov > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    g->file_len = start + done;
    g->scan_end = g->file_len;
    size_t indexed = 0;
    char merr[200];
    if (segment_map(g, g->file_len, merr, sizeof(merr)) < 0) {
        snprintf(s->io_error, sizeof(s->io_error), "%s", merr);
        s->stop_writing = 1;
        batch_release(b);
        return 0;
    }
    for (size_t i = 0; i < b->nrecs; i++) {
        staged *r = &b->recs[i];
        if (r->offset >= start + done)
            break;
        const rec_header *h = (const rec_header *)(g->base + r->offset);
        uint64_t total;
        if (r->offset + REC_HEADER_BYTES > start + done ||
            header_check(h, start + done - r->offset, &total) != HDR_OK)
            break;
        int ins = index_insert(s, r->key0, r->key1, (size_t)s->own, r->offset, h->raw_len,
                               ENTRY_VERIFIED);
        if (ins < 0) {
            snprintf(s->io_error, sizeof(s->io_error), "out of memory indexing a record");
            s->stop_writing = 1;
            break;
        }
        indexed += (size_t)ins;
        s->records_written++;
        s->bytes_written += total;
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
    if (s->dir != NULL && s->own < 0 && open_own_segment(s) < 0)
        return TC_STORE_OK;

    put_batch b;
    memset(&b, 0, sizeof(b));
    b.recs = malloc((n ? n : 1) * sizeof(staged));
    b.buffers = malloc((n ? n : 1) * sizeof(void *));
    rec_header *headers = malloc((n ? n : 1) * sizeof(rec_header));
    if (b.recs == NULL || b.buffers == NULL || headers == NULL) {
        free(b.recs);
        free(b.buffers);
        free(headers);
        set_err(err, err_len, "out of memory");
        return TC_STORE_ENOMEM;
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
            zbuf = cap ? malloc(cap) : NULL;
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
        rec_header *h = &headers[b.nrecs];
        memset(h, 0, sizeof(*h));
        h->magic = REC_MAGIC;
        h->version = REC_VERSION;
        h->ndim = (uint8_t)ndim;
        h->flags = flags;
        h->key0 = k0;
        h->key1 = k1;
        h->dtype_word = dtype_word;
        h->raw_len = item_bytes;
        h->stored_len = stored_len;
        for (int d = 0; d < ndim; d++)
            h->shape[d] = shape[d];
        h->payload_sum = payload_checksum(payload, stored_len);
        h->header_sum = header_checksum(h);
        uint64_t pad = total - REC_HEADER_BYTES - stored_len;

        if (s->dir == NULL) {
            size_t seg;
            uint64_t off;
            uint8_t *dst = arena_reserve(s, total, &seg, &off);
            if (dst == NULL) {
                free(zbuf);
                stop_writing(s, "allocating arena memory", ENOMEM);
                break;
            }
            memcpy(dst, h, REC_HEADER_BYTES);
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
        r->offset = s->segs[s->own].file_len + b.bytes;
        r->raw_len = item_bytes;
        if (zbuf)
            b.buffers[b.nbuffers++] = zbuf;
        b.iov[b.niov++] = (struct iovec){h, REC_HEADER_BYTES};
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
    int rc = s->closed ? closed_err(err, err_len) : refresh_locked(s, added, err, err_len);
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

/* ---- verify ----------------------------------------------------------------- */

/* Walks one segment like segment_scan but from offset 0, checking every payload.
 * Read lock held: index entries change state only atomically (entry_kill). */
static void segment_verify(tc_store *s, size_t si, tc_store_verify_result *r,
                           tc_store_problem_fn problem, void *ctx)
{
    const segment *g = &s->segs[si];
    uint64_t off = 0, len = g->file_len;
    while (off + REC_HEADER_BYTES <= len) {
        const rec_header *h = (const rec_header *)(g->base + off);
        uint64_t total = 0;
        const char *why = NULL;
        int rc = header_validate(h, len - off, &total, &why);
        if (rc == HDR_SHORT) {
            /* A header that checks over a payload not yet all there: a write in
             * progress or a writer that died (section 6).  Never served. */
            r->torn++;
            if (problem)
                problem(ctx, g->name, si, off,
                        "record runs past the end of the segment (torn tail or write in "
                        "progress)");
            return;
        }
        if (rc == HDR_BAD) {
            r->corrupt++;
            if (problem)
                problem(ctx, g->name, si, off, why);
            /* Resynchronise as the scan does: the next aligned header that checks. */
            uint64_t o = off + REC_ALIGN;
            for (; o + REC_HEADER_BYTES <= len; o += REC_ALIGN) {
                const rec_header *n = (const rec_header *)(g->base + o);
                uint64_t t;
                if (n->magic == REC_MAGIC && header_check(n, len - o, &t) != HDR_BAD)
                    break;
            }
            off = o;
            continue;
        }
        const uint8_t *payload = (const uint8_t *)h + REC_HEADER_BYTES;
        entry *e = index_find(s, h->key0, h->key1);
        int indexed_here = e != NULL && e->seg == si + 1 && e->offset == off;
        if (payload_checksum(payload, h->stored_len) != h->payload_sum) {
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
}

int tc_store_verify(tc_store *s, tc_store_verify_result *r, tc_store_problem_fn problem,
                    void *ctx, char *err, size_t err_len)
{
    memset(r, 0, sizeof(*r));
    fork_check(s);
    pthread_rwlock_wrlock(&s->lock);
    size_t added = 0;
    int rc = s->closed ? closed_err(err, err_len) : refresh_locked(s, &added, err, err_len);
    pthread_rwlock_unlock(&s->lock);
    if (rc != TC_STORE_OK)
        return rc;
    /* The walk reads payloads: only the read lock, so lookups and gathers go on. */
    pthread_rwlock_rdlock(&s->lock);
    if (s->closed) {
        rc = closed_err(err, err_len);
    } else {
        for (size_t si = 0; si < s->nsegs; si++)
            segment_verify(s, si, r, problem, ctx);
        r->segments = s->nsegs;
    }
    pthread_rwlock_unlock(&s->lock);
    return rc;
}

int tc_store_stats_get(tc_store *s, tc_store_stats *st)
{
    fork_check(s);
    pthread_rwlock_rdlock(&s->lock);
    memset(st, 0, sizeof(*st));
    st->records = __atomic_load_n(&s->records, __ATOMIC_RELAXED);
    st->segments = s->nsegs;
    st->corrupt = __atomic_load_n(&s->corrupt, __ATOMIC_RELAXED);
    st->bytes_written = s->bytes_written;
    st->records_written = s->records_written;
    st->bytes_indexed = __atomic_load_n(&s->bytes_indexed, __ATOMIC_RELAXED);
    st->refreshes = s->refreshes;
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
