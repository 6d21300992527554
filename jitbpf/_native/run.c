/* Native loops around JIT-compiled entry points, so that Python pays one call for many runs.
 *
 * Bare runs: a thread binds (token, "args" entry, ctx, extra regions) once; afterwards
 * jb_bare_run(token) runs the program without memory and jb_bare_run_mem(token, mem, size) with
 * mem as r1/r2, converting no argument but those. The binding's extra regions (the maps' memory)
 * are stored into ctx before each run: ctx is shared with other runs of the thread, which set
 * their own. Tokens are never reused, so a binding left behind by a closed program can never
 * match a live one. Each thread has its own small table. A bare run holds its program's run
 * gate (jbrun.h) while the code runs and touches nothing of the binding's before it has: a
 * binding left behind by a closed program finds the gate closed, and is emptied.
 *
 * Batches (inputs back to back, or fixed-size records): the program's "batch" entry loops over
 * them itself, each input a run as the "args" entry makes it, (ctx, mem, size), the rest of the
 * run context (budget, extra regions) as Python set it; a run that stops early (result ==
 * error_result and a non-zero status word in ctx) ends the loop so that Python can raise its
 * error.
 */
#include <Python.h> /* first, as Python requires */

#include "jbmaps.h"
#include "jbrun.h"

#include <pthread.h>
#include <stdlib.h>

#define BARE_SLOTS 256 /* bindings per thread; programs alternating on one slot just rebind */

typedef uint64_t (*args_fn)(void *ctx, const void *mem, uint64_t size);

struct bare {
    uint64_t token;  /* 0: empty */
    struct jb_gate *gate;  /* the program's run gate */
    args_fn args;    /* the "args" entry: runs with (mem, size) */
    uint64_t batch;  /* the "batch" entry: loops over records */
    struct jitbpf_ctx *ctx;  /* the thread's run context for the program */
    uint64_t extra;  /* its extra region table and count, stored into ctx before each run */
    uint64_t nextra;
    void *python;    /* the program's struct jb_python */
};

/* Fixed once by jb_jit_init: what entries return when a run stops early. */
static uint64_t g_error_result;
/* The thread's table, allocated at its first binding: only a pointer lives in TLS, because the
   library's TLS must fit the small static block of a dlopen'ed object. */
static __thread struct bare *t_bare __attribute__((tls_model("initial-exec")));
static pthread_key_t g_bare_key;           /* frees a thread's table when the thread exits */
static pthread_once_t g_bare_once = PTHREAD_ONCE_INIT;
/* The Python helpers of the program this thread runs now (a helper may run another program:
   each run restores its caller's). */
static __thread const struct jb_python *t_python __attribute__((tls_model("initial-exec")));

typedef uint64_t (*entry_fn)(void *ctx);

/* A run ends by discarding the ring buffer reservations it left behind (`reserved`: how many
   the thread held when it started). */
static inline void release_left(uint32_t reserved)
{
    if (__builtin_expect(jb_rb_npending > reserved, 0))
        jb_ringbuf_release_since(reserved);
}

static inline uint64_t run_args(args_fn fn, void *ctx, const void *mem, uint64_t size, void *python)
{
    const struct jb_python *outer = t_python;
    uint32_t reserved = jb_rb_npending;
    t_python = python;
    uint64_t r = fn(ctx, mem, size);
    t_python = outer;
    release_left(reserved);
    return r;
}

/* One run of `entry` (a (ctx) entry point, or with `args` an (args) one) with the program's run
   gate held; error_result without running when the program is closed (its caller then finds it
   closed). */
static inline uint64_t gated_run(struct jb_gate *gate, uint64_t token, uint64_t entry, uint64_t ctx, int args,
                                 const void *mem, uint64_t size, void *python)
{
    if (!jb_gate_enter(gate, token))
        return __atomic_load_n(&g_error_result, __ATOMIC_ACQUIRE);
    uint64_t r;
    if (args) {
        r = run_args((args_fn)(uintptr_t)entry, (void *)(uintptr_t)ctx, mem, size, python);
    } else {
        const struct jb_python *outer = t_python;
        uint32_t reserved = jb_rb_npending;
        t_python = python;
        r = ((entry_fn)(uintptr_t)entry)((void *)(uintptr_t)ctx);
        t_python = outer;
        release_left(reserved);
    }
    jb_gate_leave(gate);
    return r;
}

