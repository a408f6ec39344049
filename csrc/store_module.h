/* store_module.h -- the Python type torchcache_c._C.Store over the store engine. */
#ifndef TC_STORE_MODULE_H
#define TC_STORE_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Adds the Store type to the module; returns 0, or -1 with an exception set. */
int tc_store_module_init(PyObject *module);

#endif
