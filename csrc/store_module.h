/* store_module.h -- the Python type torchcache_c._C.Store over the store engine. */
#ifndef TC_STORE_MODULE_H
#define TC_STORE_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "store.h"

/* Adds the Store type to the module; returns 0, or -1 with an exception set. */
int tc_store_module_init(PyObject *module);

/* The engine store behind a torchcache_c._C.Store (for call.c), or NULL with an
 * exception set when obj is not a Store or is closed. */
tc_store *tc_store_module_get(PyObject *obj);
/* Raises the exception of a store engine error code (StoreError and its kinds). */
void tc_store_module_raise(int rc, const char *msg);

#endif
