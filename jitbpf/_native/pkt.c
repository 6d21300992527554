/* Program-type runs in native code: the context and packet frame built in sandbox memory, the
 * program run, and the helpers that read, write or move the packet.
 *
 * The arena (sandbox memory, one per thread and program) holds the context at offset 0 and the
 * frame at frame_off: headroom, packet, tailroom. Building it here is the one definition of a
 * typed run's memory: the Python runners (both engines) call jb_pkt_frame, the native runners
 * call it and then the program's "regions" entry, one native call per packet or per batch.
 *
 * The state helpers change (data, data_end, data_meta, redirect) lives in struct jb_pkt, outside
 * the sandbox, so a program cannot forge it; the context's pointer fields are written from it
 * after each change. Helpers find the run of their thread through t_pkt, set around each run.
 * Called outside a typed run (no t_pkt), they fail with -EINVAL.
 *
 * Single runs from Python find their frame by token in a small per-thread table (as bare runs
 * do theirs, see run.c): a program state binds each thread's frame under its token, and takes
 * a new token whenever its frames are redone, so an entry left behind never matches again.
 */
#include "jbmaps.h"
#include "jbrun.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#define UNUSED __attribute__((unused))
#define PTR(x) ((void *)(uintptr_t)(x))
#define RET(x) ((uint64_t)(int64_t)(x))
#define ETH_HLEN 14          /* the least a packet keeps after xdp_adjust_head/tail */
#define XDP_METADATA_MAX 32  /* bytes of metadata before the packet (xdp_adjust_meta) */
#define XDP_ABORTED 0
#define XDP_REDIRECT 4
#define TC_ACT_SHOT 2
#define TC_ACT_REDIRECT 7
#define BPF_REDIR_NEIGH_SIZE 20 /* sizeof(struct bpf_redir_neigh) */

typedef uint64_t (*entry_fn)(void *ctx);

static uint64_t g_error_result;
static __thread struct jb_pkt *t_pkt __attribute__((tls_model("initial-exec")));

#define PKT_SLOTS 64 /* bound frames per thread; programs alternating on one slot just rebind */

struct pkt_slot {
    uint64_t token;            /* 0: empty */
    struct jb_pkt_prog *prog;  /* the frame bound under it */
    void *owner;               /* the Python object that keeps it, alive while the token is current */
    int release;               /* runs hand the GIL over (they may be long) */
};

static uint64_t g_last_token;  /* tokens handed out so far */
/* The thread's table, allocated at its first binding (only a pointer lives in TLS). */
static __thread struct pkt_slot *t_slots __attribute__((tls_model("initial-exec")));
static pthread_key_t g_slots_key;  /* frees a thread's table when the thread exits */
static pthread_once_t g_slots_once = PTHREAD_ONCE_INIT;

static void make_slots_key(void)
{
    pthread_key_create(&g_slots_key, free);
}

void jb_pkt_init(uint64_t error_result)
{
    __atomic_store_n(&g_error_result, error_result, __ATOMIC_RELEASE);
    pthread_once(&g_slots_once, make_slots_key);
}

uint64_t jb_pkt_token(void)
{
    return __atomic_add_fetch(&g_last_token, 1, __ATOMIC_RELAXED);
}

void jb_pkt_bind(uint64_t token, struct jb_pkt_prog *p, void *owner, int release)
{
    if (t_slots == NULL && (t_slots = jb_thread_table(g_slots_key, PKT_SLOTS, sizeof *t_slots)) == NULL)
        return;
    struct pkt_slot *slot = &t_slots[token % PKT_SLOTS];
    slot->token = p != NULL ? token : 0;
    slot->prog = p;
    slot->owner = owner;
    slot->release = release;
}

struct jb_pkt_prog *jb_pkt_bound(uint64_t token, void **owner, int *release)
{
    struct pkt_slot *table = t_slots;
    if (table == NULL || token == 0 || table[token % PKT_SLOTS].token != token)
        return NULL;
    *owner = table[token % PKT_SLOTS].owner;
    *release = table[token % PKT_SLOTS].release;
    return table[token % PKT_SLOTS].prog;
}

struct jb_pkt *jb_pkt_enter(struct jb_pkt *run)
{
    struct jb_pkt *prev = t_pkt;
    t_pkt = run;
    return prev;
}

static inline void put32(uint64_t ctx, int32_t off, uint64_t value)
{
    if (off >= 0) {
        uint32_t v = (uint32_t)value;
        memcpy((char *)PTR(ctx) + off, &v, 4);
    }
}

/* jb_pkt_sync, inline where a frame is built for each packet of a batch */
static inline void sync_fields(struct jb_pkt *run)
{
    if (run->ptr_size == 8) {
        int32_t offs[3] = {run->off_data, run->off_data_end, run->off_data_meta};
        uint64_t vals[3] = {run->data, run->data_end, run->data_meta};
        for (int i = 0; i < 3; i++)
            if (offs[i] >= 0)
                memcpy((char *)PTR(run->ctx) + offs[i], &vals[i], 8);
    } else {
        put32(run->ctx, run->off_data, run->data);
        put32(run->ctx, run->off_data_end, run->data_end);
        put32(run->ctx, run->off_data_meta, run->data_meta);
    }
    put32(run->ctx, run->off_len, run->data_end - run->data);
    put32(run->ctx, run->off_protocol, run->protocol);
}

void jb_pkt_sync(struct jb_pkt *run)
{
    sync_fields(run);
}

/* skb->protocol as the kernel stores it: the Ethernet type in network order, in a u32. */
static uint32_t eth_protocol(const uint8_t *data, uint64_t len)
{
    return len >= ETH_HLEN ? (uint32_t)data[12] | (uint32_t)data[13] << 8 : 0;
}