uint64_t jb_run_entry(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, void *python)
{
    return gated_run(gate, token, entry, ctx, 0, NULL, 0, python);
}

uint64_t jb_run_entry_gil(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, void *python)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    uint64_t r = gated_run(gate, token, entry, ctx, 0, NULL, 0, python);
    PyGILState_Release(gil);
    return r;
}

uint64_t jb_run_args(void *gate, uint64_t token, uint64_t args, uint64_t ctx, const char *mem, uint64_t size,
                     void *python)
{
    return gated_run(gate, token, args, ctx, 1, mem, size, python);
}

/* r0 of a helper's result as the interpreter takes it: int(result) & MASK64. Sets a Python
   error (and returns 0) when the result is no number. */
static uint64_t helper_result(PyObject *res)
{
    if (PyLong_CheckExact(res))
        return PyLong_AsUnsignedLongLongMask(res);
    PyObject *num = PyNumber_Long(res);
    if (num == NULL)
        return 0;
    uint64_t r0 = PyLong_AsUnsignedLongLongMask(num);
    Py_DECREF(num);
    return r0;
}

/* Call helper `id` with r1-r5 (the GIL held); 0 with a Python error set when it failed, with
   *helper the Helper found (a new reference, or NULL for an unknown id). */
static uint64_t call_helper(const struct jb_python *py, uint64_t id, const uint64_t regs[5], PyObject **helper)
{
    static PyObject *fn_name; /* "fn", interned once (under the GIL) */
    if (fn_name == NULL && (fn_name = PyUnicode_InternFromString("fn")) == NULL)
        return 0;
    PyObject *key = PyLong_FromUnsignedLongLong(id);
    if (key == NULL)
        return 0;
    PyObject *helpers = py->helpers;
    if (PyDict_CheckExact(helpers)) {
        *helper = PyDict_GetItemWithError(helpers, key);
        Py_XINCREF(*helper);
    } else { /* any other mapping: a missing id is an unknown helper, not an error */
        *helper = PyObject_GetItem(helpers, key);
        if (*helper == NULL && PyErr_ExceptionMatches(PyExc_KeyError))
            PyErr_Clear();
    }
    Py_DECREF(key);
    if (*helper == NULL)
        return 0;
    PyObject *fn = PyObject_GetAttr(*helper, fn_name);
    if (fn == NULL)
        return 0;
    PyObject *args[5] = {NULL};
    PyObject *res = NULL;
    int i = 0;
    for (; i < 5 && (args[i] = PyLong_FromUnsignedLongLong(regs[i])) != NULL; i++)
        ;
    if (i == 5)
        res = PyObject_Vectorcall(fn, args, 5, NULL);
    while (i > 0)
        Py_DECREF(args[--i]);
    Py_DECREF(fn);
    if (res == NULL)
        return 0;
    uint64_t r0 = helper_result(res);
    Py_DECREF(res);
    return r0;
}

/* Hand a failed call to the dispatcher, which parks it for the run's caller (and marks the
   run's context, so that the code stops after this call). */
static void park_failure(const struct jb_python *py, uint64_t id, PyObject *helper)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type != NULL) {
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL)
            PyException_SetTraceback(value, tb);
    }
    PyObject *args[3] = {PyLong_FromUnsignedLongLong(id), helper ? helper : Py_None, value ? value : Py_None};
    PyObject *done = args[0] ? PyObject_Vectorcall(py->dispatcher, args, 3, NULL) : NULL;
    if (done == NULL)
        PyErr_WriteUnraisable(py->dispatcher); /* cannot happen short of memory running out */
    Py_XDECREF(done);
    Py_XDECREF(args[0]);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

uint64_t jb_helper_python(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5, uint64_t id)
{
    const struct jb_python *py = t_python;
    const uint64_t regs[5] = {r1, r2, r3, r4, r5};
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *helper = NULL;
    uint64_t r0 = call_helper(py, id, regs, &helper);
    if (PyErr_Occurred() || helper == NULL) {
        park_failure(py, id, helper);
        r0 = 0;
    }
    Py_XDECREF(helper);
    PyGILState_Release(gil);
    return r0;
}

