/* Entry points Python calls for one run at a time, as a CPython extension module
 * (_jitbpf_fast) in the same library as the cffi module: their state is the library's. A cffi
 * call converts each argument through its C type and hands the GIL over around every call; for
 * a run of a few dozen nanoseconds those cost more than the run. Here the arguments are taken
 * as Python objects, and the GIL is kept unless the run may be long.
 *
 * pkt_run(token, template, derive, packet[, names]) -> (r0, packet after) or None
 *   One typed run through the frame this thread bound under `token` (jb_pkt_bind): the
 *   context from `template` (bytes) with the `derive` fields, `packet` (any buffer) copied into
 *   the arena, the program's "regions" entry. The packet after the run is `packet` itself when
 *   the run left it as it was and it is a bytes object. With `names` (a tuple), r0 comes back
 *   as names[v] for its low 32 bits v (XDP's actions by value), or as v past the tuple's end.
 *   None: nothing is bound under the token here, its program is closed, the packet does not
 *   fit the arena (the caller binds, or binds a larger one), or `packet` is no buffer.
 *   A run that stopped early (r0 ERROR_RESULT, its error to be raised) gives (r0, packet after,
 *   the frame's owner): the binding whose program tells the error, which another thread may
 *   have replaced meanwhile.
 *
 * pkt_longest(packets) -> the longest packet's length, or -1 unless `packets` is a tuple of
 *   bytes objects (what pkt_batch reads in place).
 *
 * pkt_batch(token, template, derive, packets, start, stop, results) -> index or None
 *   Packets start to stop of `packets` (a tuple of bytes objects, as pkt_longest accepts) run
 *   one after the other through this thread's frame, the GIL handed over; the r0 of packet i
 *   goes to `results` (a writable buffer of uint64) at i - start. Returns where it stopped: `stop`, or
 *   the index of the packet whose run stopped early (its r0 ERROR_RESULT) or did not fit. None:
 *   nothing is bound under the token here.
 *
 * records(token, data, record_size, zeros, out, start) -> (out, index) or None
 *   The program bound bare under `token` on this thread (jb_bare_bind) over the records of
 *   `data` (a writable buffer of record_size-byte records) from record `start` on, the GIL
 *   handed over; r0 of record i goes to out[i]. `out` is None on the first call: it is then
 *   `zeros` (an array of one zero) repeated once per record. Returns where it stopped: the
 *   count of records, or the index of the record whose run stopped early. None: nothing is
 *   bound under the token here (or it was closed), or `data` is no writable buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as Python requires */

#include "jbmaps.h"
#include "jbrun.h"

#include <string.h>

/* r0 as pkt_run gives it: named by `names` (NULL: none), or as a number. */
static PyObject *named_result(uint64_t r0, PyObject *names)
{
    if (names == NULL)
        return PyLong_FromUnsignedLongLong(r0);
    uint32_t v = (uint32_t)r0;
    if (v < (uint64_t)PyTuple_GET_SIZE(names)) {
        PyObject *name = PyTuple_GET_ITEM(names, v);
        Py_INCREF(name);
        return name;
    }
    return PyLong_FromUnsignedLong(v);
}

/* (r0, packet after[, owner]) of the run jb_pkt_run made on `p` from `packet`, as pkt_run
   returns it (r0 named by `names` unless the run stopped early); None if it did not run. */
static PyObject *run_result(const struct jb_pkt_prog *p, uint64_t r0, PyObject *packet, PyObject *owner,
                            PyObject *names)
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
    int stopped = jb_pkt_stopped(p, r0);
    PyObject *value = named_result(r0, stopped ? NULL : names);
    PyObject *pair = value != NULL ? PyTuple_New(stopped ? 3 : 2) : NULL;
    if (pair == NULL) {
        Py_XDECREF(value);
        Py_DECREF(after);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, value);
    PyTuple_SET_ITEM(pair, 1, after);
    if (stopped) {
        Py_INCREF(owner);
        PyTuple_SET_ITEM(pair, 2, owner);
    }
    return pair;
}

/* The frame this thread bound under args[0] (its owner and GIL choice in *owner, *release),
   with the template args[1] and derive flags args[2] set for this call: 1 when found, 0 when
   nothing is bound there, -1 with a Python error (`usage` names the arguments). */
