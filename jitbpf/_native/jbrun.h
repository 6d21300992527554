/* Declarations the library's C files share that are no part of its interface (not fed to cffi):
   what the run loops and the single-run entry points look up on every run. */
#ifndef JITBPF_JBRUN_H
#define JITBPF_JBRUN_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

/* Ring buffer reservations this thread's runs hold (maps.c); the run loops compare it before
   and after each run instead of calling jb_ringbuf_pending. Initial-exec, as every TLS variable
   of the library: a dlopen'ed object's TLS must fit the small static block. */
extern __thread uint32_t jb_rb_npending __attribute__((tls_model("initial-exec"), visibility("hidden")));

/* A thread's table of `count` zeroed entries of `size` bytes, which `key`'s destructor frees
   when the thread exits; NULL when memory ran out (the caller's runs take their ordinary path). */
static inline void *jb_thread_table(pthread_key_t key, size_t count, size_t size)
{
    void *table = calloc(count, size);
    if (table != NULL)
        pthread_setspecific(key, table);
    return table;
}

/* A program's run gate (run.c): runs that bypass the VM's own bookkeeping (bare runs, single
   typed runs) hold it while the code runs, so that closing the program waits for them instead
   of unmapping code under them. A gate outlives its program (gates are recycled, never freed):
   a binding left behind in some thread's table may still point to it, and finds its token
   changed. Entering is sequentially consistent against jb_gate_close's store of the token. */
struct jb_gate {
    uint64_t token;  /* the program's token while it is open; 0 once closed (or recycled: another) */
    uint64_t active; /* runs inside the code now */
    struct jb_gate *next_free;
    struct jb_gate *next_all; /* every gate made, newest first (a fork's child recounts them) */
};
#define JB_GATE_NEST 32 /* runs inside runs (a helper running another program) a thread records */
extern __thread uint32_t jb_gated_runs __attribute__((tls_model("initial-exec"), visibility("hidden")));
/* The gates this thread's runs hold, outermost first (the first JB_GATE_NEST of them). */
extern __thread struct jb_gate *jb_gates_held[JB_GATE_NEST]
    __attribute__((tls_model("initial-exec"), visibility("hidden")));

static inline int jb_gate_enter(struct jb_gate *g, uint64_t token)
{
    __atomic_add_fetch(&g->active, 1, __ATOMIC_SEQ_CST);
    if (__builtin_expect(__atomic_load_n(&g->token, __ATOMIC_SEQ_CST) != token, 0)) {
        __atomic_sub_fetch(&g->active, 1, __ATOMIC_SEQ_CST);
        return 0;
    }
    if (jb_gated_runs < JB_GATE_NEST)
        jb_gates_held[jb_gated_runs] = g;
    jb_gated_runs++;
    return 1;
}

static inline void jb_gate_leave(struct jb_gate *g)
{
    jb_gated_runs--;
    __atomic_sub_fetch(&g->active, 1, __ATOMIC_RELEASE);
}

/* Whether ctx is the context of this thread's typed packet run (pkt.c): then *data and *len are
   its packet's, as the program sees it now. */
int jb_pkt_payload(uint64_t ctx, uint64_t *data, uint64_t *len);

struct jb_pkt_prog;
/* This thread's frame bound under `token` (pkt.c), or NULL; *owner: the object that keeps it
   (a PyObject *), *release: whether its runs hand the GIL over. For fast.c's single runs. */
struct jb_pkt_prog *jb_pkt_bound(uint64_t token, void **owner, int *release);
/* Whether the run on p that returned r stopped early (its error is to be raised). */
int jb_pkt_stopped(const struct jb_pkt_prog *p, uint64_t r);
/* One run on p's frame built from the packet (its outcome in p->out); the caller holds the
   program's run gate. */
uint64_t jb_pkt_run(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len);
/* jb_pkt_batch over packets anywhere in memory (packet i: packets[i], lens[i] bytes), keeping
   none of them; the caller holds the program's run gate. */
uint64_t jb_pkt_batch_each(struct jb_pkt_prog *p, const uint8_t *const *packets, const uint64_t *lens, uint64_t n,
                           uint64_t *results);

#endif
