/* A sockops program: sets the initial RTO and receive window, and counts the events it sees. */
#include "jitbpf_helpers.h"

static long (*bpf_sock_ops_cb_flags_set)(struct bpf_sock_ops *ops, int flags) = (void *)59;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} op_count SEC(".maps");

SEC("sockops")
int tune(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	__u64 *count;

	count = bpf_map_lookup_elem(&op_count, &op);
	if (count)
		__sync_fetch_and_add(count, 1);
	switch (op) {
	case BPF_SOCK_OPS_TIMEOUT_INIT:
		skops->reply = 10;
		break;
	case BPF_SOCK_OPS_RWND_INIT:
		skops->reply = 40;
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, 1);
		break;
	default:
		skops->reply = -1;
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
