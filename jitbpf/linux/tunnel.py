"""Tunnel metadata of a packet, as ``bpf_skb_get_tunnel_key`` and ``bpf_skb_set_tunnel_key`` read
and write it through ``struct bpf_tunnel_key``."""

from __future__ import annotations

import enum
import errno
import ipaddress
import struct
from dataclasses import dataclass, field

__all__ = ["KEY_SIZE", "TunnelBit", "TunnelFlag", "TunnelInfo", "from_key", "to_key"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

KEY_SIZE = 44  # sizeof(struct bpf_tunnel_key)
# Older, shorter layouts the kernel still takes: up to tunnel_ext, tunnel_label and local_ipv4
# (and, for IPv4 only, up to remote_ipv6[1]); they are read or written as the leading bytes.
_COMPAT_SIZES = frozenset({22, 24, 28})
_IPV4_ONLY_SIZE = 8
_KEY = struct.Struct("<I16sBBHI16s")  # tunnel_id, remote, tos, ttl, tunnel_ext/flags, label, local
FLOW_LABEL_MASK = 0xFFFFF  # the 20 bits of an IPv6 flow label


class TunnelFlag(enum.IntFlag):
    """The helpers' flags (``BPF_F_TUNINFO_*``, ``BPF_F_*`` of bpf_skb_set_tunnel_key)."""

    TUNINFO_IPV6 = 1 << 0  # the key's addresses are IPv6
    ZERO_CSUM_TX = 1 << 1  # set: no outer checksum
    DONT_FRAGMENT = 1 << 2  # set: the outer header forbids fragmentation
    SEQ_NUMBER = 1 << 3  # set: add sequence numbers
    NO_TUNNEL_KEY = 1 << 4  # set: the tunnel carries no key; get (as TUNINFO_FLAGS): report tunnel_flags


TUNINFO_FLAGS = TunnelFlag.NO_TUNNEL_KEY  # get's name for the same bit
# The flags each helper knows, as plain masks (the complement of an IntFlag keeps its members only).
_GET_FLAGS = int(TunnelFlag.TUNINFO_IPV6 | TUNINFO_FLAGS)
_SET_FLAGS = sum(int(f) for f in TunnelFlag)  # every member


class TunnelBit(enum.IntFlag):
    """The kernel's tunnel flags (``TUNNEL_*``), which tunnel_flags shows as a big-endian u16."""

    CSUM = 0x01  # the outer header has a checksum
    KEY = 0x04  # the tunnel carries a key (tunnel_id)
    SEQ = 0x08  # sequence numbers
    DONT_FRAGMENT = 0x100  # the outer header forbids fragmentation
    NOCACHE = 0x2000  # no cached route: what bpf_skb_set_tunnel_key sets


def _zero(version: int) -> Address:
    return ipaddress.IPv4Address(0) if version == 4 else ipaddress.IPv6Address(0)


@dataclass
class TunnelInfo:
    """A packet's tunnel metadata (the kernel's ``ip_tunnel_info``).

    For a packet received through a tunnel, ``src`` is the far end and ``dst`` this host; what
    ``bpf_skb_set_tunnel_key`` stores is for sending (``tx``): ``dst`` is the key's remote end
    and ``src`` is left 0, as the kernel leaves it to the route. The defaults: IPv4, all zero.
    """

    tunnel_id: int = 0  # the key (VNI, GRE key), 64-bit; struct bpf_tunnel_key shows the low 32 bits
    src: Address = field(default_factory=lambda: ipaddress.IPv4Address(0))  # outer source address
    dst: Address = field(default_factory=lambda: ipaddress.IPv4Address(0))  # outer destination address
    tos: int = 0  # outer TOS / traffic class
    ttl: int = 0  # outer TTL / hop limit
    label: int = 0  # IPv6 flow label
    flags: int = TunnelBit.KEY  # TunnelBit flags (tunnel_flags with BPF_F_TUNINFO_FLAGS)
    tx: bool = False  # made by bpf_skb_set_tunnel_key, for sending

    def __post_init__(self) -> None:
        self.src, self.dst = ipaddress.ip_address(self.src), ipaddress.ip_address(self.dst)
        if self.src.version != self.dst.version:
            raise ValueError(f"tunnel addresses of two families: {self.src} and {self.dst}")

    @property
    def ipv6(self) -> bool:
        return self.src.version == 6


def _address_bytes(a: Address) -> bytes:
    """An address as the key holds it: IPv4 as a host-order u32 (then zeros), IPv6 as is."""
    return int(a).to_bytes(4, "little") + bytes(12) if a.version == 4 else a.packed


def to_key(info: TunnelInfo | None, size: int, flags: int) -> tuple[int, bytes]:
    """``bpf_skb_get_tunnel_key``: (0 or -errno, the ``size`` bytes the key buffer gets; zeros
    on an error)."""
    cleared = bytes(size)
    if info is None or flags & ~_GET_FLAGS:
        return -errno.EINVAL, cleared
    if info.ipv6 != bool(flags & TunnelFlag.TUNINFO_IPV6):
        return -errno.EPROTO, cleared
    if size != KEY_SIZE and size not in _COMPAT_SIZES and not (size == _IPV4_ONLY_SIZE and not info.ipv6):
        return -errno.EINVAL, cleared
    ext = int(info.flags) & 0xFFFF if flags & TUNINFO_FLAGS else 0
    key = _KEY.pack(info.tunnel_id & 0xFFFF_FFFF, _address_bytes(info.src), info.tos & 0xFF, info.ttl & 0xFF,
                    int.from_bytes(ext.to_bytes(2, "big"), "little"), info.label if info.ipv6 else 0,
                    _address_bytes(info.dst))
    return 0, key[:size]


def from_key(raw: bytes, flags: int) -> TunnelInfo | int:
    """``bpf_skb_set_tunnel_key``: the tunnel metadata the key ``raw`` (``size`` bytes) asks for,
    or -errno."""
    if flags & ~_SET_FLAGS:
        return -errno.EINVAL
    if len(raw) != KEY_SIZE and len(raw) not in _COMPAT_SIZES | {_IPV4_ONLY_SIZE}:
        return -errno.EINVAL
    tunnel_id, remote, tos, ttl, ext, label, _local = _KEY.unpack(raw.ljust(KEY_SIZE, b"\0"))
    ipv6 = bool(flags & TunnelFlag.TUNINFO_IPV6)
    if (not ipv6 and label) or ext:
        return -errno.EINVAL
    dst: Address = ipaddress.IPv6Address(remote) if ipv6 else ipaddress.IPv4Address(int.from_bytes(remote[:4],
                                                                                                   "little"))
    bits = TunnelBit.NOCACHE
    bits |= 0 if flags & TunnelFlag.NO_TUNNEL_KEY else TunnelBit.KEY
    bits |= 0 if flags & TunnelFlag.ZERO_CSUM_TX else TunnelBit.CSUM
    bits |= TunnelBit.SEQ if flags & TunnelFlag.SEQ_NUMBER else 0
    bits |= TunnelBit.DONT_FRAGMENT if flags & TunnelFlag.DONT_FRAGMENT else 0
    return TunnelInfo(tunnel_id, _zero(dst.version), dst, tos, ttl, label & FLOW_LABEL_MASK if ipv6 else 0,
                      int(bits), tx=True)
