"""The helpers that read a packet, change its metadata, or ask about its device, socket and
cgroups (bpf_skb_load_bytes_relative, bpf_skb_pull_data, bpf_xdp_*_bytes, bpf_check_mtu, the hash,
checksum-level, clone and ECN helpers, cgroup ids, bpf_strncmp, perf samples of packet bytes...):
both engines, checked against the kernel's BPF_PROG_TEST_RUN where it is available (root and
libbpf), else against each other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.errors import VerifierError
from jitbpf.linux.elf import load_elf
from tests.kernel import Kernel
from tests.support import c_builder, packet_run_everywhere

Build = Callable[[str], Path]
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
TC = 'SEC("tc") int prog(struct __sk_buff *skb) { %s }'
XDP = 'SEC("xdp") int prog(struct xdp_md *x) { %s }'
# Ethernet, IPv4, UDP, 12 bytes of payload: 54 bytes.
FRAME = bytes.fromhex("020000000002020000000001080045000024123440004011"
                      "14a30a0000010a000002" "303900350010abcd" "68656c6c6f2c20776f726c64")
LOAD = "__u32 v = 0x55555555; long r = %s; return r ? r * 1000 + (v & 0xff) : v;"  # the error and what v kept
MTU = "__u32 m = %d; long r = bpf_check_mtu(%s, %d, &m, %d, %d); return r * 100000 + m;"
CASES = {
    "relative-mac": TC % (LOAD % "bpf_skb_load_bytes_relative(skb, 0, &v, 4, BPF_HDR_START_MAC)"),
    "relative-net": TC % (LOAD % "bpf_skb_load_bytes_relative(skb, 0, &v, 4, BPF_HDR_START_NET)"),
    "relative-net-past": TC % (LOAD % "bpf_skb_load_bytes_relative(skb, 40, &v, 4, BPF_HDR_START_NET)"),
    "relative-past-0xffff": TC % (LOAD % "bpf_skb_load_bytes_relative(skb, 0x10000, &v, 4, 0)"),
    "relative-bad-start": TC % (LOAD % "bpf_skb_load_bytes_relative(skb, 0, &v, 4, 2)"),
    "pull-0": TC % "return bpf_skb_pull_data(skb, 0);",
    "pull-all": TC % "return bpf_skb_pull_data(skb, 54);",
    "pull-past": TC % "return bpf_skb_pull_data(skb, 55);",
    "pull-then-direct": TC % ("bpf_skb_pull_data(skb, 14); void *d = (void *)(long)skb->data;"
                              "if (d + 14 > (void *)(long)skb->data_end) return 1; return *(__u8 *)(d + 13);"),
    "buff-len": XDP % "return bpf_xdp_get_buff_len(x);",
    "xdp-load": XDP % (LOAD % "bpf_xdp_load_bytes(x, 12, &v, 4)"),
    "xdp-load-last": XDP % (LOAD % "bpf_xdp_load_bytes(x, 50, &v, 4)"),
    "xdp-load-past": XDP % (LOAD % "bpf_xdp_load_bytes(x, 52, &v, 4)"),
    "xdp-load-past-0xffff": XDP % (LOAD % "bpf_xdp_load_bytes(x, 70000, &v, 4)"),
    "xdp-store": XDP % "__u32 v = 0x11223344; long r = bpf_xdp_store_bytes(x, 2, &v, 4); return r ? r : 2;",
    "xdp-store-past": XDP % "__u32 v = 0x11223344; return bpf_xdp_store_bytes(x, 52, &v, 4);",
    "xdp-keeps-pointers": XDP % ("void *d = (void *)(long)x->data; if (d + 8 > (void *)(long)x->data_end) return 1;"
                                 "__u32 v = 7; bpf_xdp_store_bytes(x, 0, &v, 4); return *(__u8 *)d + 1;"),
    "mtu-tc": TC % (MTU % (0, "skb", 0, 0, 0)),
    "mtu-tc-diff-fits": TC % (MTU % (0, "skb", 0, 65536 - 54 + 14, 0)),
    "mtu-tc-diff-over": TC % (MTU % (0, "skb", 0, 65536 - 54 + 15, 0)),
    "mtu-tc-negative-diff": TC % (MTU % (0, "skb", 0, -40, 0)),
    "mtu-tc-given-len": TC % (MTU % (65536, "skb", 0, 0, 0)),
    "mtu-tc-given-len-over": TC % (MTU % (65537, "skb", 0, 0, 0)),
    "mtu-tc-segs": TC % (MTU % (0, "skb", 0, 0, 1)),
    "mtu-tc-segs-with-len": TC % (MTU % (5, "skb", 0, 0, 1)),
    "mtu-tc-bad-flag": TC % (MTU % (0, "skb", 0, 0, 2)),
    "mtu-tc-loopback": TC % (MTU % (0, "skb", 1, 0, 0)),
    "mtu-tc-no-device": TC % (MTU % (0, "skb", 5, 0, 0)),
    "mtu-xdp": XDP % (MTU % (0, "x", 0, 0, 0)),
    "mtu-xdp-over": XDP % (MTU % (0, "x", 0, 65536 - 54 + 15, 0)),
    "mtu-xdp-given-len-over": XDP % (MTU % (65537, "x", 0, 0, 0)),
    "mtu-xdp-flags": XDP % (MTU % (0, "x", 0, 0, 1)),
    "mtu-xdp-no-device": XDP % (MTU % (0, "x", 9, 0, 0)),
    "cgroup-id": TC % "return bpf_skb_cgroup_id(skb);",
    "socket-uid": TC % "return bpf_get_socket_uid(skb);",
    "classid": TC % "return bpf_get_cgroup_classid(skb);",
    "socket-cookie": TC % "return bpf_get_socket_cookie(skb) != 0;",
    "netns-cookie": TC % "return bpf_get_netns_cookie(skb) != 0;",
    "numa": TC % "return bpf_get_numa_node_id();",
    "coarse-clock": TC % "return bpf_ktime_get_coarse_ns() != 0;",
    "strncmp-equal": TC % 'char a[8] = "help"; return bpf_strncmp(a, 8, "help");',
    "strncmp-prefix": TC % 'char a[8] = "helpme"; return bpf_strncmp(a, 4, "help");',
    "strncmp-longer": TC % 'char a[8] = "helpme"; return bpf_strncmp(a, 8, "help");',
    "strncmp-shorter": TC % 'char a[8] = "hel"; return bpf_strncmp(a, 8, "help");',
    "strncmp-no-nul": TC % 'char a[4] = {1, 2, 3, 4}; return bpf_strncmp(a, 4, "\\x01\\x02\\x03\\x04\\x05");',
}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("pktquery"), HEADER)


@pytest.mark.parametrize("name", CASES)
def test_matches_the_kernel(build: Build, kernel: Kernel | None, name: str) -> None:
    packet_run_everywhere(build(CASES[name]), FRAME, kernel)


def test_the_host_answers(build: Build) -> None:
    """What the kernel's test runs answer are defaults: a program sees what the host says."""
    body = "return bpf_get_socket_uid(skb) + bpf_skb_cgroup_id(skb) * 1000 + bpf_get_socket_cookie(skb) * 100000;"
    vm = load_elf(build(TC % body)).programs["prog"].vm()
    vm.std.host.socket_uid, vm.std.host.cgroup_id, vm.std.host.socket_cookie = 7, 3, 2
    assert [int(vm.run_tc(FRAME, engine=e)[0]) for e in ("interp", "jit")] == [203007] * 2
    vm.std.host.packet_socket = False  # no socket: cgroup 0, the overflow uid, no cookie
    assert [int(vm.run_tc(FRAME, engine=e)[0]) for e in ("interp", "jit")] == [65534] * 2


