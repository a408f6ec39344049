/* call.h -- the bytes of one cached call in one C entry point (call.c):
 * torchcache_c._C.call_fetch and call_put. */
#ifndef TC_CALL_H
#define TC_CALL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Adds call_fetch, call_put and _set_tensor_exporter to the module; returns 0, or -1
 * with an exception set. */
int tc_call_module_init(PyObject *module);

#endif