static int bound_frame(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage,
                       struct jb_pkt_prog **p, void **owner, int *release)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "takes %s", usage);
        return -1;
    }
    uint64_t token = PyLong_AsUnsignedLongLong(args[0]);
    uint64_t derive = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return -1;
    *p = jb_pkt_bound(token, owner, release);
    if (*p == NULL)
        return 0;
    PyObject *template = args[1];
    if (!PyBytes_Check(template) || (uint64_t)PyBytes_GET_SIZE(template) < (*p)->pkt.ctx_size) {
        PyErr_SetString(PyExc_TypeError, "the template must be bytes of the context's size");
        return -1;
    }
    (*p)->tmpl = (uint64_t)(uintptr_t)PyBytes_AS_STRING(template); /* read during this call only */
    (*p)->derive = derive;
    return 1;
}

static PyObject *pkt_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct jb_pkt_prog *p;
    void *owner;
    int release;
    PyObject *names = NULL;
    if (nargs == 5) {
        names = args[4];
        if (!PyTuple_CheckExact(names)) {
            PyErr_SetString(PyExc_TypeError, "pkt_run: the names must be a tuple");
            return NULL;
        }
        nargs = 4;
    }
    int found = bound_frame(args, nargs, 4, "(token, template, derive, packet[, names])", &p, &owner, &release);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *packet = args[3];
    Py_buffer view;
    if (PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE) != 0) {
        p->tmpl = 0;
        /* Not a buffer, or not one of contiguous bytes (a strided view): the ordinary path copies
           it, or says why not. */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (!jb_gate_enter(p->gate, p->gate_token)) { /* the program is closed: the ordinary path says so */
        PyBuffer_Release(&view);
        p->tmpl = 0;
        Py_RETURN_NONE;
    }
    /* Without the GIL, another thread may drop the frame's owner (the token going stale): the
       run keeps it until the frame is read. */
    PyObject *keep = release ? (PyObject *)owner : NULL;
    Py_XINCREF(keep);
    uint64_t r0;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        r0 = jb_pkt_run(p, view.buf, (uint64_t)view.len);
        Py_END_ALLOW_THREADS
    } else {
        r0 = jb_pkt_run(p, view.buf, (uint64_t)view.len);
    }
    jb_gate_leave(p->gate);
    p->tmpl = 0;
    PyObject *result = run_result(p, r0, packet, owner, names);
    PyBuffer_Release(&view);
    Py_XDECREF(keep);
    return result;
}

static PyObject *pkt_longest(PyObject *self, PyObject *packets)
{
    (void)self;
    Py_ssize_t longest = 0;
    if (!PyTuple_CheckExact(packets))
        return PyLong_FromLong(-1);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(packets); i++) {
        PyObject *item = PyTuple_GET_ITEM(packets, i);
        if (!PyBytes_CheckExact(item))
            return PyLong_FromLong(-1);
        if (PyBytes_GET_SIZE(item) > longest)
            longest = PyBytes_GET_SIZE(item);
    }
    return PyLong_FromSsize_t(longest);
}

