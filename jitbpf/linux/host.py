"""The host a program believes it runs in: the current task, network namespace, routing table, and
the helpers that ask the host (``bpf_fib_lookup``, ``bpf_get_current_task``, ``bpf_csum_diff``, ...).

Nothing here reads the real machine: every answer comes from a ``Host`` the caller fills
(``vm.std.host``), and its defaults are those of an idle kernel: no task (NULL), no routes,
forwarding off on every interface (so ``bpf_fib_lookup`` answers ``FWD_DISABLED``, as the kernel
does for a packet arriving on an interface that does not forward).
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jitbpf.helpers import Helper
from jitbpf.isa import MASK32, MASK64
from jitbpf.linux.helperids import HelperId as H
from jitbpf.linux.sockopts import NetSettings

if TYPE_CHECKING:
    from jitbpf.linux.sockets import Socket
    from jitbpf.memory import MemoryMap

__all__ = ["FibResult", "FibRoute", "Host", "Interface", "host_helpers"]

AF_INET, AF_INET6 = 2, 10
OVERFLOW_UID = 65534  # the kernel's overflowuid: the uid of a socket that has none
FIB_LOOKUP_SIZE = 64  # sizeof(struct bpf_fib_lookup)
FIB_FLAGS = 0x3F  # DIRECT | OUTPUT | SKIP_NEIGH | TBID | SRC | MARK: every flag the kernel defines
# struct bpf_fib_lookup: family u8, l4_protocol u8, sport, dport (be16), tot_len/mtu_result u16,
# ifindex u32, tos/flowinfo/rt_metric u32, src[16], dst[16], vlan proto+TCI / tbid u32, smac[6], dmac[6].
_FIB = struct.Struct("<BBHHHII16s16sI6s6s")


class FibResult(enum.IntEnum):
    """``bpf_fib_lookup``'s answers (``BPF_FIB_LKUP_RET_*``)."""

    SUCCESS = 0  # forwardable: ifindex, smac, dmac and mtu_result are filled in
    BLACKHOLE = 1  # the route drops silently
    UNREACHABLE = 2  # the route answers "destination unreachable"
    PROHIBIT = 3  # the route answers "administratively prohibited"
    NOT_FWDED = 4  # no route forwards it (local delivery, or no route at all)
    FWD_DISABLED = 5  # the input interface does not forward
    UNSUPP_LWT = 6  # the route needs an encapsulation
    NO_NEIGH = 7  # no neighbour entry for the next hop
    FRAG_NEEDED = 8  # the packet is larger than the route's MTU


