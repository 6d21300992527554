"""The scans that find a program's few instructions of interest by their encoding (in C) find
what a pass over every decoded instruction finds: ``Program.words``, ``find_slots`` and the
facts built on them (r10 written, the kinds the JIT runner asks about)."""

from __future__ import annotations

from hypothesis import given, settings

from jitbpf.cfg import register_writes, writes_fp
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
