"""Program types: each one's context layout, how its context is built, the helpers it may call, and runners."""

from __future__ import annotations

import array
import ctypes
import dataclasses
import enum
import errno
import functools
import os
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from jitbpf._native import native
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.helpers import Helper
from jitbpf.isa import MASK32, MASK64, Kind, PseudoSrc
from jitbpf.jit.runtime import ERROR_RESULT
from jitbpf.linux import pktrun
from jitbpf.linux.allowlists import ALLOWED, ALLOWED_BY_SECTION
from jitbpf.linux.helperids import KERNEL_HELPER_IDS, HelperId
from jitbpf.linux.iterators import ITERATOR_FLAVOURS, IterRead, SeqFile, iterator_helpers, read_iterator
from jitbpf.linux.maps import MAP_WRITE_HELPERS, SockHash, SockMap
from jitbpf.linux.pktrun import NO_FIELD, FrameLayout
from jitbpf.linux.sockets import (
    AF_INET,
    IPPROTO_TCP,
    PACKET_SOCKET,
    PACKET_SOCKET_REGION,
    SOCK_STREAM,
    find_socket,
    ip_fields,
    port_field,
    sk_lookup_assign,
    socket_of,
)
from jitbpf.linux.sockets import BpfSock as BpfSock  # the context of cgroup/sock, defined with the sockets
from jitbpf.linux.sockopts import SOL_TCP, OptName, SocketOptions, SockView, getsockopt, setsockopt
from jitbpf.linux.tunnel import TunnelInfo, from_key, to_key
from jitbpf.memory import LegacyPacket, Region
from jitbpf.sandbox import Pages
from jitbpf.verifier._sock import BPF_SOCK_SIZE

if TYPE_CHECKING:
    from jitbpf.linux.btfctx import AttachTarget, BtfTypes
    from jitbpf.linux.elf import Btf
    from jitbpf.verifier import ContextSpec
    from jitbpf.vm import VM

    BtfSource: TypeAlias = Btf | BtfTypes | str | os.PathLike[str] | bytes  # where a target BTF comes from

# -- the kernel's numbers ------------------------------------------------------------------------


class ProgType(enum.IntEnum):
    """The kernel's ``enum bpf_prog_type`` (the types jitbpf knows)."""

    UNSPEC = 0  # no program type: a plain program run with ``execute``
    SOCKET_FILTER = 1  # SEC("socket"): packet filter on a socket, returns bytes to keep
    KPROBE = 2  # SEC("kprobe/..."): probe on a kernel function, context = struct pt_regs
    SCHED_CLS = 3  # SEC("tc"), SEC("classifier"): traffic-control classifier, returns TC_ACT_*
    SCHED_ACT = 4  # SEC("action"): traffic-control action, same context as SCHED_CLS
    TRACEPOINT = 5  # SEC("tracepoint/..."): the tracepoint's raw record as context
    XDP = 6  # SEC("xdp"): driver receive path, context = struct xdp_md, returns XDP_*
    PERF_EVENT = 7  # SEC("perf_event"): perf sample, context = struct bpf_perf_event_data
    CGROUP_SKB = 8  # SEC("cgroup_skb/..."): cgroup ingress/egress packet filter, returns 0/1
    CGROUP_SOCK = 9  # SEC("cgroup/sock"): socket creation in a cgroup, context = struct bpf_sock
    LWT_IN = 10  # SEC("lwt_in"): lightweight tunnel ingress, packet from the network header, read only
    LWT_OUT = 11  # SEC("lwt_out"): lightweight tunnel egress, packet read only
    LWT_XMIT = 12  # SEC("lwt_xmit"): lightweight tunnel transmit, packet writable
    SOCK_OPS = 13  # SEC("sockops"): TCP events, context = struct bpf_sock_ops
    SK_SKB = 14  # SEC("sk_skb/..."): stream parser/verdict on sockmap sockets
    CGROUP_DEVICE = 15  # SEC("cgroup/dev"): device access control, context = bpf_cgroup_dev_ctx
    SK_MSG = 16  # SEC("sk_msg"): sendmsg verdict on sockmap sockets, context = struct sk_msg_md
    RAW_TRACEPOINT = 17  # SEC("raw_tracepoint/..."): context = the tracepoint's u64 arguments
    CGROUP_SOCK_ADDR = 18  # SEC("cgroup/connect4"), ...: bind/connect/sendmsg address rewriting
    CGROUP_SYSCTL = 23  # SEC("cgroup/sysctl"): reads and writes of /proc/sys, context = struct bpf_sysctl
    CGROUP_SOCKOPT = 25  # SEC("cgroup/getsockopt"), setsockopt: socket options, context = struct bpf_sockopt
    RAW_TRACEPOINT_WRITABLE = 24  # SEC("raw_tp.w/..."): a raw tracepoint whose first argument may be written
    TRACING = 26  # SEC("fentry/..."), fexit, fmod_ret, tp_btf, iter: context = the target's u64 args[]
    STRUCT_OPS = 27  # SEC("struct_ops/..."): a member function of a kernel struct_ops table
    EXT = 28  # SEC("freplace/..."): replaces a function of another BPF program
    LSM = 29  # SEC("lsm/..."): a security hook (bpf_lsm_<hook>), returns 0 or -errno
    FLOW_DISSECTOR = 22  # SEC("flow_dissector"): parses a packet's headers into struct bpf_flow_keys
    SK_REUSEPORT = 21  # SEC("sk_reuseport"): picks the socket of a SO_REUSEPORT group, context = sk_reuseport_md
    SK_LOOKUP = 30  # SEC("sk_lookup"): picks the socket a connection or packet goes to, context = struct bpf_sk_lookup
    NETFILTER = 32  # SEC("netfilter"): a netfilter hook, context = struct bpf_nf_ctx (BTF-typed), NF_DROP/NF_ACCEPT


class AttachType(enum.IntEnum):
    """The kernel's ``enum bpf_attach_type`` of the BTF-typed sections (what libbpf loads them with)."""

    NONE = 0  # no attach type (freplace, raw_tp.w)
    TRACE_RAW_TP = 23  # tp_btf: a BTF-typed raw tracepoint
    TRACE_FENTRY = 24  # fentry: on entry of a kernel function
    TRACE_FEXIT = 25  # fexit: on its return, with the return value
    MODIFY_RETURN = 26  # fmod_ret: before it, and may make it return early with r0
    LSM_MAC = 27  # lsm: a security hook
    TRACE_ITER = 28  # iter: one call per object of a BPF iterator
    LSM_CGROUP = 43  # lsm_cgroup: a security hook for one cgroup
    STRUCT_OPS = 44  # struct_ops: a member of a struct_ops table
    NETFILTER = 45  # netfilter: a netfilter hook


class XdpAction(enum.IntEnum):
    """What an XDP program decides for a packet (``enum xdp_action``)."""

    ABORTED = 0  # program error: drop and raise a trace event
    DROP = 1  # drop the packet
    PASS = 2  # hand it on to the network stack
    TX = 3  # send it back out of the interface it came in on
    REDIRECT = 4  # send it to another interface, CPU or socket (bpf_redirect*)


class TcAction(enum.IntEnum):
    """Traffic-control verdicts (``TC_ACT_*``) returned by SCHED_CLS/SCHED_ACT programs."""

    UNSPEC = -1  # use the default action
    OK = 0  # pass the packet on
    RECLASSIFY = 1  # restart classification
    SHOT = 2  # drop the packet
    PIPE = 3  # go on with the next action
    STOLEN = 4  # consumed by the program
    QUEUED = 5  # queued for later
    REPEAT = 6  # run the action again
    REDIRECT = 7  # redirected (bpf_redirect)


class SkAction(enum.IntEnum):
    """Verdicts of SK_SKB and SK_MSG programs (``enum sk_action``)."""

    DROP = 0  # drop the data
    PASS = 1  # let it through


EINVAL = 22  # the kernel's error number, returned negated by helpers
E2BIG = 7  # the same: a value cut short to fit the program's buffer
ENOTSUPP = 524
EOPNOTSUPP = 95
PACKET_OTHERHOST = 3  # the last of the packet types bpf_skb_change_type moves between
ENODEV = 19
EACCES = 13
BPF_F_INGRESS = 1  # bpf_clone_redirect/bpf_redirect: to the device's ingress
SKB_MAX_CSUM_LEVEL = 3  # the deepest CHECKSUM_UNNECESSARY level an skb records
ETH_P_IP_BE, ETH_P_IPV6_BE = 0x0008, 0xDD86  # __sk_buff.protocol: the Ethernet type in network order
IPV4_HLEN, IPV6_HLEN = 20, 40  # fixed header lengths (bpf_skb_ecn_set_ce checks them)


def ethernet_packet_type(frame: bytes | bytearray | memoryview) -> int:
    """The ``__sk_buff.pkt_type`` the kernel's test run gives an Ethernet ``frame``, from its
    destination as eth_type_trans reads it on loopback (whose address is all zeros, and whose
    broadcast address too): to the host (0), multicast (2: the group bit, broadcast included)
    or to another host (3). tc and socket filter runs derive it themselves, with the same native
    function; cgroup_skb and lwt runs, whose packets start at the network header, take it as
    ``pkt_type=`` (0 by default)."""
    head = bytes(frame[:ETH_HLEN])  # all the rule reads
    return int(native().lib.jb_eth_pkt_type(head, len(head)))


class CsumLevel(enum.IntEnum):
    """bpf_csum_level's operations."""

    QUERY = 0  # the level, or -EACCES when the skb is not CHECKSUM_UNNECESSARY
    INC = 1  # one more level checked (CHECKSUM_NONE becomes UNNECESSARY, level 0)
    DEC = 2  # one less (level 0 becomes CHECKSUM_NONE)
    RESET = 3  # back to CHECKSUM_NONE


def _swap16(x: int) -> int:
    return (x >> 8 | x << 8) & 0xFFFF
ETH_HLEN = 14  # the link-layer header a device's MTU leaves out (bpf_check_mtu)
BPF_MTU_CHK_SEGS = 1  # bpf_check_mtu: check GSO segments (skb only)
BPF_MTU_CHK_RET_FRAG_NEEDED = 1  # bpf_check_mtu: the packet is larger than the device's MTU
XDP_PACKET_HEADROOM = 256  # bytes before the packet that bpf_xdp_adjust_head may claim
XDP_TAILROOM = 256  # bytes after the packet that bpf_xdp_adjust_tail may claim
SKB_HEADROOM = 1024  # bytes before a tc packet that bpf_skb_adjust_room/change_head/change_proto may claim
SKB_TAILROOM = 256  # bytes after it
CTX_AREA = 512  # bytes reserved for the context at the start of the run arena
ETH_P_IP = 0x0800  # the Ethernet type of IPv4
FLOW_KEYS_OFF = 384  # where in that area a flow dissector's keys go (past the packet's socket)
SOCK_OFF = 256  # where in that area a packet's own socket goes (past the largest packet context)

# -- context layouts (the kernel's uapi structs) ---------------------------------------------------

u32, u64, s32 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32


class XdpMd(ctypes.LittleEndianStructure):
    """``struct xdp_md``: the XDP context; data/data_end/data_meta are 32-bit packet addresses."""

    c_name = "xdp_md"  # the C struct, as BTF names it

    _fields_ = (("data", u32), ("data_end", u32), ("data_meta", u32), ("ingress_ifindex", u32),
                ("rx_queue_index", u32), ("egress_ifindex", u32))


class SkBuff(ctypes.LittleEndianStructure):
    """``struct __sk_buff``: the context of socket filters, tc, cgroup_skb and sk_skb programs."""

    c_name = "__sk_buff"  # the C struct, as BTF names it

    _fields_ = (("len", u32), ("pkt_type", u32), ("mark", u32), ("queue_mapping", u32), ("protocol", u32),
                ("vlan_present", u32), ("vlan_tci", u32), ("vlan_proto", u32), ("priority", u32),
                ("ingress_ifindex", u32), ("ifindex", u32), ("tc_index", u32), ("cb", u32 * 5), ("hash", u32),
                ("tc_classid", u32), ("data", u32), ("data_end", u32), ("napi_id", u32), ("family", u32),
                ("remote_ip4", u32), ("local_ip4", u32), ("remote_ip6", u32 * 4), ("local_ip6", u32 * 4),
                ("remote_port", u32), ("local_port", u32), ("data_meta", u32), ("flow_keys", u64),
                ("tstamp", u64), ("wire_len", u32), ("gso_segs", u32), ("sk", u64), ("gso_size", u32),
                ("tstamp_type", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 3), ("hwtstamp", u64))


PT_REGS_NAMES = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
                 "orig_ax", "ip", "cs", "flags", "sp", "ss")
PT_REGS_ARGS = ("di", "si", "dx", "cx", "r8")  # PT_REGS_PARM1..5 on x86-64


class PtRegs(ctypes.LittleEndianStructure):
    """x86-64 ``struct pt_regs``: the context of kprobe programs (fields named as in the kernel)."""

    c_name = "pt_regs"  # the C struct, as BTF names it

    _fields_ = tuple((name, u64) for name in PT_REGS_NAMES)


class PerfEventData(ctypes.LittleEndianStructure):
    """``struct bpf_perf_event_data``: the sampled registers, period and address."""

    c_name = "bpf_perf_event_data"  # the C struct, as BTF names it

    _fields_ = (("regs", PtRegs), ("sample_period", u64), ("addr", u64))


class CgroupDevCtx(ctypes.LittleEndianStructure):
    """``struct bpf_cgroup_dev_ctx``: access_type = (access << 16) | device type."""

    c_name = "bpf_cgroup_dev_ctx"  # the C struct, as BTF names it

    _fields_ = (("access_type", u32), ("major", u32), ("minor", u32))


class Sysctl(ctypes.LittleEndianStructure):
    """``struct bpf_sysctl``: write is 1 for a write to the sysctl (read only), file_pos the
    offset of the access in its file (writable)."""

    c_name = "bpf_sysctl"  # the C struct, as BTF names it

    _fields_ = (("write", u32), ("file_pos", u32))


class BpfSockopt(ctypes.LittleEndianStructure):
    """``struct bpf_sockopt``: the socket, the option's value (``optval`` to ``optval_end``, in
    packet memory), its level, name and length, and for getsockopt the call's result."""

    c_name = "bpf_sockopt"  # the C struct, as BTF names it

    _fields_ = (("sk", u64), ("optval", u64), ("optval_end", u64), ("level", ctypes.c_int32),
                ("optname", ctypes.c_int32), ("optlen", ctypes.c_int32), ("retval", ctypes.c_int32))


@dataclass
class SysctlAccess:
    """One access to a sysctl as a cgroup/sysctl program sees it (and what it changed)."""

    name: str  # the path below /proc/sys with "/" separators ("net/ipv4/tcp_mem")
    value: bytes | None  # what the sysctl's file reads now (None: it cannot be read)
    new_value: bytes | None = None  # what a write stores (None: the access is a read)
    file_pos: int = 0  # offset of the access in the file, which the program may move
    updated: bool = False  # bpf_sysctl_set_new_value replaced new_value


SYSCTL_VALUE_MAX = 4095  # bytes bpf_sysctl_set_new_value may store (the kernel's PAGE_SIZE - 1)
SYSCTL_BASE_NAME = 1  # BPF_F_SYSCTL_BASE_NAME: bpf_sysctl_get_name gives the last component only


class SockAddr(ctypes.LittleEndianStructure):
    """``struct bpf_sock_addr``: the context of cgroup bind/connect/sendmsg programs."""

    c_name = "bpf_sock_addr"  # the C struct, as BTF names it

    _fields_ = (("user_family", u32), ("user_ip4", u32), ("user_ip6", u32 * 4), ("user_port", u32),
                ("family", u32), ("type", u32), ("protocol", u32), ("msg_src_ip4", u32),
                ("msg_src_ip6", u32 * 4), ("sk", u64))


class SockOps(ctypes.LittleEndianStructure):
    """``struct bpf_sock_ops`` (``args``/``reply``/``replylong`` share offset 4)."""

    c_name = "bpf_sock_ops"  # the C struct, as BTF names it

    _fields_ = (("op", u32), ("args", u32 * 4), ("family", u32), ("remote_ip4", u32), ("local_ip4", u32),
                ("remote_ip6", u32 * 4), ("local_ip6", u32 * 4), ("remote_port", u32), ("local_port", u32),
                ("is_fullsock", u32), ("snd_cwnd", u32), ("srtt_us", u32), ("bpf_sock_ops_cb_flags", u32),
                ("state", u32), ("rtt_min", u32), ("snd_ssthresh", u32), ("rcv_nxt", u32), ("snd_nxt", u32),
                ("snd_una", u32), ("mss_cache", u32), ("ecn_flags", u32), ("rate_delivered", u32),
                ("rate_interval_us", u32), ("packets_out", u32), ("retrans_out", u32), ("total_retrans", u32),
                ("segs_in", u32), ("data_segs_in", u32), ("segs_out", u32), ("data_segs_out", u32),
                ("lost_out", u32), ("sacked_out", u32), ("sk_txhash", u32), ("bytes_received", u64),
                ("bytes_acked", u64), ("sk", u64), ("skb_data", u64), ("skb_data_end", u64), ("skb_len", u32),
                ("skb_tcp_flags", u32), ("skb_hwtstamp", u64))


