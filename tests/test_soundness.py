"""Verifier soundness: one minimal program per rule whose wrong proof would let the JIT drop a
needed check, each checked against the running kernel's verifier where this process may load
programs (root); and the closest programs that must still be accepted.

A case names its program type and maps, and either the fragment of jitbpf's message (rejected)
or None (accepted); the kernel, when asked, must agree on accepting and, for rejections, say the
given fragment of its own log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from jitbpf.linux.maps import BPF_F_RDONLY_PROG, Array, BpfMap, Queue, RingBuf
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM

from . import kernel_oracle

MapMaker = Callable[[], BpfMap]
BPF_F_STRICT_ALIGNMENT = 1  # a load flag: every access aligned, not only the stack's


def rodata() -> BpfMap:
    return Array(value_size=8, max_entries=1, flags=BPF_F_RDONLY_PROG, name="RO")


def queue() -> BpfMap:
    return Queue(value_size=8, max_entries=4, name="Q")


def array() -> BpfMap:
    return Array(value_size=8, max_entries=4, name="A")


def ring() -> BpfMap:
    return RingBuf(max_entries=4096, name="RB")


# Reserve 16 bytes of the ring RB (r0: the record or NULL); r6 = skb->len, a variable.
RESERVE = """
    ldxw r6, [r1]
    lddw r1, map:RB
    mov r2, 16
    mov r3, 0
    call 131
"""


def reserved(rest: str) -> str:
    return RESERVE + rest


def sized_record(size: str, access: str) -> str:
    """A record reserved with ``size`` (the instruction setting r2), accessed by ``access`` when
    not NULL, then submitted."""
    return RESERVE.replace("mov r2, 16", size) + f"""
        jeq r0, 0, out
        {access}
        mov r1, r0
        mov r2, 0
        call 132
    out:
        mov r0, 0
        exit"""


@dataclass(frozen=True)
class Case:
    """A program, where it runs, and what both verifiers must say."""

    name: str
    source: str
    prog_type: ProgType
    jitbpf: str | None  # fragment of jitbpf's rejection, or None: accepted
    kernel: str = ""  # fragment of the kernel's log when it rejects
    maps: tuple[MapMaker, ...] = ()
    strict: bool = False  # loaded with BPF_F_STRICT_ALIGNMENT


# XDP: r2 = data, r3 = data_end, r4 = a variable in [1, 256] (ingress_ifindex & 0xff, plus 1).
XDP_VAR = """
    ldxw r2, [r1]
    ldxw r3, [r1+4]
    ldxw r4, [r1+12]
    and r4, 0xff
    add r4, 1
    add r2, r4
"""
# XDP: r2 = data, r3 = data_end, and eight paths with as many values of r8, which USE_R8 makes
# precise (a stack offset), so that the paths cannot be pruned by one another.
EIGHT_PATHS = """
    ldxw r2, [r1]
    ldxw r3, [r1+4]
    ldxw r5, [r1+12]
    mov r8, 0
    jgt r5, 1, +1
    or r8, 8
    jgt r5, 2, +1
    or r8, 16
    jgt r5, 3, +1
    or r8, 32
"""
USE_R8 = """
    mov r9, r10
    add r9, -64
    add r9, r8
    stb [r9+0], 0
"""
# A subprogram f returning 0.
LOCAL_F = """
    f:
        mov r0, 0
        exit"""
# __sk_buff: r2 = data, r3 = data_end, and r2 + 1 <= r3 proven on the fall-through edge.
SKB_ONE_BYTE = """
    ldxw r2, [r1+76]
    ldxw r3, [r1+80]
    mov r4, r2
    add r4, 1
    jgt r4, r3, +1
    stb [r2], 1
"""
SPILL_THEN_POP = """
    stxdw [r10-8], r10
    lddw r1, map:Q
    mov r2, r10
    add r2, -8
    call {helper}
    ldxdw r3, [r10-8]
    stb [r3], 0
    mov r0, 0
    exit
