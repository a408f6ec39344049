/* store_module.c -- torchcache_c._C.Store: the CPython face of store.c.
 *
 * It checks arguments (tensors arrive through DLPack as tc_view), releases the
 * GIL around every engine call that touches files or tensor bytes, and turns
 * engine error codes into exceptions.  It holds no storage logic of its own. */
#include "store_module.h"
#include "dlpack.h"
#include "store.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define TC_DTYPE_INT64 (0 | 64 << 8 | 1 << 16)
/* docs/format.md, section 7: how often a miss may trigger a scan for other writers. */
#define TC_DEFAULT_REFRESH_MS 100

typedef struct {
    PyObject_HEAD
    tc_store *store;
    PyObject *path; /* str, or None for the in-memory arena */
    int closed;
} StoreObject;

/* The store's exceptions, made at module init (single-phase init: one
 * interpreter, so plain globals).  Each is a StoreError, which is an OSError, and
 * also the built-in type that callers caught before the hierarchy existed. */
static PyObject *StoreError, *StoreClosedError, *StoreKeyError, *StoreCorruptError,
    *StoreMismatchError, *StoreZstdError, *StorePermissionError;

typedef struct {
    const char *name; /* torchcache_c._C.<name>, re-exported by torchcache_c */
    PyObject **type;
    PyObject **also;  /* the built-in base besides StoreError; NULL for StoreError */
    const char *doc;
} store_exception;

static const store_exception store_exceptions[] = {
    {"StoreError", &StoreError, NULL,
     "An error of the torchcache_c store (an OSError).  Faults while serving or "
     "storing are never raised: they are misses (Store.take_faults)."},
    {"StoreClosedError", &StoreClosedError, &PyExc_ValueError, "The store is closed."},
    {"StoreKeyError", &StoreKeyError, &PyExc_KeyError, "The key is not in the store."},
    {"StoreCorruptError", &StoreCorruptError, &PyExc_KeyError,
     "The key's record failed a check and was dropped."},
    {"StoreMismatchError", &StoreMismatchError, &PyExc_ValueError,
     "The stored record has another dtype or item shape than the destination."},
    {"StoreZstdError", &StoreZstdError, &PyExc_RuntimeError,
     "libzstd is missing or failed."},
    {"StorePermissionError", &StorePermissionError, &PyExc_PermissionError,
     "strict: the cache directory is writable by other users."},
};

/* Engine code -> exception type: the one table the binding raises from
 * (NULL type: MemoryError). */
static const struct {
    int code;
    PyObject **type;
} engine_errors[] = {
    {TC_STORE_EARG, &PyExc_ValueError},
    {TC_STORE_EIO, &StoreError},
    {TC_STORE_ENOMEM, NULL},
    {TC_STORE_EMISSING, &StoreKeyError},
    {TC_STORE_EMISMATCH, &StoreMismatchError},
    {TC_STORE_ECORRUPT, &StoreCorruptError},
    {TC_STORE_EZSTD, &StoreZstdError},
    {TC_STORE_ECLOSED, &StoreClosedError},
    {TC_STORE_EPERM, &StorePermissionError},
};

/* Raises the exception of an engine error code (engine_errors). */
static void raise_engine_error(int rc, const char *msg)
{
    for (size_t i = 0; i < sizeof(engine_errors) / sizeof(engine_errors[0]); i++) {
        if (engine_errors[i].code != rc)
            continue;
        if (engine_errors[i].type == NULL)
            PyErr_NoMemory();
        else
            PyErr_SetString(*engine_errors[i].type, msg);
        return;
    }
    PyErr_Format(PyExc_SystemError, "unknown store error code %d: %s", rc, msg);
}

static int check_open(StoreObject *self)
{
    if (self->closed || self->store == NULL) {
        raise_engine_error(TC_STORE_ECLOSED, "store is closed");
        return -1;
    }
    return 0;
}

static int store_exceptions_init(PyObject *module)
{
    for (size_t i = 0; i < sizeof(store_exceptions) / sizeof(store_exceptions[0]); i++) {
        const store_exception *e = &store_exceptions[i];
        char qualified[96];
        snprintf(qualified, sizeof(qualified), "torchcache_c._C.%s", e->name);
        PyObject *bases = e->also ? PyTuple_Pack(2, StoreError, *e->also)
                                  : PyTuple_Pack(1, PyExc_OSError);
        if (bases == NULL)
            return -1;
        *e->type = PyErr_NewExceptionWithDoc(qualified, e->doc, bases, NULL);
        Py_DECREF(bases);
        if (*e->type == NULL || PyModule_AddObjectRef(module, e->name, *e->type) < 0)
            return -1;
    }
    return 0;
}