static PyObject *pkt_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct jb_pkt_prog *p;
    void *owner;
    int release;
    int found = bound_frame(args, nargs, 7, "(token, template, derive, packets, start, stop, results)", &p, &owner,
                            &release);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *packets = args[3];
    Py_ssize_t start = PyLong_AsSsize_t(args[4]), stop = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred() || !PyTuple_CheckExact(packets) || start < 0 || stop < start
        || stop > PyTuple_GET_SIZE(packets)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "pkt_batch: bad packets or bounds");
        p->tmpl = 0;
        return NULL;
    }
    Py_ssize_t n = stop - start;
    const uint8_t **data = PyMem_Malloc(sizeof *data * (size_t)(n + 1));
    uint64_t *lens = PyMem_Malloc(sizeof *lens * (size_t)(n + 1));
    if (data == NULL || lens == NULL) {
        PyMem_Free(data);
        PyMem_Free(lens);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(packets, start + i);
        if (!PyBytes_CheckExact(item)) {
            PyMem_Free(data);
            PyMem_Free(lens);
            PyErr_SetString(PyExc_TypeError, "pkt_batch: packets must be bytes objects");
            return NULL;
        }
        data[i] = (const uint8_t *)PyBytes_AS_STRING(item);
        lens[i] = (uint64_t)PyBytes_GET_SIZE(item);
    }
    Py_buffer results;
    if (PyObject_GetBuffer(args[6], &results, PyBUF_WRITABLE) != 0 || results.len < n * 8) {
        if (!PyErr_Occurred()) {
            PyBuffer_Release(&results);
            PyErr_SetString(PyExc_ValueError, "pkt_batch: the results buffer is too short");
        }
        PyMem_Free(data);
        PyMem_Free(lens);
        return NULL;
    }
    /* The packets (bytes, held by the tuple) cannot change or go while the GIL is away; the
       frame's owner is kept as in pkt_run. */
    PyObject *keep = owner;
    Py_INCREF(keep);
    uint64_t done = 0;
    int open = jb_gate_enter(p->gate, p->gate_token);
    if (open) {
        Py_BEGIN_ALLOW_THREADS
        done = jb_pkt_batch_each(p, data, lens, (uint64_t)n, (uint64_t *)results.buf);
        Py_END_ALLOW_THREADS
        jb_gate_leave(p->gate);
    }
    p->tmpl = 0;
    Py_DECREF(keep);
    PyBuffer_Release(&results);
    PyMem_Free(data);
    PyMem_Free(lens);
    if (!open)
        return PyLong_FromLong(-1);
    return PyLong_FromSsize_t(start + (Py_ssize_t)done);
}

static PyObject *records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "takes (token, data, record_size, zeros, out, start)");
        return NULL;
    }
    uint64_t token = PyLong_AsUnsignedLongLong(args[0]);
    Py_ssize_t size = PyLong_AsSsize_t(args[2]), start = PyLong_AsSsize_t(args[5]);
    Py_buffer data;
    if (PyErr_Occurred() || size <= 0 || PyObject_GetBuffer(args[1], &data, PyBUF_WRITABLE) != 0) {
        PyErr_Clear(); /* a size past any buffer, or no writable one: the ordinary path says what is wrong */
        Py_RETURN_NONE;
    }
    Py_ssize_t n = data.len / size;
    PyObject *out = args[4];
    if (out == Py_None)
        out = PySequence_Repeat(args[3], n);
    else
        Py_INCREF(out);
    Py_buffer results;
    if (out == NULL || PyObject_GetBuffer(out, &results, PyBUF_WRITABLE) != 0) {
        Py_XDECREF(out);
        PyBuffer_Release(&data);
        return NULL;
    }
    if (results.len < n * 8 || start < 0 || start > n) {
        PyBuffer_Release(&results);
        PyBuffer_Release(&data);
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "records: the results do not match the records");
        return NULL;
    }
    /* The buffers stay exported (neither can be resized or freed) while the GIL is away. */
    uint64_t done;
    Py_BEGIN_ALLOW_THREADS
    done = jb_bare_records(token, (const uint8_t *)data.buf + (size_t)start * (size_t)size, (uint64_t)size,
                           (uint64_t)(n - start), (uint64_t *)results.buf + start);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&results);
    PyBuffer_Release(&data);
    if (done > (uint64_t)(n - start)) { /* nothing ran: not bound here, or closed */
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    PyObject *index = PyLong_FromSsize_t(start + (Py_ssize_t)done);
    if (index == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(out);
        Py_DECREF(index);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, out);
    PyTuple_SET_ITEM(pair, 1, index);
    return pair;
}

static PyMethodDef fast_methods[] = {
    {"pkt_run", (PyCFunction)(void (*)(void))pkt_run, METH_FASTCALL, "One typed run through a native frame."},
    {"pkt_longest", pkt_longest, METH_O, "The longest packet of a tuple of bytes (-1: not such a tuple)."},
    {"pkt_batch", (PyCFunction)(void (*)(void))pkt_batch, METH_FASTCALL, "Typed runs over a tuple of packets."},
    {"records", (PyCFunction)(void (*)(void))records, METH_FASTCALL, "Bare runs over fixed-size records."},
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
