/* eBPF maps in C memory, shared by Python, the interpreter, JIT code and the native helpers.
 *
 * Every map keeps its values in one preallocated slab (per-CPU maps: one block per CPU, CPU-major),
 * so the memory a program can reach through a returned pointer is a fixed set of regions.
 *
 * Concurrency: arrays and per-CPU arrays take no lock at all. Hash maps and LPM tries have a
 * writers' spinlock plus a sequence counter, so lookups (the hot path) never lock: a reader
 * retries when a writer changed the structure meanwhile. All links are element indices into
 * preallocated arrays, so a reader racing a writer can read stale links but never wild memory.
 * Queues, stacks, perf rings and ring buffers serialise producers with a spinlock, as the kernel.
 *
 * Per-CPU storage is indexed by the calling thread's CPU id: a thread-local number in
 * [0, num_cpus) that a thread gets round-robin on first use, or sets with jb_set_current_cpu.
 * Threads sharing an id share per-CPU values (as two tasks preempting each other on a CPU would).
 */
#define _GNU_SOURCE
#include "jbmaps.h"
#include "jbrun.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum map_type {
    T_HASH = 1,
    T_ARRAY = 2,
    T_PROG_ARRAY = 3,
    T_PERF_EVENT_ARRAY = 4,
    T_PERCPU_HASH = 5,
    T_PERCPU_ARRAY = 6,
    T_STACK_TRACE = 7,
    T_CGROUP_ARRAY = 8,
    T_LRU_HASH = 9,
    T_LRU_PERCPU_HASH = 10,
    T_LPM_TRIE = 11,
    T_ARRAY_OF_MAPS = 12,
    T_HASH_OF_MAPS = 13,
    T_DEVMAP = 14,
    T_SOCKMAP = 15,
    T_CPUMAP = 16,
    T_XSKMAP = 17,
    T_SOCKHASH = 18,
    T_CGROUP_STORAGE = 19,
    T_REUSEPORT_SOCKARRAY = 20,
    T_PERCPU_CGROUP_STORAGE = 21,
    T_QUEUE = 22,
    T_SK_STORAGE = 24,
    T_DEVMAP_HASH = 25,
    T_STACK = 23,
    T_RINGBUF = 27,
    T_INODE_STORAGE = 28,
    T_TASK_STORAGE = 29,
    T_BLOOM_FILTER = 30,
    T_USER_RINGBUF = 31,
};

#define F_ANY 0
#define F_NOEXIST 1
#define F_EXIST 2
#define F_NO_PREALLOC 1
#define F_STACK_BUILD_ID (1u << 5)
#define MAX_STACK_DEPTH 127  /* the kernel's default kernel.perf_event_max_stack */
#define BLOOM_HASHES_MASK 0xfu  /* map_extra: the number of hash functions (0: 5) */
#define BLOOM_HASHES_DEFAULT 5
#define STORAGE_F_CREATE 1
#define STORAGE_VALUE_MAX 65535  /* about the kernel's limit (a u16 offset within its storage) */
#define CGROUP_STORAGE_VALUE_MAX 65407  /* the kernel's: a u16 offset less its element header */
#define PERCPU_STORAGE_VALUE_MAX 32768  /* the kernel's smallest per-CPU allocation unit */
#define F_INDEX_MASK 0xffffffffULL
#define F_CURRENT_CPU 0xffffffffULL
#define F_CTXLEN_MASK (0xfffffULL << 32) /* bpf_perf_event_output: packet bytes to append */
#define RB_NO_WAKEUP 1
#define RB_FORCE_WAKEUP 2

#define NONE (-1)
#define MAX_KEY_SIZE 512      /* the kernel's limit: a key lives on the 512-byte stack */
#define MAX_VALUE_SIZE (1u << 24)
#define MAX_CPUS 4096
#define LPM_DATA_MAX 256
#define LPM_USED 1u           /* node allocated */
#define LPM_IM 2u             /* intermediate node: a branch point without a value */
#define RB_HDR 8u
#define RB_BUSY (1u << 31)
#define RB_DISCARD (1u << 30)
#define RB_LEN_MASK (RB_DISCARD - 1)
#define RB_MAGIC 0x6a6272696e676275ULL
#define PERF_SAMPLE 9u        /* PERF_RECORD_SAMPLE */
#define PERF_PAD 0u           /* filler up to the end of the ring */
#define HZ 250                /* jiffies rate: the common distribution kernel setting */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define UNUSED __attribute__((unused))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

struct lpm_node {
    int32_t child[2];
    uint32_t prefixlen;
    uint32_t flags;
};

struct perf_ring {
    uint32_t lock;
    uint64_t head;  /* producer position (bytes, monotonic) */
    uint64_t tail;  /* consumer position */
    uint64_t lost;  /* records dropped because the ring was full */
    uint64_t mask;
    uint8_t *data;
} __attribute__((aligned(64)));

struct rb_hdr {
    uint32_t len;     /* sample length | RB_BUSY | RB_DISCARD */
    uint32_t pg_off;  /* offset from the data area in 8-byte units (informational: never trusted) */
};

struct jb_ringbuf {
    uint64_t magic;
    uint64_t mask;
    uint8_t *data;      /* the record area (sandbox memory, which programs may write) */
    struct jb_map *map;
    struct jb_ringbuf *next_live;  /* the list of live ring buffers, for submit and discard */
    uint32_t lock;
    uint64_t cons_pos __attribute__((aligned(64)));
    uint64_t prod_pos __attribute__((aligned(64)));
};

struct jb_map {
    uint32_t type, key_size, value_size, max_entries, flags;
    uint32_t stride;    /* bytes per value: value_size rounded up to 8, as the kernel */
    uint32_t num_cpus;  /* value copies per element: 1, or the CPU count for per-CPU maps */
    uint8_t *values;    /* the slab programs may point into */
    uint64_t values_size;
    uint32_t values_given; /* the slab belongs to the caller (jb_map_give_values) */
    uint32_t lock;      /* writers' spinlock */
    uint32_t seq;       /* odd while a writer changes links: lock-free readers retry */
    uint32_t count;     /* live elements */
    /* hash maps */
    uint32_t n_buckets;
    int32_t *buckets, *next;
    uint32_t *hashes;
    uint8_t *keys;
    uint8_t *used;      /* also presence of slot-array entries */
    int32_t free_head;
    uint64_t *stamps;   /* LRU hash maps: each element's last use (a tick of clock) */
    /* hash maps and arrays: each element's generation, bumped when its value is freed or
     * replaced, which frees what the value's special fields held (a bpf_timer), as the kernel's */
    uint32_t *gens;
    uint64_t clock;
    /* queue / stack */
    uint32_t head;      /* index of the oldest element */
    /* LPM trie */
    struct lpm_node *nodes;
    uint8_t *node_data;
    uint32_t n_nodes, data_size, max_prefixlen;
    int32_t root;
    /* perf event array */
    struct perf_ring *rings;
    uint32_t n_rings;
    /* ring buffer */
    struct jb_ringbuf *rb;
    /* bloom filter */
    uint64_t *bits;
    uint32_t n_bits, n_hashes;
};

/* ------------------------------------------------------------------------------------------ */
/* CPU ids                                                                                    */

static int g_num_cpus;        /* fixed once by jb_init */
static uint32_t g_next_cpu;   /* round-robin id for threads that did not choose one */
static __thread int t_cpu __attribute__((tls_model("initial-exec"))) = -1;

int jb_init(int num_cpus)
{
    int expected = 0;
    if (num_cpus < 1)
        num_cpus = 1;
    if (num_cpus > MAX_CPUS)
        num_cpus = MAX_CPUS;
    __atomic_compare_exchange_n(&g_num_cpus, &expected, num_cpus, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return LOAD(&g_num_cpus);
}

int jb_num_cpus(void)
{
    int n = LOAD_ACQ(&g_num_cpus);
    return n ? n : jb_init(1);
}

static __attribute__((noinline)) uint32_t assign_cpu(void)
{
    t_cpu = (int)(__atomic_fetch_add(&g_next_cpu, 1, __ATOMIC_RELAXED) % (uint32_t)jb_num_cpus());
    return (uint32_t)t_cpu;
}

/* Used inside the library: a direct TLS read, not a call through the PLT. */
static inline uint32_t current_cpu(void)
{
    int c = t_cpu;
    return LIKELY(c >= 0) ? (uint32_t)c : assign_cpu();
}

uint32_t jb_current_cpu(void) { return current_cpu(); }

int jb_set_current_cpu(int cpu)
{
    if (cpu >= jb_num_cpus())
        return -EINVAL;
    t_cpu = cpu < 0 ? -1 : cpu;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Synchronisation                                                                            */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline void spin_lock(uint32_t *l)
{
    unsigned spins = 0;
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
        while (LOAD(l)) {
            /* The holder may be a descheduled thread (Python's GIL makes that likely). */
            if (++spins > 256)
                sched_yield();
            else
                cpu_relax();
        }
    }
}

static inline void spin_unlock(uint32_t *l) { STORE_REL(l, 0); }

static inline uint32_t read_begin(const struct jb_map *m)
{
    uint32_t s;
    unsigned spins = 0;
    while ((s = LOAD_ACQ(&m->seq)) & 1) {
        if (++spins > 256)
            sched_yield();
        else
            cpu_relax();
    }
    return s;
}

static inline int read_retry(const struct jb_map *m, uint32_t s)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return LOAD(&m->seq) != s;
}

