/* watch_module.c -- torchcache_c._C.Watch: the per-call validity check of a
 * module key in one C loop (docs/keys.md, section 4).
 *
 * A cached call must notice, before it serves anything, that an input of the
 * module key moved since the key was computed: an attribute or the training
 * flag of any submodule, a registered parameter, buffer, submodule or hook, a
 * module-level name the code reads, or a weight written in place.  Doing that
 * in Python costs tens of microseconds for a ResNet-50 (one attribute read per
 * module and per tensor); here it is one pass over
 *   - dictionaries: a change of any watched dict (a module's __dict__,
 *     _parameters, _buffers, _modules, hook dicts, module globals) is seen
 *     through CPython's dict version tag (3.10, 3.11) or a dict watcher
 *     (3.12 and later, where the tag is deprecated);
 *   - tensors: each one's autograd version counter and requires_grad flag, read
 *     through the getset descriptors that the shim passes in (this file never
 *     imports torch and knows no tensor layout).
 * It only answers "did anything move"; the shim recomputes what changed and
 * decides whether the key changed.  False alarms cost a recomputation, never a
 * wrong answer.  Weights written behind the version counter (through .data)
 * are not visible here: the shim's periodic full re-digest covers them. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "watch_module.h"

#if PY_VERSION_HEX >= 0x030C0000
#define TC_DICT_WATCHERS 1
/* One watcher for the interpreter; every event on a watched dict bumps the
 * counter.  Dicts stay watched after their Watch is gone: a later event then
 * only causes a needless recheck somewhere. */
static int dict_watcher_id = -1;
static uint64_t dict_events = 0;

static int on_dict_event(PyDict_WatchEvent event, PyObject *dict, PyObject *key,
                         PyObject *new_value)
{
    (void)event;
    (void)dict;
    (void)key;
    (void)new_value;
    dict_events++;
    return 0;
}
#else
#define TC_DICT_WATCHERS 0
#endif

typedef struct {
    PyObject_HEAD
    PyObject *dicts;       /* tuple of dict */
    PyObject *tensors;     /* tuple of tensors whose version counters are watched */
    PyObject *grad_tensors; /* tuple of tensors that must not require grad */
    PyObject *version;     /* getset descriptor of Tensor._version */
    PyObject *requires_grad; /* getset descriptor of Tensor.requires_grad */
    uint64_t *dict_tags;   /* per dict (3.10, 3.11) */
    int64_t *versions;     /* per tensor */
    getter version_get;    /* the getset function behind `version`, when it is one */
    void *version_closure;
    uint64_t events;       /* dict_events at reset (3.12+) */
    Py_ssize_t n_dicts, n_tensors;
} WatchObject;

static uint64_t dict_tag(PyObject *d)
{
#if TC_DICT_WATCHERS
    (void)d;
    return 0;
#else
    return ((PyDictObject *)d)->ma_version_tag;
#endif
}

/* The value of a getset descriptor on obj: the descriptor protocol, without
 * the attribute lookup through the type's MRO. */
static PyObject *descr_value(PyObject *descr, PyObject *obj)
{
    if (Py_IS_TYPE(descr, &PyGetSetDescr_Type)) {
        /* What the descriptor protocol does for a getset descriptor (type
         * check, then the getter), without its indirections. */
        PyGetSetDef *gs = ((PyGetSetDescrObject *)descr)->d_getset;
        if (gs->get != NULL && PyObject_TypeCheck(obj, PyDescr_TYPE(descr)))
            return gs->get(obj, gs->closure);
    }
    descrgetfunc get = Py_TYPE(descr)->tp_descr_get;
    if (get == NULL) {
        PyErr_SetString(PyExc_TypeError, "Watch: expected a data descriptor");
        return NULL;
    }
    return get(descr, obj, (PyObject *)Py_TYPE(obj));
}

static int read_version(WatchObject *self, PyObject *t, int64_t *out)
{
    PyObject *v = descr_value(self->version, t);
    if (v == NULL)
        return -1;
    long long value = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (value == -1 && PyErr_Occurred())
        return -1;
    *out = (int64_t)value;
    return 0;
}

