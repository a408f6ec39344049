/* dlpack.c -- turns a DLPack capsule (or an object with __dlpack__) into a
 * tc_view: validated shape, strides in elements, item size and the dtype word.
 * It never copies tensor bytes and never takes ownership away from the
 * producer (the capsule keeps its "dltensor" name, so its destructor frees). */
#include "dlpack.h"

static int dtype_itemsize(const tc_dl_dtype *dt, size_t *itemsize)
{
    uint64_t bits = (uint64_t)dt->bits * (uint64_t)dt->lanes;
    if (bits == 0 || bits % 8 != 0)
        return -1;
    *itemsize = (size_t)(bits / 8);
    return 0;
}

int tc_view_from_object(PyObject *obj, const char *what, tc_view *v)
{
    memset(v, 0, sizeof(*v));
    PyObject *capsule;
    if (PyCapsule_CheckExact(obj)) {
        Py_INCREF(obj);
        capsule = obj;
    } else {
        PyObject *method = PyObject_GetAttrString(obj, "__dlpack__");
        if (method == NULL) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "%s must be a tensor (an object with __dlpack__) or a DLPack "
                         "capsule, not %.100s", what, Py_TYPE(obj)->tp_name);
            return -1;
        }
        capsule = PyObject_CallNoArgs(method);
        Py_DECREF(method);
        if (capsule == NULL)
            return -1;
        if (!PyCapsule_CheckExact(capsule)) {
            Py_DECREF(capsule);
            PyErr_Format(PyExc_TypeError, "%s.__dlpack__() did not return a capsule", what);
            return -1;
        }
    }
    if (!PyCapsule_IsValid(capsule, "dltensor")) {
        Py_DECREF(capsule);
        PyErr_Format(PyExc_ValueError,
                     "%s: the DLPack capsule was already consumed or is not a "
                     "'dltensor' capsule; pass the tensor itself", what);
        return -1;
    }
    tc_dl_managed *managed = PyCapsule_GetPointer(capsule, "dltensor");
    if (managed == NULL) {
        Py_DECREF(capsule);
        return -1;
    }
    const tc_dl_tensor *t = &managed->dl_tensor;
    v->capsule = capsule;
    v->t = t;
    if (t->ndim < 0 || t->ndim > TC_MAX_NDIM) {
        tc_view_release(v);
        PyErr_Format(PyExc_ValueError, "%s has %d dimensions; at most %d are supported",
                     what, (int)t->ndim, TC_MAX_NDIM);
        return -1;
    }
    if (dtype_itemsize(&t->dtype, &v->itemsize) < 0) {
        tc_view_release(v);
        PyErr_Format(PyExc_TypeError,
                     "%s has a dtype of %u bits x %u lanes, which is not a whole number "
                     "of bytes per element", what, t->dtype.bits, t->dtype.lanes);
        return -1;
    }
    v->ndim = t->ndim;
    v->dtype_word = (uint64_t)t->dtype.code | ((uint64_t)t->dtype.bits << 8) |
                    ((uint64_t)t->dtype.lanes << 16);
    v->data = (uint8_t *)t->data + t->byte_offset;
    int64_t expect = 1;
    v->contiguous = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (t->shape[d] < 0) {
            tc_view_release(v);
            PyErr_Format(PyExc_ValueError, "%s has a negative dimension", what);
            return -1;
        }
        v->shape[d] = t->shape[d];
        v->strides[d] = t->strides ? t->strides[d] : expect;
        if (t->shape[d] != 1 && v->strides[d] != expect)
            v->contiguous = 0;
        expect *= t->shape[d];
    }
    if (tc_view_numel(v) == 0)
        v->contiguous = 1;
    return 0;
}

void tc_view_release(tc_view *v)
{
    Py_CLEAR(v->capsule);
    v->t = NULL;
}

int64_t tc_view_numel(const tc_view *v)
{
    int64_t n = 1;
    for (int d = 0; d < v->ndim; d++)
        n *= v->shape[d];
    return n;
}
