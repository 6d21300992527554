"""Whole-program soundness fuzz: generated programs near the verifier's accept/reject boundary
(packet, map value, read-only map, stack and context accesses with variable offsets, 32-bit
branches, helpers writing memory, spilled pointers), run when accepted in the interpreter with
memory cut exactly to what the program was given.

Every region is exactly one object (the context split into its writable and read-only fields,
the packet from data to data_end, each map value on its own, one stack frame), with its own
writability: an access the verifier proved that strays, or a helper given a pointer the
verifier checked that faults, fails the test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.helpers import Helper
from jitbpf.interpreter import Env, Translator, run
from jitbpf.isa import MASK32, STACK_SIZE, Kind
from jitbpf.linux.maps import BPF_F_RDONLY_PROG, Array, BpfMap, Queue
from jitbpf.linux.programs import PROGRAM_TYPES, ProgType
from jitbpf.memory import MemoryMap, Region, region_of
from jitbpf.sandbox import Pages
from jitbpf.vm import VM

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PACKET_AT = 1024  # offset of the packet in the run arena (the context comes first)


@dataclass(frozen=True)
class Layout:
    """Where one program type keeps what the generated programs use."""

    prog_type: ProgType
    data: int  # context offset of the packet start pointer
    data_end: int  # ... of the packet end pointer
    meta: int | None  # ... of the metadata pointer (set to the packet start), if any
    scalar: int  # a readable u32 field, the fuzz's unknown number
    ret: int  # a valid return value


LAYOUTS = (
    Layout(ProgType.XDP, 0, 4, 8, 12, 2),
    Layout(ProgType.SCHED_CLS, 76, 80, 140, 8, 0),
    Layout(ProgType.CGROUP_SKB, 76, 80, None, 8, 1),
)
SIZES = ("b", "h", "w", "dw")
PACKET_BASES = ("r2", "r5")
JMP32_CONSTANTS = (0, 1, 7, 15, 255, 0x7FFF_FFFF, -0x8000_0000, -1, -2)


def _maps() -> list[BpfMap]:
    return [Array(value_size=16, max_entries=4, name="A"),
            Array(value_size=8, max_entries=1, flags=BPF_F_RDONLY_PROG, name="RO"),
            Queue(value_size=8, max_entries=4, name="Q")]


@st.composite
def programs(draw: st.DrawFn, layout: Layout) -> str:
    """r6 = ctx, r7 = a value of A (null-checked), r2/r3 = data/data_end, r8 = an unknown u32;
    then random snippets, each a few instructions, branching forward to ``out``."""
    key = draw(st.integers(0, 5))  # 4 and 5 miss: the lookup returns null
    lines = ["mov r6, r1", f"stw [r10-8], {key}", "mov r2, r10", "add r2, -8", "lddw r1, map:A", "call 1",
             "mov r7, r0", "jeq r7, 0, @out", f"ldxw r2, [r6+{layout.data}]", f"ldxw r3, [r6+{layout.data_end}]",
             f"ldxw r8, [r6+{layout.scalar}]", "mov r5, r2", "mov r9, 0", "mov r4, r7", "stdw [r10-16], 0",
             "stdw [r10-24], 0"]
    off = st.integers(-6, 44)
    size = st.sampled_from(SIZES)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("pcheck", "pvar", "pload", "pstore", "mvar", "maccess", "ro", "stack", "ctx",
                                     "jmp32", "alu", "pop", "probe", "pkey", "spill")))
        p = draw(st.sampled_from(PACKET_BASES))
        match kind:
            case "pcheck":  # if (p + k > data_end) goto out
                lines += [f"mov r4, {p}", f"add r4, {draw(st.integers(0, 40))}", "jgt r4, r3, @out"]
            case "pvar":  # r5 = data + (r8 & mask) [+ 1]
                lines += ["mov r9, r8", f"and r9, {draw(st.sampled_from((1, 3, 7, 15, 255)))}",
                          f"add r9, {draw(st.integers(0, 2))}", "mov r5, r2", "add r5, r9"]
            case "pload":
                lines.append(f"ldx{draw(size)} r0, [{p}{draw(off):+d}]")
            case "pstore":
                lines.append(f"st{draw(size)} [{p}{draw(off):+d}], 1")
            case "mvar":  # r4 = r7 + (r8 & mask), sometimes bounded by a branch
                lines += ["mov r9, r8", f"and r9, {draw(st.sampled_from((1, 7, 15, 31)))}"]
                if draw(st.booleans()):
                    lines.append(f"jgt r9, {draw(st.integers(0, 16))}, @out")
                lines += ["mov r4, r7", "add r4, r9"]
            case "maccess":
                base = draw(st.sampled_from(("r7", "r4")))
                o = draw(st.integers(-4, 20))
                match draw(st.sampled_from(("load", "store", "atomic"))):
                    case "load":
                        lines.append(f"ldx{draw(size)} r0, [{base}{o:+d}]")
                    case "store":
                        lines.append(f"st{draw(size)} [{base}{o:+d}], 1")
                    case _:
                        lines += ["mov r0, 1", f"lock add{draw(st.sampled_from(('', '32')))} [{base}{o:+d}], r0"]
            case "ro":
                lines.append(f"lddw r4, map_value:RO+{draw(st.integers(0, 7))}")
                o = draw(st.integers(-2, 8))
                if draw(st.booleans()):
                    lines.append(f"ldx{draw(size)} r0, [r4{o:+d}]")
                else:
                    lines.append(f"st{draw(size)} [r4{o:+d}], 1")
            case "stack":  # r4 = r10 - k + (r8 & mask)
                lines += ["mov r9, r8", f"and r9, {draw(st.sampled_from((1, 7, 31)))}", "mov r4, r10",
                          f"add r4, {draw(st.integers(-64, -1))}", "add r4, r9"]
                o = draw(st.integers(-8, 8))
                store = draw(st.booleans())
                lines.append(f"st{draw(size)} [r4{o:+d}], 1" if store else f"ldx{draw(size)} r0, [r4{o:+d}]")
            case "ctx":
                o = draw(st.integers(-4, 200))
                load = draw(st.booleans())
                lines.append(f"ldx{draw(size)} r0, [r6{o:+d}]" if load else f"stx{draw(size)} [r6{o:+d}], r8")
            case "jmp32":  # a 32-bit test of r8 (either edge goes on), then its top bits as a stack offset
                op = draw(st.sampled_from(("jeq", "jne", "jgt", "jge", "jlt", "jle", "jsgt", "jsge", "jslt", "jsle",
                                           "jset")))
                operand = draw(st.sampled_from(("r8", "r9", *(str(c) for c in JMP32_CONSTANTS))))
                test = f"{op}32 r8, {operand}"
                lines += [f"{test}, @out"] if draw(st.booleans()) else [f"{test}, +1", "ja @out"]
                shift = draw(st.sampled_from((28, 31)))
                lines += ["mov r9, r8", f"rsh r9, {shift}", "mov r4, r10",
                          f"add r4, {-draw(st.integers(1, 16)) - (15 if shift == 28 else 0)}", "add r4, r9",
                          "ldxb r0, [r4]"]
            case "alu":
                op = draw(st.sampled_from(("add", "sub", "mul", "and", "or", "xor", "lsh", "rsh", "arsh", "mod")))
                width = draw(st.sampled_from(("", "32")))
                lines.append(f"{op}{width} r8, {draw(st.sampled_from((1, 3, 31, 255, 0x7FFF_FFFF, -1)))}")
            case "pop":  # a helper writing its buffer: the stack, a value of A, or the read-only map
                target = draw(st.sampled_from(("mov r2, r10\nadd r2, -16", "mov r2, r7",
                                               "lddw r2, map_value:RO+0", "mov r2, r4")))
                lines += [*target.split("\n"), "lddw r1, map:Q", f"call {draw(st.sampled_from((88, 89)))}"]
            case "probe":  # bpf_probe_read_kernel(dst, n, src) into the stack, A or the packet
                dst = draw(st.sampled_from(("r10", "r7", p)))
                lines += [f"mov r1, {dst}", f"add r1, {draw(st.integers(-24, 8))}",
                          f"mov r2, {draw(st.integers(1, 16))}", "mov r3, 0", "call 113"]
            case "pkey":  # a lookup keyed by packet bytes
                lines += [f"mov r2, {p}", f"add r2, {draw(st.integers(-2, 8))}", "lddw r1, map:A", "call 1"]
            case "spill":  # a pointer spilled, maybe overwritten by a helper, then reloaded and used
                lines += ["stxdw [r10-16], r7"]
                if draw(st.booleans()):
                    lines += ["mov r2, r10", "add r2, -16", "lddw r1, map:Q", "call 88"]
                lines += ["ldxdw r4, [r10-16]", f"st{draw(size)} [r4{draw(st.integers(-2, 16)):+d}], 1"]
            case _:
                raise NotImplementedError(kind)
    lines += ["mov r0, 0", f"out: mov r0, {layout.ret}", "exit"]
    return "\n".join(line.replace("@out", "out") for line in lines)


def _helpers(vm: VM, maps: list[BpfMap], mm: Callable[[], MemoryMap]) -> dict[int, Helper]:
    """The standard helpers' signatures with implementations that go through the cut memory map."""
    by_address = {m.address: m for m in maps}

    def lookup(r1: int, r2: int, *_: int) -> int:
        m = by_address[r1]
        index = int.from_bytes(mm().read(r2, m.key_size), "little")
        if index >= m.max_entries:
            return 0
        return m.regions()[0].base + index * ((m.value_size + 7) & ~7)

    def pop(r1: int, r2: int, *_: int) -> int:
        mm().write(r2, bytes(by_address[r1].value_size))
        return 0

    def probe(r1: int, r2: int, *_: int) -> int:
        mm().write(r1, bytes(r2 & MASK32))
        return 0

    fns = {1: lookup, 88: pop, 89: pop, 113: probe}
    return {hid: dataclasses.replace(vm.helpers[hid], fn=fn) for hid, fn in fns.items()}


