"""The tc helpers that move an skb's headers or its end (skb_adjust_room, skb_change_proto,
skb_change_head, skb_change_tail, skb_change_type, skb_vlan_push and skb_vlan_pop, whose first tag is the skb's
accelerated one, in the context, and the next ones move into and out of the packet), set its
tunnel key (skb_set/get_tunnel_key, the test-run skb having no tunnel of its own) and
bpf_redirect_neigh that encapsulating programs end with: both engines, checked against the
kernel's BPF_PROG_TEST_RUN where it is available (root and the BPF syscall), else against each
other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.errors import VerifierError
from jitbpf.linux.elf import load_elf
from tests.kernel import Kernel
from tests.support import c_builder, packet_run_everywhere

Build = Callable[[str], Path]
# The program returns the helper's error, or else what the skb looks like afterwards (its length,
# its protocol, its accelerated VLAN tag, its packet type, and a byte read through the reloaded packet pointers,
# which the verifier demands).
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
TEMPLATE = """
#define DECAP_L3_IPV4 (1ULL << 7) /* BPF_F_ADJ_ROOM_DECAP_L3_*: newer than some installed headers */
#define DECAP_L3_IPV6 (1ULL << 8)
#define AND_THEN(a, b) ({ long _r = (a); _r ? _r : (b); })
#define PUSH(proto, tci) bpf_skb_vlan_push(skb, __builtin_bswap16(proto), tci)
/* Sets a tunnel key, reads it back and returns the first error or a sum of what it read. */
#define TUNNEL(set_flags, size, get_flags, get_size, ...) ({ \
    struct bpf_tunnel_key k = {__VA_ARGS__}, o = {}; \
    long _r = bpf_skb_set_tunnel_key(skb, &k, size, set_flags); \
    _r = _r ? _r : bpf_skb_get_tunnel_key(skb, &o, get_size, get_flags); \
    _r ? _r : (long)(o.tunnel_id + o.remote_ipv4 * 3 + o.local_ipv4 * 5 + o.tunnel_ttl * 7 + o.tunnel_tos * 11 \
                     + o.tunnel_ext * 13 + o.tunnel_label * 17 + o.remote_ipv6[3] * 19 + o.local_ipv6[3] * 23); })
