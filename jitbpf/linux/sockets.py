"""Sockets as programs see them: the ``struct bpf_sock`` and ``struct bpf_tcp_sock`` views of
sockets the caller describes (``Socket``), the memory they are laid out in (``SocketTable``),
and the helpers that find and convert them (``bpf_sk_lookup_tcp``, ``bpf_sk_fullsock``, ...).

A context's socket (``__sk_buff->sk``, ``bpf_sock_ops->sk``, ...) is ``vm.std.socket``: a
``Socket``, ``None`` (no socket), any other object (a handle, as socket maps and socket storage
take, with ``Socket``'s default fields), or ``PACKET_SOCKET``, the default: for packet programs
the socket the kernel's test runs give each packet (closed, with the family and addresses of
the packet's IP header), for other programs none. The sockets ``bpf_sk_lookup_*`` find are the
host's (``Host.sockets``).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import ipaddress
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from jitbpf.errors import ExecutionError
from jitbpf.helpers import Helper
from jitbpf.isa import MASK32, MASK64
from jitbpf.linux.helperids import HelperId as H
from jitbpf.linux.sockopts import SocketOptions
from jitbpf.memory import Region
from jitbpf.sandbox import Pages
from jitbpf.verifier._sock import BPF_SOCK_SIZE, BPF_TCP_SOCK_SIZE

if TYPE_CHECKING:
    from jitbpf.linux.host import Host

__all__ = ["PACKET_SOCKET", "BpfSock", "BpfTcpSock", "Socket", "SocketTable", "TcpState", "lookup", "socket_helpers"]

AF_INET, AF_INET6 = 2, 10
SOCK_STREAM, SOCK_DGRAM = 1, 2
IPPROTO_TCP, IPPROTO_UDP = 6, 17
BPF_F_CURRENT_NETNS = -1  # the netns argument of the lookups that means the caller's namespace
TUPLE_IPV4, TUPLE_IPV6 = 12, 36  # sizeof the two halves of struct bpf_sock_tuple
u32 = ctypes.c_uint32


class TcpState(enum.IntEnum):
    """A socket's ``state`` (the kernel's TCP states, which every socket type uses)."""

    ESTABLISHED = 1  # connected
    SYN_SENT = 2  # connecting
    SYN_RECV = 3  # a fast-open child still in the handshake
    FIN_WAIT1 = 4  # closing, our FIN sent
    FIN_WAIT2 = 5  # our FIN acknowledged
    TIME_WAIT = 6  # closed, lingering: a mini socket, not a full one
    CLOSE = 7  # not connected (a fresh or closed socket; unconnected UDP)
    CLOSE_WAIT = 8  # the peer closed
    LAST_ACK = 9  # both closed, waiting for the last ACK
    LISTEN = 10  # accepting connections
    CLOSING = 11  # both sides closing at once
    NEW_SYN_RECV = 12  # a request socket of a listener: not a full socket


class BpfSock(ctypes.LittleEndianStructure):
    """``struct bpf_sock``: what programs read of a socket (and the context of cgroup/sock)."""

    _fields_ = (("bound_dev_if", u32), ("family", u32), ("type", u32), ("protocol", u32), ("mark", u32),
                ("priority", u32), ("src_ip4", u32), ("src_ip6", u32 * 4), ("src_port", u32),
                ("dst_port", ctypes.c_uint16), ("_pad", ctypes.c_uint16), ("dst_ip4", u32), ("dst_ip6", u32 * 4),
                ("state", u32), ("rx_queue_mapping", ctypes.c_int32))


TCP_SOCK_FIELDS = ("snd_cwnd", "srtt_us", "rtt_min", "snd_ssthresh", "rcv_nxt", "snd_nxt", "snd_una", "mss_cache",
                   "ecn_flags", "rate_delivered", "rate_interval_us", "packets_out", "retrans_out", "total_retrans",
                   "segs_in", "data_segs_in", "segs_out", "data_segs_out", "lost_out", "sacked_out")


class BpfTcpSock(ctypes.LittleEndianStructure):
    """``struct bpf_tcp_sock``: what programs read of a TCP socket's state."""

    _fields_ = (*((name, u32) for name in TCP_SOCK_FIELDS), ("bytes_received", ctypes.c_uint64),
                ("bytes_acked", ctypes.c_uint64), ("dsack_dups", u32), ("delivered", u32), ("delivered_ce", u32),
                ("icsk_retransmits", u32))


