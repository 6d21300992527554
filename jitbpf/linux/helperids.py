"""The kernel's helper ids (``enum bpf_func_id``): one enum for the program types' allow lists,
the standard helpers and the helpers that ask the host."""

from __future__ import annotations

import enum


class HelperId(enum.IntEnum):
    """Kernel helper ids that jitbpf provides or that a program type's allow list names."""

    MAP_LOOKUP_ELEM = 1  # bpf_map_lookup_elem(map, key) -> value pointer or NULL
    MAP_UPDATE_ELEM = 2  # bpf_map_update_elem(map, key, value, flags)
    MAP_DELETE_ELEM = 3  # bpf_map_delete_elem(map, key)
    PROBE_READ = 4  # bpf_probe_read(dst, size, src): copy, -EFAULT outside program memory
    KTIME_GET_NS = 5  # monotonic clock, nanoseconds
    TRACE_PRINTK = 6  # bpf_trace_printk(fmt, fmt_size, a, b, c)
    GET_PRANDOM_U32 = 7  # pseudo-random u32
    GET_SMP_PROCESSOR_ID = 8  # the calling thread's CPU id
    SKB_STORE_BYTES = 9  # bpf_skb_store_bytes
    L3_CSUM_REPLACE = 10  # bpf_l3_csum_replace
    L4_CSUM_REPLACE = 11  # bpf_l4_csum_replace
    TAIL_CALL = 12  # bpf_tail_call(ctx, prog_array, index)
    CLONE_REDIRECT = 13  # bpf_clone_redirect
    GET_CURRENT_PID_TGID = 14  # tgid << 32 | thread id
    GET_CURRENT_UID_GID = 15  # gid << 32 | uid
    GET_CURRENT_COMM = 16  # bpf_get_current_comm(buf, size): the thread's name
    GET_CGROUP_CLASSID = 17  # bpf_get_cgroup_classid
    SKB_GET_TUNNEL_KEY = 20  # bpf_skb_get_tunnel_key
    SKB_SET_TUNNEL_KEY = 21  # bpf_skb_set_tunnel_key
    PERF_EVENT_READ = 22  # bpf_perf_event_read
    REDIRECT = 23  # bpf_redirect
    PERF_EVENT_OUTPUT = 25  # bpf_perf_event_output(ctx, map, flags, data, size)
    SKB_LOAD_BYTES = 26  # bpf_skb_load_bytes
    GET_STACKID = 27  # bpf_get_stackid(ctx, stack_trace_map, flags) -> stack id or -errno
    CSUM_DIFF = 28  # bpf_csum_diff
    SKB_CHANGE_PROTO = 31  # bpf_skb_change_proto
    SKB_UNDER_CGROUP = 33  # bpf_skb_under_cgroup(skb, cgroup_array, index) -> 1, 0 or -errno
    GET_HASH_RECALC = 34  # bpf_get_hash_recalc
    GET_CURRENT_TASK = 35  # bpf_get_current_task
    CURRENT_TASK_UNDER_CGROUP = 37  # bpf_current_task_under_cgroup(cgroup_array, index) -> 1, 0 or -errno
    SKB_CHANGE_TAIL = 38  # bpf_skb_change_tail
    SKB_PULL_DATA = 39  # bpf_skb_pull_data
    CSUM_UPDATE = 40  # bpf_csum_update
    GET_NUMA_NODE_ID = 42  # bpf_get_numa_node_id
    SKB_CHANGE_HEAD = 43  # bpf_skb_change_head
    XDP_ADJUST_HEAD = 44  # bpf_xdp_adjust_head
    PROBE_READ_STR = 45  # bpf_probe_read_str
    GET_SOCKET_COOKIE = 46  # bpf_get_socket_cookie
    GET_SOCKET_UID = 47  # bpf_get_socket_uid
    SETSOCKOPT = 49  # bpf_setsockopt
    SKB_ADJUST_ROOM = 50  # bpf_skb_adjust_room
    REDIRECT_MAP = 51  # bpf_redirect_map(map, key, flags) -> XDP action
    SK_REDIRECT_MAP = 52  # bpf_sk_redirect_map(skb, map, key, flags) -> SK_PASS / SK_DROP
    SOCK_MAP_UPDATE = 53  # bpf_sock_map_update(skops, map, key, flags)
    XDP_ADJUST_META = 54  # bpf_xdp_adjust_meta
    PERF_PROG_READ_VALUE = 56  # bpf_perf_prog_read_value
    GETSOCKOPT = 57  # bpf_getsockopt
    SOCK_OPS_CB_FLAGS_SET = 59  # bpf_sock_ops_cb_flags_set
    MSG_REDIRECT_MAP = 60  # bpf_msg_redirect_map(msg, map, key, flags) -> SK_PASS / SK_DROP
    MSG_APPLY_BYTES = 61  # bpf_msg_apply_bytes
    MSG_CORK_BYTES = 62  # bpf_msg_cork_bytes
    MSG_PULL_DATA = 63  # bpf_msg_pull_data
    BIND = 64  # bpf_bind
    XDP_ADJUST_TAIL = 65  # bpf_xdp_adjust_tail
    GET_STACK = 67  # bpf_get_stack(ctx, buf, size, flags) -> bytes of return addresses copied or -errno
    SKB_LOAD_BYTES_RELATIVE = 68  # bpf_skb_load_bytes_relative
    FIB_LOOKUP = 69  # bpf_fib_lookup
    SOCK_HASH_UPDATE = 70  # bpf_sock_hash_update
    MSG_REDIRECT_HASH = 71  # bpf_msg_redirect_hash
    SK_REDIRECT_HASH = 72  # bpf_sk_redirect_hash
    SKB_CGROUP_ID = 79  # bpf_skb_cgroup_id
    GET_CURRENT_CGROUP_ID = 80  # bpf_get_current_cgroup_id
    GET_LOCAL_STORAGE = 81  # bpf_get_local_storage(cgroup_storage, 0) -> the attachment's value
    MAP_PUSH_ELEM = 87  # bpf_map_push_elem(map, value, flags)
    MAP_POP_ELEM = 88  # bpf_map_pop_elem(map, value)
    MAP_PEEK_ELEM = 89  # bpf_map_peek_elem(map, value)
    MSG_PUSH_DATA = 90  # bpf_msg_push_data
    MSG_POP_DATA = 91  # bpf_msg_pop_data
    SPIN_LOCK = 93  # bpf_spin_lock
    SPIN_UNLOCK = 94  # bpf_spin_unlock
    SYSCTL_GET_NAME = 101  # bpf_sysctl_get_name
    SYSCTL_GET_CURRENT_VALUE = 102  # bpf_sysctl_get_current_value
    SYSCTL_GET_NEW_VALUE = 103  # bpf_sysctl_get_new_value
    SYSCTL_SET_NEW_VALUE = 104  # bpf_sysctl_set_new_value
    STRTOL = 105  # bpf_strtol(buf, buf_len, flags, res): parse a signed integer
    STRTOUL = 106  # bpf_strtoul(buf, buf_len, flags, res): parse an unsigned integer
    SK_STORAGE_GET = 107  # bpf_sk_storage_get(map, sk, value, flags) -> the socket's value or NULL
    SK_STORAGE_DELETE = 108  # bpf_sk_storage_delete(map, sk)
    SEND_SIGNAL = 109  # bpf_send_signal
    PROBE_READ_USER = 112  # as PROBE_READ
    PROBE_READ_KERNEL = 113  # as PROBE_READ
    PROBE_READ_USER_STR = 114  # bpf_probe_read_user_str
    PROBE_READ_KERNEL_STR = 115  # bpf_probe_read_kernel_str
    JIFFIES64 = 118  # boot time in ticks of 250 Hz
    GET_NS_CURRENT_PID_TGID = 120  # bpf_get_ns_current_pid_tgid
    GET_NETNS_COOKIE = 122  # bpf_get_netns_cookie
    KTIME_GET_BOOT_NS = 125  # boot-time clock (counts suspend), nanoseconds
    SEQ_PRINTF = 126  # bpf_seq_printf
    SEQ_WRITE = 127  # bpf_seq_write
    RINGBUF_OUTPUT = 130  # bpf_ringbuf_output(map, data, size, flags)
    RINGBUF_RESERVE = 131  # bpf_ringbuf_reserve(map, size, flags) -> record pointer or NULL
    RINGBUF_SUBMIT = 132  # bpf_ringbuf_submit(data, flags)
    RINGBUF_DISCARD = 133  # bpf_ringbuf_discard(data, flags)
    RINGBUF_QUERY = 134  # bpf_ringbuf_query(map, flags)
    GET_TASK_STACK = 141  # bpf_get_task_stack
    INODE_STORAGE_GET = 145  # bpf_inode_storage_get(map, inode, value, flags) -> the inode's value or NULL
    INODE_STORAGE_DELETE = 146  # bpf_inode_storage_delete(map, inode)
    D_PATH = 147  # bpf_d_path
    COPY_FROM_USER = 148  # bpf_copy_from_user
    SNPRINTF_BTF = 149  # bpf_snprintf_btf
    SEQ_PRINTF_BTF = 150  # bpf_seq_printf_btf
    REDIRECT_NEIGH = 152  # bpf_redirect_neigh
    TASK_STORAGE_GET = 156  # bpf_task_storage_get(map, task, value, flags) -> the task's value or NULL
    TASK_STORAGE_DELETE = 157  # bpf_task_storage_delete(map, task)
    GET_CURRENT_TASK_BTF = 158  # bpf_get_current_task_btf
    KTIME_GET_COARSE_NS = 160  # bpf_ktime_get_coarse_ns
    CHECK_MTU = 163  # bpf_check_mtu
    FOR_EACH_MAP_ELEM = 164  # bpf_for_each_map_elem(map, cb, ctx, flags) -> elements visited
    SNPRINTF = 165  # bpf_snprintf(str, size, fmt, data, data_len): printk formatting into a buffer
    GET_FUNC_IP = 173  # bpf_get_func_ip
    GET_ATTACH_COOKIE = 174  # bpf_get_attach_cookie
    TRACE_VPRINTK = 177  # bpf_trace_vprintk(fmt, fmt_size, data, data_len): trace_printk with an array
    LOOP = 181  # bpf_loop(nr, cb, ctx, flags) -> iterations run
    STRNCMP = 182  # bpf_strncmp
    GET_FUNC_ARG = 183  # bpf_get_func_arg
    GET_FUNC_RET = 184  # bpf_get_func_ret
    GET_FUNC_ARG_CNT = 185  # bpf_get_func_arg_cnt
    XDP_GET_BUFF_LEN = 188  # bpf_xdp_get_buff_len
    XDP_LOAD_BYTES = 189  # bpf_xdp_load_bytes
    XDP_STORE_BYTES = 190  # bpf_xdp_store_bytes
    MAP_LOOKUP_PERCPU_ELEM = 195  # bpf_map_lookup_percpu_elem
    KTIME_GET_TAI_NS = 208  # bpf_ktime_get_tai_ns


KERNEL_HELPER_IDS = range(1, 212)  # ids the kernel defines: a program type restricts these only