SEC("tc") int prog(struct __sk_buff *skb) {
    long r = %s;
    if (r)
        return r;
    unsigned char *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    unsigned int first = data + 1 <= end ? data[0] : 0x1ff;
    return ((skb->len << 20) ^ (skb->protocol << 4) ^ first) + skb->vlan_present * 100000 + skb->vlan_tci * 13
           + skb->vlan_proto * 17 + skb->pkt_type * 7919;
}
"""
ETH = bytes.fromhex("020000000002020000000001")
UDP4 = ETH + bytes.fromhex("0800" "45000024123440004011" "14a30a0000010a000002" "303900350010abcd") + b"hello, world"
UDP6 = ETH + bytes.fromhex("86dd" "6000000000141140" + "20010db8" + "00" * 11 + "01" + "20010db8" + "00" * 11 + "02"
                           + "303900350014abcd") + b"hello, world"
ARP = ETH + bytes.fromhex("0806" "0001080006040001") + bytes(20)
VLAN = ETH + bytes.fromhex("81000064") + UDP4[12:]
QINQ = ETH + bytes.fromhex("88a80005" "81000064") + UDP4[12:]
VLAN_LENGTH = ETH + bytes.fromhex("81000064" "0020" "ffff") + bytes(30)  # an 802.3 frame in a tag
SHORT_TAG = ETH + bytes.fromhex("810000")  # the tag cut off
FRAMES = {"udp4": UDP4, "udp6": UDP6, "arp": ARP}
VLAN_FRAMES = {**FRAMES, "vlan": VLAN, "qinq": QINQ, "vlan-8023": VLAN_LENGTH, "short-tag": SHORT_TAG}
ENCAP4 = "BPF_F_ADJ_ROOM_ENCAP_L3_IPV4"
CALLS = [
    "bpf_skb_adjust_room(skb, 20, BPF_ADJ_ROOM_MAC, 0)",
    "bpf_skb_adjust_room(skb, 8, BPF_ADJ_ROOM_NET, 0)",
    "bpf_skb_adjust_room(skb, -8, BPF_ADJ_ROOM_NET, 0)",
    "bpf_skb_adjust_room(skb, -20, BPF_ADJ_ROOM_MAC, 0)",  # too short for what is left (IPv4)
    "bpf_skb_adjust_room(skb, -12, BPF_ADJ_ROOM_MAC, 0)",
    "bpf_skb_adjust_room(skb, 0, BPF_ADJ_ROOM_NET, 0)",
    "bpf_skb_adjust_room(skb, 0x1000, BPF_ADJ_ROOM_MAC, 0)",  # -EFAULT: more than 0xfff
    "bpf_skb_adjust_room(skb, 8, 2, 0)",  # unknown mode
    "bpf_skb_adjust_room(skb, 8, BPF_ADJ_ROOM_MAC, 1ULL << 9)",  # unknown flag
    f"bpf_skb_adjust_room(skb, 28, BPF_ADJ_ROOM_MAC, {ENCAP4} | BPF_F_ADJ_ROOM_ENCAP_L4_UDP)",
    "bpf_skb_adjust_room(skb, 40, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6)",  # IPv4 in IPv6
    f"bpf_skb_adjust_room(skb, 24, BPF_ADJ_ROOM_MAC, {ENCAP4} | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6)",
    f"bpf_skb_adjust_room(skb, 24, BPF_ADJ_ROOM_MAC, {ENCAP4} | BPF_F_ADJ_ROOM_ENCAP_L4_GRE"
    " | BPF_F_ADJ_ROOM_ENCAP_L4_UDP)",
    f"bpf_skb_adjust_room(skb, 50, BPF_ADJ_ROOM_MAC, {ENCAP4} | BPF_F_ADJ_ROOM_ENCAP_L2_ETH"
    " | BPF_F_ADJ_ROOM_ENCAP_L2(14))",
    f"bpf_skb_adjust_room(skb, 50, BPF_ADJ_ROOM_MAC, {ENCAP4} | BPF_F_ADJ_ROOM_ENCAP_L2_ETH"
    " | BPF_F_ADJ_ROOM_ENCAP_L2(8))",  # inner Ethernet header too short
    f"bpf_skb_adjust_room(skb, 10, BPF_ADJ_ROOM_MAC, {ENCAP4} | BPF_F_ADJ_ROOM_ENCAP_L2(14))",  # more than added
    f"AND_THEN(bpf_skb_adjust_room(skb, 20, BPF_ADJ_ROOM_MAC, {ENCAP4}),"
    f" bpf_skb_adjust_room(skb, 20, BPF_ADJ_ROOM_MAC, {ENCAP4}))",  # -EALREADY: one encapsulation
    "bpf_skb_adjust_room(skb, 20, BPF_ADJ_ROOM_MAC, DECAP_L3_IPV4)",  # decap only shrinks
    "bpf_skb_adjust_room(skb, -20, BPF_ADJ_ROOM_MAC, DECAP_L3_IPV6)",
    "bpf_skb_adjust_room(skb, -8, BPF_ADJ_ROOM_MAC, DECAP_L3_IPV4)",
    "bpf_skb_adjust_room(skb, -8, BPF_ADJ_ROOM_MAC, DECAP_L3_IPV4 | DECAP_L3_IPV6)",
    "bpf_skb_adjust_room(skb, -8, BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_ENCAP_L4_GRE)",  # not a shrink flag
    "bpf_skb_adjust_room(skb, -8, BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_NO_CSUM_RESET | BPF_F_ADJ_ROOM_FIXED_GSO)",
    "bpf_skb_change_proto(skb, __builtin_bswap16(0x86dd), 0)",
    "bpf_skb_change_proto(skb, __builtin_bswap16(0x0800), 0)",
    "bpf_skb_change_proto(skb, __builtin_bswap16(0x0800), 1)",  # -EINVAL: flags
    "bpf_skb_change_proto(skb, __builtin_bswap16(0x0806), 0)",
    "AND_THEN(bpf_skb_change_proto(skb, __builtin_bswap16(0x86dd), 0),"
    " bpf_skb_change_proto(skb, __builtin_bswap16(0x0800), 0))",
    "bpf_skb_change_head(skb, 14, 0)",
    "bpf_skb_change_head(skb, 0, 0)",
    "bpf_skb_change_head(skb, 4, 1)",  # -EINVAL: flags
    "bpf_skb_change_head(skb, 0xffffffff, 0)",  # -EINVAL: the length wraps
    "bpf_skb_change_head(skb, 20000, 0)",  # -EINVAL: past the largest skb
    # After change_head the MAC header is longer: adjust_room inserts after it.
    "AND_THEN(bpf_skb_change_head(skb, 4, 0), bpf_skb_adjust_room(skb, 8, BPF_ADJ_ROOM_NET, 0))",
    "bpf_skb_change_tail(skb, skb->len + 10, 0)",  # zero-filled
    "bpf_skb_change_tail(skb, skb->len - 10, 0)",
    "bpf_skb_change_tail(skb, 14, 0)",  # the MAC header only
    "bpf_skb_change_tail(skb, 13, 0)",  # -EINVAL: shorter than the MAC header
    "bpf_skb_change_tail(skb, 200, 1)",  # -EINVAL: flags
    "bpf_skb_change_tail(skb, 20000, 0)",  # -EINVAL: past the largest skb
    f"AND_THEN(bpf_skb_adjust_room(skb, 20, BPF_ADJ_ROOM_MAC, {ENCAP4}), bpf_skb_change_tail(skb, 200, 0))",
    "bpf_skb_change_type(skb, 3)",  # PACKET_OTHERHOST
    "bpf_skb_change_type(skb, 4)",  # -EINVAL: only host, broadcast, multicast and other host
    "AND_THEN(bpf_skb_change_type(skb, 1), bpf_skb_change_type(skb, 0))",
    "PUSH(0x8100, 100)",
    "PUSH(0x88a8, 5)",
    "PUSH(0x1234, 0xffff)",  # another type is taken as 802.1Q
    "AND_THEN(PUSH(0x8100, 100), PUSH(0x88a8, 200))",  # the first tag moves into the packet
    "AND_THEN(PUSH(0x8100, 1), AND_THEN(PUSH(0x8100, 2), PUSH(0x88a8, 3)))",
    "bpf_skb_vlan_pop(skb)",
    "AND_THEN(PUSH(0x8100, 100), bpf_skb_vlan_pop(skb))",
    "AND_THEN(PUSH(0x8100, 100), AND_THEN(PUSH(0x88a8, 200), bpf_skb_vlan_pop(skb)))",
    "AND_THEN(bpf_skb_vlan_pop(skb), bpf_skb_vlan_pop(skb))",
    # A tag in the packet makes the MAC header longer: adjust_room inserts after it.
    "AND_THEN(AND_THEN(PUSH(0x8100, 7), PUSH(0x8100, 8)), bpf_skb_adjust_room(skb, 8, BPF_ADJ_ROOM_NET, 0))",
    "({ struct bpf_tunnel_key k; bpf_skb_get_tunnel_key(skb, &k, sizeof(k), 0); })",  # -EINVAL: no tunnel
    "({ struct bpf_tunnel_key k = {.tunnel_id = 5}; bpf_skb_set_tunnel_key(skb, &k, sizeof(k), 0); })",
    "TUNNEL(0, sizeof(k), 0, sizeof(o), .tunnel_id = 5, .remote_ipv4 = 0x0a000001, .tunnel_ttl = 64, .tunnel_tos = 4)",
    "TUNNEL(0, sizeof(k), 16, sizeof(o), .tunnel_id = 5)",  # BPF_F_TUNINFO_FLAGS: the tunnel flags too
    "TUNNEL(2 | 4 | 8, sizeof(k), 16, sizeof(o), .tunnel_id = 5)",  # no checksum, don't fragment, sequence
    "TUNNEL(16, sizeof(k), 16, sizeof(o), .tunnel_id = 5)",  # BPF_F_NO_TUNNEL_KEY
    "TUNNEL(0, sizeof(k), 1, sizeof(o), .tunnel_id = 5)",  # -EPROTO: an IPv4 tunnel read as IPv6
    "TUNNEL(0, sizeof(k), 32, sizeof(o), .tunnel_id = 5)",  # -EINVAL: get flags
    "TUNNEL(32, sizeof(k), 0, sizeof(o), .tunnel_id = 5)",  # -EINVAL: set flags
    "TUNNEL(0, sizeof(k), 0, sizeof(o), .tunnel_label = 1)",  # -EINVAL: a label for IPv4
    "TUNNEL(0, sizeof(k), 0, sizeof(o), .tunnel_ext = 1)",  # -EINVAL: tunnel_ext
    "TUNNEL(0, 10, 0, sizeof(o), .tunnel_id = 5)",  # -EINVAL: no such layout
    "TUNNEL(0, 24, 0, 28, .tunnel_id = 5, .remote_ipv4 = 7, .tunnel_label = 0)",  # older layouts
    "TUNNEL(0, 8, 0, 8, .tunnel_id = 5, .remote_ipv4 = 7)",
    "TUNNEL(1, 8, 1, sizeof(o), .tunnel_id = 5)",  # -EINVAL: the 8-byte layout is IPv4 only
    "TUNNEL(1, sizeof(k), 1, sizeof(o), .tunnel_id = 9, .remote_ipv6 = {1, 2, 3, 4}, .tunnel_label = 0x123456)",
    "TUNNEL(1, sizeof(k), 1, 8, .tunnel_id = 9, .remote_ipv6 = {1, 2, 3, 4})",  # -EINVAL: IPv4's layout
    "bpf_redirect_neigh(3, 0, 0, 0)",
    "bpf_redirect_neigh(3, 0, 0, 1)",  # TC_ACT_SHOT: flags
    "({ struct bpf_redir_neigh nh = {.nh_family = 2, .ipv4_nh = 0x0100000a};"
    " bpf_redirect_neigh(3, &nh, sizeof(nh), 0); })",
    "({ struct bpf_redir_neigh nh = {.nh_family = 2}; bpf_redirect_neigh(3, &nh, 8, 0); })",  # too short
]


@pytest.fixture(scope="module")
def compile_c(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("room"), HEADER)


@pytest.fixture(scope="module")
def build(compile_c: Build) -> Build:
    return lambda call: compile_c(TEMPLATE % call)


@pytest.mark.parametrize("frame", list(VLAN_FRAMES.values()), ids=list(VLAN_FRAMES))
@pytest.mark.parametrize("call", CALLS)
def test_matches_the_kernel(build: Build, kernel: Kernel | None, call: str, frame: bytes) -> None:
    packet_run_everywhere(build(call), frame, kernel)


def test_vlan_tags_move_between_the_context_and_the_packet(build: Build) -> None:
    _, after = packet_run_everywhere(build("AND_THEN(PUSH(0x8100, 100), PUSH(0x88a8, 200))"), UDP4, None)
    assert after == UDP4[:12] + bytes.fromhex("81000064") + UDP4[12:]
    popped, after = packet_run_everywhere(build("bpf_skb_vlan_pop(skb)"), QINQ, None)
    assert after == UDP4  # both tags out of the packet: the inner one is the accelerated tag now
    assert popped == packet_run_everywhere(build("PUSH(0x8100, 100)"), UDP4, None)[0]


def test_growth_past_the_headroom_fails_cleanly(build: Build) -> None:
    # Each call may add up to 0xfff bytes; the frame's headroom bounds the total (-ENOMEM).
    call = "AND_THEN(bpf_skb_change_head(skb, 1000, 0), bpf_skb_change_head(skb, 1000, 0))"
    prog = load_elf(build(call)).programs["prog"]
    for engine in ("interp", "jit"):
        retval, after = prog.run(UDP4, engine=engine)
        assert int(retval) & 0xFFFF_FFFF == -12 & 0xFFFF_FFFF
        assert bytes(after) == bytes(1000) + UDP4


# The helpers the kernel says change packet data (bpf_helper_changes_pkt_data), a few of each kind.
MOVES = ["bpf_skb_change_head(skb, 4, 0)", "bpf_clone_redirect(skb, 1, 0)", "bpf_l3_csum_replace(skb, 0, 0, 0, 0)",
         "bpf_skb_pull_data(skb, 0)", "bpf_skb_vlan_pop(skb)"]


MOVED = """
SEC("tc") int prog(struct __sk_buff *skb) {
    unsigned char *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    if (data + 1 > end)
        return 0;
    CALL;
    return data[0];
}
"""


@pytest.mark.parametrize("call", MOVES)
def test_packet_pointers_are_invalid_after_a_move(compile_c: Build, kernel: Kernel | None, call: str) -> None:
    out = compile_c(MOVED.replace("CALL", call))
    with pytest.raises(VerifierError, match="invalid mem access 'scalar'"):
        load_elf(out).programs["prog"].vm().check()
    if kernel is not None:
        assert isinstance(kernel.load(out, "prog", None), str)  # refused there too


def test_only_tc_may_call_them(build: Build) -> None:
    path = build("bpf_skb_change_head(skb, 14, 0)")
    with pytest.raises(VerifierError, match="may not call helper"):
        load_elf(path, prog_type="socket_filter").programs["prog"].vm(prog_type="socket_filter").check()