/* skb->pkt_type as eth_type_trans gives it on the test run's device, the loopback (whose address
   and broadcast address are all zero): host, multicast (any group address, broadcast too), or
   another host's. */
static uint32_t eth_pkt_type(const uint8_t *data, uint64_t len)
{
    static const uint8_t loopback[6];
    if (len < ETH_HLEN || memcmp(data, loopback, sizeof(loopback)) == 0)
        return 0; /* PACKET_HOST */
    return data[0] & 1 ? 2 : 3; /* PACKET_MULTICAST, PACKET_OTHERHOST */
}

uint32_t jb_eth_pkt_type(const uint8_t *frame, uint64_t len)
{
    return eth_pkt_type(frame, len);
}

/* cgroup_skb sees the packet from its IP header: IPv4 by its version nibble, else IPv6. */
static uint32_t ip_protocol(const uint8_t *data, uint64_t len)
{
    return len >= 1 && data[0] >> 4 == 4 ? 0x0008 : 0xDD86;
}

/* struct bpf_sock: its size, and the offsets of the fields a test run's socket sets */
enum { SOCK_SIZE = 80, SOCK_FAMILY = 4, SOCK_SRC_IP4 = 24, SOCK_SRC_IP6 = 28, SOCK_DST_IP4 = 52,
       SOCK_DST_IP6 = 56, SOCK_STATE = 72, SOCK_RX_QUEUE = 76 };

/* The socket the kernel's test runs give a packet (bpf_prog_test_run_skb): closed, of no type
   or protocol, with the family of skb->protocol and, when the IP header is there, its source
   as the local address and its destination as the peer's. ctx->sk points to it. */
static void packet_socket(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len)
{
    uint8_t *sk = PTR(p->arena + p->sock_off);
    const struct jb_pkt *run = &p->pkt;
    const uint8_t *ip = data + run->net_off;
    uint64_t left = len > run->net_off ? len - run->net_off : 0;
    uint32_t family = 0, state = 7; /* TCP_CLOSE */
    int32_t no_queue = -1;
    memset(sk, 0, SOCK_SIZE);
    if (run->protocol == 0x0008) {
        family = 2; /* AF_INET */
        if (left >= 20) {
            memcpy(sk + SOCK_SRC_IP4, ip + 12, 4);
            memcpy(sk + SOCK_DST_IP4, ip + 16, 4);
        }
    } else if (run->protocol == 0xDD86) {
        family = 10; /* AF_INET6 */
        if (left >= 40) {
            memcpy(sk + SOCK_SRC_IP6, ip + 8, 16);
            memcpy(sk + SOCK_DST_IP6, ip + 24, 16);
        }
    }
    memcpy(sk + SOCK_FAMILY, &family, 4);
    memcpy(sk + SOCK_STATE, &state, 4);
    memcpy(sk + SOCK_RX_QUEUE, &no_queue, 4);
    uint64_t addr = p->arena + p->sock_off;
    memcpy((char *)PTR(run->ctx) + p->off_sk, &addr, 8);
}

/* struct bpf_flow_keys: its size, and the fields a flow dissector starts with */
enum { FLOW_KEYS_SIZE = 56, FLOW_NHOFF = 0, FLOW_THOFF = 2, FLOW_N_PROTO = 10 };

/* The keys a flow dissector starts from (the kernel's bpf_flow_dissect): the network header
   right after the Ethernet header, and the frame's Ethernet type. ctx->flow_keys points to them. */
static void flow_keys(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len)
{
    uint8_t *keys = PTR(p->arena + p->keys_off);
    uint16_t nhoff = ETH_HLEN;
    memset(keys, 0, FLOW_KEYS_SIZE);
    memcpy(keys + FLOW_NHOFF, &nhoff, 2);
    memcpy(keys + FLOW_THOFF, &nhoff, 2);
    if (len >= ETH_HLEN)
        memcpy(keys + FLOW_N_PROTO, data + 12, 2); /* __be16, as the frame holds it */
    uint64_t addr = p->arena + p->keys_off;
    memcpy((char *)PTR(p->pkt.ctx) + p->off_flow_keys, &addr, 8);
}

/* jb_pkt_frame, inline in the batch loops */
static inline int build_frame(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len)
{
    if (len > p->arena_size || p->frame_off + p->headroom + p->tailroom > p->arena_size - len)
        return -EMSGSIZE;
    struct jb_pkt *run = &p->pkt;
    uint64_t frame = p->arena + p->frame_off;
    uint64_t start = frame + p->headroom;
    memset(PTR(frame), 0, p->headroom); /* as fresh as the kernel's test-run buffer */
    memcpy(PTR(start), data, len);
    memcpy(PTR(p->arena), PTR(p->tmpl), run->ctx_size);
    run->ctx = p->arena;
    run->frame_start = frame;
    run->data = run->data_meta = start;
    run->data_end = start + len;
    run->frame_end = start + len + p->tailroom;
    run->redirect = 0;
    run->redirected = 0;
    if (p->derive & JB_DERIVE_ETH_PROTOCOL)
        put32(run->ctx, p->off_protocol, eth_protocol(data, len));
    if (p->derive & JB_DERIVE_IP_PROTOCOL)
        put32(run->ctx, p->off_protocol, ip_protocol(data, len));
    if (p->derive & JB_DERIVE_WIRE_LEN)
        put32(run->ctx, p->off_wire_len, len);
    if (p->derive & JB_DERIVE_PKT_TYPE)
        put32(run->ctx, p->off_pkt_type, eth_pkt_type(data, len));
    run->protocol = 0;
    if (run->off_protocol >= 0)
        memcpy(&run->protocol, (char *)PTR(run->ctx) + run->off_protocol, 4);
    /* cgroup_skb sees the packet from its network header on */
    run->net_off = run->xdp || run->off_protocol < 0 || p->derive & JB_DERIVE_IP_PROTOCOL ? 0 : ETH_HLEN;
    run->encap = 0;
    if (p->derive & JB_DERIVE_SOCKET && p->off_sk >= 0)
        packet_socket(p, data, len);
    if (p->derive & JB_DERIVE_FLOW_KEYS && p->off_flow_keys >= 0)
        flow_keys(p, data, len);
    sync_fields(run);
    return 0;
}

