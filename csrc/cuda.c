/* cuda.c -- the CUDA engine's host side (docs/cuda.md): reaches the driver
 * API through dlopen("libcuda.so.1"), loads the kernel image embedded by
 * setup.py (a fatbin with SASS and PTX, or the PTX alone, which the driver
 * JIT-compiles) once per context, and hashes a batch on the caller's stream.
 *
 * Plain C without CUDA headers: the few driver types and entry points used are
 * declared here (their ABI is stable across driver versions).  It links
 * neither libcudart nor libcuda, never aborts (every driver error comes back
 * as TC_CUDA_ERROR with the error's name), and never touches Python. */
#include "cuda.h"
#include "hash_cuda_common.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(TC_CU_MAX_DIMS == TC_MAX_NDIM, "kernel arguments hold every dimension");

#ifndef TC_HAVE_CUDA_IMAGE

int tc_cuda_kernel_kinds(void)
{
    return 0;
}

int tc_cuda_hash_batch(const tc_view *x, uint64_t sample_count, void *stream,
                       uint64_t *digests_host, char *err, size_t err_len)
{
    (void)x;
    (void)sample_count;
    (void)stream;
    (void)digests_host;
    snprintf(err, err_len,
             "this build has no CUDA kernels (csrc/hash_cuda.ptx did not match the sources "
             "and nvcc was not found; see build_info())");
    return TC_CUDA_UNAVAILABLE;
}

#else

/* Written by setup.py: a fatbin (kinds SASS|PTX) or NUL-terminated PTX text. */
extern const unsigned char tc_hash_cuda_image[];
extern const size_t tc_hash_cuda_image_len;
extern const int tc_hash_cuda_image_kinds;

int tc_cuda_kernel_kinds(void)
{
    return tc_hash_cuda_image_kinds;
}

/* ---- the driver API, declared by hand (cuda.h of the CUDA toolkit) ---- */

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef unsigned long long CUdeviceptr;
typedef int CUjit_option;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_NOT_SUPPORTED 801
#define CU_JIT_INFO_LOG_BUFFER 3
#define CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES 4
#define CU_JIT_ERROR_LOG_BUFFER 5
#define CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES 6

static struct {
    CUresult (*Init)(unsigned);
    CUresult (*GetErrorName)(CUresult, const char **);
    CUresult (*DeviceGet)(CUdevice *, int);
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*CtxGetCurrent)(CUcontext *);
    CUresult (*CtxSetCurrent)(CUcontext);
    CUresult (*ModuleLoadDataEx)(CUmodule *, const void *, unsigned, CUjit_option *, void **);
    CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
    CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, CUstream, void **, void **);
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);
    CUresult (*MemFree)(CUdeviceptr);
    CUresult (*MemAllocAsync)(CUdeviceptr *, size_t, CUstream); /* NULL before CUDA 11.2 */
    CUresult (*MemFreeAsync)(CUdeviceptr, CUstream);
    CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
    CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
    CUresult (*StreamSynchronize)(CUstream);
} drv;

static pthread_once_t drv_once = PTHREAD_ONCE_INIT;
static char drv_error[200]; /* empty once the driver is usable */

static void *drv_sym(void *lib, const char *name, int required)
{
    void *f = dlsym(lib, name);
    if (f == NULL && required && drv_error[0] == 0)
        snprintf(drv_error, sizeof(drv_error),
                 "libcuda.so.1 lacks %s; the NVIDIA driver is too old", name);
    return f;
}

static void drv_load(void)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        snprintf(drv_error, sizeof(drv_error), "cannot load the NVIDIA driver (libcuda.so.1)");
        return;
    }
    /* Casting dlsym's void * to a function pointer is what POSIX prescribes. */
#define SYM(field, name, required) *(void **)&drv.field = drv_sym(lib, name, required)
    SYM(Init, "cuInit", 1);
    SYM(GetErrorName, "cuGetErrorName", 1);
    SYM(DeviceGet, "cuDeviceGet", 1);
    SYM(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 1);
    SYM(CtxGetCurrent, "cuCtxGetCurrent", 1);
    SYM(CtxSetCurrent, "cuCtxSetCurrent", 1);
    SYM(ModuleLoadDataEx, "cuModuleLoadDataEx", 1);
    SYM(ModuleGetFunction, "cuModuleGetFunction", 1);
    SYM(LaunchKernel, "cuLaunchKernel", 1);
    SYM(MemAlloc, "cuMemAlloc_v2", 1);
    SYM(MemFree, "cuMemFree_v2", 1);
    SYM(MemAllocAsync, "cuMemAllocAsync", 0);
    SYM(MemFreeAsync, "cuMemFreeAsync", 0);
    SYM(MemsetD8Async, "cuMemsetD8Async", 1);
    SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", 1);
    SYM(StreamSynchronize, "cuStreamSynchronize", 1);
