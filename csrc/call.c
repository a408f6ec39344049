/* call.c -- the bytes of one cached call, in one C entry point (docs/architecture.md,
 * "The call path").
 *
 * call_fetch takes the call's input tensors and, with the GIL released once, hashes
 * every input's items, combines them with the context digest into item keys (the
 * same tch128-v2 digest that hash_tensor(stack([ctx, d_1, ..., d_k], 1)) gives: the
 * keys of existing stores keep hitting), XORs in each output leaf's constant, looks
 * every leaf key up, splits hits from misses and gathers the hits' records straight
 * into the rows of newly allocated full-batch output tensors, handed back as DLPack
 * capsules.  call_put stores every leaf's computed rows under their keys, the GIL
 * released once.
 *
 * Each tensor crosses once per call, through the exporter the shim registers
 * (torch's to_dlpack; __dlpack__ otherwise).  No torch object is made for keys or
 * masks: they stay in C buffers and bytes objects.  The shim still decides: what a
 * call's layout is, what runs forward, what is stored, what a fault means (a row a
 * leaf could not serve is a miss). */
#include "call.h"
#include "dlpack.h"
#include "hash.h"
#include "le_bytes.h"
#include "store.h"
#include "store_module.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TC_DTYPE_INT64 (0 | 64 << 8 | 1 << 16)
/* Below this many input bytes the GIL is kept around the hashing (module.c's rule);
 * a store is always used without it (a miss may scan the directory). */
#define TC_CALL_GIL_BYTES (64 * 1024)

/* torch.utils.dlpack.to_dlpack (a C function: ~10x cheaper than Tensor.__dlpack__,
 * whose checks the shim makes itself), or NULL for __dlpack__. */
static PyObject *tensor_exporter;

static int export_view(PyObject *obj, const char *what, tc_view *v)
{
    if (tensor_exporter == NULL || PyCapsule_CheckExact(obj))
        return tc_view_from_object(obj, what, v);
    PyObject *capsule = PyObject_CallOneArg(tensor_exporter, obj);
    if (capsule == NULL)
        return -1;
    int rc = tc_view_from_object(capsule, what, v);
    Py_DECREF(capsule);
    return rc;
}

static int is_host(const tc_view *v)
{
    int dev = v->t->device.device_type;
    return dev == TC_DL_CPU || dev == TC_DL_CUDA_HOST;
}

/* ---- the arguments every entry point checks ---------------------------------- */

/* `want` positional arguments, the first a Store: the store's engine, or NULL with
 * an exception set. */
static tc_store *entry_store(const char *name, PyObject *const *args, Py_ssize_t nargs,
                             Py_ssize_t want)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want,
                     nargs);
        return NULL;
    }
    return tc_store_module_get(args[0]);
}

enum { BYTES_NONE_OK = 1, BYTES_EMPTY_OK = 2 };

/* obj holds whole `unit`-byte units: bytes whose length is a multiple of unit (not 0
 * unless BYTES_EMPTY_OK), or None with BYTES_NONE_OK.  Returns the number of units
 * (0 for None), or -1 with TypeError("<what> must be <shape>"). */
static Py_ssize_t bytes_units(PyObject *obj, const char *what, const char *shape,
                              Py_ssize_t unit, int flags)
{
    if (obj == Py_None && (flags & BYTES_NONE_OK))
        return 0;
    if (PyBytes_Check(obj)) {
        Py_ssize_t n = PyBytes_GET_SIZE(obj);
        if (n % unit == 0 && (n > 0 || (flags & BYTES_EMPTY_OK)))
            return n / unit;
    }
    PyErr_Format(PyExc_TypeError, "%s must be %s", what, shape);
    return -1;
}

/* `count` 16-byte digests (bytes, as hashlib gives them) as the two words of int64
 * pairs (cache.py's _digest_pair: little-endian halves). */
