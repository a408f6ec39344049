/* store_faults.c -- the "fail the Nth call" loop of SQLite and RocksDB for the
 * store engine (.ci/faultinject.sh; linked with -Wl,--wrap for every call
 * below, so only calls made by the linked objects are counted).
 *
 * For each store operation (open, put to a directory and to the arena, lookup,
 * gather, refresh of new segments, verify, compact) and N = 1, 2, ...: the Nth
 * wrapped call fails (once, or that call and every later one), with an error
 * that call can really return (ENOMEM, EIO, ENOSPC, EMFILE, a short write or
 * read, EINTR).  The operation must return OK or a documented error code, and
 * then, with faults off, a fresh reader must verify the directory (at most a
 * torn tail per segment, nothing corrupt) and every row it serves must hold
 * exactly the bytes put for its key.  The loop ends at the first N the
 * operation finishes without reaching.  Run under ASan/UBSan. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the injector ----------------------------------------------------------- */

static long calls, fail_at;  /* fail_at 0: off */
static int forever, variant;

/* 1 if this call fails; *which tells the wrapper which of its errors to use. */
static int inject(int *which)
{
    if (fail_at == 0)
        return 0;
    calls++;
    if (calls == fail_at || (forever && calls > fail_at)) {
        *which = variant;
        return 1;
    }
    return 0;
}

void *__real_malloc(size_t);
void *__real_calloc(size_t, size_t);
void *__real_realloc(void *, size_t);
char *__real_strdup(const char *);
int __real_open(const char *, int, ...);
int __real_fstat(int, struct stat *);
int __real_fstatat(int, const char *, struct stat *, int);
ssize_t __real_pread(int, void *, size_t, off_t);
ssize_t __real_preadv(int, const struct iovec *, int, off_t);
ssize_t __real_pwritev(int, const struct iovec *, int, off_t);
ssize_t __real_pwrite(int, const void *, size_t, off_t);
DIR *__real_opendir(const char *);
struct dirent *__real_readdir(DIR *);
ssize_t __real_getrandom(void *, size_t, unsigned);
void *__real_mmap(void *, size_t, int, int, int, off_t);
int __real_fsync(int);
int __real_rename(const char *, const char *);
int __real_ftruncate(int, off_t);
off_t __real_lseek(int, off_t, int);

#define FAIL(ret, err)                                                                       \
    do {                                                                                     \
        errno = (err);                                                                       \
        return (ret);                                                                        \
    } while (0)