static int is_cpu(const tc_view *v)
{
    int dev = v->t->device.device_type;
    return dev == TC_DL_CPU || dev == TC_DL_CUDA_HOST;
}

/* keys: a contiguous CPU int64 tensor of shape (N, 2). */
static int keys_view(PyObject *obj, tc_view *v)
{
    if (tc_view_from_object(obj, "keys", v) < 0)
        return -1;
    if (!is_cpu(v) || v->dtype_word != TC_DTYPE_INT64 || v->ndim != 2 || v->shape[1] != 2 ||
        !v->contiguous) {
        tc_view_release(v);
        PyErr_SetString(PyExc_ValueError,
                        "keys must be a contiguous CPU int64 tensor of shape (N, 2); "
                        "use keys.contiguous().cpu()");
        return -1;
    }
    return 0;
}

/* A batch tensor (rows, *item_shape) that is contiguous and on the CPU. */
static int batch_view(PyObject *obj, const char *what, int64_t rows, tc_view *v)
{
    if (tc_view_from_object(obj, what, v) < 0)
        return -1;
    if (!is_cpu(v) || !v->contiguous) {
        tc_view_release(v);
        PyErr_Format(PyExc_ValueError,
                     "%s must be a contiguous CPU tensor; use %s.contiguous().cpu()", what,
                     what);
        return -1;
    }
    if (v->ndim < 1 || v->shape[0] != rows) {
        tc_view_release(v);
        PyErr_Format(PyExc_ValueError,
                     "%s must have shape (N, *item_shape) with N = %lld, the number of keys",
                     what, (long long)rows);
        return -1;
    }
    if (v->ndim - 1 > TC_STORE_MAX_NDIM) {
        tc_view_release(v);
        PyErr_Format(PyExc_ValueError,
                     "%s has items of %d dimensions; the store keeps at most %d per item "
                     "(reshape the items, e.g. flatten the leading ones)",
                     what, v->ndim - 1, TC_STORE_MAX_NDIM);
        return -1;
    }
    return 0;
}