int jb_pkt_frame(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len)
{
    return build_frame(p, data, len);
}

/* Runs on p's frames: r1 = the context, which is also the checked "mem" region; the frame area
   and the maps are the extra regions. The same for every run on p: a batch sets it once. */
static void enter_runs(struct jb_pkt_prog *p)
{
    struct jitbpf_ctx *c = PTR(p->jctx);
    c->mem = PTR(p->arena);
    c->mem_size = p->pkt.ctx_size;
    c->mem_writable = 1;
    c->r1 = p->arena;
    c->r2 = 0;
    c->extra = PTR(p->extra);
    c->nextra = p->nextra;
}

/* LD_ABS/LD_IND read the run's packet where its helpers leave it: data and data_end, side by side. */
_Static_assert(offsetof(struct jb_pkt, data_end) == offsetof(struct jb_pkt, data) + 8, "packet bounds apart");

/* Run the program on the frame jb_pkt_frame built, after enter_runs. t_pkt must be p's run. */
static inline uint64_t run_built(struct jb_pkt_prog *p)
{
    struct jitbpf_ctx *c = PTR(p->jctx);
    c->pkt_bounds = (uint64_t)(uintptr_t)&p->pkt.data;
    c->pkt_net = (uint64_t)(uintptr_t)&p->pkt.net_off;
    return ((entry_fn)(uintptr_t)p->entry)(c);
}

static inline int stopped(const struct jb_pkt_prog *p, uint64_t r)
{
    const struct jitbpf_ctx *c = PTR(p->jctx);
    return r == g_error_result && c->status != 0;
}

int jb_pkt_stopped(const struct jb_pkt_prog *p, uint64_t r)
{
    return stopped(p, r);
}

uint64_t jb_pkt_run(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len)
{
    uint64_t *out = p->out;
    if (jb_pkt_frame(p, data, len) != 0) {
        out[0] = out[1] = out[2] = 0;
        return __atomic_load_n(&g_error_result, __ATOMIC_ACQUIRE);
    }
    uint64_t start = p->pkt.data;
    enter_runs(p);
    struct jb_pkt *prev = jb_pkt_enter(&p->pkt);
    uint64_t r = run_built(p);
    t_pkt = prev;
    const struct jb_pkt *run = &p->pkt;
    out[0] = run->data - p->arena;
    out[1] = run->data_end - run->data;
    out[2] = run->data == start && out[1] == len && memcmp(PTR(start), data, len) == 0;
    return r;
}

/* One run of a batch into *result: 1 if the batch stops here (the packet did not fit, or the
   run stopped early). */
static inline int batch_run(struct jb_pkt_prog *p, const uint8_t *data, uint64_t len, uint64_t *result)
{
    if (build_frame(p, data, len) != 0) {
        *result = g_error_result;
        return 1;
    }
    *result = run_built(p);
    return stopped(p, *result);
}

uint64_t jb_pkt_batch(struct jb_pkt_prog *p, const uint8_t *base, const uint64_t *offsets, const uint64_t *lens,
                      uint64_t n, uint64_t *results, uint8_t *out, uint64_t *out_lens)
{
    uint64_t grow = p->headroom + p->tailroom;
    uint64_t i = 0;
    if (!jb_gate_enter(p->gate, p->gate_token))
        return UINT64_MAX; /* the program is closed: nothing ran */
    enter_runs(p);
    struct jb_pkt *prev = jb_pkt_enter(&p->pkt);
    for (; i < n; i++) {
        if (batch_run(p, base + offsets[i], lens[i], &results[i]))
            break;
        if (out != NULL) {
            uint64_t size = p->pkt.data_end - p->pkt.data;
            memcpy(out, PTR(p->pkt.data), size);
            out_lens[i] = size;
            out += lens[i] + grow;
        }
    }
    t_pkt = prev;
    jb_gate_leave(p->gate);
    return i;
}

uint64_t jb_pkt_batch_each(struct jb_pkt_prog *p, const uint8_t *const *packets, const uint64_t *lens, uint64_t n,
                           uint64_t *results)
{
    uint64_t i = 0;
    enter_runs(p);
    struct jb_pkt *prev = jb_pkt_enter(&p->pkt);
    for (; i < n; i++)
        if (batch_run(p, packets[i], lens[i], &results[i]))
            break;
    t_pkt = prev;
    return i;
}

/* -- helpers (eBPF calling convention; the direct forms trust their pointer arguments) -------- */

static inline struct jb_pkt *run_of(uint64_t ctx)
{
    struct jb_pkt *run = t_pkt;
    return run != NULL && run->ctx == ctx ? run : NULL;
}

int jb_pkt_payload(uint64_t ctx, uint64_t *data, uint64_t *len)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return 0;
    *data = run->data;
    *len = run->data_end - run->data;
    return 1;
}

static inline int64_t s32(uint64_t x) { return (int32_t)(uint32_t)x; }

uint64_t jb_helper_xdp_adjust_head(uint64_t ctx, uint64_t delta, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return RET(-EINVAL);
    int64_t d = s32(delta);
    uint64_t metalen = run->data - run->data_meta;
    int64_t data = (int64_t)run->data + d;
    if (data < (int64_t)(run->frame_start + metalen) || data > (int64_t)run->data_end - ETH_HLEN)
        return RET(-EINVAL);
    if (metalen)
        memmove(PTR(run->data_meta + d), PTR(run->data_meta), metalen);
    run->data_meta += d;
    run->data = (uint64_t)data;
    jb_pkt_sync(run);
    return 0;
}