#undef SYM
    if (drv_error[0])
        return;
    if (drv.MemAllocAsync == NULL || drv.MemFreeAsync == NULL)
        drv.MemAllocAsync = NULL;
    CUresult rc = drv.Init(0);
    if (rc != CUDA_SUCCESS) {
        const char *name = NULL;
        drv.GetErrorName(rc, &name);
        snprintf(drv_error, sizeof(drv_error), "cuInit failed (%s)", name ? name : "unknown");
    }
}

/* ---- the kernels of each context ---- */

/* A context's kernels, or why they did not load there (failure != NULL): a
 * failed JIT is not retried on every batch, and each call reports the same log. */
typedef struct {
    CUcontext ctx;
    CUfunction hash_blocks, gather, finish;
    char *failure;
} tc_cuda_module;

#define TC_MAX_CONTEXTS 64
static tc_cuda_module modules[TC_MAX_CONTEXTS];
static int nmodules;
static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
/* Primary contexts this engine retained, one per device; kept for the
 * life of the process like torch's own. */
static CUcontext retained[TC_MAX_CONTEXTS];
static pthread_mutex_t retained_lock = PTHREAD_MUTEX_INITIALIZER;

static int cu_fail(CUresult rc, const char *call, char *err, size_t err_len)
{
    const char *name = NULL;
    if (drv.GetErrorName(rc, &name) != CUDA_SUCCESS || name == NULL)
        name = "CUDA_ERROR_UNKNOWN";
    snprintf(err, err_len, "CUDA error %s in %s", name, call);
    return TC_CUDA_ERROR;
}

#define CU_CHECK(call, expr)                                  \
    do {                                                      \
        CUresult rc_ = (expr);                                \
        if (rc_ != CUDA_SUCCESS)                              \
            return cu_fail(rc_, call, err, err_len);          \
    } while (0)

#define TC_JIT_LOG_LEN 1536

static void trim_log(char *log)
{
    size_t n = strnlen(log, TC_JIT_LOG_LEN - 1);
    log[n] = 0;
    while (n > 0 && (log[n - 1] == '\n' || log[n - 1] == ' '))
        log[--n] = 0;
}

/* Loads the embedded image into the current context.  The driver takes SASS
 * for this GPU from a fatbin when it has it and otherwise JIT-compiles the PTX
 * (cached across processes in ~/.nv/ComputeCache); a failed JIT leaves its
 * reason in the error log, which goes into err. */
static int load_image(CUmodule *mod, char *err, size_t err_len)
{
    char error_log[TC_JIT_LOG_LEN] = "", info_log[TC_JIT_LOG_LEN] = "";
    CUjit_option options[4] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
                               CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES};
    void *values[4] = {error_log, (void *)(uintptr_t)sizeof(error_log), info_log,
                       (void *)(uintptr_t)sizeof(info_log)};
    CUresult cr = drv.ModuleLoadDataEx(mod, tc_hash_cuda_image, 4, options, values);
    (void)tc_hash_cuda_image_len;
    if (cr == CUDA_SUCCESS)
        return 0;
    const char *name = NULL;
    if (drv.GetErrorName(cr, &name) != CUDA_SUCCESS || name == NULL)
        name = "CUDA_ERROR_UNKNOWN";
    trim_log(error_log);
    trim_log(info_log);
    const char *log = error_log[0] ? error_log : info_log[0] ? info_log : "(empty)";
    /* The host path still gives the right digest: this is TC_CUDA_UNAVAILABLE. */
    snprintf(err, err_len,
             "CUDA error %s in cuModuleLoadDataEx: the embedded kernels (%s) do not load on "
             "this GPU and driver; JIT log: %s",
             name,
             (tc_hash_cuda_image_kinds & TC_CUDA_KIND_SASS) ? "SASS and PTX" : "PTX only",
             log);
    return TC_CUDA_UNAVAILABLE;
}