static PyObject *Store_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "max_bytes", "zstd_level", "zstd_threads", "refresh_ms",
                             "strict", "allow_other_owners", "file_mode", "dir_mode", NULL};
    PyObject *path_obj = Py_None, *level_obj = Py_None;
    long long max_bytes = 0, refresh_ms = TC_DEFAULT_REFRESH_MS;
    int zstd_threads = 0, strict = 0, allow_other_owners = 0, file_mode = 0666,
        dir_mode = 0777;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$LOiLppii:Store", kwlist, &path_obj,
                                     &max_bytes, &level_obj, &zstd_threads, &refresh_ms,
                                     &strict, &allow_other_owners, &file_mode, &dir_mode))
        return NULL;
    if (file_mode <= 0 || file_mode > 07777 || dir_mode <= 0 || dir_mode > 07777) {
        PyErr_Format(PyExc_ValueError,
                     "file_mode and dir_mode are permission bits (e.g. 0o660, 0o770), not "
                     "%o and %o", file_mode, dir_mode);
        return NULL;
    }
    if (max_bytes < 0) {
        PyErr_Format(PyExc_ValueError, "max_bytes must be >= 0 (0 means no limit), not %lld",
                     max_bytes);
        return NULL;
    }
    if (zstd_threads < 0) {
        PyErr_Format(PyExc_ValueError, "zstd_threads must be >= 0, not %d", zstd_threads);
        return NULL;
    }
    if (refresh_ms < 0) {
        PyErr_Format(PyExc_ValueError, "refresh_ms must be >= 0, not %lld", refresh_ms);
        return NULL;
    }
    tc_store_options opt = {0};
    opt.max_bytes = (uint64_t)max_bytes;
    opt.zstd_threads = zstd_threads;
    opt.refresh_ms = (uint64_t)refresh_ms;
    opt.strict = strict;
    opt.allow_other_owners = allow_other_owners;
    opt.file_mode = (unsigned)file_mode;
    opt.dir_mode = (unsigned)dir_mode;
    if (level_obj != Py_None) {
        if (PyBool_Check(level_obj) || !PyLong_Check(level_obj)) {
            PyErr_Format(PyExc_TypeError, "zstd_level must be an int or None, not %.100s",
                         Py_TYPE(level_obj)->tp_name);
            return NULL;
        }
        long level = PyLong_AsLong(level_obj);
        if (level == -1 && PyErr_Occurred())
            return NULL;
        if (level < -131072 || level > 22) {
            PyErr_Format(PyExc_ValueError, "zstd_level must be between -131072 and 22, not %ld",
                         level);
            return NULL;
        }
        opt.compress = 1;
        opt.zstd_level = (int)level;
    }
    PyObject *path_bytes = NULL, *path_str = NULL;
    if (path_obj != Py_None) {
        if (!PyUnicode_FSConverter(path_obj, &path_bytes))
            return NULL;
        path_str = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(path_bytes));
        if (path_str == NULL) {
            Py_DECREF(path_bytes);
            return NULL;
        }
    }
    StoreObject *self = (StoreObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_XDECREF(path_bytes);
        Py_XDECREF(path_str);
        return NULL;
    }
    self->path = path_str ? path_str : Py_NewRef(Py_None);
    char err[512] = "";
    int rc;
    const char *dir = path_bytes ? PyBytes_AS_STRING(path_bytes) : NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_open(dir, &opt, &self->store, err, sizeof(err));
    Py_END_ALLOW_THREADS
    Py_XDECREF(path_bytes);
    if (rc != TC_STORE_OK) {
        raise_engine_error(rc, err);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Store_dealloc(StoreObject *self)
{
    if (self->store) {
        tc_store *s = self->store;
        self->store = NULL;
        Py_BEGIN_ALLOW_THREADS
        tc_store_free(s);
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(lookup_doc,
"lookup(keys) -> bytes\n--\n\n"
"For keys, a contiguous CPU int64 tensor of shape (N, 2), return N bytes:\n"
"1 where the key's record is stored (and verifies), 0 where it is not.\n"
"When a key misses, first picks up records other writers appended since the\n"
"last scan (at most once per refresh_ms).");

static PyObject *Store_lookup(StoreObject *self, PyObject *keys_obj)
{
    if (check_open(self) < 0)
        return NULL;
    tc_view keys;
    if (keys_view(keys_obj, &keys) < 0)
        return NULL;
    Py_ssize_t n = (Py_ssize_t)keys.shape[0];
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) {
        tc_view_release(&keys);
        return NULL;
    }
    char err[512] = "";
    int rc;
    uint8_t *present = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_lookup(self->store, (const uint64_t *)keys.data, (size_t)n, present, err,
                         sizeof(err));
    Py_END_ALLOW_THREADS
    tc_view_release(&keys);
    if (rc != TC_STORE_OK) {
        Py_DECREF(out);
        raise_engine_error(rc, err);
        return NULL;
    }
    return out;
}

PyDoc_STRVAR(entry_info_doc,
"entry_info(keys, i) -> (dtype_word, item_shape)\n--\n\n"
"The DLPack dtype word (code | bits << 8 | lanes << 16) and item shape of the\n"
"stored record for row i of keys.  KeyError if it is not stored.");

static PyObject *Store_entry_info(StoreObject *self, PyObject *args)
{
    PyObject *keys_obj;
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "On:entry_info", &keys_obj, &i))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    tc_view keys;
    if (keys_view(keys_obj, &keys) < 0)
        return NULL;
    Py_ssize_t n = (Py_ssize_t)keys.shape[0];
    if (i < 0)
        i += n;
    if (i < 0 || i >= n) {
        tc_view_release(&keys);
        PyErr_Format(PyExc_IndexError, "i is out of range for %zd keys", n);
        return NULL;
    }
    uint64_t key[2];
    memcpy(key, keys.data + 16 * i, sizeof(key));
    tc_view_release(&keys);
    uint64_t dtype_word;
    int ndim;
    int64_t shape[TC_STORE_MAX_NDIM];
    char err[512] = "";
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_entry_info(self->store, key, &dtype_word, &ndim, shape, err, sizeof(err));
    Py_END_ALLOW_THREADS
    if (rc != TC_STORE_OK) {
        raise_engine_error(rc, err);
        return NULL;
    }
    PyObject *shape_t = PyTuple_New(ndim);
    if (shape_t == NULL)
        return NULL;
    for (int d = 0; d < ndim; d++) {
        PyObject *x = PyLong_FromLongLong(shape[d]);
        if (x == NULL) {
            Py_DECREF(shape_t);
            return NULL;
        }
        PyTuple_SET_ITEM(shape_t, d, x);
    }
    return Py_BuildValue("(KN)", (unsigned long long)dtype_word, shape_t);
}

