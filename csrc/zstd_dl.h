/* zstd_dl.h -- libzstd reached at run time with dlopen("libzstd.so.1"), so the
 * build needs no zstd headers and a machine without libzstd still imports us;
 * only asking for compression then fails, with a message saying how to get it. */
#ifndef TC_ZSTD_DL_H
#define TC_ZSTD_DL_H

#include <stddef.h>

/* 1 if libzstd could be loaded (writes its version into `version`), else 0. */
int tc_zstd_available(char *version, size_t version_len);
/* Upper bound of the compressed size of n bytes; 0 if libzstd is unavailable. */
size_t tc_zstd_bound(size_t n);
/* Compresses src into dst; returns the compressed size, or 0 with a message in err. */
size_t tc_zstd_compress(void *dst, size_t dst_cap, const void *src, size_t n, int level,
                        int threads, char *err, size_t err_len);
/* Decompresses exactly raw_len bytes; returns 0, or -1 with a message in err. */
int tc_zstd_decompress(void *dst, size_t raw_len, const void *src, size_t n, char *err,
                       size_t err_len);

#endif
