/* Entry points Python calls for one run at a time, as a CPython extension module
 * (_jitbpf_fast) in the same library as the cffi module: their state is the library's. A cffi
 * call converts each argument through its C type and hands the GIL over around every call; for
 * a run of a few dozen nanoseconds those cost more than the run. Here the arguments are taken
 * as Python objects, and the GIL is kept unless the run may be long.
 *
 * pkt_run(token, template, derive, packet) -> (r0, packet after) or None
 *   One typed run through the frame this thread bound under `token` (jb_pkt_bind): the
 *   context from `template` (bytes) with the `derive` fields, `packet` (any buffer) copied into
 *   the arena, the program's "regions" entry. The packet after the run is `packet` itself when
 *   the run left it as it was and it is a bytes object. None: nothing is bound under the token
 *   here, or the packet does not fit the arena (the caller binds, or binds a larger one).
 *   r0 is ERROR_RESULT when the run stopped early: the caller raises the error.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as Python requires */

#include "jbmaps.h"
#include "jbrun.h"

#include <string.h>

/* (r0, packet after) of the run jb_pkt_run made on `p` from `packet`; None if it did not run. */
static PyObject *run_result(const struct jb_pkt_prog *p, uint64_t r0, PyObject *packet)
{
    const uint64_t *out = p->out;
    if (out[0] == 0) /* not run: the packet does not fit (a run's packet is past the context) */
        Py_RETURN_NONE;
    PyObject *after;
    if (out[2] && PyBytes_CheckExact(packet)) {
        Py_INCREF(packet);
        after = packet;
    } else {
        after = PyBytes_FromStringAndSize((const char *)(uintptr_t)(p->arena + out[0]), (Py_ssize_t)out[1]);
        if (after == NULL)
            return NULL;
    }
    PyObject *value = PyLong_FromUnsignedLongLong(r0);
    PyObject *pair = value != NULL ? PyTuple_New(2) : NULL;
    if (pair == NULL) {
        Py_XDECREF(value);
        Py_DECREF(after);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, value);
    PyTuple_SET_ITEM(pair, 1, after);
    return pair;
}

static PyObject *pkt_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pkt_run takes (token, template, derive, packet)");
        return NULL;
    }
    uint64_t token = PyLong_AsUnsignedLongLong(args[0]);
    if (token == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    int release;
    void *owner;
    struct jb_pkt_prog *p = jb_pkt_bound(token, &owner, &release);
    if (p == NULL)
        Py_RETURN_NONE;
    PyObject *template = args[1];
    if (!PyBytes_Check(template) || (uint64_t)PyBytes_GET_SIZE(template) < p->pkt.ctx_size) {
        PyErr_SetString(PyExc_TypeError, "pkt_run: the template must be bytes of the context's size");
        return NULL;
    }
    uint64_t derive = PyLong_AsUnsignedLongLong(args[2]);
    if (derive == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    PyObject *packet = args[3];
    Py_buffer view;
    if (PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE) != 0)
        return NULL;
    /* Without the GIL, another thread may drop the frame's owner (the token going stale): the
       run keeps it until the frame is read. */
    PyObject *keep = release ? (PyObject *)owner : NULL;
    Py_XINCREF(keep);
    p->tmpl = (uint64_t)(uintptr_t)PyBytes_AS_STRING(template); /* read during this call only */
    p->derive = derive;
    uint64_t r0;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        r0 = jb_pkt_run(p, view.buf, (uint64_t)view.len);
        Py_END_ALLOW_THREADS
    } else {
        r0 = jb_pkt_run(p, view.buf, (uint64_t)view.len);
    }
    p->tmpl = 0;
    PyObject *result = run_result(p, r0, packet);
    PyBuffer_Release(&view);
    Py_XDECREF(keep);
    return result;
}

static PyMethodDef fast_methods[] = {
    {"pkt_run", (PyCFunction)(void (*)(void))pkt_run, METH_FASTCALL, "One typed run through a native frame."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT, "_jitbpf_fast", "Single-run entry points of jitbpf's native library.", -1, fast_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jitbpf_fast(void)
{
    return PyModule_Create(&fast_module);
}