PyDoc_STRVAR(gather_doc,
"gather(keys, dest) -> bytes\n--\n\n"
"Copy the stored record of every row of keys into dest[i], decompressing\n"
"where needed, and return N bytes: 1 where row i was served, 0 where it was\n"
"not (key absent, record damaged or of another dtype or item shape, or a\n"
"fault such as an I/O error or a segment truncated or removed under the\n"
"reader; see stats()['faults'] and take_faults()).  Rows not served hold\n"
"unspecified bytes: compute them.  dest is a contiguous CPU tensor of shape\n"
"(N, *item_shape).  Never raises for a fault; the GIL is released while\n"
"copying.");

/* The (keys, batch) arguments of gather and put: `fmt` is "OO:<method>" and
 * `what` names the batch argument.  Returns 0 with both views held, or -1. */
static int keys_and_batch(StoreObject *self, PyObject *args, const char *fmt, const char *what,
                          tc_view *keys, tc_view *batch)
{
    PyObject *keys_obj, *batch_obj;
    if (!PyArg_ParseTuple(args, fmt, &keys_obj, &batch_obj))
        return -1;
    if (check_open(self) < 0)
        return -1;
    if (keys_view(keys_obj, keys) < 0)
        return -1;
    if (batch_view(batch_obj, what, keys->shape[0], batch) < 0) {
        tc_view_release(keys);
        return -1;
    }
    return 0;
}

static PyObject *Store_gather(StoreObject *self, PyObject *args)
{
    tc_view keys, dest;
    if (keys_and_batch(self, args, "OO:gather", "dest", &keys, &dest) < 0)
        return NULL;
    Py_ssize_t n = (Py_ssize_t)keys.shape[0];
    PyObject *served = PyBytes_FromStringAndSize(NULL, n);
    if (served == NULL) {
        tc_view_release(&keys);
        tc_view_release(&dest);
        return NULL;
    }
    char err[512] = "";
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_gather(self->store, (const uint64_t *)keys.data, (size_t)n, dest.dtype_word,
                         dest.ndim - 1, dest.shape + 1, dest.data,
                         (uint8_t *)PyBytes_AS_STRING(served), err, sizeof(err));
    Py_END_ALLOW_THREADS
    tc_view_release(&keys);
    tc_view_release(&dest);
    if (rc != TC_STORE_OK) {
        Py_DECREF(served);
        raise_engine_error(rc, err);
        return NULL;
    }
    return served;
}

PyDoc_STRVAR(put_doc,
"put(keys, src) -> int\n--\n\n"
"Store src[i] (src: a contiguous CPU tensor (N, *item_shape), any dtype)\n"
"under row i of keys, skipping keys already present.  Returns the number of\n"
"records stored by this call: fewer once max_bytes is reached (is_full) or\n"
"after an I/O error (io_error); the store keeps serving either way.");

static PyObject *Store_put(StoreObject *self, PyObject *args)
{
    tc_view keys, src;
    if (keys_and_batch(self, args, "OO:put", "src", &keys, &src) < 0)
        return NULL;
    char err[512] = "";
    size_t stored = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_put(self->store, (const uint64_t *)keys.data, (size_t)keys.shape[0],
                      src.dtype_word, src.ndim - 1, src.shape + 1, src.data, &stored, err,
                      sizeof(err));
    Py_END_ALLOW_THREADS
    tc_view_release(&keys);
    tc_view_release(&src);
    if (rc != TC_STORE_OK) {
        raise_engine_error(rc, err);
        return NULL;
    }
    return PyLong_FromSize_t(stored);
}

PyDoc_STRVAR(refresh_doc,
"refresh() -> int\n--\n\n"
"Scan the directory for other writers' records now; return how many new\n"
"records were indexed.");

static PyObject *Store_refresh(StoreObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    char err[512] = "";
    size_t added = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_refresh(self->store, &added, err, sizeof(err));
    Py_END_ALLOW_THREADS
    if (rc != TC_STORE_OK) {
        raise_engine_error(rc, err);
        return NULL;
    }
    return PyLong_FromSize_t(added);
}

/* Damaged records found by a verify, collected with the GIL released and
 * turned into Python objects afterwards. */
typedef struct {
    char *segment; /* NULL for an arena chunk */
    size_t seg;
    uint64_t offset;
    const char *reason; /* a string literal of store.c */
} verify_problem;

