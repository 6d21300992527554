/* Native references of the benchmark workloads; also the cffi declarations (no preprocessor lines here). */
uint64_t bench_zero(void);
uint64_t bench_bytesum(const uint8_t *buf, uint64_t len, uint64_t passes);
uint64_t bench_fnv1a(const uint8_t *buf, uint64_t len, uint64_t passes);
uint64_t bench_xorshift(uint64_t iterations);
uint64_t bench_filter(const uint8_t *pkt, uint64_t len);
uint64_t bench_filter_records(const uint8_t *base, uint64_t record_size, uint64_t n, uint64_t *results);
uint64_t bench_mix(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e);
uint64_t bench_helper_loop(uint64_t helper, uint64_t calls);
uint64_t bench_u32_helper_loop(uint64_t helper, uint64_t calls);
uint64_t bench_map_loop(uint64_t lookup, uint64_t map, uint64_t lookups, uint64_t entries, uint64_t key);
unsigned int micro_native_alu_mix(void);
unsigned int micro_native_branchy(void);
unsigned int micro_native_bytes(void);
unsigned int micro_native_bitcount(void);
unsigned int micro_native_calls(void);
