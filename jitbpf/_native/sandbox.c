/* The sandbox: the one address range where every byte a JIT-compiled program may reach through an
 * access whose bounds check was elided lives (stacks, contexts, packets, map values, ring data).
 *
 * The window is [2 GiB, 4 GiB) of the process's address space, reserved PROT_NONE as a whole with
 * guard zones on both sides. JIT code confines an elided access by construction: it takes the low
 * 32 bits of the pointer and sets bit 31, so the address lies in the window (plus the signed 16-bit
 * offset and the access size, which the guard zones absorb) whatever the pointer was. A proof that
 * is wrong can therefore reach other sandbox memory, never the host's. The window sits below 4 GiB
 * so that the 32-bit context fields (xdp_md.data, __sk_buff.data) hold real addresses.
 *
 * Allocations are whole pages followed by one unallocated guard page; pages not allocated stay
 * PROT_NONE, so a stray access faults. The allocator's bookkeeping lives outside the sandbox (two
 * page bitmaps and a run-length table in the library's own memory): nothing a program writes can
 * mislead it. jb_sbx_check tells native helpers whether a range lies in live pages.
 *
 * Faults: a SIGSEGV or SIGBUS whose instruction pointer lies in registered JIT code is turned into
 * an error exit of that run (the handler moves execution to the code's fault landing, which
 * records the faulting instruction and address and returns from the run as any failed access
 * does). Other faults go to the handler that was installed before.
 *
 * Interrupts: a SIGINT whose instruction pointer lies in the blocks of registered JIT code ends
 * that run the same way (through the landing, with no address), after marking the thread
 * interrupted (jb_interrupt_take); the handler installed before (Python's) then runs as well, so
 * Ctrl-C stops a long JIT run with KeyboardInterrupt. The running code pays nothing for this.
 */
#define _GNU_SOURCE
#include "jbmaps.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define SBX_LO (2ull << 30)              /* first byte of the window */
#define SBX_HI (4ull << 30)              /* one past its last byte */
#define SBX_GUARD (1ull << 20)           /* reserved, never allocated, on each side */
#define PAGE 4096ull
#define NPAGES ((SBX_HI - SBX_LO) / PAGE)
#define WORDS (NPAGES / 64)
#define CODE_SLOTS 16384                 /* JIT code ranges the fault handler knows at once */

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static int g_state;                      /* 0: not tried, 1: active, negative: -errno of the failure */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_live[WORDS];           /* page allocated and read-write */
static uint64_t g_taken[WORDS];          /* page allocated or the guard after an allocation */
static uint32_t g_run[NPAGES];           /* at an allocation's first page: its length in pages */
static uint64_t g_hint;                  /* where the next search for free pages starts */
static uint64_t g_used;                  /* live pages */

static inline int bit(const uint64_t *map, uint64_t i)
{
    return (int)((__atomic_load_n(&map[i / 64], __ATOMIC_ACQUIRE) >> (i % 64)) & 1);
}

static inline void set_bits(uint64_t *map, uint64_t from, uint64_t n, int on)
{
    for (uint64_t i = from; i < from + n; i++) {
        uint64_t mask = 1ull << (i % 64);
        if (on)
            __atomic_fetch_or(&map[i / 64], mask, __ATOMIC_RELEASE);
        else
            __atomic_fetch_and(&map[i / 64], ~mask, __ATOMIC_RELEASE);
    }
}