uint64_t jb_helper_xdp_adjust_meta(uint64_t ctx, uint64_t delta, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return RET(-EINVAL);
    int64_t meta = (int64_t)run->data_meta + s32(delta);
    if (meta < (int64_t)run->frame_start || meta > (int64_t)run->data)
        return RET(-EINVAL);
    uint64_t metalen = run->data - (uint64_t)meta;
    if (metalen % 4 || metalen > XDP_METADATA_MAX)
        return RET(-EACCES);
    run->data_meta = (uint64_t)meta;
    jb_pkt_sync(run);
    return 0;
}

uint64_t jb_helper_xdp_adjust_tail(uint64_t ctx, uint64_t delta, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return RET(-EINVAL);
    int64_t d = s32(delta);
    int64_t end = (int64_t)run->data_end + d;
    if (end > (int64_t)run->frame_end || end < (int64_t)run->data + ETH_HLEN)
        return RET(-EINVAL);
    if (d > 0)
        memset(PTR(run->data_end), 0, (uint64_t)d);
    run->data_end = (uint64_t)end;
    jb_pkt_sync(run);
    return 0;
}

uint64_t jb_helper_redirect(uint64_t ifindex, uint64_t flags, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                            uint64_t r5 UNUSED)
{
    struct jb_pkt *run = t_pkt;
    if (run == NULL)
        return RET(-EINVAL);
    run->redirect = (uint32_t)ifindex;
    run->redirected = 1;
    if (run->xdp)
        return flags == 0 ? XDP_REDIRECT : XDP_ABORTED;
    return (flags & ~(uint64_t)1) == 0 ? TC_ACT_REDIRECT : TC_ACT_SHOT;
}

/* tc's bpf_redirect_neigh: the neighbour parameters (if any) only steer the real transmit. */
uint64_t jb_helper_redirect_neigh(uint64_t ifindex, uint64_t params UNUSED, uint64_t plen, uint64_t flags,
                                  uint64_t r5 UNUSED)
{
    struct jb_pkt *run = t_pkt;
    if (run == NULL)
        return RET(-EINVAL);
    if (((uint32_t)plen != 0 && (uint32_t)plen < BPF_REDIR_NEIGH_SIZE) || flags != 0)
        return TC_ACT_SHOT;
    run->redirect = (uint32_t)ifindex;
    run->redirected = 1;
    return TC_ACT_REDIRECT;
}

uint64_t jb_direct_skb_load_bytes(uint64_t ctx, uint64_t offset, uint64_t to, uint64_t len)
{
    struct jb_pkt *run = run_of(ctx);
    offset = (uint32_t)offset;
    len = (uint32_t)len;
    if (run == NULL || len == 0 || offset + len > run->data_end - run->data) {
        memset(PTR(to), 0, len); /* as the kernel: the buffer is cleared on failure */
        return RET(-EFAULT);
    }
    memcpy(PTR(to), PTR(run->data + offset), len);
    return 0;
}

/* From the MAC header (BPF_HDR_START_MAC, 0: the frame's start) or the network header (1); the
   buffer is cleared on failure, as the kernel clears it. */
uint64_t jb_direct_skb_load_bytes_relative(uint64_t ctx, uint64_t offset, uint64_t to, uint64_t len, uint64_t start)
{
    struct jb_pkt *run = run_of(ctx);
    offset = (uint32_t)offset;
    len = (uint32_t)len;
    if (run != NULL && offset <= 0xffff && (uint32_t)start <= 1) {
        uint64_t from = run->data + ((uint32_t)start == 1 ? run->net_off : 0) + offset;
        if (from + len <= run->data_end) {
            memcpy(PTR(to), PTR(from), len);
            return 0;
        }
    }
    memset(PTR(to), 0, len);
    return RET(-EFAULT);
}

uint64_t jb_helper_skb_load_bytes_relative(uint64_t ctx, uint64_t offset, uint64_t to, uint64_t len, uint64_t start)
{
    if (!jb_sbx_check(to, (uint32_t)len))
        return RET(-EFAULT);
    return jb_direct_skb_load_bytes_relative(ctx, offset, to, len, start);
}

/* A test-run skb is linear: pulling makes nothing more readable, and fails only past its end. */
uint64_t jb_helper_skb_pull_data(uint64_t ctx, uint64_t len, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                 uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return RET(-EINVAL);
    return (uint32_t)len > run->data_end - run->data ? RET(-ENOMEM) : 0;
}

/* XDP frames have no fragments here: the buffer is the linear packet. */
uint64_t jb_helper_xdp_get_buff_len(uint64_t ctx, uint64_t r2 UNUSED, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                    uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    return run == NULL ? 0 : run->data_end - run->data;
}

/* bpf_xdp_load_bytes (store 0) and bpf_xdp_store_bytes (store 1): the kernel's errors, EFAULT
   for an offset or length past 0xffff, EINVAL past the packet; the buffer is left alone. */
uint64_t jb_direct_xdp_copy_bytes(uint64_t ctx, uint64_t offset, uint64_t buf, uint64_t len, uint64_t store)
{
    struct jb_pkt *run = run_of(ctx);
    offset = (uint32_t)offset;
    len = (uint32_t)len;
    if (run == NULL || offset > 0xffff || len > 0xffff)
        return RET(-EFAULT);
    if (offset + len > run->data_end - run->data)
        return RET(-EINVAL);
    if (store)
        memmove(PTR(run->data + offset), PTR(buf), len);
    else
        memmove(PTR(buf), PTR(run->data + offset), len);
    return 0;
}

