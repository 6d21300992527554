/* A connect4 hook: sends connections for 10.0.0.1:80 to 127.0.0.1:8080 and refuses telnet (port 23). */
#include "jitbpf_helpers.h"

SEC("cgroup/connect4")
int connect_redirect(struct bpf_sock_addr *ctx)
{
	if (ctx->user_port == bpf_htons(23))
		return 0;
	if (ctx->user_ip4 == bpf_htonl(0x0A000001) && ctx->user_port == bpf_htons(80)) {
		ctx->user_ip4 = bpf_htonl(0x7F000001);
		ctx->user_port = bpf_htons(8080);
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
