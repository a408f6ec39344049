/* fake_libcuda.c -- a stand-in for libcuda.so.1 for tests/test_cuda_kernel_image.py.
 *
 * It answers just enough of the driver API for csrc/cuda.c to reach
 * cuModuleLoadDataEx, records the image it is handed (a fatbin: header plus
 * payload; PTX: the text) and each load attempt under $FAKE_CUDA_RECORD_DIR,
 * writes a JIT error into the error log buffer it is given, and fails like a
 * driver whose JIT rejects the PTX.  No kernel ever runs; every other entry
 * point fails. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_SUCCESS 0
#define FAKE_ERROR_INVALID_PTX 218
#define FAKE_ERROR_UNKNOWN 999
#define FAKE_JIT_LOG "fake ptxas: line 9; error: JIT refused by the test driver\n"
#define FATBIN_MAGIC 0xBA55ED50u

static void record(const char *name, const void *data, size_t len, const char *mode)
{
    const char *dir = getenv("FAKE_CUDA_RECORD_DIR");
    char path[4096];
    if (dir == NULL || snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
        return;
    FILE *f = fopen(path, mode);
    if (f == NULL)
        return;
    fwrite(data, 1, len, f);
    fclose(f);
}

int cuInit(unsigned flags)
{
    (void)flags;
    return FAKE_SUCCESS;
}

int cuGetErrorName(int rc, const char **name)
{
    *name = rc == FAKE_SUCCESS ? "CUDA_SUCCESS"
            : rc == FAKE_ERROR_INVALID_PTX ? "CUDA_ERROR_INVALID_PTX"
                                           : "CUDA_ERROR_UNKNOWN";
    return FAKE_SUCCESS;
}

int cuDeviceGet(int *dev, int ordinal)
{
    *dev = ordinal;
    return FAKE_SUCCESS;
}

static char contexts[8];

int cuDevicePrimaryCtxRetain(void **ctx, int dev)
{
    *ctx = &contexts[dev & 7];
    return FAKE_SUCCESS;
}

int cuCtxGetCurrent(void **ctx)
{
    *ctx = &contexts[0];
    return FAKE_SUCCESS;
}

int cuCtxSetCurrent(void *ctx)
{
    (void)ctx;
    return FAKE_SUCCESS;
}

/* Option numbers of CUjit_option in the CUDA driver API. */
enum { ERROR_LOG_BUFFER = 5, ERROR_LOG_BUFFER_SIZE_BYTES = 6 };

int cuModuleLoadDataEx(void **module, const void *image, unsigned n, int *options,
                       void **values)
{
    (void)module;
    uint32_t magic;
    memcpy(&magic, image, 4);
    size_t len;
    if (magic == FATBIN_MAGIC) {
        uint64_t payload;
        memcpy(&payload, (const char *)image + 8, 8);
        len = 16 + (size_t)payload;
    } else {
        len = strlen(image);
    }
    record("image", image, len, "wb");
    record("loads", "load\n", 5, "ab");
    char *log = NULL;
    size_t cap = 0;
    for (unsigned i = 0; i < n; i++) {
        if (options[i] == ERROR_LOG_BUFFER)
            log = values[i];
        else if (options[i] == ERROR_LOG_BUFFER_SIZE_BYTES)
            cap = (size_t)(uintptr_t)values[i];
    }
    if (log != NULL && cap > 0) {
        snprintf(log, cap, "%s", FAKE_JIT_LOG);
        for (unsigned i = 0; i < n; i++)
            if (options[i] == ERROR_LOG_BUFFER_SIZE_BYTES)
                values[i] = (void *)(uintptr_t)strlen(log);
    }
    return FAKE_ERROR_INVALID_PTX;
}

#define FAIL_STUB(name) \
    int name(void)      \
    {                   \
        return FAKE_ERROR_UNKNOWN; \
    }
FAIL_STUB(cuModuleGetFunction)
FAIL_STUB(cuLaunchKernel)
FAIL_STUB(cuMemAlloc_v2)
FAIL_STUB(cuMemFree_v2)
FAIL_STUB(cuMemsetD8Async)
FAIL_STUB(cuMemcpyDtoHAsync_v2)
FAIL_STUB(cuStreamSynchronize)