__thread uint32_t jb_gated_runs;
__thread struct jb_gate *jb_gates_held[JB_GATE_NEST];

/* Gates are recycled through a free list and never given back to the allocator (see jbrun.h). */
static pthread_mutex_t g_gate_lock = PTHREAD_MUTEX_INITIALIZER;
static struct jb_gate *g_gate_free;
static struct jb_gate *g_gates; /* every gate made (next_all), never freed */
static pthread_once_t g_fork_once = PTHREAD_ONCE_INIT;

/* fork() copies only the calling thread: the runs that other threads had inside a program's
   code do not exist in the child, and closing the program there would wait for them forever.
   The child's gates count the forking thread's own runs alone. The lock is held across the
   fork, so that the child does not inherit it taken by a thread it does not have. */
static void gates_before_fork(void) { pthread_mutex_lock(&g_gate_lock); }
static void gates_after_fork(void) { pthread_mutex_unlock(&g_gate_lock); }

static void gates_in_child(void)
{
    for (struct jb_gate *g = g_gates; g != NULL; g = g->next_all)
        g->active = 0;
    uint32_t held = jb_gated_runs < JB_GATE_NEST ? jb_gated_runs : JB_GATE_NEST;
    for (uint32_t i = 0; i < held; i++)
        jb_gates_held[i]->active++;
    pthread_mutex_unlock(&g_gate_lock);
}

static void watch_forks(void) { pthread_atfork(gates_before_fork, gates_after_fork, gates_in_child); }

void *jb_gate_new(uint64_t token)
{
    pthread_once(&g_fork_once, watch_forks);
    pthread_mutex_lock(&g_gate_lock);
    struct jb_gate *g = g_gate_free;
    if (g != NULL)
        g_gate_free = g->next_free;
    else if ((g = calloc(1, sizeof *g)) != NULL) {
        g->next_all = g_gates;
        g_gates = g;
    }
    pthread_mutex_unlock(&g_gate_lock);
    if (g == NULL)
        return NULL;
    g->next_free = NULL;
    __atomic_store_n(&g->token, token, __ATOMIC_SEQ_CST);
    return g;
}

uint64_t jb_gate_close(void *gate)
{
    struct jb_gate *g = gate;
    __atomic_store_n(&g->token, 0, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&g->active, __ATOMIC_SEQ_CST);
}

uint64_t jb_gate_active(void *gate)
{
    return __atomic_load_n(&((struct jb_gate *)gate)->active, __ATOMIC_ACQUIRE);
}

int jb_gate_running_here(void)
{
    return jb_gated_runs != 0;
}

void jb_gate_free(void *gate)
{
    struct jb_gate *g = gate;
    pthread_mutex_lock(&g_gate_lock);
    g->next_free = g_gate_free;
    g_gate_free = g;
    pthread_mutex_unlock(&g_gate_lock);
}

static void make_key(void)
{
    pthread_key_create(&g_bare_key, free);
}

void jb_jit_init(uint64_t error_result)
{
    __atomic_store_n(&g_error_result, error_result, __ATOMIC_RELEASE);
    pthread_once(&g_bare_once, make_key);
}

void jb_bare_bind(uint64_t token, void *gate, uint64_t args, uint64_t batch, uint64_t ctx, uint64_t extra,
                  uint64_t nextra, void *python)
{
    if (t_bare == NULL && (t_bare = jb_thread_table(g_bare_key, BARE_SLOTS, sizeof *t_bare)) == NULL)
        return;
    struct bare *b = &t_bare[token % BARE_SLOTS];
    b->token = token;
    b->gate = gate;
    b->args = (args_fn)(uintptr_t)args;
    b->batch = batch;
    b->ctx = (struct jitbpf_ctx *)(uintptr_t)ctx;
    b->extra = extra;
    b->nextra = nextra;
    b->python = python;
}

int jb_bare_bound(uint64_t token)
{
    return token != 0 && t_bare != NULL && t_bare[token % BARE_SLOTS].token == token;
}

/* This thread's binding of `token` with its program's gate held (release it with
   jb_gate_leave), or NULL: nothing bound, or the program is closed (the binding is then
   emptied, so that the caller takes its ordinary path and finds the program closed). */
