/* The JIT's native data, declared once for both cffi modules (the JIT's, which reads it from
   here, and the native library's, through jbmaps.h): a bounds-checked memory region, the
   per-thread run context that Python fills before a call and reads after it, and the per-call
   frame the generated code keeps on the machine stack. Field offsets are taken with offsetof
   (ffi.offsetof in Python), never written by hand. */
#ifndef JITBPF_JBJIT_H
#define JITBPF_JBJIT_H

#include <stdint.h>

struct jitbpf_region {
    uint64_t base;              /* host address of the first byte */
    uint64_t size;              /* length in bytes */
    uint64_t writable;          /* non-zero: stores allowed */
};
struct jitbpf_ctx {
    char *mem;                  /* in: the run's mem region (NULL if none) */
    uint64_t mem_size;          /* in: its length */
    uint64_t mem_writable;      /* in: stores to mem allowed */
    uint64_t r1;                /* in: initial r1 (regions entry only) */
    uint64_t r2;                /* in: initial r2 (regions entry only) */
    /* in: the packet LD_ABS/LD_IND read, at each load as the run's helpers leave it: the
       address of two uint64_t (its first byte's address, one past its last) and of a uint32_t
       (its network header's offset from the first byte; 0: no link-layer header before it) */
    uint64_t pkt_bounds;
    uint64_t pkt_net;
    uint64_t pkt_own[3];        /* those three of a packet no helper moves (raw runs point here) */
    struct jitbpf_region *extra;/* in: further regions (maps, context), searched in order */
    uint64_t nextra;            /* in: how many */
    uint64_t stack_base;        /* per thread: lowest address of the stack area */
    uint64_t frame_pointer;     /* per thread: initial r10 (top of the stack area) */
    uint64_t budget;            /* in: instructions this run may execute */
    uint64_t budget_left;       /* out: what was left when the run stopped early */
    uint64_t status;            /* out: 0, or why the run stopped early */
    uint64_t err_info;          /* out: pc and access details of the failure */
    uint64_t err_addr;          /* out: faulting address */
    uint64_t pending;           /* set by the helper dispatcher when a helper did not return */
    uint64_t r3;                /* in: initial r3 (asynchronous callback runs only) */
    uint64_t callback;          /* in: 0, or the address of the asynchronous callback (a timer's)
                                   the run enters instead of the program, with r1-r3 as given */
};
/* Inputs the "batch" entry runs one after the other, each its own run with (mem, size) as the
   "args" entry takes them: input i is the lens[i] bytes (`stride` bytes when lens is NULL) that
   follow input i - 1, the first at `base`. The native loops fill it (run.c). */
struct jitbpf_batch {
    uint64_t base;              /* in: the first input */
    uint64_t stride;            /* in: every input's length when lens is NULL */
    const uint64_t *lens;       /* in: each input's length, or NULL */
    uint64_t n;                 /* in: how many inputs */
    uint64_t *results;          /* out: r0 of each input run */
    const uint32_t *rb_pending; /* in: the thread's count of ring buffer reservations */
    uint64_t rb_reserved;       /* in: what it was before the batch: each run drops what it left */
    uint64_t rb_release;        /* in: the function that drops them, void (*)(uint32_t mark) */
};
struct jitbpf_frame {
    struct jitbpf_ctx *ctx;     /* the run context of this call */
    struct jitbpf_region regions[2];  /* mem and the stack area, searched before ctx->extra */
    uint64_t lim_load[4];       /* per access size 1/2/4/8: valid mem offsets are below this */
    uint64_t lim_store[4];      /* the same for stores (0 when mem is read-only) */
    uint64_t mem_end;           /* mem base + size: the range checks of versioned loops */
    uint64_t mem_wend;          /* the same for writes: mem base when mem is read-only */
    uint64_t pkt_bounds;        /* ctx->pkt_bounds and ctx->pkt_net of this call */
    uint64_t pkt_net;
    struct jitbpf_region *extra;/* ctx->extra and ctx->nextra of this call (a nested run */
    uint64_t nextra;            /* on the same thread may change the context's) */
    uint64_t zero_base;         /* frame-zeroing address at call depth 0, scaled by rsp */
    uint64_t may_goto;          /* may_goto instructions the run may still fall through */
    /* Per call depth (MAX_CALL_DEPTH, 8), the bpf_loop or bpf_for_each_map_elem call made there:
       invocations returned, then the count asked for or the map, the context, the map cursor. */
    uint64_t callback[8][4];
};

#endif