typedef struct {
    verify_problem *items;
    size_t n, cap;
    int nomem;
} verify_problems;

static void collect_problem(void *ctx, const char *segment, size_t seg, uint64_t offset,
                            const char *reason)
{
    verify_problems *p = ctx;
    if (p->nomem)
        return;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        verify_problem *items = realloc(p->items, cap * sizeof(*items));
        if (items == NULL) {
            p->nomem = 1;
            return;
        }
        p->items = items;
        p->cap = cap;
    }
    char *name = NULL;
    if (segment != NULL && (name = strdup(segment)) == NULL) {
        p->nomem = 1;
        return;
    }
    p->items[p->n++] = (verify_problem){name, seg, offset, reason};
}

static void free_problems(verify_problems *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->items[i].segment);
    free(p->items);
}

static PyObject *problems_list(const verify_problems *p)
{
    PyObject *list = PyList_New((Py_ssize_t)p->n);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < p->n; i++) {
        const verify_problem *q = &p->items[i];
        PyObject *seg = q->segment ? PyUnicode_DecodeFSDefault(q->segment)
                                   : PyUnicode_FromFormat("<arena chunk %zu>", q->seg);
        PyObject *t = seg ? Py_BuildValue("(NKs)", seg, (unsigned long long)q->offset,
                                          q->reason)
                          : NULL;
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    return list;
}

PyDoc_STRVAR(verify_doc,
"verify() -> dict\n--\n\n"
"Check the header and payload checksum of every record of every segment\n"
"(docs/format.md, sections 4 and 6), duplicates included, after picking up\n"
"other writers' records.  Returns records (that verify), corrupt, bytes (of\n"
"the records that verify), torn (segments ending in an incomplete record),\n"
"segments, and problems: a list of (segment file name, offset, reason).\n"
"Records whose payload fails are dropped from the index.  The GIL is\n"
"released while reading.");

static PyObject *Store_verify(StoreObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    tc_store_verify_result r;
    verify_problems problems = {0};
    char err[512] = "";
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_verify(self->store, &r, collect_problem, &problems, err, sizeof(err));
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (rc != TC_STORE_OK) {
        raise_engine_error(rc, err);
    } else if (problems.nomem) {
        PyErr_NoMemory();
    } else {
        PyObject *list = problems_list(&problems);
        if (list != NULL)
            out = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:N}",
                                "records", (unsigned long long)r.records,
                                "corrupt", (unsigned long long)r.corrupt,
                                "bytes", (unsigned long long)r.bytes,
                                "torn", (unsigned long long)r.torn,
                                "segments", (unsigned long long)r.segments,
                                "problems", list);
    }
    free_problems(&problems);
    return out;
}

PyDoc_STRVAR(stats_doc,
"stats() -> dict\n--\n\n"
"records (indexed), segments (files read), corrupt (records skipped),\n"
"bytes_written and records_written (by this store), bytes_indexed, refreshes,\n"
"readdirs (refreshes that listed the directory), idle_rechecks (segments of\n"
"finished writers looked at again: at most 32 per listing), skipped (entries named like\n"
"segments that are not regular files), gone (segments removed or replaced\n"
"while indexed), open_fds (segment descriptors held now), faults (a dict:\n"
"fault kind -> count since open), full, io_error.");