uint64_t jb_helper_xdp_load_bytes(uint64_t ctx, uint64_t offset, uint64_t buf, uint64_t len, uint64_t r5 UNUSED)
{
    if (!jb_sbx_check(buf, (uint32_t)len))
        return RET(-EFAULT);
    return jb_direct_xdp_copy_bytes(ctx, offset, buf, len, 0);
}

uint64_t jb_helper_xdp_store_bytes(uint64_t ctx, uint64_t offset, uint64_t buf, uint64_t len, uint64_t r5 UNUSED)
{
    if (!jb_sbx_check(buf, (uint32_t)len))
        return RET(-EFAULT);
    return jb_direct_xdp_copy_bytes(ctx, offset, buf, len, 1);
}

uint64_t jb_helper_skb_load_bytes(uint64_t ctx, uint64_t offset, uint64_t to, uint64_t len, uint64_t r5 UNUSED)
{
    if (!jb_sbx_check(to, (uint32_t)len))
        return RET(-EFAULT);
    return jb_direct_skb_load_bytes(ctx, offset, to, len);
}

uint64_t jb_direct_skb_store_bytes(uint64_t ctx, uint64_t offset, uint64_t from, uint64_t len)
{
    struct jb_pkt *run = run_of(ctx);
    offset = (uint32_t)offset;
    len = (uint32_t)len;
    if (run == NULL || offset + len > run->data_end - run->data)
        return RET(-EFAULT);
    memmove(PTR(run->data + offset), PTR(from), len);
    return 0;
}

uint64_t jb_helper_skb_store_bytes(uint64_t ctx, uint64_t offset, uint64_t from, uint64_t len,
                                   uint64_t flags UNUSED)
{
    if (!jb_sbx_check(from, (uint32_t)len))
        return RET(-EFAULT);
    return jb_direct_skb_store_bytes(ctx, offset, from, len);
}

/* -- checksum helpers (tc). A test-run skb has no checksum offload state (CHECKSUM_NONE), so
 * the pseudo-header flag changes nothing in the packet, and bpf_csum_update has no sum to add to.
 * Sums are read and written as the host stores them: one's complement arithmetic does not care
 * about byte order as long as every operand is taken the same way. ----------------------------- */

#define BPF_F_HDR_FIELD_MASK 0xfULL
#define BPF_F_PSEUDO_HDR (1ULL << 4)
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)
#define BPF_F_MARK_ENFORCE (1ULL << 6)
#define BPF_F_IPV6 (1ULL << 7)
#define CSUM_MANGLED_0 0xffff

static inline uint32_t csum_add32(uint32_t a, uint32_t b)
{
    uint32_t r = a + b;
    return r + (r < b);
}

static inline uint16_t csum_fold32(uint32_t c)
{
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    return (uint16_t)~c;
}

/* The checksum at `sum` after the field it covers changed from `from` to `to` (size 2 or 4), or
 * by the 32-bit difference `to` (size 0, as bpf_csum_diff returns). */
static void csum_replace(uint8_t *sum, uint64_t from, uint64_t to, uint64_t size)
{
    uint16_t old;
    memcpy(&old, sum, 2);
    uint32_t acc = (uint16_t)~old;
    if (size == 0) {
        acc = csum_add32(acc, (uint32_t)to);
    } else if (size == 2) {
        acc = csum_add32(acc, (uint16_t)~(uint16_t)from);
        acc = csum_add32(acc, (uint16_t)to);
    } else {
        acc = csum_add32(acc, ~(uint32_t)from);
        acc = csum_add32(acc, (uint32_t)to);
    }
    uint16_t res = csum_fold32(acc);
    memcpy(sum, &res, 2);
}

static int64_t csum_field(struct jb_pkt *run, uint64_t offset, uint8_t **at)
{
    if (offset > 0xffff || offset & 1 || offset + 2 > run->data_end - run->data)
        return -EFAULT;
    *at = PTR(run->data + offset);
    return 0;
}

uint64_t jb_helper_l3_csum_replace(uint64_t ctx, uint64_t offset, uint64_t from, uint64_t to, uint64_t flags)
{
    struct jb_pkt *run = run_of(ctx);
    uint8_t *sum;
    if (run == NULL || flags & ~BPF_F_HDR_FIELD_MASK)
        return RET(-EINVAL);
    if (csum_field(run, offset, &sum))
        return RET(-EFAULT);
    uint64_t size = flags & BPF_F_HDR_FIELD_MASK;
    if ((size != 0 && size != 2 && size != 4) || (size == 0 && from != 0))
        return RET(-EINVAL);
    csum_replace(sum, from, to, size);
    return 0;
}

uint64_t jb_helper_l4_csum_replace(uint64_t ctx, uint64_t offset, uint64_t from, uint64_t to, uint64_t flags)
{
    struct jb_pkt *run = run_of(ctx);
    uint8_t *sum;
    if (run == NULL || flags & ~(BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE | BPF_F_PSEUDO_HDR | BPF_F_HDR_FIELD_MASK |
                                 BPF_F_IPV6))
        return RET(-EINVAL);
    if (csum_field(run, offset, &sum))
        return RET(-EFAULT);
    int mangled0 = (flags & BPF_F_MARK_MANGLED_0) != 0;
    uint16_t cur;
    memcpy(&cur, sum, 2);
    if (mangled0 && !(flags & BPF_F_MARK_ENFORCE) && cur == 0)
        return 0; /* UDP without a checksum stays without one */
    uint64_t size = flags & BPF_F_HDR_FIELD_MASK;
    if ((size != 0 && size != 2 && size != 4) || (size == 0 && from != 0))
        return RET(-EINVAL);
    csum_replace(sum, from, to, size);
    memcpy(&cur, sum, 2);
    if (mangled0 && cur == 0) {
        cur = CSUM_MANGLED_0;
        memcpy(sum, &cur, 2);
    }
    return 0;
}

