"""The scans that find a program's few instructions of interest by their encoding (in C) find
what a pass over every decoded instruction finds: ``Program.words``, ``find_slots`` and the
facts built on them (r10 written, the kinds the JIT runner asks about, the blocks); and the
one-pass liveness of loop-free programs is the general fixpoint's."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings

from jitbpf import cfg
from jitbpf.asm import assemble
from jitbpf.cfg import register_writes, writes_fp
from jitbpf.errors import VerifierError
from jitbpf.isa import FP, OPCODES, Instruction, Kind, Program, encode, opcode_mask
from tests.test_differential import programs

_CALLS = frozenset(row.opcode for row in OPCODES if row.kind in (Kind.CALL, Kind.LDDW))


def _writes_fp_everywhere(program: Program) -> bool:
    return any(register_writes(insn, info) >> FP & 1 for _pc, insn, info in program)


@settings(max_examples=200, deadline=None)
@given(programs())
def test_scans_agree_with_the_decoded_program(insns: list[Instruction]) -> None:
    program = Program.from_instructions(insns)
    assert program.words.tobytes() == encode(insns)  # (a little-endian host)
    assert program.find_slots(opcode_mask(_CALLS)) == [pc for pc, insn, _info in program if insn.opcode in _CALLS]
    assert program.find_slots(opcode_mask(range(256)), naming_fp=True) == [
        pc for pc, insn, _info in program if FP in (insn.dst, insn.src)]
    assert writes_fp(program) == _writes_fp_everywhere(program)


def test_each_way_of_writing_r10_is_found() -> None:
    """A minimal program per way an instruction can write r10 (as dst, as an atomic's src), and
    the uses that do not (a store through it, a read of it)."""
    exit_ = Instruction(0x95)
    cases = [
        (Instruction(0xB7, FP, 0, 0, 1), True),  # mov r10, 1
        (Instruction(0x79, FP, 1, 0), True),  # ldxdw r10, [r1]
        (Instruction(0xDB, 1, FP, 0, 0x01), True),  # lock fetch add [r1], r10
        (Instruction(0xDB, 1, FP, 0, 0x00), False),  # lock add [r1], r10 (no fetch)
        (Instruction(0x7B, FP, 1, -8), False),  # stxdw [r10-8], r1
        (Instruction(0xBF, 1, FP), False),  # mov r1, r10
    ]
    for insn, writes in cases:
        program = Program.from_bytes(encode([insn, exit_]))
        assert list(program.words) == [int.from_bytes(i.encode(), "little") for i in (insn, exit_)]
        assert writes_fp(program) is writes, insn


CALLBACK = """
    mov r1, 4
    lddw r2, func:cb        ; a callback's address: its function is an entry
    mov r3, 0
    mov r4, 0
    call 181                ; bpf_loop, which calls back: the next slot starts a block
    mov r0, 0
    exit
cb:
    mov r0, 0
    exit
"""


def _same_as_full_passes(program: Program) -> None:
    flow = cfg.analyze(program)
    with pytest.MonkeyPatch.context() as patch:  # analyze looking at every instruction
        patch.setattr(cfg, "_SHAPING_OPCODES", opcode_mask(range(256)))
        full = cfg.analyze(program)
    assert (flow.blocks, flow.functions, flow.targets, flow.callbacks) == (
        full.blocks, full.functions, full.targets, full.callbacks)
    object.__setattr__(full, "_back_edges", True)  # the fixpoint over blocks, loops or not
    assert cfg.live_in(flow) == cfg.live_in(full)


@settings(max_examples=300, deadline=None)
@given(programs())
def test_blocks_and_liveness_agree_with_the_full_passes(insns: list[Instruction]) -> None:
    program = Program.from_instructions(insns)
    try:
        cfg.analyze(program)
    except VerifierError:
        assume(False)
    _same_as_full_passes(program)


def test_callbacks_shape_the_blocks() -> None:
    program = Program.from_bytes(assemble(CALLBACK))
    _same_as_full_passes(program)
    flow = cfg.analyze(program)
    assert flow.callbacks == {1: 8} and [b.start for b in flow.blocks] == [0, 6, 8]