def test_check_mtu_uses_the_hosts_interfaces(build: Build) -> None:
    prog = load_elf(build(TC % (MTU % (0, "skb", 3, 1500 + 14 - 54 + 1, 0)))).programs["prog"]
    vm = prog.vm()
    assert [int(vm.run_tc(FRAME, engine=e)[0]) for e in ("interp", "jit")] == [-1900000] * 2
    vm.std.host.add_route("10.0.0.0/8", 3)  # a 1500-byte device: 1 byte too many
    assert [int(vm.run_tc(FRAME, engine=e)[0]) for e in ("interp", "jit")] == [101500] * 2


def test_pulling_data_invalidates_packet_pointers(build: Build) -> None:
    """As in the kernel, a packet pointer checked before bpf_skb_pull_data is unusable after it."""
    body = ("void *d = (void *)(long)skb->data; if (d + 14 > (void *)(long)skb->data_end) return 1;"
            "bpf_skb_pull_data(skb, 14); return *(__u8 *)(d + 13);")
    with pytest.raises(VerifierError):
        load_elf(build(TC % body)).programs["prog"].vm().check()


PERF = """
struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __uint(key_size, 4); __uint(value_size, 4); } EV SEC(".maps");
SEC("xdp") int prog(struct xdp_md *x) { __u32 meta = 0xabcd; return bpf_perf_event_output(x, &EV, %s, &meta, 4); }
"""


@pytest.mark.parametrize("flags", ["(100ULL << 32)", "BPF_F_CURRENT_CPU | (55ULL << 32)", "(1ULL << 53)"])
def test_perf_samples_of_packet_bytes_fail_as_the_kernels(build: Build, kernel: Kernel | None, flags: str) -> None:
    """Past the packet's end, EFAULT; unknown flag bits, EINVAL (checked before the ring)."""
    packet_run_everywhere(build(PERF % flags), FRAME, kernel)


