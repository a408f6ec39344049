/* dlpack.h -- our own declarations of the DLPack ABI (v0.8 "dltensor" capsules)
 * and the borrowed-view helper that module.c and store_module.c use to read a
 * tensor without importing torch.
 *
 * The struct layouts below are the published DLPack ABI (dlpack.h, v0.8); they
 * must not change.  A tc_view borrows the producer's memory: it keeps a
 * reference to the capsule for as long as the view lives and never renames it,
 * so the producer's capsule destructor still frees the tensor. */
#ifndef TC_DLPACK_H
#define TC_DLPACK_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "hash.h"

enum { TC_DL_CPU = 1, TC_DL_CUDA = 2, TC_DL_CUDA_HOST = 3, TC_DL_CUDA_MANAGED = 13 };
enum { TC_DL_INT = 0, TC_DL_UINT = 1, TC_DL_FLOAT = 2, TC_DL_BFLOAT = 4, TC_DL_COMPLEX = 5, TC_DL_BOOL = 6 };

typedef struct {
    int32_t device_type;
    int32_t device_id;
} tc_dl_device;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} tc_dl_dtype;

typedef struct {
    void *data;
    tc_dl_device device;
    int32_t ndim;
    tc_dl_dtype dtype;
    int64_t *shape;
    int64_t *strides; /* in elements; NULL means compact row-major */
    uint64_t byte_offset;
} tc_dl_tensor;

typedef struct tc_dl_managed {
    tc_dl_tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct tc_dl_managed *self);
} tc_dl_managed;

#define TC_MAX_NDIM 32

/* A borrowed, validated view of one tensor. */
typedef struct {
    PyObject *capsule;     /* owned reference; keeps the producer's memory alive */
    const tc_dl_tensor *t;
    uint8_t *data;         /* data + byte_offset */
    int ndim;
    int64_t shape[TC_MAX_NDIM];
    int64_t strides[TC_MAX_NDIM]; /* in elements, always filled in */
    size_t itemsize;       /* bytes per element */
    uint64_t dtype_word;   /* code | bits << 8 | lanes << 16 (docs/hash.md, section 5) */
    int contiguous;        /* compact row-major */
} tc_view;

/* Fills *v from a DLPack capsule or from any object with __dlpack__.  `what`
 * names the argument in error messages.  Returns 0, or -1 with an exception set. */
int tc_view_from_object(PyObject *obj, const char *what, tc_view *v);
void tc_view_release(tc_view *v);
/* Number of elements (product of shape), 0 for an empty tensor. */
int64_t tc_view_numel(const tc_view *v);

/* Describes a batch view (dimension 0 is the batch, ndim >= 1) for the hash engine:
 * b borrows v's data, shape and strides, so v must outlive it. */
static inline void tc_batch_of(const tc_view *v, tc_batch *b)
{
    b->base = v->data;
    b->batch_stride = v->strides[0] * (int64_t)v->itemsize;
    b->batch = v->shape[0];
    b->item.base = NULL;
    b->item.itemsize = v->itemsize;
    b->item.ndim = v->ndim - 1;
    b->item.shape = v->shape + 1;
    b->item.strides = v->strides + 1;
    b->item.dtype_word = v->dtype_word;
}

#endif
