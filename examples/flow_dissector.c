/* A flow dissector for IPv4 over Ethernet: the addresses, protocol and (for TCP and UDP,
   unfragmented) the ports; other frames are left to the kernel's own dissector (BPF_DROP). */
#include "jitbpf_helpers.h"

SEC("flow_dissector")
int dissect(struct __sk_buff *skb)
{
	struct bpf_flow_keys *keys = skb->flow_keys;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u16 nhoff = keys->nhoff;
	struct iphdr *ip = data + nhoff;
	__u16 *ports;

	/* a bounded offset: the verifier proves nothing of a pointer that may be 64 KiB out */
	if (nhoff > 128 || keys->n_proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > data_end || ip->ihl < 5)
		return BPF_DROP;
	keys->addr_proto = ETH_P_IP;
	keys->ip_proto = ip->protocol;
	keys->ipv4_src = ip->saddr;
	keys->ipv4_dst = ip->daddr;
	keys->thoff = keys->nhoff + ip->ihl * 4;
	keys->is_frag = !!(ip->frag_off & bpf_htons(0x3fff));
	if (keys->is_frag || (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP))
		return BPF_OK;
	ports = data + keys->thoff;
	if ((void *)(ports + 2) > data_end)
		return BPF_DROP;
	keys->sport = ports[0];
	keys->dport = ports[1];
	return BPF_OK;
}

char LICENSE[] SEC("license") = "GPL";
