/* Tail calls between XDP programs through a program array filled in the object itself
 * (libbpf's ".values" initialiser): the dispatcher jumps by IP protocol, the stages decide. */
#include "jitbpf_helpers.h"

int xdp_udp_stage(struct xdp_md *ctx);
int xdp_icmp_stage(struct xdp_md *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 256);
	__uint(key_size, sizeof(__u32));
	__array(values, int(struct xdp_md *));
} jump_table SEC(".maps") = {
	.values = {
		[IPPROTO_UDP] = (void *)&xdp_udp_stage,
		[IPPROTO_ICMP] = (void *)&xdp_icmp_stage,
	},
};

SEC("xdp")
int xdp_dispatch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	bpf_tail_call(ctx, &jump_table, ip->protocol);
	return XDP_PASS; /* no stage for this protocol */
}

SEC("xdp")
int xdp_udp_stage(struct xdp_md *ctx)
{
	/* trim UDP packets to 60 bytes: uses the type's own helper after the tail call */
	if (bpf_xdp_adjust_tail(ctx, -4))
		return XDP_ABORTED;
	return XDP_TX;
}

SEC("xdp")
int xdp_icmp_stage(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
