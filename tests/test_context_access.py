"""Context accesses as the kernel allows them: each program type's fields at each offset and
width, loads and stores (``*_is_valid_access`` in the kernel). A table of one case per rule,
and, where the kernel is available, every access near the context compared with its verdict."""

from __future__ import annotations

import pytest

from jitbpf import ProgType
from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from jitbpf.linux.programs import PROGRAM_TYPES
from jitbpf.vm import VM
from tests import kernel_oracle

WIDTHS = {1: "b", 2: "h", 4: "w", 8: "dw"}
RETURNS = {ProgType.XDP: 2, ProgType.CGROUP_SKB: 1}  # (an allowed r0 at exit; 0 elsewhere)


def access(op: str, off: int, size: int) -> str:
    w = WIDTHS[size]
    return {"load": f"ldx{w} r2, [r1{off:+d}]", "store": f"st{w} [r1{off:+d}], 0",
            "store_reg": f"mov r2, 0\nstx{w} [r1{off:+d}], r2",
            "atomic": f"mov r2, 1\nlock add{'32' if size == 4 else ''} [r1{off:+d}], r2"}[op]


def program(prog_type: ProgType, op: str, off: int, size: int) -> bytes:
    return assemble(f"{access(op, off, size)}\nmov r0, {RETURNS.get(prog_type, 0)}\nexit")


def accepted(prog_type: ProgType, code: bytes, attach: str | None = None) -> bool:
    with VM(code, prog_type=prog_type, attach=attach) as vm:
        vm.use_standard_helpers()
        try:
            vm.check()
        except VerifierError:
            return False
        return True


TC, CG, SF, XDP = ProgType.SCHED_CLS, ProgType.CGROUP_SKB, ProgType.SOCKET_FILTER, ProgType.XDP
# (program type, operation, offset, width, accepted): a case per rule of the kernel's.
RULES = [
    (TC, "load", 2, 2, True),  # a narrow load of a 32-bit field (len's upper half)
    (TC, "load", 1, 2, False),  # ... misaligned
    (TC, "load", 0, 8, False),  # wider than a field
    (TC, "store", 8, 4, True),  # mark, whole
    (TC, "store", 8, 1, False),  # a narrow store of a field
    (TC, "store", 48, 1, True),  # cb[]: any aligned width
    (TC, "store_reg", 48, 8, True),
    (TC, "store_reg", 50, 4, False),  # ... but aligned
    (TC, "load", 152, 8, True),  # tstamp: whole only
    (TC, "load", 156, 4, False),
    (TC, "load", 180, 1, True),  # tstamp_type: a byte
    (TC, "load", 180, 2, False),
    (TC, "load", 92, 4, False),  # the socket's addresses: not tc's
    (CG, "load", 92, 4, True),  # ... cgroup_skb's, a word at a time
    (CG, "load", 93, 1, False),
    (CG, "load", 88, 1, True),  # family: narrow loads as any field
    (SF, "store", 48, 4, True),  # a socket filter writes cb[] only
    (SF, "store", 8, 4, False),
    (TC, "atomic", 8, 4, False),  # no atomics on the context
    (XDP, "load", 20, 4, False),  # egress_ifindex: devmap programs only
    (XDP, "load", 2, 2, False),  # xdp_md's fields are read whole
]


@pytest.mark.parametrize(("prog_type", "op", "off", "size", "ok"), RULES,
                         ids=[f"{p.name}-{op}-{off}-{size}" for p, op, off, size, _ in RULES])
def test_context_access_rules(prog_type: ProgType, op: str, off: int, size: int, ok: bool) -> None:
    assert accepted(prog_type, program(prog_type, op, off, size)) is ok


def test_a_devmap_program_reads_its_egress_device() -> None:
    assert accepted(XDP, program(XDP, "load", 20, 4), attach="xdp/devmap")


KERNEL_TYPES = {XDP: 6, TC: 3, SF: 1, CG: 8}


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.parametrize("prog_type", KERNEL_TYPES, ids=[p.name for p in KERNEL_TYPES])
def test_every_context_access_agrees_with_the_kernel(prog_type: ProgType) -> None:
    """Loads, stores and atomics of every width at every offset from 4 before the context to 8
    past its end."""
    size = PROGRAM_TYPES[prog_type].context_spec().size
    assert size is not None
    differ = []
    for off in range(-4, size + 8):
        for width in WIDTHS:
            for op in ("load", "store", "store_reg", "atomic"):
                if op == "atomic" and width < 4:
                    continue
                code = program(prog_type, op, off, width)
                ours = accepted(prog_type, code)
                if ours != kernel_oracle.kernel_verify(code, KERNEL_TYPES[prog_type]).accepted:
                    differ.append(f"{op} {width} at {off}: jitbpf {'accepts' if ours else 'refuses'}")
    assert differ == []
