/* Declarations the library's C files share that are no part of its interface (not fed to cffi):
   per-thread state that the run loops read on every run, so it must be a plain load away. */
#ifndef JITBPF_JBRUN_H
#define JITBPF_JBRUN_H

#include <stdint.h>

/* Ring buffer reservations this thread's runs hold (maps.c); the run loops compare it before
   and after each run instead of calling jb_ringbuf_pending. Initial-exec, as every TLS variable
   of the library: a dlopen'ed object's TLS must fit the small static block. */
extern __thread uint32_t jb_rb_npending __attribute__((tls_model("initial-exec"), visibility("hidden")));

#endif