static PyObject *faults_dict(const uint64_t *counts)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int k = 0; k < TC_FAULT_KINDS; k++) {
        PyObject *v = PyLong_FromUnsignedLongLong(counts[k]);
        if (v == NULL || PyDict_SetItemString(d, tc_store_fault_name(k), v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *Store_stats(StoreObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    tc_store_stats st;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_stats_get(self->store, &st);
    Py_END_ALLOW_THREADS
    if (rc != TC_STORE_OK) {
        raise_engine_error(rc, "store is closed");
        return NULL;
    }
    char io[512];
    int have_io;
    Py_BEGIN_ALLOW_THREADS
    have_io = tc_store_io_error(self->store, io, sizeof(io));
    Py_END_ALLOW_THREADS
    PyObject *io_obj = have_io ? PyUnicode_DecodeFSDefault(io) : Py_NewRef(Py_None);
    if (io_obj == NULL)
        return NULL;
    PyObject *faults = faults_dict(st.faults);
    if (faults == NULL) {
        Py_DECREF(io_obj);
        return NULL;
    }
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:N,s:O,s:N}",
                         "records", (unsigned long long)st.records,
                         "segments", (unsigned long long)st.segments,
                         "corrupt", (unsigned long long)st.corrupt,
                         "bytes_written", (unsigned long long)st.bytes_written,
                         "records_written", (unsigned long long)st.records_written,
                         "bytes_indexed", (unsigned long long)st.bytes_indexed,
                         "refreshes", (unsigned long long)st.refreshes,
                         "readdirs", (unsigned long long)st.readdirs,
                         "idle_rechecks", (unsigned long long)st.idle_rechecks,
                         "skipped", (unsigned long long)st.skipped,
                         "gone", (unsigned long long)st.gone,
                         "open_fds", (unsigned long long)st.open_fds,
                         "faults", faults,
                         "full", st.full ? Py_True : Py_False,
                         "io_error", io_obj);
}

PyDoc_STRVAR(take_faults_doc,
"take_faults() -> dict\n--\n\n"
"The fault kinds that happened since the last call, each with the message of\n"
"its latest fault: {kind: message}.  Empty when nothing went wrong.  A cache\n"
"calls it after its store calls and logs each kind once.");

static PyObject *Store_take_faults(StoreObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    PyObject *d = PyDict_New();
    if (d == NULL || !tc_store_faults_pending(self->store))
        return d; /* the common case: nothing new, no lock taken */
    for (int k = 0; k < TC_FAULT_KINDS; k++) {
        char msg[256] = "";
        uint64_t news;
        Py_BEGIN_ALLOW_THREADS
        news = tc_store_fault_take(self->store, k, msg, sizeof(msg));
        Py_END_ALLOW_THREADS
        if (news == 0)
            continue;
        PyObject *m = PyUnicode_DecodeFSDefault(msg);
        if (m == NULL || PyDict_SetItemString(d, tc_store_fault_name(k), m) < 0) {
            Py_XDECREF(m);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(m);
    }
    return d;
}

PyDoc_STRVAR(close_doc,
"close() -> None\n--\n\n"
"Unmap and close every segment.  Idempotent; other methods then raise\n"
"ValueError.");

static PyObject *Store_close(StoreObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->closed && self->store) {
        self->closed = 1;
        Py_BEGIN_ALLOW_THREADS
        tc_store_close(self->store);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *Store_enter(StoreObject *self, PyObject *unused)
{
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    return Py_NewRef((PyObject *)self);
}

static PyObject *Store_exit(StoreObject *self, PyObject *args)
{
    (void)args;
    return Store_close(self, NULL);
}

static PyObject *Store_get_is_full(StoreObject *self, void *closure)
{
    (void)closure;
    tc_store_stats st;
    if (self->store == NULL)
        Py_RETURN_FALSE;
    Py_BEGIN_ALLOW_THREADS
    tc_store_stats_get(self->store, &st);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(st.full);
}

static PyObject *Store_get_io_error(StoreObject *self, void *closure)
{
    (void)closure;
    char io[512];
    int have = 0;
    if (self->store == NULL)
        Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    have = tc_store_io_error(self->store, io, sizeof(io));
    Py_END_ALLOW_THREADS
    if (!have)
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(io);
}

static PyObject *Store_get_path(StoreObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->path);
}

static PyObject *Store_get_closed(StoreObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->closed);
}

static PyObject *Store_repr(StoreObject *self)
{
    return PyUnicode_FromFormat("<torchcache_c._C.Store path=%R%s>", self->path,
                                self->closed ? " closed" : "");
}

static PyMethodDef Store_methods[] = {
    {"lookup", (PyCFunction)Store_lookup, METH_O, lookup_doc},
    {"entry_info", (PyCFunction)Store_entry_info, METH_VARARGS, entry_info_doc},
    {"gather", (PyCFunction)Store_gather, METH_VARARGS, gather_doc},
    {"put", (PyCFunction)Store_put, METH_VARARGS, put_doc},
    {"refresh", (PyCFunction)Store_refresh, METH_NOARGS, refresh_doc},
    {"stats", (PyCFunction)Store_stats, METH_NOARGS, stats_doc},
    {"take_faults", (PyCFunction)Store_take_faults, METH_NOARGS, take_faults_doc},
    {"verify", (PyCFunction)Store_verify, METH_NOARGS, verify_doc},
    {"close", (PyCFunction)Store_close, METH_NOARGS, close_doc},
    {"__enter__", (PyCFunction)Store_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Store_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Store_getset[] = {
    {"is_full", (getter)Store_get_is_full, NULL, "The session byte limit max_bytes was reached.",
     NULL},
    {"io_error", (getter)Store_get_io_error, NULL,
     "The first I/O error that stopped storing (e.g. disk full), or None.", NULL},
    {"path", (getter)Store_get_path, NULL, "The cache directory, or None for memory.", NULL},
    {"closed", (getter)Store_get_closed, NULL, "close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Store_doc,
"Store(path=None, *, max_bytes=0, zstd_level=None, zstd_threads=0, refresh_ms=100, "
"strict=False, allow_other_owners=False, file_mode=0o666, dir_mode=0o777)\n--\n\n"
"An append-only store of per-item records keyed by 128-bit keys\n"
"(docs/format.md).  path=None keeps records in memory; otherwise path is the\n"
"cache directory (created with its parents), shared safely by any number of\n"
"processes.  max_bytes limits the bytes this store writes (0: no limit);\n"
"zstd_level compresses records that shrink; refresh_ms bounds how often a\n"
"miss rescans the directory for other writers' records.  A directory (or a\n"
"parent it creates) writable by other users without the sticky bit is a fault\n"
"of kind 'insecure' (take_faults), or StorePermissionError with strict=True;\n"
"segments owned by other users are ignored (fault 'foreign_owner') unless\n"
"allow_other_owners=True.  file_mode and dir_mode (before the umask) are the\n"
"modes of new segments and directories.");

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "torchcache_c._C.Store",
    .tp_basicsize = sizeof(StoreObject),
    .tp_dealloc = (destructor)Store_dealloc,
    .tp_repr = (reprfunc)Store_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Store_doc,
    .tp_methods = Store_methods,
    .tp_getset = Store_getset,
    .tp_new = Store_new,
};

PyDoc_STRVAR(compact_doc,
"compact(path, min_idle_s=3600) -> dict\n--\n\n"
"Merge the verified records of the segments of the cache directory path whose\n"
"writers cannot append any more (on this host: the pid in the name is not\n"
"running; elsewhere: unchanged for min_idle_s seconds) into one new segment\n"
"(temporary file, fsync, rename, directory fsync), then remove the merged\n"
"segments that are unchanged.  Other processes may read and write meanwhile\n"
"(docs/multiprocess.md, \"Compaction\").  Returns segments, live, removed,\n"
"kept, records, bytes, duplicates, dropped and merged (the new segment's file\n"
"name, or None when fewer than two segments could be merged).");

static PyObject *store_compact(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *kwlist[] = {"path", "min_idle_s", NULL};
    PyObject *path_bytes = NULL;
    long long min_idle_s = 3600;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|L:compact", kwlist,
                                     PyUnicode_FSConverter, &path_bytes, &min_idle_s))
        return NULL;
    if (min_idle_s < 0) {
        Py_DECREF(path_bytes);
        PyErr_Format(PyExc_ValueError, "min_idle_s must be >= 0, not %lld", min_idle_s);
        return NULL;
    }
    tc_store_compact_result r;
    char merged[256] = "", err[512] = "";
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_compact(PyBytes_AS_STRING(path_bytes), (int64_t)min_idle_s, &r, merged,
                          sizeof(merged), err, sizeof(err));
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (rc != TC_STORE_OK) {
        raise_engine_error(rc, err);
        return NULL;
    }
    PyObject *name = merged[0] ? PyUnicode_DecodeFSDefault(merged) : Py_NewRef(Py_None);
    if (name == NULL)
        return NULL;
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:N}",
                         "segments", (unsigned long long)r.segments,
                         "live", (unsigned long long)r.live,
                         "removed", (unsigned long long)r.removed,
                         "kept", (unsigned long long)r.kept,
                         "records", (unsigned long long)r.records,
                         "bytes", (unsigned long long)r.bytes,
                         "duplicates", (unsigned long long)r.duplicates,
                         "dropped", (unsigned long long)r.dropped,
                         "merged", name);
}