int jb_sbx_init(void)
{
    pthread_mutex_lock(&g_lock);
    if (g_state == 0) {
        uint64_t start = SBX_LO - SBX_GUARD, size = SBX_HI - SBX_LO + 2 * SBX_GUARD;
        void *p = mmap((void *)(uintptr_t)start, size, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (p == MAP_FAILED) {
            g_state = -errno;
        } else if ((uint64_t)(uintptr_t)p != start) {
            /* Kernels before 4.17 take the flag as a hint only. */
            munmap(p, size);
            g_state = -EEXIST;
        } else {
            g_state = 1;
        }
    }
    int state = g_state;
    pthread_mutex_unlock(&g_lock);
    return state > 0 ? 0 : state;
}

int jb_sbx_active(void) { return __atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == 1; }

uint64_t jb_sbx_base(void) { return SBX_LO; }

uint64_t jb_sbx_limit(void) { return SBX_HI; }

uint64_t jb_sbx_used(void) { return __atomic_load_n(&g_used, __ATOMIC_RELAXED) * PAGE; }

/* First fit from the hint: n free pages then one more for the guard. */
static int64_t find_free(uint64_t n)
{
    uint64_t need = n + 1;
    for (int pass = 0; pass < 2; pass++) {
        uint64_t i = pass ? 0 : g_hint, end = pass ? g_hint : NPAGES;
        uint64_t run = 0, first = i;
        for (; i < end; i++) {
            if (run == 0 && i % 64 == 0 && g_taken[i / 64] == ~0ull && i + 64 <= end) {
                i += 63;
                continue;
            }
            if (bit(g_taken, i)) {
                run = 0;
                continue;
            }
            if (run++ == 0)
                first = i;
            if (run == need)
                return (int64_t)first;
        }
    }
    return -1;
}

uint64_t jb_sbx_alloc(uint64_t size)
{
    if (!jb_sbx_active() || size == 0 || size > SBX_HI - SBX_LO)
        return 0;
    uint64_t n = (size + PAGE - 1) / PAGE;
    pthread_mutex_lock(&g_lock);
    int64_t first = find_free(n);
    void *p = NULL;
    if (first >= 0) {
        p = (void *)(uintptr_t)(SBX_LO + (uint64_t)first * PAGE);
        if (mprotect(p, n * PAGE, PROT_READ | PROT_WRITE) != 0) {
            p = NULL;
        } else {
            set_bits(g_taken, (uint64_t)first, n + 1, 1);
            set_bits(g_live, (uint64_t)first, n, 1);
            g_run[first] = (uint32_t)n;
            g_hint = (uint64_t)first + n + 1;
            if (g_hint >= NPAGES)
                g_hint = 0;
            g_used += n;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return (uint64_t)(uintptr_t)p;  /* fresh pages, or pages given back with MADV_DONTNEED: zero */
}

int jb_sbx_contains(uint64_t a)
{
    return jb_sbx_active() && a >= SBX_LO && a < SBX_HI;
}

void jb_sbx_free(uint64_t a)
{
    void *p = (void *)(uintptr_t)a;
    if (!jb_sbx_contains(a) || a % PAGE)
        return;
    uint64_t first = (a - SBX_LO) / PAGE;
    pthread_mutex_lock(&g_lock);
    uint32_t n = g_run[first];
    if (n && bit(g_live, first)) {
        set_bits(g_live, first, n, 0);
        madvise(p, n * PAGE, MADV_DONTNEED);
        mprotect(p, n * PAGE, PROT_NONE);
        set_bits(g_taken, first, (uint64_t)n + 1, 0);
        g_run[first] = 0;
        g_used -= n;
    }
    pthread_mutex_unlock(&g_lock);
}

int jb_sbx_check(uint64_t addr, uint64_t size)
{
    if (size == 0)
        return 1;
    if (addr < SBX_LO || addr >= SBX_HI || size > SBX_HI - addr || !jb_sbx_active())
        return 0;
    uint64_t last = (addr + size - 1 - SBX_LO) / PAGE;
    for (uint64_t i = (addr - SBX_LO) / PAGE; i <= last; i++)
        if (!bit(g_live, i))
            return 0;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Faults in JIT code                                                                           */

struct code_range {
    uint64_t start, end;  /* [start, end) of the code; start == 0: a free slot */
    uint64_t landing;     /* where a faulting run continues */
    uint64_t blocks, blocks_end;  /* the program's blocks: where a run may be interrupted */
};

static struct code_range g_codes[CODE_SLOTS];
static uint32_t g_codes_top;             /* slots below this may be in use */
static struct sigaction g_prev_segv, g_prev_bus, g_prev_int;
static __thread int t_chaining __attribute__((tls_model("initial-exec")));
static __thread int t_interrupted __attribute__((tls_model("initial-exec")));

static void chain(int sig, siginfo_t *info, void *uc)
{
    struct sigaction *prev = sig == SIGSEGV ? &g_prev_segv : sig == SIGBUS ? &g_prev_bus : &g_prev_int;
    if (t_chaining || (!(prev->sa_flags & SA_SIGINFO) &&
                       (prev->sa_handler == SIG_DFL || prev->sa_handler == SIG_IGN))) {
        /* The default action: reinstate it; the faulting instruction runs again and ends the
           process as it would have without us (a signal sent by kill is raised again). */
        signal(sig, SIG_DFL);
        if (info->si_code <= 0)
            raise(sig);
        return;
    }
    t_chaining = 1;
    if (prev->sa_flags & SA_SIGINFO)
        prev->sa_sigaction(sig, info, uc);
    else
        prev->sa_handler(sig);
    t_chaining = 0;
}

static void on_fault(int sig, siginfo_t *info, void *ucv)
{
    ucontext_t *uc = ucv;
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    uint32_t top = __atomic_load_n(&g_codes_top, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < top; i++) {
        uint64_t start = __atomic_load_n(&g_codes[i].start, __ATOMIC_ACQUIRE);
        if (start && rip >= start && rip < __atomic_load_n(&g_codes[i].end, __ATOMIC_RELAXED)) {
            /* The landing takes the faulting instruction in r11 and the address in r10. */
            uc->uc_mcontext.gregs[REG_R11] = (greg_t)rip;
            uc->uc_mcontext.gregs[REG_R10] = (greg_t)(uintptr_t)info->si_addr;
            uc->uc_mcontext.gregs[REG_RIP] = (greg_t)__atomic_load_n(&g_codes[i].landing, __ATOMIC_RELAXED);
            return;
        }
    }
    chain(sig, info, ucv);
}

/* SIGINT: a run in JIT blocks on this thread ends through the landing; then the previous handler. */
static void on_interrupt(int sig, siginfo_t *info, void *ucv)
{
    ucontext_t *uc = ucv;
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    uint32_t top = __atomic_load_n(&g_codes_top, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < top; i++) {
        uint64_t start = __atomic_load_n(&g_codes[i].start, __ATOMIC_ACQUIRE);
        if (start && rip >= __atomic_load_n(&g_codes[i].blocks, __ATOMIC_RELAXED)
            && rip < __atomic_load_n(&g_codes[i].blocks_end, __ATOMIC_RELAXED)) {
            t_interrupted = 1;
            uc->uc_mcontext.gregs[REG_R11] = (greg_t)rip;
            uc->uc_mcontext.gregs[REG_R10] = 0;
            uc->uc_mcontext.gregs[REG_RIP] = (greg_t)__atomic_load_n(&g_codes[i].landing, __ATOMIC_RELAXED);
            break;
        }
    }
    if (g_prev_int.sa_flags & SA_SIGINFO)
        g_prev_int.sa_sigaction(sig, info, ucv);
    else if (g_prev_int.sa_handler == SIG_DFL) {
        signal(sig, SIG_DFL);  /* the default action: end the process, as without us */
        raise(sig);
    } else if (g_prev_int.sa_handler != SIG_IGN)
        g_prev_int.sa_handler(sig);
}

int jb_interrupt_take(void)
{
    int was = t_interrupted;
    t_interrupted = 0;
    return was;
}

/* Take SIGINT, unless it is ignored (or already ours): called again before runs, since Python's
 * signal.signal() replaces the process's handler. */
int jb_interrupt_install(void)
{
    struct sigaction sa, cur;
    int rc = 0;
    pthread_mutex_lock(&g_lock);
    if (sigaction(SIGINT, NULL, &cur) != 0)
        rc = -errno;
    else if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_interrupt)
             && ((cur.sa_flags & SA_SIGINFO) || cur.sa_handler != SIG_IGN)) {
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_interrupt;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGINT, &sa, &g_prev_int) != 0)
            rc = -errno;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

int jb_fault_install(void)
{
    struct sigaction sa, cur;
    int rc = 0;
    pthread_mutex_lock(&g_lock);
    for (int k = 0; k < 2; k++) {
        int sig = k ? SIGBUS : SIGSEGV;
        if (sigaction(sig, NULL, &cur) != 0) {
            rc = -errno;
            continue;
        }
        if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_fault)
            continue;  /* still ours */
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(sig, &sa, k ? &g_prev_bus : &g_prev_segv) != 0)
            rc = -errno;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

int jb_fault_register(uint64_t start, uint64_t end, uint64_t landing, uint64_t blocks, uint64_t blocks_end)
{
    int slot = -1;
    pthread_mutex_lock(&g_lock);
    for (uint32_t i = 0; i < CODE_SLOTS; i++) {
        if (g_codes[i].start == 0) {
            g_codes[i].end = end;
            g_codes[i].landing = landing;
            g_codes[i].blocks = blocks;
            g_codes[i].blocks_end = blocks_end;
            __atomic_store_n(&g_codes[i].start, start, __ATOMIC_RELEASE);
            if (i >= g_codes_top)
                __atomic_store_n(&g_codes_top, i + 1, __ATOMIC_RELEASE);
            slot = (int)i;
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return slot;
}

void jb_code_release(int slot, uint64_t address, uint64_t size)
{
    if (slot >= 0 && slot < CODE_SLOTS) {
        pthread_mutex_lock(&g_lock);
        __atomic_store_n(&g_codes[slot].start, 0, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&g_lock);
    }
    if (address)
        munmap((void *)(uintptr_t)address, size);
}
