/* cuda.h -- the CUDA engine as seen by module.c: hashing a batch that lives on
 * a GPU with the embedded kernels, through the driver API reached by dlopen.
 * Nothing here links libcudart or libcuda. */
#ifndef TC_CUDA_H
#define TC_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "dlpack.h"

#define TC_CUDA_UNAVAILABLE 1 /* no kernels embedded, or no driver: the caller copies to host */
#define TC_CUDA_ERROR 2       /* a driver error; err holds the CUDA error name */

/* 1 if this build embeds the hash kernels. */
int tc_cuda_kernels_embedded(void);
/* Hashes every item of the CUDA batch x on `stream` (a CUstream, NULL = the
 * legacy default stream) and writes 2 x B digest words to host memory.  Called
 * without the GIL.  Returns 0, TC_CUDA_UNAVAILABLE or TC_CUDA_ERROR. */
int tc_cuda_hash_batch(const tc_view *x, uint64_t sample_count, void *stream,
                       uint64_t *digests_host, char *err, size_t err_len);

#endif