void *__wrap_malloc(size_t n)
{
    int w;
    if (inject(&w))
        FAIL(NULL, ENOMEM);
    return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t m)
{
    int w;
    if (inject(&w))
        FAIL(NULL, ENOMEM);
    return __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n)
{
    int w;
    if (inject(&w))
        FAIL(NULL, ENOMEM);
    return __real_realloc(p, n);
}
char *__wrap_strdup(const char *s)
{
    int w;
    if (inject(&w))
        FAIL(NULL, ENOMEM);
    return __real_strdup(s);
}
int __wrap_open(const char *path, int flags, ...)
{
    int w;
    if (inject(&w))
        FAIL(-1, w % 3 == 0 ? EMFILE : w % 3 == 1 ? EIO : ENOSPC);
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return __real_open(path, flags, mode);
}
int __wrap_fstat(int fd, struct stat *st)
{
    int w;
    if (inject(&w))
        FAIL(-1, EIO);
    return __real_fstat(fd, st);
}
int __wrap_fstatat(int dfd, const char *path, struct stat *st, int flags)
{
    int w;
    if (inject(&w))
        FAIL(-1, w % 2 ? EIO : EACCES);
    return __real_fstatat(dfd, path, st, flags);
}
ssize_t __wrap_pread(int fd, void *b, size_t n, off_t off)
{
    int w;
    if (inject(&w)) {
        if (w % 3 == 1 && n > 1) /* a short read, shorter than a header at most */
            return __real_pread(fd, b, n / 2 < 100 ? n / 2 : 100, off);
        if (w % 3 == 2 && calls == fail_at)
            FAIL(-1, EINTR); /* once: an EINTR for ever is not a thing */
        FAIL(-1, EIO);
    }
    return __real_pread(fd, b, n, off);
}
ssize_t __wrap_preadv(int fd, const struct iovec *iov, int n, off_t off)
{
    int w;
    if (inject(&w)) {
        if (w % 3 == 1 && iov[0].iov_len > 1) /* a short read */
            return __real_pread(fd, iov[0].iov_base, iov[0].iov_len / 2, off);
        if (w % 3 == 2 && calls == fail_at)
            FAIL(-1, EINTR);
        FAIL(-1, EIO);
    }
    return __real_preadv(fd, iov, n, off);
}
ssize_t __wrap_pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
    int w;
    if (inject(&w)) {
        if (w % 4 == 1 && iov[0].iov_len > 1) /* a short write */
            return __real_pwrite(fd, iov[0].iov_base, iov[0].iov_len / 2, off);
        if (w % 4 == 2 && calls == fail_at)
            FAIL(-1, EINTR);
        if (w % 4 == 3)
            return 0; /* a write of nothing */
        FAIL(-1, ENOSPC);
    }
    return __real_pwritev(fd, iov, n, off);
}
ssize_t __wrap_pwrite(int fd, const void *b, size_t n, off_t off)
{
    int w;
    if (inject(&w)) {
        if (w % 4 == 1 && n > 1)
            return __real_pwrite(fd, b, n / 2, off);
        if (w % 4 == 2 && calls == fail_at)
            FAIL(-1, EINTR);
        if (w % 4 == 3)
            return 0; /* a write of nothing */
        FAIL(-1, ENOSPC);
    }
    return __real_pwrite(fd, b, n, off);
}
DIR *__wrap_opendir(const char *path)
{
    int w;
    if (inject(&w))
        FAIL(NULL, w % 2 ? EMFILE : ENOENT);
    return __real_opendir(path);
}
struct dirent *__wrap_readdir(DIR *d)
{
    int w;
    if (inject(&w))
        FAIL(NULL, EIO);
    return __real_readdir(d);
}
ssize_t __wrap_getrandom(void *b, size_t n, unsigned flags)
{
    int w;
    if (inject(&w))
        FAIL(-1, EAGAIN);
    return __real_getrandom(b, n, flags);
}
void *__wrap_mmap(void *a, size_t n, int prot, int flags, int fd, off_t off)
{
    int w;
    if (inject(&w))
        FAIL(MAP_FAILED, ENOMEM);
    return __real_mmap(a, n, prot, flags, fd, off);
}
int __wrap_fsync(int fd)
{
    int w;
    if (inject(&w))
        FAIL(-1, EIO);
    return __real_fsync(fd);
}
int __wrap_rename(const char *a, const char *b)
{
    int w;
    if (inject(&w))
        FAIL(-1, EIO);
    return __real_rename(a, b);
}
int __wrap_ftruncate(int fd, off_t n)
{
    int w;
    if (inject(&w))
        FAIL(-1, EIO);
    return __real_ftruncate(fd, n);
}
off_t __wrap_lseek(int fd, off_t off, int whence)
{
    int w;
    if (inject(&w))
        FAIL(-1, EIO);
    return __real_lseek(fd, off, whence);
}

/* ---- the world -------------------------------------------------------------- */

#define NUMEL 41 /* 328 bytes: records carry padding */
#define PER 6 /* records per writer's segment */
#define BIG_PUT 700 /* more records than one pwritev takes (PUT_MAX_IOV / 3), and an index that grows */
static const uint64_t I64 = 0 | 64 << 8 | 1 << 16;
static const int64_t SHAPE[1] = {NUMEL};
static char root[64], dir[128], other[128];
static int failures;
static uint64_t world_corrupt; /* damaged records the world starts with */

static void check(int ok, const char *what, long n)
{
    if (!ok) {
        fprintf(stderr, "store_faults: %s (fault at call %ld, %s, variant %d)\n", what, n,
                forever ? "forever" : "once", variant);
        failures++;
    }
}

static void make_keys(uint64_t first, size_t n, uint64_t *keys, int64_t (*items)[NUMEL])
{
    for (size_t i = 0; i < n; i++) {
        keys[2 * i] = first + i;
        keys[2 * i + 1] = (first + i) * 31 + 5;
        for (int j = 0; j < NUMEL; j++)
            items[i][j] = (int64_t)(keys[2 * i] * 1000003u + (uint64_t)j * (keys[2 * i + 1] | 1));
    }
}

