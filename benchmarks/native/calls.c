/* Loops of calls through a helper's address, as the JIT-compiled programs make them. */
#include <stdint.h>

#include "bench.h"

typedef uint64_t (*helper_fn)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

uint64_t bench_mix(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e) {
    (void)c, (void)d, (void)e;
    return (a ^ (a >> 29)) * 0x9e3779b97f4a7c15ULL + b;
}

uint64_t bench_helper_loop(uint64_t helper, uint64_t calls) {
    helper_fn fn = (helper_fn)(uintptr_t)helper; /* an address from Python: never inlined */
    uint64_t acc = 0;
    for (uint64_t i = calls; i != 0; i--)
        acc = fn(acc, i, 0, 0, 0);
    return acc;
}

uint64_t bench_u32_helper_loop(uint64_t helper, uint64_t calls) {
    helper_fn fn = (helper_fn)(uintptr_t)helper;
    uint64_t fits = 0; /* calls whose result fits in 32 bits: all of them, for a u32 source */
    for (uint64_t i = calls; i != 0; i--)
        if (fn(0, 0, 0, 0, 0) >> 32 == 0)
            fits++;
    return fits;
}

/* key: 4 bytes of program memory (the helpers JIT code calls take pointers into nothing else). */
uint64_t bench_map_loop(uint64_t lookup, uint64_t map, uint64_t lookups, uint64_t entries, uint64_t key) {
    helper_fn fn = (helper_fn)(uintptr_t)lookup;
    volatile uint32_t *k = (volatile uint32_t *)(uintptr_t)key;
    uint64_t acc = 0;
    for (uint64_t i = lookups; i != 0; i--) {
        *k = (uint32_t)(i % entries);
        uint64_t value = fn(map, key, 0, 0, 0);
        if (value != 0)
            acc += *(const uint64_t *)(uintptr_t)value;
    }
    return acc;
}
