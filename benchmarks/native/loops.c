/* Long-running loops, written exactly as the eBPF programs in workloads.py do them. */
#include <stdint.h>

#include "bench.h"

uint64_t bench_zero(void) { return 0; }

uint64_t bench_bytesum(const uint8_t *buf, uint64_t len, uint64_t passes) {
    uint64_t sum = 0;
    for (uint64_t p = passes; p != 0; p--)
        for (const uint8_t *q = buf, *end = buf + len; q < end; q++)
            sum += *q;
    return sum;
}

uint64_t bench_fnv1a(const uint8_t *buf, uint64_t len, uint64_t passes) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64-bit offset basis; the hash carries over passes */
    for (uint64_t p = passes; p != 0; p--)
        for (const uint8_t *q = buf, *end = buf + len; q < end; q++)
            h = (h ^ *q) * 0x100000001b3ULL;
    return h;
}

uint64_t bench_xorshift(uint64_t iterations) {
    uint64_t x = 88172645463325252ULL, sum = 0; /* Marsaglia's xorshift64 seed */
    for (uint64_t i = iterations; i != 0; i--) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum += x;
    }
    return sum;
}
