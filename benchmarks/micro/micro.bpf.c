/* The microbenchmarks as eBPF programs (XDP, so that the kernel can test-run them); each ignores
 * its context. Built by benchmarks/micro.py with clang -target bpf -O2. */
#include "kernels.h"

#define SEC(name) __attribute__((section(name), used))

struct xdp_md;

SEC("xdp") int alu_mix(struct xdp_md *ctx) { return (int)micro_alu_mix(); }
SEC("xdp") int branchy(struct xdp_md *ctx) { return (int)micro_branchy(); }
SEC("xdp") int bytes(struct xdp_md *ctx) { return (int)micro_bytes(); }
SEC("xdp") int bitcount(struct xdp_md *ctx) { return (int)micro_bitcount(); }
SEC("xdp") int calls(struct xdp_md *ctx) { return (int)micro_calls(); }

char _license[] SEC("license") = "GPL";
