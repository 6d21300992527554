"""Socket options as ``bpf_setsockopt`` and ``bpf_getsockopt`` see them: which options programs
may set and read (the kernel's short list, not the whole of setsockopt(2)), each one's checks,
the form it is kept in (``SO_SNDBUF`` doubled, timeouts in jiffies, ...), and its value on a
socket no program has changed, from the host's network settings (``NetSettings``).

Each socket's options live in a ``SocketOptions`` (``SocketTable.options``), so that what one
run sets the next one reads back, and the caller can look at or preset them. The rules are
Linux 6.18's, checked option by option against it (a sockops program on a real TCP connection).
Options change only what getsockopt reads back: the ``struct bpf_sock`` fields a program reads
(``mark``, ``priority``, ``bound_dev_if``) stay those of the ``Socket`` the caller described.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from jitbpf.linux.clock import HZ

__all__ = ["NetSettings", "SockView", "SocketOptions", "getsockopt", "setsockopt"]

SOL_IP, SOL_SOCKET, SOL_TCP, SOL_IPV6 = 0, 1, 6, 41
AF_INET, AF_INET6 = 2, 10
IPPROTO_TCP = 6
TCP_CLOSE, TCP_LISTEN = 7, 10
INT_MAX, U32 = 0x7FFF_FFFF, 0xFFFF_FFFF
SOCK_MIN_RCVBUF = 2304  # 2048 + the aligned size of a struct sk_buff
SOCK_MIN_SNDBUF = 2 * SOCK_MIN_RCVBUF
TCP_MSS_DEFAULT, TCP_MIN_MSS, MAX_TCP_WINDOW = 536, 88, 32767
MAX_TCP_KEEPIDLE = MAX_TCP_KEEPINTVL = 32767
MAX_TCP_KEEPCNT = MAX_TCP_SYNCNT = 127
TCP_TIMEOUT_MAX = HZ // 5  # TCP_DELACK_MAX and TCP_RTO_MIN, the bounds of their BPF options (jiffies)
TCP_TIMEOUT_MIN = 2  # jiffies
TCP_CA_NAME_MAX = 16
INET_ECN_MASK = 3
SOCK_OPS_ALL_CB_FLAGS = 0x7F  # BPF_SOCK_OPS_ALL_CB_FLAGS
USEC_PER_JIFFY = 1_000_000 // HZ


class OptName:
    """The option numbers the helpers know (``SO_*``, ``TCP_*``, ``IP_*``, ``IPV6_*``)."""

    SO_REUSEADDR, SO_SNDBUF, SO_RCVBUF, SO_KEEPALIVE, SO_PRIORITY = 2, 7, 8, 9, 12
    SO_REUSEPORT, SO_RCVLOWAT, SO_BINDTODEVICE, SO_MARK, SO_MAX_PACING_RATE = 15, 18, 25, 36, 47
    SO_BINDTOIFINDEX, SO_TXREHASH = 62, 74
    TCP_NODELAY, TCP_MAXSEG, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_SYNCNT = 1, 2, 4, 5, 6, 7
    TCP_WINDOW_CLAMP, TCP_CONGESTION, TCP_THIN_LINEAR_TIMEOUTS, TCP_USER_TIMEOUT = 10, 13, 16, 18
    TCP_NOTSENT_LOWAT, TCP_SAVE_SYN, TCP_SAVED_SYN = 25, 27, 28
    TCP_BPF_IW, TCP_BPF_SNDCWND_CLAMP, TCP_BPF_DELACK_MAX, TCP_BPF_RTO_MIN = 1001, 1002, 1003, 1004
    TCP_BPF_SYN, TCP_BPF_SYN_IP, TCP_BPF_SYN_MAC, TCP_BPF_SOCK_OPS_CB_FLAGS = 1005, 1006, 1007, 1008
    IP_TOS = 1
    IPV6_TCLASS, IPV6_AUTOFLOWLABEL = 67, 70


_O = OptName


@dataclass(frozen=True)
class NetSettings:
    """The network sysctls socket options start from and are capped by. Defaults: a stock
    kernel's (``net.ipv4.tcp_wmem``, ``net.core.wmem_max``, ...); ``available_congestion_control``
    is what TCP_CONGESTION may choose."""

    tcp_wmem: tuple[int, int, int] = (4096, 16384, 4194304)
    tcp_rmem: tuple[int, int, int] = (4096, 131072, 6291456)
    wmem_max: int = 212992
    rmem_max: int = 212992
    wmem_default: int = 212992
    rmem_default: int = 212992
    congestion_control: str = "cubic"
    available_congestion_control: tuple[str, ...] = ("reno", "cubic")
    tcp_keepalive_time: int = 7200  # seconds
    tcp_keepalive_intvl: int = 75
    tcp_keepalive_probes: int = 9
    tcp_syn_retries: int = 6
    txrehash: int = 1  # net.core.txrehash
    auto_flowlabels: int = 1  # net.ipv6.auto_flowlabels


@dataclass(frozen=True)
class SockView:
    """What the option rules ask of the socket a call is about (from the context and the
    ``Socket``): its family, whether it is a stream socket and its protocol, TCP state, whether
    it is a full socket, and the TCP fields some options read."""

    family: int
    stream: bool
    protocol: int
    state: int
    full: bool = True
    mss_cache: int = 0
    data_segs_out: int = 0
    priority: int = 0
    mark: int = 0
    bound_dev_if: int = 0


@dataclass
class SocketOptions:
    """One socket's options as programs left them: ``values`` by ``(level, optname)`` in the
    kernel's stored form (options never set take their defaults), the congestion control chosen,
    and which buffer sizes a program fixed (``SO_SNDBUF``/``SO_RCVBUF`` lock them)."""

    values: dict[tuple[int, int], int] = field(default_factory=dict)
    congestion: str | None = None
    sndbuf_locked: bool = False
    rcvbuf_locked: bool = False


Setter = Callable[["_Call", int], int]  # a new value's stored form (raises _Refused)


class _Refused(Exception):
    """A value an option does not take: the call fails with -errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _refuse(code: int = errno.EINVAL) -> int:
    raise _Refused(code)


