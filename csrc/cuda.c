/* cuda.c -- the CUDA engine's host side.  This build step knows only whether
 * kernels are embedded; the driver-API launcher lands with issue 5. */
#include "cuda.h"

#include <stdio.h>

int tc_cuda_kernels_embedded(void)
{
#ifdef TC_HAVE_CUDA_FATBIN
    return 1;
#else
    return 0;
#endif
}

int tc_cuda_hash_batch(const tc_view *x, uint64_t sample_count, void *stream,
                       uint64_t *digests_host, char *err, size_t err_len)
{
    (void)x;
    (void)sample_count;
    (void)stream;
    (void)digests_host;
    snprintf(err, err_len, "CUDA hashing is not available in this build; copy to host");
    return TC_CUDA_UNAVAILABLE;
}
