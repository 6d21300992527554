/* A device controller: allows /dev/null, /dev/zero and /dev/urandom (char 1:3, 1:5, 1:9) and
 * read access to any tty (char 4:*); denies everything else. */
#include "jitbpf_helpers.h"

SEC("cgroup/dev")
int dev_policy(struct bpf_cgroup_dev_ctx *ctx)
{
	__u32 type = ctx->access_type & 0xFFFF;
	__u32 access = ctx->access_type >> 16;

	if (type != BPF_DEVCG_DEV_CHAR)
		return 0;
	if (ctx->major == 1 && (ctx->minor == 3 || ctx->minor == 5 || ctx->minor == 9))
		return 1;
	if (ctx->major == 4 && access == BPF_DEVCG_ACC_READ)
		return 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