static void rm_dir(const char *path)
{
    DIR *d = __real_opendir(path);
    if (d == NULL)
        return;
    struct dirent *de;
    char p[512];
    while ((de = __real_readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(path);
}

/* Puts keys first..first+n-1 through a store of its own (a writer that then
 * goes away: for compaction, one whose pid is not running is needed, so the
 * caller forks). */
static void write_segment(const char *path, uint64_t first, size_t n)
{
    uint64_t keys[2 * 64];
    int64_t items[64][NUMEL];
    make_keys(first, n, keys, items);
    tc_store_options opt = {0};
    tc_store *s;
    char err[256];
    size_t stored;
    if (tc_store_open(path, &opt, &s, err, sizeof(err)) != TC_STORE_OK)
        abort();
    tc_store_put(s, keys, n, I64, 1, SHAPE, (const uint8_t *)items, &stored, err, sizeof(err));
    tc_store_free(s);
}

static void write_segment_in_child(const char *path, uint64_t first, size_t n)
{
    pid_t pid = fork();
    if (pid == 0) {
        write_segment(path, first, n);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
}

static char template_dir[128];

static void copy_file(const char *from, const char *to)
{
    int in = __real_open(from, O_RDONLY), out = __real_open(to, O_WRONLY | O_CREAT | O_EXCL, 0644);
    char buf[65536];
    ssize_t n;
    off_t off = 0;
    if (in < 0 || out < 0)
        abort();
    while ((n = __real_pread(in, buf, sizeof(buf), off)) > 0) {
        if (__real_pwrite(out, buf, (size_t)n, off) != n)
            abort();
        off += n;
    }
    close(in);
    close(out);
}

static void copy_dir(const char *from, const char *to)
{
    mkdir(to, 0777);
    DIR *d = __real_opendir(from);
    if (d == NULL)
        abort();
    struct dirent *de;
    char a[512], b[512];
    while ((de = __real_readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(a, sizeof(a), "%s/%s", from, de->d_name);
        snprintf(b, sizeof(b), "%s/%s", to, de->d_name);
        copy_file(a, b);
    }
    closedir(d);
}

/* The directory before each try: three finished writers' segments and a
 * fourth one damaged (a bad header the scan searches past, a bad payload),
 * made once by forked writers that exited, then copied under the same names. */
static void fresh_world(void)
{
    rm_dir(dir);
    rm_dir(other);
    copy_dir(template_dir, dir);
}

/* A fourth writer's segment, made once, added by copy. */
static char late_dir[128];

static void add_late_segment(void)
{
    DIR *d = __real_opendir(late_dir);
    struct dirent *de;
    char a[512], b[512];
    while (d != NULL && (de = __real_readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(a, sizeof(a), "%s/%s", late_dir, de->d_name);
        snprintf(b, sizeof(b), "%s/%s", dir, de->d_name);
        copy_file(a, b);
    }
    if (d != NULL)
        closedir(d);
}

/* With faults off: a fresh reader verifies the directory and serves only exact rows. */
static void check_directory(long n)
{
    tc_store_options opt = {0};
    tc_store *s;
    char err[256];
    check(tc_store_open(dir, &opt, &s, err, sizeof(err)) == TC_STORE_OK, "reopen", n);
    if (failures)
        return;
    tc_store_verify_result r;
    check(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK, "verify", n);
    check(r.corrupt <= world_corrupt, "more corrupt records after a fault", n);
    check(r.torn <= r.segments, "more than a torn tail per segment", n);
    uint64_t keys[2 * 200];
    int64_t items[200][NUMEL], dest[200][NUMEL];
    uint8_t served[200];
    make_keys(0, 200, keys, items);
    memset(dest, 0xab, sizeof(dest));
    check(tc_store_gather(s, keys, 200, I64, 1, SHAPE, (uint8_t *)dest, served, err,
                          sizeof(err)) == TC_STORE_OK, "gather after", n);
    for (int i = 0; i < 200; i++)
        check(!served[i] || memcmp(dest[i], items[i], sizeof(items[i])) == 0,
              "served bytes differ", n);
    for (int i = 0; i < 3 * PER; i++)
        check(served[i], "a record of a finished writer is not served", n);
    tc_store_free(s);
}

static int rc_ok(int rc)
{
    return rc == TC_STORE_OK || rc == TC_STORE_ENOMEM || rc == TC_STORE_EIO;
}

/* ---- the operations ---------------------------------------------------------- */

typedef int (*op_fn)(void);

static tc_store *prepared; /* opened with faults off, for the ops that need one */

static int op_open(void)
{
    tc_store_options opt = {0};
    tc_store *s = NULL;
    char err[256];
    int rc = tc_store_open(dir, &opt, &s, err, sizeof(err));
    if (rc == TC_STORE_OK) {
        uint64_t keys[2 * 3 * PER];
        int64_t items[3 * PER][NUMEL];
        uint8_t present[3 * PER];
        make_keys(0, 3 * PER, keys, items);
        rc = tc_store_lookup(s, keys, 3 * PER, present, err, sizeof(err));
        tc_store_free(s);
    }
    return rc;
}

static int put_into(const char *path, uint64_t first, size_t count, int lookup)
{
    tc_store_options opt = {0};
    opt.max_bytes = 0;
    tc_store *s = NULL;
    char err[256];
    fail_at = 0;
    int rc = tc_store_open(path, &opt, &s, err, sizeof(err));
    if (rc != TC_STORE_OK)
        return -100;
    static uint64_t keys[2 * BIG_PUT];
    static int64_t items[BIG_PUT][NUMEL], dest[BIG_PUT][NUMEL];
    static uint8_t present[BIG_PUT], served[BIG_PUT];
    make_keys(first, count, keys, items);
    size_t stored = 0;
    extern long armed_at;
    fail_at = armed_at;
    rc = tc_store_put(s, keys, count, I64, 1, SHAPE, (const uint8_t *)items, &stored, err,
                      sizeof(err));
    if (rc == TC_STORE_OK && lookup)
        rc = tc_store_lookup(s, keys, count, present, err, sizeof(err));
    if (rc == TC_STORE_OK)
        rc = tc_store_gather(s, keys, count, I64, 1, SHAPE, (uint8_t *)dest, served, err,
                             sizeof(err));
    for (size_t i = 0; rc == TC_STORE_OK && i < count; i++)
        check(!served[i] || memcmp(dest[i], items[i], sizeof(items[i])) == 0,
              "own rows differ", fail_at);
    fail_at = 0;
    tc_store_free(s);
    return rc;
}

long armed_at;

static int op_put_dir(void)
{
    return put_into(dir, 100, 16, 1);
}

static int op_put_arena(void)
{
    return put_into(NULL, 100, 16, 1);
}

static int op_put_big(void)
{
    return put_into(dir, 1000, BIG_PUT, 0); /* no lookup: a read per record */
}

static int op_gather(void)
{
    uint64_t keys[2 * 3 * PER];
    int64_t items[3 * PER][NUMEL], dest[3 * PER][NUMEL];
    uint8_t served[3 * PER];
    make_keys(0, 3 * PER, keys, items);
    char err[256];
    int rc = tc_store_gather(prepared, keys, 3 * PER, I64, 1, SHAPE, (uint8_t *)dest, served,
                             err, sizeof(err));
    for (int i = 0; rc == TC_STORE_OK && i < 3 * PER; i++)
        check(!served[i] || memcmp(dest[i], items[i], sizeof(items[i])) == 0,
              "gathered rows differ", armed_at);
    return rc;
}

static int op_entry_info(void)
{
    uint64_t keys[2 * 4 * PER];
    int64_t items[4 * PER][NUMEL];
    make_keys(0, 4 * PER, keys, items);
    char err[256];
    for (int i = 0; i < 4 * PER; i++) {
        uint64_t dtype;
        int ndim;
        int64_t shape[TC_STORE_MAX_NDIM];
        int rc = tc_store_entry_info(prepared, keys + 2 * i, &dtype, &ndim, shape, err,
                                     sizeof(err));
        if (rc == TC_STORE_OK)
            check(dtype == I64 && ndim == 1 && shape[0] == NUMEL, "entry info differs", armed_at);
        else if (rc != TC_STORE_EMISSING)
            return rc;
    }
    return TC_STORE_OK;
}

static int op_lookup(void)
{
    uint64_t keys[2 * 4 * PER];
    int64_t items[4 * PER][NUMEL];
    uint8_t present[4 * PER];
    make_keys(0, 4 * PER, keys, items);
    char err[256];
    return tc_store_lookup(prepared, keys, 4 * PER, present, err, sizeof(err));
}

static int op_refresh(void)
{
    size_t added;
    char err[256];
    return tc_store_refresh(prepared, &added, err, sizeof(err));
}

static int op_verify(void)
{
    tc_store_verify_result r;
    char err[256];
    return tc_store_verify(prepared, &r, NULL, NULL, err, sizeof(err));
}

static int op_compact(void)
{
    tc_store_compact_result r;
    char err[256], merged[256];
    return tc_store_compact(dir, 0, &r, merged, sizeof(merged), err, sizeof(err));
}

static const struct {
    const char *name;
    op_fn fn;
    int needs_store;  /* open `prepared` (faults off) before arming */
    int new_segment;  /* a writer adds a segment after `prepared` opened */
    int arms_itself;  /* the op arms the injector after its own set-up */
    int compacted;    /* `prepared`'s segments are merged (faults off) before arming */
} ops[] = {
    {"open", op_open, 0, 0, 0, 0},
    {"put to a directory", op_put_dir, 0, 0, 1, 0},
    {"put to the arena", op_put_arena, 0, 0, 1, 0},
    {"put a large batch", op_put_big, 0, 0, 1, 0},
    {"lookup", op_lookup, 1, 1, 0, 0},
    {"entry info", op_entry_info, 1, 1, 0, 0},
    {"gather", op_gather, 1, 0, 0, 0},
    {"refresh", op_refresh, 1, 1, 0, 0},
    {"verify", op_verify, 1, 1, 0, 0},
    {"compact", op_compact, 0, 0, 0, 0},
    /* a reader whose segments a compaction merged: its rows come back through
     * the refresh that drops the removed segments and indexes the merged one */
    {"gather, compacted", op_gather, 1, 1, 0, 1},
    {"lookup, compacted", op_lookup, 1, 1, 0, 1},
    {"info, compacted", op_entry_info, 1, 0, 0, 1},
    {"refresh, compacted", op_refresh, 1, 0, 0, 1},
    {"verify, compacted", op_verify, 1, 0, 0, 1},
};

static int index_faults(void); /* the persisted index's block, at the end */

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/tc-faults-XXXXXX");
    if (mkdtemp(root) == NULL)
        return 2;
    snprintf(dir, sizeof(dir), "%s/cache", root);
    snprintf(other, sizeof(other), "%s/other", root);
    snprintf(template_dir, sizeof(template_dir), "%s/template", root);
    snprintf(late_dir, sizeof(late_dir), "%s/late", root);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int w = 0; w < 3; w++)
        write_segment_in_child(template_dir, (uint64_t)w * PER, PER);
    {
        char dmg[160], seg[512] = "", to[512];
        snprintf(dmg, sizeof(dmg), "%s/damaged", root);
        write_segment_in_child(dmg, 150, PER);
        DIR *d = __real_opendir(dmg);
        struct dirent *de;
        while (d != NULL && (de = __real_readdir(d)) != NULL) {
            if (de->d_name[0] != '.') {
                snprintf(seg, sizeof(seg), "%s/%s", dmg, de->d_name);
                snprintf(to, sizeof(to), "%s/%s", template_dir, de->d_name);
            }
        }
        if (d != NULL)
            closedir(d);
        const long rec = 128 + (NUMEL * 8 + 63) / 64 * 64;
        int fd = __real_open(seg, O_WRONLY, 0);
        if (fd < 0 || __real_pwrite(fd, "\xff\xff", 2, 2 * rec + 30) != 2 ||
            __real_pwrite(fd, "\x01\x02", 2, 4 * rec + 200) != 2)
            abort();
        close(fd);
        copy_file(seg, to);
        rm_dir(dmg);
        tc_store_options opt = {0};
        tc_store *s;
        char err[256];
        tc_store_verify_result r;
        if (tc_store_open(template_dir, &opt, &s, err, sizeof(err)) != TC_STORE_OK ||
            tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) != TC_STORE_OK || r.corrupt != 2)
            abort();
        world_corrupt = r.corrupt;
        tc_store_free(s);
    }
    write_segment_in_child(late_dir, 3 * PER, PER);
    long total = 0;
    for (size_t o = 0; o < sizeof(ops) / sizeof(ops[0]); o++) {
        for (forever = 0; forever <= 1; forever++) {
            long n;
            long made = 0;
            /* each N with each error its call can give (variants 0-3 cover
             * every wrapper's choice: they cycle through 2, 3 or 4 errors) */
            for (n = 1;; n++) {
              for (variant = 0; variant < 4; variant++) {
                fresh_world();
                tc_store_options opt = {0};
                char err[256];
                prepared = NULL;
                /* a compacted reader keeps one descriptor (RLIMIT_NOFILE 64), so
                 * it meets the removed segments instead of reading them
                 * through descriptors it holds */
                struct rlimit was, low;
                getrlimit(RLIMIT_NOFILE, &was);
                low = was;
                if (ops[o].compacted)
                    low.rlim_cur = 64;
                setrlimit(RLIMIT_NOFILE, &low);
                if (ops[o].needs_store &&
                    tc_store_open(dir, &opt, &prepared, err, sizeof(err)) != TC_STORE_OK)
                    abort();
                setrlimit(RLIMIT_NOFILE, &was);
                if (ops[o].compacted) {
                    tc_store_compact_result cr;
                    char merged[256];
                    if (tc_store_compact(dir, 0, &cr, merged, sizeof(merged), err,
                                         sizeof(err)) != TC_STORE_OK ||
                        cr.removed != 4)
                        abort();
                }
                if (ops[o].new_segment)
                    add_late_segment();
                calls = 0;
                armed_at = n;
                fail_at = ops[o].arms_itself ? 0 : n;
                int rc = ops[o].fn();
                made = calls;
                fail_at = 0;
                check(rc == -100 || rc_ok(rc), "unexpected return code", n);
                if (prepared)
                    tc_store_free(prepared);
                check_directory(n);
                total++;
                if (made < n || failures)
                    break; /* the operation finished before the Nth call */
              }
              if (made < n || failures)
                  break;
            }
            printf("store_faults: %-18s %-7s %4ld tries\n", ops[o].name,
                   forever ? "forever" : "once", n);
            if (failures)
                break;
        }
        if (failures)
            break;
    }
    if (!failures)
        total += index_faults();
    rm_dir(dir);
    rm_dir(other);
    rm_dir(template_dir);
    rm_dir(late_dir);
    rmdir(root);
    if (failures) {
        fprintf(stderr, "store_faults: %d failures\n", failures);
        return 1;
    }
    printf("store_faults: OK (%ld fault runs)\n", total);
    return 0;
}

/* ---- the persisted index (csrc/store_index.c, docs/format.md section 9) ------
 * A segment of IDX_N small records by a writer that exited: an open that scans
 * it writes its index file, an open that finds one reads it, and a writer's
 * close writes one for its own segment.  Each with its Nth wrapped call failing
 * (once, and for ever): the operation returns OK or a documented error, and
 * then, faults off, a fresh reader serves every record exactly, verifies
 * nothing corrupt and finds no temporary index file left behind. */

#define IDX_N 1100 /* above the 1024 records that get an index */
static char idx_plain[128];

static void idx_items(uint64_t first, size_t n, uint64_t **keys, int64_t (**items)[NUMEL])
{
    *keys = __real_malloc(n * 2 * sizeof(uint64_t));
    *items = __real_malloc(n * sizeof(**items));
    if (*keys == NULL || *items == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        uint64_t k0 = first + i, k1 = (first + i) * 31 + 5;
        (*keys)[2 * i] = k0;
        (*keys)[2 * i + 1] = k1;
        for (int j = 0; j < NUMEL; j++)
            (*items)[i][j] = (int64_t)(k0 * 1000003u + (uint64_t)j * (k1 | 1));
    }
}

static void idx_put(const char *path, uint64_t first, size_t n, tc_store **keep)
{
    uint64_t *keys;
    int64_t(*items)[NUMEL];
    idx_items(first, n, &keys, &items);
    tc_store_options opt = {0};
    tc_store *s;
    char err[256];
    size_t stored;
    if (tc_store_open(path, &opt, &s, err, sizeof(err)) != TC_STORE_OK ||
        tc_store_put(s, keys, n, I64, 1, SHAPE, (const uint8_t *)items, &stored, err,
                     sizeof(err)) != TC_STORE_OK || stored != n)
        abort();
    free(keys);
    free(items);
    if (keep)
        *keep = s;
    else
        tc_store_free(s);
}

static int idx_has(const char *prefix)
{
    DIR *d = __real_opendir(dir);
    struct dirent *de;
    int found = 0;
    while (d != NULL && (de = __real_readdir(d)) != NULL)
        found |= strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    if (d != NULL)
        closedir(d);
    return found;
}

/* With faults off: all of 0..n-1 served exactly, nothing corrupt, no temporary. */
static void idx_check(long at, size_t n)
{
    tc_store_options opt = {0};
    tc_store *s;
    char err[256];
    check(tc_store_open(dir, &opt, &s, err, sizeof(err)) == TC_STORE_OK, "index: reopen", at);
    if (failures)
        return;
    uint64_t *keys;
    int64_t(*items)[NUMEL];
    idx_items(0, n, &keys, &items);
    int64_t(*dest)[NUMEL] = __real_malloc(n * sizeof(*dest));
    uint8_t *served = __real_malloc(n);
    if (dest == NULL || served == NULL)
        abort();
    check(tc_store_gather(s, keys, n, I64, 1, SHAPE, (uint8_t *)dest, served, err,
                          sizeof(err)) == TC_STORE_OK, "index: gather after", at);
    size_t ok = 0;
    for (size_t i = 0; i < n; i++)
        ok += served[i] && memcmp(dest[i], items[i], sizeof(items[i])) == 0;
    check(ok == n, "index: a record is not served exactly after a fault", at);
    tc_store_verify_result r;
    check(tc_store_verify(s, &r, NULL, NULL, err, sizeof(err)) == TC_STORE_OK &&
              r.corrupt == 0, "index: corrupt records after a fault", at);
    check(!idx_has(".idx-"), "index: a temporary index file was left", at);
    free(keys);
    free(items);
    free(dest);
    free(served);
    tc_store_free(s);
}

static int idx_op_open(void)
{
    tc_store_options opt = {0};
    tc_store *s = NULL;
    char err[256];
    int rc = tc_store_open(dir, &opt, &s, err, sizeof(err));
    if (rc == TC_STORE_OK) {
        uint64_t *keys;
        int64_t(*items)[NUMEL];
        idx_items(0, 64, &keys, &items);
        uint8_t present[64];
        rc = tc_store_lookup(s, keys, 64, present, err, sizeof(err));
        free(keys);
        free(items);
        tc_store_free(s);
    }
    return rc;
}

static int index_faults(void)
{
    snprintf(idx_plain, sizeof(idx_plain), "%s/idx-plain", root);
    pid_t pid = fork();
    if (pid == 0) {
        idx_put(idx_plain, 0, IDX_N, NULL); /* its close writes an index: removed below */
        _exit(0);
    }
    int status, total = 0;
    waitpid(pid, &status, 0);
    {
        DIR *d = __real_opendir(idx_plain);
        struct dirent *de;
        char p[512];
        while (d != NULL && (de = __real_readdir(d)) != NULL) {
            if (strncmp(de->d_name, "idx-", 4) == 0) {
                snprintf(p, sizeof(p), "%s/%s", idx_plain, de->d_name);
                unlink(p);
            }
        }
        if (d != NULL)
            closedir(d);
    }
    /* 0: an open scans and writes the index; 1: an open reads it; 2: a close writes one */
    static const char *names[] = {"index: scan+write", "index: read", "index: close"};
    for (int op = 0; op < 3; op++) {
        for (forever = 0; forever <= 1; forever++) {
            long n;
            for (n = 1;; n++) {
                rm_dir(dir);
                copy_dir(idx_plain, dir);
                variant = (int)(n % 12);
                tc_store *writer = NULL;
                if (op == 1) {
                    check(idx_op_open() == TC_STORE_OK && idx_has("idx-"),
                          "index: an open of a finished writer's segment wrote no index", n);
                }
                if (op == 2)
                    idx_put(dir, IDX_N, IDX_N, &writer);
                calls = 0;
                fail_at = n;
                int rc = TC_STORE_OK;
                if (op == 2)
                    tc_store_free(writer);
                else
                    rc = idx_op_open();
                long made = calls;
                fail_at = 0;
                check(rc_ok(rc), "index: unexpected return code", n);
                idx_check(n, op == 2 ? 2 * IDX_N : IDX_N);
                total++;
                if (made < n || failures)
                    break;
            }
            printf("store_faults: %-18s %-7s %4ld tries\n", names[op],
                   forever ? "forever" : "once", n);
            if (failures)
                return total;
        }
    }
    rm_dir(dir);
    rm_dir(idx_plain);
    return total;
}