/* The kernels in the current context `ctx`, loaded on first use. */
static int module_for(CUcontext ctx, tc_cuda_module *out, char *err, size_t err_len)
{
    int rc = 0;
    pthread_mutex_lock(&modules_lock);
    for (int i = 0; i < nmodules; i++) {
        if (modules[i].ctx == ctx) {
            if (modules[i].failure) {
                snprintf(err, err_len, "%s", modules[i].failure);
                rc = TC_CUDA_UNAVAILABLE;
            }
            *out = modules[i];
            goto done;
        }
    }
    if (nmodules == TC_MAX_CONTEXTS) {
        snprintf(err, err_len, "CUDA hashing supports at most %d contexts per process",
                 TC_MAX_CONTEXTS);
        rc = TC_CUDA_UNAVAILABLE;
        goto done;
    }
    tc_cuda_module m;
    memset(&m, 0, sizeof(m));
    m.ctx = ctx;
    CUmodule mod;
    rc = load_image(&mod, err, err_len);
    if (rc) {
        /* Remembered for this context; if strdup fails the next call retries. */
        m.failure = strdup(err);
        if (m.failure)
            modules[nmodules++] = m;
        goto done;
    }
    const char *names[3] = {"tc_hash_blocks", "tc_gather", "tc_finish"};
    CUfunction *fns[3] = {&m.hash_blocks, &m.gather, &m.finish};
    for (int i = 0; i < 3; i++) {
        CUresult cr = drv.ModuleGetFunction(fns[i], mod, names[i]);
        if (cr != CUDA_SUCCESS) {
            rc = cu_fail(cr, "cuModuleGetFunction", err, err_len);
            goto done;
        }
    }
    modules[nmodules++] = m;
    *out = m;
done:
    pthread_mutex_unlock(&modules_lock);
    return rc;
}

/* Makes the primary context of `device` current: the context torch allocates
 * in and whose streams it hands us.  It is usually current already; when it is
 * not (no context on this thread, or another device's), it is retained once
 * per process and made current for the call, and *prev is what to restore. */
static int enter_context(int device, CUcontext *ctx, CUcontext *prev, int *switched, char *err,
                         size_t err_len)
{
    *switched = 0;
    if (device < 0 || device >= TC_MAX_CONTEXTS) {
        snprintf(err, err_len, "CUDA device %d is out of range", device);
        return TC_CUDA_ERROR;
    }
    pthread_mutex_lock(&retained_lock);
    CUresult rc = CUDA_SUCCESS;
    const char *call = "cuDeviceGet";
    if (retained[device] == NULL) {
        CUdevice dev;
        rc = drv.DeviceGet(&dev, device);
        if (rc == CUDA_SUCCESS) {
            call = "cuDevicePrimaryCtxRetain";
            rc = drv.DevicePrimaryCtxRetain(&retained[device], dev);
        }
    }
    *ctx = retained[device];
    pthread_mutex_unlock(&retained_lock);
    if (rc != CUDA_SUCCESS)
        return cu_fail(rc, call, err, err_len);
    CU_CHECK("cuCtxGetCurrent", drv.CtxGetCurrent(prev));
    if (*prev == *ctx)
        return 0;
    CU_CHECK("cuCtxSetCurrent", drv.CtxSetCurrent(*ctx));
    *switched = 1;
    return 0;
}

/* Bytes of scratch a non-compact or sampled batch may use at once. */
#define TC_CUDA_SCRATCH_CAP ((uint64_t)64 << 20)
#define TC_CUDA_FINISH_THREADS 128
#define TC_CUDA_GATHER_THREADS 256
#define TC_CUDA_GATHER_MAX_CTAS 65536

static unsigned ceil_div_u32(uint64_t a, uint64_t b)
{
    return (unsigned)((a + b - 1) / b);
}

static int alloc_device(CUdeviceptr *p, size_t n, CUstream stream, int *async_alloc, char *err,
                        size_t err_len)
{
    *async_alloc = 0;
    if (drv.MemAllocAsync) {
        CUresult rc = drv.MemAllocAsync(p, n, stream);
        if (rc == CUDA_SUCCESS) {
            *async_alloc = 1;
            return 0;
        }
        /* Devices without memory pools say so; anything else is a real error. */
        if (rc != CUDA_ERROR_NOT_SUPPORTED)
            return cu_fail(rc, "cuMemAllocAsync", err, err_len);
    }
    CU_CHECK("cuMemAlloc", drv.MemAlloc(p, n));
    return 0;
}

