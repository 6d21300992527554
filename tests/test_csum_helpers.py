"""The tc checksum helpers (l3/l4_csum_replace, csum_update): both engines, checked against the
kernel's BPF_PROG_TEST_RUN where it is available (root and libbpf), else against each other."""

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
TEMPLATE = 'SEC("tc") int prog(struct __sk_buff *skb) { return %s; }'  # the call's result is the verdict
# Ethernet, IPv4 (checksum at 24), UDP (checksum at 40, 0xABCD; zero in FRAME0).
FRAME = bytes.fromhex("020000000002020000000001080045000024123440004011"
                      "14a30a0000010a000002" "303900350010abcd" "68656c6c6f2c20776f726c64")
FRAME0 = FRAME[:40] + b"\0\0" + FRAME[42:]
CALLS = [
    "bpf_l3_csum_replace(skb, 24, 0x0100000a, 0x0200000a, 4)",
    "bpf_l3_csum_replace(skb, 24, 0x3412, 0x7856, 2)",
    "bpf_l3_csum_replace(skb, 24, 0, 0x12345678, 0)",
    "bpf_l3_csum_replace(skb, 24, 1, 0x12345678, 0)",  # -EINVAL: from with a diff
    "bpf_l3_csum_replace(skb, 24, 1, 2, 3)",  # -EINVAL: size 3
    "bpf_l3_csum_replace(skb, 25, 1, 2, 2)",  # odd offset
    "bpf_l3_csum_replace(skb, 60, 1, 2, 2)",  # past the packet
    "bpf_l3_csum_replace(skb, 24, 1, 2, 2 | BPF_F_PSEUDO_HDR)",  # -EINVAL: not an l3 flag
    "bpf_l4_csum_replace(skb, 40, 0x0100000a, 0x0200000a, BPF_F_PSEUDO_HDR | 4)",
    "bpf_l4_csum_replace(skb, 40, 0x3930, 0x3131, 2)",
    "bpf_l4_csum_replace(skb, 40, 0, 0xdeadbeef, 0)",
    "bpf_l4_csum_replace(skb, 40, 0xabcd, 0xabcd + 1, BPF_F_MARK_MANGLED_0 | 2)",
    "bpf_l4_csum_replace(skb, 40, 0x1, 0x2, BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE | 2)",
    "bpf_l4_csum_replace(skb, 40, 0x1, 0x2, 1 << 9)",  # -EINVAL: unknown flag
    "bpf_l4_csum_replace(skb, 41, 0x1, 0x2, 2)",
    "bpf_l4_csum_replace(skb, 40, 0x1, 0x2, 8)",
    "bpf_csum_update(skb, 0x1234)",
]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    compile_source = c_builder(tmp_path_factory.mktemp("csum"), HEADER)
    return lambda call: compile_source(TEMPLATE % call)


@pytest.mark.parametrize("frame", [FRAME, FRAME0], ids=["udp-sum", "udp-no-sum"])
@pytest.mark.parametrize("call", CALLS)
def test_matches_the_kernel(build: Build, kernel: Kernel | None, call: str, frame: bytes) -> None:
    packet_run_everywhere(build(call), frame, kernel)


def test_only_tc_may_call_them(build: Build) -> None:
    path = build("bpf_l3_csum_replace(skb, 24, 1, 2, 2)")
    with pytest.raises(VerifierError, match="may not call helper"):
        load_elf(path, prog_type="socket_filter").programs["prog"].vm(prog_type="socket_filter").check()
