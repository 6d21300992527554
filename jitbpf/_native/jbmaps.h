/* Public interface of the native library: maps, helpers and JIT run loops (also fed to cffi's
   cdef: declarations only). */
#ifndef JITBPF_JBMAPS_H
#define JITBPF_JBMAPS_H

#include <stdint.h>

#include "jbjit.h"

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
/* The value slab handed over to the caller, who frees it with jb_map_values_free (after
   jb_map_free or not): views of it may outlive the map. */
uint8_t *jb_map_give_values(struct jb_map *m, uint64_t *size);
void jb_map_values_free(uint8_t *values);
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
void *jb_storage_get(struct jb_map *m, uint32_t owner, const void *init, uint64_t flags);
void *jb_cgroup_storage_get(struct jb_map *m, const void *key);

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
void *jb_user_ringbuf_reserve(struct jb_map *m, uint64_t size);
void jb_user_ringbuf_commit(struct jb_map *m, void *sample, int discard);
uint64_t jb_user_ringbuf_step(uint64_t map, uint64_t dynptr, uint64_t *row);
uint64_t jb_map_elem_gen(uint64_t map, uint64_t addr);
int jb_map_elem_key(uint64_t map, uint64_t addr, uint8_t *key);
/* Reservations made by programs on this thread and not yet committed: a run takes the count when
   it starts and discards the ones above it when it ends. */
uint32_t jb_ringbuf_pending(void);
void jb_ringbuf_release_since(uint32_t mark);

/* Helpers with the eBPF calling convention: r0 = f(r1, ..., r5). The JIT calls these directly;
   they check every map and pointer argument (see maps.c). */
