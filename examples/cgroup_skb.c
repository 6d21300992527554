/* A cgroup ingress filter: drops ICMP, lets everything else in and counts its bytes.
 * cgroup_skb packets start at the IP header. */
#include "jitbpf_helpers.h"

__u64 allowed_bytes;
__u64 denied_packets;

SEC("cgroup_skb/ingress")
int ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data;

	if ((void *)(ip + 1) > data_end)
		return 1;
	if (ip->protocol == IPPROTO_ICMP) {
		__sync_fetch_and_add(&denied_packets, 1);
		return 0;
	}
	__sync_fetch_and_add(&allowed_bytes, skb->len);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