assert ctypes.sizeof(BpfSock) == BPF_SOCK_SIZE and ctypes.sizeof(BpfTcpSock) == BPF_TCP_SOCK_SIZE
_TCP_NAMES = frozenset(name for name, *_ in BpfTcpSock._fields_)
Address = tuple[str, int]  # an IP address (either family) and a port


@dataclass(frozen=True)
class Socket:
    """A socket as the kernel shows it to programs. Addresses are strings ("10.0.0.1", "::1")
    and ports numbers; ``local`` is where it is bound, ``remote`` its peer (connected sockets).

    A socket in state ``TIME_WAIT`` or ``NEW_SYN_RECV`` is not a full socket
    (``bpf_sk_fullsock`` gives NULL); a request socket's ``listener`` is the listening socket it
    belongs to. ``tcp`` gives fields of ``struct bpf_tcp_sock`` by name (the rest are 0).
    """

    family: int = AF_INET
    type: int = SOCK_STREAM
    protocol: int = IPPROTO_TCP
    local: Address | None = None  # None: the family's unspecified address, port 0
    remote: Address | None = None
    state: int = TcpState.ESTABLISHED
    bound_dev_if: int = 0
    mark: int = 0
    priority: int = 0
    rx_queue_mapping: int = -1  # the receive queue (-1: none recorded)
    netns: int | None = None  # the id of its network namespace (None: the current one)
    tcp: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    listener: Socket | None = None

    def __post_init__(self) -> None:
        unknown = set(self.tcp) - _TCP_NAMES
        if unknown:
            raise ValueError(f"struct bpf_tcp_sock has no field {', '.join(sorted(unknown))}")
        anywhere = ("::" if self.family == AF_INET6 else "0.0.0.0", 0)
        for what in ("local", "remote"):
            if getattr(self, what) is None:
                object.__setattr__(self, what, anywhere)
        for what, (addr, port) in (("local", self.local_address), ("remote", self.remote_address)):
            ip = ipaddress.ip_address(addr)  # ValueError names a bad address
            if (ip.version == 6) != (self.family == AF_INET6) and self.family in (AF_INET, AF_INET6):
                raise ValueError(f"the {what} address {addr} is not of the socket's family {self.family}")
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"the {what} port {port} is not a port number")

    @property
    def local_address(self) -> Address:
        """Where it is bound: (address, port)."""
        assert self.local is not None  # set by __post_init__
        return self.local

    @property
    def remote_address(self) -> Address:
        """Its peer: (address, port)."""
        assert self.remote is not None  # set by __post_init__
        return self.remote

    @property
    def full(self) -> bool:
        """A full socket (not a time-wait or request mini socket)."""
        return self.state not in (TcpState.TIME_WAIT, TcpState.NEW_SYN_RECV)

    @property
    def is_tcp(self) -> bool:
        """What ``bpf_tcp_sock`` accepts: a full TCP stream socket."""
        return self.full and self.protocol == IPPROTO_TCP and self.type == SOCK_STREAM

    def bpf_sock(self) -> BpfSock:
        """The ``struct bpf_sock`` programs read."""
        s = BpfSock(bound_dev_if=self.bound_dev_if, family=self.family, type=self.type, protocol=self.protocol,
                    mark=self.mark, priority=self.priority, state=self.state, rx_queue_mapping=self.rx_queue_mapping)
        (laddr, lport), (raddr, rport) = self.local_address, self.remote_address
        s.src_port = lport  # host order
        s.dst_port = port_field(rport)
        s.src_ip4, s.src_ip6[:] = ip_fields(laddr)
        s.dst_ip4, s.dst_ip6[:] = ip_fields(raddr)
        return s

    def bpf_tcp_sock(self) -> BpfTcpSock:
        """The ``struct bpf_tcp_sock`` programs read (meaningful for TCP sockets)."""
        return BpfTcpSock(**self.tcp)


