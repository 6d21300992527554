"""Verifier rules of Linux program types, one minimal program each: jitbpf's verdict and message,
and the running kernel's for the same bytecode (root only)."""

from __future__ import annotations

import pytest

from jitbpf.asm import assemble
from jitbpf.linux.maps import Array, BpfMap, HashMap, PerfEventArray
from tests import kernel_oracle
from tests.support import check_verdict, load

KERNEL = pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
PROG_TYPES = {"socket_filter": 1, "sched_cls": 3, "xdp": 6}

# r2 = the packet's start (tc), r3 = its end, and 8 bytes of it checked (else: to `out`, r0 = 0).
PACKET = "ldxw r2, [r1+76]\nldxw r3, [r1+80]\nmov r4, r2\nadd r4, 8\nmov r0, 0\njgt r4, r3, out\n"
OUT = "mov r0, 0\nout:\nexit"
# Reaches the division by zero only where the verifier does not know r1 is 4.
UNLESS_FOUR = "mov r0, 0\njeq r1, 4, +1\ndiv r0, 0\nexit"

# r0 = the first byte of the value at the key fp-8 points to, not checked against NULL.
LOOKUP = "mov r2, r10\nadd r2, -8\nlddw r1, map:A\ncall 1\nldxb r0, [r0+0]\nexit"
MAYBE_NULL = "invalid mem access 'map_value_or_null'"
# bpf_csum_diff(r10 + off, 0, fp-8, 8, 0)
ZERO_SIZE = ("stdw [r10-8], 0\nmov r1, r10\nadd r1, {off}\nmov r2, 0\nmov r3, r10\nadd r3, -8\nmov r4, 8\nmov r5, 0\n"
             "call 28\nexit")

