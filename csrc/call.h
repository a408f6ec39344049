/* call.h -- the bytes of one cached call in one C entry point (call.c):
 * torchcache_c._C.call_fetch and call_put. */
#ifndef TC_CALL_H
#define TC_CALL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "dlpack.h"

/* Adds call_fetch, call_put and _set_tensor_exporter to the module; returns 0, or -1
 * with an exception set. */
int tc_call_module_init(PyObject *module);

/* A tensor or DLPack capsule as a view, through the registered exporter (one C call
 * for a torch tensor); 0, or -1 with an exception set.  Release with tc_view_release. */
int tc_call_export_view(PyObject *obj, const char *what, tc_view *v);

/* A new DLPack capsule of a C-contiguous (rows, 2) int64 CPU tensor that owns its
 * buffer (rows > 0); *data points at its rows.  NULL with an exception set. */
PyObject *tc_call_new_digests(int64_t rows, uint64_t **data);

#endif