def ip_fields(addr: str) -> tuple[int, list[int]]:
    """An address as a context's ``*_ip4`` and ``*_ip6[4]`` fields hold it (network order, the
    other one zero)."""
    raw = ipaddress.ip_address(addr).packed
    if len(raw) == 4:
        return int.from_bytes(raw, "little"), [0] * 4
    return 0, [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4)]


def port_field(port: int) -> int:
    """A port as a ``__be16`` context field holds it."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 1 << 16:
        raise ValueError(f"a port (a __be16 field) is a number from 0 to 65535, not {port!r}")
    return int.from_bytes(port.to_bytes(2, "big"), "little")


class _PacketSocket:
    """The socket the kernel's test runs give a packet (see the module's docstring)."""

    def __repr__(self) -> str:
        return "PACKET_SOCKET"


PACKET_SOCKET: Final = _PacketSocket()
# What a handle (or the packet's socket) is to the helpers: a closed socket of no type, which is
# full but no TCP socket, as the kernel's test-run socket is.
_ANONYMOUS = Socket(type=0, protocol=0, state=TcpState.CLOSE)


def socket_of(owner: object) -> Socket:
    """The fields of the socket ``owner`` stands for."""
    return owner if isinstance(owner, Socket) else _ANONYMOUS


BLOCK = BPF_SOCK_SIZE + BPF_TCP_SOCK_SIZE  # one socket's memory: its bpf_sock, then its bpf_tcp_sock
PACKET_SOCKET_REGION = "packet socket"  # the name of the run's region the packet's own socket is in


class SocketTable:
    """Read-only memory that holds the sockets programs are given, one block each (its
    ``struct bpf_sock``, then its ``struct bpf_tcp_sock``), laid out at first use and kept as
    long as the table: up to ``capacity`` sockets."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._pages: Pages | None = None
        self._slots: dict[int, tuple[int, object]] = {}  # id(owner) -> (block index, owner)
        self._owners: list[object] = []  # by block index
        self._options: dict[int, tuple[object, SocketOptions]] = {}  # id(owner) -> (owner, its options)
        self._lock = threading.Lock()

    def _memory(self) -> Pages:
        if self._pages is None:
            self._pages = Pages(self.capacity * BLOCK)
        return self._pages

    def address(self, owner: object) -> int:
        """The address of ``owner``'s ``struct bpf_sock`` (its ``bpf_tcp_sock`` follows)."""
        with self._lock:
            slot = self._slots.get(id(owner))
            if slot is None:
                index = len(self._owners)
                if index >= self.capacity:
                    raise ExecutionError(f"more than {self.capacity} sockets given to programs: make the "
                                         "socket table larger (SocketTable(capacity=...))")
                pages = self._memory()
                sock = socket_of(owner)
                at = index * BLOCK
                pages.view[at : at + BPF_SOCK_SIZE] = bytes(sock.bpf_sock())
                pages.view[at + BPF_SOCK_SIZE : at + BLOCK] = bytes(sock.bpf_tcp_sock())
                slot = (index, owner)
                self._slots[id(owner)] = slot
                self._owners.append(owner)
            return self._memory().address + slot[0] * BLOCK

    def options(self, owner: object) -> SocketOptions:
        """The options programs set on ``owner`` (bpf_setsockopt), kept as long as the table;
        None stands for a context's socket when the caller gave none."""
        with self._lock:
            found = self._options.get(id(owner))
            if found is None:
                found = self._options[id(owner)] = (owner, SocketOptions())
            return found[1]

    def owner_at(self, addr: int) -> tuple[object, bool] | None:
        """The socket whose ``bpf_sock`` (False) or ``bpf_tcp_sock`` (True) is at ``addr``."""
        pages = self._pages
        if pages is None:
            return None
        index, rest = divmod(addr - pages.address, BLOCK)
        if not 0 <= index < len(self._owners) or rest not in (0, BPF_SOCK_SIZE):
            return None
        return self._owners[index], rest == BPF_SOCK_SIZE

    def regions(self) -> list[Region]:
        """The memory runs are given (read-only), where helpers lay sockets out during a run."""
        with self._lock:
            pages = self._memory()
        return [Region(pages.address, pages.size, pages.view, False, "sockets")]