class SkMsgMd(ctypes.LittleEndianStructure):
    """``struct sk_msg_md``: data/data_end are 64-bit pointers here."""

    c_name = "sk_msg_md"  # the C struct, as BTF names it

    _fields_ = (("data", u64), ("data_end", u64), ("family", u32), ("remote_ip4", u32), ("local_ip4", u32),
                ("remote_ip6", u32 * 4), ("local_ip6", u32 * 4), ("remote_port", u32), ("local_port", u32),
                ("size", u32), ("sk", u64))


class SkLookup(ctypes.LittleEndianStructure):
    """``struct bpf_sk_lookup``: a new connection (TCP) or packet (UDP) looking for its socket;
    ``sk`` is the socket selected so far (bpf_sk_assign), addresses and ``remote_port`` are in
    network order, ``local_port`` in host order."""

    c_name = "bpf_sk_lookup"  # the C struct, as BTF names it

    _fields_ = (("sk", u64), ("family", u32), ("protocol", u32), ("remote_ip4", u32), ("remote_ip6", u32 * 4),
                ("remote_port", ctypes.c_uint16), ("zero_pad", ctypes.c_uint16), ("local_ip4", u32),
                ("local_ip6", u32 * 4), ("local_port", u32), ("ingress_ifindex", u32))


class BpfFlowKeys(ctypes.LittleEndianStructure):
    """``struct bpf_flow_keys``: what a flow dissector finds (ports and ``n_proto`` in network
    order, as the packet holds them; IPv4 addresses in ``ipv4_src``/``ipv4_dst``, which IPv6
    addresses overlay as ``ipv6_src``/``ipv6_dst``)."""

    c_name = "bpf_flow_keys"  # the C struct, as BTF names it

    _fields_ = (("nhoff", ctypes.c_uint16), ("thoff", ctypes.c_uint16), ("addr_proto", ctypes.c_uint16),
                ("is_frag", ctypes.c_uint8), ("is_first_frag", ctypes.c_uint8), ("is_encap", ctypes.c_uint8),
                ("ip_proto", ctypes.c_uint8), ("n_proto", ctypes.c_uint16), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16), ("addrs", u32 * 8), ("flags", u32), ("flow_label", u32))

    @property
    def ipv4_src(self) -> int:
        return int(self.addrs[0])

    @property
    def ipv4_dst(self) -> int:
        return int(self.addrs[1])

    @property
    def ipv6_src(self) -> list[int]:
        return list(self.addrs[0:4])

    @property
    def ipv6_dst(self) -> list[int]:
        return list(self.addrs[4:8])


class SkReuseportMd(ctypes.LittleEndianStructure):
    """``struct sk_reuseport_md``: a packet or connection arriving at a SO_REUSEPORT group; ``sk``
    is the group's socket it arrived at, ``migrating_sk`` a socket being closed whose requests
    move (NULL otherwise)."""

    c_name = "sk_reuseport_md"  # the C struct, as BTF names it

    _fields_ = (("data", u64), ("data_end", u64), ("len", u32), ("eth_protocol", u32), ("ip_protocol", u32),
                ("bind_inany", u32), ("hash", u32), ("_pad", u32), ("sk", u64), ("migrating_sk", u64))


class TracingArgs(ctypes.LittleEndianStructure):
    """The kernel's ``u64 args[]`` of BTF-typed programs: one slot per argument of the attach
    target, then its return value (fexit, fmod_ret, lsm); what the verifier lets a program read
    of it depends on the target (see ``jitbpf.linux.btfctx``)."""

    _fields_ = (("args", u64 * 13),)


class RawContext(ctypes.LittleEndianStructure):
    """A context given as raw bytes by the caller (tracepoint records): 512 bytes, all readable."""

    _fields_ = (("raw", ctypes.c_uint8 * CTX_AREA),)


Struct = type[ctypes.LittleEndianStructure]
Span = tuple[int, int]  # [start, end) byte offsets in a context


def _spans(ctx: Struct, names: Iterable[str]) -> tuple[Span, ...]:
    out = []
    for name in names:
        desc = getattr(ctx, name)
        out.append((int(desc.offset), int(desc.offset) + int(desc.size)))
    return tuple(sorted(out))


def _all_but(ctx: Struct, excluded: Iterable[str]) -> tuple[Span, ...]:
    skip = set(excluded) | {"_pad"}
    return _spans(ctx, (f[0] for f in ctx._fields_ if f[0] not in skip))


# -- the helpers each program type may call --------------------------------------------------------
# Measured on the kernel where a type loads without an attach target (jitbpf.linux.allowlists);
# the BTF-typed types' lists follow.

H = HelperId
_BASE = frozenset({
    H.MAP_LOOKUP_ELEM, H.MAP_UPDATE_ELEM, H.MAP_DELETE_ELEM, H.MAP_PUSH_ELEM, H.MAP_POP_ELEM, H.MAP_PEEK_ELEM,
    H.MAP_LOOKUP_PERCPU_ELEM, H.GET_PRANDOM_U32, H.GET_SMP_PROCESSOR_ID, H.GET_NUMA_NODE_ID, H.TAIL_CALL,
    H.KTIME_GET_NS, H.KTIME_GET_BOOT_NS, H.KTIME_GET_COARSE_NS, H.KTIME_GET_TAI_NS, H.JIFFIES64,
    H.RINGBUF_OUTPUT, H.RINGBUF_RESERVE, H.RINGBUF_SUBMIT, H.RINGBUF_DISCARD, H.RINGBUF_QUERY, H.SPIN_LOCK,
    H.SPIN_UNLOCK, H.TRACE_PRINTK, H.TRACE_VPRINTK, H.SNPRINTF, H.LOOP, H.FOR_EACH_MAP_ELEM, H.STRNCMP, H.STRTOL,
    H.STRTOUL, H.DYNPTR_FROM_MEM, H.RINGBUF_RESERVE_DYNPTR, H.RINGBUF_SUBMIT_DYNPTR, H.RINGBUF_DISCARD_DYNPTR,
    H.DYNPTR_READ, H.DYNPTR_WRITE, H.DYNPTR_DATA, H.USER_RINGBUF_DRAIN,
    H.PROBE_READ_KERNEL, H.PROBE_READ_KERNEL_STR, H.PROBE_READ_USER, H.PROBE_READ_USER_STR,
})
_TRACING = _BASE | {
    H.PROBE_READ, H.PROBE_READ_STR, H.GET_CURRENT_PID_TGID, H.GET_CURRENT_UID_GID, H.GET_CURRENT_COMM,
    H.GET_CURRENT_TASK, H.GET_CURRENT_CGROUP_ID, H.PERF_EVENT_OUTPUT, H.PERF_EVENT_READ, H.GET_STACKID,
    H.GET_STACK, H.GET_CURRENT_TASK_BTF, H.GET_NS_CURRENT_PID_TGID, H.SEND_SIGNAL,
    H.CURRENT_TASK_UNDER_CGROUP, H.SK_STORAGE_GET, H.SK_STORAGE_DELETE, H.TASK_STORAGE_GET, H.TASK_STORAGE_DELETE,
    H.GET_TASK_STACK, H.GET_ATTACH_COOKIE, H.GET_CURRENT_ANCESTOR_CGROUP_ID,
}
# The kernel's tracing_prog_func_proto: the tracing set, plus the function's own arguments (and
# no bpf_ktime_get_coarse_ns, which tracing programs may not call).
_BTF_TRACING = _TRACING - {H.KTIME_GET_COARSE_NS} | {
    H.GET_FUNC_IP, H.GET_FUNC_ARG, H.GET_FUNC_RET, H.GET_FUNC_ARG_CNT, H.GET_ATTACH_COOKIE, H.D_PATH,
    H.SNPRINTF_BTF, H.SEQ_PRINTF, H.SEQ_WRITE, H.SEQ_PRINTF_BTF, H.COPY_FROM_USER, H.INODE_STORAGE_GET,
    H.INODE_STORAGE_DELETE,
}

# -- the registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramType:
    """Everything jitbpf knows about one program type."""

    prog_type: ProgType  # the kernel's number
    name: str  # short name used in messages and by the CLI ("xdp", "socket_filter", ...)
    ctx: Struct  # the context layout
    sections: tuple[str, ...]  # libbpf section names (exact, or prefixes ending in "/")
    helpers: frozenset[int]  # kernel helper ids the program may call
    readable: tuple[Span, ...]  # context bytes the program may read
    writable: tuple[Span, ...] = ()  # context bytes the program may write
    pointer_fields: Mapping[int, str] = field(default_factory=dict)  # ctx offset -> packet/packet_end/packet_meta
    ret_range: tuple[int, int] | None = None  # values r0 must lie in at exit, when the kernel checks it
    packet: bool = False  # the input is a packet (or message) placed in packet memory
    packet_writable: bool = False  # the program may write the packet (direct access or helpers)
    headroom: int = 0  # bytes in front of the packet that helpers may grow into
    tailroom: int = 0  # bytes after the packet that helpers may grow into
    ld_abs: bool = False  # legacy LD_ABS/LD_IND packet loads are allowed
    btf_typed: bool = False  # the context is the attach target's u64 args[], typed by the target BTF
    socket_context: bool = False  # the context is a socket (helpers taking a socket take it)
    whole_loads: bool = False  # loads read whole fields of the context (XDP's: no narrow ones)
    # Socket fields that start NULL (a selection the program makes, a socket being migrated); the
    # others hold the context's socket (vm.std.socket).
    null_sockets: frozenset[int] = frozenset()

    @functools.cached_property
    def socket_fields(self) -> tuple[tuple[int, bool], ...]:
        """The context's socket pointer fields: each one's offset and whether it may be NULL
        (read on every run: found once)."""
        return tuple((off, kind.endswith("_or_null")) for off, kind in self.pointer_fields.items()
                     if kind.startswith("sock"))

    @property
    def ctx_struct(self) -> str:
        """The C struct of the context (``xdp_md``; "" for an untyped one): a global function's
        pointer to it takes the context."""
        return str(getattr(self.ctx, "c_name", ""))

    def context_spec(self, section: str | None = None) -> ContextSpec:
        """The verifier's description of this context (for a program of ``section``, whose attach
        type may narrow what it reads, writes and returns)."""
        from jitbpf.verifier import ContextSpec

        readable, writable = _SECTION_ACCESS.get((section or "").removeprefix("?"), (self.readable, self.writable))
        # Each pointer field is loaded with the width its struct declares: a __u32 in __sk_buff
        # and xdp_md, a 64-bit __bpf_md_ptr in sk_msg_md.
        sizes = {off: _field_size(self.ctx, off) for off in self.pointer_fields}
        return ContextSpec(size=ctypes.sizeof(self.ctx), readable=tuple((a, b - a) for a, b in readable),
                           writable=tuple((a, b - a) for a, b in writable),
                           fields=MappingProxyType(dict(self.pointer_fields)), field_sizes=MappingProxyType(sizes),
                           ret_range=section_ret_range(section, self.ret_range), ret_pointer_ok=False,
                           packet_writable=self.packet_writable,
                           ld_abs=self.ld_abs, sockmap_writers=_SOCKMAP_WRITERS.get(self.prog_type, frozenset()),
                           socket_context=self.socket_context, whole_loads=self.whole_loads,
                           packet_helpers=_PACKET_HELPERS, **(_SKB_WORDS if self.ctx is SkBuff else {}))


def _btf_context_spec(attach: AttachTarget, types: BtfTypes | None) -> ContextSpec:
    """The verifier's description of a BTF-typed context: the attach target's argument slots."""
    from jitbpf.linux.btfctx import LSM_BOOL_HOOKS
    from jitbpf.verifier import ContextSpec

    attach_type = section_attach_type(attach.section)
    ret_range = _RET_RANGES.get(attach_type)
    lsm_int = attach_type is AttachType.LSM_MAC and attach.has_return and attach.types[-1] != 0
    if lsm_int:
        ret_range = (0, 1) if attach.target in LSM_BOOL_HOOKS else (-MAX_ERRNO, 0)
    writers = _UPDATE_DELETE if attach_type is AttachType.TRACE_ITER else frozenset()
    return ContextSpec(size=8 * len(attach.args), args=attach.args, btf=types, ret_range=ret_range,
                       ret_32bit=lsm_int, packet_writable=False, ld_abs=False, sockmap_writers=writers)


def _field_size(ctx: Struct, off: int) -> int:
    """Bytes of the field of ``ctx`` that starts at ``off``."""
    for name, *_ in ctx._fields_:
        desc = getattr(ctx, name)
        if desc.offset == off:
            return int(desc.size)
    raise ValueError(f"{ctx.__name__} has no field at offset {off}")


def _allowed(kind: ProgType) -> frozenset[int]:
    """The helpers the kernel lets a program of ``kind`` call (measured: ``jitbpf.linux.allowlists``)."""
    return ALLOWED[int(kind)]


# What cgroup/sock programs may touch of their socket by attach type (the kernel's
# sock_filter_is_valid_access): the options at creation and release, the bound address after a bind.
_SOCK_SET = ("bound_dev_if", "mark", "priority")
_SOCK_BOUND = ("src_ip4", "src_ip6", "src_port")
_SOCK_CREATE = (_all_but(BpfSock, _SOCK_BOUND), _spans(BpfSock, _SOCK_SET))
# getsockopt programs read and set the call's result; setsockopt ones rewrite the level and name
# (the kernel's cg_sockopt_is_valid_access); both may change the length.
_SOCKOPT_GET = (_all_but(BpfSockopt, ()), _spans(BpfSockopt, ("optlen", "retval")))
_SOCKOPT_SET = (_all_but(BpfSockopt, ("retval",)), _spans(BpfSockopt, ("level", "optname", "optlen")))
# The kernel's bpf_skb_is_valid_access for every __sk_buff context: 32-bit fields (narrow reads,
# whole writes), cb[] at any aligned width, the 8-byte timestamps whole.
# (The socket's addresses are read a 32-bit word at a time, tc's tstamp_type a byte.)
_SKB_WORDS: Mapping[str, Any] = MappingProxyType({
    "word": 4, "any_width": ((SkBuff.cb.offset, SkBuff.cb.size),),
    "whole": MappingProxyType({SkBuff.tstamp.offset: 8, SkBuff.hwtstamp.offset: 8, SkBuff.tstamp_type.offset: 1,
                               **{SkBuff.remote_ip4.offset + 4 * i: 4 for i in range(10)}}),
})
_SECTION_ACCESS: Mapping[str, tuple[tuple[Span, ...], tuple[Span, ...]]] = MappingProxyType({
    "cgroup/sock_release": _SOCK_CREATE,
    "cgroup/post_bind4": (_all_but(BpfSock, (*_SOCK_SET, "src_ip6")), ()),
    "cgroup/post_bind6": (_all_but(BpfSock, (*_SOCK_SET, "src_ip4")), ()),
    "cgroup/getsockopt": _SOCKOPT_GET,
    "cgroup/setsockopt": _SOCKOPT_SET,
    # A program a devmap runs as a device's egress hook reads the device it goes out of.
    **{section: (_all_but(XdpMd, ()), ()) for section in ("xdp/devmap", "xdp.frags/devmap")},
})