/* -- helpers that move the skb's headers (tc). The test-run skb starts at its Ethernet header,
 * with the network header after it; growth takes the frame's headroom, and fails with -ENOMEM
 * once that is used up (where the kernel would reallocate the buffer). ----------------------- */

#define ETH_P_IP_BE 0x0008U   /* htons(ETH_P_IP), as skb->protocol holds it */
#define ETH_P_IPV6_BE 0xDD86U /* htons(ETH_P_IPV6) */
#define IPV4_HLEN 20
#define IPV6_HLEN 40
#define SKB_MAX_LEN 16064 /* the kernel's BPF_SKB_MAX_LEN (SKB_MAX_ALLOC with 4 KiB pages) */
#define ENOTSUPP 524

#define ADJ_ROOM_NET 0
#define ADJ_ROOM_MAC 1
#define ADJ_FIXED_GSO (1ULL << 0)
#define ADJ_ENCAP_L3_IPV4 (1ULL << 1)
#define ADJ_ENCAP_L3_IPV6 (1ULL << 2)
#define ADJ_ENCAP_L4_GRE (1ULL << 3)
#define ADJ_ENCAP_L4_UDP (1ULL << 4)
#define ADJ_NO_CSUM_RESET (1ULL << 5)
#define ADJ_ENCAP_L2_ETH (1ULL << 6)
#define ADJ_DECAP_L3_IPV4 (1ULL << 7)
#define ADJ_DECAP_L3_IPV6 (1ULL << 8)
#define ADJ_ENCAP_L2_SHIFT 56
#define ADJ_ENCAP_L3_MASK (ADJ_ENCAP_L3_IPV4 | ADJ_ENCAP_L3_IPV6)
#define ADJ_DECAP_L3_MASK (ADJ_DECAP_L3_IPV4 | ADJ_DECAP_L3_IPV6)
#define ADJ_ROOM_MASK                                                                                  \
    (ADJ_FIXED_GSO | ADJ_ENCAP_L3_MASK | ADJ_ENCAP_L4_GRE | ADJ_ENCAP_L4_UDP | ADJ_ENCAP_L2_ETH |     \
     (0xffULL << ADJ_ENCAP_L2_SHIFT) | ADJ_DECAP_L3_MASK)

static uint32_t net_base_len(uint32_t protocol)
{
    return protocol == ETH_P_IP_BE ? IPV4_HLEN : protocol == ETH_P_IPV6_BE ? IPV6_HLEN : 0;
}

/* Insert `len` zero bytes at `off` from the packet start: the first `off` bytes move forward. */
static int64_t hdr_push(struct jb_pkt *run, uint64_t off, uint64_t len)
{
    if (run->data - run->frame_start < len || off > run->data_end - run->data)
        return -ENOMEM;
    run->data -= len;
    memmove(PTR(run->data), PTR(run->data + len), off);
    memset(PTR(run->data + off), 0, len);
    run->data_meta = run->data;
    return 0;
}

/* Remove `len` bytes at `off`: the first `off` bytes move back over them. */
static int64_t hdr_pop(struct jb_pkt *run, uint64_t off, uint64_t len)
{
    if (off + len > run->data_end - run->data)
        return -ENOMEM;
    memmove(PTR(run->data + len), PTR(run->data), off);
    run->data += len;
    run->data_meta = run->data;
    return 0;
}

static int64_t net_grow(struct jb_pkt *run, uint64_t off, uint32_t len, uint64_t flags)
{
    uint32_t inner_mac_len = (uint32_t)(flags >> ADJ_ENCAP_L2_SHIFT);
    int encap = (flags & ADJ_ENCAP_L3_MASK) != 0;
    if (run->data - run->frame_start < len)
        return -ENOMEM;
    if (encap) {
        if ((flags & ADJ_ENCAP_L3_MASK) == ADJ_ENCAP_L3_MASK)
            return -EINVAL;
        if ((flags & ADJ_ENCAP_L4_GRE) && (flags & ADJ_ENCAP_L4_UDP))
            return -EINVAL;
        if ((flags & ADJ_ENCAP_L2_ETH) && inner_mac_len < ETH_HLEN)
            return -EINVAL;
        if (run->encap)
            return -EALREADY;
        if (inner_mac_len > len)
            return -EINVAL;
    }
    int64_t ret = hdr_push(run, off, len);
    if (ret < 0 || !encap)
        return ret;
    run->encap = 1;
    if (run->protocol == ETH_P_IP_BE && (flags & ADJ_ENCAP_L3_IPV6))
        run->protocol = ETH_P_IPV6_BE;
    else if (run->protocol == ETH_P_IPV6_BE && (flags & ADJ_ENCAP_L3_IPV4))
        run->protocol = ETH_P_IP_BE;
    return 0;
}

static int64_t net_shrink(struct jb_pkt *run, uint64_t off, uint32_t len, uint64_t flags)
{
    if (flags & ~(ADJ_FIXED_GSO | ADJ_DECAP_L3_MASK | ADJ_NO_CSUM_RESET))
        return -EINVAL;
    int64_t ret = hdr_pop(run, off, len);
    if (ret < 0)
        return ret;
    if (run->protocol == ETH_P_IP_BE && (flags & ADJ_DECAP_L3_IPV6))
        run->protocol = ETH_P_IPV6_BE;
    else if (run->protocol == ETH_P_IPV6_BE && (flags & ADJ_DECAP_L3_IPV4))
        run->protocol = ETH_P_IP_BE;
    return 0;
}