uint64_t jb_helper_map_lookup_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_map_lookup_percpu_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
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
uint64_t jb_helper_ktime_get_tai_ns(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_ktime_get_coarse_ns(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_spin_lock(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_spin_unlock(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_direct_spin_lock(uint64_t lock);
uint64_t jb_direct_spin_unlock(uint64_t lock);
uint64_t jb_helper_jiffies64(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_prandom_u32(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_smp_processor_id(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_current_pid_tgid(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_current_uid_gid(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_get_current_comm(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);

/* The same helpers for callers that checked the arguments against the run's memory. */
uint64_t jb_direct_map_lookup_elem(uint64_t map, uint64_t key);
uint64_t jb_direct_map_lookup_percpu_elem(uint64_t map, uint64_t key, uint64_t cpu);
uint64_t jb_direct_map_update_elem(uint64_t map, uint64_t key, uint64_t value, uint64_t flags);
uint64_t jb_direct_map_delete_elem(uint64_t map, uint64_t key);
uint64_t jb_direct_map_push_elem(uint64_t map, uint64_t value, uint64_t flags);
uint64_t jb_direct_map_take_elem(uint64_t map, uint64_t value, int remove);
uint64_t jb_direct_perf_event_output(uint64_t ctx, uint64_t map, uint64_t flags, uint64_t data, uint64_t size);
uint64_t jb_direct_ringbuf_output(uint64_t map, uint64_t data, uint64_t size, uint64_t flags);
uint64_t jb_direct_get_current_comm(uint64_t buf, uint64_t size);
/* bpf_for_each_map_elem's iteration: the next element's key written at key, its value returned. */
uint64_t jb_for_each_step(uint64_t map, uint64_t key, uint64_t *cursor);

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
int jb_fault_register(uint64_t start, uint64_t end, uint64_t landing, uint64_t blocks, uint64_t blocks_end);
int jb_interrupt_install(void);
int jb_interrupt_take(void);
void jb_code_release(int slot, uint64_t address, uint64_t size);

/* Running JIT-compiled code (run.c): bare runs by token, and batches over many inputs. Returns
   of the batch loops: how many inputs ran to completion (the next one, if any, stopped early).
   Each run gets its program's struct jb_python (``python``): the Python helpers it calls are
   found there. */
void jb_jit_init(uint64_t error_result);
/* Run gates (see jbrun.h): one per compiled program, opened with its token. Closing returns how
   many runs are still inside; the closer waits for jb_gate_active to reach 0 (unless
   jb_gate_running_here: then it may be one of them) before unmapping and jb_gate_free. */
void *jb_gate_new(uint64_t token);
uint64_t jb_gate_close(void *gate);
uint64_t jb_gate_active(void *gate);
int jb_gate_running_here(void);
void jb_gate_free(void *gate);
void jb_bare_bind(uint64_t token, void *gate, uint64_t args, uint64_t batch, uint64_t ctx, uint64_t extra,
                  uint64_t nextra, void *python);
int jb_bare_bound(uint64_t token);
uint64_t jb_bare_run(uint64_t token);
uint64_t jb_bare_run_mem(uint64_t token, char *mem, uint64_t size);
/* The bound program over n records of record_size bytes at base (its "batch" entry, as
   jb_run_records): how many ran before one stopped early, or UINT64_MAX when nothing is bound
   on this thread or the program is closed (nothing ran). */
uint64_t jb_bare_records(uint64_t token, const uint8_t *base, uint64_t record_size, uint64_t n, uint64_t *results);
/* `entry`: the program's "batch" entry; `extra`, `nextra`: the runs' further regions. The loop
   holds the program's run gate and token (jbrun.h); UINT64_MAX without running when it is closed. */
uint64_t jb_run_packed(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, uint64_t extra, uint64_t nextra,
                       const uint8_t *base, const uint64_t *lens, uint64_t n, uint64_t *results, void *python);
uint64_t jb_run_records(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, uint64_t extra, uint64_t nextra,
                        const uint8_t *base, uint64_t record_size, uint64_t n, uint64_t *results, void *python);
/* Single runs from Python, each with the program's run gate held (jbrun.h), so that closing the
   program waits for them; they return the error result without running once it is closed. The
   regions entry of run_regions, (ctx): the _gil form holds the GIL while the code runs (cffi
   releases it around every call), for programs that call Python helpers: each of those calls
   then finds the GIL held instead of taking it and giving it back. The args entry, (ctx, mem,
   size): run() of programs that need no bookkeeping. */
uint64_t jb_run_entry(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, void *python);
uint64_t jb_run_entry_gil(void *gate, uint64_t token, uint64_t entry, uint64_t ctx, void *python);
uint64_t jb_run_args(void *gate, uint64_t token, uint64_t args, uint64_t ctx, const char *mem, uint64_t size,
                     void *python);

/* Python helpers. The helper table of JIT code points at jb_helper_python for every id without
   a C helper; it gets the id (6th argument) and calls the helper's Python function with the GIL
   (held already by runs of programs that call Python: see jb_run_entry_gil). What it needs comes
   from the running program's struct jb_python, which each run hands the native loops as its
   ``python`` argument; a helper that fails (raises, or has an unknown id) is handed to the
   dispatcher, which parks the failure where the run's caller finds it. */
struct jb_python {
    void *helpers;           /* PyObject *: the VM's live dict of Helper by id */
    void *dispatcher;        /* PyObject *: called as dispatcher(id, helper or None, exception or None) */
};
uint64_t jb_helper_python(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5, uint64_t id);

/* Program-type runs (pkt.c): a run's packet state, outside the sandbox; the binding of one
   thread to one typed program (its arena, run context and entry); where the run context keeps
   the fields the "regions" entry reads (offsets from the Python side's declaration). */
struct jb_pkt {
    uint64_t ctx;            /* the context's address (arena offset 0) */
    uint64_t frame_start;    /* first byte of the frame: the headroom */
    uint64_t frame_end;      /* one past the tailroom */
    uint64_t data;           /* packet start, end and metadata start, as helpers move them */
    uint64_t data_end;
    uint64_t data_meta;
    uint64_t redirect;       /* ifindex given to bpf_redirect */
    uint32_t redirected;     /* 1 once bpf_redirect was called */
    uint32_t xdp;            /* bpf_redirect returns XDP verdicts (else tc's) */
    int32_t off_data;        /* context offsets of the fields kept in step with the above (-1: none) */
    int32_t off_data_end;
    int32_t off_data_meta;
    int32_t off_len;         /* __sk_buff.len */
    uint32_t ptr_size;       /* width of the pointer fields: 4, or 8 (sk_msg_md) */
    uint32_t ctx_size;       /* bytes of the context */
    int32_t off_protocol;    /* __sk_buff.protocol (-1: none), kept in step with protocol */
    uint32_t protocol;       /* skb->protocol as the context stores it (the Ethernet type, network order) */
    uint32_t net_off;        /* skb's network header offset from data (the MAC header's length) */
    uint32_t encap;          /* 1 once bpf_skb_adjust_room added an encapsulation (skb->encapsulation) */
};
struct jb_pkt_prog {
    struct jb_pkt pkt;       /* the program type's layout, and the current run */
    uint64_t entry;          /* the program's "regions" entry */
    uint64_t jctx;           /* the thread's jitbpf_ctx for it */
    uint64_t extra;          /* its region table (the frame area, the maps) and count */
    uint64_t nextra;
    uint64_t arena;          /* sandbox memory: the context at 0, the frame at frame_off */
    uint64_t arena_size;
    uint64_t frame_off;
    uint64_t headroom;       /* bytes before the packet, and after it, that helpers may claim */
    uint64_t tailroom;
    int32_t off_protocol;    /* __sk_buff.protocol and wire_len, for fields derived per packet */
    int32_t off_wire_len;
    int32_t off_pkt_type;    /* __sk_buff.pkt_type (JB_DERIVE_PKT_TYPE) */
    uint64_t tmpl;           /* the initial context (ctx_size bytes), and the fields derived from */
    uint64_t derive;         /* each packet (enum jb_derive) */
    int32_t off_sk;          /* __sk_buff.sk (-1: none), and the arena offset of the socket */
    uint32_t sock_off;       /* JB_DERIVE_SOCKET lays out there (a struct bpf_sock) */
    int32_t off_flow_keys;   /* __sk_buff.flow_keys (-1: none), and the arena offset of the */
    uint32_t keys_off;       /* struct bpf_flow_keys JB_DERIVE_FLOW_KEYS lays out there */
    uint64_t out[3];         /* after jb_pkt_run: the packet's arena offset, length, and 1 if unchanged */
    void *gate;              /* the program's run gate and token (jbrun.h), held around single runs */
    uint64_t gate_token;
};
enum jb_derive {             /* context fields jb_pkt_frame derives from each packet */
    JB_DERIVE_ETH_PROTOCOL = 1,  /* protocol: the Ethernet type */
    JB_DERIVE_IP_PROTOCOL = 2,   /* protocol: IPv4 or IPv6 by the version nibble */
    JB_DERIVE_WIRE_LEN = 4,      /* wire_len: the packet's length */
    JB_DERIVE_PKT_TYPE = 32,     /* pkt_type: by the Ethernet destination (see eth_pkt_type) */
    /* sk: the socket the kernel's test runs give a packet (family and addresses from its IP
       header, closed), laid out in the arena at sock_off */
    JB_DERIVE_SOCKET = 8,
    /* flow_keys: the flow dissector's keys as the kernel starts them (zero, the network header
       at ETH_HLEN, n_proto the Ethernet type), laid out in the arena at keys_off */
    JB_DERIVE_FLOW_KEYS = 16
};
void jb_pkt_init(uint64_t error_result);
/* Tokens for jb_pkt_bind (never 0, never reused); binding NULL empties the token's entry.
   `owner` (a PyObject *, borrowed) keeps p: it must live while `token` is bound to it. */
uint64_t jb_pkt_token(void);
void jb_pkt_bind(uint64_t token, struct jb_pkt_prog *p, void *owner, int release);
struct jb_pkt *jb_pkt_enter(struct jb_pkt *run);
void jb_pkt_sync(struct jb_pkt *run);
int jb_pkt_frame(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len);
/* skb->pkt_type as the kernel's test run derives it from an Ethernet frame's destination. */
uint32_t jb_eth_pkt_type(const uint8_t *frame, uint64_t len);
/* Runs on p's frames, each built from a packet, until one stops early; the loop holds the
   program's run gate (UINT64_MAX without running when it is closed). */
uint64_t jb_pkt_batch(struct jb_pkt_prog *p, const uint8_t *base, const uint64_t *offsets, const uint64_t *lens,
                      uint64_t n, uint64_t *results, uint8_t *out, uint64_t *out_lens);
/* The records of a classic pcap capture read into buf[0, len) (after its file header), at most
   `max`: packet i at offsets[i], lens[i] bytes, less its first `skip` bytes (a view from the
   network header). Returns how many were whole; stats[0] is where the last of them ends,
   stats[1] the longest packet given, stats[2] the bytes captured. Stops at a record cut short by
   the buffer's end, or (*corrupt = 1) at one claiming more than max_packet bytes. */
/* The first of n packets (offsets[i], lens[i]) that does not lie within a buffer of size bytes,
   or -1 when all do: a caller's batch is checked before any run reads it. */
int64_t jb_batch_outside(uint64_t size, const uint64_t *offsets, const uint64_t *lens, uint64_t n);
int64_t jb_pcap_records(const uint8_t *buf, uint64_t len, int big_endian, uint64_t max_packet, uint64_t skip,
                        uint64_t *offsets, uint64_t *lens, uint64_t max, uint64_t *stats, int *corrupt);
/* The distinct values of values[0, n) in order of first appearance, each with how many times
   it comes; -1 when there are more than `max` of them. */
int64_t jb_count_values(const uint64_t *values, uint64_t n, uint64_t *distinct, uint64_t *counts, uint64_t max);
uint64_t jb_helper_xdp_adjust_head(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_xdp_adjust_meta(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_xdp_adjust_tail(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_redirect_neigh(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_redirect(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_skb_load_bytes(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_skb_store_bytes(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_direct_skb_load_bytes(uint64_t ctx, uint64_t offset, uint64_t to, uint64_t len);
uint64_t jb_helper_skb_load_bytes_relative(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_direct_skb_load_bytes_relative(uint64_t ctx, uint64_t offset, uint64_t to, uint64_t len, uint64_t start);
uint64_t jb_helper_skb_pull_data(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_xdp_get_buff_len(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_xdp_load_bytes(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_xdp_store_bytes(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_direct_xdp_copy_bytes(uint64_t ctx, uint64_t offset, uint64_t buf, uint64_t len, uint64_t store);
uint64_t jb_helper_l3_csum_replace(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_l4_csum_replace(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_direct_skb_store_bytes(uint64_t ctx, uint64_t offset, uint64_t from, uint64_t len);
uint64_t jb_helper_skb_adjust_room(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_skb_change_proto(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_skb_change_head(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_skb_change_tail(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_skb_vlan_push(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);
uint64_t jb_helper_skb_vlan_pop(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5);

#endif