def _build_registry() -> Mapping[ProgType, ProgramType]:
    sk = SkBuff
    skb_sk = {SkBuff.sk.offset: "sock_common_or_null"}  # the packet's socket, which every skb type may read
    skb_ptrs = {SkBuff.data.offset: "packet", SkBuff.data_end.offset: "packet_end", **skb_sk}
    sk_common = ("family", "remote_ip4", "local_ip4", "remote_ip6", "local_ip6", "remote_port", "local_port")
    types = [
        ProgramType(
            ProgType.SOCKET_FILTER, "socket_filter", sk, ("socket", "socket/"), _allowed(ProgType.SOCKET_FILTER),
            readable=_all_but(sk, ("tc_classid", "data", "data_end", "data_meta", *sk_common, "tstamp", "wire_len",
                                   "hwtstamp", "flow_keys", "tstamp_type")),
            writable=_spans(sk, ("cb",)), pointer_fields=skb_sk, packet=True, ld_abs=True,
        ),
        ProgramType(
            ProgType.SCHED_CLS, "sched_cls", sk, ("tc", "tc/", "classifier", "classifier/", "tcx/"),
            _allowed(ProgType.SCHED_CLS),
            readable=_all_but(sk, (*sk_common, "flow_keys")),
            writable=_spans(sk, ("mark", "queue_mapping", "priority", "tc_index", "cb", "tc_classid", "tstamp")),
            pointer_fields={**skb_ptrs, SkBuff.data_meta.offset: "packet_meta"}, packet=True,
            packet_writable=True, headroom=SKB_HEADROOM, tailroom=SKB_TAILROOM, ld_abs=True,
        ),
        ProgramType(
            ProgType.KPROBE, "kprobe", PtRegs,
            # (libbpf's kprobe-typed sections, each bare or with a target after "/": USDT probes
            # and multi-attach probes are kprobes too.)
            tuple(f"{name}{end}" for name in ("kprobe", "kretprobe", "uprobe", "uretprobe", "uprobe.s", "uretprobe.s",
                                              "ksyscall", "kretsyscall", "usdt", "usdt.s", "kprobe.multi",
                                              "kretprobe.multi", "kprobe.session", "uprobe.multi",
                                              "uretprobe.multi", "uprobe.multi.s", "uretprobe.multi.s")
                  for end in ("", "/")),
            _allowed(ProgType.KPROBE), readable=_all_but(PtRegs, ()),
        ),
        ProgramType(
            ProgType.TRACEPOINT, "tracepoint", RawContext, ("tracepoint", "tracepoint/", "tp", "tp/"),
            _allowed(ProgType.TRACEPOINT),
            readable=((0, CTX_AREA),),
        ),
        ProgramType(
            ProgType.RAW_TRACEPOINT, "raw_tracepoint", RawContext,
            ("raw_tracepoint", "raw_tracepoint/", "raw_tp", "raw_tp/"), _allowed(ProgType.RAW_TRACEPOINT),
            readable=((0, CTX_AREA),),
        ),
        ProgramType(
            ProgType.RAW_TRACEPOINT_WRITABLE, "raw_tracepoint_writable", RawContext,
            ("raw_tp.w/", "raw_tracepoint.w/"), _allowed(ProgType.RAW_TRACEPOINT_WRITABLE), readable=((0, CTX_AREA),),
        ),
        ProgramType(
            ProgType.TRACING, "tracing", TracingArgs,
            ("fentry/", "fexit/", "fmod_ret/", "fentry.s/", "fexit.s/", "fmod_ret.s/", "tp_btf/", "iter/",
             "iter.s/"), _BTF_TRACING, readable=(), btf_typed=True,
        ),
        ProgramType(ProgType.LSM, "lsm", TracingArgs, ("lsm/", "lsm.s/", "lsm_cgroup/"), _BTF_TRACING,
                    readable=(), btf_typed=True),
        ProgramType(ProgType.STRUCT_OPS, "struct_ops", TracingArgs, ("struct_ops/", "struct_ops.s/"), _BTF_TRACING,
                    readable=(), btf_typed=True),
        ProgramType(ProgType.EXT, "ext", TracingArgs, ("freplace/",), _BTF_TRACING, readable=(), btf_typed=True),
        # Its context, struct bpf_nf_ctx, is two typed pointers: read as a BTF-typed program's slots.
        ProgramType(ProgType.NETFILTER, "netfilter", TracingArgs, ("netfilter",), _allowed(ProgType.NETFILTER),
                    readable=(), btf_typed=True),
        ProgramType(
            ProgType.XDP, "xdp", XdpMd, ("xdp", "xdp/", "xdp.frags", "xdp.frags/"),
            _allowed(ProgType.XDP),
            readable=_all_but(XdpMd, ("egress_ifindex",)),  # (that one for devmap programs only: _SECTION_ACCESS)
            pointer_fields={XdpMd.data.offset: "packet", XdpMd.data_end.offset: "packet_end",
                            XdpMd.data_meta.offset: "packet_meta"},
            packet=True, packet_writable=True, headroom=XDP_PACKET_HEADROOM, tailroom=XDP_TAILROOM,
            whole_loads=True,
        ),
        ProgramType(
            ProgType.PERF_EVENT, "perf_event", PerfEventData, ("perf_event",),
            _allowed(ProgType.PERF_EVENT), readable=_all_but(PerfEventData, ()),
        ),
        ProgramType(
            ProgType.CGROUP_SKB, "cgroup_skb", sk, ("cgroup_skb/", "cgroup/skb"),
            _allowed(ProgType.CGROUP_SKB),
            readable=_all_but(sk, ("tc_classid", "data_meta", "wire_len", "flow_keys", "tstamp_type")),
            # tstamp: for a privileged loader (CAP_SYS_ADMIN), as jitbpf loads
            writable=_spans(sk, ("mark", "priority", "cb", "tstamp")), pointer_fields=skb_ptrs, ret_range=(0, 1),
            packet=True,
        ),
        *(ProgramType(
            kind, name, sk, (name, name + "/"),
            _allowed(kind),
            readable=_all_but(sk, ("tc_classid", *sk_common, "data_meta", "tstamp", "wire_len", "hwtstamp",
                                   "flow_keys", "tstamp_type")),
            writable=_spans(sk, ("mark", "priority", "cb")), pointer_fields=skb_ptrs, packet=True,
            packet_writable=kind is ProgType.LWT_XMIT,
        ) for kind, name in ((ProgType.LWT_IN, "lwt_in"), (ProgType.LWT_OUT, "lwt_out"),
                             (ProgType.LWT_XMIT, "lwt_xmit"))),
        ProgramType(
            ProgType.CGROUP_SOCK, "cgroup_sock", BpfSock,
            ("cgroup/sock", "cgroup/sock_create", "cgroup/sock_release", "cgroup/post_bind4", "cgroup/post_bind6"),
            _allowed(ProgType.CGROUP_SOCK),
            readable=_SOCK_CREATE[0], writable=_SOCK_CREATE[1], ret_range=(0, 1), socket_context=True,
        ),
        ProgramType(
            ProgType.SOCK_OPS, "sock_ops", SockOps, ("sockops",),
            _allowed(ProgType.SOCK_OPS),
            readable=_all_but(SockOps, ("skb_data", "skb_data_end")),
            writable=_spans(SockOps, ("args", "sk_txhash")), pointer_fields={SockOps.sk.offset: "socket_or_null"},
            ret_range=(0, 1),
        ),
        ProgramType(
            ProgType.SK_SKB, "sk_skb", sk, ("sk_skb", "sk_skb/"),
            _allowed(ProgType.SK_SKB),
            readable=_all_but(sk, ("tc_classid", "data_meta", "tstamp", "wire_len", "hwtstamp", "mark", "flow_keys",
                                   "tstamp_type")),
            writable=_spans(sk, ("tc_index", "priority")), pointer_fields=skb_ptrs, packet=True,
            packet_writable=True,
        ),
        ProgramType(
            ProgType.CGROUP_DEVICE, "cgroup_device", CgroupDevCtx, ("cgroup/dev",), _allowed(ProgType.CGROUP_DEVICE),
            readable=_all_but(CgroupDevCtx, ()), ret_range=(0, 1),
        ),
        ProgramType(
            ProgType.SK_MSG, "sk_msg", SkMsgMd, ("sk_msg",),
            _allowed(ProgType.SK_MSG),
            readable=_all_but(SkMsgMd, ()),
            # The kernel lets sk_msg programs write their message directly (may_access_direct_pkt_data).
            pointer_fields={SkMsgMd.data.offset: "packet", SkMsgMd.data_end.offset: "packet_end",
                            SkMsgMd.sk.offset: "socket"}, packet=True,
            packet_writable=True,
        ),
        ProgramType(
            ProgType.CGROUP_SOCK_ADDR, "cgroup_sock_addr", SockAddr,
            tuple(f"cgroup/{op}{v}" for op in ("bind", "connect", "sendmsg", "recvmsg", "getpeername", "getsockname")
                  for v in ("4", "6", "_unix") if (op, v) != ("bind", "_unix")),  # unix sockets bind no address
            _allowed(ProgType.CGROUP_SOCK_ADDR),
            readable=_all_but(SockAddr, ()),
            writable=_spans(SockAddr, ("user_ip4", "user_ip6", "user_port", "msg_src_ip4", "msg_src_ip6")),
            pointer_fields={SockAddr.sk.offset: "socket"}, ret_range=(0, 1),
        ),
        ProgramType(
            ProgType.CGROUP_SYSCTL, "cgroup_sysctl", Sysctl, ("cgroup/sysctl",),
            _allowed(ProgType.CGROUP_SYSCTL),
            readable=_all_but(Sysctl, ()), writable=_spans(Sysctl, ("file_pos",)), ret_range=(0, 1),
        ),
        ProgramType(
            ProgType.CGROUP_SOCKOPT, "cgroup_sockopt", BpfSockopt, ("cgroup/getsockopt", "cgroup/setsockopt"),
            _allowed(ProgType.CGROUP_SOCKOPT), readable=_SOCKOPT_SET[0], writable=_spans(BpfSockopt, ("optlen",)),
            pointer_fields={BpfSockopt.sk.offset: "socket", BpfSockopt.optval.offset: "packet",
                            BpfSockopt.optval_end.offset: "packet_end"},
            ret_range=(0, 1), packet=True, packet_writable=True,
        ),
    ]
    types.append(ProgramType(
        ProgType.FLOW_DISSECTOR, "flow_dissector", sk, ("flow_dissector",), _allowed(ProgType.FLOW_DISSECTOR),
        readable=_spans(sk, ("data", "data_end", "flow_keys")),  # read-only, these fields only
        pointer_fields={SkBuff.data.offset: "packet", SkBuff.data_end.offset: "packet_end",
                        SkBuff.flow_keys.offset: "flow_keys"}, packet=True,
    ))
    md = SkReuseportMd
    types.append(ProgramType(
        ProgType.SK_REUSEPORT, "sk_reuseport", md, ("sk_reuseport", "sk_reuseport/migrate"),
        _allowed(ProgType.SK_REUSEPORT), readable=_all_but(md, ()),
        pointer_fields={md.data.offset: "packet", md.data_end.offset: "packet_end", md.sk.offset: "socket",
                        md.migrating_sk.offset: "sock_common_or_null"},
        packet=True, null_sockets=frozenset({md.migrating_sk.offset}),  # its r0 is not checked (the kernel's)
    ))
    types.append(ProgramType(
        ProgType.SK_LOOKUP, "sk_lookup", SkLookup, ("sk_lookup", "sk_lookup/"), _allowed(ProgType.SK_LOOKUP),
        # remote_port also reads as a u32 with its padding (the kernel's backward compatibility)
        readable=(*_spans(SkLookup, (name for name, *_ in SkLookup._fields_)),
                  (SkLookup.remote_port.offset, SkLookup.local_ip4.offset)),
        pointer_fields={SkLookup.sk.offset: "socket_or_null"}, ret_range=(0, 1),
        null_sockets=frozenset({SkLookup.sk.offset}),
    ))
    sched_act = types[1]
    types.append(ProgramType(ProgType.SCHED_ACT, "sched_act", sk, ("action", "action/"), _allowed(ProgType.SCHED_ACT),
                             readable=sched_act.readable, writable=sched_act.writable,
                             pointer_fields=sched_act.pointer_fields, packet=True, packet_writable=True,
                             headroom=SKB_HEADROOM, tailroom=SKB_TAILROOM, ld_abs=True))
    return MappingProxyType({t.prog_type: t for t in types})


PROGRAM_TYPES: Mapping[ProgType, ProgramType] = _build_registry()  # immutable, built once
# the places of the packet's socket and of a flow dissector's keys
assert ctypes.sizeof(SkBuff) <= SOCK_OFF and SOCK_OFF + BPF_SOCK_SIZE <= FLOW_KEYS_OFF
assert FLOW_KEYS_OFF + ctypes.sizeof(BpfFlowKeys) <= CTX_AREA
_BY_NAME: Mapping[str, ProgType] = MappingProxyType(
    {**{t.name: t.prog_type for t in PROGRAM_TYPES.values()}, **{p.name.lower(): p for p in ProgType},
     "socket": ProgType.SOCKET_FILTER, "tc": ProgType.SCHED_CLS, "classifier": ProgType.SCHED_CLS,
     "sockops": ProgType.SOCK_OPS, "cgroup_dev": ProgType.CGROUP_DEVICE, "sock_addr": ProgType.CGROUP_SOCK_ADDR,
     "sysctl": ProgType.CGROUP_SYSCTL, "sockopt": ProgType.CGROUP_SOCKOPT,
     "fentry": ProgType.TRACING, "fexit": ProgType.TRACING, "fmod_ret": ProgType.TRACING,
     "tp_btf": ProgType.TRACING, "iter": ProgType.TRACING, "freplace": ProgType.EXT,
     "raw_tp.w": ProgType.RAW_TRACEPOINT_WRITABLE}
)


def program_type(value: ProgType | int | str) -> ProgType:
    """A program type from its enum, number or name ("xdp", "socket_filter", "tc", ...)."""
    if isinstance(value, str):
        key = value.lower().removeprefix("bpf_prog_type_")
        if key not in _BY_NAME:
            raise ValueError(f"unknown program type {value!r}")
        return _BY_NAME[key]
    try:
        return ProgType(int(value))
    except ValueError:
        raise ValueError(f"unknown program type {value}") from None


def section_program_type(section: str) -> ProgType:
    """The program type libbpf gives a section name (``UNSPEC`` when it names none)."""
    section = section.removeprefix("?")  # "?": a program libbpf does not load unless asked; same type
    best, best_len = ProgType.UNSPEC, -1
    for info in PROGRAM_TYPES.values():
        for name in info.sections:
            matches = section.startswith(name) if name.endswith("/") else section == name
            if matches and len(name) > best_len:
                best, best_len = info.prog_type, len(name)
    return best


_ATTACH_TYPES: Mapping[str, AttachType] = MappingProxyType({
    "fentry": AttachType.TRACE_FENTRY, "fentry.s": AttachType.TRACE_FENTRY, "fexit": AttachType.TRACE_FEXIT,
    "fexit.s": AttachType.TRACE_FEXIT, "fmod_ret": AttachType.MODIFY_RETURN, "fmod_ret.s": AttachType.MODIFY_RETURN,
    "tp_btf": AttachType.TRACE_RAW_TP, "iter": AttachType.TRACE_ITER, "iter.s": AttachType.TRACE_ITER,
    "lsm": AttachType.LSM_MAC, "lsm.s": AttachType.LSM_MAC, "lsm_cgroup": AttachType.LSM_CGROUP,
    "struct_ops": AttachType.STRUCT_OPS, "struct_ops.s": AttachType.STRUCT_OPS, "netfilter": AttachType.NETFILTER,
})  # section prefix -> the attach type libbpf loads the program with (others: NONE)
# r0 at exit, as the kernel checks it per attach type (fmod_ret, tp_btf and the rest: anything);
# an LSM hook returning int gives 0 or -errno, in 32 bits (see _btf_context_spec).
MAX_ERRNO = 4095
_RET_RANGES: Mapping[AttachType, tuple[int, int]] = MappingProxyType({
    AttachType.TRACE_FENTRY: (0, 0), AttachType.TRACE_FEXIT: (0, 0), AttachType.TRACE_ITER: (0, 1),
    AttachType.LSM_CGROUP: (0, 1), AttachType.NETFILTER: (0, 1),  # NF_DROP or NF_ACCEPT
})


# What programs of an attach type return, where it differs from their program type's range (the
# kernel's check_return_code): by section name.
_SECTION_RET_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType({
    # cgroup_skb egress may also ask for congestion notification (bit 1)
    "cgroup_skb/egress": (0, 3),
    # bind may also let the socket bind a privileged port (BPF_RET_BIND_NO_CAP_NET_BIND_SERVICE)
    "cgroup/bind4": (0, 3), "cgroup/bind6": (0, 3),
    # these hooks may only rewrite the address, never refuse it
    **{f"cgroup/{hook}{family}": (1, 1) for hook in ("recvmsg", "getpeername", "getsockname")
       for family in ("4", "6", "_unix")},
})