def test_perf_samples_carry_the_packets_first_bytes(build: Build) -> None:
    prog = load_elf(build(PERF % "BPF_F_CURRENT_CPU | (14ULL << 32)")).programs["prog"]
    for engine in ("interp", "jit"):
        vm = prog.vm()
        assert int(vm.run_xdp(FRAME, engine=engine)[0]) == 0
        assert vm.map_by_name("EV").read_events() == [(0xABCD).to_bytes(4, "little") + FRAME[:14]]


def _with_tos(tos: int) -> bytes:
    return FRAME[:15] + bytes([tos]) + FRAME[16:]


# Ethernet, IPv6 (traffic class 0x02: ECT(0)), UDP, 4 bytes of payload.
FRAME6 = bytes.fromhex("02000000000202000000000186dd" "60200000000c1140" + "00" * 15 + "01" + "00" * 15 + "02"
                       + "303900350010abcd" + "74657374")
SKB_CASES = {
    "set-hash": "bpf_set_hash(skb, 0x1234); return skb->hash;",
    "set-hash-result": "return bpf_set_hash(skb, 0x1234);",
    "set-hash-invalid": "bpf_set_hash(skb, 0x1234); bpf_set_hash_invalid(skb); return skb->hash;",
    "hash-recalc-after-set": "bpf_set_hash(skb, 0x1234); return bpf_get_hash_recalc(skb);",
    "csum-level-query": "return bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY);",
    "csum-level-inc": "bpf_csum_level(skb, BPF_CSUM_LEVEL_INC); bpf_csum_level(skb, BPF_CSUM_LEVEL_INC);"
                      "return bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY);",
    "csum-level-inc-dec": "bpf_csum_level(skb, BPF_CSUM_LEVEL_INC); bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);"
                          "return bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY);",
    "csum-level-max": "for (int i = 0; i < 5; i++) bpf_csum_level(skb, BPF_CSUM_LEVEL_INC);"
                      "return bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY);",
    "csum-level-reset": "bpf_csum_level(skb, BPF_CSUM_LEVEL_INC); bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);"
                        "return bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY);",
    "csum-level-bad": "return bpf_csum_level(skb, 9);",
    "clone-loopback": "return bpf_clone_redirect(skb, 1, 0);",
    "clone-ingress": "return bpf_clone_redirect(skb, 1, BPF_F_INGRESS);",
    "clone-no-device": "return bpf_clone_redirect(skb, 9, 0);",
    "clone-bad-flags": "return bpf_clone_redirect(skb, 1, 4);",
    "ecn": "return bpf_skb_ecn_set_ce(skb);",
    "ancestor-root": "return bpf_skb_ancestor_cgroup_id(skb, 0);",
    "ancestor-past": "return bpf_skb_ancestor_cgroup_id(skb, 1);",
}
TOS_FRAMES = {"not-ect": FRAME, "ect1": _with_tos(1), "ect0": _with_tos(2), "ce": _with_tos(3), "ipv6-ect0": FRAME6}


@pytest.mark.parametrize("name", SKB_CASES)
def test_skb_helpers_match_the_kernel(build: Build, kernel: Kernel | None, name: str) -> None:
    packet_run_everywhere(build(TC % SKB_CASES[name]), FRAME, kernel)


@pytest.mark.parametrize("frame", TOS_FRAMES)
def test_ecn_set_ce_marks_what_the_kernel_marks(build: Build, kernel: Kernel | None, frame: str) -> None:
    """The verdict and the packet after (TOS or traffic class, and the IPv4 checksum)."""
    packet_run_everywhere(build(TC % "return bpf_skb_ecn_set_ce(skb);"), TOS_FRAMES[frame], kernel)


def test_clones_are_recorded_by_the_host(build: Build) -> None:
    prog = load_elf(build(TC % "bpf_clone_redirect(skb, 1, BPF_F_INGRESS); return 0;")).programs["prog"]
    vm = prog.vm()
    vm.run_tc(FRAME, engine="jit")
    assert vm.std.host.clones == [(1, True, FRAME)]


def test_ancestors_come_from_the_hosts_cgroup_path(build: Build) -> None:
    prog = load_elf(build(TC % "return bpf_skb_ancestor_cgroup_id(skb, 1) * 100 + bpf_skb_ancestor_cgroup_id(skb, 2);"
                          )).programs["prog"]
    vm = prog.vm()
    vm.std.host.cgroup_path = (1, 5, 9)
    assert [int(vm.run_tc(FRAME, engine=e)[0]) for e in ("interp", "jit")] == [509] * 2
    vm.std.host.cgroup_path = (1, 5)
    assert [int(vm.run_tc(FRAME, engine=e)[0]) for e in ("interp", "jit")] == [500] * 2