"""

CASES = [
    # 1. 32-bit branches: a value compared with itself keeps bit 31; a constant with bit 31 set
    # takes its branch.
    Case("jeq32-self-keeps-bit-31", """
        call 7
        mov32 r0, r0
        jeq32 r0, r0, +2
        mov r0, 0
        exit
        rsh r0, 31
        mov r2, r10
        add r2, -1
        add r2, r0
        stb [r2], 0
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "invalid stack access", "invalid variable-offset write to stack"),
    Case("jeq32-all-ones-is-taken", """
        mov r2, -1
        mov32 r2, r2
        jeq32 r2, -1, +2
        mov r0, 0
        exit
        stb [r10+8], 0
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "invalid stack access", "invalid write to stack"),
    Case("jne32-all-ones-falls-through", """
        mov r2, -1
        mov32 r2, r2
        jne32 r2, -1, +1
        stb [r10+8], 0
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "invalid stack access", "invalid write to stack"),
    Case("jslt32-negative-is-taken", """
        mov32 r2, -5
        jslt32 r2, 0, +2
        mov r0, 0
        exit
        stb [r10+8], 0
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "invalid stack access", "invalid write to stack"),
    Case("jeq32-bounds-a-32-bit-value", """
        call 7
        mov32 r0, r0
        jgt32 r0, 7, +5
        mov r2, r10
        add r2, -8
        add r2, r0
        stb [r2], 0
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, None),
    # 2. Helpers that write their buffer: a pointer spilled there is gone, and the buffer is
    # initialised afterwards.
    Case("pop-overwrites-a-spilled-pointer", SPILL_THEN_POP.format(helper=88), ProgType.SOCKET_FILTER,
         "invalid mem access 'scalar'", "invalid mem access 'scalar'", (queue,)),
    Case("peek-overwrites-a-spilled-pointer", SPILL_THEN_POP.format(helper=89), ProgType.SOCKET_FILTER,
         "invalid mem access 'scalar'", "invalid mem access 'scalar'", (queue,)),
    Case("pop-fills-uninitialised-stack", """
        lddw r1, map:Q
        mov r2, r10
        add r2, -8
        call 88
        ldxdw r0, [r10-8]
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, None, maps=(queue,)),
    # 3. Packet pointers: the proven range starts at the variable base, whatever the variable's
    # minimum, so a negative offset is outside the packet.
    Case("packet-negative-offset-after-variable", XDP_VAR + """
        ldxb r0, [r2-1]
        mov r0, 2
        exit""", ProgType.XDP, "offset is outside of the packet", "offset is outside of the packet"),
    Case("packet-negative-offset-after-check", XDP_VAR + """
        mov r5, r2
        add r5, 4
        jgt r5, r3, +1
        ldxb r0, [r2-1]
        mov r0, 2
        exit""", ProgType.XDP, "offset is outside of the packet", "offset is outside of the packet"),
    Case("packet-negative-offset-helper-argument", XDP_VAR + """
        add r2, -1
        lddw r1, map:A
        call 1
        mov r0, 2
        exit""", ProgType.XDP, "offset is outside of the packet", "offset is outside of the packet", (array,)),
    Case("packet-variable-offset-checked", XDP_VAR + """
        mov r5, r2
        add r5, 2
        jgt r5, r3, +1
        ldxh r0, [r2]
        mov r0, 2
        exit""", ProgType.XDP, None),
    # 4. Writability: read-only maps, packets of program types that may only read them,
    # read-only context fields.
    Case("rodata-store", """
        lddw r1, map_value:RO+0
        stb [r1], 1
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "write into map forbidden", "write into map forbidden", (rodata,)),
    Case("rodata-lookup-store", """
        stw [r10-4], 0
        mov r2, r10
        add r2, -4
        lddw r1, map:RO
        call 1
        jeq r0, 0, +1
        stdw [r0], 1
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "write into map forbidden", "write into map forbidden", (rodata,)),
    Case("rodata-atomic", """
        lddw r1, map_value:RO+0
        mov r2, 1
        lock add [r1], r2
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "write into map forbidden", "write into map forbidden", (rodata,)),
    Case("rodata-helper-fills-it", """
        lddw r2, map_value:RO+0
        lddw r1, map:Q
        call 88
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "write into map forbidden", "write into map forbidden", (queue, rodata)),
    Case("rodata-load", """
        lddw r1, map_value:RO+0
        ldxdw r0, [r1]
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, None, maps=(rodata,)),
    Case("cgroup-skb-packet-store", SKB_ONE_BYTE + "mov r0, 1\nexit", ProgType.CGROUP_SKB, "cannot write into packet",
         "cannot write into packet"),
    Case("sched-cls-packet-store", SKB_ONE_BYTE + "mov r0, 0\nexit", ProgType.SCHED_CLS, None),
    Case("sk-msg-packet-store", """
        ldxdw r2, [r1]
        ldxdw r3, [r1+8]
        mov r4, r2
        add r4, 1
        jgt r4, r3, +1
        stb [r2], 1
        mov r0, 1
        exit""", ProgType.SK_MSG, None),
    Case("cgroup-skb-read-only-field", "stw [r1], 0\nmov r0, 1\nexit", ProgType.CGROUP_SKB, "write to the context",
         "invalid bpf_context access off=0 size=4"),
    Case("cgroup-skb-writable-field", "stw [r1+8], 0\nmov r0, 1\nexit", ProgType.CGROUP_SKB, None),
    # 5. Legacy packet loads: only socket filters and tc programs, with the context in r6; they
    # clobber r1-r5 as a helper call does.
    Case("ld-abs-in-xdp", "mov r6, r1\nldabsb 0\nmov r0, 2\nexit", ProgType.XDP,
         "BPF_LD_[ABS|IND] instructions not allowed for this program type",
         "BPF_LD_[ABS|IND] instructions not allowed for this program type"),
    Case("ld-abs-in-cgroup-skb", "mov r6, r1\nldabsb 0\nmov r0, 1\nexit", ProgType.CGROUP_SKB,
         "BPF_LD_[ABS|IND] instructions not allowed", "BPF_LD_[ABS|IND] instructions not allowed"),
    Case("ld-abs-without-ctx-in-r6", "mov r6, 0\nldabsb 0\nmov r0, 0\nexit", ProgType.SOCKET_FILTER,
         "R6 != pointer to skb", "R6 != pointer to skb"),
    Case("ld-abs-with-moved-ctx-in-r6", "mov r6, r1\nadd r6, 4\nldabsb 0\nmov r0, 0\nexit", ProgType.SOCKET_FILTER,
         "R6 != pointer to skb", ""),
    Case("ld-abs-clobbers-r1", "mov r6, r1\nldabsb 0\nmov r0, r1\nexit", ProgType.SOCKET_FILTER,
         "read of uninitialised register r1", "R1 !read_ok"),
    Case("ld-ind-in-a-socket-filter", "mov r6, r1\nmov r7, 2\nldindh r7, 0\nmov r0, 0\nexit",
         ProgType.SOCKET_FILTER, None),
    Case("ld-abs-in-sched-cls", "mov r6, r1\nldabsw 12\nexit", ProgType.SCHED_CLS, None),
    # Ring buffer reservations are references: every path must submit or discard the record.
    # The size a record is reserved with keeps its low 32 bits, as the kernel's u32 mem_size does
    # (at run time so large a request gets NULL): 2**32 + 16 bytes make a record of 16.
    Case("ringbuf-reserve-size-low-32-bits", sized_record("lddw r2, 0x100000010", "stdw [r0+8], 1"),
         ProgType.SOCKET_FILTER, None, maps=(ring,)),
    Case("ringbuf-reserve-size-low-32-bits-past-the-end", sized_record("lddw r2, 0x100000010", "stdw [r0+16], 1"),
         ProgType.SOCKET_FILTER, "mem_size=16 off=16 size=8", "invalid access to memory", (ring,)),
    Case("ringbuf-reserve-size-all-ones", sized_record("mov r2, -1", "stdw [r0+4096], 1"), ProgType.SOCKET_FILTER,
         None, maps=(ring,)),
    Case("ringbuf-record-never-released", reserved("mov r0, 0\nexit"), ProgType.SOCKET_FILTER,
         "Unreleased reference", "Unreleased reference", (ring,)),
    Case("ringbuf-record-released-on-one-path", reserved("""
        jeq r0, 0, out
        jgt r6, 60, out
        mov r1, r0
        mov r2, 0
        call 132
    out:
        mov r0, 0
        exit"""), ProgType.SOCKET_FILTER, "Unreleased reference", "Unreleased reference", (ring,)),
    Case("ringbuf-submit-unchecked-null", reserved("mov r1, r0\nmov r2, 0\ncall 132\nmov r0, 0\nexit"),
         ProgType.SOCKET_FILTER, "checked against NULL", "expected=ringbuf_mem", (ring,)),
    Case("ringbuf-submit-moved-pointer", reserved("""
        jeq r0, 0, out
        mov r1, r0
        add r1, 8
        mov r2, 0
        call 133
    out:
        mov r0, 0
        exit"""), ProgType.SOCKET_FILTER, "must have zero offset when passed to release func",
         "must have zero offset when passed to release func", (ring,)),
    Case("ringbuf-record-used-after-submit", reserved("""
        jeq r0, 0, out
        mov r7, r0
        mov r1, r0
        mov r2, 0
        call 132
        mov r1, r7
        mov r2, 0
        call 132
    out:
        mov r0, 0
        exit"""), ProgType.SOCKET_FILTER, "must be a reference acquired earlier", "R1 type=scalar expected=ringbuf_mem",
         (ring,)),
    Case("ringbuf-submit-of-a-map-value", """
        stdw [r10-8], 0
        lddw r1, map:A
        mov r2, r10
        add r2, -8
        call 1
        jeq r0, 0, out
        mov r1, r0
        mov r2, 0
        call 132
    out:
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "must be a reference acquired earlier", "expected=ringbuf_mem", (array,)),
    Case("ringbuf-record-submitted-or-discarded", reserved("""
        jeq r0, 0, out
        mov r1, r0
        mov r2, 0
        jgt r6, 60, drop
        call 132
        ja out
    drop:
        call 133
    out:
        mov r0, 0
        exit"""), ProgType.SOCKET_FILTER, None, maps=(ring,)),
    # A helper that only reads the context takes it unmodified, as those that change the packet.
    *(Case(f"socket-cookie-of-the-context{suffix}", f"""
        {move}
        call 46
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, why, kernel) for suffix, move, why, kernel in (
        ("", "mov r2, 0", None, ""),
        ("-moved-back", "add r1, -612", "negative offset ctx ptr r1 off=-612", "negative offset ctx ptr R1 off=-612"),
        ("-replaced-by-0", "mov r1, 0", "r1 type=scalar expected=ctx", "R1 type=scalar expected=ctx"))),
    # Only lwt_xmit programs may grow the packet's headroom.
    *(Case(f"{name}-makes-headroom", """
        mov r2, 34
        mov r3, 0
        call 43
        mov r0, 0
        exit""", kind, why, kernel) for name, kind, why, kernel in (
        ("lwt-xmit", ProgType.LWT_XMIT, None, ""),
        ("lwt-out", ProgType.LWT_OUT, "may not call helper",
         "program of this type cannot use helper bpf_skb_change_head#43"))),
    # Stack accesses are aligned to their size, whatever the loader's flags (the kernel's spill
    # tracking relies on it); a variable offset must keep them aligned too.
    *(Case(f"stack-{name}", f"""
        {body}
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, why, kernel) for name, body, why, kernel in (
        ("word-store-aligned", "stw [r10-12], 0", None, ""),
        ("word-store-misaligned", "stw [r10-6], 0", "misaligned stack access off 0+0+-6 size 4",
         "misaligned stack access off 0+0+-6 size 4"),
        ("byte-store-anywhere", "stb [r10-7], 0", None, ""),
        ("load-misaligned", "stdw [r10-8], 0\n ldxh r0, [r10-3]", "misaligned stack access", "misaligned stack access"),
        ("variable-offset-misaligned",
         "ldxw r2, [r1]\n and r2, 4\n mov r3, r10\n add r3, r2\n stdw [r3-16], 0", "misaligned stack access",
         "misaligned stack access off (0x0; 0x4)+0+-16 size 8"))),
    # r1-r5 are scratch after a helper call, a local call or a legacy packet load; r6-r9 are kept.
    *(Case(f"{name}-then-r{reg}", f"""
        mov r6, r1
        mov r2, 1
        {call}
        mov r0, r{reg}
        exit{LOCAL_F if "local" in call else ""}""", ProgType.SOCKET_FILTER,
           None if reg == 6 else f"read of uninitialised register r{reg}", "" if reg == 6 else f"R{reg} !read_ok")
      for name, call in (
        ("helper-call", "call 7"), ("local-call", "call local f"), ("legacy-load", "ldabsb 0"))
      for reg in (2, 6)),
    # With strict alignment, packet data counts from 2 past an aligned address (NET_IP_ALIGN):
    # a word at offset 2 is aligned, one at offset 0 is not; without it, both are allowed.
    *(Case(f"packet-word-at-{at}{'-strict' if strict else ''}", SKB_ONE_BYTE.replace("add r4, 1", "add r4, 8")
           .replace("stb [r2], 1", f"ldxw r0, [r2+{at}]") + "mov r0, 0\nexit", ProgType.SCHED_CLS,
           "misaligned packet access" if strict and at == 0 else None,
           "misaligned packet access off 2+0+0+0 size 4" if strict and at == 0 else "", strict=strict)
      for at in (0, 2) for strict in (False, True)),
    # A ring buffer record is memory of the reserved (constant) size: writes and helper
    # arguments inside it are allowed, past it refused; the size must be a known constant.
    Case("ringbuf-record-written-within-its-size", reserved("""
        jeq r0, 0, out
        stdw [r0+8], 1
        mov r1, r0
        mov r2, 0
        call 132
    out:
        mov r0, 0
        exit"""), ProgType.SOCKET_FILTER, None, maps=(ring,)),
    Case("ringbuf-record-written-past-its-size", reserved("""
        jeq r0, 0, out
        stdw [r0+12], 1
        mov r1, r0
        mov r2, 0
        call 132
    out:
        mov r0, 0
        exit"""), ProgType.SOCKET_FILTER, "mem_size=16 off=12 size=8",
         "invalid access to memory, mem_size=16 off=12 size=8", (ring,)),
    Case("ringbuf-record-written-before-the-null-check", reserved("""
        stdw [r0+0], 1
        mov r0, 0
        exit"""), ProgType.SOCKET_FILTER, "possible null pointer dereference",
         "invalid mem access 'ringbuf_mem_or_null'", (ring,)),
    *(Case(f"ringbuf-record-filled-by-a-helper-{n}-bytes", f"""
        mov r9, r1
        lddw r1, map:RB
        mov r2, 16
        mov r3, 0
        call 131
        jeq r0, 0, out
        mov r7, r0
        mov r1, r9
        mov r2, 0
        mov r3, r7
        mov r4, {n}
        call 26
        mov r1, r7
        mov r2, 0
        call 133
    out:
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, None if n <= 16 else "mem_size=16 off=0 size=17",
           "" if n <= 16 else "invalid access to memory, mem_size=16 off=0 size=17", (ring,)) for n in (16, 17)),
    Case("ringbuf-reserve-of-a-variable-size", """
        ldxw r6, [r1]
        and r6, 8
        lddw r1, map:RB
        mov r2, r6
        mov r3, 0
        call 131
        jeq r0, 0, out
        mov r1, r0
        mov r2, 0
        call 133
    out:
        mov r0, 0
        exit""", ProgType.SOCKET_FILTER, "is not a known constant", "R2 is not a known constant", (ring,)),
    # States met at a join point are merged (jitbpf's widening, the kernel has none), but never
    # where a packet range differs: the path without the proof sets a flag (r7) beside the check,
    # tested before the packet store.
    *(Case(f"packet-proof-kept-apart-from-a-flag-{'checked' if checked else 'unchecked'}", EIGHT_PATHS + f"""
        mov r4, r2
        add r4, 4
        jgt r4, r3, +2
        mov r7, 0
        ja +1
        mov r7, -22
        lsh r7, 32
        rsh r7, 32
        {"jne r7, 0, +1" if checked else "ja +0"}
        stw [r2+0], 1
        {USE_R8}
        mov r0, 2
        exit""", ProgType.XDP, None if checked else "invalid access to packet",
           "" if checked else "invalid access to packet") for checked in (True, False)),
    # ... nor where a spilled pointer differs (its offset): the merge would make it a number.
    Case("spilled-pointers-kept-apart", EIGHT_PATHS + """
        jgt r5, 4, +3
        mov r7, r10
        add r7, -8
        ja +2
        mov r7, r10
        add r7, -16
        stxdw [r10-24], r7
        mov r0, 0
        jgt r5, 5, +1
        mov r0, 1
        ldxdw r1, [r10-24]
        stdw [r1+0], 0
""" + USE_R8 + """
        mov r0, 2
        exit""", ProgType.XDP, None),
    # A shift count may differ: counts 2 or 3 of a byte keep the value bounded, so
    # that adding it to a packet pointer is allowed (the kernel sees only one count per path).
    Case("packet-offset-shifted-by-merged-counts", EIGHT_PATHS + """
        mov r6, 2
        jgt r5, 4, +1
        mov r6, 3
        mov r4, r2
        add r4, 1
        jgt r4, r3, out
        ldxb r0, [r2+0]
        lsh r0, r6
        add r2, r0
        mov r4, r2
        add r4, 1
        jgt r4, r3, out
        stb [r2+0], 1
""" + USE_R8 + """
    out:
        mov r0, 2
        exit""", ProgType.XDP, None),
]