static inline struct bare *bound(uint64_t token)
{
    struct bare *table = t_bare;
    if (table == NULL || token == 0)
        return NULL;
    struct bare *b = &table[token % BARE_SLOTS];
    if (b->token != token)
        return NULL;
    if (!jb_gate_enter(b->gate, token)) {
        b->token = 0;
        return NULL;
    }
    b->ctx->extra = (struct jitbpf_region *)(uintptr_t)b->extra;
    b->ctx->nextra = b->nextra;
    return b;
}

uint64_t jb_bare_run(uint64_t token)
{
    struct bare *b = bound(token);
    if (b == NULL)
        return __atomic_load_n(&g_error_result, __ATOMIC_ACQUIRE);
    uint64_t r = run_args(b->args, b->ctx, NULL, 0, b->python);
    jb_gate_leave(b->gate);
    return r;
}

uint64_t jb_bare_run_mem(uint64_t token, char *mem, uint64_t size)
{
    struct bare *b = bound(token);
    if (b == NULL)
        return __atomic_load_n(&g_error_result, __ATOMIC_ACQUIRE);
    uint64_t r = run_args(b->args, b->ctx, mem, size, b->python);
    jb_gate_leave(b->gate);
    return r;
}

typedef uint64_t (*batch_fn)(void *ctx, struct jitbpf_batch *batch);

/* The program's "batch" entry over b's inputs on the run context c (its regions set), the
   program's gate held by the caller and its Python helpers set for them all (a nested run
   restores its caller's); each run's leftover ring buffer reservations are dropped after it, as
   run_args does. */
static uint64_t batch_in_gate(uint64_t entry, struct jitbpf_ctx *c, struct jitbpf_batch *b, void *python)
{
    c->mem_writable = 1;
    const struct jb_python *outer = t_python;
    b->rb_pending = &jb_rb_npending;
    b->rb_reserved = jb_rb_npending;
    b->rb_release = (uint64_t)(uintptr_t)jb_ringbuf_release_since;
    t_python = python;
    uint64_t done = ((batch_fn)(uintptr_t)entry)(c, b);
    t_python = outer;
    return done;
}

/* batch_in_gate with the regions `extra` (writable mem each) and the gate taken here. */
static uint64_t run_batch(struct jb_gate *gate, uint64_t token, uint64_t entry, uint64_t ctx, uint64_t extra,
                          uint64_t nextra, struct jitbpf_batch *b, void *python)
{
    if (!jb_gate_enter(gate, token))
        return UINT64_MAX;
    struct jitbpf_ctx *c = (struct jitbpf_ctx *)(uintptr_t)ctx;
    c->extra = (struct jitbpf_region *)(uintptr_t)extra;
    c->nextra = nextra;
    uint64_t done = batch_in_gate(entry, c, b, python);
    jb_gate_leave(gate);
    return done;
}

uint64_t jb_bare_records(uint64_t token, const uint8_t *base, uint64_t record_size, uint64_t n, uint64_t *results)
{
    struct bare *p = bound(token);
    if (p == NULL)
        return UINT64_MAX;
    struct jitbpf_batch b = {.base = (uint64_t)(uintptr_t)base, .stride = record_size, .n = n, .results = results};
    uint64_t done = batch_in_gate(p->batch, p->ctx, &b, p->python);
    jb_gate_leave(p->gate);
    return done;
}

uint64_t jb_run_packed(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, uint64_t extra, uint64_t nextra,
                       const uint8_t *base, const uint64_t *lens, uint64_t n, uint64_t *results, void *python)
{
    struct jitbpf_batch b = {.base = (uint64_t)(uintptr_t)base, .lens = lens, .n = n, .results = results};
    return run_batch(gate, token, entry, ctx, extra, nextra, &b, python);
}

uint64_t jb_run_records(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, uint64_t extra, uint64_t nextra,
                        const uint8_t *base, uint64_t record_size, uint64_t n, uint64_t *results, void *python)
{
    struct jitbpf_batch b = {.base = (uint64_t)(uintptr_t)base, .stride = record_size, .n = n, .results = results};
    return run_batch(gate, token, entry, ctx, extra, nextra, &b, python);
}
