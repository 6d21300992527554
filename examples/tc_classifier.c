/* A tc classifier with global data: drops UDP to a configured port (.rodata), counts drops (.bss),
 * marks the other packets with a value from .data and stamps their IPv4 TOS (bpf_skb_store_bytes). */
#include "jitbpf_helpers.h"

const volatile __u16 blocked_port = 53; /* .rodata: set before loading */
__u32 mark_value = 0x42;                /* .data */
__u64 dropped;                          /* .bss */
__u64 passed;                           /* .bss */

SEC("tc")
int tc_filter(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 tos = 0x10;

	if ((void *)(udp + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return TC_ACT_OK;
	if (ip->protocol == IPPROTO_UDP && udp->dest == bpf_htons(blocked_port)) {
		__sync_fetch_and_add(&dropped, 1);
		return TC_ACT_SHOT;
	}
	skb->mark = mark_value;
	bpf_skb_store_bytes(skb, ETH_HLEN + 1, &tos, 1, 0);
	__sync_fetch_and_add(&passed, 1);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