static inline void write_begin(struct jb_map *m)
{
    STORE(&m->seq, m->seq + 1);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void write_end(struct jb_map *m)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    STORE(&m->seq, m->seq + 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Allocation                                                                                 */

/* Memory that programs may be given pointers to (values, ring records): in the sandbox when it
   is active (the JIT confines unchecked accesses to it), else ordinary zeroed memory. Nothing the
   library follows (links, locks, positions) is ever allocated here. */
static void *host_zalloc(uint64_t size, uint64_t align)
{
    void *p = NULL;
    if (size == 0)
        size = align;
    if (size > SIZE_MAX || posix_memalign(&p, (size_t)align, (size_t)size) != 0)
        return NULL;
    memset(p, 0, (size_t)size);
    return p;
}

static void *slab(uint64_t size, uint64_t align)
{
    if (jb_sbx_active())
        return (void *)(uintptr_t)jb_sbx_alloc(size ? size : align);
    return host_zalloc(size, align);
}

static void slab_free(void *p)
{
    if (jb_sbx_contains((uint64_t)(uintptr_t)p))
        jb_sbx_free((uint64_t)(uintptr_t)p);
    else
        free(p);
}

/* ------------------------------------------------------------------------------------------ */
/* Live maps: helpers called by JIT code check that their map argument is one (a wrong proof     */
/* must not make them follow a forged map pointer). Open addressing; readers take no lock.      */

#define LIVE_SLOTS (1u << 16)
#define LIVE_TOMB ((struct jb_map *)(uintptr_t)1)
static struct jb_map *g_live_maps[LIVE_SLOTS];
static uint32_t g_live_lock;
static struct jb_ringbuf *g_rings;  /* live ring buffers, under g_live_lock */

static inline uint32_t ptr_slot(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    return (uint32_t)((x >> 4) * 0x9e3779b97f4a7c15ull >> 48) & (LIVE_SLOTS - 1);
}

static int live_add(struct jb_map *m)
{
    uint32_t i = ptr_slot(m);
    for (uint32_t n = 0; n < LIVE_SLOTS; n++, i = (i + 1) & (LIVE_SLOTS - 1)) {
        struct jb_map *cur = g_live_maps[i];
        if (cur == NULL || cur == LIVE_TOMB) {
            __atomic_store_n(&g_live_maps[i], m, __ATOMIC_RELEASE);
            return 0;
        }
    }
    return -ENOSPC;
}

static void live_remove(struct jb_map *m)
{
    uint32_t i = ptr_slot(m);
    for (uint32_t n = 0; n < LIVE_SLOTS; n++, i = (i + 1) & (LIVE_SLOTS - 1)) {
        struct jb_map *cur = g_live_maps[i];
        if (cur == NULL)
            return;
        if (cur == m) {
            __atomic_store_n(&g_live_maps[i], LIVE_TOMB, __ATOMIC_RELEASE);
            return;
        }
    }
}

static int map_live(const struct jb_map *m)
{
    uint32_t i = ptr_slot(m);
    if (m == NULL)
        return 0;
    for (uint32_t n = 0; n < LIVE_SLOTS; n++, i = (i + 1) & (LIVE_SLOTS - 1)) {
        struct jb_map *cur = __atomic_load_n(&g_live_maps[i], __ATOMIC_ACQUIRE);
        if (cur == m)
            return 1;
        if (cur == NULL)
            return 0;
    }
    return 0;
}

static int is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

static int is_percpu(const struct jb_map *m)
{
    return m->type == T_PERCPU_HASH || m->type == T_PERCPU_ARRAY || m->type == T_LRU_PERCPU_HASH ||
           m->type == T_PERCPU_CGROUP_STORAGE;
}

/* Cgroup storage: a value per (cgroup, attach type) key, created when a program first asks. */
static int is_cgroup_storage(const struct jb_map *m)
{
    return m->type == T_CGROUP_STORAGE || m->type == T_PERCPU_CGROUP_STORAGE;
}

/* Maps of maps: their values are the addresses of inner maps, which lookups return. */
static int is_map_of_maps(const struct jb_map *m)
{
    return m->type == T_ARRAY_OF_MAPS || m->type == T_HASH_OF_MAPS;
}

static int is_lru(const struct jb_map *m) { return m->type == T_LRU_HASH || m->type == T_LRU_PERCPU_HASH; }

/* Local storage: a value per owner (socket, inode, task), keyed by owner ids Python hands out. */
static int is_storage(const struct jb_map *m)
{
    return m->type == T_SK_STORAGE || m->type == T_INODE_STORAGE || m->type == T_TASK_STORAGE;
}

static int is_hash(const struct jb_map *m)
{
    return m->type == T_HASH || m->type == T_PERCPU_HASH || m->type == T_SOCKHASH || is_storage(m) ||
           m->type == T_DEVMAP_HASH || m->type == T_STACK_TRACE || is_lru(m) || m->type == T_HASH_OF_MAPS ||
           is_cgroup_storage(m);
}

static int is_slots(const struct jb_map *m)
{
    return m->type == T_PROG_ARRAY || m->type == T_SOCKMAP || m->type == T_DEVMAP || m->type == T_CPUMAP ||
           m->type == T_XSKMAP || m->type == T_CGROUP_ARRAY || m->type == T_ARRAY_OF_MAPS ||
           m->type == T_REUSEPORT_SOCKARRAY;
}

void jb_map_free(struct jb_map *m)
{
    uint32_t i;
    if (!m)
        return;
    spin_lock(&g_live_lock);
    live_remove(m);
    if (m->rb) {
        struct jb_ringbuf **link = &g_rings;
        while (*link && *link != m->rb)
            link = &(*link)->next_live;
        if (*link)
            *link = m->rb->next_live;
    }
    spin_unlock(&g_live_lock);
    if (!m->values_given)
        slab_free(m->values);
    free(m->rb);
    free(m->buckets);
    free(m->next);
    free(m->hashes);
    free(m->keys);
    free(m->used);
    free(m->stamps);
    free(m->gens);
    free(m->bits);
    free(m->nodes);
    free(m->node_data);
    if (m->rings) {
        for (i = 0; i < m->n_rings; i++)
            free(m->rings[i].data);
        free(m->rings);
    }
    free(m);
}

static int check_shape(uint32_t type, uint32_t ks, uint32_t vs, uint32_t max, uint64_t aux)
{
    switch (type) {
    case T_HASH:
    case T_PERCPU_HASH:
    case T_LRU_HASH:
    case T_LRU_PERCPU_HASH:
        if (ks == 0 || vs == 0 || max == 0)
            return -EINVAL;
        if (ks > MAX_KEY_SIZE || vs > MAX_VALUE_SIZE || max > (1u << 30))
            return -E2BIG;
        return 0;
    case T_SK_STORAGE:
    case T_INODE_STORAGE:
    case T_TASK_STORAGE:
        /* max_entries is 0 (storage grows with its owners); aux is the capacity jitbpf preallocates. */
        if (ks != 4 || vs == 0 || max != 0 || aux == 0)
            return -EINVAL;
        return vs > STORAGE_VALUE_MAX || aux > (1u << 24) ? -E2BIG : 0;
    case T_STACK_TRACE:
        /* u32 stack id -> max_depth u64 addresses; the ids index max_entries rounded up to a power
           of two buckets (aux is that count). */
        if (ks != 4 || vs < 8 || vs % 8 || vs / 8 > MAX_STACK_DEPTH || max == 0)
            return -EINVAL;
        return max > (1u << 31) ? -E2BIG : 0;
    case T_CGROUP_STORAGE:
    case T_PERCPU_CGROUP_STORAGE:
        /* struct bpf_cgroup_storage_key (cgroup id, attach type, padded to 16) or a u64 cgroup id; max_entries is
           0 (a value per attachment); aux is the number of attachments jitbpf preallocates. */
        if ((ks != 8 && ks != 16) || vs == 0 || max != 0 || aux == 0)
            return -EINVAL;
        if (vs > (type == T_CGROUP_STORAGE ? CGROUP_STORAGE_VALUE_MAX : PERCPU_STORAGE_VALUE_MAX))
            return -E2BIG;
        return aux > (1u << 24) ? -E2BIG : 0;
    case T_HASH_OF_MAPS:
        /* key -> an inner map (its fd for the kernel's user space: 4 bytes) */
        if (ks == 0 || vs != 4 || max == 0)
            return -EINVAL;
        return ks > MAX_KEY_SIZE || max > (1u << 30) ? -E2BIG : 0;
    case T_DEVMAP_HASH:
        /* u32 key -> struct bpf_devmap_val: an ifindex, and optionally a program's fd */
        return ks == 4 && (vs == 4 || vs == 8) && max ? 0 : -EINVAL;
    case T_SOCKHASH:
        if (ks == 0 || (vs != 4 && vs != 8) || max == 0)
            return -EINVAL;
        return ks > MAX_KEY_SIZE || max > (1u << 30) ? -E2BIG : 0;
    case T_ARRAY:
    case T_PERCPU_ARRAY:
        if (ks != 4 || vs == 0 || max == 0)
            return -EINVAL;
        return vs > MAX_VALUE_SIZE ? -E2BIG : 0;
    case T_PROG_ARRAY:
    case T_CGROUP_ARRAY:
    case T_ARRAY_OF_MAPS:
        return ks == 4 && vs == 4 && max ? 0 : -EINVAL;
    case T_SOCKMAP:
    case T_REUSEPORT_SOCKARRAY:
    case T_DEVMAP:
    case T_CPUMAP:
        return ks == 4 && (vs == 4 || vs == 8) && max ? 0 : -EINVAL;
    case T_XSKMAP:
        return ks == 4 && vs == 4 && max ? 0 : -EINVAL;
    case T_PERF_EVENT_ARRAY:
        return ks == 4 && vs == 4 && max && is_pow2(aux) && aux >= 4096 && aux <= (1ull << 30) ? 0 : -EINVAL;
    case T_BLOOM_FILTER:
        if (ks != 0 || vs == 0 || max == 0 || aux & ~(uint64_t)BLOOM_HASHES_MASK)
            return -EINVAL;
        return vs > MAX_VALUE_SIZE ? -E2BIG : 0;
    case T_QUEUE:
    case T_STACK:
        if (ks != 0 || vs == 0 || max == 0)
            return -EINVAL;
        return vs > MAX_VALUE_SIZE ? -E2BIG : 0;
    case T_LPM_TRIE:
        if (ks <= 4 || ks > 4 + LPM_DATA_MAX || vs == 0 || max == 0)
            return -EINVAL;
        return vs > MAX_VALUE_SIZE || max > (1u << 29) ? -E2BIG : 0;
    case T_RINGBUF:
    case T_USER_RINGBUF:
        if (ks != 0 || vs != 0 || !is_pow2(max) || max < 4096)
            return -EINVAL;
        return 0;
    default:
        return -EINVAL;
    }
}

static int alloc_hash(struct jb_map *m)
{
    uint32_t i, nb = 1;
    while (nb < m->max_entries)
        nb <<= 1;
    m->n_buckets = nb;
    m->buckets = malloc(sizeof(int32_t) * nb);
    m->next = malloc(sizeof(int32_t) * m->max_entries);
    m->hashes = calloc(m->max_entries, sizeof(uint32_t));
    m->keys = calloc(m->max_entries, m->key_size);
    m->used = calloc(m->max_entries, 1);
    m->gens = calloc(m->max_entries, sizeof(uint32_t));
    if (!m->buckets || !m->next || !m->hashes || !m->keys || !m->used || !m->gens)
        return -ENOMEM;
    for (i = 0; i < nb; i++)
        m->buckets[i] = NONE;
    for (i = 0; i < m->max_entries; i++)
        m->next[i] = i + 1 < m->max_entries ? (int32_t)(i + 1) : NONE;
    m->free_head = 0;
    return 0;
}

static int alloc_lpm(struct jb_map *m)
{
    uint32_t i;
    /* Real nodes <= max_entries and intermediate nodes (two children each) < real nodes. */
    m->n_nodes = 2 * m->max_entries;
    m->data_size = m->key_size - 4;
    m->max_prefixlen = 8 * m->data_size;
    m->nodes = calloc(m->n_nodes, sizeof(struct lpm_node));
    m->node_data = calloc(m->n_nodes, m->data_size);
    if (!m->nodes || !m->node_data)
        return -ENOMEM;
    for (i = 0; i < m->n_nodes; i++) {
        m->nodes[i].child[0] = i + 1 < m->n_nodes ? (int32_t)(i + 1) : NONE;
        m->nodes[i].child[1] = NONE;
    }
    m->free_head = 0;
    m->root = NONE;
    return 0;
}

/* As the kernel sizes it: max_entries * hashes / ln 2 bits, a power of two, at least 64. */
static int alloc_bloom(struct jb_map *m, uint64_t map_extra)
{
    uint64_t bits;
    m->n_hashes = (uint32_t)(map_extra & BLOOM_HASHES_MASK);
    if (!m->n_hashes)
        m->n_hashes = BLOOM_HASHES_DEFAULT;
    bits = (uint64_t)m->max_entries * m->n_hashes / 5 * 7;
    if (bits > (1ull << 31))
        bits = 1ull << 31;
    m->n_bits = 64;
    while (m->n_bits < bits)
        m->n_bits <<= 1;
    m->bits = calloc(m->n_bits / 64, sizeof(uint64_t));
    return m->bits ? 0 : -ENOMEM;
}

static int alloc_perf(struct jb_map *m, uint64_t ring_size)
{
    uint32_t i;
    uint32_t cpus = (uint32_t)jb_num_cpus();
    m->n_rings = m->max_entries < cpus ? m->max_entries : cpus;
    /* Programs never get pointers into perf rings: control blocks and data stay host memory. */
    m->rings = host_zalloc(sizeof(struct perf_ring) * (uint64_t)m->n_rings, 64);
    if (!m->rings)
        return -ENOMEM;
    for (i = 0; i < m->n_rings; i++) {
        m->rings[i].mask = ring_size - 1;
        m->rings[i].data = host_zalloc(ring_size, 64);
        if (!m->rings[i].data)
            return -ENOMEM;
    }
    return 0;
}

struct jb_map *jb_map_create(uint32_t type, uint32_t key_size, uint32_t value_size, uint32_t max_entries,
                             uint32_t flags, uint64_t aux, int *err)
{
    struct jb_map *m;
    uint64_t n, size;
    int rc = check_shape(type, key_size, value_size, max_entries, aux);
    if (!rc && type == T_STACK_TRACE && flags & F_STACK_BUILD_ID)
        rc = -EINVAL;  /* build ids need the binaries' notes, which jitbpf has not */
    if (!rc && (type == T_SK_STORAGE || type == T_INODE_STORAGE || type == T_TASK_STORAGE) &&
        !(flags & F_NO_PREALLOC))
        rc = -EINVAL;  /* the kernel never preallocates local storage, and insists on the flag */
    if (rc) {
        *err = rc;
        return NULL;
    }
    m = calloc(1, sizeof(*m));
    if (!m) {
        *err = -ENOMEM;
        return NULL;
    }
    m->type = type;
    m->key_size = key_size;
    m->value_size = value_size;
    m->max_entries = max_entries;
    m->flags = flags;
    m->num_cpus = is_percpu(m) ? (uint32_t)jb_num_cpus() : 1;
    m->stride = (value_size + 7u) & ~7u;
    m->free_head = NONE;
    m->root = NONE;
    rc = 0;
    switch (type) {
    case T_STACK_TRACE:
        while (m->max_entries & (m->max_entries - 1))
            m->max_entries += m->max_entries & -m->max_entries;  /* round up to a power of two */
        rc = alloc_hash(m);
        n = m->max_entries;
        break;
    case T_SK_STORAGE:
    case T_INODE_STORAGE:
    case T_TASK_STORAGE:
        /* Keyed by owner (socket) ids Python hands out; the capacity is preallocated. */
        m->max_entries = (uint32_t)aux;
        rc = alloc_hash(m);
        n = m->max_entries;
        break;
    case T_CGROUP_STORAGE:
    case T_PERCPU_CGROUP_STORAGE:
        m->max_entries = (uint32_t)aux;
        rc = alloc_hash(m);
        n = m->max_entries;
        break;
    case T_SOCKHASH:
    case T_HASH_OF_MAPS:
        m->value_size = 8;  /* a socket id, or an inner map's address */
        m->stride = 8;
        rc = alloc_hash(m);
        n = max_entries;
        break;
    case T_LRU_HASH:
    case T_LRU_PERCPU_HASH:
        m->stamps = calloc(max_entries, sizeof(uint64_t));
        if (!m->stamps) {
            rc = -ENOMEM;
            break;
        }
        /* fall through */
    case T_HASH:
    case T_PERCPU_HASH:
    case T_DEVMAP_HASH:
        rc = alloc_hash(m);
        n = max_entries;
        break;
    case T_ARRAY:
    case T_PERCPU_ARRAY:
        m->gens = calloc(max_entries, sizeof(uint32_t));
        rc = m->gens ? 0 : -ENOMEM;
        n = max_entries;
        break;
    case T_PROG_ARRAY:
    case T_CGROUP_ARRAY:
    case T_ARRAY_OF_MAPS:
    case T_SOCKMAP:
    case T_REUSEPORT_SOCKARRAY:
    case T_DEVMAP:
    case T_CPUMAP:
    case T_XSKMAP:
        m->stride = 8;  /* program flag, socket id, ifindex, cgroup id or map address, held as u64 */
        m->used = calloc(max_entries, 1);
        rc = m->used ? 0 : -ENOMEM;
        n = max_entries;
        break;
    case T_LPM_TRIE:
        rc = alloc_lpm(m);
        n = 2ull * max_entries;
        break;
    case T_BLOOM_FILTER:
        rc = alloc_bloom(m, aux);
        n = 0;
        break;
    case T_PERF_EVENT_ARRAY:
        rc = alloc_perf(m, aux);
        n = 0;
        break;
    case T_RINGBUF:
    case T_USER_RINGBUF:
        n = 0;
        m->rb = host_zalloc(sizeof *m->rb, 64);
        if (!m->rb) {
            rc = -ENOMEM;
            break;
        }
        m->rb->data = slab(max_entries, 4096);
        if (!m->rb->data) {
            rc = -ENOMEM;
            break;
        }
        m->rb->magic = RB_MAGIC;
        m->rb->mask = max_entries - 1;
        m->rb->map = m;
        m->values = m->rb->data;
        m->values_size = max_entries;
        break;
    default: /* arrays, queues, stacks */
        n = max_entries;
        break;
    }
    if (rc == 0 && n) {
        if (__builtin_mul_overflow(n, (uint64_t)m->stride, &size) ||
            __builtin_mul_overflow(size, (uint64_t)m->num_cpus, &size) || size > (1ull << 40)) {
            rc = -E2BIG;
        } else {
            m->values = slab(size, 64);
            m->values_size = size;
            if (!m->values)
                rc = -ENOMEM;
        }
    }
    if (rc == 0) {
        spin_lock(&g_live_lock);
        rc = live_add(m);
        if (rc == 0 && m->rb && type == T_RINGBUF) {  /* (programs submit to these only) */
            m->rb->next_live = g_rings;
            g_rings = m->rb;
        }
        spin_unlock(&g_live_lock);
    }
    if (rc) {
        jb_map_free(m);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return m;
}

uint8_t *jb_map_values(struct jb_map *m, uint64_t *size)
{
    *size = m->values_size;
    return m->values;
}

uint8_t *jb_map_give_values(struct jb_map *m, uint64_t *size)
{
    m->values_given = 1;
    return jb_map_values(m, size);
}

void jb_map_values_free(uint8_t *values)
{
    slab_free(values);
}

uint32_t jb_map_count(struct jb_map *m)
{
    uint64_t prod, cons;
    switch (m->type) {
    case T_ARRAY:
    case T_PERCPU_ARRAY:
        return m->max_entries;
    case T_RINGBUF:
    case T_USER_RINGBUF:
        prod = LOAD_ACQ(&m->rb->prod_pos);
        cons = LOAD_ACQ(&m->rb->cons_pos);
        return (uint32_t)(prod - cons);
    default:
        return LOAD(&m->count);
    }
}

uint32_t jb_map_num_cpus(struct jb_map *m) { return m->num_cpus; }

static inline uint8_t *value_at(const struct jb_map *m, uint32_t index, uint32_t cpu)
{
    return m->values + ((uint64_t)cpu * m->max_entries + index) * m->stride;
}

/* ------------------------------------------------------------------------------------------ */
/* Hash maps                                                                                  */

/* The last n < 8 bytes of a key as one word, loaded in register-sized pieces (a variable-length
 * memcpy into a stack word would stall on store forwarding: it tripled the lookup time). */
static inline uint64_t load_tail(const uint8_t *k, uint32_t n)
{
    uint64_t v = 0;
    uint32_t x;
    uint16_t y;
    unsigned shift = 0;
    if (n & 4) {
        memcpy(&x, k, 4);
        v = x;
        k += 4;
        shift = 32;
    }
    if (n & 2) {
        memcpy(&y, k, 2);
        v |= (uint64_t)y << shift;
        k += 2;
        shift += 16;
    }
    if (n & 1)
        v |= (uint64_t)*k << shift;
    return v;
}

static inline uint32_t hash_key(const uint8_t *k, uint32_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n, v;
    while (n >= 8) {
        memcpy(&v, k, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 29;
        k += 8;
        n -= 8;
    }
    if (n)
        h = (h ^ load_tail(k, n)) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h;
}

static inline int key_eq(const uint8_t *a, const uint8_t *b, uint32_t n)
{
    uint32_t x, y;
    uint64_t p, q;
    if (n == 4) {
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        return x == y;
    }
    if (n == 8) {
        memcpy(&p, a, 8);
        memcpy(&q, b, 8);
        return p == q;
    }
    return memcmp(a, b, n) == 0;
}

/* The element holding key, or NONE. Bounded walk: safe while a writer relinks elements. */
static int32_t htab_find(const struct jb_map *m, const void *key, uint32_t h, int32_t *prev)
{
    int32_t i = LOAD(&m->buckets[h & (m->n_buckets - 1)]), p = NONE;
    uint32_t steps = 0;
    while (i >= 0 && steps++ < m->max_entries) {
        if (LOAD(&m->hashes[i]) == h && key_eq(m->keys + (uint64_t)i * m->key_size, key, m->key_size)) {
            if (prev)
                *prev = p;
            return i;
        }
        p = i;
        i = LOAD(&m->next[i]);
    }
    return NONE;
}

static int32_t htab_lookup(const struct jb_map *m, const void *key)
{
    uint32_t h = hash_key(key, m->key_size), s;
    int32_t i;
    do {
        s = read_begin(m);
        i = htab_find(m, key, h, NULL);
    } while (read_retry(m, s));
    return i;
}

static void lru_touch(struct jb_map *m, int32_t i);
static void lru_evict(struct jb_map *m);

/* values: one value (cpu >= 0: that CPU's copy, the others zeroed on insert) or all CPUs. */
static int htab_update(struct jb_map *m, const void *key, const uint8_t *values, uint64_t flags, int cpu)
{
    uint32_t h, c;
    int32_t i;
    if (flags > F_EXIST)
        return -EINVAL;
    if (m->type == T_DEVMAP_HASH && flags == F_EXIST)
        flags = F_ANY;  /* the kernel's device hash creates a missing key under BPF_EXIST too */
    h = hash_key(key, m->key_size);
    spin_lock(&m->lock);
    i = htab_find(m, key, h, NULL);
    if (i >= 0) {
        if (flags == F_NOEXIST) {
            spin_unlock(&m->lock);
            return -EEXIST;
        }
        __atomic_add_fetch(&m->gens[i], 1, __ATOMIC_RELEASE);  /* the kernel replaces the element */
    } else {
        if (flags == F_EXIST) {
            spin_unlock(&m->lock);
            return -ENOENT;
        }
        if (m->free_head < 0 && is_lru(m))
            lru_evict(m);
        i = m->free_head;
        if (i < 0) {
            spin_unlock(&m->lock);
            return -E2BIG;
        }
        m->free_head = m->next[i];
        memcpy(m->keys + (uint64_t)i * m->key_size, key, m->key_size);
        if (cpu >= 0)
            for (c = 0; c < m->num_cpus; c++)
                memset(value_at(m, (uint32_t)i, c), 0, m->stride);
    }
    if (cpu >= 0)
        memcpy(value_at(m, (uint32_t)i, (uint32_t)cpu), values, m->value_size);
    else
        for (c = 0; c < m->num_cpus; c++)
            memcpy(value_at(m, (uint32_t)i, c), values + (uint64_t)c * m->stride, m->value_size);
    if (is_lru(m))
        lru_touch(m, i);
    if (!m->used[i]) {
        /* Publish only a complete element. */
        write_begin(m);
        m->used[i] = 1;
        STORE(&m->hashes[i], h);
        STORE(&m->next[i], LOAD(&m->buckets[h & (m->n_buckets - 1)]));
        STORE(&m->buckets[h & (m->n_buckets - 1)], i);
        m->count++;
        write_end(m);
    }
    spin_unlock(&m->lock);
    return 0;
}

/* Unlinks element i (found with prev) and returns it to the free list; the lock is held. */
static void htab_unlink(struct jb_map *m, int32_t i, int32_t prev, uint32_t h)
{
    write_begin(m);
    if (prev < 0)
        STORE(&m->buckets[h & (m->n_buckets - 1)], LOAD(&m->next[i]));
    else
        STORE(&m->next[prev], LOAD(&m->next[i]));
    m->used[i] = 0;
    m->count--;
    write_end(m);
    __atomic_add_fetch(&m->gens[i], 1, __ATOMIC_RELEASE);
    /* The element (and its value) is reused by a later insert, as the kernel's preallocated maps. */
    m->next[i] = m->free_head;
    m->free_head = i;
}

static int htab_delete(struct jb_map *m, const void *key)
{
    uint32_t h = hash_key(key, m->key_size);
    int32_t i, prev = NONE;
    spin_lock(&m->lock);
    i = htab_find(m, key, h, &prev);
    if (i < 0) {
        spin_unlock(&m->lock);
        return -ENOENT;
    }
    htab_unlink(m, i, prev, h);
    spin_unlock(&m->lock);
    return 0;
}

/* LRU hash maps keep exact recency: every update and every program lookup stamps the element with
   the map's next tick, and a full map evicts the element with the oldest stamp (a scan, done only
   when the map is full). The kernel approximates this order (reference bits, per-CPU free lists),
   so it may evict another old element, or evict before the map is full. */
static void lru_touch(struct jb_map *m, int32_t i)
{
    STORE(&m->stamps[i], __atomic_add_fetch(&m->clock, 1, __ATOMIC_RELAXED));
}

static void lru_evict(struct jb_map *m)
{
    uint32_t j, h;
    int32_t victim = NONE, prev = NONE;
    uint64_t oldest = UINT64_MAX;
    for (j = 0; j < m->max_entries; j++)
        if (m->used[j] && LOAD(&m->stamps[j]) < oldest) {
            oldest = LOAD(&m->stamps[j]);
            victim = (int32_t)j;
        }
    if (victim < 0)
        return;
    h = m->hashes[victim];
    if (htab_find(m, m->keys + (uint64_t)victim * m->key_size, h, &prev) == victim)
        htab_unlink(m, victim, prev, h);
}

static int htab_next_key(struct jb_map *m, const void *key, void *next)
{
    int32_t i = NONE;
    uint32_t j;
    spin_lock(&m->lock);
    if (key)
        i = htab_find(m, key, hash_key(key, m->key_size), NULL);
    for (j = (uint32_t)(i + 1); j < m->max_entries; j++) {
        if (m->used[j]) {
            memcpy(next, m->keys + (uint64_t)j * m->key_size, m->key_size);
            spin_unlock(&m->lock);
            return 0;
        }
    }
    spin_unlock(&m->lock);
    return -ENOENT;
}

/* ------------------------------------------------------------------------------------------ */
/* LPM trie (the kernel's algorithm; values are updated in place)                            */

static inline int lpm_bit(const uint8_t *data, uint32_t index)
{
    return !!(data[index / 8] & (1u << (7 - (index % 8))));
}

static uint32_t lpm_match(const struct jb_map *m, int32_t node, const uint8_t *key)
{
    uint32_t pkey, limit, prefixlen = 0, i;
    const uint8_t *nd = m->node_data + (uint64_t)node * m->data_size, *kd = key + 4;
    memcpy(&pkey, key, 4);
    limit = LOAD(&m->nodes[node].prefixlen);
    if (pkey < limit)
        limit = pkey;
    for (i = 0; i < m->data_size; i++) {
        uint8_t x = (uint8_t)(nd[i] ^ kd[i]);
        uint32_t b = x ? (uint32_t)__builtin_clz((unsigned)x) - 24 : 8;
        prefixlen += b;
        if (prefixlen >= limit)
            return limit;
        if (b < 8)
            break;
    }
    return prefixlen;
}

static int32_t lpm_lookup(const struct jb_map *m, const void *key)
{
    const uint8_t *k = key;
    int32_t node, found;
    uint32_t s, steps;
    do {
        s = read_begin(m);
        found = NONE;
        node = LOAD(&m->root);
        for (steps = 0; node >= 0 && steps <= m->max_prefixlen + 1; steps++) {
            uint32_t ml = lpm_match(m, node, k), plen = LOAD(&m->nodes[node].prefixlen);
            uint32_t nflags = LOAD(&m->nodes[node].flags);
            if (ml == m->max_prefixlen) {
                if (!(nflags & LPM_IM))
                    found = node;
                break;
            }
            if (ml < plen)
                break;
            if (!(nflags & LPM_IM))
                found = node;
            if (plen >= m->max_prefixlen)
                break;
            node = LOAD(&m->nodes[node].child[lpm_bit(k + 4, plen)]);
        }
    } while (read_retry(m, s));
    return found;
}

static int32_t lpm_alloc(struct jb_map *m, const uint8_t *data, uint32_t prefixlen, uint32_t flags)
{
    int32_t i = m->free_head;
    if (i < 0)
        return NONE;
    m->free_head = m->nodes[i].child[0];
    m->nodes[i].child[0] = m->nodes[i].child[1] = NONE;
    m->nodes[i].prefixlen = prefixlen;
    m->nodes[i].flags = LPM_USED | flags;
    memcpy(m->node_data + (uint64_t)i * m->data_size, data, m->data_size);
    return i;
}

static void lpm_release(struct jb_map *m, int32_t i)
{
    m->nodes[i].flags = 0;
    m->nodes[i].child[0] = m->free_head;
    m->nodes[i].child[1] = NONE;
    m->free_head = i;
}

static int lpm_update(struct jb_map *m, const void *key, const void *value, uint64_t flags)
{
    const uint8_t *k = key;
    uint32_t pkey, ml = 0;
    int32_t *slot, node, nn, im;
    int rc = 0;
    memcpy(&pkey, k, 4);
    if (flags > F_EXIST || pkey > m->max_prefixlen)
        return -EINVAL;
    spin_lock(&m->lock);
    slot = &m->root;
    while ((node = *slot) >= 0) {
        ml = lpm_match(m, node, k);
        if (m->nodes[node].prefixlen != ml || m->nodes[node].prefixlen == pkey ||
            m->nodes[node].prefixlen == m->max_prefixlen)
            break;
        slot = &m->nodes[node].child[lpm_bit(k + 4, m->nodes[node].prefixlen)];
    }
    if (node >= 0 && m->nodes[node].prefixlen == ml && ml == pkey) {
        /* The exact prefix exists: update in place (pointers from lookups stay valid). */
        if (!(m->nodes[node].flags & LPM_IM)) {
            if (flags == F_NOEXIST)
                rc = -EEXIST;
            else
                memcpy(value_at(m, (uint32_t)node, 0), value, m->value_size);
            goto out;
        }
        if (flags == F_EXIST) {
            rc = -ENOENT;
            goto out;
        }
        if (m->count >= m->max_entries) {
            rc = -ENOSPC;
            goto out;
        }
        memcpy(value_at(m, (uint32_t)node, 0), value, m->value_size);
        write_begin(m);
        m->nodes[node].flags &= ~LPM_IM;
        write_end(m);
        m->count++;
        goto out;
    }
    if (flags == F_EXIST) {
        rc = -ENOENT;
        goto out;
    }
    if (m->count >= m->max_entries) {
        rc = -ENOSPC;  /* the kernel's error for a full trie */
        goto out;
    }
    nn = lpm_alloc(m, k + 4, pkey, 0);
    if (nn < 0) {
        rc = -ENOSPC;
        goto out;
    }
    memcpy(value_at(m, (uint32_t)nn, 0), value, m->value_size);
    write_begin(m);
    if (node < 0) {
        STORE(slot, nn);
    } else if (ml == pkey) {
        /* The new prefix is an ancestor of node. */
        m->nodes[nn].child[lpm_bit(m->node_data + (uint64_t)node * m->data_size, ml)] = node;
        STORE(slot, nn);
    } else {
        im = lpm_alloc(m, m->node_data + (uint64_t)node * m->data_size, ml, LPM_IM);
        if (im < 0) {
            write_end(m);
            lpm_release(m, nn);
            rc = -ENOSPC;
            goto out;
        }
        if (lpm_bit(k + 4, ml)) {
            m->nodes[im].child[0] = node;
            m->nodes[im].child[1] = nn;
        } else {
            m->nodes[im].child[0] = nn;
            m->nodes[im].child[1] = node;
        }
        STORE(slot, im);
    }
    m->count++;
    write_end(m);
out:
    spin_unlock(&m->lock);
    return rc;
}

static int lpm_delete(struct jb_map *m, const void *key)
{
    const uint8_t *k = key;
    uint32_t pkey, ml = 0;
    int32_t *trim, *trim2, node, parent = NONE;
    int rc = 0;
    memcpy(&pkey, k, 4);
    if (pkey > m->max_prefixlen)
        return -EINVAL;
    spin_lock(&m->lock);
    trim = trim2 = &m->root;
    while ((node = *trim) >= 0) {
        ml = lpm_match(m, node, k);
        if (m->nodes[node].prefixlen != ml || m->nodes[node].prefixlen == pkey)
            break;
        parent = node;
        trim2 = trim;
        trim = &m->nodes[node].child[lpm_bit(k + 4, m->nodes[node].prefixlen)];
    }
    if (node < 0 || m->nodes[node].prefixlen != pkey || m->nodes[node].prefixlen != ml ||
        (m->nodes[node].flags & LPM_IM)) {
        rc = -ENOENT;
        goto out;
    }
    write_begin(m);
    m->count--;
    if (m->nodes[node].child[0] >= 0 && m->nodes[node].child[1] >= 0) {
        m->nodes[node].flags |= LPM_IM;
    } else if (parent >= 0 && (m->nodes[parent].flags & LPM_IM) && m->nodes[node].child[0] < 0 &&
               m->nodes[node].child[1] < 0) {
        /* Node is a leaf under a branch point: promote its sibling, drop both. */
        STORE(trim2, m->nodes[parent].child[m->nodes[parent].child[0] == node ? 1 : 0]);
        lpm_release(m, parent);
        lpm_release(m, node);
    } else {
        STORE(trim, m->nodes[node].child[0] >= 0 ? m->nodes[node].child[0] : m->nodes[node].child[1]);
        lpm_release(m, node);
    }
    write_end(m);
out:
    spin_unlock(&m->lock);
    return rc;
}

static int32_t lpm_find_exact(const struct jb_map *m, const uint8_t *k)
{
    uint32_t pkey, ml, plen;
    int32_t node = m->root;
    memcpy(&pkey, k, 4);
    while (node >= 0) {
        ml = lpm_match(m, node, k);
        plen = m->nodes[node].prefixlen;
        if (ml != plen)
            return NONE;
        if (plen == pkey)
            return (m->nodes[node].flags & LPM_IM) ? NONE : node;
        if (plen >= m->max_prefixlen)
            return NONE;
        node = m->nodes[node].child[lpm_bit(k + 4, plen)];
    }
    return NONE;
}

static int lpm_next_key(struct jb_map *m, const void *key, void *next)
{
    int32_t i = NONE;
    uint32_t j;
    uint8_t *out = next;
    spin_lock(&m->lock);
    if (key)
        i = lpm_find_exact(m, key);
    for (j = (uint32_t)(i + 1); j < m->n_nodes; j++) {
        if ((m->nodes[j].flags & (LPM_USED | LPM_IM)) == LPM_USED) {
            memcpy(out, &m->nodes[j].prefixlen, 4);
            memcpy(out + 4, m->node_data + (uint64_t)j * m->data_size, m->data_size);
            spin_unlock(&m->lock);
            return 0;
        }
    }
    spin_unlock(&m->lock);
    return -ENOENT;
}

/* ------------------------------------------------------------------------------------------ */
/* Generic element operations                                                                 */

/* A program's lookup: per-CPU maps give the value of `cpu` (the current CPU but for
   bpf_map_lookup_percpu_elem, which checks it is in range). */
static void *map_lookup_on(struct jb_map *m, const void *key, uint32_t cpu)
{
    uint32_t idx;
    int32_t i;
    switch (m->type) {
    case T_ARRAY:
        memcpy(&idx, key, 4);
        return LIKELY(idx < m->max_entries) ? m->values + (uint64_t)idx * m->stride : NULL;
    case T_PERCPU_ARRAY:
        memcpy(&idx, key, 4);
        return LIKELY(idx < m->max_entries) ? value_at(m, idx, cpu) : NULL;
    case T_HASH:
        i = htab_lookup(m, key);
        return i >= 0 ? m->values + (uint64_t)i * m->stride : NULL;
    case T_PERCPU_HASH:
        i = htab_lookup(m, key);
        return i >= 0 ? value_at(m, (uint32_t)i, cpu) : NULL;
    case T_LRU_HASH:
    case T_LRU_PERCPU_HASH:
        /* A program's lookup is a use (the kernel sets the element's reference bit); Python's
           lookups, like the syscall's, are not. */
        i = htab_lookup(m, key);
        if (i < 0)
            return NULL;
        lru_touch(m, i);
        return value_at(m, (uint32_t)i, m->type == T_LRU_HASH ? 0 : cpu);
    case T_LPM_TRIE:
        i = lpm_lookup(m, key);
        return i >= 0 ? value_at(m, (uint32_t)i, 0) : NULL;
    case T_ARRAY_OF_MAPS:
        /* The inner map itself: a map pointer for the program's next map helper call. */
        memcpy(&idx, key, 4);
        if (idx >= m->max_entries || !LOAD_ACQ(&m->used[idx]))
            return NULL;
        return (void *)(uintptr_t)LOAD((uint64_t *)value_at(m, idx, 0));
    case T_HASH_OF_MAPS:
        i = htab_lookup(m, key);
        return i >= 0 ? (void *)(uintptr_t)LOAD((uint64_t *)value_at(m, (uint32_t)i, 0)) : NULL;
    default:
        /* Programs get no pointer into queues, rings, or socket/program/device slots. */
        return NULL;
    }
}

void *jb_map_lookup(struct jb_map *m, const void *key)
{
    return map_lookup_on(m, key, current_cpu());
}

int jb_map_lookup_all(struct jb_map *m, const void *key, void *out)
{
    uint32_t idx, c;
    int32_t i;
    uint8_t *o = out;
    switch (m->type) {
    case T_ARRAY:
    case T_PERCPU_ARRAY:
        memcpy(&idx, key, 4);
        if (idx >= m->max_entries)
            return -ENOENT;
        i = (int32_t)idx;
        break;
    case T_HASH:
    case T_PERCPU_HASH:
    case T_LRU_HASH:
    case T_LRU_PERCPU_HASH:
    case T_SOCKHASH:
    case T_SK_STORAGE:
    case T_INODE_STORAGE:
    case T_TASK_STORAGE:
    case T_DEVMAP_HASH:
    case T_STACK_TRACE:
    case T_HASH_OF_MAPS:
    case T_CGROUP_STORAGE:
    case T_PERCPU_CGROUP_STORAGE:
        i = htab_lookup(m, key);
        break;
    case T_LPM_TRIE:
        i = lpm_lookup(m, key);
        break;
    case T_QUEUE:
    case T_STACK:
        return jb_map_peek(m, out);
    case T_PROG_ARRAY:
    case T_CGROUP_ARRAY:
    case T_ARRAY_OF_MAPS:
    case T_SOCKMAP:
    case T_REUSEPORT_SOCKARRAY:
    case T_DEVMAP:
    case T_CPUMAP:
    case T_XSKMAP:
        memcpy(&idx, key, 4);
        return jb_slot_get(m, idx, out);
    default:
        return -EINVAL;
    }
    if (i < 0)
        return -ENOENT;
    for (c = 0; c < m->num_cpus; c++)
        memcpy(o + (uint64_t)c * m->stride, value_at(m, (uint32_t)i, c), m->value_size);
    return 0;
}

static int array_update(struct jb_map *m, const void *key, const uint8_t *values, uint64_t flags, int cpu)
{
    uint32_t idx, c;
    memcpy(&idx, key, 4);
    if (flags > F_EXIST)
        return -EINVAL;
    if (idx >= m->max_entries)
        return -E2BIG;
    if (flags == F_NOEXIST)
        return -EEXIST;  /* every index of an array exists */
    __atomic_add_fetch(&m->gens[idx], 1, __ATOMIC_RELEASE);
    if (cpu >= 0)
        memcpy(value_at(m, idx, (uint32_t)cpu), values, m->value_size);
    else
        for (c = 0; c < m->num_cpus; c++)
            memcpy(value_at(m, idx, c), values + (uint64_t)c * m->stride, m->value_size);
    return 0;
}

static int slot_update(struct jb_map *m, const void *key, const void *value, uint64_t flags)
{
    uint32_t idx;
    uint64_t v = 0;
    memcpy(&idx, key, 4);
    memcpy(&v, value, 8);
    /* Arrays of file descriptors (programs, cgroups) take BPF_ANY only. */
    if (m->type == T_PROG_ARRAY || m->type == T_CGROUP_ARRAY || m->type == T_ARRAY_OF_MAPS ? flags != F_ANY
                                                                                          : flags > F_EXIST)
        return -EINVAL;
    if (idx >= m->max_entries)
        return -E2BIG;
    spin_lock(&m->lock);
    if ((m->type == T_DEVMAP || m->type == T_CPUMAP) && flags == F_NOEXIST) {
        spin_unlock(&m->lock);
        return -EEXIST;  /* a device map is an array: every index exists */
    }
    if (flags == F_NOEXIST && m->used[idx]) {
        spin_unlock(&m->lock);
        return -EEXIST;
    }
    if (flags == F_EXIST && !m->used[idx]) {
        spin_unlock(&m->lock);
        return -ENOENT;
    }
    STORE((uint64_t *)value_at(m, idx, 0), v);
    if (!m->used[idx])
        m->count++;
    STORE_REL(&m->used[idx], 1);
    spin_unlock(&m->lock);
    return 0;
}

static int slot_delete(struct jb_map *m, const void *key)
{
    uint32_t idx;
    int was;
    memcpy(&idx, key, 4);
    if (idx >= m->max_entries)
        return m->type == T_SOCKMAP || m->type == T_CPUMAP || m->type == T_XSKMAP ? -EINVAL : -E2BIG;
    spin_lock(&m->lock);
    was = m->used[idx];
    STORE_REL(&m->used[idx], 0);
    if (was)
        m->count--;
    spin_unlock(&m->lock);
    if (!was && m->type != T_DEVMAP && m->type != T_CPUMAP && m->type != T_XSKMAP)
        return m->type == T_SOCKMAP ? -EINVAL : -ENOENT;
    return 0;
}

/* bpf_{sk,inode,task}_storage_get for the owner with this id: its value, created (from init, or zeroed) if
   missing and flags ask; NULL if missing, full, or the flags are unknown. */
void *jb_storage_get(struct jb_map *m, uint32_t owner, const void *init, uint64_t flags)
{
    int32_t i;
    if (!is_storage(m) || flags & ~(uint64_t)STORAGE_F_CREATE)
        return NULL;
    i = htab_lookup(m, &owner);
    if (i < 0 && flags & STORAGE_F_CREATE) {
        uint8_t *zero = init ? NULL : calloc(1, m->value_size);
        if (!init && !zero)
            return NULL;
        htab_update(m, &owner, init ? init : zero, F_NOEXIST, 0);
        free(zero);
        i = htab_lookup(m, &owner);
    }
    return i >= 0 ? m->values + (uint64_t)i * m->stride : NULL;
}

/* bpf_get_local_storage: the value of the attachment ``key`` names (cgroup id, attach type),
   created zeroed on first use (where the kernel creates it when the program is attached); NULL
   when the preallocated attachments are used up. */
void *jb_cgroup_storage_get(struct jb_map *m, const void *key)
{
    int32_t i;
    uint8_t *zero;
    if (!is_cgroup_storage(m))
        return NULL;
    i = htab_lookup(m, key);
    if (i < 0) {
        zero = calloc(m->num_cpus, m->stride);
        if (!zero)
            return NULL;
        htab_update(m, key, zero, F_NOEXIST, -1);
        free(zero);
        i = htab_lookup(m, key);
    }
    return i >= 0 ? value_at(m, (uint32_t)i, m->type == T_CGROUP_STORAGE ? 0 : current_cpu()) : NULL;
}

int jb_slot_get(struct jb_map *m, uint32_t index, uint64_t *value)
{
    if (!is_slots(m))
        return -EINVAL;
    if (index >= m->max_entries || !LOAD_ACQ(&m->used[index]))
        return -ENOENT;
    *value = LOAD((uint64_t *)value_at(m, index, 0));
    return 0;
}

static int map_update(struct jb_map *m, const void *key, const void *value, uint64_t flags, int cpu)
{
    switch (m->type) {
    case T_ARRAY:
        return array_update(m, key, value, flags, 0);
    case T_PERCPU_ARRAY:
        return array_update(m, key, value, flags, cpu);
    case T_HASH:
    case T_SOCKHASH:
    case T_SK_STORAGE:
    case T_INODE_STORAGE:
    case T_TASK_STORAGE:
    case T_DEVMAP_HASH:
    case T_HASH_OF_MAPS:
    case T_STACK_TRACE:  /* by bpf_get_stackid only: the Python API refuses updates, as the kernel */
        return htab_update(m, key, value, flags, 0);
    case T_CGROUP_STORAGE:
    case T_PERCPU_CGROUP_STORAGE:
        /* Values exist from their attachment on: an update replaces, never creates. */
        if (flags != F_ANY && flags != F_EXIST)
            return -EINVAL;
        return htab_update(m, key, value, F_EXIST, m->type == T_CGROUP_STORAGE ? 0 : cpu);
    case T_LRU_HASH:
        return htab_update(m, key, value, flags, 0);
    case T_PERCPU_HASH:
    case T_LRU_PERCPU_HASH:
        return htab_update(m, key, value, flags, cpu);
    case T_LPM_TRIE:
        return lpm_update(m, key, value, flags);
    case T_PROG_ARRAY:
    case T_CGROUP_ARRAY:
    case T_ARRAY_OF_MAPS:
    case T_SOCKMAP:
    case T_REUSEPORT_SOCKARRAY:
    case T_DEVMAP:
    case T_CPUMAP:
    case T_XSKMAP:
        return slot_update(m, key, value, flags);
    default:
        return -EINVAL;
    }
}

int jb_map_update(struct jb_map *m, const void *key, const void *value, uint64_t flags)
{
    return map_update(m, key, value, flags, (int)current_cpu());
}

int jb_map_update_all(struct jb_map *m, const void *key, const void *values, uint64_t flags)
{
    return map_update(m, key, values, flags, is_percpu(m) ? -1 : 0);
}

int jb_map_delete(struct jb_map *m, const void *key)
{
    switch (m->type) {
    case T_HASH:
    case T_PERCPU_HASH:
    case T_LRU_HASH:
    case T_LRU_PERCPU_HASH:
    case T_SOCKHASH:
    case T_SK_STORAGE:
    case T_INODE_STORAGE:
    case T_TASK_STORAGE:
    case T_DEVMAP_HASH:
    case T_STACK_TRACE:
    case T_HASH_OF_MAPS:
        return htab_delete(m, key);
    case T_LPM_TRIE:
        return lpm_delete(m, key);
    case T_PROG_ARRAY:
    case T_CGROUP_ARRAY:
    case T_ARRAY_OF_MAPS:
    case T_SOCKMAP:
    case T_REUSEPORT_SOCKARRAY:
    case T_DEVMAP:
    case T_CPUMAP:
    case T_XSKMAP:
        return slot_delete(m, key);
    default:
        return -EINVAL;  /* array elements cannot be deleted */
    }
}

int jb_map_get_next_key(struct jb_map *m, const void *key, void *next_key)
{
    uint32_t idx, nxt;
    if (is_hash(m))
        return htab_next_key(m, key, next_key);
    if (m->type == T_LPM_TRIE)
        return lpm_next_key(m, key, next_key);
    if (m->type == T_ARRAY || m->type == T_PERCPU_ARRAY || is_slots(m)) {
        if (key)
            memcpy(&idx, key, 4);
        if (!key || idx >= m->max_entries) {
            nxt = 0;
        } else {
            if (idx == m->max_entries - 1)
                return -ENOENT;
            nxt = idx + 1;
        }
        memcpy(next_key, &nxt, 4);
        return 0;
    }
    return -EINVAL;
}

/* ------------------------------------------------------------------------------------------ */
/* Queues and stacks                                                                          */

/* Bit i of value's n_hashes bits (double hashing over the map's key hash). */
static inline uint32_t bloom_bit(const struct jb_map *m, uint32_t h1, uint32_t h2, uint32_t i)
{
    return (h1 + i * h2) & (m->n_bits - 1);
}

static int bloom_push(struct jb_map *m, const void *value, uint64_t flags)
{
    uint32_t h1 = hash_key(value, m->value_size), h2 = ((h1 >> 16) | (h1 << 16)) * 0x9e3779b1u | 1u, i, b;
    if (flags != F_ANY)
        return -EINVAL;
    for (i = 0; i < m->n_hashes; i++) {
        b = bloom_bit(m, h1, h2, i);
        __atomic_fetch_or(&m->bits[b / 64], 1ull << (b % 64), __ATOMIC_RELAXED);
    }
    return 0;
}

static int bloom_peek(struct jb_map *m, const void *value)
{
    uint32_t h1 = hash_key(value, m->value_size), h2 = ((h1 >> 16) | (h1 << 16)) * 0x9e3779b1u | 1u, i, b;
    for (i = 0; i < m->n_hashes; i++) {
        b = bloom_bit(m, h1, h2, i);
        if (!(LOAD(&m->bits[b / 64]) >> (b % 64) & 1))
            return -ENOENT;
    }
    return 0;  /* maybe present: a bloom filter has false positives, never false negatives */
}

int jb_map_push(struct jb_map *m, const void *value, uint64_t flags)
{
    uint32_t pos;
    if (m->type == T_BLOOM_FILTER)
        return bloom_push(m, value, flags);
    if (m->type != T_QUEUE && m->type != T_STACK)
        return -EINVAL;
    if (flags & ~(uint64_t)F_EXIST)
        return -EINVAL;
    spin_lock(&m->lock);
    if (m->count == m->max_entries) {
        if (!(flags & F_EXIST)) {
            spin_unlock(&m->lock);
            return -E2BIG;
        }
        /* BPF_EXIST on a full map overwrites the oldest element, for both kinds. */
        m->head = (m->head + 1) % m->max_entries;
        m->count--;
    }
    pos = (uint32_t)(((uint64_t)m->head + m->count) % m->max_entries);
    memcpy(value_at(m, pos, 0), value, m->value_size);
    m->count++;
    spin_unlock(&m->lock);
    return 0;
}

static int queue_take(struct jb_map *m, void *value, int remove)
{
    uint32_t pos;
    if (m->type != T_QUEUE && m->type != T_STACK)
        return -EINVAL;
    spin_lock(&m->lock);
    if (m->count == 0) {
        spin_unlock(&m->lock);
        return -ENOENT;
    }
    if (m->type == T_QUEUE) {
        pos = m->head;
        if (remove)
            m->head = (m->head + 1) % m->max_entries;
    } else {
        pos = (uint32_t)(((uint64_t)m->head + m->count - 1) % m->max_entries);
    }
    memcpy(value, value_at(m, pos, 0), m->value_size);
    if (remove)
        m->count--;
    spin_unlock(&m->lock);
    return 0;
}

int jb_map_pop(struct jb_map *m, void *value)
{
    return m->type == T_BLOOM_FILTER ? -EOPNOTSUPP : queue_take(m, value, 1);
}

/* For a bloom filter, value is the element to test (read, not written). */
int jb_map_peek(struct jb_map *m, void *value)
{
    return m->type == T_BLOOM_FILTER ? bloom_peek(m, value) : queue_take(m, value, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Perf event arrays: one ring per CPU slot; records are {u32 size, u32 type} + data, 8-aligned */

/* A sample of `size` bytes of data followed by `extra_size` of extra (the packet's first bytes,
   for BPF_F_CTXLEN_MASK), into the ring at `index`. */
static int perf_output(struct jb_map *m, uint64_t index, const void *data, uint64_t size, const void *extra,
                       uint64_t extra_size)
{
    uint64_t total, off, pad, cap;
    struct perf_ring *r;
    uint32_t hdr[2];
    if (m->type != T_PERF_EVENT_ARRAY)
        return -EINVAL;
    if (index == F_CURRENT_CPU)
        index = current_cpu();
    if (index >= m->max_entries)
        return -E2BIG;
    if (index >= m->n_rings)
        return -ENOENT;  /* no event opened at that index */
    r = &m->rings[index];
    cap = r->mask + 1;
    total = (size + extra_size + 8 + 7) & ~7ull;
    if (total > cap / 2)
        return -E2BIG;
    spin_lock(&r->lock);
    off = r->head & r->mask;
    pad = off + total > cap ? cap - off : 0;
    if (r->head + pad + total - r->tail > cap) {
        r->lost++;
        spin_unlock(&r->lock);
        return -ENOSPC;
    }
    if (pad) {
        hdr[0] = (uint32_t)(pad - 8);
        hdr[1] = PERF_PAD;
        memcpy(r->data + off, hdr, 8);
        r->head += pad;
        off = 0;
    }
    hdr[0] = (uint32_t)(size + extra_size);
    hdr[1] = PERF_SAMPLE;
    memcpy(r->data + off, hdr, 8);
    memcpy(r->data + off + 8, data, size);
    if (extra_size)
        memcpy(r->data + off + 8 + size, extra, extra_size);
    r->head += total;
    spin_unlock(&r->lock);
    return 0;
}

int jb_perf_output(struct jb_map *m, uint64_t flags, const void *data, uint64_t size)
{
    if (flags & ~F_INDEX_MASK)
        return -EINVAL;
    return perf_output(m, flags & F_INDEX_MASK, data, size, NULL, 0);
}

int jb_perf_read(struct jb_map *m, uint32_t ring, void *buf, uint32_t cap, uint32_t *len)
{
    struct perf_ring *r;
    uint32_t hdr[2];
    if (m->type != T_PERF_EVENT_ARRAY || ring >= m->n_rings)
        return -EINVAL;
    r = &m->rings[ring];
    spin_lock(&r->lock);
    while (r->tail < r->head) {
        memcpy(hdr, r->data + (r->tail & r->mask), 8);
        if (hdr[1] == PERF_SAMPLE) {
            if (hdr[0] > cap) {
                spin_unlock(&r->lock);
                *len = hdr[0];
                return -ENOSPC;
            }
            memcpy(buf, r->data + (r->tail & r->mask) + 8, hdr[0]);
            *len = hdr[0];
            r->tail += (hdr[0] + 8 + 7) & ~7ull;
            spin_unlock(&r->lock);
            return 1;
        }
        r->tail += (hdr[0] + 8 + 7) & ~7ull;
    }
    spin_unlock(&r->lock);
    return 0;
}

uint64_t jb_perf_lost(struct jb_map *m, uint32_t ring)
{
    uint64_t lost;
    if (m->type != T_PERF_EVENT_ARRAY || ring >= m->n_rings)
        return 0;
    spin_lock(&m->rings[ring].lock);
    lost = m->rings[ring].lost;
    spin_unlock(&m->rings[ring].lock);
    return lost;
}

uint32_t jb_perf_rings(struct jb_map *m) { return m->type == T_PERF_EVENT_ARRAY ? m->n_rings : 0; }

/* ------------------------------------------------------------------------------------------ */
/* Ring buffers (BPF_MAP_TYPE_RINGBUF): the kernel's record format, without the double mapping:
 * a record that would cross the end is preceded by a discarded filler up to the end.        */

static inline uint8_t *rb_data(struct jb_ringbuf *rb) { return rb->data; }

static inline uint32_t rb_pg_off(struct jb_ringbuf *rb, struct rb_hdr *h)
{
    return (uint32_t)(((uint8_t *)h - rb->data) / 8);
}

/* Bytes a record of header word l takes, header and padding included. */
static inline uint64_t rb_total(uint32_t l) { return ((uint64_t)(l & RB_LEN_MASK) + RB_HDR + 7) & ~7ull; }

static void *rb_reserve(struct jb_ringbuf *rb, uint64_t size)
{
    struct rb_hdr *h;
    uint64_t cap, total, cons, prod, off, pad;
    cap = rb->mask + 1;
    if (size > cap - RB_HDR || size > RB_LEN_MASK)
        return NULL;
    total = (size + RB_HDR + 7) & ~7ull;
    spin_lock(&rb->lock);
    cons = LOAD_ACQ(&rb->cons_pos);
    prod = rb->prod_pos;
    off = prod & rb->mask;
    pad = off + total > cap ? cap - off : 0;
    if (prod + pad + total - cons > cap) {
        spin_unlock(&rb->lock);
        return NULL;
    }
    if (pad) {
        h = (struct rb_hdr *)(rb_data(rb) + off);
        h->pg_off = rb_pg_off(rb, h);
        STORE(&h->len, (uint32_t)(pad - RB_HDR) | RB_DISCARD);
    }
    h = (struct rb_hdr *)(rb_data(rb) + ((prod + pad) & rb->mask));
    h->pg_off = rb_pg_off(rb, h);
    STORE(&h->len, (uint32_t)size | RB_BUSY);
    STORE_REL(&rb->prod_pos, prod + pad + total);
    spin_unlock(&rb->lock);
    return h + 1;
}

void *jb_ringbuf_reserve(struct jb_map *m, uint64_t size, uint64_t flags)
{
    return m->type == T_RINGBUF && !flags ? rb_reserve(m->rb, size) : NULL;
}

/* The position of the reserved record whose data is at sample, or -1. Records in flight are
 * walked from the consumer position with the ring's own positions, and reads stay inside the data
 * area: headers are program-writable memory, so none is trusted to point anywhere. A header that
 * was overwritten can only make the walk miss the record (which is then refused). */
static int64_t rb_find_reserved(struct jb_ringbuf *rb, uint64_t sample)
{
    uint64_t cons = LOAD_ACQ(&rb->cons_pos), prod = LOAD_ACQ(&rb->prod_pos);
    while (cons < prod) {
        struct rb_hdr *h = (struct rb_hdr *)(rb_data(rb) + (cons & rb->mask));
        uint32_t l = LOAD_ACQ(&h->len);
        if ((uint64_t)(uintptr_t)(h + 1) == sample)
            return (l & RB_BUSY) ? (int64_t)cons : -1;
        cons += rb_total(l);
    }
    return -1;
}

/* The live ring buffer whose data area holds the record of sample (never from its header). */
static struct jb_ringbuf *rb_owner(uint64_t sample)
{
    struct jb_ringbuf *rb;
    spin_lock(&g_live_lock);
    for (rb = g_rings; rb; rb = rb->next_live) {
        uint64_t lo = (uint64_t)(uintptr_t)rb->data;
        if (sample >= lo + RB_HDR && sample < lo + rb->mask + 1)
            break;
    }
    spin_unlock(&g_live_lock);
    return rb;
}

/* The reservations programs on this thread made and have not yet submitted or discarded, oldest
 * first. A run discards those it leaves behind when it ends (jb_ringbuf_release_since): the
 * verifier refuses programs that could leave one, and an unverified program must not block the
 * ring for good. */
#define RB_PENDING_MAX 256u   /* reservations a thread's runs may hold at once; more fail (NULL) */
static __thread void **t_rb_pending;  /* RB_PENDING_MAX entries, allocated by the first reservation */
__thread uint32_t jb_rb_npending;
static pthread_key_t g_rb_pending_key;  /* frees a thread's list when the thread exits */
static pthread_once_t g_rb_pending_once = PTHREAD_ONCE_INIT;

static void rb_pending_key(void) { pthread_key_create(&g_rb_pending_key, free); }

/* Room for one more reservation on this thread's list. */
static int rb_pending_room(void)
{
    if (!t_rb_pending) {
        pthread_once(&g_rb_pending_once, rb_pending_key);
        t_rb_pending = calloc(RB_PENDING_MAX, sizeof *t_rb_pending);
        if (!t_rb_pending)
            return 0;
        pthread_setspecific(g_rb_pending_key, t_rb_pending);
    }
    return jb_rb_npending < RB_PENDING_MAX;
}

static void rb_commit_sample(void *sample, int discard);

static void rb_forget(void *sample)
{
    uint32_t i = jb_rb_npending;
    while (i-- > 0) {
        if (t_rb_pending[i] == sample) {
            memmove(&t_rb_pending[i], &t_rb_pending[i + 1], (jb_rb_npending - i - 1) * sizeof t_rb_pending[0]);
            jb_rb_npending--;
            return;
        }
    }
}

uint32_t jb_ringbuf_pending(void) { return jb_rb_npending; }

void jb_ringbuf_release_since(uint32_t mark)
{
    while (jb_rb_npending > mark)
        rb_commit_sample(t_rb_pending[--jb_rb_npending], 1);
}

static void rb_commit(void *sample, int discard)
{
    rb_forget(sample);
    rb_commit_sample(sample, discard);
}

static void rb_commit_in(struct jb_ringbuf *rb, void *sample, int discard)
{
    struct rb_hdr *h;
    uint32_t len;
    spin_lock(&rb->lock);
    if (rb_find_reserved(rb, (uint64_t)(uintptr_t)sample) >= 0) {
        h = (struct rb_hdr *)sample - 1;
        len = LOAD(&h->len) & ~RB_BUSY;
        if (discard)
            len |= RB_DISCARD;
        STORE_REL(&h->len, len);
    }
    spin_unlock(&rb->lock);
}

static void rb_commit_sample(void *sample, int discard)
{
    struct jb_ringbuf *rb;
    if (sample && (rb = rb_owner((uint64_t)(uintptr_t)sample)))
        rb_commit_in(rb, sample, discard);
}

void jb_ringbuf_submit(void *sample, uint64_t flags UNUSED) { rb_commit(sample, 0); }

void jb_ringbuf_discard(void *sample, uint64_t flags UNUSED) { rb_commit(sample, 1); }

int jb_ringbuf_output(struct jb_map *m, const void *data, uint64_t size, uint64_t flags)
{
    void *sample;
    if (m->type != T_RINGBUF || (flags & ~(uint64_t)(RB_NO_WAKEUP | RB_FORCE_WAKEUP)))
        return -EINVAL;
    sample = jb_ringbuf_reserve(m, size, 0);
    if (!sample)
        return -EAGAIN;
    memcpy(sample, data, size);
    rb_commit(sample, 0);
    return 0;
}

uint64_t jb_ringbuf_query(struct jb_map *m, uint64_t flags)
{
    if (m->type != T_RINGBUF)
        return 0;
    switch (flags) {
    case 0: /* BPF_RB_AVAIL_DATA */
        return LOAD_ACQ(&m->rb->prod_pos) - LOAD_ACQ(&m->rb->cons_pos);
    case 1: /* BPF_RB_RING_SIZE */
        return m->rb->mask + 1;
    case 2: /* BPF_RB_CONS_POS */
        return LOAD_ACQ(&m->rb->cons_pos);
    case 3: /* BPF_RB_PROD_POS */
        return LOAD_ACQ(&m->rb->prod_pos);
    default:
        return 0;
    }
}

/* The record at consumer position cons: 1 with its header in *hp, its header word in *l and the
 * bytes it takes in *total; 0 when there is none yet (none produced, or the oldest reserved and
 * not yet submitted: records are consumed in order). Each header is checked against the positions
 * before it is used: a record never wraps (a filler precedes one that would) and never reaches past
 * the producer, so a forged length is reported (-EBADMSG) instead of read from. */
static int rb_peek(struct jb_ringbuf *rb, uint64_t cons, struct rb_hdr **hp, uint32_t *l, uint64_t *total)
{
    uint64_t prod = LOAD_ACQ(&rb->prod_pos);
    struct rb_hdr *h;
    if (cons >= prod)
        return 0;
    h = (struct rb_hdr *)(rb_data(rb) + (cons & rb->mask));
    *l = LOAD_ACQ(&h->len);
    if (*l & RB_BUSY)
        return 0;
    *total = rb_total(*l);
    if (*total > prod - cons || (cons & rb->mask) + *total > rb->mask + 1)
        return -EBADMSG;
    *hp = h;
    return 1;
}

/* Take the oldest record (skipping discarded ones). */
int jb_ringbuf_consume(struct jb_map *m, void *buf, uint32_t cap, uint32_t *len)
{
    struct jb_ringbuf *rb;
    struct rb_hdr *h;
    uint64_t cons, total;
    uint32_t l, n;
    int rc;
    if (m->type != T_RINGBUF)
        return -EINVAL;
    rb = m->rb;
    cons = LOAD(&rb->cons_pos);
    for (;;) {
        rc = rb_peek(rb, cons, &h, &l, &total);
        if (rc <= 0)
            return rc;
        n = l & RB_LEN_MASK;
        if (!(l & RB_DISCARD)) {
            if (n > cap) {
                *len = n;
                return -ENOSPC;
            }
            memcpy(buf, h + 1, n);
            *len = n;
            STORE_REL(&rb->cons_pos, cons + total);
            return 1;
        }
        cons += total;
        STORE_REL(&rb->cons_pos, cons);
    }
}

int jb_ringbuf_reserved(struct jb_map *m, uint64_t sample)
{
    if (m->type != T_RINGBUF && m->type != T_USER_RINGBUF)
        return 0;
    return rb_find_reserved(m->rb, sample) >= 0;
}

/* User ring buffers (BPF_MAP_TYPE_USER_RINGBUF): the same records, produced from Python (never
 * by programs, which may not write the area) and consumed by bpf_user_ringbuf_drain. */
void *jb_user_ringbuf_reserve(struct jb_map *m, uint64_t size)
{
    return m->type == T_USER_RINGBUF ? rb_reserve(m->rb, size) : NULL;
}

void jb_user_ringbuf_commit(struct jb_map *m, void *sample, int discard)
{
    if (m->type == T_USER_RINGBUF && sample)
        rb_commit_in(m->rb, sample, discard);
}


/* ------------------------------------------------------------------------------------------ */
/* Helpers, with the eBPF calling convention. JIT code calls these only for verified call sites, */
/* and still nothing they are given is taken on trust: a map argument must be a live map and    */
/* every pointer must lie in live sandbox memory for the whole size, or the call fails as the    */
/* kernel's helpers fail on a bad argument (-EFAULT / -EINVAL, NULL from a lookup).               */

#define PTR(x) ((void *)(uintptr_t)(x))
#define RET(x) ((uint64_t)(int64_t)(x))

static inline struct jb_map *arg_map(uint64_t x)
{
    struct jb_map *m = (struct jb_map *)(uintptr_t)x;
    return map_live(m) ? m : NULL;
}

static inline int arg_mem(uint64_t p, uint64_t size) { return jb_sbx_check(p, size); }

static int prog_updatable(const struct jb_map *m)
{
    return m->type == T_HASH || m->type == T_ARRAY || m->type == T_PERCPU_HASH ||
           m->type == T_PERCPU_ARRAY || m->type == T_LPM_TRIE || is_lru(m);
}

/* The direct forms: for callers that checked the arguments against the run's memory themselves
   (the Python side of each helper). */
uint64_t jb_direct_map_lookup_elem(uint64_t map, uint64_t key)
{
    return (uint64_t)(uintptr_t)jb_map_lookup(PTR(map), PTR(key));
}

uint64_t jb_direct_map_lookup_percpu_elem(uint64_t map, uint64_t key, uint64_t cpu)
{
    struct jb_map *m = PTR(map);
    if (!is_percpu(m) || (uint32_t)cpu >= m->num_cpus)
        return 0;
    return (uint64_t)(uintptr_t)map_lookup_on(m, PTR(key), (uint32_t)cpu);
}

uint64_t jb_direct_map_update_elem(uint64_t map, uint64_t key, uint64_t value, uint64_t flags)
{
    struct jb_map *m = PTR(map);
    if (!prog_updatable(m))
        return RET(-EINVAL);
    return RET(map_update(m, PTR(key), PTR(value), flags, (int)current_cpu()));
}

uint64_t jb_direct_map_delete_elem(uint64_t map, uint64_t key)
{
    struct jb_map *m = PTR(map);
    if (m->type == T_PROG_ARRAY || is_map_of_maps(m))
        return RET(-EINVAL);  /* user space's to change, as the kernel */
    return RET(jb_map_delete(m, PTR(key)));
}

uint64_t jb_direct_map_push_elem(uint64_t map, uint64_t value, uint64_t flags)
{
    return RET(jb_map_push(PTR(map), PTR(value), flags));
}

uint64_t jb_direct_map_take_elem(uint64_t map, uint64_t value, int remove)
{
    return RET(remove ? jb_map_pop(PTR(map), PTR(value)) : jb_map_peek(PTR(map), PTR(value)));
}

/* Packet programs may append the first bytes of their packet to the sample (the length in
   BPF_F_CTXLEN_MASK): the run's packet, EFAULT past its end; other programs have none (EINVAL). */
uint64_t jb_direct_perf_event_output(uint64_t ctx, uint64_t map, uint64_t flags, uint64_t data, uint64_t size)
{
    uint64_t ctxlen = (flags & F_CTXLEN_MASK) >> 32, packet = 0, len = 0;
    if (flags & ~(F_INDEX_MASK | F_CTXLEN_MASK))
        return RET(-EINVAL);
    if (ctxlen) {
        if (!jb_pkt_payload(ctx, &packet, &len))
            return RET(-EINVAL);
        if (ctxlen > len)
            return RET(-EFAULT);
    }
    return RET(perf_output(PTR(map), flags & F_INDEX_MASK, PTR(data), size, PTR(packet), ctxlen));
}

uint64_t jb_direct_ringbuf_output(uint64_t map, uint64_t data, uint64_t size, uint64_t flags)
{
    return RET(jb_ringbuf_output(PTR(map), PTR(data), size, flags));
}

/* One step of bpf_for_each_map_elem, for both engines: the first element at position *cursor or
   after it (array index, hash slot: the map's order) has its key written at key and its value's
   address returned, and *cursor moves past it; 0 when none is left, or map is not a live array
   or hash map. key is memory the engine chose (the callback's frame), of key_size bytes. */
uint64_t jb_for_each_step(uint64_t map, uint64_t key, uint64_t *cursor)
{
    struct jb_map *m = arg_map(map);
    void *value;
    uint32_t index;
    if (!m)
        return 0;
    /* The key goes to the callback's frame: in sandbox memory, where the engines keep stacks. */
    if (jb_sbx_active() && !arg_mem(key, m->key_size))
        return 0;
    if (m->type == T_ARRAY || m->type == T_PERCPU_ARRAY) {
        if (*cursor >= m->max_entries)
            return 0;
        index = (uint32_t)*cursor;
        *cursor = (uint64_t)index + 1;
        memcpy(PTR(key), &index, 4);
        return (uint64_t)(uintptr_t)jb_map_lookup(m, PTR(key));
    }
    if (!(m->type == T_HASH || m->type == T_PERCPU_HASH || is_lru(m)))
        return 0;
    while (*cursor < m->max_entries) {
        index = (uint32_t)(*cursor)++;
        spin_lock(&m->lock);
        if (!m->used[index]) {
            spin_unlock(&m->lock);
            continue;
        }
        memcpy(PTR(key), m->keys + (uint64_t)index * m->key_size, m->key_size);
        spin_unlock(&m->lock);
        value = jb_map_lookup(m, PTR(key));
        if (value)
            return (uint64_t)(uintptr_t)value;
    }
    return 0;
}

/* The generation of the element of map (a live hash map or array) whose value holds address
 * addr (its first copy, for per-CPU maps), or UINT64_MAX when addr is in no element's value. */
uint64_t jb_map_elem_gen(uint64_t map, uint64_t addr)
{
    struct jb_map *m = arg_map(map);
    uint64_t base, off;
    if (!m || !m->gens || !m->stride)
        return UINT64_MAX;
    base = (uint64_t)(uintptr_t)m->values;
    off = addr - base;
    if (addr < base || off >= (uint64_t)m->max_entries * m->stride)
        return UINT64_MAX;
    return __atomic_load_n(&m->gens[off / m->stride], __ATOMIC_ACQUIRE);
}

/* The key of the live element of map (a hash map or array) whose value holds addr, copied to key
 * (key_size bytes; an array's is its index): 1, or 0 when addr is in no live element's value. */
int jb_map_elem_key(uint64_t map, uint64_t addr, uint8_t *key)
{
    struct jb_map *m = arg_map(map);
    uint64_t base, off;
    uint32_t index;
    int found = 0;
    if (!m || !m->gens || !m->stride)
        return 0;
    base = (uint64_t)(uintptr_t)m->values;
    off = addr - base;
    if (addr < base || off >= (uint64_t)m->max_entries * m->stride)
        return 0;
    index = (uint32_t)(off / m->stride);
    if (m->type == T_ARRAY || m->type == T_PERCPU_ARRAY) {
        memcpy(key, &index, 4);
        return 1;
    }
    if (!m->used || !m->keys)
        return 0;
    spin_lock(&m->lock);
    if (m->used[index]) {
        memcpy(key, m->keys + (uint64_t)index * m->key_size, m->key_size);
        found = 1;
    }
    spin_unlock(&m->lock);
    return found;
}

#define USER_RB_MAX_SAMPLES (128u * 1024u)  /* samples one drain looks at (the kernel's) */
#define DYNPTR_LOCAL (1u << 28)  /* a local dynptr's type bits */

/* One step of bpf_user_ringbuf_drain, for both engines: the oldest submitted sample is consumed
 * and described by a local dynptr (programs may write through it) written at dynptr, 16 bytes the
 * engine chose (the callback's frame); discarded samples are skipped. Returns 1, or 0 when no
 * sample is ready (or the drain looked at its most samples, or map is no live user ring buffer).
 * row is the drain's state, as the engines keep it: row[0] the callbacks that returned (what the
 * drain returns), row[3] the samples looked at. A header whose length runs past the samples
 * produced (a producer that forged it) ends the drain with -EINVAL in row[0], as the kernel's.
 * The sample's memory stays as it is until a producer reserves it again, after the run. */
uint64_t jb_user_ringbuf_step(uint64_t map, uint64_t dynptr, uint64_t *row)
{
    struct jb_map *m = arg_map(map);
    struct jb_ringbuf *rb;
    struct rb_hdr *h;
    uint64_t cons, total, desc[2], *cursor = &row[3];
    uint32_t l;
    int rc;
    if (!m || m->type != T_USER_RINGBUF)
        return 0;
    if (jb_sbx_active() && !arg_mem(dynptr, sizeof desc))
        return 0;
    rb = m->rb;
    cons = LOAD(&rb->cons_pos);
    while (*cursor < USER_RB_MAX_SAMPLES) {
        rc = rb_peek(rb, cons, &h, &l, &total);
        if (rc < 0)
            row[0] = (uint64_t)(int64_t)-EINVAL;
        if (rc <= 0)
            return 0;
        ++*cursor;
        STORE_REL(&rb->cons_pos, cons + total);
        if (!(l & RB_DISCARD)) {
            desc[0] = (uint64_t)(uintptr_t)(h + 1);
            desc[1] = (uint64_t)((l & RB_LEN_MASK) | DYNPTR_LOCAL);
            memcpy(PTR(dynptr), desc, sizeof desc);
            return 1;
        }
        cons += total;
    }
    return 0;
}

/* The forms JIT code calls: nothing taken on trust. */
uint64_t jb_helper_map_lookup_elem(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    struct jb_map *m = arg_map(r1);
    if (!m || !arg_mem(r2, m->key_size))
        return 0;
    return jb_direct_map_lookup_elem(r1, r2);
}

uint64_t jb_helper_map_lookup_percpu_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4 UNUSED,
                                          uint64_t r5 UNUSED)
{
    struct jb_map *m = arg_map(r1);
    if (!m || !arg_mem(r2, m->key_size))
        return 0;
    return jb_direct_map_lookup_percpu_elem(r1, r2, r3);
}

uint64_t jb_helper_map_update_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5 UNUSED)
{
    struct jb_map *m = arg_map(r1);
    if (!m)
        return RET(-EINVAL);
    if (!arg_mem(r2, m->key_size) || !arg_mem(r3, m->value_size))
        return RET(-EFAULT);
    return jb_direct_map_update_elem(r1, r2, r3, r4);
}

uint64_t jb_helper_map_delete_elem(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    struct jb_map *m = arg_map(r1);
    if (!m)
        return RET(-EINVAL);
    if (!arg_mem(r2, m->key_size))
        return RET(-EFAULT);
    return jb_direct_map_delete_elem(r1, r2);
}

uint64_t jb_helper_map_push_elem(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    struct jb_map *m = arg_map(r1);
    if (!m)
        return RET(-EINVAL);
    if (!arg_mem(r2, m->value_size))
        return RET(-EFAULT);
    return jb_direct_map_push_elem(r1, r2, r3);
}

static uint64_t take(uint64_t r1, uint64_t r2, int remove)
{
    struct jb_map *m = arg_map(r1);
    if (!m)
        return RET(-EINVAL);
    if (!arg_mem(r2, m->value_size))
        return RET(-EFAULT);
    return jb_direct_map_take_elem(r1, r2, remove);
}

uint64_t jb_helper_map_pop_elem(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                uint64_t r5 UNUSED)
{
    return take(r1, r2, 1);
}

uint64_t jb_helper_map_peek_elem(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                 uint64_t r5 UNUSED)
{
    return take(r1, r2, 0);
}

uint64_t jb_helper_perf_event_output(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5)
{
    if (!arg_map(r2))
        return RET(-EINVAL);
    if (!arg_mem(r4, r5))
        return RET(-EFAULT);
    return jb_direct_perf_event_output(r1, r2, r3, r4, r5);
}

uint64_t jb_helper_ringbuf_output(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4, uint64_t r5 UNUSED)
{
    if (!arg_map(r1))
        return RET(-EINVAL);
    if (!arg_mem(r2, r3))
        return RET(-EFAULT);
    return jb_direct_ringbuf_output(r1, r2, r3, r4);
}

uint64_t jb_helper_ringbuf_reserve(uint64_t r1, uint64_t r2, uint64_t r3, uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    struct jb_map *m = arg_map(r1);
    void *sample;
    if (!m || !rb_pending_room())
        return 0;
    sample = jb_ringbuf_reserve(m, r2, r3);
    if (sample)
        t_rb_pending[jb_rb_npending++] = sample;
    return (uint64_t)(uintptr_t)sample;
}

uint64_t jb_helper_ringbuf_submit(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                  uint64_t r5 UNUSED)
{
    jb_ringbuf_submit(PTR(r1), r2);  /* finds its ring by address and checks the reservation */
    return 0;
}

uint64_t jb_helper_ringbuf_discard(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                   uint64_t r5 UNUSED)
{
    jb_ringbuf_discard(PTR(r1), r2);
    return 0;
}

uint64_t jb_helper_ringbuf_query(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                 uint64_t r5 UNUSED)
{
    struct jb_map *m = arg_map(r1);
    return m ? jb_ringbuf_query(m, r2) : 0;
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t jb_helper_ktime_get_ns(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                uint64_t r5 UNUSED)
{
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t jb_helper_ktime_get_boot_ns(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED,
                                     uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    return clock_ns(CLOCK_BOOTTIME);
}

uint64_t jb_helper_ktime_get_tai_ns(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED,
                                    uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    return clock_ns(CLOCK_TAI);
}

/* bpf_spin_lock's word: 0 when free, else the holding thread's tag (never 0). A thread finding
   its own tag takes the lock again: a run that stopped early (an error, the budget) left it
   held, as verified programs release every lock they take before they exit. Another thread's
   lock held past SPIN_LOCK_PATIENCE is taken as abandoned the same way (such a run ended on its
   thread), rather than spinning forever: correct programs hold a lock for a few instructions,
   and call nothing meanwhile. */
#define SPIN_LOCK_PATIENCE_NS 1000000000ull
static uint32_t g_last_lock_tag;
static __thread uint32_t t_lock_tag;

uint64_t jb_direct_spin_lock(uint64_t lock)
{
    uint32_t *word = PTR(lock), free_word = 0, seen;
    if (t_lock_tag == 0)
        t_lock_tag = __atomic_add_fetch(&g_last_lock_tag, 1, __ATOMIC_RELAXED) | 0x80000000u;
    uint64_t since = 0;
    for (uint32_t spins = 0;; spins++) {
        seen = free_word;
        if (__atomic_compare_exchange_n(word, &seen, t_lock_tag, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return 0;
        if (seen == t_lock_tag)
            return 0;
        if ((spins & 1023) == 1023) {
            uint64_t now = clock_ns(CLOCK_MONOTONIC);
            if (since == 0)
                since = now;
            else if (now - since > SPIN_LOCK_PATIENCE_NS) {
                free_word = seen; /* abandoned: taken over on the next try */
                continue;
            }
            sched_yield();
        }
        __builtin_ia32_pause();
    }
}

uint64_t jb_direct_spin_unlock(uint64_t lock)
{
    __atomic_store_n((uint32_t *)PTR(lock), 0, __ATOMIC_RELEASE);
    return 0;
}

/* The forms JIT code calls: a lock is a 4-byte aligned word of live program memory. */
uint64_t jb_helper_spin_lock(uint64_t r1, uint64_t r2 UNUSED, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                             uint64_t r5 UNUSED)
{
    return (r1 & 3) || !arg_mem(r1, 4) ? RET(-EINVAL) : jb_direct_spin_lock(r1);
}

uint64_t jb_helper_spin_unlock(uint64_t r1, uint64_t r2 UNUSED, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                               uint64_t r5 UNUSED)
{
    return (r1 & 3) || !arg_mem(r1, 4) ? RET(-EINVAL) : jb_direct_spin_unlock(r1);
}

uint64_t jb_helper_ktime_get_coarse_ns(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED,
                                       uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    return clock_ns(CLOCK_MONOTONIC_COARSE);
}

uint64_t jb_helper_jiffies64(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                             uint64_t r5 UNUSED)
{
    return clock_ns(CLOCK_BOOTTIME) / (1000000000ull / HZ);
}

uint64_t jb_helper_get_prandom_u32(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED,
                                   uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    /* xorshift64*, one state per thread, seeded from the clock and the state's address. */
    static __thread uint64_t state __attribute__((tls_model("initial-exec")));
    uint64_t x = state;
    if (UNLIKELY(x == 0))
        x = clock_ns(CLOCK_MONOTONIC) ^ (uint64_t)(uintptr_t)&state ^ 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state = x;
    return (uint32_t)((x * 0x2545f4914f6cdd1dull) >> 32);
}

uint64_t jb_helper_get_smp_processor_id(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED,
                                        uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    return current_cpu();
}

uint64_t jb_helper_get_current_pid_tgid(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED,
                                        uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    return (uint64_t)(uint32_t)getpid() << 32 | (uint32_t)syscall(SYS_gettid);
}

uint64_t jb_helper_get_current_uid_gid(uint64_t r1 UNUSED, uint64_t r2 UNUSED, uint64_t r3 UNUSED,
                                       uint64_t r4 UNUSED, uint64_t r5 UNUSED)
{
    return (uint64_t)(uint32_t)getgid() << 32 | (uint32_t)getuid();
}

uint64_t jb_helper_get_current_comm(uint64_t r1, uint64_t r2, uint64_t r3 UNUSED, uint64_t r4 UNUSED,
                                    uint64_t r5 UNUSED)
{
    if (r2 != 0 && !arg_mem(r1, r2))
        return RET(-EFAULT);
    return jb_direct_get_current_comm(r1, r2);
}

uint64_t jb_direct_get_current_comm(uint64_t r1, uint64_t r2)
{
    char comm[17] = {0};
    uint8_t *buf = PTR(r1);
    size_t n;
    if (r2 == 0)
        return RET(-EINVAL);
    prctl(PR_GET_NAME, comm, 0, 0, 0);
    n = strnlen(comm, 16);
    if (n > r2 - 1)
        n = (size_t)(r2 - 1);
    memcpy(buf, comm, n);
    memset(buf + n, 0, (size_t)(r2 - n));  /* NUL-terminated and padded, as strscpy_pad */
    return 0;
}