/* ---- records held in memory (issue 15, docs/remote.md) ------------------------ */

PyDoc_STRVAR(parse_record_doc,
"parse_record(buf, segment, offset, pos=0, payload=True)\n"
"    -> (key0, key1, dtype_word, item_shape, length, data)\n--\n\n"
"Check the record that starts at buf[pos:] exactly as a reader of its segment\n"
"file would (docs/format.md, sections 4 and 6): its header bound to the\n"
"segment file name `segment` and its byte `offset` in that segment, the record\n"
"whole inside buf, and with payload=True its payload checksum.  Returns the\n"
"key halves (signed, as in an int64 keys tensor), the DLPack dtype word, the\n"
"item shape, the record's length in bytes (header, payload, padding) and the\n"
"item's bytes (decompressed), or None for data when payload=False.  Raises\n"
"StoreCorruptError naming the check that failed, StoreZstdError if a\n"
"compressed payload cannot be decompressed.  The GIL is released while the\n"
"payload is checked and copied.");

static PyObject *store_parse_record(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *kwlist[] = {"buf", "segment", "offset", "pos", "payload", NULL};
    Py_buffer view;
    const char *segment;
    unsigned long long offset;
    Py_ssize_t pos = 0;
    int want_payload = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*sK|np:parse_record", kwlist, &view,
                                     &segment, &offset, &pos, &want_payload))
        return NULL;
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "pos %zd is outside the buffer of %zd bytes", pos,
                     view.len);
        return NULL;
    }
    const uint8_t *rec = (const uint8_t *)view.buf + pos;
    size_t len = (size_t)(view.len - pos);
    uint64_t seg_id = tc_store_segment_id(segment);
    tc_store_record r;
    char err[512] = "";
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = tc_store_record_parse(rec, len, seg_id, (uint64_t)offset, want_payload, &r, err,
                               sizeof(err));
    Py_END_ALLOW_THREADS
    if (rc != TC_STORE_OK) {
        PyBuffer_Release(&view);
        raise_engine_error(rc, err);
        return NULL;
    }
    PyObject *data = Py_NewRef(Py_None);
    if (want_payload) {
        Py_DECREF(data);
        if (r.raw_len > (uint64_t)PY_SSIZE_T_MAX) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)r.raw_len);
        if (data == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_BEGIN_ALLOW_THREADS
        rc = tc_store_record_payload(rec, &r, (uint8_t *)PyBytes_AS_STRING(data),
                                     (size_t)r.raw_len, err, sizeof(err));
        Py_END_ALLOW_THREADS
        if (rc != TC_STORE_OK) {
            Py_DECREF(data);
            PyBuffer_Release(&view);
            raise_engine_error(rc, err);
            return NULL;
        }
    }
    PyBuffer_Release(&view);
    PyObject *shape = PyTuple_New(r.ndim);
    if (shape == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    for (int d = 0; d < r.ndim; d++) {
        PyObject *x = PyLong_FromLongLong(r.shape[d]);
        if (x == NULL) {
            Py_DECREF(shape);
            Py_DECREF(data);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, d, x);
    }
    return Py_BuildValue("(LLKNKN)", (long long)r.key0, (long long)r.key1,
                         (unsigned long long)r.dtype_word, shape, (unsigned long long)r.total,
                         data);
}

