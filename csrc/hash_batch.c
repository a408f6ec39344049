/* hash_batch.c -- hashes a whole batch, on several threads when it is large.
 *
 * Full-content items that are compact are split by *blocks*, not by items:
 * block terms are summed (docs/hash.md, section 4), so each thread adds the
 * terms of the blocks it takes into private per-item sums and the caller adds
 * those up.  One huge item is thus hashed by every thread, and a batch of many
 * small ones is balanced too.  Items of one block (16 KiB or less) skip the sums:
 * a thread writes each item's block digest into the output and finishes its
 * items there, many at a time (the kernels' items_final); items of one stripe
 * (256 bytes or less) go whole to the kernels' items1, and items of 2 to 16
 * stripes (4 KiB or less) to itemsN, which hash and finish them side by side
 * with no per-item call.  Strided or sampled items
 * are split by items.
 *
 * Work is handed out in chunks from a shared counter rather than in fixed
 * shares, so a thread that the OS delays does not hold up the call.
 *
 * Whose threads: in a process that has an OpenMP runtime loaded (torch's
 * libgomp), the work runs on that runtime's team, through its GCC ABI entry
 * GOMP_parallel, as torch's own parallel ops do.  Threads of our own would
 * compete with that team: after each parallel region its workers spin for a
 * few milliseconds (libgomp's default wait policy), so a call made right after
 * a torch op found every other core busy and hashed at one core's speed (a
 * 154 MB batch on 2 cores: 13.1 ms against 7.6 ms after a pause, 2026-11-29).
 * Elsewhere (no runtime; a process forked after this library was loaded, where
 * libgomp's team is not usable: a torch op hangs there too) threads are
 * created for the call and joined before it returns.  Never names an
 * instruction set: the kernels come from hash_dispatch.c, loaded once per
 * call. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dl_iterate_phdr, RTLD_NOLOAD */
#endif
#include "hash_internal.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Below this many bytes a second thread costs more than it saves. */
#define TC_THREAD_MIN_BYTES (4u << 20)
#define TC_MAX_THREADS 64
/* Bytes of work a thread claims at a time: large against the cost of one atomic
 * add, small against a call that is worth threads. */
#define TC_CHUNK_BYTES (256u << 10)

typedef enum { MODE_ONE_BLOCK, MODE_BLOCKS, MODE_ITEMS } tc_mode;

typedef struct {
    const tc_batch *x;
    const tc_hash_kernels *k;
    tc_mode mode;
    uint64_t sample_count;
    uint64_t blocks_per_item;
    size_t item_bytes;
    uint64_t units;           /* items (ONE_BLOCK, ITEMS) or blocks of all items (BLOCKS) */
    uint64_t chunk;           /* units claimed at a time */
    _Atomic uint64_t next;    /* first unit not yet claimed */
    uint64_t md[2];           /* the metadata digest (docs/hash.md, section 5) */
    uint64_t *digests;
} tc_job;

typedef struct {
    tc_job *job;
    uint64_t *sums;           /* BLOCKS: 2 per item, this thread's terms */
    int ok;
} tc_worker;

static const uint8_t *item_base(const tc_batch *x, int64_t i)
{
    return x->base + i * x->batch_stride;
}

static int claim(tc_job *job, uint64_t *begin, uint64_t *end)
{
    uint64_t b = atomic_fetch_add_explicit(&job->next, job->chunk, memory_order_relaxed);
    if (b >= job->units)
        return 0;
    *begin = b;
    *end = b + job->chunk < job->units ? b + job->chunk : job->units;
    return 1;
}

static void one_block_items(tc_job *job, uint64_t begin, uint64_t end)
{
    uint64_t *out = job->digests + 2 * begin;
    size_t n = job->item_bytes;
    /* Items of one stripe (items1) or 2 to 16 (itemsN): read in place, a partial
     * last stripe too, hashed and finished many at a time, no call and no copy
     * per item. */
    if (n <= TC_HASH_STRIPE_BYTES) {
        job->k->items1(item_base(job->x, (int64_t)begin), (ptrdiff_t)job->x->batch_stride,
                       (size_t)(end - begin), n, job->md, out);
        return;
    }
    if (n <= TC_SHORT_BLOCK_STRIPES * TC_HASH_STRIPE_BYTES) {
        job->k->itemsN(item_base(job->x, (int64_t)begin), (ptrdiff_t)job->x->batch_stride,
                       (size_t)(end - begin), n, job->md, out);
        return;
    }
    for (uint64_t i = begin; i < end; i++)
        tc_block_digest(job->k, item_base(job->x, (int64_t)i), n, job->digests + 2 * i);
    job->k->items_final((size_t)(end - begin), out, tc_block0_key, job->md, out);
}

