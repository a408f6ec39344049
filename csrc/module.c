/* module.c -- the CPython module torchcache_c._C: argument parsing, the GIL,
 * and turning engine results into Python objects and exceptions.
 *
 * It owns no algorithm: hashing is hash*.c, storage is store.c (bound in
 * store_module.c).  It never imports torch: tensors arrive through DLPack and
 * results are written into tensors the Python shim allocated, or (hash_into with
 * out=None) into a buffer of call.c's pool handed back as a DLPack capsule. */
#include "dlpack.h"
#include "hash.h"
#include "cuda.h"
#include "zstd_dl.h"
#include "store_module.h"
#include "call.h"
#include "watch_module.h"

#include <stdlib.h>

/* Py_NewRef and the rest of the 3.10 C API are used throughout; pyproject.toml's
 * requires-python says the same (tests/test_python_version.py checks they agree). */
#if PY_VERSION_HEX < 0x030A0000
#error "torchcache_c needs CPython 3.10 or newer (it uses Py_NewRef): build it with python3.10+"
#endif

#ifndef TC_VERSION
#define TC_VERSION "0.0.0"
#endif

/* Below this many bytes the GIL is kept: releasing it costs more than hashing. */
#define TC_GIL_RELEASE_BYTES (64 * 1024)

static int check_digest_out(const tc_view *out, int64_t batch)
{
    if (out->t->device.device_type != TC_DL_CPU || out->dtype_word != (0 | 64 << 8 | 1 << 16) ||
        out->ndim != 2 || out->shape[0] != batch || out->shape[1] != 2 || !out->contiguous) {
        PyErr_Format(PyExc_ValueError,
                     "out must be a contiguous CPU int64 tensor of shape (%lld, 2)",
                     (long long)batch);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(hash_into_doc,
"hash_into(x, out, sample_count=0, stream=0, threads=1)\n--\n\n"
"Write the tch128-v2 digest of every item x[i] into out[i] (an int64 (B, 2)\n"
"CPU tensor).  sample_count=0 hashes every byte; N > 0 hashes the sample of\n"
"N elements defined in docs/hash.md.  For a CUDA x, stream is the address of\n"
"the CUDA stream to run on.  A large CPU batch is split over up to `threads`\n"
"threads.  With out=None (a CPU x with B > 0 only) the digests go into a new\n"
"buffer, returned as a DLPack capsule, and x is exported through the exporter\n"
"call_fetch uses (_set_tensor_exporter): hash_tensor's path, one C call for\n"
"the export and none for an output tensor.");

static PyObject *py_hash_into(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "out", "sample_count", "stream", "threads", NULL};
    PyObject *x_obj, *out_obj;
    long long sample_count = 0;
    unsigned long long stream = 0;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|LKi:hash_into", kwlist, &x_obj, &out_obj,
                                     &sample_count, &stream, &threads))
        return NULL;
    if (sample_count < 0) {
        PyErr_Format(PyExc_ValueError, "sample_count must be >= 0, not %lld", sample_count);
        return NULL;
    }
    tc_view x, out = {0};
    if (out_obj == Py_None) {
        if (tc_call_export_view(x_obj, "x", &x) < 0)
            return NULL;
    } else {
        if (tc_view_from_object(x_obj, "x", &x) < 0)
            return NULL;
        if (tc_view_from_object(out_obj, "out", &out) < 0) {
            tc_view_release(&x);
            return NULL;
        }
    }
    PyObject *result = NULL, *fresh = NULL;
    if (x.ndim < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "x must have a batch dimension: a 0-d tensor has no items; "
                        "use x.reshape(1) for one scalar item");
        goto done;
    }
    int64_t batch = x.shape[0];
    int dev = x.t->device.device_type;
    uint64_t *digests;
    if (out_obj == Py_None) {
        if ((dev != TC_DL_CPU && dev != TC_DL_CUDA_HOST) || batch == 0) {
            PyErr_SetString(PyExc_ValueError,
                            "out=None needs a CPU x with at least one item; pass an int64 "
                            "(B, 2) CPU tensor as out otherwise");
            goto done;
        }
        fresh = tc_call_new_digests(batch, &digests);
        if (fresh == NULL)
            goto done;
    } else {
        if (check_digest_out(&out, batch) < 0)
            goto done;
        digests = (uint64_t *)out.data;
    }
    if (dev == TC_DL_CUDA || dev == TC_DL_CUDA_MANAGED) {
        char err[TC_CUDA_ERR_LEN];
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = tc_cuda_hash_batch(&x, (uint64_t)sample_count, (void *)(uintptr_t)stream,
                                digests, err, sizeof(err));
        Py_END_ALLOW_THREADS
        if (rc != 0) {
            PyErr_SetString(rc == TC_CUDA_UNAVAILABLE ? PyExc_NotImplementedError
                                                      : PyExc_RuntimeError, err);
            goto done;
        }
    } else if (dev == TC_DL_CPU || dev == TC_DL_CUDA_HOST) {
        tc_batch batch_desc;
        tc_batch_of(&x, &batch_desc);
        int64_t total = tc_view_numel(&x) * (int64_t)x.itemsize;
        int rc;
        PyThreadState *ts = NULL;
        if (total >= TC_GIL_RELEASE_BYTES)
            ts = PyEval_SaveThread();
        rc = tc_hash_batch(&batch_desc, (uint64_t)sample_count, threads, digests);
        if (ts)
            PyEval_RestoreThread(ts);
        if (rc != 0) {
            PyErr_NoMemory();
            goto done;
        }
    } else {
        PyErr_Format(PyExc_ValueError,
                     "x is on DLPack device type %d; only CPU and CUDA tensors can be hashed",
                     dev);
        goto done;
    }
    result = fresh != NULL ? Py_NewRef(fresh) : Py_NewRef(Py_None);