PyDoc_STRVAR(segment_id_doc,
"segment_id(name) -> int\n--\n\n"
"The id version 2 records of the segment file `name` are bound to\n"
"(docs/format.md, section 4).");

static PyObject *store_segment_id(PyObject *module, PyObject *arg)
{
    (void)module;
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL)
        return NULL;
    return PyLong_FromUnsignedLongLong(tc_store_segment_id(name));
}

static PyMethodDef store_functions[] = {
    {"compact", (PyCFunction)(void (*)(void))store_compact, METH_VARARGS | METH_KEYWORDS,
     compact_doc},
    {"parse_record", (PyCFunction)(void (*)(void))store_parse_record,
     METH_VARARGS | METH_KEYWORDS, parse_record_doc},
    {"segment_id", (PyCFunction)store_segment_id, METH_O, segment_id_doc},
    {NULL, NULL, 0, NULL},
};

int tc_store_module_init(PyObject *module)
{
    if (store_exceptions_init(module) < 0 || PyModule_AddFunctions(module, store_functions) < 0)
        return -1;
    if (PyType_Ready(&StoreType) < 0)
        return -1;
    Py_INCREF(&StoreType);
    if (PyModule_AddObject(module, "Store", (PyObject *)&StoreType) < 0) {
        Py_DECREF(&StoreType);
        return -1;
    }
    return 0;
}

tc_store *tc_store_module_get(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &StoreType)) {
        PyErr_Format(PyExc_TypeError, "store must be a torchcache_c._C.Store, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    StoreObject *self = (StoreObject *)obj;
    return check_open(self) < 0 ? NULL : self->store;
}

void tc_store_module_raise(int rc, const char *msg)
{
    raise_engine_error(rc, msg);
}