static void watch_clear_arrays(WatchObject *self)
{
    PyMem_Free(self->dict_tags);
    PyMem_Free(self->versions);
    self->dict_tags = NULL;
    self->versions = NULL;
    self->n_dicts = self->n_tensors = 0;
}

static int watch_traverse(WatchObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dicts);
    Py_VISIT(self->tensors);
    Py_VISIT(self->grad_tensors);
    Py_VISIT(self->version);
    Py_VISIT(self->requires_grad);
    return 0;
}

static int watch_clear(WatchObject *self)
{
    Py_CLEAR(self->dicts);
    Py_CLEAR(self->tensors);
    Py_CLEAR(self->grad_tensors);
    Py_CLEAR(self->version);
    Py_CLEAR(self->requires_grad);
    return 0;
}

static void watch_dealloc(WatchObject *self)
{
    PyObject_GC_UnTrack(self);
    watch_clear(self);
    watch_clear_arrays(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(watch_reset_doc,
"reset(dicts, tensors, grad_tensors, version_descr, requires_grad_descr)\n--\n\n"
"Snapshot the version of every dict in `dicts` and the version counter of\n"
"every tensor in `tensors` (read through `version_descr`, the getset\n"
"descriptor of Tensor._version).  changed() compares against this snapshot\n"
"and, when asked, checks that no tensor of `grad_tensors` requires grad.");

static PyObject *watch_reset(WatchObject *self, PyObject *args)
{
    PyObject *dicts_in, *tensors_in, *grad_in, *version, *requires_grad;
    if (!PyArg_ParseTuple(args, "OOOOO:reset", &dicts_in, &tensors_in, &grad_in, &version,
                          &requires_grad))
        return NULL;
    if (Py_TYPE(version)->tp_descr_get == NULL || Py_TYPE(requires_grad)->tp_descr_get == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "reset: version_descr and requires_grad_descr must be descriptors");
        return NULL;
    }
    PyObject *dicts = PySequence_Tuple(dicts_in);
    if (dicts == NULL)
        return NULL;
    PyObject *tensors = PySequence_Tuple(tensors_in);
    if (tensors == NULL) {
        Py_DECREF(dicts);
        return NULL;
    }
    PyObject *grad_tensors = PySequence_Tuple(grad_in);
    if (grad_tensors == NULL) {
        Py_DECREF(dicts);
        Py_DECREF(tensors);
        return NULL;
    }
    Py_ssize_t nd = PyTuple_GET_SIZE(dicts), nt = PyTuple_GET_SIZE(tensors);
    uint64_t *tags = PyMem_Calloc((size_t)nd + 1, sizeof(uint64_t));
    int64_t *versions = PyMem_Calloc((size_t)nt + 1, sizeof(int64_t));
    if (tags == NULL || versions == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *d = PyTuple_GET_ITEM(dicts, i);
        if (!PyDict_Check(d)) {
            PyErr_Format(PyExc_TypeError, "reset: dicts[%zd] is %.100s, not a dict", i,
                         Py_TYPE(d)->tp_name);
            goto fail;
        }
#if TC_DICT_WATCHERS
        if (PyDict_Watch(dict_watcher_id, d) < 0)
            goto fail;
#endif
        tags[i] = dict_tag(d);
    }
    Py_XSETREF(self->version, Py_NewRef(version));
    self->version_get = NULL;
    if (Py_IS_TYPE(version, &PyGetSetDescr_Type)) {
        PyGetSetDef *gs = ((PyGetSetDescrObject *)version)->d_getset;
        self->version_get = gs->get;
        self->version_closure = gs->closure;
    }
    Py_XSETREF(self->requires_grad, Py_NewRef(requires_grad));
    for (Py_ssize_t i = 0; i < nt; i++) {
        if (read_version(self, PyTuple_GET_ITEM(tensors, i), &versions[i]) < 0)
            goto fail;
    }
    watch_clear_arrays(self);
    Py_XSETREF(self->dicts, dicts);
    Py_XSETREF(self->tensors, tensors);
    Py_XSETREF(self->grad_tensors, grad_tensors);
    self->dict_tags = tags;
    self->versions = versions;
    self->n_dicts = nd;
    self->n_tensors = nt;
#if TC_DICT_WATCHERS
    self->events = dict_events;
#endif
    Py_RETURN_NONE;
fail:
    PyMem_Free(tags);
    PyMem_Free(versions);
    Py_DECREF(dicts);
    Py_DECREF(tensors);
    Py_DECREF(grad_tensors);
    return NULL;
}

PyDoc_STRVAR(watch_changed_doc,
"changed(check_grad)\n--\n\n"
"0 if nothing moved since reset(); 1 if a watched dict changed; 2 if a\n"
"tensor's version counter moved; 3 if check_grad is true and a tensor of\n"
"grad_tensors requires grad.  A Watch never reset answers 1.");

static PyObject *watch_changed(WatchObject *self, PyObject *arg)
{
    int check_grad = PyObject_IsTrue(arg);
    if (check_grad < 0)
        return NULL;
    if (self->dicts == NULL)
        return PyLong_FromLong(1);
#if TC_DICT_WATCHERS
    if (dict_events != self->events)
        return PyLong_FromLong(1);
#else
    for (Py_ssize_t i = 0; i < self->n_dicts; i++) {
        if (dict_tag(PyTuple_GET_ITEM(self->dicts, i)) != self->dict_tags[i])
            return PyLong_FromLong(1);
    }
#endif
    for (Py_ssize_t i = 0; i < self->n_tensors; i++) {
        PyObject *t = PyTuple_GET_ITEM(self->tensors, i);
        int64_t v;
        if (self->version_get != NULL) {
            /* The hot loop: the getter itself.  reset() read every tensor through the
             * descriptor, which checked its type, and the tuple cannot change. */
            PyObject *obj = self->version_get(t, self->version_closure);
            if (obj == NULL)
                return NULL;
            long long value = PyLong_AsLongLong(obj);
            Py_DECREF(obj);
            if (value == -1 && PyErr_Occurred())
                return NULL;
            v = (int64_t)value;
        } else if (read_version(self, t, &v) < 0) {
            return NULL;
        }
        if (v != self->versions[i])
            return PyLong_FromLong(2);
    }
    for (Py_ssize_t i = 0; check_grad && i < PyTuple_GET_SIZE(self->grad_tensors); i++) {
        PyObject *rg = descr_value(self->requires_grad, PyTuple_GET_ITEM(self->grad_tensors, i));
        if (rg == NULL)
            return NULL;
        int is_true = rg == Py_True;
        Py_DECREF(rg);
        if (is_true)
            return PyLong_FromLong(3);
    }
    return PyLong_FromLong(0);
}

static PyMethodDef watch_methods[] = {
    {"reset", (PyCFunction)watch_reset, METH_VARARGS, watch_reset_doc},
    {"changed", (PyCFunction)watch_changed, METH_O, watch_changed_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *watch_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Watch() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

PyDoc_STRVAR(watch_doc,
"Watch()\n--\n\n"
"Answers, in one C pass, whether any of a set of dicts or tensors moved since\n"
"the last reset(): the per-call validity check of a module key.");

static PyTypeObject WatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "torchcache_c._C.Watch",
    .tp_basicsize = sizeof(WatchObject),
    .tp_dealloc = (destructor)watch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = watch_doc,
    .tp_traverse = (traverseproc)watch_traverse,
    .tp_clear = (inquiry)watch_clear,
    .tp_methods = watch_methods,
    .tp_new = watch_new,
};

int tc_watch_module_init(PyObject *module)
{
#if TC_DICT_WATCHERS
    if (dict_watcher_id < 0) {
        dict_watcher_id = PyDict_AddWatcher(on_dict_event);
        if (dict_watcher_id < 0)
            return -1;
    }
#endif
    if (PyType_Ready(&WatchType) < 0)
        return -1;
    Py_INCREF(&WatchType);
    if (PyModule_AddObject(module, "Watch", (PyObject *)&WatchType) < 0) {
        Py_DECREF(&WatchType);
        return -1;
    }
    return 0;
}