def _vm(case: Case) -> tuple[VM, list[BpfMap]]:
    maps = [make() for make in case.maps]
    handles = {m.name: i + 1 for i, m in enumerate(maps)}
    vm = VM(assemble(case.source, maps=handles), prog_type=case.prog_type, strict_alignment=case.strict)
    for m in maps:
        vm.add_map(m, handles[m.name])
    vm.use_standard_helpers()
    return vm, maps


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_jitbpf_verdict(case: Case) -> None:
    vm, maps = _vm(case)
    try:
        if case.jitbpf is None:
            vm.check()
            return
        with pytest.raises(VerifierError) as info:
            vm.check()
        assert case.jitbpf in info.value.message
    finally:
        vm.close()
        for m in maps:
            m.close()


@pytest.mark.skipif(not kernel_oracle.available(), reason="loading programs into the kernel needs root")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_agrees(case: Case) -> None:
    maps = [make() for make in case.maps]
    try:
        specs = {i + 1: kernel_oracle.KernelMap(int(m.map_type), m.key_size, m.value_size, m.max_entries, m.flags)
                 for i, m in enumerate(maps)}
        code = assemble(case.source, maps={m.name: i + 1 for i, m in enumerate(maps)})
    finally:
        for m in maps:
            m.close()
    flags = BPF_F_STRICT_ALIGNMENT if case.strict else 0
    verdict = kernel_oracle.kernel_verify(code, int(case.prog_type), specs, prog_flags=flags)
    assert verdict.accepted == (case.jitbpf is None), verdict.log
    if not verdict.accepted:
        assert case.kernel in verdict.log, verdict.log


def test_every_case_is_distinct() -> None:
    assert len({c.name for c in CASES}) == len(CASES)
    assert len({(c.source, c.prog_type, c.strict) for c in CASES}) == len(CASES)