def _regions(layout: Layout, arena: Pages, length: int, maps: list[BpfMap]) -> list[Region]:
    info = PROGRAM_TYPES[layout.prog_type]
    size = info.context_spec().size
    assert size is not None
    out: list[Region] = []
    writable = [0] * size
    for a, b in info.writable:
        writable[a:b] = [1] * (b - a)
    start = 0
    for pos in range(1, size + 1):  # one region per run of equally writable context bytes
        if pos == size or writable[pos] != writable[start]:
            out.append(Region(arena.address + start, pos - start, arena.view[start:pos], bool(writable[start]), "ctx"))
            start = pos
    data = arena.address + PACKET_AT
    out.append(Region(data, length, arena.view[PACKET_AT:PACKET_AT + length], info.packet_writable, "packet"))
    for m in maps:
        for region in m.regions():
            stride = (m.value_size + 7) & ~7
            for i in range(m.max_entries):  # each value alone: no straying into the next
                lo = i * stride
                out.append(Region(region.base + lo, m.value_size, region.view[lo:lo + m.value_size],
                                  region.writable, region.name))
    return out


def _check_one(layout: Layout, source: str, length: int, number: int) -> None:
    maps = _maps()
    handles = {m.name: i + 1 for i, m in enumerate(maps)}
    vm = VM(assemble(source, maps=handles), prog_type=layout.prog_type)
    arena = Pages(PACKET_AT + 4096)
    try:
        for m in maps:
            vm.add_map(m, handles[m.name])
        vm.use_standard_helpers()
        try:
            vm.check()
        except VerifierError as exc:
            event(f"rejected: {exc.message.split(':')[0][:40]}")
            return
        event("accepted")
        data = arena.address + PACKET_AT
        for field, value in ((layout.data, data), (layout.data_end, data + length), (layout.meta, data),
                             (layout.scalar, number)):
            if field is not None:
                arena.view[field:field + 4] = value.to_bytes(4, "little")
        stack = bytearray(STACK_SIZE)
        stack_region, stack_pin = region_of(stack, "stack")
        memory = MemoryMap([*_regions(layout, arena, length, maps), stack_region])
        packet = Region(data, length, arena.view[PACKET_AT:PACKET_AT + length], True, "packet")
        env = Env(memory, _helpers(vm, maps, lambda: memory), packet)
        regs = [0] * 11
        regs[1], regs[10] = arena.address, stack_region.base + STACK_SIZE
        blocks = Translator(vm.resolve_lddw).translate(vm.flow)
        try:
            run(blocks, regs, env, budget=10_000, stack_zero=lambda _f: None)
        except ExecutionError as exc:
            info = vm.program.infos[exc.pc] if exc.pc is not None else None
            assert exc.pc not in vm._proven, f"a proven access strayed: {exc}\n{source}"
            assert info is None or info.kind is not Kind.CALL, f"a verified helper argument faulted: {exc}\n{source}"
        del stack_pin
    finally:
        arena.close()
        vm.close()
        for m in maps:
            m.close()


@pytest.mark.parametrize("layout", LAYOUTS, ids=[lay.prog_type.name.lower() for lay in LAYOUTS])
@FUZZ
@given(data=st.data(), length=st.integers(0, 48), number=st.integers(0, MASK32))
def test_accepted_programs_stay_in_their_regions(layout: Layout, data: st.DataObject, length: int,
                                                 number: int) -> None:
    _check_one(layout, data.draw(programs(layout)), length, number)
