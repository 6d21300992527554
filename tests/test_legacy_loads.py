"""Legacy packet loads (LD_ABS/LD_IND) as the kernel makes them: offsets from SKF_NET_OFF on count
from the network header, from SKF_LL_OFF on from the link-layer header, and every load reads the
packet as the helpers run before it left it (pushed headers, a moved end). The expected values
are the Linux 6.18 kernel's (BPF_PROG_TEST_RUN on a tc program); where the kernel is available
the same programs run there too."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitbpf import VM, ProgType
from jitbpf.asm import assemble
from jitbpf.isa import SKF_LL_OFF, SKF_NET_OFF
from jitbpf.memory import legacy_offset
from tests import kernel_oracle

# dst, src, IPv4 Ethernet type; then 46 bytes of IPv4 "header" and payload (60 bytes in all)
FRAME = bytes(range(1, 13)) + b"\x08\x00" + bytes([0x45, 0, 0, 60]) + bytes(range(100, 142))
NET, LL = SKF_NET_OFF, SKF_LL_OFF
# What runs before the load (r6 = the context): one helper that moves the packet, or nothing.
BEFORE = {
    "": "",
    "change_head": "mov r1, r6\nmov r2, 4\nmov r3, 0\ncall 43",  # 4 zero bytes in front, the link layer there
    # the second push moves the first (accelerated) tag into the packet; the network header moves with it
    "vlan_push_twice": "mov r1, r6\nmov r2, 0x0081\nmov r3, 5\ncall 18\nmov r1, r6\nmov r2, 0x0081\nmov r3, 6\ncall 18",
    "change_tail": "mov r1, r6\nmov r2, 100\nmov r3, 0\ncall 38",  # 40 zero bytes at the end
    "adjust_room": "mov r1, r6\nmov r2, 8\nmov r3, 0\nmov r4, 0\ncall 50",  # 8 bytes after the network header
}
# (what runs before, the load, r0 after it: 0 when the load ends the program)
CASES = [
    ("", "ldabsb 0", 0x01),
    ("", "ldabsw 56", 0x8A8B8C8D),
    ("", "ldabsw 57", 0),  # one byte past the end
    ("", f"ldabsw {NET}", 0x4500003C),
    ("", f"ldabsh {NET + 1}", 0x0000),
    ("", f"ldabsb {NET + 45}", 0x8D),
    ("", f"ldabsb {NET + 46}", 0),
    ("", f"ldabsh {LL + 12}", 0x0800),
    ("", f"ldabsw {LL + 56}", 0x8A8B8C8D),
    ("", f"ldabsb {LL + 60}", 0),
    ("", f"ldabsb {LL - 1}", 0),  # below the link-layer header's offsets: nothing
    ("", "ldabsb -1", 0),  # the ancillary data offsets (SKF_AD_OFF) of classic BPF: nothing in eBPF
    ("", "ldabsb -4096", 0),
    ("", "ldabsb -2147483648", 0),
    ("", f"mov r7, {NET + 2}\nldindw r7, 1", 0x3C646566),
    ("", f"mov r7, {LL + 3}\nldindw r7, 1", 0x05060708),
    ("", "mov r7, -5\nldindb r7, 4", 0),
    ("", "lddw r7, 0x100000000\nldindb r7, 3", 0x04),  # the offset is the low 32 bits of src + imm
    ("change_head", "ldabsh 12", 0x090A),
    ("change_head", "ldabsh 16", 0x0800),
    ("change_head", f"ldabsw {NET}", 0x4500003C),
    ("change_head", f"ldabsw {LL}", 0),
    ("change_head", "ldabsb 63", 0x8D),
    ("vlan_push_twice", "ldabsh 12", 0x8100),
    ("vlan_push_twice", f"ldabsw {NET}", 0x00050800),
    ("vlan_push_twice", f"ldabsw {LL}", 0x01020304),
    ("vlan_push_twice", "ldabsb 63", 0x8D),
    ("change_tail", "ldabsb 59", 0x8D),
    ("change_tail", "ldabsb 99", 0),
    ("change_tail", "ldabsb 100", 0),
    ("adjust_room", "ldabsb 63", 0x89),
    ("adjust_room", "ldabsb 67", 0x8D),
    ("adjust_room", f"ldabsw {NET}", 0x4500003C),
]


def _program(before: str, load: str) -> bytes:
    return assemble(f"mov r6, r1\n{BEFORE[before]}\nmov r0, 7\n{load}\nexit")


@pytest.mark.parametrize(("before", "load", "expected"), CASES, ids=[f"{b or 'plain'}: {ld}" for b, ld, _ in CASES])
def test_tc_legacy_load(before: str, load: str, expected: int) -> None:
    vm = VM(_program(before, load), prog_type=ProgType.SCHED_CLS)
    for engine in ("interp", "jit"):
        assert int(vm.run_tc(FRAME, engine=engine)[0]) & 0xFFFF_FFFF == expected, engine


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall (the kernel's test runs)")
@pytest.mark.parametrize(("before", "load", "expected"), CASES, ids=[f"{b or 'plain'}: {ld}" for b, ld, _ in CASES])
def test_tc_legacy_load_kernel(before: str, load: str, expected: int) -> None:
    assert kernel_oracle.kernel_run(_program(before, load), int(ProgType.SCHED_CLS), FRAME) == expected


def test_socket_filter_headers() -> None:
    """A socket filter's packet is the frame (as an AF_PACKET socket sees it): the network header
    follows the Ethernet one, as in the kernel."""
    for load, expected in ((f"ldabsw {NET}", 0x4500003C), (f"ldabsh {LL + 12}", 0x0800), ("ldabsb 0", 0x01)):
        vm = VM(_program("", load), prog_type=ProgType.SOCKET_FILTER)
        assert [vm.run_socket_filter(FRAME, engine=e) for e in ("interp", "jit")] == [expected] * 2, load


def test_raw_packet_has_no_link_layer() -> None:
    """A raw run's packet is its memory, which starts at the network header: SKF_NET_OFF counts
    from its first byte, and there is no link-layer header to count from."""
    for load, expected in ((f"ldabsw {NET + 2}", 0x0304_0506), (f"ldabsb {LL}", 0), ("ldabsb 9", 10)):
        vm = VM(assemble(f"mov r0, 7\n{load}\nexit"), verify=False)
        data = bytearray(range(1, 11))
        assert [vm.execute(data), vm.execute_jit(data)] == [expected] * 2, load


@given(st.integers(-(1 << 31), (1 << 31) - 1), st.sampled_from(["b", "h", "w"]))
def test_indirect_offsets(offset: int, size: str) -> None:
    """Any LD_IND offset reads what ``legacy_offset`` says, in both engines."""
    vm = VM(assemble(f"mov r6, r1\nmov r0, 7\nlddw r7, {offset}\nldind{size} r7, 0\nexit"),
            prog_type=ProgType.SCHED_CLS)
    width = {"b": 1, "h": 2, "w": 4}[size]
    start = legacy_offset(offset, 14)
    expected = int.from_bytes(FRAME[start:start + width], "big") if 0 <= start <= len(FRAME) - width else 0
    assert [int(vm.run_tc(FRAME, engine=e)[0]) & 0xFFFF_FFFF for e in ("interp", "jit")] == [expected] * 2


def test_offsets_near_the_boundaries() -> None:
    net = 14
    assert [legacy_offset(o, net) for o in (0, 5, NET, NET + 3, NET - 1, LL, LL + 2, LL - 1, -1)] == \
        [0, 5, 14, 17, NET - 1 - LL, 0, 2, -1, net - 1 + (1 << 20)]
    assert legacy_offset(LL, 0) == -1  # no link-layer header