@dataclass
class _Call:
    """One call's socket, its options and the host's settings."""

    view: SockView
    opts: SocketOptions
    net: NetSettings
    interfaces: Mapping[int, str]

    def get(self, key: tuple[int, int]) -> int:
        found = self.opts.values.get(key)
        return found if found is not None else _default(self, key)


def _default(call: _Call, key: tuple[int, int]) -> int:
    v, net = call.view, call.net
    tcp = v.protocol == IPPROTO_TCP
    defaults = {
        (SOL_SOCKET, _O.SO_SNDBUF): net.tcp_wmem[1] if tcp else net.wmem_default,
        (SOL_SOCKET, _O.SO_RCVBUF): net.tcp_rmem[1] if tcp else net.rmem_default,
        (SOL_SOCKET, _O.SO_PRIORITY): v.priority,
        (SOL_SOCKET, _O.SO_RCVLOWAT): 1,
        (SOL_SOCKET, _O.SO_MARK): v.mark,
        (SOL_SOCKET, _O.SO_MAX_PACING_RATE): U32,  # ~0UL, read back as ~0U
        (SOL_SOCKET, _O.SO_BINDTOIFINDEX): v.bound_dev_if,
        (SOL_SOCKET, _O.SO_TXREHASH): net.txrehash,
        (SOL_TCP, _O.TCP_KEEPIDLE): net.tcp_keepalive_time,
        (SOL_TCP, _O.TCP_KEEPINTVL): net.tcp_keepalive_intvl,
        (SOL_TCP, _O.TCP_KEEPCNT): net.tcp_keepalive_probes,
        (SOL_TCP, _O.TCP_SYNCNT): net.tcp_syn_retries,
        (SOL_TCP, _O.TCP_BPF_DELACK_MAX): TCP_TIMEOUT_MAX,
        (SOL_TCP, _O.TCP_BPF_RTO_MIN): TCP_TIMEOUT_MAX,
        (SOL_IPV6, _O.IPV6_AUTOFLOWLABEL): int(net.auto_flowlabels in (1, 3)),
    }
    return defaults.get(key, 0)