done:
    Py_XDECREF(fresh);
    tc_view_release(&x);
    tc_view_release(&out);
    return result;
}

PyDoc_STRVAR(build_info_doc,
"build_info()\n--\n\n"
"A dict describing this build, to paste into a bug report.");

static PyObject *py_build_info(PyObject *self, PyObject *unused)
{
    char zstd_version[32];
    int have_zstd = tc_zstd_available(zstd_version, sizeof(zstd_version));
    int kinds = tc_cuda_kernel_kinds();
    PyObject *kind_names = Py_BuildValue("[]");
    if (kind_names == NULL)
        return NULL;
    static const struct { int bit; const char *name; } kind_table[] = {
        {TC_CUDA_KIND_SASS, "sass"},
        {TC_CUDA_KIND_PTX, "ptx"},
    };
    for (size_t i = 0; i < sizeof(kind_table) / sizeof(kind_table[0]); i++) {
        if (!(kinds & kind_table[i].bit))
            continue;
        PyObject *name = PyUnicode_FromString(kind_table[i].name);
        if (name == NULL || PyList_Append(kind_names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(kind_names);
            return NULL;
        }
        Py_DECREF(name);
    }
    return Py_BuildValue(
        "{s:s,s:s,s:s,s:s,s:O,s:N,s:O,s:s,s:s}",
        "version", TC_VERSION,
        "compiler",
#if defined(__clang__)
        "clang " __clang_version__,
#elif defined(__GNUC__)
        "gcc " __VERSION__,
#else
        "unknown",
#endif
        "simd", tc_hash_simd_name(tc_hash_simd_active()),
        "simd_best", tc_hash_simd_name(tc_hash_simd_best()),
        "cuda_kernels", kinds ? Py_True : Py_False,
        "cuda_kernel_kinds", kind_names,
        "zstd", have_zstd ? Py_True : Py_False,
        "zstd_version", have_zstd ? zstd_version : "",
        "hash", "tch128-v2");
}

PyDoc_STRVAR(set_simd_doc,
"_set_simd(level)\n--\n\n"
"Use the stripe loop for level ('portable', 'avx2' or 'avx512') in this\n"
"process.  For tests and benchmarks; raises ValueError if the CPU lacks it.");

static PyObject *py_set_simd(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL)
        return NULL;
    for (int level = TC_SIMD_PORTABLE; level <= TC_SIMD_AVX512; level++) {
        if (strcmp(name, tc_hash_simd_name(level)) == 0) {
            if (tc_hash_simd_force(level) < 0) {
                PyErr_Format(PyExc_ValueError, "this CPU does not support SIMD level %R", arg);
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError,
                 "unknown SIMD level %R; expected 'portable', 'avx2' or 'avx512'", arg);
    return NULL;
}

PyDoc_STRVAR(threads_runtime_doc,
"_threads_runtime(allow_openmp=None)\n--\n\n"
"Whose threads hashing with threads > 1 runs on in this process: the path of\n"
"the OpenMP runtime it shares with torch, or 'pthreads' (threads of its own,\n"
"made for each call).  allow_openmp=False makes it use its own threads even\n"
"where a runtime is loaded (True: back to the default).  For tests and\n"
"benchmarks.");

static PyObject *py_threads_runtime(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"allow_openmp", NULL};
    PyObject *allow = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:_threads_runtime", kwlist, &allow))
        return NULL;
    if (allow != Py_None) {
        int on = PyObject_IsTrue(allow);
        if (on < 0)
            return NULL;
        tc_hash_threads_allow_openmp(on);
    }
    return PyUnicode_DecodeFSDefault(tc_hash_threads_runtime());
}

static PyMethodDef module_methods[] = {
    {"hash_into", (PyCFunction)(void (*)(void))py_hash_into, METH_VARARGS | METH_KEYWORDS,
     hash_into_doc},
    {"build_info", py_build_info, METH_NOARGS, build_info_doc},
    {"_set_simd", py_set_simd, METH_O, set_simd_doc},
    {"_threads_runtime", (PyCFunction)(void (*)(void))py_threads_runtime,
     METH_VARARGS | METH_KEYWORDS, threads_runtime_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "torchcache_c._C",
    .m_doc = "The C core of torchcache_c: the item hasher and the segment store.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__C(void)
{
    tc_hash_init();
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (tc_store_module_init(m) < 0 || tc_watch_module_init(m) < 0 ||
        tc_call_module_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
