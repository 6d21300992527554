"""Disassembler tests: golden lines in both syntaxes and assemble(disassemble(code)) == code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.disasm import disassemble, format_instruction
from jitbpf.errors import DecodeError
from jitbpf.isa import OPCODES, Field, Instruction, Kind, OpInfo, decode, encode

INT16 = st.integers(-(1 << 15), (1 << 15) - 1)
INT32 = st.integers(-(1 << 31), (1 << 31) - 1)
REG = st.integers(0, 10)

GOLDEN = [
    # instruction, ubpf syntax, llvm syntax
    (Instruction(0xB7, 0, 0, 0, 1), "mov r0, 1", "r0 = 1"),
    (Instruction(0xBC, 2, 3), "mov32 r2, r3", "w2 = w3"),
    (Instruction(0x0F, 0, 1), "add r0, r1", "r0 += r1"),
    (Instruction(0x14, 4, 0, 0, -7), "sub32 r4, -7", "w4 -= -7"),
    (Instruction(0x3F, 1, 2, 1), "sdiv r1, r2", "r1 s/= r2"),
    (Instruction(0x94, 1, 0, 1, 3), "smod32 r1, 3", "w1 s%= 3"),
    (Instruction(0xCF, 1, 2), "arsh r1, r2", "r1 s>>= r2"),
    (Instruction(0x87, 5), "neg r5", "r5 = -r5"),
    (Instruction(0x84, 5), "neg32 r5", "w5 = -w5"),
    (Instruction(0xBF, 0, 1, 8), "movsx864 r0, r1", "r0 = (s8)r1"),
    (Instruction(0xBC, 0, 1, 16), "movsx1632 r0, r1", "w0 = (s16)w1"),
    (Instruction(0xDC, 0, 0, 0, 32), "be32 r0", "r0 = be32 r0"),
    (Instruction(0xD4, 0, 0, 0, 16), "le16 r0", "r0 = le16 r0"),
    (Instruction(0xD7, 3, 0, 0, 64), "bswap64 r3", "r3 = bswap64 r3"),
    (Instruction(0x18, 1, 0, 0, 0x55667788, 0x11223344), "lddw r1, 0x1122334455667788",
     "r1 = 0x1122334455667788 ll"),
    (Instruction(0x18, 1, 1, 0, 5), "lddw r1, map:5", "r1 = map:5 ll"),
    (Instruction(0x18, 1, 2, 0, 5, 16), "lddw r1, map_value:5+16", "r1 = map_value:5+16 ll"),
    (Instruction(0x61, 0, 1, 4), "ldxw r0, [r1+4]", "r0 = *(u32 *)(r1 + 4)"),
    (Instruction(0x89, 0, 1, -2), "ldxsh r0, [r1-2]", "r0 = *(s16 *)(r1 - 2)"),
    (Instruction(0x79, 0, 10, 0), "ldxdw r0, [r10+0]", "r0 = *(u64 *)(r10 + 0)"),
    (Instruction(0x7A, 10, 0, -8, 7), "stdw [r10-8], 7", "*(u64 *)(r10 - 8) = 7"),
    (Instruction(0x63, 2, 0, 4), "stxw [r2+4], r0", "*(u32 *)(r2 + 4) = r0"),
    (Instruction(0xDB, 1, 2, 0, 0x00), "lock add [r1+0], r2", "lock *(u64 *)(r1 + 0) += r2"),
    (Instruction(0xC3, 1, 2, 8, 0x40), "lock or32 [r1+8], r2", "lock *(u32 *)(r1 + 8) |= w2"),
    (Instruction(0xDB, 1, 2, 0, 0x01), "lock fetch add [r1+0], r2",
     "r2 = atomic_fetch_add((u64 *)(r1 + 0), r2)"),
    (Instruction(0xC3, 1, 2, 0, 0x51), "lock fetch and32 [r1+0], r2",
     "w2 = atomic_fetch_and((u32 *)(r1 + 0), w2)"),
    (Instruction(0xDB, 1, 2, -8, 0xE1), "lock xchg [r1-8], r2", "r2 = xchg_64(r1 - 8, r2)"),
    (Instruction(0xC3, 1, 2, 0, 0xE1), "lock xchg32 [r1+0], r2", "w2 = xchg32_32(r1 + 0, w2)"),
    (Instruction(0xDB, 1, 2, 0, 0xF1), "lock cmpxchg [r1+0], r2", "r0 = cmpxchg_64(r1 + 0, r0, r2)"),
    (Instruction(0xC3, 1, 2, 0, 0xF1), "lock cmpxchg32 [r1+0], r2", "w0 = cmpxchg32_32(r1 + 0, w0, w2)"),
    (Instruction(0x05, 0, 0, 3), "ja +3", "goto +3"),
    (Instruction(0x05, 0, 0, -1), "ja -1", "goto -1"),
    (Instruction(0x06, 0, 0, 0, 70000), "ja32 +70000", "gotol +70000"),
    (Instruction(0x25, 1, 0, 3, 2), "jgt r1, 2, +3", "if r1 > 2 goto +3"),
    (Instruction(0xCE, 1, 2, -1), "jslt32 r1, r2, -1", "if w1 s< w2 goto -1"),
    (Instruction(0x45, 1, 0, 0, 4), "jset r1, 4, +0", "if r1 & 4 goto +0"),
    (Instruction(0x85, 0, 0, 0, 1), "call 1", "call 1"),
    (Instruction(0x85, 0, 0, 0, -1), "call 0xffffffff", "call 0xffffffff"),  # `call -1` is a local call
    (Instruction(0x85, 0, 1, 0, 3), "call local +3", "call pc+3"),
    (Instruction(0x85, 0, 2, 0, 9), "call runtime 9", "call runtime 9"),
    (Instruction(0x8D, 2), "call r2", "callx r2"),
    (Instruction(0x95), "exit", "exit"),
    (Instruction(0x30, 0, 0, 0, 4), "ldabsb 4", "r0 = *(u8 *)skb[4]"),
    (Instruction(0x40, 0, 1, 0, -8), "ldindw r1, -8", "r0 = *(u32 *)skb[r1 - 8]"),
]


@pytest.mark.parametrize(("insn", "ubpf", "llvm"), GOLDEN, ids=[g[1] for g in GOLDEN])
def test_golden(insn: Instruction, ubpf: str, llvm: str) -> None:
    assert format_instruction(insn) == ubpf
    assert format_instruction(insn, syntax="llvm") == llvm
    for text in (ubpf, llvm):
        assert assemble(text) == insn.encode()


def test_labels_replace_offsets() -> None:
    labels = {5: "done"}
    assert format_instruction(Instruction(0x15, 1, 0, 2, 0), 2, labels=labels) == "jeq r1, 0, done"
    assert format_instruction(Instruction(0x85, 0, 1, 0, 3), 1, syntax="llvm", labels=labels) == "call done"
    assert format_instruction(Instruction(0x05, 0, 0, 0), 2, labels=labels) == "ja +0"


def test_disassemble_listing() -> None:
    code = assemble("mov r0, 0\nlddw r1, 0x100000000\njeq r1, 0, +1\nexit\nexit")
    assert disassemble(code) == "mov r0, 0\nlddw r1, 0x100000000\njeq r1, 0, +1\nexit\nexit"
    assert disassemble(code, syntax="llvm", show_pc=True).splitlines() == [
        "   0: r0 = 0",
        "   1: r1 = 0x100000000 ll",
        "   3: if r1 == 0 goto +1",
        "   4: exit",
        "   5: exit",
    ]
    assert disassemble(decode(code)) == disassemble(code)
    assert assemble(disassemble(code, show_pc=True)) == code
    assert disassemble(b"") == ""


@pytest.mark.parametrize("bad", [b"\x06\x00\x00\x00\x00\x00\x00", bytes(8), Instruction(0x07, 11).encode()])
def test_invalid_bytecode_raises_decode_error(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        disassemble(bad)


def test_unknown_syntax() -> None:
    with pytest.raises(ValueError, match="unknown syntax"):
        format_instruction(Instruction(0x95), syntax="intel")


@st.composite
def valid_instructions(draw: st.DrawFn) -> Instruction:
    """A decodable instruction: a table row with every used field drawn and the variant fixed."""
    info: OpInfo = draw(st.sampled_from(OPCODES))
    used = info.fields
    fields = {
        "dst": draw(REG) if Field.DST in used else 0,
        "src": draw(REG) if Field.SRC in used else 0,
        "off": draw(INT16) if Field.OFF in used else 0,
        "imm": draw(INT32) if Field.IMM in used else 0,
        "next_imm": 0,
    }
    if info.kind is Kind.LDDW:
        fields["src"] = draw(st.integers(0, 6))
        fields["next_imm"] = draw(INT32)
    if info.variant_field:
        fields[info.variant_field] = info.variant
    return Instruction(info.opcode, **fields)


@settings(max_examples=400, deadline=None)
@given(st.lists(valid_instructions(), min_size=1, max_size=12))
def test_round_trip(insns: list[Instruction]) -> None:
    code = encode(insns)
    assert decode(code) == insns  # the strategy only makes valid instructions
    for syntax in ("ubpf", "llvm"):
        text = disassemble(code, syntax=syntax)
        assert assemble(text).hex() == code.hex(), text


def test_every_table_row_round_trips() -> None:
    for info in OPCODES:
        used = info.fields
        fields = {
            "dst": 1 if Field.DST in used else 0,
            "src": 2 if Field.SRC in used and info.kind is not Kind.LDDW else 0,
            "off": -3 if Field.OFF in used else 0,
            "imm": 4 if Field.IMM in used else 0,
        }
        if info.variant_field:
            fields[info.variant_field] = info.variant
        insn = Instruction(info.opcode, **fields)
        assert decode(insn.encode()) == [insn], info.mnemonic
        for syntax in ("ubpf", "llvm"):
            assert assemble(format_instruction(insn, syntax=syntax)) == insn.encode(), (info.mnemonic, syntax)
