/* hash_batch.c -- hashes a whole batch, on several threads when it is large.
 *
 * Full-content items that are compact are split by *blocks*, not by items:
 * block terms are summed (docs/hash.md, section 4), so each thread adds the
 * terms of its share of all blocks of all items into private per-item sums and
 * the caller adds those up.  One huge item is thus hashed by every thread, and
 * a batch of many small items is balanced too.  Strided or sampled items are
 * split by items.  Owns its threads for the duration of one call only; holds
 * no global state, so it is fork-safe by construction. */
#include "hash.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Below this many bytes a second thread costs more than it saves. */
#define TC_THREAD_MIN_BYTES (4u << 20)
#define TC_MAX_THREADS 64

typedef struct {
    const tc_batch *x;
    uint64_t sample_count;
    uint64_t blocks_per_item; /* block mode: ceil(item bytes / block) */
    size_t item_bytes;
    uint64_t begin, end;      /* units: blocks (block mode) or items */
    uint64_t *sums;           /* block mode: 2 per item, this thread's share */
    uint64_t *digests;        /* item mode: written directly */
    int ok;
} tc_share;

static const uint8_t *item_base(const tc_batch *x, int64_t i)
{
    return x->base + i * x->batch_stride;
}

static void *run_blocks(void *arg)
{
    tc_share *w = arg;
    for (uint64_t u = w->begin; u < w->end; u++) {
        uint64_t i = u / w->blocks_per_item, b = u % w->blocks_per_item;
        size_t off = (size_t)b * TC_HASH_BLOCK_BYTES;
        size_t n = w->item_bytes - off < TC_HASH_BLOCK_BYTES ? w->item_bytes - off
                                                             : TC_HASH_BLOCK_BYTES;
        tc_block_terms(item_base(w->x, (int64_t)i) + off, n, b, w->sums + 2 * i);
    }
    return NULL;
}

static void *run_items(void *arg)
{
    tc_share *w = arg;
    tc_hash_stream *scratch = malloc(sizeof(*scratch));
    if (scratch == NULL)
        return NULL;
    for (uint64_t i = w->begin; i < w->end; i++) {
        tc_item item = w->x->item;
        item.base = item_base(w->x, (int64_t)i);
        tc_digest d = tc_hash_item(&item, w->sample_count, scratch);
        w->digests[2 * i] = d.d1;
        w->digests[2 * i + 1] = d.d2;
    }
    free(scratch);
    w->ok = 1;
    return NULL;
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

/* Runs fn on shares[0..n-1]: shares 1.. on new threads, share 0 on this one. */
static void run_shares(void *(*fn)(void *), tc_share *shares, int n)
{
    pthread_t tid[TC_MAX_THREADS];
    int started = 1;
    for (; started < n; started++)
        if (pthread_create(&tid[started], NULL, fn, &shares[started]) != 0)
            break;
    /* A thread that could not start is done here instead. */
    for (int k = started; k < n; k++)
        fn(&shares[k]);
    fn(&shares[0]);
    for (int k = 1; k < started; k++)
        pthread_join(tid[k], NULL);
}

int tc_hash_batch(const tc_batch *x, uint64_t sample_count, int threads, uint64_t *digests)
{
    uint64_t numel;
    int compact = item_is_compact(&x->item, &numel);
    if (sample_count >= numel)
        sample_count = 0;
    size_t item_bytes = (size_t)numel * x->item.itemsize;
    uint64_t total = item_bytes * (uint64_t)x->batch;
    if (threads > TC_MAX_THREADS)
        threads = TC_MAX_THREADS;
    if (threads < 1 || total < TC_THREAD_MIN_BYTES)
        threads = 1;
    int block_mode = compact && sample_count == 0;
    uint64_t blocks_per_item = (item_bytes + TC_HASH_BLOCK_BYTES - 1) / TC_HASH_BLOCK_BYTES;
    uint64_t units = block_mode ? blocks_per_item * (uint64_t)x->batch : (uint64_t)x->batch;
    if ((uint64_t)threads > units)
        threads = units ? (int)units : 1;

    tc_share shares[TC_MAX_THREADS];
    uint64_t *sums = NULL;
    if (block_mode) {
        sums = calloc((size_t)threads * 2 * (size_t)x->batch + 2, sizeof(uint64_t));
        if (sums == NULL)
            return -1;
    }
    for (int k = 0; k < threads; k++) {
        shares[k] = (tc_share){
            .x = x, .sample_count = sample_count, .blocks_per_item = blocks_per_item,
            .item_bytes = item_bytes, .begin = units * (uint64_t)k / (uint64_t)threads,
            .end = units * (uint64_t)(k + 1) / (uint64_t)threads,
            .sums = block_mode ? sums + (size_t)k * 2 * (size_t)x->batch : NULL,
            .digests = digests, .ok = 0,
        };
    }
    if (!block_mode) {
        run_shares(run_items, shares, threads);
        for (int k = 0; k < threads; k++)
            if (!shares[k].ok)
                return -1;
        return 0;
    }
    run_shares(run_blocks, shares, threads);
    for (int64_t i = 0; i < x->batch; i++) {
        uint64_t t1 = 0, t2 = 0;
        for (int k = 0; k < threads; k++) {
            t1 += shares[k].sums[2 * i];
            t2 += shares[k].sums[2 * i + 1];
        }
        tc_digest d = tc_finish_item(t1, t2, blocks_per_item, 0, &x->item);
        digests[2 * i] = d.d1;
        digests[2 * i + 1] = d.d2;
    }
    free(sums);
    return 0;
}