static int digest_words(PyObject *obj, const char *what, Py_ssize_t count, uint64_t *words)
{
    if (!PyBytes_Check(obj) || PyBytes_GET_SIZE(obj) != 16 * count) {
        PyErr_Format(PyExc_TypeError, "%s must be %zd bytes", what, 16 * count);
        return -1;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(obj);
    for (Py_ssize_t i = 0; i < 2 * count; i++)
        words[i] = tc_get_le64(p + 8 * i);
    return 0;
}

/* ---- output tensors handed to torch as DLPack capsules ------------------------- */

/* Output buffers torch has released are kept for the next call_fetch of the same
 * size, up to POOL_SLOTS buffers and POOL_BYTES in all.  A buffer of a few hundred
 * KiB is past glibc's mmap / trim thresholds, so without this each call's output
 * came as fresh pages: while a loop keeps its outputs (an epoch's list of them), the
 * page faults and zeroing cost 0.57 ms of a 256 x 768 float32 output's 0.68 ms
 * (benchmarks/compare.py, memory-hit epoch).  Torch may release a tensor on any
 * thread, with or without the GIL: a spin lock guards the pool (held for a few
 * loads and stores), and a forked child starts with it unlocked and empty (the
 * parent's buffers are just not reused there). */
#define POOL_SLOTS 16
#define POOL_BYTES ((size_t)32 << 20)

static struct {
    void *data[POOL_SLOTS];
    size_t size[POOL_SLOTS];
    int count;
    size_t bytes;
} pool;
static atomic_flag pool_busy = ATOMIC_FLAG_INIT;

static void pool_lock(void)
{
    while (atomic_flag_test_and_set_explicit(&pool_busy, memory_order_acquire))
        ;
}

static void pool_unlock(void)
{
    atomic_flag_clear_explicit(&pool_busy, memory_order_release);
}

static void pool_after_fork(void)
{
    pool.count = 0;
    pool.bytes = 0;
    atomic_flag_clear(&pool_busy);
}

/* Drops pool slot i, keeping the others oldest first. */
static void pool_remove(int i)
{
    pool.bytes -= pool.size[i];
    pool.count--;
    memmove(pool.data + i, pool.data + i + 1, sizeof(void *) * (size_t)(pool.count - i));
    memmove(pool.size + i, pool.size + i + 1, sizeof(size_t) * (size_t)(pool.count - i));
}

/* A 64-byte aligned buffer of `size` bytes (> 0), or NULL. */
static void *out_alloc(size_t size)
{
    void *p = NULL;
    pool_lock();
    for (int i = pool.count - 1; i >= 0; i--) {
        if (pool.size[i] == size) {
            p = pool.data[i];
            pool_remove(i);
            break;
        }
    }
    pool_unlock();
    if (p == NULL && posix_memalign(&p, 64, size) != 0)
        p = NULL;
    return p;
}

/* Keeps p (size bytes) for a later out_alloc, dropping the oldest buffers to make
 * room: a loop whose output size changes does not leave the pool full of sizes it
 * no longer asks for. */
static void out_free(void *p, size_t size)
{
    void *drop[POOL_SLOTS + 1];
    int n = 0;
    if (p == NULL)
        return;
    if (size > POOL_BYTES) {
        free(p);
        return;
    }
    pool_lock();
    while (pool.count == POOL_SLOTS || size > POOL_BYTES - pool.bytes) {
        drop[n++] = pool.data[0];
        pool_remove(0);
    }
    pool.data[pool.count] = p;
    pool.size[pool.count] = size;
    pool.count++;
    pool.bytes += size;
    pool_unlock();
    while (n > 0)
        free(drop[--n]);
}

typedef struct {
    tc_dl_managed managed;
    size_t size; /* of managed.dl_tensor.data, for out_free */
    int64_t shape[1 + TC_STORE_MAX_NDIM];
    int64_t strides[1 + TC_STORE_MAX_NDIM];
} owned_tensor;

static void owned_delete(tc_dl_managed *m)
{
    owned_tensor *t = (owned_tensor *)m;
    out_free(m->dl_tensor.data, t->size);
    free(m);
}

static void capsule_destructor(PyObject *capsule)
{
    /* A capsule torch consumed is renamed "used_dltensor": torch owns it then. */
    if (!PyCapsule_IsValid(capsule, "dltensor"))
        return;
    tc_dl_managed *m = PyCapsule_GetPointer(capsule, "dltensor");
    if (m != NULL && m->deleter != NULL)
        m->deleter(m);
}

/* One leaf's output: B rows of one record's dtype and item shape. */
typedef struct {
    uint64_t word;
    int ndim;
    int64_t shape[TC_STORE_MAX_NDIM];
    size_t item_bytes;
    uint8_t *data;
    size_t size; /* of data (out_alloc) */
} leaf_out;

int tc_call_export_view(PyObject *obj, const char *what, tc_view *v)
{
    return export_view(obj, what, v);
}

static PyObject *leaf_capsule(leaf_out *o, int64_t batch)
{
    owned_tensor *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return PyErr_NoMemory();
    t->shape[0] = batch;
    memcpy(t->shape + 1, o->shape, sizeof(int64_t) * (size_t)o->ndim);
    int64_t stride = 1;
    for (int d = o->ndim; d >= 0; d--) {
        t->strides[d] = stride;
        stride *= t->shape[d] > 0 ? t->shape[d] : 1;
    }
    tc_dl_tensor *dl = &t->managed.dl_tensor;
    dl->data = o->data;
    dl->device.device_type = TC_DL_CPU;
    dl->device.device_id = 0;
    dl->ndim = o->ndim + 1;
    dl->dtype.code = (uint8_t)(o->word & 0xFF);
    dl->dtype.bits = (uint8_t)((o->word >> 8) & 0xFF);
    dl->dtype.lanes = (uint16_t)((o->word >> 16) & 0xFFFF);
    dl->shape = t->shape;
    dl->strides = t->strides;
    dl->byte_offset = 0;
    t->managed.manager_ctx = NULL;
    t->managed.deleter = owned_delete;
    t->size = o->size;
    PyObject *capsule = PyCapsule_New(&t->managed, "dltensor", capsule_destructor);
    if (capsule == NULL) {
        free(t);
        return NULL;
    }
    o->data = NULL; /* the capsule owns it now */
    return capsule;
}

PyObject *tc_call_new_digests(int64_t rows, uint64_t **data)
{
    leaf_out o = {.word = TC_DTYPE_INT64, .ndim = 1, .shape = {2}, .item_bytes = 16};
    o.size = (size_t)rows * 16;
    o.data = out_alloc(o.size);
    if (o.data == NULL)
        return PyErr_NoMemory();
    uint8_t *p = o.data;
    PyObject *capsule = leaf_capsule(&o, rows);
    if (capsule == NULL)
        out_free(o.data, o.size);
    else
        *data = (uint64_t *)p;
    return capsule;
}

/* ---- call_fetch ------------------------------------------------------------------ */

typedef struct {
    /* in */
    tc_store *store;
    tc_view *views;
    Py_ssize_t n_inputs;
    int64_t batch;
    uint64_t ctx[2];
    const uint64_t *leaf_words; /* 2 per leaf */
    Py_ssize_t n_leaves;
    uint64_t sample_count;
    int threads;
    /* out */
    uint64_t *keys;      /* 2 per row, before the leaf XOR */
    uint8_t *present;    /* 1 per row: every leaf served it */
    leaf_out *outs;
    int64_t hits;
    int rc;
    char err[512];
} fetch_job;

/* Item keys: hash each input's items into column 1 + t of a (B, k + 1, 2) int64 matrix
 * whose column 0 is the context digest, then hash that matrix's rows. */
static int build_keys(fetch_job *j)
{
    int64_t batch = j->batch;
    size_t width = (size_t)j->n_inputs + 1;
    uint64_t *matrix = malloc(sizeof(uint64_t) * 2 * width * (size_t)batch);
    uint64_t *column = malloc(sizeof(uint64_t) * 2 * (size_t)batch);
    int rc = matrix && column ? 0 : -1;
    for (Py_ssize_t t = 0; rc == 0 && t < j->n_inputs; t++) {
        tc_batch b;
        tc_batch_of(&j->views[t], &b);
        rc = tc_hash_batch(&b, j->sample_count, j->threads, column);
        for (int64_t i = 0; rc == 0 && i < batch; i++) {
            matrix[2 * (i * width + 1 + t)] = column[2 * i];
            matrix[2 * (i * width + 1 + t) + 1] = column[2 * i + 1];
        }
    }
    if (rc == 0) {
        for (int64_t i = 0; i < batch; i++) {
            matrix[2 * i * width] = j->ctx[0];
            matrix[2 * i * width + 1] = j->ctx[1];
        }
        int64_t shape[2] = {(int64_t)width, 2}, strides[2] = {2, 1};
        tc_batch rows = {
            .base = (const uint8_t *)matrix,
            .batch_stride = (int64_t)(16 * width),
            .batch = batch,
            .item = {.base = NULL, .itemsize = 8, .ndim = 2, .shape = shape,
                     .strides = strides, .dtype_word = TC_DTYPE_INT64},
        };
        rc = tc_hash_batch(&rows, 0, j->threads, j->keys);
    }
    free(matrix);
    free(column);
    if (rc != 0) {
        j->rc = TC_STORE_ENOMEM;
        snprintf(j->err, sizeof(j->err), "out of memory while hashing a call's inputs");
    }
    return rc;
}

static void leaf_keys(const fetch_job *j, Py_ssize_t leaf, uint64_t *out)
{
    uint64_t c0 = j->leaf_words[2 * leaf], c1 = j->leaf_words[2 * leaf + 1];
    for (int64_t i = 0; i < j->batch; i++) {
        out[2 * i] = j->keys[2 * i] ^ c0;
        out[2 * i + 1] = j->keys[2 * i + 1] ^ c1;
    }
}

static int64_t count_present(const fetch_job *j)
{
    int64_t n = 0;
    for (int64_t i = 0; i < j->batch; i++)
        n += j->present[i];
    return n;
}

/* Gathers leaf `leaf`'s records of the present rows into its output, run by run of
 * consecutive present rows; a row not served is no longer present. */
static int gather_leaf(fetch_job *j, Py_ssize_t leaf, const uint64_t *lk, uint8_t *served)
{
    leaf_out *o = &j->outs[leaf];
    int64_t first = 0;
    int rc;
    size_t itemsize;
    for (;;) {
        while (first < j->batch && !j->present[first])
            first++;
        if (first == j->batch)
            return 0; /* no row left to serve: every row is computed */
        /* The output's dtype and item shape: the first present row's record header
         * (read and checked; its payload is checked by the gather).  A record that
         * went away or fails since the lookup makes its row a miss; the next
         * present row names the output. */
        rc = tc_store_entry_info(j->store, lk + 2 * first, &o->word, &o->ndim, o->shape,
                                 j->err, sizeof(j->err));
        itemsize = rc == TC_STORE_OK ? tc_store_itemsize(o->word) : 0;
        if (rc == TC_STORE_EMISSING || rc == TC_STORE_ECORRUPT ||
            (rc == TC_STORE_OK && !itemsize)) {
            j->present[first] = 0;
            j->err[0] = '\0';
            continue;
        }
        break;
    }
    if (rc != TC_STORE_OK) {
        j->rc = rc;
        return -1;
    }
    size_t item_bytes = itemsize;
    for (int d = 0; d < o->ndim; d++)
        item_bytes *= (size_t)o->shape[d];
    o->item_bytes = item_bytes;
    size_t total = item_bytes * (size_t)j->batch;
    if (item_bytes && total / item_bytes != (size_t)j->batch) {
        j->rc = TC_STORE_ENOMEM;
        snprintf(j->err, sizeof(j->err), "a cached output of %lld rows is too large",
                 (long long)j->batch);
        return -1;
    }
    o->size = total ? total : 64;
    o->data = out_alloc(o->size);
    if (o->data == NULL) {
        j->rc = TC_STORE_ENOMEM;
        snprintf(j->err, sizeof(j->err), "out of memory for a cached output (%zu bytes)",
                 total);
        return -1;
    }
    for (int64_t a = first; a < j->batch;) {
        int64_t b = a;
        while (b < j->batch && j->present[b])
            b++;
        rc = tc_store_gather(j->store, lk + 2 * a, (size_t)(b - a), o->word, o->ndim, o->shape,
                             o->data + (size_t)a * item_bytes, served + a, j->err,
                             sizeof(j->err));
        if (rc != TC_STORE_OK) {
            j->rc = rc;
            return -1;
        }
        for (int64_t i = a; i < b; i++)
            j->present[i] &= served[i];
        a = b;
        while (a < j->batch && !j->present[a])
            a++;
    }
    return 0;
}

/* Lookup of every leaf key, then the gather of the rows every leaf has. */
static int lookup_and_gather(fetch_job *j)
{
    size_t batch = (size_t)j->batch;
    uint64_t *lk = malloc(sizeof(uint64_t) * 2 * batch * (size_t)j->n_leaves);
    uint8_t *found = malloc(batch);
    if (lk == NULL || found == NULL) {
        free(lk);
        free(found);
        j->rc = TC_STORE_ENOMEM;
        snprintf(j->err, sizeof(j->err), "out of memory while looking up a call's keys");
        return -1;
    }
    memset(j->present, 1, batch);
    int rc = 0;
    for (Py_ssize_t leaf = 0; rc == 0 && leaf < j->n_leaves; leaf++) {
        uint64_t *keys = lk + 2 * batch * (size_t)leaf;
        leaf_keys(j, leaf, keys);
        rc = tc_store_lookup_unverified(j->store, keys, batch, found, j->err, sizeof(j->err));
        for (size_t i = 0; rc == TC_STORE_OK && i < batch; i++)
            j->present[i] &= found[i] != 0;
    }
    if (rc != TC_STORE_OK) {
        j->rc = rc;
        rc = -1;
    }
    for (Py_ssize_t leaf = 0; rc == 0 && leaf < j->n_leaves && count_present(j); leaf++)
        rc = gather_leaf(j, leaf, lk + 2 * batch * (size_t)leaf, found);
    j->hits = rc == 0 ? count_present(j) : 0;
    free(lk);
    free(found);
    return rc;
}

static void run_fetch(fetch_job *j)
{
    if ((j->n_inputs == 0 || build_keys(j) == 0) && j->n_leaves > 0)
        lookup_and_gather(j);
}

PyDoc_STRVAR(call_fetch_doc,
"call_fetch(store, inputs, ctx, leaves, sample_count, threads)\n--\n\n"
"The bytes of one cached call on a host store.  inputs: the call's tensors (each\n"
"(B, ...)), or the keys an earlier call_fetch returned for them (bytes: looked up\n"
"again, not hashed); ctx: the call's 16-byte context digest; leaves: the 16-byte\n"
"constants of the output leaves (concatenated), or None when the output layout is\n"
"not known yet (keys only).  Returns None when an input is not a host tensor (the\n"
"caller takes its own path), else (keys, hits, miss, outputs): keys, B * 16 bytes,\n"
"the item keys (int64 pairs, before the leaf XOR); hits, how many rows every leaf\n"
"served; miss, the int64 indices of the other rows as bytes when some rows hit and\n"
"some miss, else None; outputs, one DLPack capsule per leaf of B rows in the stored\n"
"dtype and item shape with the hit rows filled (the other rows are unspecified),\n"
"or None when nothing hit.");

static PyObject *py_call_fetch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    tc_store *store = entry_store("call_fetch", args, nargs, 6);
    if (store == NULL)
        return NULL;
    fetch_job job;
    memset(&job, 0, sizeof(job));
    job.store = store;
    if (digest_words(args[2], "ctx", 1, job.ctx) < 0)
        return NULL;
    uint64_t leaf_buf[2 * 8];
    uint64_t *leaf_words = NULL;
    job.n_leaves = bytes_units(args[3], "leaves", "None or 16 bytes per leaf", 16,
                               BYTES_NONE_OK);
    if (job.n_leaves < 0)
        return NULL;
    if (job.n_leaves > 0) {
        leaf_words = job.n_leaves <= 8 ? leaf_buf
                                       : PyMem_Malloc(sizeof(uint64_t) * 2 * (size_t)job.n_leaves);
        if (leaf_words == NULL)
            return PyErr_NoMemory();
        if (digest_words(args[3], "leaves", job.n_leaves, leaf_words) < 0)
            goto fail_early;
        job.leaf_words = leaf_words;
    }
    long long sample_count = PyLong_AsLongLong(args[4]);
    long threads = PyLong_AsLong(args[5]);
    if ((sample_count == -1 || threads == -1) && PyErr_Occurred())
        goto fail_early;
    if (sample_count < 0) {
        PyErr_SetString(PyExc_ValueError, "sample_count must be >= 0");
        goto fail_early;
    }
    job.sample_count = (uint64_t)sample_count;
    job.threads = threads < 1 ? 1 : threads > 1024 ? 1024 : (int)threads;

    PyObject *seq = NULL, *result = NULL, *keys = NULL, *present = NULL;
    tc_view view_buf[4];
    Py_ssize_t exported = 0;
    int64_t input_bytes = 0;
    if (PyBytes_Check(args[1])) {
        /* The item keys an earlier call_fetch returned for these inputs: look them up
         * again without hashing (after the remote tier filled the store). */
        Py_ssize_t n = bytes_units(args[1], "keys", "bytes, 16 per row", 16, 0);
        if (n < 0)
            goto fail_early;
        job.batch = n;
        keys = Py_NewRef(args[1]);
    } else {
        seq = PySequence_Fast(args[1], "inputs must be a sequence of tensors or keys as bytes");
        if (seq == NULL)
            goto fail_early;
        job.n_inputs = PySequence_Fast_GET_SIZE(seq);
        job.views = job.n_inputs <= 4 ? view_buf
                                      : PyMem_Calloc((size_t)job.n_inputs, sizeof(tc_view));
        if (job.views == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        int fallback = job.n_inputs == 0;
        for (; !fallback && exported < job.n_inputs; exported++) {
            tc_view *v = &job.views[exported];
            if (export_view(PySequence_Fast_GET_ITEM(seq, exported), "input", v) < 0) {
                /* Not a tensor this path can read (sparse, quantized...): the caller's
                 * own path says what is wrong with it. */
                PyErr_Clear();
                fallback = 1;
                break;
            }
            if (!is_host(v) || v->ndim < 1 || v->shape[0] != job.views[0].shape[0])
                fallback = 1;
            input_bytes += tc_view_numel(v) * (int64_t)v->itemsize;
        }
        if (fallback || job.views[0].shape[0] <= 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        job.batch = job.views[0].shape[0];
        keys = PyBytes_FromStringAndSize(NULL, 16 * (Py_ssize_t)job.batch);
        if (keys == NULL)
            goto done;
    }
    present = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)job.batch);
    if (present == NULL)
        goto done;
    /* Written only by build_keys, which a keys argument skips (n_inputs 0). */
    job.keys = (uint64_t *)PyBytes_AS_STRING(keys);
    job.present = (uint8_t *)PyBytes_AS_STRING(present);
    job.outs = job.n_leaves ? PyMem_Calloc((size_t)job.n_leaves, sizeof(leaf_out)) : NULL;
    if (job.n_leaves && job.outs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    job.rc = TC_STORE_OK;
    if (job.n_leaves || input_bytes >= TC_CALL_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        run_fetch(&job);
        Py_END_ALLOW_THREADS
    } else {
        run_fetch(&job);
    }
    if (job.rc != TC_STORE_OK) {
        tc_store_module_raise(job.rc, job.err);
        goto done;
    }
    PyObject *miss = Py_NewRef(Py_None), *outs = Py_NewRef(Py_None);
    if (job.hits > 0 && job.hits < job.batch) {
        Py_DECREF(miss);
        miss = PyBytes_FromStringAndSize(NULL, 8 * (Py_ssize_t)(job.batch - job.hits));
        if (miss != NULL) {
            int64_t *rows = (int64_t *)PyBytes_AS_STRING(miss), n = 0;
            for (int64_t i = 0; i < job.batch; i++)
                if (!job.present[i])
                    rows[n++] = i;
        }
    }
    if (miss != NULL && job.hits > 0) {
        Py_DECREF(outs);
        outs = PyTuple_New(job.n_leaves);
        for (Py_ssize_t leaf = 0; outs != NULL && leaf < job.n_leaves; leaf++) {
            PyObject *capsule = leaf_capsule(&job.outs[leaf], job.batch);
            if (capsule == NULL)
                Py_CLEAR(outs);
            else
                PyTuple_SET_ITEM(outs, leaf, capsule);
        }
    }
    if (miss != NULL && outs != NULL)
        result = Py_BuildValue("(OLOO)", keys, (long long)job.hits, miss, outs);
    Py_XDECREF(miss);
    Py_XDECREF(outs);
done:
    if (job.outs != NULL) {
        for (Py_ssize_t leaf = 0; leaf < job.n_leaves; leaf++)
            out_free(job.outs[leaf].data, job.outs[leaf].size);
        PyMem_Free(job.outs);
    }
    Py_XDECREF(keys);
    Py_XDECREF(present);
    for (Py_ssize_t t = 0; job.views != NULL && t < exported; t++)
        tc_view_release(&job.views[t]);
    if (job.views != NULL && job.views != view_buf)
        PyMem_Free(job.views);
    Py_XDECREF(seq);
    if (leaf_words != leaf_buf)
        PyMem_Free(leaf_words);
    return result;
fail_early:
    if (leaf_words != leaf_buf)
        PyMem_Free(leaf_words);
    return NULL;
}

/* ---- call_put -------------------------------------------------------------------- */

PyDoc_STRVAR(call_put_doc,
"call_put(store, keys, rows, leaves, srcs) -> int\n--\n\n"
"Store the computed rows of every output leaf of a call, with the GIL released\n"
"once: srcs[j][r] (srcs: a tuple or list of contiguous host tensors (N, ...)) goes\n"
"under the key of row rows[r] XOR leaf constant j (leaves: 16 bytes per leaf, one\n"
"per src).  keys: the item keys call_fetch returned; rows: int64 row indices as\n"
"bytes (N of them), or None for rows 0..N-1.  Returns the fewest records any leaf\n"
"appended (present keys are skipped; a full or failed store appends fewer).");

/* One leaf's keys: row rows[r] (r when rows is NULL) of keys XOR leaf. */
static int leaf_row_keys(const uint64_t *keys, int64_t batch, const int64_t *rows, int64_t n,
                         const uint64_t leaf[2], uint64_t *out)
{
    for (int64_t r = 0; r < n; r++) {
        int64_t row = rows ? rows[r] : r;
        if (row < 0 || row >= batch) {
            PyErr_Format(PyExc_IndexError, "row %lld is out of range for %lld keys",
                         (long long)row, (long long)batch);
            return -1;
        }
        out[2 * r] = keys[2 * row] ^ leaf[0];
        out[2 * r + 1] = keys[2 * row + 1] ^ leaf[1];
    }
    return 0;
}

static PyObject *py_call_put(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    tc_store *store = entry_store("call_put", args, nargs, 5);
    if (store == NULL)
        return NULL;
    Py_ssize_t batch = bytes_units(args[1], "keys", "bytes, 16 per row", 16, BYTES_EMPTY_OK);
    if (batch < 0)
        return NULL;
    Py_ssize_t n_rows = bytes_units(args[2], "rows", "None or int64 indices as bytes", 8,
                                    BYTES_NONE_OK | BYTES_EMPTY_OK);
    if (n_rows < 0)
        return NULL;
    Py_ssize_t n_leaves = bytes_units(args[3], "leaves", "16 bytes per leaf", 16, 0);
    if (n_leaves < 0)
        return NULL;
    PyObject *srcs = args[4];
    if (!PyTuple_Check(srcs) && !PyList_Check(srcs)) {
        PyErr_SetString(PyExc_TypeError, "srcs must be a tuple or list of tensors");
        return NULL;
    }
    if (PySequence_Fast_GET_SIZE(srcs) != n_leaves) {
        PyErr_Format(PyExc_ValueError, "srcs holds %zd tensors for %zd leaves",
                     PySequence_Fast_GET_SIZE(srcs), n_leaves);
        return NULL;
    }
    int64_t n = args[2] == Py_None ? (int64_t)batch : (int64_t)n_rows;
    const int64_t *rows = args[2] == Py_None ? NULL : (const int64_t *)PyBytes_AS_STRING(args[2]);
    const uint64_t *keys = (const uint64_t *)PyBytes_AS_STRING(args[1]);
    uint64_t *leaf = PyMem_Malloc(sizeof(uint64_t) * 2 * (size_t)n_leaves);
    uint64_t *lk = PyMem_Malloc(sizeof(uint64_t) * 2 * (size_t)n_leaves * (size_t)(n ? n : 1));
    tc_view *views = PyMem_Calloc((size_t)n_leaves, sizeof(tc_view));
    PyObject *result = NULL;
    if (leaf == NULL || lk == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (digest_words(args[3], "leaves", n_leaves, leaf) < 0)
        goto done;
    for (Py_ssize_t j = 0; j < n_leaves; j++) {
        tc_view *v = &views[j];
        if (export_view(PySequence_Fast_GET_ITEM(srcs, j), "src", v) < 0)
            goto done;
        if (!is_host(v) || !v->contiguous || v->ndim < 1 || v->shape[0] != n ||
            v->ndim - 1 > TC_STORE_MAX_NDIM) {
            PyErr_Format(PyExc_ValueError,
                         "src %zd must be a contiguous host tensor (%lld, ...) with at most %d "
                         "item dimensions", j, (long long)n, TC_STORE_MAX_NDIM);
            goto done;
        }
        if (leaf_row_keys(keys, batch, rows, n, leaf + 2 * j, lk + 2 * (size_t)n * (size_t)j) < 0)
            goto done;
    }
    char err[512] = "";
    size_t fewest = SIZE_MAX;
    int rc = TC_STORE_OK;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n_leaves && rc == TC_STORE_OK; j++) {
        size_t stored = 0;
        rc = tc_store_put(store, lk + 2 * (size_t)n * (size_t)j, (size_t)n, views[j].dtype_word,
                          views[j].ndim - 1, views[j].shape + 1, views[j].data, &stored, err,
                          sizeof(err));
        fewest = stored < fewest ? stored : fewest;
    }
    Py_END_ALLOW_THREADS
    if (rc != TC_STORE_OK)
        tc_store_module_raise(rc, err);
    else
        result = PyLong_FromSize_t(fewest);
done:
    for (Py_ssize_t j = 0; views != NULL && j < n_leaves; j++)
        tc_view_release(&views[j]); /* a view never exported is all zero */
    PyMem_Free(views);
    PyMem_Free(lk);
    PyMem_Free(leaf);
    return result;
}

PyDoc_STRVAR(set_exporter_doc,
"_set_tensor_exporter(fn)\n--\n\n"
"Use fn(tensor) -> DLPack capsule (torch.utils.dlpack.to_dlpack) to read the\n"
"tensors of call_fetch and call_put; None goes back to tensor.__dlpack__().\n"
"The caller checks what __dlpack__ would (no conjugate or negative bit).");

static PyObject *py_set_exporter(PyObject *self, PyObject *fn)
{
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "the exporter must be callable or None");
        return NULL;
    }
    Py_XSETREF(tensor_exporter, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyMethodDef call_functions[] = {
    {"call_fetch", (PyCFunction)(void (*)(void))py_call_fetch, METH_FASTCALL, call_fetch_doc},
    {"call_put", (PyCFunction)(void (*)(void))py_call_put, METH_FASTCALL, call_put_doc},
    {"_set_tensor_exporter", py_set_exporter, METH_O, set_exporter_doc},
    {NULL, NULL, 0, NULL},
};

int tc_call_module_init(PyObject *module)
{
    static int at_fork;
    if (!at_fork && pthread_atfork(NULL, NULL, pool_after_fork) == 0)
        at_fork = 1;
    return PyModule_AddFunctions(module, call_functions);
}