static int64_t adjust_room(struct jb_pkt *run, int64_t len_diff, uint32_t mode, uint64_t flags)
{
    uint32_t diff = (uint32_t)(len_diff < 0 ? -len_diff : len_diff);
    int shrink = len_diff < 0;
    uint32_t len_min = net_base_len(run->protocol);
    if (flags & ~(ADJ_ROOM_MASK | ADJ_NO_CSUM_RESET))
        return -EINVAL;
    if (diff > 0xfff)
        return -EFAULT;
    if (run->protocol != ETH_P_IP_BE && run->protocol != ETH_P_IPV6_BE)
        return -ENOTSUPP;
    uint64_t off = run->net_off;
    if (mode == ADJ_ROOM_NET)
        off += net_base_len(run->protocol);
    else if (mode != ADJ_ROOM_MAC)
        return -ENOTSUPP;
    if (flags & ADJ_DECAP_L3_MASK) {
        if (!shrink)
            return -EINVAL;
        if ((flags & ADJ_DECAP_L3_MASK) == ADJ_DECAP_L3_MASK)
            return -EINVAL;
        len_min = flags & ADJ_DECAP_L3_IPV4 ? IPV4_HLEN : IPV6_HLEN;
    }
    uint64_t len = run->data_end - run->data;
    uint64_t len_cur = len - run->net_off;
    if (shrink ? diff >= len_cur || len_cur - diff < len_min : len + diff > SKB_MAX_LEN)
        return -ENOTSUPP;
    return shrink ? net_shrink(run, off, diff, flags) : net_grow(run, off, diff, flags);
}

uint64_t jb_helper_skb_adjust_room(uint64_t ctx, uint64_t len_diff, uint64_t mode, uint64_t flags,
                                   uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return RET(-EINVAL);
    int64_t ret = adjust_room(run, s32(len_diff), (uint32_t)mode, flags);
    jb_pkt_sync(run);
    return RET(ret);
}

uint64_t jb_helper_skb_change_proto(uint64_t ctx, uint64_t proto, uint64_t flags, uint64_t r4 UNUSED,
                                    uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL || flags != 0)
        return RET(-EINVAL);
    uint32_t to = (uint16_t)proto;
    int64_t ret = -ENOTSUPP;
    /* The IP header grows or shrinks by the difference of the two fixed headers, in place
     * after the MAC header; the program rewrites the headers themselves. */
    if (run->protocol == ETH_P_IP_BE && to == ETH_P_IPV6_BE)
        ret = hdr_push(run, run->net_off, IPV6_HLEN - IPV4_HLEN);
    else if (run->protocol == ETH_P_IPV6_BE && to == ETH_P_IP_BE)
        ret = hdr_pop(run, run->net_off, IPV6_HLEN - IPV4_HLEN);
    if (ret == 0)
        run->protocol = to;
    jb_pkt_sync(run);
    return RET(ret);
}

uint64_t jb_helper_skb_change_head(uint64_t ctx, uint64_t head_room, uint64_t flags, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return RET(-EINVAL);
    uint32_t room = (uint32_t)head_room;
    uint32_t len = (uint32_t)(run->data_end - run->data);
    uint32_t new_len = len + room;
    if (flags != 0 || new_len > SKB_MAX_LEN || new_len < len)
        return RET(-EINVAL);
    int64_t ret = hdr_push(run, 0, room);
    if (ret == 0)
        run->net_off += room; /* the MAC header now starts at the new bytes */
    jb_pkt_sync(run);
    return RET(ret);
}

/* -- the skb's VLAN tag (tc). The first tag pushed is the skb's accelerated tag, kept in the
 * context's vlan_present, vlan_tci and vlan_proto (which __sk_buff holds right after protocol);
 * pushing another moves the accelerated one into the packet after the MAC addresses, and popping
 * moves the packet's next tag back out, as the kernel's skb_vlan_push/skb_vlan_pop do. ------- */

#define ETH_P_8021Q_BE 0x0081U  /* htons(ETH_P_8021Q) */
#define ETH_P_8021AD_BE 0xA888U /* htons(ETH_P_8021AD) */
#define ETH_P_802_3_BE 0x0100U  /* what a tag encapsulating a length (not a type) leaves */
#define ETH_P_802_2_BE 0x0400U
#define VLAN_HLEN 4
#define ETH_ALEN2 12            /* the two MAC addresses before the type or the tag */
#define VLAN_AFTER_PROTOCOL 4   /* offset of __sk_buff.vlan_present from __sk_buff.protocol */

struct vlan_tag {
    uint32_t present, tci, proto;
};

static struct vlan_tag vlan_get(const struct jb_pkt *run)
{
    struct vlan_tag t;
    memcpy(&t, (char *)PTR(run->ctx) + run->off_protocol + VLAN_AFTER_PROTOCOL, sizeof(t));
    return t;
}

static void vlan_put(const struct jb_pkt *run, struct vlan_tag t)
{
    memcpy((char *)PTR(run->ctx) + run->off_protocol + VLAN_AFTER_PROTOCOL, &t, sizeof(t));
}

static int is_vlan(uint32_t protocol)
{
    return protocol == ETH_P_8021Q_BE || protocol == ETH_P_8021AD_BE;
}

/* The packet's first tag out (the kernel's __skb_vlan_pop): its TCI into *tci. */
static int64_t vlan_untag(struct jb_pkt *run, uint32_t *tci)
{
    if (run->data_end - run->data < ETH_HLEN + VLAN_HLEN)
        return -ENOMEM;
    const uint8_t *tag = PTR(run->data + ETH_ALEN2);
    *tci = (uint32_t)tag[2] << 8 | tag[3];
    uint32_t inner = (uint32_t)tag[4] | (uint32_t)tag[5] << 8;
    if (((uint32_t)tag[4] << 8 | tag[5]) < 0x600) /* a length: 802.3 raw when the payload starts 0xffff */
        inner = run->data_end - run->data >= ETH_HLEN + VLAN_HLEN + 2 && tag[6] == 0xff && tag[7] == 0xff
                    ? ETH_P_802_3_BE : ETH_P_802_2_BE;
    hdr_pop(run, ETH_ALEN2, VLAN_HLEN);
    run->protocol = inner;
    run->net_off = run->net_off >= ETH_HLEN + VLAN_HLEN ? run->net_off - VLAN_HLEN : ETH_HLEN;
    return 0;
}

