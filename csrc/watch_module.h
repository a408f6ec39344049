/* watch_module.h -- the Python type torchcache_c._C.Watch (watch_module.c). */
#ifndef TC_WATCH_MODULE_H
#define TC_WATCH_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Adds the Watch type to the module; returns 0, or -1 with an exception set. */
int tc_watch_module_init(PyObject *module);

#endif
