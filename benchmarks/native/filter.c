/* The Ethernet/IPv4/TCP port-80 filter: the same checks, in the same order, as the eBPF version. */
#include <stdint.h>
#include <string.h>

#include "bench.h"

/* Little-endian loads at any alignment, as eBPF's ldxh/ldxb do on x86-64. */
static inline uint64_t load16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

uint64_t bench_filter(const uint8_t *pkt, uint64_t len) {
    if (len < 34) /* Ethernet header + minimal IPv4 header */
        return 0;
    if (load16(pkt + 12) != 0x0008) /* ethertype 0x0800, big-endian on the wire */
        return 0;
    uint64_t vihl = pkt[14];
    if (vihl >> 4 != 4)
        return 0;
    uint64_t ihl = (vihl & 0x0f) << 2;
    if (ihl < 20)
        return 0;
    if (pkt[23] != 6) /* protocol TCP */
        return 0;
    if ((load16(pkt + 20) & 0xff1f) != 0) /* a later fragment has no TCP header */
        return 0;
    if (ihl + 18 > len) /* room for the source and destination ports */
        return 0;
    if (load16(pkt + ihl + 16) != 0x5000) /* destination port 80 */
        return 0;
    return 1;
}

/* The batch reference: the filter over n fixed-size records, as execute_records runs them. */
uint64_t bench_filter_records(const uint8_t *base, uint64_t record_size, uint64_t n, uint64_t *results) {
    uint64_t accepted = 0;
    for (uint64_t i = 0; i < n; i++) {
        results[i] = bench_filter(base + i * record_size, record_size);
        accepted += results[i];
    }
    return accepted;
}