static int hash_steps(const tc_cuda_module *m, tc_cu_plan *pl, CUdeviceptr mem,
                      uint64_t acc_bytes, CUstream stream, uint64_t *digests_host, char *err,
                      size_t err_len)
{
    CUdeviceptr acc = mem, scratch = mem + acc_bytes;
    CU_CHECK("cuMemsetD8Async", drv.MemsetD8Async(acc, 0, acc_bytes, stream));
    tc_cu_step st;
    while (tc_cu_plan_next(pl, scratch, acc, &st)) {
        if (st.gather) {
            uint64_t ctas = (tc_cu_gather_total(&st.g) + TC_CUDA_GATHER_THREADS - 1) /
                            TC_CUDA_GATHER_THREADS;
            if (ctas > TC_CUDA_GATHER_MAX_CTAS)
                ctas = TC_CUDA_GATHER_MAX_CTAS;
            void *params[] = {&st.g};
            CU_CHECK("cuLaunchKernel(tc_gather)",
                     drv.LaunchKernel(m->gather, (unsigned)ctas, 1, 1, TC_CUDA_GATHER_THREADS, 1, 1,
                                      0, stream, params, NULL));
        }
        uint64_t warps = st.h.nitems * st.h.blk_count;
        uint64_t ctas = (warps + TC_CU_WARPS_PER_CTA - 1) / TC_CU_WARPS_PER_CTA;
        if (ctas > 0x7fffffffULL) {
            snprintf(err, err_len, "batch too large for one CUDA launch (%llu blocks)",
                     (unsigned long long)warps);
            return TC_CUDA_ERROR;
        }
        void *params[] = {&st.h};
        CU_CHECK("cuLaunchKernel(tc_hash_blocks)",
                 drv.LaunchKernel(m->hash_blocks, (unsigned)ctas, 1, 1, 32 * TC_CU_WARPS_PER_CTA,
                                  1, 1, 0, stream, params, NULL));
    }
    tc_cu_finish_args fin;
    tc_cu_plan_finish_args(pl, acc, &fin);
    void *params[] = {&fin};
    CU_CHECK("cuLaunchKernel(tc_finish)",
             drv.LaunchKernel(m->finish, ceil_div_u32(pl->batch, TC_CUDA_FINISH_THREADS), 1, 1,
                              TC_CUDA_FINISH_THREADS, 1, 1, 0, stream, params, NULL));
    CU_CHECK("cuMemcpyDtoHAsync",
             drv.MemcpyDtoHAsync(digests_host, acc, 16 * pl->batch, stream));
    CU_CHECK("cuStreamSynchronize", drv.StreamSynchronize(stream));
    return 0;
}

int tc_cuda_hash_batch(const tc_view *x, uint64_t sample_count, void *stream,
                       uint64_t *digests_host, char *err, size_t err_len)
{
    pthread_once(&drv_once, drv_load);
    if (drv_error[0]) {
        snprintf(err, err_len, "%s", drv_error);
        return TC_CUDA_UNAVAILABLE;
    }
    if (x->ndim < 1 || x->shape[0] == 0)
        return 0;
    tc_cu_plan *pl = malloc(sizeof(*pl));
    if (pl == NULL) {
        snprintf(err, err_len, "out of host memory");
        return TC_CUDA_ERROR;
    }
    pl->data = (uint64_t)(uintptr_t)x->data;
    pl->item_stride = x->strides[0];
    pl->itemsize = x->itemsize;
    pl->dtype_word = x->dtype_word;
    pl->batch = (uint64_t)x->shape[0];
    pl->ndim = x->ndim - 1;
    for (int d = 0; d < pl->ndim; d++) {
        pl->shape[d] = x->shape[d + 1];
        pl->strides[d] = x->strides[d + 1];
    }
    pl->sample_count = sample_count;
    pl->scratch_cap = TC_CUDA_SCRATCH_CAP;
    tc_cu_plan_init(pl);

    CUcontext ctx, prev;
    int switched;
    int rc = enter_context(x->t->device.device_id, &ctx, &prev, &switched, err, err_len);
    if (rc) {
        free(pl);
        return rc;
    }
    tc_cuda_module m;
    rc = module_for(ctx, &m, err, err_len);
    if (rc == 0) {
        CUstream s = (CUstream)stream;
        uint64_t acc_bytes = (16 * pl->batch + 255) / 256 * 256;
        CUdeviceptr mem = 0;
        int async_alloc = 0;
        rc = alloc_device(&mem, acc_bytes + pl->scratch_bytes, s, &async_alloc, err, err_len);
        if (rc == 0) {
            rc = hash_steps(&m, pl, mem, acc_bytes, s, digests_host, err, err_len);
            /* On error the stream may still use mem: wait before freeing. */
            if (rc)
                drv.StreamSynchronize(s);
            CUresult fr = async_alloc ? drv.MemFreeAsync(mem, s) : drv.MemFree(mem);
            if (fr != CUDA_SUCCESS && rc == 0)
                rc = cu_fail(fr, async_alloc ? "cuMemFreeAsync" : "cuMemFree", err, err_len);
        }
    }
    if (switched)
        drv.CtxSetCurrent(prev);
    free(pl);
    return rc;
}

#endif /* TC_HAVE_CUDA_IMAGE */