def _flag(_call: _Call, v: int) -> int:
    return int(v != 0)


def _any(_call: _Call, v: int) -> int:
    return v


def _within(lo: int, hi: int) -> Setter:
    def check(_call: _Call, v: int) -> int:
        return v if lo <= v <= hi else _refuse()
    return check


def _sndbuf(call: _Call, v: int) -> int:
    call.opts.sndbuf_locked = True
    return max(min(v & U32, call.net.wmem_max, INT_MAX // 2) * 2, SOCK_MIN_SNDBUF)


def _rcvbuf(call: _Call, v: int) -> int:
    call.opts.rcvbuf_locked = True
    return max(min(v & U32, call.net.rmem_max, INT_MAX // 2) * 2, SOCK_MIN_RCVBUF)


def _rcvlowat(call: _Call, v: int) -> int:
    v = INT_MAX if v < 0 else v
    if call.view.protocol != IPPROTO_TCP:
        return v or 1
    rcvbuf = call.get((SOL_SOCKET, _O.SO_RCVBUF))
    v = min(v, (rcvbuf if call.opts.rcvbuf_locked else call.net.tcp_rmem[2]) >> 1)
    if not call.opts.rcvbuf_locked and 2 * v > rcvbuf:  # TCP grows the buffer to hold that much
        call.opts.values[(SOL_SOCKET, _O.SO_RCVBUF)] = 2 * v
        call.opts.values[(SOL_TCP, _O.TCP_WINDOW_CLAMP)] = v
    return v or 1


def _pacing(_call: _Call, v: int) -> int:
    return v & U32


def _ifindex(_call: _Call, v: int) -> int:
    return v if v >= 0 else _refuse()


def _txrehash(call: _Call, v: int) -> int:
    if v not in (-1, 0, 1):
        _refuse()
    return call.net.txrehash if v == -1 else v


def _maxseg(_call: _Call, v: int) -> int:
    return _refuse() if v and not TCP_MIN_MSS <= v <= MAX_TCP_WINDOW else v


def _window_clamp(call: _Call, v: int) -> int:
    if v == 0:
        return 0 if call.view.state == TCP_CLOSE else _refuse()
    return max(v, SOCK_MIN_RCVBUF // 2)


def _initial_window(call: _Call, v: int) -> int:
    return _refuse() if v <= 0 or call.view.data_segs_out else v


def _positive(_call: _Call, v: int) -> int:
    return v if v > 0 else _refuse()


def _timeout(_call: _Call, v: int) -> int:
    jiffies = -(-(v & U32) // USEC_PER_JIFFY)  # usecs_to_jiffies rounds up
    return jiffies if TCP_TIMEOUT_MIN <= jiffies <= TCP_TIMEOUT_MAX else _refuse()


def _cb_flags(_call: _Call, v: int) -> int:
    return _refuse() if v & ~SOCK_OPS_ALL_CB_FLAGS else v


def _tos(call: _Call, v: int) -> int:
    if call.view.stream:  # TCP keeps the ECN bits its own
        v = v & ~INET_ECN_MASK | call.get((SOL_IP, _O.IP_TOS)) & INET_ECN_MASK
    return v & 0xFF


def _tclass(call: _Call, v: int) -> int:
    if not -1 <= v <= 0xFF:
        _refuse()
    v = max(v, 0)
    if call.view.stream:
        v = v & ~INET_ECN_MASK | call.get((SOL_IPV6, _O.IPV6_TCLASS)) & INET_ECN_MASK
    return v


@dataclass(frozen=True)
class _IntOption:
    """An option whose value is one int (optlen must be 4)."""

    store: Setter  # checks a new value and gives its stored form
    readable: bool = True  # getsockopt reads it back
    read: Callable[[_Call, int], int] | None = None  # the value read from the stored one


def _mss_read(call: _Call, user_mss: int) -> int:
    if user_mss and call.view.state in (TCP_CLOSE, TCP_LISTEN):
        return user_mss
    return call.view.mss_cache or TCP_MSS_DEFAULT


def _jiffies_read(_call: _Call, jiffies: int) -> int:
    return jiffies * USEC_PER_JIFFY


_INT_OPTIONS: dict[tuple[int, int], _IntOption] = {
    (SOL_SOCKET, _O.SO_REUSEADDR): _IntOption(_flag),
    (SOL_SOCKET, _O.SO_SNDBUF): _IntOption(_sndbuf),  # doubled, at least SOCK_MIN_SNDBUF, at most wmem_max * 2
    (SOL_SOCKET, _O.SO_RCVBUF): _IntOption(_rcvbuf),
    (SOL_SOCKET, _O.SO_KEEPALIVE): _IntOption(_flag),
    (SOL_SOCKET, _O.SO_PRIORITY): _IntOption(_any),  # any value: BPF programs count as capable
    (SOL_SOCKET, _O.SO_REUSEPORT): _IntOption(_flag),
    (SOL_SOCKET, _O.SO_RCVLOWAT): _IntOption(_rcvlowat),
    (SOL_SOCKET, _O.SO_MARK): _IntOption(_any),
    (SOL_SOCKET, _O.SO_MAX_PACING_RATE): _IntOption(_pacing),
    (SOL_SOCKET, _O.SO_BINDTOIFINDEX): _IntOption(_ifindex),  # not checked against the interfaces
    (SOL_SOCKET, _O.SO_TXREHASH): _IntOption(_txrehash),
    (SOL_TCP, _O.TCP_NODELAY): _IntOption(_flag),
    (SOL_TCP, _O.TCP_MAXSEG): _IntOption(_maxseg, read=_mss_read),  # the MSS asked for; reads give the one in use
    (SOL_TCP, _O.TCP_KEEPIDLE): _IntOption(_within(1, MAX_TCP_KEEPIDLE)),
    (SOL_TCP, _O.TCP_KEEPINTVL): _IntOption(_within(1, MAX_TCP_KEEPINTVL)),
    (SOL_TCP, _O.TCP_KEEPCNT): _IntOption(_within(1, MAX_TCP_KEEPCNT)),
    (SOL_TCP, _O.TCP_SYNCNT): _IntOption(_within(1, MAX_TCP_SYNCNT)),
    (SOL_TCP, _O.TCP_WINDOW_CLAMP): _IntOption(_window_clamp),
    (SOL_TCP, _O.TCP_THIN_LINEAR_TIMEOUTS): _IntOption(_within(0, 1)),
    (SOL_TCP, _O.TCP_USER_TIMEOUT): _IntOption(_within(0, INT_MAX)),
    (SOL_TCP, _O.TCP_NOTSENT_LOWAT): _IntOption(_any),
    (SOL_TCP, _O.TCP_SAVE_SYN): _IntOption(_within(0, 2)),
    (SOL_TCP, _O.TCP_BPF_IW): _IntOption(_initial_window, readable=False),  # before any data is sent
    (SOL_TCP, _O.TCP_BPF_SNDCWND_CLAMP): _IntOption(_positive, readable=False),
    (SOL_TCP, _O.TCP_BPF_DELACK_MAX): _IntOption(_timeout, read=_jiffies_read),  # microseconds, kept in jiffies
    (SOL_TCP, _O.TCP_BPF_RTO_MIN): _IntOption(_timeout, read=_jiffies_read),
    (SOL_TCP, _O.TCP_BPF_SOCK_OPS_CB_FLAGS): _IntOption(_cb_flags),
    (SOL_IP, _O.IP_TOS): _IntOption(_tos),
    (SOL_IPV6, _O.IPV6_TCLASS): _IntOption(_tclass),
    (SOL_IPV6, _O.IPV6_AUTOFLOWLABEL): _IntOption(_flag),
}
_SYN_OPTIONS = frozenset({_O.TCP_BPF_SYN, _O.TCP_BPF_SYN_IP, _O.TCP_BPF_SYN_MAC})  # the saved SYN's headers


# The families each IP level applies to (an IPv6 socket has IPv4's options too, for mapped addresses).
_LEVEL_FAMILIES = {SOL_IP: (AF_INET, AF_INET6), SOL_IPV6: (AF_INET6,)}


def _level_error(view: SockView, level: int) -> int:
    """-EINVAL when options of ``level`` do not apply to the socket, else 0."""
    if not view.full:
        applies = False
    elif level == SOL_SOCKET:
        applies = True
    elif level == SOL_TCP:
        applies = view.protocol == IPPROTO_TCP
    else:
        applies = view.family in _LEVEL_FAMILIES.get(level, ())
    return 0 if applies else -errno.EINVAL


def _name(raw: bytes, limit: int) -> str:
    return raw[:limit].split(b"\0", 1)[0].decode("latin-1")


def setsockopt(opts: SocketOptions, view: SockView, net: NetSettings, interfaces: Mapping[int, str],
               level: int, optname: int, optval: bytes) -> int:
    """``bpf_setsockopt(level, optname, optval)`` on a socket: 0, or a negative errno (nothing
    changed). ``interfaces`` names the host's interfaces by index (SO_BINDTODEVICE)."""
    failed = _level_error(view, level)
    if failed:
        return failed
    call = _Call(view, opts, net, interfaces)
    key = (level, optname)
    option = _INT_OPTIONS.get(key)
    if option is not None:
        if len(optval) != 4:
            return -errno.EINVAL
        try:
            opts.values[key] = option.store(call, int.from_bytes(optval, "little", signed=True))
        except _Refused as refused:
            return -refused.code
        return 0
    if key == (SOL_SOCKET, _O.SO_BINDTODEVICE):
        name = _name(optval, len(optval))
        index = 0 if not name else next((i for i, n in interfaces.items() if n == name), None)
        if index is None:
            return -errno.ENODEV
        opts.values[(SOL_SOCKET, _O.SO_BINDTOIFINDEX)] = index
        return 0
    if key == (SOL_TCP, _O.TCP_CONGESTION):
        if len(optval) < 2:
            return -errno.EINVAL
        name = _name(optval, TCP_CA_NAME_MAX - 1)
        if name not in net.available_congestion_control:
            return -errno.ENOENT
        opts.congestion = name
        return 0
    if key == (SOL_TCP, _O.TCP_SAVED_SYN):
        return -errno.ENOPROTOOPT
    return -errno.EINVAL


def getsockopt(opts: SocketOptions, view: SockView, net: NetSettings, level: int, optname: int,
               size: int) -> tuple[int, bytes]:
    """``bpf_getsockopt(level, optname, optval, size)`` on a socket: ``(0 or a negative errno,
    the size bytes written to optval)``; a failed call zeroes them."""
    zero = bytes(size)
    if level == SOL_TCP and optname in _SYN_OPTIONS:
        return -errno.ENOENT, zero  # no SYN is kept for the callbacks jitbpf runs
    failed = _level_error(view, level)
    if failed:
        return failed, zero
    call = _Call(view, opts, net, {})
    key = (level, optname)
    option = _INT_OPTIONS.get(key)
    if option is not None:
        if size != 4 or not option.readable:
            return -errno.EINVAL, zero
        value = call.get(key)
        if option.read is not None:
            value = option.read(call, value)
        return 0, (value & U32).to_bytes(4, "little")
    if key == (SOL_TCP, _O.TCP_CONGESTION):
        if size < 2:
            return -errno.EINVAL, zero
        name = (opts.congestion or net.congestion_control).encode()[: size - 1]
        return 0, name.ljust(size, b"\0")
    return -errno.EINVAL, zero
