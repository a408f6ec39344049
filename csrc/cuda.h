/* cuda.h -- the CUDA engine as seen by module.c: hashing a batch that lives on
 * a GPU with the embedded kernels (docs/cuda.md), through the driver API
 * reached by dlopen.
 * Nothing here links libcudart or libcuda. */
#ifndef TC_CUDA_H
#define TC_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "dlpack.h"

#define TC_CUDA_UNAVAILABLE 1 /* no kernels, no driver, or they do not load: the caller copies to host */
#define TC_CUDA_ERROR 2       /* a driver error; err holds the CUDA error name */

/* Kinds of kernel image a build embeds (setup.py writes the same numbers). */
#define TC_CUDA_KIND_SASS 1 /* machine code for the GPUs setup.py's CUDA_ARCHS names */
#define TC_CUDA_KIND_PTX 2  /* compute_75 PTX, JIT-compiled by the driver for any newer GPU */
/* Room for an error message with the driver's JIT log in it. */
#define TC_CUDA_ERR_LEN 2048

/* The TC_CUDA_KIND_* bits of the embedded kernel image; 0 if it has none. */
int tc_cuda_kernel_kinds(void);
/* Hashes every item of the CUDA batch x on `stream` (a CUstream, NULL = the
 * legacy default stream) and writes 2 x B digest words to host memory.  Called
 * without the GIL.  Returns 0, TC_CUDA_UNAVAILABLE or TC_CUDA_ERROR. */
int tc_cuda_hash_batch(const tc_view *x, uint64_t sample_count, void *stream,
                       uint64_t *digests_host, char *err, size_t err_len);

#endif
