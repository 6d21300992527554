/* Socket steering: TCP connections to any address on ports 7000-7099 go to the listening socket
   user space put at index 0 of the "listener" socket map; the rest take the usual lookup. */
#include "jitbpf_helpers.h"

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} listener SEC(".maps");

SEC("sk_lookup")
int steer(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	struct bpf_sock *sk;
	long err;

	if (ctx->protocol != 6 || ctx->local_port < 7000 || ctx->local_port >= 7100)
		return SK_PASS;
	sk = bpf_map_lookup_elem(&listener, &zero);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
