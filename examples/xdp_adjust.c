/* Two XDP programs in one section, sharing a bpf-to-bpf callee in .text:
 * xdp_vlan_push adds an 802.1Q tag in front of the EtherType (bpf_xdp_adjust_head),
 * xdp_truncate cuts packets to TRUNC_LEN bytes (bpf_xdp_adjust_tail). */
#include "jitbpf_helpers.h"

#define TRUNC_LEN 64
#define VLAN_ID 42

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} xdp_stats SEC(".maps");

/* Not inlined: a callee in .text that the loader appends to each program using it. */
static __noinline int count(__u32 slot, __u64 bytes)
{
	__u64 *v = bpf_map_lookup_elem(&xdp_stats, &slot);

	if (!v)
		return 0;
	__sync_fetch_and_add(v, bytes);
	return 1;
}

SEC("xdp")
int xdp_vlan_push(struct xdp_md *ctx)
{
	unsigned char *data, *data_end;
	int i;

	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN + 4 > data_end)
		return XDP_ABORTED;
	/* move the MAC addresses to the new front, then write the tag after them */
	for (i = 0; i < 12; i++)
		data[i] = data[i + 4];
	data[12] = 0x81;
	data[13] = 0x00;
	data[14] = 0;
	data[15] = VLAN_ID;
	count(0, data_end - data);
	return XDP_TX;
}

SEC("xdp")
int xdp_truncate(struct xdp_md *ctx)
{
	long len = (long)ctx->data_end - (long)ctx->data;

	if (len > TRUNC_LEN) {
		if (bpf_xdp_adjust_tail(ctx, (int)(TRUNC_LEN - len)))
			return XDP_ABORTED;
		count(1, len - TRUNC_LEN);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
