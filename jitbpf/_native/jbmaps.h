/* Public interface of the native library: maps, helpers and JIT run loops (also fed to cffi's
   cdef: declarations only). */
#ifndef JITBPF_JBMAPS_H
#define JITBPF_JBMAPS_H

#include <stdint.h>

/* Marks the functions Python implements: cffi's cdef reads it as extern "Python+C" (see
   build.py), C as an ordinary declaration of the function cffi generates. */
#ifndef JB_EXTERN_PYTHON
#define JB_EXTERN_PYTHON
#endif

struct jb_map;

/* CPU ids: a fixed count chosen once per process; each thread gets an id (see maps.c). */
int jb_init(int num_cpus);
int jb_num_cpus(void);
uint32_t jb_current_cpu(void);
int jb_set_current_cpu(int cpu);

/* Lifetime and layout. */
struct jb_map *jb_map_create(uint32_t type, uint32_t key_size, uint32_t value_size, uint32_t max_entries,
                             uint32_t flags, uint64_t aux, int *err);
void jb_map_free(struct jb_map *m);
uint8_t *jb_map_values(struct jb_map *m, uint64_t *size);
uint32_t jb_map_count(struct jb_map *m);
uint32_t jb_map_num_cpus(struct jb_map *m);

/* Element operations; negative returns are -errno. */
void *jb_map_lookup(struct jb_map *m, const void *key);
int jb_map_lookup_all(struct jb_map *m, const void *key, void *out);
int jb_map_update(struct jb_map *m, const void *key, const void *value, uint64_t flags);
int jb_map_update_all(struct jb_map *m, const void *key, const void *values, uint64_t flags);
int jb_map_delete(struct jb_map *m, const void *key);
int jb_map_get_next_key(struct jb_map *m, const void *key, void *next_key);
int jb_map_push(struct jb_map *m, const void *value, uint64_t flags);
int jb_map_pop(struct jb_map *m, void *value);
int jb_map_peek(struct jb_map *m, void *value);
int jb_slot_get(struct jb_map *m, uint32_t index, uint64_t *value);

/* Perf event arrays and ring buffers: producers (programs) and the consumer (Python). */
int jb_perf_output(struct jb_map *m, uint64_t flags, const void *data, uint64_t size);
int jb_perf_read(struct jb_map *m, uint32_t ring, void *buf, uint32_t cap, uint32_t *len);
uint64_t jb_perf_lost(struct jb_map *m, uint32_t ring);
uint32_t jb_perf_rings(struct jb_map *m);
void *jb_ringbuf_reserve(struct jb_map *m, uint64_t size, uint64_t flags);
void jb_ringbuf_submit(void *sample, uint64_t flags);
void jb_ringbuf_discard(void *sample, uint64_t flags);
int jb_ringbuf_output(struct jb_map *m, const void *data, uint64_t size, uint64_t flags);
uint64_t jb_ringbuf_query(struct jb_map *m, uint64_t flags);
int jb_ringbuf_consume(struct jb_map *m, void *buf, uint32_t cap, uint32_t *len);
int jb_ringbuf_reserved(struct jb_map *m, uint64_t sample);

/* Helpers with the eBPF calling convention: r0 = f(r1, ..., r5). The JIT calls these directly;
   they check every map and pointer argument (see maps.c). */
uint64_t jb_helper_map_lookup_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_map_update_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_map_delete_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_map_push_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_map_pop_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_map_peek_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_perf_event_output(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ringbuf_output(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ringbuf_reserve(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ringbuf_submit(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ringbuf_discard(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ringbuf_query(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ktime_get_ns(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ktime_get_boot_ns(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_jiffies64(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_prandom_u32(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_smp_processor_id(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_current_pid_tgid(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_current_uid_gid(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_current_comm(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);

/* The same helpers for callers that checked the arguments against the run's memory. */
uint64_t jb_direct_map_lookup_elem(uint64_t map, uint64_t key);
uint64_t jb_direct_map_update_elem(uint64_t map, uint64_t key, uint64_t value, uint64_t flags);
uint64_t jb_direct_map_delete_elem(uint64_t map, uint64_t key);
uint64_t jb_direct_map_push_elem(uint64_t map, uint64_t value, uint64_t flags);
uint64_t jb_direct_map_take_elem(uint64_t map, uint64_t value, int remove);
uint64_t jb_direct_perf_event_output(uint64_t map, uint64_t flags, uint64_t data, uint64_t size);
uint64_t jb_direct_ringbuf_output(uint64_t map, uint64_t data, uint64_t size, uint64_t flags);
uint64_t jb_direct_get_current_comm(uint64_t buf, uint64_t size);

/* The sandbox (sandbox.c): where all memory that JIT code may reach unchecked lives. */
int jb_sbx_init(void);
int jb_sbx_active(void);
uint64_t jb_sbx_base(void);
uint64_t jb_sbx_limit(void);
uint64_t jb_sbx_used(void);
uint64_t jb_sbx_alloc(uint64_t size);
void jb_sbx_free(uint64_t addr);
int jb_sbx_contains(uint64_t addr);
int jb_sbx_check(uint64_t addr, uint64_t size);
/* Faults inside registered JIT code end the run with an error instead of the process. */
int jb_fault_install(void);
int jb_fault_register(uint64_t start, uint64_t end, uint64_t landing);
void jb_code_release(int slot, uint64_t address, uint64_t size);

/* Running JIT-compiled code (run.c): bare runs by token, and batches over many inputs. Returns
   of the batch loops: how many inputs ran to completion (the next one, if any, stopped early).
   Each run gets the handle of its program's Python dispatcher (``python``, a cffi handle): the
   Python helpers it calls are given that handle. */
void jb_jit_init(uint64_t error_result, uint64_t extra_offset, uint64_t nextra_offset);
void jb_bare_bind(uint64_t token, uint64_t args, uint64_t ctx, uint64_t extra, uint64_t nextra, void *python);
int jb_bare_bound(uint64_t token);
uint64_t jb_bare_run(uint64_t token);
uint64_t jb_bare_run_mem(uint64_t token, char *mem, uint64_t size);
uint64_t jb_run_packed(uint64_t entry, uint64_t ctx, uint64_t status_offset, uint64_t base,
                       const uint64_t *lens, uint64_t n, uint64_t *results, void *python);
uint64_t jb_run_records(uint64_t entry, uint64_t ctx, uint64_t status_offset, uint64_t base,
                        uint64_t record_size, uint64_t n, uint64_t *results, void *python);
/* One run of a (ctx) entry point: the regions entry of run_regions. The _gil form holds the GIL
   while the code runs (cffi releases it around every call), for programs that call Python
   helpers: each of those calls then finds the GIL held instead of taking it and giving it back. */
uint64_t jb_run_entry(uint64_t entry, uint64_t ctx, void *python);
uint64_t jb_run_entry_gil(uint64_t entry, uint64_t ctx, void *python);

/* Python helpers. The helper table of JIT code points at jb_helper_python for every id without
   a C helper; it passes the id (6th argument) and the running program's handle to
   jb_python_call, a compiled cffi callback (extern "Python": its code is part of this library,
   so calling Python needs no writable and executable trampoline page). */
uint64_t jb_helper_python(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5, uint64_t id);
JB_EXTERN_PYTHON uint64_t jb_python_call(void *python, uint64_t id, uint64_t r1, uint64_t r2, uint64_t r3,
                                         uint64_t r4, uint64_t r5);

#endif
