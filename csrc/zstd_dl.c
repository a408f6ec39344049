/* zstd_dl.c -- the few libzstd entry points the store uses, resolved once with
 * dlopen.  The prototypes are those of zstd.h's stable API (>= 1.4); the two
 * parameter numbers are that header's ZSTD_c_compressionLevel and
 * ZSTD_c_nbWorkers. */
#include "zstd_dl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TC_ZSTD_C_COMPRESSION_LEVEL 100
#define TC_ZSTD_C_NB_WORKERS 400

static struct {
    int loaded;
    size_t (*bound)(size_t);
    unsigned (*is_error)(size_t);
    const char *(*error_name)(size_t);
    const char *(*version)(void);
    void *(*create_cctx)(void);
    size_t (*free_cctx)(void *);
    size_t (*set_parameter)(void *, int, int);
    size_t (*compress2)(void *, void *, size_t, const void *, size_t);
    size_t (*decompress)(void *, size_t, const void *, size_t);
} zstd;

static pthread_once_t zstd_once = PTHREAD_ONCE_INIT;

static void zstd_load(void)
{
    /* Lets a deployment (and the tests) check that everything but compression
     * works on a machine without libzstd. */
    const char *off = getenv("TORCHCACHE_C_NO_ZSTD");
    if (off && strcmp(off, "1") == 0)
        return;
    void *lib = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL)
        lib = dlopen("libzstd.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL)
        return;
    *(void **)&zstd.bound = dlsym(lib, "ZSTD_compressBound");
    *(void **)&zstd.is_error = dlsym(lib, "ZSTD_isError");
    *(void **)&zstd.error_name = dlsym(lib, "ZSTD_getErrorName");
    *(void **)&zstd.version = dlsym(lib, "ZSTD_versionString");
    *(void **)&zstd.create_cctx = dlsym(lib, "ZSTD_createCCtx");
    *(void **)&zstd.free_cctx = dlsym(lib, "ZSTD_freeCCtx");
    *(void **)&zstd.set_parameter = dlsym(lib, "ZSTD_CCtx_setParameter");
    *(void **)&zstd.compress2 = dlsym(lib, "ZSTD_compress2");
    *(void **)&zstd.decompress = dlsym(lib, "ZSTD_decompress");
    zstd.loaded = zstd.bound && zstd.is_error && zstd.error_name && zstd.version &&
                  zstd.create_cctx && zstd.free_cctx && zstd.set_parameter &&
                  zstd.compress2 && zstd.decompress;
}

int tc_zstd_available(char *version, size_t version_len)
{
    pthread_once(&zstd_once, zstd_load);
    if (zstd.loaded && version && version_len)
        snprintf(version, version_len, "%s", zstd.version());
    return zstd.loaded;
}

size_t tc_zstd_bound(size_t n)
{
    return tc_zstd_available(NULL, 0) ? zstd.bound(n) : 0;
}

size_t tc_zstd_compress(void *dst, size_t dst_cap, const void *src, size_t n, int level,
                        int threads, char *err, size_t err_len)
{
    if (!tc_zstd_available(NULL, 0)) {
        snprintf(err, err_len, "libzstd.so.1 could not be loaded");
        return 0;
    }
    void *cctx = zstd.create_cctx();
    if (cctx == NULL) {
        snprintf(err, err_len, "ZSTD_createCCtx failed (out of memory)");
        return 0;
    }
    size_t rc = zstd.set_parameter(cctx, TC_ZSTD_C_COMPRESSION_LEVEL, level);
    /* A libzstd built without threads refuses nbWorkers > 0; compress single-threaded then. */
    if (!zstd.is_error(rc) && threads > 0)
        zstd.set_parameter(cctx, TC_ZSTD_C_NB_WORKERS, threads);
    if (!zstd.is_error(rc))
        rc = zstd.compress2(cctx, dst, dst_cap, src, n);
    zstd.free_cctx(cctx);
    if (zstd.is_error(rc)) {
        snprintf(err, err_len, "zstd compression failed: %s", zstd.error_name(rc));
        return 0;
    }
    return rc;
}

int tc_zstd_decompress(void *dst, size_t raw_len, const void *src, size_t n, char *err,
                       size_t err_len)
{
    if (!tc_zstd_available(NULL, 0)) {
        snprintf(err, err_len, "libzstd.so.1 could not be loaded");
        return -1;
    }
    size_t rc = zstd.decompress(dst, raw_len, src, n);
    if (zstd.is_error(rc)) {
        snprintf(err, err_len, "zstd decompression failed: %s", zstd.error_name(rc));
        return -1;
    }
    if (rc != raw_len) {
        snprintf(err, err_len, "zstd decompressed %zu bytes, expected %zu", rc, raw_len);
        return -1;
    }
    return 0;
}
