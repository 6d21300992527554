/* A socket filter in the style of the kernel's sockex1: count packets per IP protocol with legacy
 * LD_ABS loads and a legacy "maps" section map; keep UDP packets whole, drop the rest. */
#include "jitbpf_helpers.h"

struct bpf_map_def SEC("maps") proto_count = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 256,
};

SEC("socket")
int udp_only(struct __sk_buff *skb)
{
	__u32 proto;
	__u8 version;
	__u64 *count;

	if (load_half(skb, 12) != ETH_P_IP)
		return 0;
	/* the same byte again, through the helper (offset 14: version and header length) */
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &version, 1) < 0)
		return 0;
	if (version >> 4 != 4)
		return 0;
	proto = load_byte(skb, ETH_HLEN + 9);
	count = bpf_map_lookup_elem(&proto_count, &proto);
	if (count)
		__sync_fetch_and_add(count, 1);
	return proto == IPPROTO_UDP ? skb->len : 0;
}

char LICENSE[] SEC("license") = "GPL";