static void block_terms(tc_job *job, uint64_t *sums, uint64_t begin, uint64_t end)
{
    uint64_t i = begin / job->blocks_per_item, b = begin % job->blocks_per_item;
    for (uint64_t u = begin; u < end; u++) {
        size_t off = (size_t)b * TC_HASH_BLOCK_BYTES;
        size_t n = job->item_bytes - off < TC_HASH_BLOCK_BYTES ? job->item_bytes - off
                                                               : TC_HASH_BLOCK_BYTES;
        uint64_t h[2];
        tc_block_digest(job->k, item_base(job->x, (int64_t)i) + off, n, h);
        /* docs/hash.md, section 4: the term of block b. */
        sums[2 * i] += tc_fmix64(h[0] ^ tc_fmix64(b + tc_keys[TC_K_BLOCK1]));
        sums[2 * i + 1] += tc_fmix64(h[1] ^ tc_fmix64(b + tc_keys[TC_K_BLOCK2]));
        if (++b == job->blocks_per_item) {
            b = 0;
            i++;
        }
    }
}

static int strided_items(tc_job *job, tc_hash_stream **scratch, uint64_t begin, uint64_t end)
{
    if (*scratch == NULL && (*scratch = malloc(sizeof(**scratch))) == NULL)
        return -1;
    for (uint64_t i = begin; i < end; i++) {
        tc_item item = job->x->item;
        item.base = item_base(job->x, (int64_t)i);
        tc_digest d = tc_hash_item(&item, job->sample_count, *scratch);
        job->digests[2 * i] = d.d1;
        job->digests[2 * i + 1] = d.d2;
    }
    return 0;
}

static void *work(void *arg)
{
    tc_worker *w = arg;
    tc_job *job = w->job;
    tc_hash_stream *scratch = NULL;
    uint64_t begin, end;
    while (claim(job, &begin, &end)) {
        if (job->mode == MODE_ONE_BLOCK)
            one_block_items(job, begin, end);
        else if (job->mode == MODE_BLOCKS)
            block_terms(job, w->sums, begin, end);
        else if (strided_items(job, &scratch, begin, end) != 0)
            w->ok = 0;
    }
    free(scratch);
    return NULL;
}

/* ---- the OpenMP runtime of the process, if any ---------------------------------
 * GOMP_parallel(fn, data, n, flags) runs fn(data) on a team of up to n threads,
 * the caller one of them, and returns when all have returned: the ABI that gcc
 * emits for "#pragma omp parallel", exported by libgomp and, for compatibility,
 * by LLVM's libomp and Intel's libiomp5.  It is looked up in a library already
 * loaded (RTLD_NOLOAD): this library never loads one. */
typedef void (*gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned n, unsigned flags);
typedef int (*omp_int_fn)(void);

static pthread_once_t omp_once = PTHREAD_ONCE_INIT;
static gomp_parallel_fn omp_parallel;
static omp_int_fn omp_thread_num;
static char omp_path[4096]; /* PATH_MAX: the name dl_iterate_phdr gives */
static pid_t loaded_pid;
static _Atomic int omp_allowed = 1;

/* The process that loaded this library: a forked child is not it. */
__attribute__((constructor)) static void note_loading_process(void)
{
    loaded_pid = getpid();
}