@dataclass(frozen=True)
class FibRoute:
    """One route: where packets to ``network`` go (the kernel's FIB entry plus its neighbour)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network  # destination prefix
    ifindex: int  # output interface
    smac: bytes = bytes(6)  # the output interface's address
    dmac: bytes | None = bytes(6)  # the next hop's address (None: no neighbour entry, NO_NEIGH)
    mtu: int = 1500  # the route's MTU
    result: FibResult = FibResult.SUCCESS  # BLACKHOLE / UNREACHABLE / PROHIBIT for such routes


@dataclass
class Interface:
    """An interface as routing sees it."""

    forwarding: bool = False  # net.ipv4/ipv6.conf.IF.forwarding (off, as the kernel's default)
    mtu: int = 1500  # the device's MTU (bpf_check_mtu), without its 14-byte link-layer header
    name: str = ""  # what SO_BINDTODEVICE names it by ("": no name)


@dataclass
class Host:
    """The answers of the helpers that ask the host. Fill it before running (``vm.std.host``).

    Defaults: no current task (``bpf_get_current_task`` returns 0), pid/tgid 0, namespace
    device and inode 0, socket and namespace cookies 1, hash 0, class id 0, socket owner uid 0, NUMA node 0, function
    address 0, interface 1 (loopback "lo", MTU 65536) only, forwarding off, no routes, the task in the
    root cgroup (id 1) only, attach cookie 0, a packet's socket in the task's cgroups (as the socket the kernel's
    test runs give a packet), cgroup programs attached to the root cgroup for ingress, and empty
    call stacks, no sockets, a stock kernel's network sysctls (``NetSettings``).
    """

    task: int = 0  # the address bpf_get_current_task(_btf) returns (kernel memory a program can read)
    pid: int = 0  # thread id in the namespace (bpf_get_ns_current_pid_tgid)
    tgid: int = 0  # process id in the namespace
    pidns_dev: int = 0  # device number of the pid namespace's nsfs
    pidns_ino: int = 0  # inode number of the pid namespace
    # Cookies are never 0 in the kernel: the test run's socket has one, and so has the namespace.
    socket_cookie: int = 1  # bpf_get_socket_cookie (0 when the packet has no socket)
    netns_cookie: int = 1  # bpf_get_netns_cookie
    skb_hash: int = 0  # bpf_get_hash_recalc
    cgroup_classid: int = 0  # bpf_get_cgroup_classid: the packet's net_cls class (none)
    socket_uid: int = 0  # bpf_get_socket_uid: the owner of the packet's socket
    numa_node: int = 0  # bpf_get_numa_node_id
    func_ip: int = 0  # bpf_get_func_ip: the address of the probed function (kprobe, fentry)
    # The attachment a cgroup program runs for: its cgroup storage (bpf_get_local_storage) is
    # that of this cgroup id and attach type (0: BPF_CGROUP_INET_INGRESS).
    attach_cgroup: int = 1
    attach_type: int = 0
    # Loopback's MTU for interface 1: the device of the kernel's test runs.
    interfaces: dict[int, Interface] = field(default_factory=lambda: {1: Interface(mtu=65536, name="lo")})
    routes: list[FibRoute] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)  # signals bpf_send_signal sent, in order
    # Packets bpf_clone_redirect sent, in order: (ifindex, to its ingress, the packet as it was then).
    clones: list[tuple[int, bool, bytes]] = field(default_factory=list)
    cgroup_id: int = 1  # bpf_get_current_cgroup_id: the current task's own cgroup (in ``cgroups``)
    # The ids of the cgroups the current task is under: its own and every ancestor up to the root.
    cgroups: frozenset[int] = frozenset({1})
    # The same as a path from the root (level 0) down to the task's own cgroup, for the helpers
    # that ask for the ancestor at a level (the packet's socket is the task's).
    cgroup_path: tuple[int, ...] = (1,)
    attach_cookie: int = 0  # bpf_get_attach_cookie: the cookie the program was attached with
    # The same for the packet's socket (None: the task's cgroups); packet_socket False: the packet
    # has no full socket, so bpf_skb_under_cgroup answers ENOENT.
    socket_cgroups: frozenset[int] | None = None
    packet_socket: bool = True
    # The call stacks bpf_get_stackid records: return addresses, innermost first (empty: EFAULT).
    kernel_stack: list[int] = field(default_factory=list)
    user_stack: list[int] = field(default_factory=list)
    # The host's sockets, which bpf_sk_lookup_tcp/udp and bpf_skc_lookup_tcp search (none).
    sockets: list[Socket] = field(default_factory=list)
    # The network sysctls socket options start from (bpf_setsockopt, bpf_getsockopt).
    net: NetSettings = field(default_factory=NetSettings)

    def add_route(self, network: str | ipaddress.IPv4Network | ipaddress.IPv6Network, ifindex: int,
                  **details: object) -> FibRoute:
        """Add a route (``details``: ``FibRoute``'s smac, dmac, mtu, result) and return it."""
        route = FibRoute(ipaddress.ip_network(network), ifindex, **details)  # type: ignore[arg-type]
        self.routes.append(route)
        self.interfaces.setdefault(ifindex, Interface())
        return route

    def under_cgroup(self, cgroup_id: int, *, socket: bool = False) -> int:
        """1 if the current task (``socket``: the packet's socket) is under ``cgroup_id``, else 0;
        -ENOENT for a packet without a socket."""
        if socket and not self.packet_socket:
            return -errno.ENOENT
        within = self.socket_cgroups if socket and self.socket_cgroups is not None else self.cgroups
        return int(cgroup_id in within)

    def fib_lookup(self, family: int, dst: bytes, ifindex: int, src: bytes = bytes(16)) -> tuple[int, FibRoute | None]:
        """What the kernel's FIB answers for a packet from ``src`` to ``dst`` arriving on
        ``ifindex``: a ``FibResult`` (or a negative errno) and the route that decided it."""
        if family == AF_INET6 and any(_scoped(a) for a in (dst, src)):
            return FibResult.NOT_FWDED, None  # link-scoped addresses are never forwarded, on any interface
        iface = self.interfaces.get(ifindex)
        if iface is None:
            return -errno.ENODEV, None
        if not iface.forwarding:
            return FibResult.FWD_DISABLED, None
        address = ipaddress.ip_address(dst[:4] if family == AF_INET else dst)
        matches = [r for r in self.routes if r.network.version == address.version and address in r.network]
        if not matches:
            return FibResult.NOT_FWDED, None
        route = max(matches, key=lambda r: r.network.prefixlen)  # longest prefix wins
        if route.result is not FibResult.SUCCESS:
            return route.result, route
        if route.dmac is None:
            return FibResult.NO_NEIGH, route
        return FibResult.SUCCESS, route


def _scoped(raw: bytes) -> bool:
    """An IPv6 address the kernel routes only on its own link (``rt6_need_strict``)."""
    address = ipaddress.IPv6Address(raw[:16])
    return address.is_multicast or address.is_link_local or address.is_loopback


def _csum_partial(data: bytes, seed: int) -> int:
    """x86-64 Linux's ``csum_partial``: little-endian 64-bit words (the last one zero-padded)
    added with end-around carry to ``seed``, then the halves added the same way."""
    acc = seed & MASK32
    for i in range(0, len(data), 8):
        acc += int.from_bytes(data[i : i + 8].ljust(8, b"\0"), "little")
        if acc >> 64:
            acc = (acc & MASK64) + 1
    halves = (acc >> 32) + (acc & MASK32)
    return (halves + (halves >> 32)) & MASK32


def _fold16(csum: int) -> int:
    """``csum_from32to16``: the 32-bit sum's halves added with end-around carry."""
    return ((csum + ((csum >> 16 | csum << 16) & MASK32)) & MASK32) >> 16


def csum_diff(old: bytes, new: bytes, seed: int) -> int:
    """``bpf_csum_diff`` as Linux 6.12 and later compute it: the one's complement sum of ``seed``
    and ``new``, minus that of ``old``, folded to 16 bits (so the same on every architecture;
    earlier kernels returned an unfolded 32-bit sum and refused sizes that are not multiples of 4)."""
    seed &= MASK32
    if old and new:
        csum = _csum_partial(new, seed) + (~_csum_partial(old, 0) & MASK32)  # csum_sub
        csum = (csum + (csum >> 32)) & MASK32
    elif new:
        csum = _csum_partial(new, seed)
    elif old:
        csum = ~_csum_partial(old, ~seed & MASK32) & MASK32
    else:
        csum = seed
    return _fold16(csum)


def _err(code: int) -> int:
    return -code & MASK64


def host_helpers(memory: Callable[[], MemoryMap], host: Callable[[], Host]) -> list[Helper]:
    """The helpers answered by ``host()`` (read at each call, so the caller may replace it),
    reading and writing program memory through ``memory()``."""

    def csum_diff_helper(src: int, src_size: int, dst: int, dst_size: int, seed: int) -> int:
        src_size, dst_size = src_size & MASK32, dst_size & MASK32
        mm = memory()
        return csum_diff(mm.read(src, src_size), mm.read(dst, dst_size), seed)

    def fib_lookup(_ctx: int, params: int, plen: int, flags: int, _r5: int) -> int:
        if flags & ~FIB_FLAGS or plen & MASK32 < FIB_LOOKUP_SIZE:
            return _err(errno.EINVAL)
        mm = memory()
        raw = bytearray(mm.read(params, FIB_LOOKUP_SIZE))
        family, ifindex, src, dst = raw[0], int.from_bytes(raw[8:12], "little"), bytes(raw[16:32]), bytes(raw[32:48])
        if family not in (AF_INET, AF_INET6):
            return _err(errno.EAFNOSUPPORT)
        rc, route = host().fib_lookup(family, dst, ifindex, src)
        if rc == FibResult.SUCCESS and route is not None:
            tot_len = int.from_bytes(raw[6:8], "little")
            if tot_len > route.mtu:
                struct.pack_into("<H", raw, 6, route.mtu)  # mtu_result
                mm.write(params, raw)
                return int(FibResult.FRAG_NEEDED)
            assert route.dmac is not None
            struct.pack_into("<I", raw, 8, route.ifindex)
            struct.pack_into("<H", raw, 6, route.mtu)
            raw[52:58], raw[58:64] = route.smac, route.dmac
            mm.write(params, raw)
        return rc & MASK64

    def current_task(_r1: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
        return host().task & MASK64

    def ns_current_pid_tgid(dev: int, ino: int, nsdata: int, size: int, _r5: int) -> int:
        h = host()
        if size & MASK32 != 8:
            return _err(errno.EINVAL)
        if (dev, ino) != (h.pidns_dev, h.pidns_ino):
            memory().write(nsdata, bytes(8))
            return _err(errno.ENOENT)
        memory().write(nsdata, struct.pack("<II", h.pid & MASK32, h.tgid & MASK32))
        return 0

    def probe_read_str(dst: int, size: int, src: int, _r4: int, _r5: int) -> int:
        size &= MASK32
        mm = memory()
        if size == 0:
            return 0
        mm.write(dst, bytes(size))  # checks dst; the kernel leaves zeroes behind a fault too
        region = mm.find(src, 1)
        if region is None:
            return _err(errno.EFAULT)
        text = mm.read(src, min(size - 1, region.base + region.size - src))
        text = text.split(b"\0", 1)[0]  # truncated to size - 1 bytes, always terminated
        mm.write(dst, text + b"\0")
        return len(text) + 1

    def constant(attr: str) -> Callable[[int, int, int, int, int], int]:
        def fn(_r1: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
            value: int = getattr(host(), attr)
            return value & MASK64

        return fn

    def packet_socket(attr: str, without: int) -> Callable[[int, int, int, int, int], int]:
        # Answers about the packet's socket; ``without`` when the packet has no full socket.
        def fn(_r1: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
            h = host()
            value: int = getattr(h, attr) if h.packet_socket else without
            return value & MASK64

        return fn

    def ancestor_cgroup(socket: bool) -> Callable[[int, int, int, int, int], int]:
        # The cgroup at a level of the task's (or the packet's socket's) path; 0 past its end.
        def fn(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
            h = host()
            level = (r2 if socket else r1) & MASK32
            if socket and not h.packet_socket:
                return 0
            return h.cgroup_path[level] & MASK64 if level < len(h.cgroup_path) else 0

        return fn

    def send_signal(sig: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
        sig &= MASK32
        if not 0 < sig < 65:
            return _err(errno.EINVAL)
        if host().task == 0:
            return _err(errno.EPERM)  # no task to signal (a kernel thread, or none)
        host().signals.append(sig)
        return 0

    return [
        Helper(H.CSUM_DIFF, "bpf_csum_diff", csum_diff_helper,
               ("mem_or_null", "size_or_zero", "mem_or_null", "size_or_zero", "scalar")),
        # The ctx is only read ("ctx_read"): packet pointers stay valid, as bpf_fib_lookup does not
        # move the packet.
        Helper(H.FIB_LOOKUP, "bpf_fib_lookup", fib_lookup, ("ctx_read", "mem", "size", "scalar")),
        Helper(H.GET_CURRENT_TASK, "bpf_get_current_task", current_task),
        Helper(H.GET_CURRENT_TASK_BTF, "bpf_get_current_task_btf", current_task),
        Helper(H.GET_NS_CURRENT_PID_TGID, "bpf_get_ns_current_pid_tgid", ns_current_pid_tgid,
               ("scalar", "scalar", "uninit_mem", "size")),
        Helper(H.GET_HASH_RECALC, "bpf_get_hash_recalc", constant("skb_hash"), ("ctx_read",)),
        Helper(H.GET_SOCKET_COOKIE, "bpf_get_socket_cookie", packet_socket("socket_cookie", 0), ("ctx_read",)),
        Helper(H.GET_NETNS_COOKIE, "bpf_get_netns_cookie", constant("netns_cookie"), ("ctx_or_null",)),
        *(Helper(hid, name, probe_read_str, ("uninit_mem", "size_or_zero", "anything"), "length_or_errno")
          for hid, name in ((H.PROBE_READ_STR, "bpf_probe_read_str"),
                            (H.PROBE_READ_KERNEL_STR, "bpf_probe_read_kernel_str"),
                            (H.PROBE_READ_USER_STR, "bpf_probe_read_user_str"))),
        Helper(H.SEND_SIGNAL, "bpf_send_signal", send_signal),
        Helper(H.GET_FUNC_IP, "bpf_get_func_ip", constant("func_ip"), ("ctx_read",)),
        Helper(H.GET_CURRENT_CGROUP_ID, "bpf_get_current_cgroup_id", constant("cgroup_id")),
        Helper(H.GET_NUMA_NODE_ID, "bpf_get_numa_node_id", constant("numa_node")),
        Helper(H.GET_ATTACH_COOKIE, "bpf_get_attach_cookie", constant("attach_cookie"), ("ctx_read",)),
        Helper(H.GET_CURRENT_ANCESTOR_CGROUP_ID, "bpf_get_current_ancestor_cgroup_id", ancestor_cgroup(False),
               ("scalar",)),
        Helper(H.SKB_ANCESTOR_CGROUP_ID, "bpf_skb_ancestor_cgroup_id", ancestor_cgroup(True), ("ctx_read", "scalar")),
        Helper(H.GET_CGROUP_CLASSID, "bpf_get_cgroup_classid", constant("cgroup_classid"), ("ctx_read",)),
        # The packet's socket is the current task's (in its cgroup); without one, the kernel's
        # answers are cgroup 0 and the overflow uid.
        Helper(H.SKB_CGROUP_ID, "bpf_skb_cgroup_id", packet_socket("cgroup_id", 0), ("ctx_read",)),
        Helper(H.GET_SOCKET_UID, "bpf_get_socket_uid", packet_socket("socket_uid", OVERFLOW_UID), ("ctx_read",)),
    ]