uint64_t jb_helper_skb_vlan_push(uint64_t ctx, uint64_t proto, uint64_t tci, uint64_t r4 UNUSED,
                                 uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL || run->off_protocol < 0)
        return RET(-EINVAL);
    uint32_t to = (uint16_t)proto;
    if (!is_vlan(to))
        to = ETH_P_8021Q_BE;
    struct vlan_tag cur = vlan_get(run);
    if (cur.present) {
        int64_t ret = hdr_push(run, ETH_ALEN2, VLAN_HLEN);
        if (ret < 0) {
            jb_pkt_sync(run);
            return RET(ret);
        }
        uint8_t *tag = PTR(run->data + ETH_ALEN2);
        uint8_t bytes[6] = {(uint8_t)cur.proto, (uint8_t)(cur.proto >> 8), (uint8_t)(cur.tci >> 8), (uint8_t)cur.tci,
                            (uint8_t)run->protocol, (uint8_t)(run->protocol >> 8)};
        memcpy(tag, bytes, sizeof(bytes));
        run->protocol = cur.proto;
        /* the kernel moves the network header back with the tag (skb_vlan_push): it stays
           net_off bytes in, on the tag just inserted */
    }
    vlan_put(run, (struct vlan_tag){1, (uint16_t)tci, to});
    jb_pkt_sync(run);
    return 0;
}

uint64_t jb_helper_skb_vlan_pop(uint64_t ctx, uint64_t r2 UNUSED, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL || run->off_protocol < 0)
        return RET(-EINVAL);
    int64_t ret = 0;
    uint32_t tci;
    if (vlan_get(run).present)
        vlan_put(run, (struct vlan_tag){0, 0, 0});
    else if (!is_vlan(run->protocol) || (ret = vlan_untag(run, &tci)) < 0)
        goto out;
    if (is_vlan(run->protocol)) { /* the packet's next tag becomes the accelerated one */
        uint32_t outer = run->protocol;
        if ((ret = vlan_untag(run, &tci)) == 0)
            vlan_put(run, (struct vlan_tag){1, tci, outer});
    }
out:
    jb_pkt_sync(run);
    return RET(ret);
}

uint64_t jb_helper_skb_change_tail(uint64_t ctx, uint64_t new_len, uint64_t flags, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    struct jb_pkt *run = run_of(ctx);
    if (run == NULL)
        return RET(-EINVAL);
    uint32_t to = (uint32_t)new_len;
    uint64_t len = run->data_end - run->data;
    /* Never shorter than the headers before the network header (the kernel's minimum length of
       a test-run skb), never longer than the kernel's BPF_SKB_MAX_LEN. */
    if (flags != 0 || to > SKB_MAX_LEN || to < run->net_off)
        return RET(-EINVAL);
    if (run->encap)
        return RET(-ENOTSUPP);
    if (run->data + to > run->frame_end)
        return RET(-ENOMEM);  /* past the frame's tailroom, where the kernel would reallocate */
    if (to > len)
        memset(PTR(run->data_end), 0, to - len);
    run->data_end = run->data + to;
    jb_pkt_sync(run);
    return 0;
}

/* -- capture files ------------------------------------------------------------------------------ */

#define PCAP_PREFETCH 4096 /* bytes of the capture fetched ahead of the record being read */

int64_t jb_batch_outside(uint64_t size, const uint64_t *offsets, const uint64_t *lens, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (offsets[i] > size || lens[i] > size - offsets[i])
            return (int64_t)i;
    return -1;
}

int64_t jb_pcap_records(const uint8_t *buf, uint64_t len, int big_endian, uint64_t max_packet, uint64_t skip,
                        uint64_t *offsets, uint64_t *lens, uint64_t max, uint64_t *stats, int *corrupt)
{
    uint64_t at = 0, n = 0, longest = 0, bytes = 0, ahead = 0;
    *corrupt = 0;
    while (n < max && len - at >= 16) {
        /* Each header's place follows from the one before: read one by one they would each wait
           for memory. The records lie in order, so the lines a little ahead are fetched meanwhile
           (the runs that copy the packets then find them in the cache too). */
        for (; ahead < at + PCAP_PREFETCH && ahead < len; ahead += 64)
            __builtin_prefetch(buf + ahead);
        const uint8_t *h = buf + at + 8; /* captured length, after the two timestamp words */
        uint64_t caplen = big_endian ? (uint64_t)h[0] << 24 | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 8 | h[3]
                                     : (uint64_t)h[3] << 24 | (uint64_t)h[2] << 16 | (uint64_t)h[1] << 8 | h[0];
        if (caplen > max_packet) {
            *corrupt = 1;
            break;
        }
        if (len - at - 16 < caplen)
            break; /* cut short by the end of the buffer */
        uint64_t cut = caplen < skip ? caplen : skip;
        offsets[n] = at + 16 + cut;
        lens[n] = caplen - cut;
        longest = lens[n] > longest ? lens[n] : longest;
        bytes += caplen;
        n++;
        at += 16 + caplen;
    }
    stats[0] = at;
    stats[1] = longest;
    stats[2] = bytes;
    return (int64_t)n;
}

int64_t jb_count_values(const uint64_t *values, uint64_t n, uint64_t *distinct, uint64_t *counts, uint64_t max)
{
    uint64_t found = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = values[i], k = 0;
        while (k < found && distinct[k] != v)
            k++;
        if (k == found) {
            if (found == max)
                return -1; /* more distinct values than room: the caller counts them itself */
            distinct[found] = v;
            counts[found++] = 0;
        }
        counts[k]++;
    }
    return (int64_t)found;
}