def find_socket(table: SocketTable, memory: Any, addr: int) -> tuple[object, bool] | None:
    """The socket (and whether its ``bpf_tcp_sock``) at ``addr``: one of ``table``'s, or the
    packet's own in the run's ``memory``; None for any other address."""
    found = table.owner_at(addr)
    if found is not None:
        return found
    region = memory.find(addr, BPF_SOCK_SIZE)
    if region is not None and region.name == PACKET_SOCKET_REGION and addr == region.base:
        return PACKET_SOCKET, False
    return None


def _netns_matches(sock: Socket, netns: int) -> bool:
    return sock.netns is None if netns == BPF_F_CURRENT_NETNS else sock.netns == netns


def lookup(sockets: list[Socket], protocol: int, saddr: bytes, sport: int, daddr: bytes, dport: int,
           netns: int = BPF_F_CURRENT_NETNS) -> Socket | None:
    """The socket a packet from ``saddr:sport`` to ``daddr:dport`` belongs to, as the kernel's
    socket lookup finds it: a connected socket with exactly that peer and local address, else
    one listening on (or, UDP, bound to) the local port at that address or any."""
    src, dst = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
    candidates = [s for s in sockets if s.protocol == protocol and _netns_matches(s, netns)
                  and s.family == (AF_INET if dst.version == 4 else AF_INET6) and s.local_address[1] == dport]
    for s in candidates:
        if s.state != TcpState.LISTEN and ipaddress.ip_address(s.local_address[0]) == dst \
                and ipaddress.ip_address(s.remote_address[0]) == src and s.remote_address[1] == sport:
            return s
    waiting = TcpState.LISTEN if protocol == IPPROTO_TCP else TcpState.CLOSE
    for exact in (True, False):
        for s in candidates:
            local = ipaddress.ip_address(s.local_address[0])
            if s.state == waiting and (local == dst if exact else local.is_unspecified) and s.remote_address[1] == 0:
                return s
    return None


SK_LOOKUP_F_REPLACE, SK_LOOKUP_F_NO_REUSEPORT = 1, 2  # bpf_sk_assign's flags in sk_lookup programs
ESOCKTNOSUPPORT = 94


def sk_lookup_assign(memory: Callable[[], Any], table: Callable[[], SocketTable], sk_off: int,
                     family_off: int) -> Helper:
    """sk_lookup's ``bpf_sk_assign(ctx, sk, flags)``: ``sk`` (or NULL) becomes the context's
    selected socket (its field at ``sk_off``), under the kernel's conditions: a listening TCP
    socket or an unconnected UDP one, of the lookup's family (an IPv6 socket may take IPv4),
    replacing a selection only with BPF_SK_LOOKUP_F_REPLACE."""

    def fn(ctx: int, sk: int, flags: int, _r4: int, _r5: int) -> int:
        if flags & ~(SK_LOOKUP_F_REPLACE | SK_LOOKUP_F_NO_REUSEPORT):
            return -errno.EINVAL & MASK64
        mm = memory()
        if sk:
            found = find_socket(table(), mm, sk)
            if found is None:
                raise ExecutionError(f"bpf_sk_assign: {sk:#x} is no socket given to the program")
            sock = socket_of(found[0])
            waiting = {IPPROTO_TCP: TcpState.LISTEN, IPPROTO_UDP: TcpState.CLOSE}.get(sock.protocol)
            if waiting is not None and sock.state != waiting:
                return -ESOCKTNOSUPPORT & MASK64
            family = int.from_bytes(mm.read(ctx + family_off, 4), "little")
            if sock.family != family and sock.family == AF_INET:
                return -errno.EAFNOSUPPORT & MASK64
        if int.from_bytes(mm.read(ctx + sk_off, 8), "little") and not flags & SK_LOOKUP_F_REPLACE:
            return -errno.EEXIST & MASK64
        mm.write(ctx + sk_off, sk.to_bytes(8, "little"))
        return 0

    return Helper(H.SK_ASSIGN, "bpf_sk_assign", fn, ("ctx", "socket_or_null", "scalar"))


