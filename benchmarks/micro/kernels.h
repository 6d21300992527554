/* Pure-execution microbenchmarks: the same C kernels are compiled by clang for eBPF (micro.bpf.c,
 * run by jitbpf's engines and by the kernel's JIT) and by gcc -O2 for the host (micro_native.c).
 * No context, maps or helpers: each returns a 32-bit digest of its work, which every engine must
 * agree on. Loops have constant trip counts, so the kernel's verifier bounds them.
 */
#ifndef JITBPF_MICRO_KERNELS_H
#define JITBPF_MICRO_KERNELS_H

#define MICRO_N 1000 /* iterations per run */

#ifdef __bpf__
#define MICRO_NOINLINE static __attribute__((noinline))
#else
#define MICRO_NOINLINE static __attribute__((noinline))
#endif
#define MICRO_INLINE static inline __attribute__((always_inline))

typedef unsigned int micro_u32;
typedef unsigned long long micro_u64;

/* Shifts, xors and multiplies on a 64-bit state (xorshift64*). */
MICRO_INLINE micro_u32 micro_alu_mix(void)
{
    micro_u64 x = 0x9E3779B97F4A7C15ull, acc = 0;
    for (int i = 0; i < MICRO_N; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += x * 0x2545F4914F6CDD1Dull;
    }
    return (micro_u32)(acc ^ acc >> 32);
}

/* Data-dependent branches (Collatz steps, restarted when the value reaches 1). */
MICRO_INLINE micro_u32 micro_branchy(void)
{
    micro_u64 x = 27, steps = 0, starts = 0;
    for (int i = 0; i < MICRO_N; i++) {
        if (x == 1) {
            starts++;
            x = 27 + starts;
        } else if (x & 1) {
            x = 3 * x + 1;
        } else {
            x >>= 1;
        }
        steps += x & 7;
    }
    return (micro_u32)(steps * 31 + starts);
}

/* 32-bit words recomposed from bytes of a stack buffer with shifts and ors. */
MICRO_INLINE micro_u32 micro_bytes(void)
{
    unsigned char buf[64];
    micro_u32 acc = 0;
    for (int i = 0; i < 64; i++)
        buf[i] = (unsigned char)(i * 37 + 11);
    for (int i = 0; i < MICRO_N; i++) {
        int at = (i * 4) & 60;
        micro_u32 w = (micro_u32)buf[at] | (micro_u32)buf[at + 1] << 8 | (micro_u32)buf[at + 2] << 16 |
                      (micro_u32)buf[at + 3] << 24;
        acc = (acc << 5 | acc >> 27) ^ w;
    }
    return acc;
}

/* Bit counting, one bit at a time. */
MICRO_INLINE micro_u32 micro_bitcount(void)
{
    volatile micro_u32 seed = 2654435761u; /* read back at run time: nothing to fold away */
    micro_u32 total = 0, mul = seed;
    for (int i = 0; i < MICRO_N / 10; i++) {
        micro_u32 v = (micro_u32)i * mul;
        for (int b = 0; b < 32; b++)
            total += (v >> b) & 1;
    }
    return total;
}

/* A small function called in a loop (a bpf-to-bpf call for eBPF). */
MICRO_NOINLINE micro_u64 micro_step(micro_u64 a, micro_u64 b)
{
    return (a ^ b) * 0x100000001B3ull + (b >> 3);
}

MICRO_INLINE micro_u32 micro_calls(void)
{
    micro_u64 h = 0xCBF29CE484222325ull;
    for (int i = 0; i < MICRO_N; i++)
        h = micro_step(h, (micro_u64)i);
    return (micro_u32)(h ^ h >> 32);
}

#endif