static int omp_candidate(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    const char *path = info->dlpi_name, *base = path ? strrchr(path, '/') : NULL;
    base = base ? base + 1 : path;
    if (base == NULL || (strncmp(base, "libgomp", 7) != 0 && strncmp(base, "libiomp5", 8) != 0 &&
                         strncmp(base, "libomp", 6) != 0))
        return 0;
    void *lib = dlopen(path, RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
    if (lib == NULL)
        return 0;
    gomp_parallel_fn par = (gomp_parallel_fn)(uintptr_t)dlsym(lib, "GOMP_parallel");
    omp_int_fn num = (omp_int_fn)(uintptr_t)dlsym(lib, "omp_get_thread_num");
    if (par == NULL || num == NULL) {
        dlclose(lib);
        return 0;
    }
    /* The handle is kept: the runtime stays loaded while this library may call it. */
    omp_parallel = par;
    omp_thread_num = num;
    snprintf(omp_path, sizeof(omp_path), "%s", path);
    return 1;
}

static void omp_find(void)
{
    dl_iterate_phdr(omp_candidate, NULL);
}

/* The runtime to run a call's threads on, or NULL for threads of our own. */
static gomp_parallel_fn omp_usable(void)
{
    if (!atomic_load_explicit(&omp_allowed, memory_order_relaxed) || getpid() != loaded_pid)
        return NULL;
    pthread_once(&omp_once, omp_find);
    return omp_parallel;
}

const char *tc_hash_threads_runtime(void)
{
    return omp_usable() != NULL ? omp_path : "pthreads";
}

int tc_hash_threads_allow_openmp(int allow)
{
    return atomic_exchange(&omp_allowed, allow ? 1 : 0);
}

typedef struct {
    tc_worker *workers;
    int n;
} omp_team;

static void omp_member(void *arg)
{
    omp_team *team = arg;
    int k = omp_thread_num();
    /* A team larger than asked for (it never is) leaves the extra members idle; a
     * smaller one leaves the missing members' workers unclaimed work, which the
     * others take from the shared counter. */
    if (k >= 0 && k < team->n)
        work(&team->workers[k]);
}

/* Runs work() on workers[0..n-1]: on the process's OpenMP team where there is
 * one, else 1.. on new threads and 0 on this one.  A thread that cannot be
 * started just leaves its share to the others. */
static void run_workers(tc_worker *workers, int n)
{
    gomp_parallel_fn par = n > 1 ? omp_usable() : NULL;
    if (par != NULL) {
        omp_team team = {workers, n};
        par(omp_member, &team, (unsigned)n, 0);
        return;
    }
    pthread_t tid[TC_MAX_THREADS];
    int started = 1;
    for (; started < n; started++)
        if (pthread_create(&tid[started], NULL, work, &workers[started]) != 0)
            break;
    work(&workers[0]);
    for (int k = 1; k < started; k++)
        pthread_join(tid[k], NULL);
}

static int item_is_compact(const tc_item *item, uint64_t *numel)
{
    int64_t expect = 1;
    int compact = 1;
    *numel = 1;
    for (int d = item->ndim - 1; d >= 0; d--) {
        *numel *= (uint64_t)item->shape[d];
        if (item->shape[d] != 1 && item->strides[d] != expect)
            compact = 0;
        expect *= item->shape[d];
    }
    return compact || *numel == 0;
}

int tc_hash_batch(const tc_batch *x, uint64_t sample_count, int threads, uint64_t *digests)
{
    uint64_t numel;
    int compact = item_is_compact(&x->item, &numel);
    sample_count = tc_effective_sample_count(sample_count, numel);
    size_t item_bytes = (size_t)numel * x->item.itemsize;
    uint64_t blocks_per_item = (item_bytes + TC_HASH_BLOCK_BYTES - 1) / TC_HASH_BLOCK_BYTES;
    uint64_t meta[TC_HASH_META_MAX];
    tc_job job = {
        .x = x, .k = tc_hash_kernels_active(), .sample_count = sample_count,
        .blocks_per_item = blocks_per_item, .item_bytes = item_bytes,
        .digests = digests,
    };
    atomic_init(&job.next, 0);
    if (x->batch <= 0)
        return 0;
    if (!compact || sample_count) {
        job.mode = MODE_ITEMS;
        job.units = (uint64_t)x->batch;
    } else if (item_bytes == 0) {
        /* No blocks: every item is the finish of zero sums. */
        tc_meta_digest(meta, tc_item_meta(&x->item, 0, 0, meta), job.md);
        memset(digests, 0, 2 * sizeof(uint64_t) * (size_t)x->batch);
        job.k->items_final((size_t)x->batch, digests, NULL, job.md, digests);
        return 0;
    } else {
        job.mode = blocks_per_item == 1 ? MODE_ONE_BLOCK : MODE_BLOCKS;
        job.units = job.mode == MODE_ONE_BLOCK ? (uint64_t)x->batch
                                               : blocks_per_item * (uint64_t)x->batch;
        tc_meta_digest(meta, tc_item_meta(&x->item, 0, blocks_per_item, meta), job.md);
    }
    uint64_t unit_bytes = job.mode == MODE_BLOCKS ? TC_HASH_BLOCK_BYTES : item_bytes;
    job.chunk = unit_bytes ? TC_CHUNK_BYTES / unit_bytes : 1;
    if (job.chunk < 1)
        job.chunk = 1;

    uint64_t total = item_bytes * (uint64_t)x->batch;
    if (threads > TC_MAX_THREADS)
        threads = TC_MAX_THREADS;
    if (threads < 1 || total < TC_THREAD_MIN_BYTES)
        threads = 1;
    uint64_t chunks = (job.units + job.chunk - 1) / job.chunk;
    if ((uint64_t)threads > chunks)
        threads = (int)chunks;

    tc_worker workers[TC_MAX_THREADS];
    uint64_t *sums = NULL;
    if (job.mode == MODE_BLOCKS) {
        sums = calloc((size_t)threads * 2 * (size_t)x->batch, sizeof(uint64_t));
        if (sums == NULL)
            return -1;
    }
    for (int k = 0; k < threads; k++)
        workers[k] = (tc_worker){
            .job = &job, .sums = sums ? sums + (size_t)k * 2 * (size_t)x->batch : NULL,
            .ok = 1,
        };
    run_workers(workers, threads);
    int rc = 0;
    for (int k = 0; k < threads; k++)
        if (!workers[k].ok)
            rc = -1;
    if (job.mode == MODE_BLOCKS) {
        for (size_t j = 0; j < 2 * (size_t)x->batch; j++) {
            uint64_t t = 0;
            for (int k = 0; k < threads; k++)
                t += workers[k].sums[j];
            digests[j] = t;
        }
        job.k->items_final((size_t)x->batch, digests, NULL, job.md, digests);
        free(sums);
    }
    return rc;
}