def socket_helpers(memory: Callable[[], Any], table: Callable[[], SocketTable],
                   host: Callable[[], Host]) -> list[Helper]:
    """The socket helpers: sockets are found in ``host().sockets`` and given to programs in
    ``table()``; ``memory()`` is the run's memory (the lookup tuple, the packet's socket)."""

    def owner_of(addr: int, helper: str) -> tuple[object, bool]:
        found = find_socket(table(), memory(), addr)
        if found is None:
            raise ExecutionError(f"{helper}: {addr:#x} is no socket given to the program")
        return found

    def fullsock(sk: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
        owner, _tcp = owner_of(sk, "bpf_sk_fullsock")
        return (sk if owner is PACKET_SOCKET else table().address(owner)) if socket_of(owner).full else 0

    def tcp_sock(sk: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
        owner, _tcp = owner_of(sk, "bpf_tcp_sock")
        return table().address(owner) + BPF_SOCK_SIZE if socket_of(owner).is_tcp else 0

    def listener_sock(sk: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
        owner, _tcp = owner_of(sk, "bpf_get_listener_sock")
        sock = socket_of(owner)
        if sock.state == TcpState.LISTEN:
            return table().address(owner)
        return table().address(sock.listener) if not sock.full and sock.listener is not None else 0

    def sk_lookup(protocol: int, full: bool) -> Callable[[int, int, int, int, int], int]:
        def fn(_ctx: int, tup: int, size: int, netns: int, flags: int) -> int:
            size &= MASK32
            netns_id = ctypes.c_int32(netns & MASK32).value
            if flags or size not in (TUPLE_IPV4, TUPLE_IPV6) or netns_id < BPF_F_CURRENT_NETNS:
                return 0
            raw = memory().read(tup, size)
            n = 4 if size == TUPLE_IPV4 else 16
            sport, dport = int.from_bytes(raw[2 * n : 2 * n + 2], "big"), int.from_bytes(raw[2 * n + 2 :], "big")
            found = lookup(host().sockets, protocol, raw[:n], sport, raw[n : 2 * n], dport, netns_id)
            if found is not None and full and not found.full:
                # a request socket stands for its listener; a time-wait socket for nothing
                found = found.listener if found.state == TcpState.NEW_SYN_RECV else None
            return table().address(found) if found is not None else 0

        return fn

    def sk_release(sk: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
        owner_of(sk, "bpf_sk_release")
        return 0

    return [
        Helper(H.SK_FULLSOCK, "bpf_sk_fullsock", fullsock, ("sock_common",), "cast_socket_or_null"),
        Helper(H.TCP_SOCK, "bpf_tcp_sock", tcp_sock, ("sock_common",), "cast_tcp_sock_or_null"),
        Helper(H.GET_LISTENER_SOCK, "bpf_get_listener_sock", listener_sock, ("sock_common",), "socket_or_null"),
        *(Helper(hid, name, sk_lookup(proto, full), ("ctx_read", "mem", "size_or_zero", "anything", "anything"),
                 ret)
          for hid, name, proto, full, ret in (
              (H.SK_LOOKUP_TCP, "bpf_sk_lookup_tcp", IPPROTO_TCP, True, "acquired_socket_or_null"),
              (H.SK_LOOKUP_UDP, "bpf_sk_lookup_udp", IPPROTO_UDP, True, "acquired_socket_or_null"),
              (H.SKC_LOOKUP_TCP, "bpf_skc_lookup_tcp", IPPROTO_TCP, False, "acquired_sock_common_or_null"))),
        Helper(H.SK_RELEASE, "bpf_sk_release", sk_release, ("released_sock",)),
    ]
