/* A kprobe on openat: counts calls per flags value (PT_REGS_PARM3) and remembers the last
 * directory fd (PT_REGS_PARM1) of the calling process. */
#include "jitbpf_helpers.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} open_flags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __s64);
} last_dfd SEC(".maps");

SEC("kprobe/do_sys_openat2")
int trace_openat(struct pt_regs *ctx)
{
	__u32 flags = (__u32)PT_REGS_PARM3(ctx);
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__s64 dfd = (int)PT_REGS_PARM1(ctx);
	__u64 one = 1, *count;

	count = bpf_map_lookup_elem(&open_flags, &flags);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&open_flags, &flags, &one, BPF_NOEXIST);
	bpf_map_update_elem(&last_dfd, &pid, &dfd, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
