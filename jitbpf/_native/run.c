/* Native loops around JIT-compiled entry points, so that Python pays one call for many runs.
 *
 * Bare runs: a thread binds (token, "args" entry, ctx, extra regions) once; afterwards
 * jb_bare_run(token) runs the program without memory and jb_bare_run_mem(token, mem, size) with
 * mem as r1/r2, converting no argument but those. The binding's extra regions (the maps' memory)
 * are stored into ctx before each run: ctx is shared with other runs of the thread, which set
 * their own. Tokens are never reused, so a binding left behind by a closed program can never
 * match a live one. Each thread has its own small table.
 *
 * Batches (inputs back to back, or fixed-size records): the "args" entry takes (ctx, mem, size)
 * and leaves the rest of the run context (budget, extra regions) as Python set it; a run that
 * stops early (result == error_result and a non-zero status word in ctx) ends the loop so that
 * Python can raise its error.
 */
#include <Python.h> /* first, as Python requires */

#include "jbmaps.h"

#include <pthread.h>
#include <stdlib.h>

#define BARE_SLOTS 256 /* bindings per thread; programs alternating on one slot just rebind */

typedef uint64_t (*args_fn)(void *ctx, const void *mem, uint64_t size);

struct bare {
    uint64_t token;  /* 0: empty */
    args_fn args;    /* the "args" entry: runs with (mem, size) */
    struct jitbpf_ctx *ctx;  /* the thread's run context for the program */
    uint64_t extra;  /* its extra region table and count, stored into ctx before each run */
    uint64_t nextra;
    void *python;    /* the program's Python dispatcher handle */
};

/* Fixed once by jb_jit_init: what entries return when a run stops early. */
static uint64_t g_error_result;
/* The thread's table, allocated at its first binding: only a pointer lives in TLS, because the
   library's TLS must fit the small static block of a dlopen'ed object. */
static __thread struct bare *t_bare __attribute__((tls_model("initial-exec")));
static pthread_key_t g_bare_key;           /* frees a thread's table when the thread exits */
static pthread_once_t g_bare_once = PTHREAD_ONCE_INIT;
/* The dispatcher handle of the program this thread runs now (a helper may run another program:
   each run restores its caller's). */
static __thread void *t_python __attribute__((tls_model("initial-exec")));

typedef uint64_t (*entry_fn)(void *ctx);

static inline uint64_t run_args(args_fn fn, void *ctx, const void *mem, uint64_t size, void *python)
{
    void *outer = t_python;
    uint32_t reserved = jb_ringbuf_pending();
    t_python = python;
    uint64_t r = fn(ctx, mem, size);
    t_python = outer;
    if (__builtin_expect(jb_ringbuf_pending() > reserved, 0))  /* a reservation left behind */
        jb_ringbuf_release_since(reserved);
    return r;
}

uint64_t jb_run_entry(uint64_t entry, uint64_t ctx, void *python)
{
    void *outer = t_python;
    uint32_t reserved = jb_ringbuf_pending();
    t_python = python;
    uint64_t r = ((entry_fn)(uintptr_t)entry)((void *)(uintptr_t)ctx);
    t_python = outer;
    if (__builtin_expect(jb_ringbuf_pending() > reserved, 0))  /* a reservation left behind */
        jb_ringbuf_release_since(reserved);
    return r;
}

uint64_t jb_run_entry_gil(uint64_t entry, uint64_t ctx, void *python)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    uint64_t r = jb_run_entry(entry, ctx, python);
    PyGILState_Release(gil);
    return r;
}

uint64_t jb_helper_python(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5, uint64_t id)
{
    return jb_python_call(t_python, id, r1, r2, r3, r4, r5);
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

void jb_bare_bind(uint64_t token, uint64_t args, uint64_t ctx, uint64_t extra, uint64_t nextra, void *python)
{
    if (t_bare == NULL) {
        struct bare *table = calloc(BARE_SLOTS, sizeof *table);
        if (table == NULL)
            return; /* unbound: the caller keeps taking its ordinary path */
        pthread_setspecific(g_bare_key, table);
        t_bare = table;
    }
    struct bare *b = &t_bare[token % BARE_SLOTS];
    b->token = token;
    b->args = (args_fn)(uintptr_t)args;
    b->ctx = (struct jitbpf_ctx *)(uintptr_t)ctx;
    b->extra = extra;
    b->nextra = nextra;
    b->python = python;
}

int jb_bare_bound(uint64_t token)
{
    return token != 0 && t_bare != NULL && t_bare[token % BARE_SLOTS].token == token;
}

static inline struct bare *bound(uint64_t token)
{
    struct bare *table = t_bare;
    if (table == NULL || token == 0)
        return NULL;
    struct bare *b = &table[token % BARE_SLOTS];
    if (b->token != token)
        return NULL;
    b->ctx->extra = (struct jitbpf_region *)(uintptr_t)b->extra;
    b->ctx->nextra = b->nextra;
    return b;
}

uint64_t jb_bare_run(uint64_t token)
{
    struct bare *b = bound(token);
    return b ? run_args(b->args, b->ctx, NULL, 0, b->python) : __atomic_load_n(&g_error_result, __ATOMIC_ACQUIRE);
}

uint64_t jb_bare_run_mem(uint64_t token, char *mem, uint64_t size)
{
    struct bare *b = bound(token);
    return b ? run_args(b->args, b->ctx, mem, size, b->python) : __atomic_load_n(&g_error_result, __ATOMIC_ACQUIRE);
}

static inline int stopped(uint64_t result, const struct jitbpf_ctx *ctx)
{
    return result == g_error_result && ctx->status != 0;
}

uint64_t jb_run_packed(uint64_t entry, uint64_t ctx, uint64_t base,
                       const uint64_t *lens, uint64_t n, uint64_t *results, void *python)
{
    args_fn fn = (args_fn)(uintptr_t)entry;
    struct jitbpf_ctx *c = (struct jitbpf_ctx *)(uintptr_t)ctx;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t r = run_args(fn, c, (const void *)(uintptr_t)base, lens[i], python);
        results[i] = r;
        if (stopped(r, c))
            return i;
        base += lens[i];
    }
    return n;
}

uint64_t jb_run_records(uint64_t entry, uint64_t ctx, uint64_t base,
                        uint64_t record_size, uint64_t n, uint64_t *results, void *python)
{
    args_fn fn = (args_fn)(uintptr_t)entry;
    struct jitbpf_ctx *c = (struct jitbpf_ctx *)(uintptr_t)ctx;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t r = run_args(fn, c, (const void *)(uintptr_t)(base + i * record_size), record_size, python);
        results[i] = r;
        if (stopped(r, c))
            return i;
    }
    return n;
}
