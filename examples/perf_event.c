/* A perf_event program: adds up sample periods and remembers the last sampled instruction pointer. */
#include "jitbpf_helpers.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} samples SEC(".maps");

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
	__u32 k_period = 0, k_ip = 1, k_count = 2;
	__u64 *v;

	v = bpf_map_lookup_elem(&samples, &k_period);
	if (v)
		*v += ctx->sample_period;
	v = bpf_map_lookup_elem(&samples, &k_ip);
	if (v)
		*v = PT_REGS_IP(&ctx->regs);
	v = bpf_map_lookup_elem(&samples, &k_count);
	if (v)
		*v += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
