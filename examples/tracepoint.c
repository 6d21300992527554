/* Tracepoints: a classic one reads fields of the sys_enter_openat record (its layout from
 * /sys/kernel/tracing/events/syscalls/sys_enter_openat/format), a raw one its u64 arguments. */
#include "jitbpf_helpers.h"

struct sys_enter_openat {
	__u64 common; /* type, flags, preempt count, pid */
	__s64 syscall_nr;
	__u64 dfd;
	__u64 filename;
	__u64 flags;
	__u64 mode;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} last_seen SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_openat")
int on_openat(struct sys_enter_openat *rec)
{
	__u32 key = 0;

	bpf_map_update_elem(&last_seen, &key, &rec->flags, BPF_ANY);
	return rec->syscall_nr == 257 ? 0 : 1;
}

SEC("raw_tracepoint/sys_enter")
int on_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 key = 1;
	__u64 id = ctx->args[1]; /* args[0] is the pt_regs pointer, args[1] the syscall number */

	bpf_map_update_elem(&last_seen, &key, &id, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
