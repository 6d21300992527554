"""bpf_skb_get_tunnel_key / bpf_skb_set_tunnel_key on the tunnel metadata the caller gives a tc
program (``vm.tunnel``) and what the program stores (``vm.sent_tunnel``), in both engines; the
helpers' results against the kernel's test run are in test_skb_room_helpers."""

from __future__ import annotations

import ipaddress

import pytest

from jitbpf.asm import assemble
from jitbpf.linux.programs import ProgType
from jitbpf.linux.tunnel import KEY_SIZE, TunnelBit, TunnelFlag, TunnelInfo, from_key, to_key
from jitbpf.vm import VM
from tests.support import ENGINES

EINVAL, EPROTO = 22, 71

# Reads the tunnel key (flags {flags}) into r10-48 and returns the helper's error, or the u32 at
# offset {off} of the key.
GET = """
    mov r2, r10
    add r2, -48
    mov r3, 44
    mov r4, {flags}
    call 20
    jne r0, 0, out
    ldxw r0, [r10-{at}]
out:
    exit
"""

# Stores the key tunnel_id = 77, remote_ipv4 = 10.0.0.9, ttl = 64.
SET = """
    mov r6, 0
    stxdw [r10-48], r6
    stxdw [r10-40], r6
    stxdw [r10-32], r6
    stxdw [r10-24], r6
    stxdw [r10-16], r6
    stxw [r10-8], r6
    stw [r10-48], 77
    stw [r10-44], 0x0a000009
    stb [r10-27], 64
    mov r2, r10
    add r2, -48
    mov r3, 44
    mov r4, {flags}
    call 21
    exit
"""

FRAME = bytes(64)


def _vm(text: str) -> VM:
    vm = VM(assemble(text), prog_type=ProgType.SCHED_CLS)
    vm.use_standard_helpers()
    return vm


def _r0(vm: VM, engine: str) -> int:
    """r0 of a run on a zeroed frame, as an unsigned 32-bit number (tc verdicts come back signed)."""
    return int(vm.run_tc(FRAME, engine=engine)[0]) & 0xFFFF_FFFF


def _get(off: int, flags: int = 0) -> str:
    return GET.format(flags=flags, at=48 - off)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_default_packet_has_no_tunnel(engine: str) -> None:
    vm = _vm(_get(0))
    assert vm.tunnel is None
    assert _r0(vm, engine) == -EINVAL & 0xFFFF_FFFF


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("off", "flags", "expected"), [
    (0, 0, 0x1234),  # tunnel_id (its low 32 bits)
    (4, 0, 0xC0A80001),  # remote_ipv4, host order: the outer source
    (28, 0, 0xC0A80002),  # local_ipv4: the outer destination
    (20, 0, 0x40 << 8 | 0x10),  # tos, ttl; tunnel_ext 0
    (20, 16, 0x0400_4010),  # BPF_F_TUNINFO_FLAGS: tunnel_flags (big-endian TUNNEL_KEY)
    (0, 1, -EPROTO & 0xFFFF_FFFF),  # an IPv4 tunnel read as IPv6
])
def test_a_program_reads_the_callers_tunnel(engine: str, off: int, flags: int, expected: int) -> None:
    vm = _vm(_get(off, flags))
    vm.tunnel = TunnelInfo(0x5_0000_1234, ipaddress.ip_address("192.168.0.1"), ipaddress.ip_address("192.168.0.2"),
                           tos=0x10, ttl=0x40)
    assert _r0(vm, engine) == expected


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_sets_the_tunnel_to_send_with(engine: str) -> None:
    vm = _vm(SET.format(flags=int(TunnelFlag.DONT_FRAGMENT)))
    assert _r0(vm, engine) == 0
    sent = vm.sent_tunnel
    assert sent is not None and sent.tx
    assert (sent.tunnel_id, str(sent.dst), str(sent.src), sent.ttl) == (77, "10.0.0.9", "0.0.0.0", 64)
    assert sent.flags == TunnelBit.NOCACHE | TunnelBit.KEY | TunnelBit.CSUM | TunnelBit.DONT_FRAGMENT
    assert vm.tunnel is None  # the next packet arrives as the caller says, untouched


def test_the_key_round_trips() -> None:
    info = TunnelInfo(9, ipaddress.ip_address("::"), ipaddress.ip_address("2001:db8::1"), label=0x12345)
    rc, raw = to_key(TunnelInfo(9, info.dst, info.src, label=info.label), KEY_SIZE, TunnelFlag.TUNINFO_IPV6)
    assert rc == 0
    made = from_key(raw, TunnelFlag.TUNINFO_IPV6)
    assert isinstance(made, TunnelInfo) and (made.dst, made.label) == (info.dst, info.label)
    assert from_key(raw[:10], 0) == -EINVAL


def test_addresses_of_two_families_are_refused() -> None:
    with pytest.raises(ValueError, match="two families"):
        TunnelInfo(1, ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1"))