# (name, program type, program, the kernel's message when it refuses it: None when it accepts)
VERDICTS: list[tuple[str, str, str, str | None]] = [
    # Helpers read and write packet memory only where the kernel says they may (pkt_access).
    ("a packet pointer to bpf_skb_load_bytes", "sched_cls",
     PACKET + "mov r3, r2\nmov r2, 0\nmov r4, 4\ncall 26\n" + OUT, "helper access to the packet is not allowed"),
    ("a packet pointer to bpf_skb_store_bytes", "sched_cls",
     PACKET + "mov r3, r2\nmov r2, 0\nmov r4, 4\nmov r5, 0\ncall 9\n" + OUT,
     "helper access to the packet is not allowed"),
    ("a packet pointer as a map key", "sched_cls", PACKET + "lddw r1, map:A\ncall 1\n" + OUT, None),
    ("a packet pointer to bpf_csum_diff", "sched_cls",
     PACKET + "mov r1, r2\nmov r2, 4\nmov r3, 0\nmov r4, 0\nmov r5, 0\ncall 28\n" + OUT, None),
    # The kernel keeps no range for a quotient or a remainder, of constants neither.
    ("a division", "socket_filter", "mov r1, 8\ndiv r1, 2\n" + UNLESS_FOUR, "div by zero"),
    ("a modulo", "socket_filter", "mov r1, 9\nmod r1, 5\n" + UNLESS_FOUR, "div by zero"),
    # A constant on the stack is known again only where it was spilled: at a slot's start, or zeros.
    ("a constant stored at a slot's start", "socket_filter", "stw [r10-8], 4\nldxw r1, [r10-8]\n" + UNLESS_FOUR,
     None),
    ("a constant stored inside a slot", "socket_filter", "stw [r10-4], 4\nldxw r1, [r10-4]\n" + UNLESS_FOUR,
     "div by zero"),
    ("zeros stored inside a slot", "socket_filter",
     "sth [r10-6], 0\nldxh r1, [r10-6]\nadd r1, 4\n" + UNLESS_FOUR, None),
    # An array's value at an index known to be in range is never NULL (since Linux 6.14): the key
    # must be zeros, or a constant stored with the key's size at a slot's start.
    ("an array value at a known index", "socket_filter", "stw [r10-8], 0\n" + LOOKUP, None),
    ("an array value at a known index stored inside a slot", "socket_filter",
     "stw [r10-4], 0\n" + LOOKUP.replace("-8", "-4"), None),
    ("an array value past the end", "socket_filter", "stw [r10-8], 1\n" + LOOKUP, MAYBE_NULL),
    ("an array value at an unknown index", "socket_filter", "ldxw r2, [r1+0]\nstxw [r10-8], r2\n" + LOOKUP,
     MAYBE_NULL),
    ("an array key of a wider spill", "socket_filter", "stdw [r10-8], 0\n" + LOOKUP, MAYBE_NULL),
    ("a hash value at a known key", "socket_filter", "stw [r10-8], 0\n" + LOOKUP.replace("map:A", "map:H"),
     MAYBE_NULL),
    # A key in range on one path and past the end on the other: the second path is not pruned.
    ("an array key past the end on a second path", "socket_filter",
     "ldxw r3, [r1+0]\nstw [r10-8], 0\njeq r3, 0, +1\nstw [r10-8], 5\n" + LOOKUP, MAYBE_NULL),
    ("an array key past the end on a first path", "socket_filter",
     "ldxw r3, [r1+0]\nstw [r10-8], 5\njeq r3, 0, +1\nstw [r10-8], 0\n" + LOOKUP, MAYBE_NULL),
    # Memory of size zero must still be a place inside the stack: r10 itself is not.
    ("a zero-size read at the top of the stack", "xdp", ZERO_SIZE.format(off=0),
     "invalid read from stack R1 off=0 size=0"),
    ("a zero-size read inside the stack", "xdp", ZERO_SIZE.format(off=-1), None),
    # A scalar spilled whole, or narrow when it fits, is linked to its register: a branch on
    # the fill narrows the register too, and the dead division is pruned.
    ("a spilled unknown narrowed through its fill", "socket_filter",
     "call 7\nstxdw [r10-8], r0\njgt r0, 4, +3\nldxdw r1, [r10-8]\njle r1, 4, +1\ndiv r0, 0\nmov r0, 0\nexit", None),
    ("a 32-bit fill of a 64-bit spill that fits", "socket_filter",
     "call 7\nand r0, 0xffff\nstxdw [r10-8], r0\nldxw r1, [r10-8]\njgt r1, 4, +2\njle r0, 4, +1\ndiv r0, 0\n"
     "mov r0, 0\nexit",
     None),
    ("a 32-bit spill of a value that fits", "socket_filter",
     "call 7\nand r0, 0xffff\nstxw [r10-8], r0\nldxw r1, [r10-8]\njgt r1, 4, +2\njle r0, 4, +1\ndiv r0, 0\n"
     "mov r0, 0\nexit",
     None),
    ("a 32-bit fill of a wider value", "socket_filter",
     "call 7\nlsh r0, 1\nstxdw [r10-8], r0\nldxw r1, [r10-8]\njgt r1, 4, +2\njle r0, 4, +1\ndiv r0, 0\n"
     "mov r0, 0\nexit", "div by zero"),
    # Part of a pointer stored into the stack: refused at a known offset, where it would be a
    # spill; at a variable offset its bytes become unknown data (a privileged loader's rule).
    ("a narrow pointer store at a known offset", "xdp", "mov r4, r10\nadd r4, -16\nstxb [r4+0], r10\nmov r0, 0\nexit",
     "invalid size of register spill"),
    ("a narrow pointer store at a variable offset", "xdp",
     "mov r6, r1\ncall 7\nldxw r3, [r6+4]\nmov r2, r0\nand r2, 7\nmov r4, r10\nadd r4, -16\nadd r4, r2\n"
     "stxb [r4+0], r3\nldxb r0, [r10-16]\nexit", None),
    # Sizes the kernel lets be zero (ARG_CONST_SIZE_OR_ZERO): an event, a socket tuple.
    ("a perf event of a size that may be zero", "xdp",
     "mov r6, r1\ncall 7\nmov r5, r0\nand r5, 7\nstdw [r10-8], 0\nmov r4, r10\nadd r4, -8\nmov r1, r6\n"
     "lddw r2, map:P\nmov r3, 0\ncall 25\nmov r0, 0\nexit", None),
    ("a socket lookup of a tuple size that may be zero", "sched_cls",
     "mov r6, r1\ncall 7\nmov r3, r0\nand r3, 7\nstdw [r10-8], 0\nmov r2, r10\nadd r2, -8\nmov r1, r6\n"
     "mov r4, -1\nmov r5, 0\ncall 84\njeq r0, 0, +2\nmov r1, r0\ncall 86\nmov r0, 0\nexit", None),
    # bpf_tail_call takes a program array only: checked before the map's own helper rules.
    ("a tail call through an array", "socket_filter", "lddw r2, map:A\nmov r3, 0\ncall 12\nmov r0, 0\nexit",
     "expected prog array map for tail call"),
]


@pytest.mark.parametrize(("name", "prog_type", "text", "message"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_verdicts(name: str, prog_type: str, text: str, message: str | None) -> None:
    maps: list[BpfMap] = [Array(key_size=4, value_size=8, max_entries=1, name="A")] if "map:A" in text else []
    if "map:H" in text:
        maps.append(HashMap(key_size=4, value_size=8, max_entries=1, name="H"))
    if "map:P" in text:
        maps.append(PerfEventArray(max_entries=1, name="P"))
    check_verdict(load(text, *maps, prog_type=prog_type), message is None, message)


@KERNEL
@pytest.mark.parametrize(("name", "prog_type", "text", "message"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_verdicts_are_the_kernels(name: str, prog_type: str, text: str, message: str | None) -> None:
    maps = {1: kernel_oracle.KernelMap(2, 4, 8, 1), 2: kernel_oracle.KernelMap(1, 4, 8, 1),
            3: kernel_oracle.KernelMap(4, 4, 4, 1)}
    verdict = kernel_oracle.kernel_verify(assemble(text, maps={"A": 1, "H": 2, "P": 3}), PROG_TYPES[prog_type], maps)
    assert verdict.accepted is (message is None), verdict.log
    if message is not None:
        assert message in verdict.log
