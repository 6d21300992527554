"""Which loads through a socket pointer the kernel allows: the read-only layouts of ``struct
bpf_sock`` and ``struct bpf_tcp_sock`` as ``bpf_sock_is_valid_access``,
``bpf_sock_common_is_valid_access`` and ``bpf_tcp_sock_is_valid_access`` check them."""

from __future__ import annotations

BPF_SOCK_SIZE = 80  # sizeof(struct bpf_sock)
BPF_TCP_SOCK_SIZE = 112  # sizeof(struct bpf_tcp_sock), up to icsk_retransmits
# Fields that may be read narrower than 4 bytes, from their first byte only: family, type,
# protocol, src_port, state and rx_queue_mapping. The others read as a whole u32.
_NARROW_AT = frozenset({4, 8, 12, 44, 72, 76})
# The addresses (src_ip4, src_ip6[4]; dst_ip4, dst_ip6[4]): any aligned 1, 2 or 4 bytes of them.
_ADDRESSES = ((24, 44), (52, 72))
_DST_PORT = 48  # a __be16 then 2 bytes of padding: 4 bytes from 48, or 1 or 2 bytes of the port
_FULL_ONLY = (8, 24)  # type, protocol, mark and priority: a socket that is not full has none
_TCP_U64 = (80, 96)  # bytes_received and bytes_acked, read whole; every other field is a u32


def sock_load_ok(off: int, size: int, *, full: bool) -> bool:
    """Whether ``size`` bytes at ``off`` of a ``struct bpf_sock`` may be loaded (``full``: of a
    full socket, which has every field)."""
    if off < 0 or off >= BPF_SOCK_SIZE or off % size or size == 8:
        return False
    if not full and _FULL_ONLY[0] <= off < _FULL_ONLY[1]:
        return False
    if size == 4:
        return True
    if off in _NARROW_AT or any(lo <= off < hi for lo, hi in _ADDRESSES):
        return True
    return _DST_PORT <= off < _DST_PORT + 2


def tcp_sock_load_ok(off: int, size: int) -> bool:
    """Whether ``size`` bytes at ``off`` of a ``struct bpf_tcp_sock`` may be loaded."""
    if off < 0 or off >= BPF_TCP_SOCK_SIZE or off % size:
        return False
    return size == (8 if _TCP_U64[0] <= off < _TCP_U64[1] else 4)