def section_ret_range(section: str | None, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """The values a program of ``section`` must return (``default``: its program type's)."""
    if section is None:
        return default
    return _SECTION_RET_RANGES.get(section.removeprefix("?"), default)


def section_attach_type(section: str) -> AttachType:
    """The expected attach type libbpf gives a section ("fexit/..." -> TRACE_FEXIT)."""
    flavour = section.removeprefix("?").partition("/")[0]
    return _ATTACH_TYPES.get(flavour, AttachType.NONE)


_MAP_SOURCES = frozenset({PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX, PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX_VALUE})
# The map helpers that may change a socket map, by program type (the kernel's may_update_sockmap:
# types where no socket lock can be held; sock_ops only deletes; BTF iterators are typed apart).
_UPDATE_DELETE = MAP_WRITE_HELPERS
# The helpers whose memory arguments may be packet pointers (the kernel's pkt_access): the map
# helpers, bpf_csum_diff and the socket lookups (a tuple in the packet).
_PACKET_HELPERS = frozenset(map(int, (
    HelperId.MAP_LOOKUP_ELEM, HelperId.MAP_UPDATE_ELEM, HelperId.MAP_DELETE_ELEM, HelperId.MAP_PUSH_ELEM,
    HelperId.MAP_POP_ELEM, HelperId.MAP_PEEK_ELEM, HelperId.MAP_LOOKUP_PERCPU_ELEM, HelperId.CSUM_DIFF,
    HelperId.SK_LOOKUP_TCP, HelperId.SK_LOOKUP_UDP, HelperId.SKC_LOOKUP_TCP)))
_SOCKMAP_WRITERS: Mapping[ProgType, frozenset[int]] = MappingProxyType({
    **{t: _UPDATE_DELETE for t in (ProgType.SOCKET_FILTER, ProgType.SCHED_CLS, ProgType.SCHED_ACT, ProgType.XDP,
                                    ProgType.SK_LOOKUP, ProgType.SK_REUSEPORT, ProgType.FLOW_DISSECTOR)},
    ProgType.SOCK_OPS: frozenset({int(HelperId.MAP_DELETE_ELEM)}),
})
# Types the kernel counts as tracing: their programs may not use maps with a bpf_spin_lock or bpf_timer.
_TRACING_TYPES = frozenset({ProgType.KPROBE, ProgType.TRACEPOINT, ProgType.PERF_EVENT, ProgType.RAW_TRACEPOINT,
                            ProgType.RAW_TRACEPOINT_WRITABLE})


def section_helpers(info: ProgramType, section: str | None) -> frozenset[int]:
    """The kernel helpers a program of ``info``'s type from ``section`` may call: the type's, or
    those of the section's attach type where the kernel gives it a list of its own."""
    return ALLOWED_BY_SECTION.get((section or "").removeprefix("?"), info.helpers)


def check_program_helpers(vm: VM, info: ProgramType, section: str | None = None) -> None:
    """Reject maps the program type may not use, then any call of a kernel helper it may not call
    (``section`` is the program's, whose attach type may give it more helpers): the checks of an
    unverified program. The verifier refuses those calls only where a path reaches them."""
    check_program_maps(vm, info)
    refused = refused_helpers(vm, info, section)
    for pc, insn, decoded in vm.program:
        if decoded.kind is Kind.CALL and insn.imm in refused:
            raise VerifierError(refused[insn.imm], pc=pc)


def check_program_maps(vm: VM, info: ProgramType) -> None:
    """Reject maps the program type may not use (as the kernel, when the program's maps are
    resolved: before it verifies anything)."""
    if info.prog_type in _TRACING_TYPES:
        for pc, insn, decoded in vm.program:
            if decoded.kind is Kind.LDDW and insn.src in _MAP_SOURCES:
                m = vm.maps.get(insn.imm)
                for field in ("spin_lock", "timer"):
                    if getattr(m, f"{field}_off", None) is not None:
                        raise VerifierError(f"tracing progs cannot use bpf_{field} yet (a map with a bpf_{field})",
                                            pc=pc)


def refused_helpers(vm: VM, info: ProgramType, section: str | None = None) -> dict[int, str]:
    """The kernel helpers the program calls that its type may not call, each with the refusal."""
    allowed = section_helpers(info, section)
    refused: dict[int, str] = {}
    for _pc, insn, decoded in vm.program:
        hid = insn.imm
        if decoded.kind is Kind.CALL and hid in KERNEL_HELPER_IDS and hid not in allowed and hid not in refused:
            helper = vm.helpers.get(hid)
            name = helper.name if helper is not None else _helper_name(hid)
            refused[hid] = (f"program type {info.name} may not call helper {name}#{hid} "
                            f"(program of this type cannot use helper {name}#{hid})")
    return refused


def _helper_name(helper_id: int) -> str:
    try:
        return "bpf_" + HelperId(helper_id).name.lower()
    except ValueError:
        return "helper"


@dataclass
class ProgramRun:
    """The memory and state of one program run: context, packet frame, and what helpers changed.

    The packet pointers and the redirect target live in the run's native frame (``struct
    jb_pkt``, outside the sandbox), where the C helpers of JIT code change them too.
    """

    info: ProgramType  # the program type
    arena: Pages  # context at offset 0, packet frame at CTX_AREA
    frame: Any  # struct jb_pkt_prog * of the run (see jitbpf.linux.pktrun)
    msg_apply: int | None = None  # bytes given to bpf_msg_apply_bytes
    msg_cork: int | None = None  # bytes given to bpf_msg_cork_bytes
    tunnel: TunnelInfo | None = None  # the skb's tunnel metadata (bpf_skb_get/set_tunnel_key)
    hash_valid: bool = False  # the skb's hash was set (bpf_set_hash) or computed (bpf_get_hash_recalc)
    csum_level: int | None = None  # CHECKSUM_UNNECESSARY's level (bpf_csum_level); None: CHECKSUM_NONE

    @property
    def ctx_addr(self) -> int:
        """Address of the context."""
        return int(self.frame.pkt.ctx)

    @property
    def frame_start(self) -> int:
        """First byte of the packet frame (headroom start)."""
        return int(self.frame.pkt.frame_start)

    @property
    def frame_end(self) -> int:
        """One past the frame's last byte (tailroom end)."""
        return int(self.frame.pkt.frame_end)

    @property
    def data(self) -> int:
        """Packet start."""
        return int(self.frame.pkt.data)

    @property
    def data_end(self) -> int:
        """Packet end."""
        return int(self.frame.pkt.data_end)

    @property
    def data_meta(self) -> int:
        """Metadata start (== data when there is none)."""
        return int(self.frame.pkt.data_meta)

    @property
    def redirect(self) -> int | None:
        """Interface index given to bpf_redirect, if it was called."""
        return _redirect_of(self.frame)

    def packet_bytes(self) -> bytes:
        """The packet as it is now."""
        base = self.arena.address
        return bytes(self.arena.view[self.data - base : self.data_end - base])

    def sync_ctx(self) -> None:
        """Write the packet pointers (and ``__sk_buff.len``) into the context again."""
        nat = native()
        nat.lib.jb_pkt_sync(nat.ffi.addressof(self.frame, "pkt"))


def _redirect_of(frame: Any) -> int | None:
    pkt = frame.pkt
    return int(pkt.redirect) if pkt.redirected else None


def frame_layout(info: ProgramType) -> FrameLayout:
    """What the native frame builder needs to know of ``info``'s context."""
    where = {kind: off for off, kind in info.pointer_fields.items()}
    skb = info.ctx is SkBuff
    data = where.get("packet", NO_FIELD)
    length = getattr(info.ctx, "len", None)  # a length field follows the packet (__sk_buff, sk_reuseport_md)
    return FrameLayout(
        ctx_size=ctypes.sizeof(info.ctx), frame_off=CTX_AREA, data=data,
        data_end=where.get("packet_end", NO_FIELD), data_meta=where.get("packet_meta", NO_FIELD),
        ptr_size=_field_size(info.ctx, data) if data != NO_FIELD else 4,
        length=int(length.offset) if length is not None and info.packet else NO_FIELD,
        protocol=SkBuff.protocol.offset if skb else NO_FIELD, wire_len=SkBuff.wire_len.offset if skb else NO_FIELD,
        pkt_type=SkBuff.pkt_type.offset if skb else NO_FIELD,
        sk=SkBuff.sk.offset if skb else NO_FIELD, sock_off=SOCK_OFF,
        flow_keys=where.get("flow_keys", NO_FIELD), keys_off=FLOW_KEYS_OFF, headroom=info.headroom,
        tailroom=info.tailroom, xdp=info.prog_type is ProgType.XDP,
    )


TEMPLATES_KEPT = 256  # initial contexts each program state keeps built, by the fields given


class ProgramState:
    """Per-VM state of the program type: the type, and each thread's arena and current run."""

    def __init__(self, info: ProgramType, attach: AttachTarget | None = None, types: BtfTypes | None = None, *,
                 section: str | None = None) -> None:
        self.info = info
        self.section = section  # the section the program comes from, which may narrow its return values
        self.attach = attach  # BTF-typed types: the attach target, whose arguments are the context
        self.types = types  # and the target BTF they are typed by
        self.btf_source: BtfSource | None = None  # where that BTF came from (None: the running kernel)
        # an iterator's seq_file, which its reads collect the output of (None: not an iterator)
        self.seq = SeqFile() if attach is not None and attach.flavour in ITERATOR_FLAVOURS else None
        self.layout = frame_layout(info)
        self.local = threading.local()  # .arena and .run of each thread
        self.native = threading.local()  # .binding: each thread's jitbpf.linux.pktrun.Binding (see config_changed)
        self.templates: dict[Hashable, bytes] = {}  # initial contexts by the fields given (see add_template)
        self.xdp_default: bytes | None = None  # XDP: the template of run_xdp's default fields, once built
        # __sk_buff types: (socket, template, derive) of runs with no fields given, good while
        # the socket the caller set (vm.std.socket) is that one
        self.skb_default: tuple[object | None, bytes, int] | None = None
        # What names this state's bindings in the native single-run table (0: none yet), and that
        # table's run (pktrun.run_fast): both set by the first binding.
        self.token = 0
        self.pkt_run: pktrun.SingleRun = pktrun.not_bound

    def add_template(self, key: Hashable, values: Mapping[str, Any]) -> bytes:
        """The initial context (bytes) with the fields ``values`` gives, kept in ``templates``
        under ``key`` (which stands for those values)."""
        built = bytes(make_context(self.info, values))
        if len(self.templates) >= TEMPLATES_KEPT:
            self.templates.clear()
        self.templates[key] = built
        return built

    def config_changed(self) -> None:
        """The VM's helpers, maps or code changed: every thread's native binding is to be redone
        (under a new token: the native table's entries of the old bindings never match again)."""
        self.native = threading.local()
        self.token = 0

    def current(self) -> ProgramRun:
        run: ProgramRun | None = getattr(self.local, "run", None)
        if run is None:
            raise ExecutionError(f"{self.info.name} helper called outside a {self.info.name} run")
        return run

    def arena(self, size: int) -> tuple[Pages, Region, Region]:
        """This thread's run memory (at least ``size`` bytes) with its context and packet regions.

        The packet region spans the whole frame area (headroom, packet, tailroom): keeping the
        program within [data, data_end) is the verifier's job, as in the kernel.
        """
        cached: tuple[Pages, Region, Region] | None = getattr(self.local, "arena", None)
        if cached is None or cached[0].size < size:
            if cached is not None:
                cached[0].close()
            arena = Pages(max(size, 64 * 1024))
            ctx_size = ctypes.sizeof(self.info.ctx)
            ctx_region = Region(arena.address, ctx_size, arena.view[0:ctx_size], True, "ctx")
            frame = Region(arena.address + CTX_AREA, arena.size - CTX_AREA, arena.view[CTX_AREA:],
                           self.info.packet_writable, "packet")
            cached = (arena, ctx_region, frame)
            self.local.arena = cached
        return cached


# -- helpers that belong to program types ----------------------------------------------------------


def _s32(value: int) -> int:
    value &= MASK32
    return value - (1 << 32) if value & 0x8000_0000 else value


def _err(code: int) -> int:
    return -code & MASK64


def program_helpers(vm: VM, state: ProgramState) -> list[Helper]:
    """The helpers that work on a program type's context: packet access, xdp_adjust_*, redirect, ..."""
    info = state.info

    # The packet helpers are C (jitbpf/_native/pkt.c), called directly by JIT code; these
    # Python sides, for the interpreter, check the run and the pointers first.
    nat = native()
    lib = nat.lib

    def skb_load_bytes(ctx: int, offset: int, to: int, length: int, _e: int) -> int:
        state.current()
        vm.memory.view(to, length & MASK32, writable=True)  # raises for a bad buffer
        return int(lib.jb_direct_skb_load_bytes(ctx, offset, to, length))

    def skb_store_bytes(ctx: int, offset: int, src: int, length: int, _flags: int) -> int:
        state.current()
        vm.memory.view(src, length & MASK32)
        return int(lib.jb_direct_skb_store_bytes(ctx, offset, src, length))

    def in_run(cname: str) -> Callable[[int, int, int, int, int], int]:
        fn = getattr(lib, cname)

        def call(a: int, b: int, c: int, d: int, e: int) -> int:
            state.current()
            return int(fn(a, b, c, d, e))

        return call

    def msg_apply_bytes(_msg: int, nbytes: int, _c: int, _d: int, _e: int) -> int:
        state.current().msg_apply = nbytes & MASK32
        return 0

    def msg_cork_bytes(_msg: int, nbytes: int, _c: int, _d: int, _e: int) -> int:
        state.current().msg_cork = nbytes & MASK32
        return 0

    def sock_ops_cb_flags_set(ctx: int, flags: int, _c: int, _d: int, _e: int) -> int:
        run = state.current()
        if ctx != run.ctx_addr:
            return _err(EINVAL)
        off = ctx - run.arena.address + SockOps.bpf_sock_ops_cb_flags.offset
        run.arena.view[off : off + 4] = (flags & 0x7F).to_bytes(4, "little")
        return _err(EINVAL) if flags & ~0x7F else 0

    # -- cgroup/sysctl: the access run_sysctl describes (ProgramState.local.sysctl) --

    def sysctl_access() -> SysctlAccess:
        state.current()
        access: SysctlAccess | None = getattr(state.local, "sysctl", None)
        if access is None:
            raise ExecutionError("a sysctl helper needs the access run_sysctl describes")
        return access

    def copy_value(buf: int, size: int, value: bytes | None) -> int:
        """The kernel's copy of a value into a program's buffer: zero-padded, or cut short and
        terminated (-E2BIG); a missing value zeroes the buffer (-EINVAL)."""
        size &= MASK32
        if not value:
            vm.memory.write(buf, bytes(size))
            return _err(EINVAL)
        if size > len(value):
            vm.memory.write(buf, value + bytes(size - len(value)))
            return len(value)
        vm.memory.write(buf, value[: size - 1] + b"\0")
        return _err(E2BIG)

    def sysctl_get_name(_ctx: int, buf: int, size: int, flags: int, _e: int) -> int:
        access = sysctl_access()
        if flags & ~SYSCTL_BASE_NAME:
            return _err(EINVAL)
        name = (access.name.rsplit("/", 1)[-1] if flags & SYSCTL_BASE_NAME else access.name).encode()
        size &= MASK32
        if len(name) < size:
            vm.memory.write(buf, name + b"\0")
            return len(name)
        vm.memory.write(buf, name[: size - 1] + b"\0")
        return _err(E2BIG)

    def sysctl_get_current_value(_ctx: int, buf: int, size: int, _d: int, _e: int) -> int:
        return copy_value(buf, size, sysctl_access().value)

    def sysctl_get_new_value(_ctx: int, buf: int, size: int, _d: int, _e: int) -> int:
        access = sysctl_access()
        if access.new_value is None:  # a read: there is no new value
            vm.memory.write(buf, bytes(size & MASK32))
            return _err(EINVAL)
        return copy_value(buf, size, access.new_value)

    def sysctl_set_new_value(_ctx: int, buf: int, size: int, _d: int, _e: int) -> int:
        access = sysctl_access()
        size &= MASK32
        if not access.new_value or not 0 < size <= SYSCTL_VALUE_MAX:
            return _err(EINVAL)
        access.new_value, access.updated = vm.memory.read(buf, size), True
        return 0

    def skb_get_tunnel_key(_ctx: int, key: int, size: int, flags: int, _e: int) -> int:
        rc, data = to_key(state.current().tunnel, size & MASK32, flags)
        vm.memory.write(key, data)
        return rc & MASK64

    def skb_set_tunnel_key(_ctx: int, key: int, size: int, flags: int, _e: int) -> int:
        run = state.current()
        made = from_key(vm.memory.read(key, size & MASK32), flags)
        if isinstance(made, int):
            return made & MASK64
        run.tunnel = state.local.sent_tunnel = made
        return 0

    def skb_sk_assign(_ctx: int, sk: int, flags: int, _d: int, _e: int) -> int:
        # tc's: the skb goes to ``sk`` instead of the socket the stack would look up; only at
        # tc ingress (never in the kernel's test runs) and only for a socket in the lookup tables.
        state.current()
        if flags:
            return _err(EINVAL)
        if not getattr(state.local, "tc_ingress", False):
            return _err(EOPNOTSUPP)
        found = find_socket(vm.std.sockets, vm.memory, sk)
        if found is None:
            raise ExecutionError(f"bpf_sk_assign: {sk:#x} is no socket given to the program")
        if found[0] is PACKET_SOCKET:  # the packet's own socket is in no lookup table
            return _err(EOPNOTSUPP)
        state.local.assigned = found[0]
        return 0

    def csum_update(_ctx: int, _csum: int, _c: int, _d: int, _e: int) -> int:
        state.current()
        return _err(ENOTSUPP)  # a test-run skb carries no checksum state (CHECKSUM_NONE), as here

    def skb_load_bytes_relative(ctx: int, offset: int, to: int, length: int, start: int) -> int:
        state.current()
        vm.memory.view(to, length & MASK32, writable=True)
        return int(lib.jb_direct_skb_load_bytes_relative(ctx, offset, to, length, start))

    def xdp_copy_bytes(store: int) -> Callable[[int, int, int, int, int], int]:
        def call(ctx: int, offset: int, buf: int, length: int, _e: int) -> int:
            state.current()
            vm.memory.view(buf, length & MASK32, writable=not store)
            return int(lib.jb_direct_xdp_copy_bytes(ctx, offset, buf, length, store))

        return call

    # The device of an XDP run is the receiving one; an skb's is its ifindex field.
    dev_field = ("ingress_ifindex" if info.prog_type is ProgType.XDP else "ifindex", 4)
    dev_offset = getattr(info.ctx, dev_field[0]).offset if hasattr(info.ctx, dev_field[0]) else -1

    def check_mtu(ctx: int, ifindex: int, mtu_len: int, len_diff: int, flags: int) -> int:
        run = state.current()
        wanted = vm.memory.load(mtu_len, 4)
        if info.prog_type is ProgType.XDP:
            bad_flags = flags != 0
        else:
            bad_flags = flags & ~BPF_MTU_CHK_SEGS != 0 or (flags & BPF_MTU_CHK_SEGS != 0 and (
                len_diff & MASK32 != 0 or wanted != 0))
        if bad_flags:
            return _err(EINVAL)
        ifindex &= MASK32
        if ifindex == 0 and dev_offset >= 0:
            ifindex = vm.memory.load(ctx + dev_offset, dev_field[1])
        iface = vm.std.host.interfaces.get(ifindex)
        if iface is None:
            return _err(ENODEV)
        length = wanted + ETH_HLEN if wanted else run.data_end - run.data
        length += len_diff & MASK32 if len_diff & (1 << 31) == 0 else (len_diff & MASK32) - (1 << 32)
        vm.memory.store(mtu_len, 4, iface.mtu & MASK32)
        return BPF_MTU_CHK_RET_FRAG_NEEDED if length > iface.mtu + ETH_HLEN else 0

    hash_at = SkBuff.hash.offset

    def set_hash(ctx: int, value: int, _c: int, _d: int, _e: int) -> int:
        state.current().hash_valid = True
        vm.memory.store(ctx + hash_at, 4, value & MASK32)
        return 0

    def set_hash_invalid(ctx: int, _b: int, _c: int, _d: int, _e: int) -> int:
        state.current().hash_valid = False
        vm.memory.store(ctx + hash_at, 4, 0)
        return 0

    def get_hash_recalc(ctx: int, _b: int, _c: int, _d: int, _e: int) -> int:
        run = state.current()
        if not run.hash_valid:  # computed now (the host says what the flow hashes to), and kept
            run.hash_valid = True
            vm.memory.store(ctx + hash_at, 4, vm.std.host.skb_hash & MASK32)
        return vm.memory.load(ctx + hash_at, 4)

    def csum_level(_ctx: int, op: int, _c: int, _d: int, _e: int) -> int:
        run = state.current()
        level = run.csum_level
        match op & MASK64:
            case CsumLevel.QUERY:
                return _err(EACCES) if level is None else level
            case CsumLevel.INC:
                run.csum_level = 0 if level is None else min(level + 1, SKB_MAX_CSUM_LEVEL)
            case CsumLevel.DEC:
                run.csum_level = None if not level else level - 1
            case CsumLevel.RESET:
                run.csum_level = None
            case _:
                return _err(EINVAL)
        return 0

    def clone_redirect(_ctx: int, ifindex: int, flags: int, _d: int, _e: int) -> int:
        run = state.current()
        host = vm.std.host
        if flags & ~BPF_F_INGRESS or ifindex & MASK32 not in host.interfaces:
            return _err(EINVAL)
        packet = vm.memory.read(run.data, run.data_end - run.data)
        host.clones.append((ifindex & MASK32, bool(flags & BPF_F_INGRESS), packet))
        return 0

    def skb_change_type(ctx: int, pkt_type: int, _c: int, _d: int, _e: int) -> int:
        # Only among host, broadcast, multicast and other host (the kernel's skb_pkt_type_ok).
        state.current()
        field = ctx + SkBuff.pkt_type.offset
        if vm.memory.load(field, 4) > PACKET_OTHERHOST or pkt_type & MASK32 > PACKET_OTHERHOST:
            return _err(EINVAL)
        vm.memory.store(field, 4, pkt_type & MASK32)
        return 0

    def skb_ecn_set_ce(ctx: int, _b: int, _c: int, _d: int, _e: int) -> int:
        run = state.current()
        net = run.data + int(run.frame.pkt.net_off)
        protocol = vm.memory.load(ctx + SkBuff.protocol.offset, 4)
        mm = vm.memory
        if protocol == ETH_P_IP_BE and net + IPV4_HLEN <= run.data_end:
            ecn = (mm.load(net + 1, 1) + 1) & 3  # the kernel's IP_ECN_set_ce, step by step
            if not ecn & 2:
                return int(not ecn)
            check, add = mm.load(net + 10, 2), (_swap16(0xFFFB) + _swap16(ecn)) & 0xFFFF
            check = (check + add) & 0xFFFF
            mm.store(net + 10, 2, check + (check < add))
            mm.store(net + 1, 1, mm.load(net + 1, 1) | 3)
            return 1
        if protocol == ETH_P_IPV6_BE and net + IPV6_HLEN <= run.data_end:
            if not mm.load(net + 1, 1) >> 4 & 3:
                return 0
            mm.store(net + 1, 1, mm.load(net + 1, 1) | 0x30)
            return 1
        return 0

    keep = (nat.ffi, lib)

    def c_helper(hid: HelperId, name: str, fn: Callable[[int, int, int, int, int], int], *args: str) -> Helper:
        return Helper(hid, name, fn, args=args, native=nat.address(f"jb_helper_{name.removeprefix('bpf_')}"),
                      keepalive=keep)

    candidates = [
        c_helper(H.SKB_LOAD_BYTES, "bpf_skb_load_bytes", skb_load_bytes, "ctx", "scalar", "uninit_mem", "size"),
        c_helper(H.SKB_STORE_BYTES, "bpf_skb_store_bytes", skb_store_bytes, "ctx", "scalar", "mem", "size", "scalar"),
        c_helper(H.XDP_ADJUST_HEAD, "bpf_xdp_adjust_head", in_run("jb_helper_xdp_adjust_head"), "ctx", "scalar"),
        c_helper(H.XDP_ADJUST_META, "bpf_xdp_adjust_meta", in_run("jb_helper_xdp_adjust_meta"), "ctx", "scalar"),
        c_helper(H.XDP_ADJUST_TAIL, "bpf_xdp_adjust_tail", in_run("jb_helper_xdp_adjust_tail"), "ctx", "scalar"),
        c_helper(H.REDIRECT, "bpf_redirect", in_run("jb_helper_redirect")),
        c_helper(H.REDIRECT_NEIGH, "bpf_redirect_neigh", in_run("jb_helper_redirect_neigh"),
                 "scalar", "mem_or_null", "size_or_zero", "scalar"),
        c_helper(H.SKB_ADJUST_ROOM, "bpf_skb_adjust_room", in_run("jb_helper_skb_adjust_room"),
                 "ctx", "scalar", "scalar", "scalar"),
        c_helper(H.SKB_CHANGE_PROTO, "bpf_skb_change_proto", in_run("jb_helper_skb_change_proto"),
                 "ctx", "scalar", "scalar"),
        c_helper(H.SKB_CHANGE_HEAD, "bpf_skb_change_head", in_run("jb_helper_skb_change_head"),
                 "ctx", "scalar", "scalar"),
        c_helper(H.SKB_CHANGE_TAIL, "bpf_skb_change_tail", in_run("jb_helper_skb_change_tail"),
                 "ctx", "scalar", "scalar"),
        c_helper(H.SKB_VLAN_PUSH, "bpf_skb_vlan_push", in_run("jb_helper_skb_vlan_push"),
                 "ctx", "scalar", "scalar"),
        c_helper(H.SKB_VLAN_POP, "bpf_skb_vlan_pop", in_run("jb_helper_skb_vlan_pop"), "ctx"),
        c_helper(H.L3_CSUM_REPLACE, "bpf_l3_csum_replace", in_run("jb_helper_l3_csum_replace"),
                 "ctx", "scalar", "scalar", "scalar", "scalar"),
        c_helper(H.L4_CSUM_REPLACE, "bpf_l4_csum_replace", in_run("jb_helper_l4_csum_replace"),
                 "ctx", "scalar", "scalar", "scalar", "scalar"),
        Helper(H.CSUM_UPDATE, "bpf_csum_update", csum_update, args=("ctx", "scalar")),
        # Reading the packet moves nothing: packet pointers stay valid ("ctx_read"), as in the kernel.
        c_helper(H.SKB_LOAD_BYTES_RELATIVE, "bpf_skb_load_bytes_relative", skb_load_bytes_relative,
                 "ctx_read", "scalar", "uninit_mem", "size", "scalar"),
        c_helper(H.SKB_PULL_DATA, "bpf_skb_pull_data", in_run("jb_helper_skb_pull_data"), "ctx", "scalar"),
        c_helper(H.XDP_GET_BUFF_LEN, "bpf_xdp_get_buff_len", in_run("jb_helper_xdp_get_buff_len"), "ctx_read"),
        c_helper(H.XDP_LOAD_BYTES, "bpf_xdp_load_bytes", xdp_copy_bytes(0), "ctx_read", "scalar", "uninit_mem",
                 "size"),
        c_helper(H.XDP_STORE_BYTES, "bpf_xdp_store_bytes", xdp_copy_bytes(1), "ctx_read", "scalar", "mem", "size"),
        Helper(H.CHECK_MTU, "bpf_check_mtu", check_mtu, args=("ctx_read", "scalar", "anything", "scalar", "scalar")),
        Helper(H.SET_HASH, "bpf_set_hash", set_hash, args=("ctx_read", "scalar")),
        Helper(H.SET_HASH_INVALID, "bpf_set_hash_invalid", set_hash_invalid, args=("ctx_read",)),
        Helper(H.GET_HASH_RECALC, "bpf_get_hash_recalc", get_hash_recalc, args=("ctx_read",)),
        Helper(H.CSUM_LEVEL, "bpf_csum_level", csum_level, args=("ctx_read", "scalar")),
        Helper(H.CLONE_REDIRECT, "bpf_clone_redirect", clone_redirect, args=("ctx", "scalar", "scalar")),
        Helper(H.SKB_ECN_SET_CE, "bpf_skb_ecn_set_ce", skb_ecn_set_ce, args=("ctx_read",)),
        Helper(H.SKB_CHANGE_TYPE, "bpf_skb_change_type", skb_change_type, args=("ctx_read", "scalar")),
        Helper(H.MSG_APPLY_BYTES, "bpf_msg_apply_bytes", msg_apply_bytes, args=("ctx", "scalar")),
        Helper(H.MSG_CORK_BYTES, "bpf_msg_cork_bytes", msg_cork_bytes, args=("ctx", "scalar")),
        Helper(H.SOCK_OPS_CB_FLAGS_SET, "bpf_sock_ops_cb_flags_set", sock_ops_cb_flags_set, args=("ctx", "scalar")),
        Helper(H.SKB_GET_TUNNEL_KEY, "bpf_skb_get_tunnel_key", skb_get_tunnel_key,
               args=("ctx", "uninit_mem", "size", "scalar")),
        Helper(H.SKB_SET_TUNNEL_KEY, "bpf_skb_set_tunnel_key", skb_set_tunnel_key,
               args=("ctx", "mem", "size", "scalar")),
        Helper(H.SYSCTL_GET_NAME, "bpf_sysctl_get_name", sysctl_get_name,
               args=("ctx", "uninit_mem", "size", "scalar")),
        Helper(H.SYSCTL_GET_CURRENT_VALUE, "bpf_sysctl_get_current_value", sysctl_get_current_value,
               args=("ctx", "uninit_mem", "size")),
        Helper(H.SYSCTL_GET_NEW_VALUE, "bpf_sysctl_get_new_value", sysctl_get_new_value,
               args=("ctx", "uninit_mem", "size")),
        Helper(H.SYSCTL_SET_NEW_VALUE, "bpf_sysctl_set_new_value", sysctl_set_new_value, args=("ctx", "mem", "size")),
    ]
    def sk_select_reuseport(ctx: int, map_addr: int, key: int, _flags: int, _e: int) -> int:
        state.current()
        m = next((m for m in vm.reachable_maps() if m.address == map_addr), None)
        if not isinstance(m, SockMap | SockHash):
            raise ExecutionError(f"bpf_sk_select_reuseport: {map_addr:#x} is no socket map of this program")
        raw = vm.memory.read(key, m.key_size)
        chosen = m.socket_for(raw) if isinstance(m, SockHash) else m.get(int.from_bytes(raw, "little"))
        if chosen is None:
            return _err(errno.ENOENT)
        assert vm.std is not None
        here = find_socket(vm.std.sockets, vm.memory, int.from_bytes(vm.memory.read(ctx + SkReuseportMd.sk.offset,
                                                                                     8), "little"))
        mine, theirs = socket_of(here[0] if here is not None else None), socket_of(chosen)
        if mine.protocol != theirs.protocol:
            return _err(errno.EPROTOTYPE)
        if mine.family != theirs.family:
            return _err(errno.EAFNOSUPPORT)
        state.local.selected = chosen  # the group's socket that gets it (run_sk_reuseport reports it)
        return 0

    if info.prog_type is ProgType.SK_REUSEPORT:
        candidates.append(Helper(H.SK_SELECT_REUSEPORT, "bpf_sk_select_reuseport", sk_select_reuseport,
                                 ("ctx_read", "map", "key", "scalar")))
    if info.prog_type in (ProgType.SCHED_CLS, ProgType.SCHED_ACT):
        candidates.append(Helper(H.SK_ASSIGN, "bpf_sk_assign", skb_sk_assign, ("ctx_read", "btf_sock_common",
                                                                                 "scalar")))
    if info.prog_type is ProgType.SK_LOOKUP:
        # vm.std read at each call: standard helpers installed again replace it
        candidates.append(sk_lookup_assign(lambda: vm.memory, lambda: vm.std.sockets, SkLookup.sk.offset,
                                           SkLookup.family.offset))
    if info.prog_type in _SOCKOPT_CONTEXTS:
        candidates += _sockopt_helpers(vm, state)
    if state.attach is not None:
        candidates += _func_arg_helpers(vm, state.attach)
        if state.seq is not None:  # the kernel gives the seq_file helpers to iterators only
            candidates += iterator_helpers(lambda: vm.memory, state.seq)
    allowed = section_helpers(info, state.section)
    return [h for h in candidates if h.id in allowed]


BPF_SOCK_OPS_WRITE_HDR_OPT_CB = 15  # the last sockops callback that holds the socket's lock
_SOCKOPT_CONTEXTS = frozenset({ProgType.SOCK_OPS, ProgType.CGROUP_SOCK_ADDR, ProgType.CGROUP_SOCKOPT})


def _sockopt_helpers(vm: VM, state: ProgramState) -> list[Helper]:
    """bpf_setsockopt and bpf_getsockopt (jitbpf.linux.sockopts) on the socket of a sockops or
    cgroup sock_addr context, or the socket a cgroup/setsockopt program passes (its ctx->sk). The
    context tells what the kernel reads of its socket (sockops: family, state, full socket, MSS;
    sock_addr: family, type, protocol); the rest comes from the ``Socket`` the caller set."""
    kind = state.info.prog_type

    def u32_at(addr: int) -> int:
        return int.from_bytes(vm.memory.read(addr, 4), "little")

    def target(r1: int) -> tuple[SocketOptions, SockView, int]:
        """The options and view of the call's socket, and -EOPNOTSUPP or 0."""
        state.current()
        std = vm.std
        assert std is not None  # program types come with the standard helpers
        if kind is ProgType.CGROUP_SOCKOPT:
            sk = r1
        else:
            sk_off = SockOps.sk.offset if kind is ProgType.SOCK_OPS else SockAddr.sk.offset
            sk = int.from_bytes(vm.memory.read(r1 + sk_off, 8), "little")
        found = find_socket(std.sockets, vm.memory, sk) if sk else None
        owner = found[0] if found is not None else None
        sock = socket_of(owner)
        error = 0
        if kind is ProgType.SOCK_OPS:
            ctx = r1
            view = SockView(u32_at(ctx + SockOps.family.offset), True, IPPROTO_TCP, u32_at(ctx + SockOps.state.offset),
                            bool(u32_at(ctx + SockOps.is_fullsock.offset)), u32_at(ctx + SockOps.mss_cache.offset),
                            u32_at(ctx + SockOps.data_segs_out.offset))
            if u32_at(ctx + SockOps.op.offset) > BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
                error = -errno.EOPNOTSUPP
        elif kind is ProgType.CGROUP_SOCK_ADDR:
            ctx = r1
            view = SockView(u32_at(ctx + SockAddr.family.offset), u32_at(ctx + SockAddr.type.offset) == SOCK_STREAM,
                            u32_at(ctx + SockAddr.protocol.offset), sock.state)
        else:
            view = SockView(sock.family, sock.type == SOCK_STREAM, sock.protocol, sock.state, sock.full,
                            sock.tcp.get("mss_cache", 0), sock.tcp.get("data_segs_out", 0))
        view = dataclasses.replace(view, priority=sock.priority, mark=sock.mark, bound_dev_if=sock.bound_dev_if)
        return std.sockets.options(owner), view, error

    def cb_flags(ctx: int) -> int | None:
        """The sockops context's bpf_sock_ops_cb_flags offset in the run's arena (None elsewhere)."""
        if kind is not ProgType.SOCK_OPS:
            return None
        run = state.current()
        return ctx - run.arena.address + SockOps.bpf_sock_ops_cb_flags.offset

    cb_key = (SOL_TCP, OptName.TCP_BPF_SOCK_OPS_CB_FLAGS)

    def set_opt(r1: int, level: int, optname: int, optval: int, size: int) -> int:
        opts, view, error = target(r1)
        if error:
            return _err(-error)
        std = vm.std
        assert std is not None
        names = {i: face.name for i, face in std.host.interfaces.items() if face.name}
        level, optname = _s32(level), _s32(optname)
        done = setsockopt(opts, view, std.host.net, names, level, optname, vm.memory.read(optval, size & MASK32))
        off = cb_flags(r1)
        if done == 0 and (level, optname) == cb_key and off is not None:  # the context's field is the option
            state.current().arena.view[off : off + 4] = opts.values[cb_key].to_bytes(4, "little")
        return _err(-done) if done else 0

    def get_opt(r1: int, level: int, optname: int, optval: int, size: int) -> int:
        opts, view, error = target(r1)
        size &= MASK32
        if error:
            vm.memory.write(optval, bytes(size))
            return _err(-error)
        std = vm.std
        assert std is not None
        off = cb_flags(r1)
        if off is not None:
            opts.values[cb_key] = int.from_bytes(state.current().arena.view[off : off + 4], "little")
        done, data = getsockopt(opts, view, std.host.net, _s32(level), _s32(optname), size)
        vm.memory.write(optval, data)
        return _err(-done) if done else 0

    first = "btf_sock_common" if kind is ProgType.CGROUP_SOCKOPT else "ctx"
    return [Helper(H.SETSOCKOPT, "bpf_setsockopt", set_opt, (first, "anything", "anything", "mem", "size")),
            Helper(H.GETSOCKOPT, "bpf_getsockopt", get_opt, (first, "anything", "anything", "uninit_mem", "size"))]


def _func_arg_helpers(vm: VM, attach: AttachTarget) -> list[Helper]:
    """bpf_get_func_arg, bpf_get_func_ret and bpf_get_func_arg_cnt: the attach target's argument
    slots read through the context (which the kernel's verifier inlines the same way)."""
    nargs = len(attach.args) - attach.has_return
    has_ret = section_attach_type(attach.section) in (AttachType.TRACE_FEXIT, AttachType.MODIFY_RETURN)

    def get_func_arg(ctx: int, n: int, value: int, _d: int, _e: int) -> int:
        if n & MASK32 >= nargs:
            return _err(EINVAL)
        vm.memory.store(value, 8, vm.memory.load(ctx + 8 * (n & MASK32), 8))
        return 0

    def get_func_ret(ctx: int, value: int, _c: int, _d: int, _e: int) -> int:
        if not has_ret:
            return _err(EOPNOTSUPP)
        vm.memory.store(value, 8, vm.memory.load(ctx + 8 * nargs, 8))
        return 0

    def get_func_arg_cnt(_ctx: int, _b: int, _c: int, _d: int, _e: int) -> int:
        return nargs

    return [
        Helper(H.GET_FUNC_ARG, "bpf_get_func_arg", get_func_arg, args=("ctx", "scalar", "uninit_long")),
        Helper(H.GET_FUNC_RET, "bpf_get_func_ret", get_func_ret, args=("ctx", "uninit_long")),
        Helper(H.GET_FUNC_ARG_CNT, "bpf_get_func_arg_cnt", get_func_arg_cnt, args=("ctx",)),
    ]


# -- running ---------------------------------------------------------------------------------------

Engine = str  # "interp" or "jit"
ENGINES = ("interp", "jit")


@dataclass
class RunResult:
    """What one run of a typed program produced."""

    retval: int  # r0, unsigned 64-bit
    ctx: ctypes.LittleEndianStructure  # the context after the run
    packet: bytes | None  # the packet after the run (packet types), else None
    redirect: int | None = None  # interface index given to bpf_redirect, if called
    extras: dict[str, int] = field(default_factory=dict)  # other helper effects (msg_apply_bytes, ...)
    flow_keys: BpfFlowKeys | None = None  # what a flow dissector left in its keys

    def fields(self) -> dict[str, Any]:
        """The context's fields after the run, by name."""
        return struct_fields(self.ctx)


def struct_fields(value: ctypes.LittleEndianStructure) -> dict[str, Any]:
    """The fields of a context structure as plain Python values (arrays become lists)."""
    out: dict[str, Any] = {}
    for name, *_ in value._fields_:
        if name.startswith("_"):
            continue
        item = getattr(value, name)
        if isinstance(item, ctypes.Array):
            out[name] = list(item)
        elif isinstance(item, ctypes.Structure):
            out[name] = struct_fields(cast(ctypes.LittleEndianStructure, item))
        else:
            out[name] = int(item)
    return out


def make_context(info: ProgramType, values: Mapping[str, Any] | None = None) -> ctypes.LittleEndianStructure:
    """A zeroed context of ``info``'s layout with the named fields set (arrays from sequences)."""
    ctx = info.ctx()
    for name, value in (values or {}).items():
        if name.startswith("_") or not hasattr(info.ctx, name):
            raise ValueError(f"{info.name} context has no field {name!r}")
        current = getattr(ctx, name)
        if isinstance(current, ctypes.Array):
            items = list(value)
            if len(items) > len(current):
                raise ValueError(f"{info.name} context field {name!r} holds {len(current)} values")
            for i, item in enumerate(items):
                current[i] = item
        elif isinstance(current, ctypes.Structure):
            setattr(ctx, name, value)
        else:
            setattr(ctx, name, int(value))
    return ctx


def _program_state(vm: VM) -> ProgramState:
    state: ProgramState | None = getattr(vm, "program_state", None)
    if state is None:
        raise ExecutionError("this VM has no program type: create it with VM(code, prog_type=...)")
    return state


def run_context(
    vm: VM,
    ctx: ctypes.LittleEndianStructure | Mapping[str, Any] | None = None,
    *,
    packet: bytes | bytearray | memoryview | None = None,
    engine: Engine = "interp",
) -> RunResult:
    """Run ``vm``'s program once on a context of its type (and a packet, for the packet types).

    Pointer fields of the context (``data``, ``data_end``, ...) are filled in; the others come
    from ``ctx`` (a structure of the type's layout, or a mapping of field names to values).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    outer = vm.enter_setup()  # the run's context memory is this thread's: one run of the VM at a time
    try:
        return _run_context(vm, ctx, packet, engine)
    finally:
        vm._leave(outer)


def _run_context(vm: VM, ctx: ctypes.LittleEndianStructure | Mapping[str, Any] | None,
                 packet: bytes | bytearray | memoryview | None, engine: Engine) -> RunResult:
    if ctx is not None and not isinstance(ctx, ctypes.Structure | Mapping):
        raise TypeError(f"the context is a structure of the type's layout or a dict of its fields, not "
                        f"{type(ctx).__name__}")
    state = _program_state(vm)
    info = state.info
    context = ctx if isinstance(ctx, ctypes.Structure) else make_context(info, ctx)
    if not isinstance(context, info.ctx):
        raise ValueError(f"{info.name} programs take a {info.ctx.__name__} context, not {type(context).__name__}")
    if packet is not None and not info.packet:
        raise ValueError(f"{info.name} programs take no packet")
    raw, derive = bytes(context), 0
    for off, value, how in _socket_fields(vm, info):  # whatever the caller put there
        raw = raw[:off] + value.to_bytes(8, "little") + raw[off + 8 :]
        derive |= how
    if state.layout.flow_keys != NO_FIELD:  # the frame builder points flow_keys to fresh keys
        derive |= native().lib.JB_DERIVE_FLOW_KEYS
    return _run(vm, state, raw, derive, packet_bytes(packet) if packet is not None else b"", engine)


def _run(vm: VM, state: ProgramState, template: bytes, derive: int, data: bytes, engine: Engine) -> RunResult:
    """One run on the context ``template`` (with the ``derive`` fields from the packet): in one
    native call when the program can run so (JIT, no Python helper), else through Python."""
    info = state.info
    if engine == "jit":
        b = pktrun.binding(vm, state, len(data))
        done = pktrun.run_fast(state, template, data, derive)
        if done is None and b.frame is not None:  # another program took its native table entry
            pktrun.register(state, b)
            done = pktrun.run_fast(state, template, data, derive)
        if done is not None:
            retval, out = done
            assert b.view is not None
            after = info.ctx.from_buffer_copy(b.view[0 : state.layout.ctx_size])
            return RunResult(retval, after, out if info.packet else None, _redirect_of(b.frame),
                             flow_keys=_flow_keys_of(state, b.view))
    elif engine != "interp":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return _run_python(vm, state, template, derive, data, engine)


def _flow_keys_of(state: ProgramState, arena: Any) -> BpfFlowKeys | None:
    """A flow dissector's keys after its run in ``arena`` (None for other programs)."""
    if state.layout.flow_keys == NO_FIELD:
        return None
    return BpfFlowKeys.from_buffer_copy(arena[FLOW_KEYS_OFF : FLOW_KEYS_OFF + ctypes.sizeof(BpfFlowKeys)])


def _run_python(vm: VM, state: ProgramState, template: bytes, derive: int, data: bytes, engine: Engine) -> RunResult:
    """A run through the VM's region runners (the interpreter, or the JIT with Python helpers
    and tail calls), on memory the native frame builder laid out."""
    info = state.info
    arena, ctx_region, pkt_region = state.arena(CTX_AREA + info.headroom + len(data) + info.tailroom)
    frame = pktrun.new_frame(state.layout, arena)
    pktrun.build_frame(frame, template, data, derive)
    run = ProgramRun(info, arena, frame, tunnel=getattr(state.local, "tunnel", None))
    state.local.sent_tunnel = state.local.assigned = None
    base = arena.address
    extra = [pkt_region] if info.packet else []
    if state.layout.flow_keys != NO_FIELD:
        keys = slice(FLOW_KEYS_OFF, FLOW_KEYS_OFF + ctypes.sizeof(BpfFlowKeys))
        extra.append(Region(base + FLOW_KEYS_OFF, keys.stop - keys.start, arena.view[keys], True, "flow keys"))
    if info.socket_fields:
        assert vm.std is not None
        extra += vm.std.sockets.regions()
        if info.ctx is SkBuff:  # the packet's own socket, when the frame builder laid it out
            extra.append(Region(base + SOCK_OFF, BPF_SOCK_SIZE, arena.view[SOCK_OFF : SOCK_OFF + BPF_SOCK_SIZE],
                                False, PACKET_SOCKET_REGION))
    # LD_ABS/LD_IND read the packet where the native helpers leave it: the frame's run state.
    nat = native()
    bounds, net = (int(nat.ffi.cast("uintptr_t", nat.ffi.addressof(frame.pkt, f))) for f in ("data", "net_off"))
    legacy = LegacyPacket(bounds, net, frame)
    states = [state, *_tail_call_states(vm)]
    for s in states:
        s.local.run = run
    previous = nat.lib.jb_pkt_enter(nat.ffi.addressof(frame, "pkt"))  # what the C helpers act on
    try:
        if engine == "jit":
            retval = vm.execute_jit_regions(ctx_region, extra, base, 0, packet=legacy)
        else:
            retval = vm.execute_regions(ctx_region, extra, base, 0, packet=legacy)
    finally:
        nat.lib.jb_pkt_enter(previous)
        for s in states:
            s.local.run = None
    after = info.ctx.from_buffer_copy(arena.view[0 : state.layout.ctx_size])
    extras = {k: v for k, v in (("msg_apply_bytes", run.msg_apply), ("msg_cork_bytes", run.msg_cork))
              if v is not None}
    return RunResult(retval, after, run.packet_bytes() if info.packet else None, run.redirect, extras,
                     _flow_keys_of(state, arena.view))


def _run_packet(vm: VM, state: ProgramState, template: bytes, derive: int, data: bytes, engine: Engine
                ) -> tuple[int, bytes]:
    """r0 and the packet after one run: the single native call when it can be, without building
    the rest of a RunResult (what run_xdp and the other packet runners return)."""
    done = pktrun.run_fast(state, template, data, derive) if engine == "jit" else None
    if done is not None:
        return done
    res = _run(vm, state, template, derive, data, engine)
    assert res.packet is not None
    return res.retval, res.packet


def packet_bytes(packet: Any, what: str = "packet") -> bytes:
    """The bytes of a packet the caller gives: a buffer's (a numpy scalar's too, which bytes()
    reads as a number), or an iterable's of byte values (a list of ints); TypeError for a
    number, which bytes() would take as a length, and for anything else."""
    if isinstance(packet, int):
        raise TypeError(f"the {what} must be bytes or a buffer, not {type(packet).__name__}")
    try:
        with memoryview(packet) as view:
            return view.tobytes()
    except TypeError:
        pass
    try:
        return bytes(packet)
    except TypeError:
        raise TypeError(f"the {what} must be bytes or a buffer, not {type(packet).__name__}") from None


def run_batch(vm: VM, state: ProgramState, template: bytes, derive: int,
              packets: pktrun.Batch | Iterable[bytes | bytearray | memoryview], *, engine: Engine = "jit",
              threads: int = 1, keep_packets: bool = False, keep_errors: bool = False) -> pktrun.BatchOutcome:
    """Every packet of ``packets`` run on the context ``template``: with the JIT (and no Python
    helper) in native loops, over ``threads`` threads; else one run at a time. Packets given
    as bytes objects are read where they are (unless kept: then they are packed first)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int, not {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    if not isinstance(packets, pktrun.Batch | list | tuple):
        packets = list(packets)  # (a generator is read once: every path below reads the packets again)
    items, longest = (None, -1) if engine != "jit" or keep_packets else pktrun.in_place(packets)
    if items is not None and threads == 1:  # the common case, without the thread split's calls
        b = pktrun.binding(vm, state, longest)
        if b.frame is not None:
            outcome = pktrun.BatchOutcome(array.array("Q"), None, {} if keep_errors else None)
            outcome.results = pktrun.run_items(state, b, template, derive, items, 0, len(items), outcome)
            return outcome
    batch = None if items is not None else packets if isinstance(packets, pktrun.Batch) else pktrun.Batch.of(packets)
    if batch is not None:
        batch.check()  # (before any engine reads a packet from where the batch says it lies)
    if batch is not None:
        longest = batch.longest if batch.longest >= 0 else max(batch.lens, default=0)
    n = len(items) if items is not None else len(batch.lens) if batch is not None else 0
    outcome = pktrun.BatchOutcome(array.array("Q"), [b""] * n if keep_packets else None, {} if keep_errors else None)
    probe = pktrun.binding(vm, state, longest) if engine == "jit" else None
    if probe is not None and probe.frame is not None:
        def run(lo: int, hi: int) -> array.array[int]:
            b = pktrun.binding(vm, state, longest)
            if items is not None:
                return pktrun.run_items(state, b, template, derive, items, lo, hi, outcome)
            assert batch is not None
            return pktrun.run_slice(b, template, derive, batch, lo, hi, outcome, outcome.packets)

        outcome.results = vm.workers.split(n, threads, run)
        return outcome
    if batch is None:
        assert items is not None
        batch = pktrun.Batch.of(items)
    view = memoryview(batch.data)
    for i, (off, ln) in enumerate(zip(batch.offsets, batch.lens, strict=True)):
        try:
            res = _run(vm, state, template, derive, bytes(view[off : off + ln]), engine)
        except ExecutionError as err:
            if outcome.errors is None:
                err.add_note(f"in packet {i} of the batch")
                raise
            outcome.errors[i] = err
            outcome.results.append(ERROR_RESULT)
            continue
        outcome.results.append(res.retval)
        if outcome.packets is not None and res.packet is not None:
            outcome.packets[i] = res.packet
    return outcome


def run_btf_args(vm: VM, state: ProgramState, args: Sequence[Any], ret: Any, engine: Engine) -> int:
    """One run of a BTF-typed program: its argument slots built from ``args`` (and ``ret``),
    the objects pointers point to laid out in read-only pages the run is given."""
    from jitbpf.linux.btfctx import Objects

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    attach = state.attach
    assert attach is not None
    nparams = len(attach.args) - attach.has_return
    if len(args) != nparams:
        raise ValueError(f"{attach.section} takes {nparams} argument(s) ({', '.join(attach.names[:nparams])}), "
                         f"not {len(args)}")
    values = [*args, ret] if attach.has_return else list(args)
    objects = Objects(state.types)
    slots: list[tuple[int, int]] = []  # (value, 0) or (handle, 1)
    for name, slot, tid, value in zip(attach.names, attach.args, attach.types, values, strict=True):
        if value is None or isinstance(value, int):
            number = (value or 0) & MASK64
            if not slot.type_id and slot.size < 8:
                number &= (1 << 8 * slot.size) - 1
                if slot.signed and number >> (8 * slot.size - 1):
                    number |= MASK64 ^ ((1 << 8 * slot.size) - 1)  # sign-extended, as the verifier assumes
            slots.append((number, 0))
        else:
            pointee = slot.type_id or _pointee(state, tid)
            slots.append((objects.add(value, pointee, f"{attach.section} argument {name}"), 1))
    outer = vm.enter_setup()  # the arena is this thread's: one run of the VM at a time
    try:
        arena, ctx_region, _frame = state.arena(CTX_AREA)
        regions = objects.place(arena, CTX_AREA)  # after the context, in the arena when they fit
        raw = b"".join((objects.address(v) if is_obj else v).to_bytes(8, "little") for v, is_obj in slots)
        arena.view[0:CTX_AREA] = raw.ljust(CTX_AREA, b"\0")
        if engine == "jit":
            return vm.execute_jit_regions(ctx_region, regions, arena.address, 0)
        return vm.execute_regions(ctx_region, regions, arena.address, 0)
    finally:
        vm._leave(outer)
        objects.close()


def _pointee(state: ProgramState, type_id: int) -> int:
    """The struct a pointer-typed slot points to, for a dict argument (0 when not a struct)."""
    from jitbpf.linux.elf import BtfKind

    if state.types is None or not type_id:
        return 0
    btf = state.types.btf
    _, t = btf.resolve(type_id)
    if t.kind is not BtfKind.PTR:
        return 0
    target, pointee = btf.resolve(t.size_or_type)
    return target if pointee.kind in (BtfKind.STRUCT, BtfKind.UNION) else 0


def _tail_call_states(vm: VM) -> list[ProgramState]:
    """The program-type states of every VM a tail call from ``vm`` may reach: the run is theirs too."""
    found: list[ProgramState] = []
    seen = {id(vm)}
    todo = [vm]
    while todo:
        current = todo.pop()
        for m in current.maps.values():
            if int(getattr(m, "map_type", 0)) != 3:  # BPF_MAP_TYPE_PROG_ARRAY
                continue
            for index in m:
                target = m.get(index)
                if target is not None and id(target) not in seen:
                    seen.add(id(target))
                    todo.append(target)
                    if target.program_state is not None:
                        found.append(target.program_state)
    return found


BATCH_TYPES = (ProgType.XDP, ProgType.SOCKET_FILTER, ProgType.SCHED_CLS, ProgType.SCHED_ACT, ProgType.CGROUP_SKB,
               ProgType.SK_SKB)  # the program types run_batch takes
_XDP = ProgType.XDP  # a global: cheaper than the enum's attribute on every run
_XDP_ACTIONS = tuple(XdpAction)  # by value: cheaper than calling the enum on every run
# The types each __sk_buff runner takes, built once (an enum attribute costs a lookup each run)
_SOCKET_FILTER_KINDS = (ProgType.SOCKET_FILTER,)
_TC_KINDS = (ProgType.SCHED_CLS, ProgType.SCHED_ACT)
_CGROUP_SKB_KINDS = (ProgType.CGROUP_SKB,)
_LWT_KINDS = (ProgType.LWT_IN, ProgType.LWT_OUT, ProgType.LWT_XMIT)
_SK_SKB_KINDS = (ProgType.SK_SKB,)
_TC_ACTIONS_U32 = {int(a) & MASK32: a for a in TcAction}  # by r0's low 32 bits
_TC_ACTIONS = tuple(a for a in TcAction if a >= 0)  # by value, as _XDP_ACTIONS (UNSPEC is past the end)
_SK_ACTIONS = tuple(SkAction)


def _xdp_action(retval: int) -> int:
    value = retval & MASK32
    return _XDP_ACTIONS[value] if value < len(_XDP_ACTIONS) else value


def _tc_action(retval: int) -> int:
    action = _TC_ACTIONS_U32.get(retval & MASK32)
    return action if action is not None else _s32(retval)


def _sk_action(retval: int) -> int:
    value = retval & MASK32
    return _SK_ACTIONS[value] if value < len(_SK_ACTIONS) else value


_DERIVE_WIRE_LEN = 4  # enum jb_derive: wire_len from the packet (the other members are read from the library)


def _socket_fields(vm: VM, info: ProgramType) -> list[tuple[int, int, int]]:
    """The context's socket pointer fields: each one's offset, what it holds, and
    JB_DERIVE_SOCKET when the frame builder lays out the packet's own socket and points it there
    instead (a packet program's default socket, ``PACKET_SOCKET``)."""
    out = []
    for off, nullable in info.socket_fields:
        if off in info.null_sockets:
            out.append((off, 0, 0))
            continue
        std = vm.std
        assert std is not None  # program types come with the standard helpers
        sock = std.socket
        if sock is PACKET_SOCKET and info.ctx is SkBuff:
            out.append((off, 0, native().lib.JB_DERIVE_SOCKET))
            continue
        if sock is None or sock is PACKET_SOCKET:
            if nullable:
                out.append((off, 0, 0))
                continue
            sock = PACKET_SOCKET  # a context whose socket is never NULL: an anonymous one
        out.append((off, std.sockets.address(sock), 0))
    return out


def _skb_template(state: ProgramState, fields: Mapping[str, Any], protocol: int,
                  sk: tuple[int, int, int] | None) -> tuple[bytes, int]:
    """The initial ``__sk_buff`` of a packet run, and what the frame builder derives from each
    packet: ``protocol`` (the jb_derive way to find it) and ``wire_len``, unless ``fields``
    give them; ``len`` always follows the packet; ``sk`` is the socket (see _socket_fields)."""
    _off, sk_value, sk_derive = sk or (0, 0, 0)
    # The Ethernet destination of a tc or socket filter frame gives the packet type, as the test
    # run's eth_type_trans does (cgroup_skb and lwt packets start at the network header).
    ethernet = state.info.prog_type in (ProgType.SCHED_CLS, ProgType.SCHED_ACT, ProgType.SOCKET_FILTER)
    pkt_type = native().lib.JB_DERIVE_PKT_TYPE if ethernet else 0
    if not fields:
        key: Hashable = (protocol, sk_value)
        derive = protocol | _DERIVE_WIRE_LEN | pkt_type | sk_derive
    else:
        key = (protocol, sk_value, *sorted(fields.items()))
        derive = (0 if "protocol" in fields else protocol) | (0 if "wire_len" in fields else _DERIVE_WIRE_LEN)
        derive |= (0 if "pkt_type" in fields else pkt_type) | sk_derive
    try:
        template = state.templates.get(key)
    except TypeError:  # unhashable field values (lists): built each time
        return bytes(make_context(state.info, _skb_values(fields, sk_value))), derive
    return template or state.add_template(key, _skb_values(fields, sk_value)), derive


def _skb_values(fields: Mapping[str, Any], sk_value: int) -> dict[str, Any]:
    """The ``__sk_buff`` fields of a packet run's initial context: the caller's over the defaults."""
    return {"ifindex": 1, "ingress_ifindex": 1, **fields, "sk": sk_value}




def _regs_context(regs: Mapping[str, int] | Sequence[int]) -> PtRegs:
    ctx = PtRegs()
    if isinstance(regs, Mapping):
        for name, value in regs.items():
            if name not in PT_REGS_NAMES:
                raise ValueError(f"pt_regs has no register {name!r} (registers: {', '.join(PT_REGS_NAMES)})")
            setattr(ctx, name, value & MASK64)
    else:
        if len(regs) > len(PT_REGS_ARGS):
            raise ValueError(f"at most {len(PT_REGS_ARGS)} arguments (PT_REGS_PARM1..5)")
        for name, value in zip(PT_REGS_ARGS, regs, strict=False):
            setattr(ctx, name, value & MASK64)
    return ctx


def btf_types(btf: BtfSource | None, what: str) -> BtfTypes:
    """The target BTF of a BTF-typed program: ``btf`` (a ``Btf``, ``BtfTypes``, a raw BTF
    file's path or bytes), else the running kernel's."""
    from jitbpf.linux.btfctx import AttachError, BtfTypes
    from jitbpf.linux.elf import VMLINUX_BTF, _target_btf

    if isinstance(btf, BtfTypes):
        return btf
    found = _target_btf(btf)
    if found is None:
        raise AttachError(f"{what} is typed by the kernel's BTF, and there is none: {VMLINUX_BTF} is not "
                          "readable; give the target BTF (btf= a vmlinux BTF file, its bytes or a Btf)")
    return BtfTypes(found)


def _attach_state(info: ProgramType, attach: str | None, btf: BtfSource | None) -> ProgramState:
    from jitbpf.linux.btfctx import AttachError, resolve_attach

    if attach is None and len(info.sections) == 1 and not info.sections[0].endswith("/"):
        attach = info.sections[0]  # a type with one context for all its programs (netfilter)
    if attach is None:
        raise AttachError(f"a {info.name} program needs its attach target: give attach= its section name "
                          f"({', '.join(s + '...' for s in info.sections[:3])})")
    types = btf_types(btf, f"attach target {attach!r}")
    state = ProgramState(info, resolve_attach(types, attach), types)
    state.btf_source = btf
    return state


def _setup(vm: Any, prog_type: ProgType | int | str | None, attach: str | None = None,
           btf: BtfSource | None = None) -> None:
    """Give ``vm`` a program type: its state, and the helpers that belong to the type (for the
    BTF-typed types, the attach target's context typed by ``btf``)."""
    if prog_type is None:
        vm.prog_type = None
        vm.program_state = None
        return
    kind = program_type(prog_type)
    vm.prog_type = kind
    if kind is ProgType.UNSPEC:
        vm.program_state = None
        return
    info = PROGRAM_TYPES[kind]
    state = _attach_state(info, attach, btf) if info.btf_typed else ProgramState(info, section=attach)
    vm.program_state = state
    use_standard: Callable[[], object] | None = getattr(vm, "use_standard_helpers", None)
    if use_standard is not None:
        use_standard()
    for helper in program_helpers(vm, state):
        vm.register_helper(helper)


class ProgramRunners:
    """The per-type ``run_*`` methods of ``VM`` (mixed into it): see each method.

    Every method takes ``engine="interp"`` (the reference interpreter) or ``"jit"``.
    """

    prog_type: ProgType | None  # the program type, when the VM was given one
    program_state: ProgramState | None  # per-thread run memory of the program type
    std: Any  # the standard helpers' context (jitbpf.linux.stdhelpers), which program types come with

    def _init_program_type(self, prog_type: ProgType | int | str | None, attach: str | None = None,
                           btf: BtfSource | None = None) -> None:
        _setup(self, prog_type, attach, btf)

    def _config_changed(self) -> None:
        state = getattr(self, "program_state", None)
        if state is not None:
            state.config_changed()

    def _vm(self) -> VM:
        return cast("VM", self)

    def context_spec(self) -> ContextSpec | None:
        """The verifier's description of this program type's context (None without a type)."""
        state = self.program_state
        if state is None:
            return None
        if state.attach is not None:
            return _btf_context_spec(state.attach, state.types)
        return state.info.context_spec(state.section)

    def _check_program_type(self) -> dict[int, str]:
        """Maps the program type may not use are refused; the helpers it may not call, returned."""
        state = self.program_state
        if state is None:
            return {}
        check_program_maps(self._vm(), state.info)
        return refused_helpers(self._vm(), state.info, state.section)

    def _expect(self, *kinds: ProgType) -> None:
        if self.prog_type not in kinds:
            names = " or ".join(PROGRAM_TYPES[k].name for k in kinds)
            info = PROGRAM_TYPES.get(self.prog_type) if self.prog_type is not None else None
            have = info.name if info is not None else "no program type"
            raise ExecutionError(f"this is not a {names} program ({have})")

    @property
    def tunnel(self) -> TunnelInfo | None:
        """The tunnel metadata this thread's packets arrive with, which bpf_skb_get_tunnel_key
        reads (None, the default: none, as in the kernel's test runs: the helper fails with
        -EINVAL)."""
        return getattr(_program_state(self._vm()).local, "tunnel", None)

    @tunnel.setter
    def tunnel(self, info: TunnelInfo | None) -> None:
        _program_state(self._vm()).local.tunnel = info

    @property
    def tc_ingress(self) -> bool:
        """Whether this thread's tc packets run at ingress, where bpf_sk_assign may steer them to a
        socket (False, the default: as in the kernel's test runs, where it fails with -EOPNOTSUPP)."""
        return bool(getattr(_program_state(self._vm()).local, "tc_ingress", False))

    @tc_ingress.setter
    def tc_ingress(self, ingress: bool) -> None:
        _program_state(self._vm()).local.tc_ingress = ingress

    @property
    def assigned_socket(self) -> object | None:
        """The socket bpf_sk_assign gave the packet in this thread's latest tc run (None: none)."""
        return getattr(_program_state(self._vm()).local, "assigned", None)

    @property
    def sent_tunnel(self) -> TunnelInfo | None:
        """What bpf_skb_set_tunnel_key stored in this thread's latest run (None: it was not called)."""
        return getattr(_program_state(self._vm()).local, "sent_tunnel", None)

    def run_context(self, ctx: ctypes.LittleEndianStructure | Mapping[str, Any] | None = None, *,
                    packet: bytes | bytearray | memoryview | None = None, engine: Engine = "interp") -> RunResult:
        """Run once on a context of the VM's program type; the full result (r0, context, packet)."""
        return run_context(self._vm(), ctx, packet=packet, engine=engine)

    def run_xdp(self, packet: bytes | bytearray | memoryview, *, engine: Engine = "interp",
                ingress_ifindex: int = 1, rx_queue_index: int = 0) -> tuple[int, bytes]:
        """XDP: ``(action, packet after the run)``; action is an ``XdpAction`` when r0 is one."""
        state = self.program_state
        # The per-packet path, inline (a Python call costs a fifth of the whole run): one native
        # call that names the action, when this thread's binding is good for the run.
        if (engine == "jit" and state is not None and ingress_ifindex == 1 and rx_queue_index == 0
                and (template := state.xdp_default) is not None):
            done = state.pkt_run(state.token, template, 0, packet, _XDP_ACTIONS)
            if done is not None:
                if len(done) == 2:
                    return done  # type: ignore[return-value]  # (action, packet after)
                return _xdp_action(pktrun.finish(done[2], ERROR_RESULT)), done[1]  # stopped early
        return self._run_xdp(packet, engine, ingress_ifindex, rx_queue_index)

    def _run_xdp(self, packet: bytes | bytearray | memoryview, engine: Engine, ingress_ifindex: int,
                 rx_queue_index: int) -> tuple[int, bytes]:
        """run_xdp when its native path did not run: the first run, other fields, the interpreter."""
        state = self.program_state
        if state is None or self.prog_type is not _XDP:
            self._expect(ProgType.XDP)
        assert state is not None
        key = (ingress_ifindex, rx_queue_index)
        template = state.templates.get(key) or state.add_template(
            key, {"ingress_ifindex": ingress_ifindex, "rx_queue_index": rx_queue_index})
        if key == (1, 0):
            state.xdp_default = template
        data = packet if type(packet) is bytes else packet_bytes(packet)
        retval, after = _run_packet(self._vm(), state, template, 0, data, engine)
        return _xdp_action(retval), after

    def run_socket_filter(self, packet: bytes | bytearray | memoryview, *, engine: Engine = "interp",
                          **skb: Any) -> int:
        """Socket filter: how many bytes of the packet to keep (0 drops it)."""
        return self._run_skb(_SOCKET_FILTER_KINDS, packet, engine, skb)[0] & MASK32

    def run_tc(self, packet: bytes | bytearray | memoryview, *, engine: Engine = "interp",
               **skb: Any) -> tuple[int, bytes]:
        """tc classifier/action: ``(verdict, packet after)``; verdict is a ``TcAction`` when r0 is one."""
        # The per-packet path inline, as run_xdp's: the native call names the action.
        if (engine == "jit" and not skb and (state := self.program_state) is not None
                and (cached := state.skb_default) is not None and self.prog_type in _TC_KINDS
                and cached[0] is (std.socket if (std := self.std).socket_set else PACKET_SOCKET)):
            done = state.pkt_run(state.token, cached[1], cached[2], packet, _TC_ACTIONS)
            if done is not None:
                if len(done) == 2:
                    return done if type(done[0]) is not int else (_tc_action(done[0]), done[1])
                return _tc_action(pktrun.finish(done[2], ERROR_RESULT)), done[1]  # stopped early
        retval, after = self._run_skb(_TC_KINDS, packet, engine, skb)
        return _tc_action(retval), after

    def run_cgroup_skb(self, packet: bytes | bytearray | memoryview, *, engine: Engine = "interp",
                       **skb: Any) -> int:
        """cgroup_skb: 1 lets the packet through, 0 drops it. The packet starts at the IP header."""
        return self._run_skb(_CGROUP_SKB_KINDS, packet, engine, skb)[0] & MASK32

    def run_lwt(self, packet: bytes | bytearray | memoryview, *, engine: Engine = "interp",
                **skb: Any) -> tuple[int, bytes]:
        """Lightweight tunnel (lwt_in, lwt_out, lwt_xmit): ``(r0, packet after)``; the packet starts
        at the network header, as for cgroup_skb."""
        return self._run_skb(_LWT_KINDS, packet, engine, skb)

    def run_sk_skb(self, packet: bytes | bytearray | memoryview, *, engine: Engine = "interp",
                   **skb: Any) -> tuple[int, bytes]:
        """sk_skb: ``(verdict or parsed length, data after)``; a verdict is an ``SkAction``."""
        retval, after = self._run_skb(_SK_SKB_KINDS, packet, engine, skb)
        return _sk_action(retval), after

    def _run_skb(self, kinds: tuple[ProgType, ...], packet: bytes | bytearray | memoryview, engine: Engine,
                 skb: Mapping[str, Any]) -> tuple[int, bytes]:
        state = self.program_state
        if state is None or self.prog_type not in kinds:
            self._expect(*kinds)
        assert state is not None
        # The per-packet path, as run_xdp's: one native call on the context of no fields given,
        # while the socket the context was built for is still the one the caller set.
        if (engine == "jit" and not skb and (cached := state.skb_default) is not None
                and cached[0] is (std.socket if (std := self.std).socket_set else PACKET_SOCKET)):
            done = state.pkt_run(state.token, cached[1], cached[2], packet)
            if done is not None:
                if len(done) == 2:
                    return done  # type: ignore[return-value]  # (r0, packet after)
                return pktrun.finish(done[2], ERROR_RESULT), done[1]  # stopped early: its error
        state, template, derive = self._packet_context(skb)
        data = packet if type(packet) is bytes else packet_bytes(packet)
        return _run_packet(self._vm(), state, template, derive, data, engine)

    def _packet_context(self, fields: Mapping[str, Any]) -> tuple[ProgramState, bytes, int]:
        """The program state, initial context and derived fields of a packet run with ``fields``."""
        state = self.program_state
        if not fields and state is not None and state.xdp_default is not None and self.prog_type is _XDP:
            return state, state.xdp_default, 0  # the same fields as run_xdp's defaults
        lib = native().lib
        match self.prog_type:
            case ProgType.XDP:
                assert state is not None
                key = ("xdp", *sorted(fields.items()))
                template = state.templates.get(key) or state.add_template(key, {"ingress_ifindex": 1, **fields})
                if not fields:
                    state.xdp_default = template
                return state, template, 0
            case ProgType.SOCKET_FILTER | ProgType.SCHED_CLS | ProgType.SCHED_ACT | ProgType.SK_SKB:
                assert state is not None
                return self._skb_context(state, fields, lib.JB_DERIVE_ETH_PROTOCOL)
            case ProgType.CGROUP_SKB | ProgType.LWT_IN | ProgType.LWT_OUT | ProgType.LWT_XMIT:
                assert state is not None
                return self._skb_context(state, fields, lib.JB_DERIVE_IP_PROTOCOL)
            case _:
                self._expect(*BATCH_TYPES)
                raise AssertionError("unreachable")

    def _skb_context(self, state: ProgramState, fields: Mapping[str, Any], protocol: int
                     ) -> tuple[ProgramState, bytes, int]:
        """_packet_context of an ``__sk_buff`` type. Without fields and with no socket address
        in it (the packet's own socket, or none), the context is kept for _run_skb's native path."""
        vm = self._vm()
        sk = _socket_fields(vm, state.info)
        template, derive = _skb_template(state, fields, protocol, sk[0])
        if not fields and all(value == 0 for _off, value, _how in sk):
            state.skb_default = (vm.std.socket, template, derive)
        return state, template, derive

    def run_batch(self, packets: Iterable[bytes | bytearray | memoryview] | pktrun.Batch, *,
                  engine: Engine = "jit", threads: int = 1, keep_packets: bool = False, keep_errors: bool = False,
                  **fields: Any) -> pktrun.BatchOutcome:
        """Run an XDP, tc, socket filter, cgroup_skb or sk_skb program on every packet, with the
        context fields given by name: ``outcome.results`` holds each r0 (``array("Q")``), and
        with ``keep_packets`` ``outcome.packets`` each packet after its run.

        With the JIT, programs that call no Python helper run the whole batch in native loops,
        ``threads`` of them (the GIL released, each thread with its own CPU id for per-CPU
        maps); others run one packet at a time. A failing packet raises its error, with a note
        naming its index; with ``keep_errors`` the batch goes on, and ``outcome.errors`` holds
        the errors by index (their r0 is ``ERROR_RESULT``).
        """
        state, template, derive = self._packet_context(fields)
        return run_batch(self._vm(), state, template, derive, packets, engine=engine, threads=threads,
                         keep_packets=keep_packets, keep_errors=keep_errors)

    def run_sk_msg(self, message: bytes | bytearray | memoryview, *, engine: Engine = "interp",
                   **fields: Any) -> int:
        """sk_msg: ``SkAction.PASS`` or ``SkAction.DROP`` for one sendmsg payload."""
        self._expect(ProgType.SK_MSG)
        data = packet_bytes(message, "message")
        res = run_context(self._vm(), {"size": len(data), **fields}, packet=data, engine=engine)
        return _sk_action(res.retval)

    def run_kprobe(self, regs: Mapping[str, int] | Sequence[int] = (), *, engine: Engine = "interp") -> int:
        """kprobe: r0 for registers given by name (``{"di": 1}``) or as the probed function's arguments."""
        self._expect(ProgType.KPROBE)
        return run_context(self._vm(), _regs_context(regs), engine=engine).retval

    def run_perf_event(self, regs: Mapping[str, int] | Sequence[int] = (), *, sample_period: int = 0,
                       addr: int = 0, engine: Engine = "interp") -> int:
        """perf_event: r0 for one sample (registers as ``run_kprobe``, plus period and address)."""
        self._expect(ProgType.PERF_EVENT)
        ctx = PerfEventData(regs=_regs_context(regs), sample_period=sample_period, addr=addr)
        return run_context(self._vm(), ctx, engine=engine).retval

    def run_tracepoint(self, record: bytes | Sequence[int] = b"", *, engine: Engine = "interp") -> int:
        """tracepoint (raw bytes of the record) or raw_tracepoint (u64 arguments): r0."""
        self._expect(ProgType.TRACEPOINT, ProgType.RAW_TRACEPOINT, ProgType.RAW_TRACEPOINT_WRITABLE)
        raw = record if isinstance(record, bytes) else b"".join((v & MASK64).to_bytes(8, "little") for v in record)
        if len(raw) > CTX_AREA:
            raise ValueError(f"a tracepoint record holds at most {CTX_AREA} bytes")
        return run_context(self._vm(), RawContext.from_buffer_copy(raw.ljust(CTX_AREA, b"\0")), engine=engine).retval

    def run_tracing(self, *args: Any, ret: Any = 0, engine: Engine = "interp") -> Any:
        """BTF-typed programs (fentry, fexit, fmod_ret, tp_btf, iter, lsm, struct_ops, freplace):
        r0 for one call of the attach target with ``args`` (and, for fexit and lsm, its return
        value ``ret``); fmod_ret gives ``(r0, override)``, override being what the function
        returns instead (None when r0 is 0: the function runs).

        A scalar argument is an int (cut to its C type). A pointer argument is an int (an
        address: loads from memory the run was not given read as 0, as in the kernel), None
        (NULL), or the object it points to: bytes, a str (a C string), a ctypes value, or a dict
        by field name through the target BTF, whose pointer fields may again be objects.
        """
        self._expect(ProgType.TRACING, ProgType.LSM, ProgType.STRUCT_OPS, ProgType.EXT, ProgType.NETFILTER)
        state = self.program_state
        assert state is not None and state.attach is not None
        retval = run_btf_args(self._vm(), state, args, ret, engine)
        if section_attach_type(state.attach.section) is AttachType.MODIFY_RETURN:
            return retval, _s32(retval) if retval & MASK32 else None
        return retval

    def run_iter(self, objects: Iterable[Any] = (), *, engine: Engine = "interp") -> IterRead:
        """Read an iterator's file (iter/...) to its end: the program runs once per object of
        ``objects`` with ``meta`` filled in (seq_num counting from 0, one session_id per read),
        then once with its object slots NULL; the result holds what bpf_seq_write and
        bpf_seq_printf wrote, and how the read ended. Each object is the slot after ``meta``
        (for ``iter/task``, the task: a dict by field name, bytes, a ctypes value, an address),
        or a tuple of the slots after it (``iter/bpf_map_elem``: map, key, value)."""
        self._expect(ProgType.TRACING)
        state = self.program_state
        assert state is not None
        if state.attach is None or state.seq is None:
            raise ExecutionError("run_iter runs iterator programs (sections iter/...)")
        vm = self._vm()
        return read_iterator(state.attach, state.types, state.seq, objects,
                             lambda values: run_btf_args(vm, state, values, 0, engine))

    def run_cgroup_sock(self, *, engine: Engine = "interp", **sock: Any) -> tuple[int, dict[str, Any]]:
        """cgroup/sock: ``(verdict 1 allow / 0 deny, bpf_sock fields after)``."""
        self._expect(ProgType.CGROUP_SOCK)
        res = run_context(self._vm(), sock, engine=engine)
        return res.retval & MASK32, res.fields()

    def run_cgroup_device(self, major: int, minor: int, *, access: int = 2, dev_type: int = 2,
                          engine: Engine = "interp") -> int:
        """cgroup/dev: 1 allows the access, 0 denies it. ``access`` is BPF_DEVCG_ACC_* (read = 2),
        ``dev_type`` BPF_DEVCG_DEV_* (char = 2, block = 1)."""
        self._expect(ProgType.CGROUP_DEVICE)
        ctx = {"access_type": (access << 16) | dev_type, "major": major, "minor": minor}
        return run_context(self._vm(), ctx, engine=engine).retval & MASK32

    def run_sock_addr(self, *, engine: Engine = "interp", **addr: Any) -> tuple[int, dict[str, Any]]:
        """cgroup bind/connect/sendmsg: ``(verdict, bpf_sock_addr fields after)`` (rewritten address)."""
        self._expect(ProgType.CGROUP_SOCK_ADDR)
        res = run_context(self._vm(), addr, engine=engine)
        return res.retval & MASK32, res.fields()

    def run_sockopt(self, optval: bytes | bytearray, *, level: int, optname: int, optlen: int | None = None,
                    retval: int = 0, engine: Engine = "interp") -> tuple[int, dict[str, Any], bytes]:
        """cgroup/getsockopt and setsockopt: ``(verdict 1 allow / 0 refuse, the bpf_sockopt fields
        after, the option's value after)`` for a call on ``level``/``optname`` whose value is
        ``optval`` (``optlen`` long unless given; getsockopt's ``retval`` is the call's result)."""
        self._expect(ProgType.CGROUP_SOCKOPT)
        fields = {"level": level, "optname": optname, "optlen": len(optval) if optlen is None else optlen,
                  "retval": retval}
        res = run_context(self._vm(), fields, packet=bytes(optval), engine=engine)
        return res.retval & MASK32, res.fields(), res.packet or b""

    def run_sysctl(self, name: str, value: bytes | str | None = b"", *, new_value: bytes | str | None = None,
                   file_pos: int = 0, engine: Engine = "interp") -> tuple[int, SysctlAccess]:
        """cgroup/sysctl: ``(verdict 1 allow / 0 deny, the access after)`` for a read of the sysctl
        ``name`` (its path below /proc/sys, "net/ipv4/tcp_mem") whose file holds ``value``, or a
        write of ``new_value``; the access after holds the program's new value and file position."""
        self._expect(ProgType.CGROUP_SYSCTL)

        def raw(text: bytes | str | None) -> bytes | None:
            return text.encode() if isinstance(text, str) else text

        access = SysctlAccess(name, raw(value), raw(new_value), file_pos)
        state = _program_state(self._vm())
        state.local.sysctl = access
        try:
            res = run_context(self._vm(), {"write": int(new_value is not None), "file_pos": file_pos}, engine=engine)
        finally:
            state.local.sysctl = None
        access.file_pos = int(res.ctx.file_pos)  # type: ignore[attr-defined]
        return res.retval & MASK32, access

    def run_flow_dissector(self, frame: bytes | bytearray | memoryview, *, engine: Engine = "interp"
                           ) -> tuple[int, BpfFlowKeys]:
        """flow_dissector: ``(r0, keys)`` for one Ethernet frame: r0 is BPF_OK (0) when the program
        dissected it, BPF_DROP (2) when not; the keys start as the kernel's (the network header at
        14, ``n_proto`` the Ethernet type)."""
        self._expect(ProgType.FLOW_DISSECTOR)
        res = run_context(self._vm(), None, packet=packet_bytes(frame, "frame"), engine=engine)
        assert res.flow_keys is not None
        return int(res.retval) & MASK32, res.flow_keys

    def run_sk_reuseport(self, packet: bytes | bytearray | memoryview, *, hash: int = 0, ip_protocol: int = IPPROTO_TCP,
                         eth_protocol: int = ETH_P_IP, bind_inany: int = 0, engine: Engine = "interp"
                         ) -> tuple[int, object | None]:
        """sk_reuseport: ``(verdict, selected)`` for a packet (from its transport header) arriving at
        a SO_REUSEPORT group whose socket is ``vm.std.socket``: an ``SkAction`` (PASS: to the
        selected socket, or to one picked by ``hash`` without a selection; DROP), and the socket
        bpf_sk_select_reuseport selected from a map (None for none)."""
        self._expect(ProgType.SK_REUSEPORT)
        state = _program_state(self._vm())
        state.local.selected = None
        fields = {"len": len(packet), "hash": hash, "ip_protocol": ip_protocol, "bind_inany": bind_inany,
                  "eth_protocol": port_field(eth_protocol)}  # (a __be16 as a port is: network order)
        res = run_context(self._vm(), fields, packet=packet_bytes(packet), engine=engine)
        selected, state.local.selected = getattr(state.local, "selected", None), None
        return _sk_action(res.retval), selected

    def run_sk_lookup(self, *, family: int = AF_INET, protocol: int = IPPROTO_TCP,
                      remote: tuple[str, int] = ("0.0.0.0", 0), local: tuple[str, int] = ("0.0.0.0", 0),
                      ingress_ifindex: int = 1, engine: Engine = "interp") -> tuple[int, object | None]:
        """sk_lookup: ``(verdict, selected)`` for a connection (TCP) or packet (UDP) from ``remote``
        to ``local`` (address, port): an ``SkAction`` (PASS: to the selected socket, or to the
        one the usual lookup finds without a selection; DROP), and the socket bpf_sk_assign
        selected (as the caller stored it in a socket map; None for no selection)."""
        self._expect(ProgType.SK_LOOKUP)
        for end, what in ((remote, "remote"), (local, "local")):
            if not isinstance(end, tuple) or len(end) != 2:
                raise ValueError(f"{what} is an (address, port) pair, not {end!r}")
        r4, r6 = ip_fields(remote[0])
        l4, l6 = ip_fields(local[0])
        fields = {"family": family, "protocol": protocol, "remote_ip4": r4, "remote_ip6": r6,
                  "remote_port": port_field(remote[1]), "local_ip4": l4, "local_ip6": l6, "local_port": local[1],
                  "ingress_ifindex": ingress_ifindex}
        vm = self._vm()
        res = run_context(vm, fields, engine=engine)
        assert isinstance(res.ctx, SkLookup) and vm.std is not None
        selected = vm.std.sockets.owner_at(int(res.ctx.sk)) if res.ctx.sk else None
        return _sk_action(res.retval), selected[0] if selected is not None else None

    def run_sock_ops(self, op: int, *, engine: Engine = "interp", **fields: Any) -> tuple[int, dict[str, Any]]:
        """sockops: ``(r0, bpf_sock_ops fields after)``; ``args[0]`` holds the reply."""
        self._expect(ProgType.SOCK_OPS)
        res = run_context(self._vm(), {"op": op, **fields}, engine=engine)
        return res.retval & MASK32, res.fields()
