"""Assembler tests: seed examples, the conformance asm sections, both syntaxes, labels, maps and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble, assemble_instructions
from jitbpf.conformance import data_files, parse_data_file
from jitbpf.errors import AssemblerError, DecodeError
from jitbpf.isa import Instruction, PseudoSrc, decode

from .conftest import conformance_root

NOT_FOUND = "conformance suites not found: set JITBPF_CONFORMANCE_DIR"


def slots(*hex_slots: str) -> bytes:
    """Bytecode from 8-byte slots written as hex in memory order."""
    return b"".join(bytes.fromhex(s.replace(" ", "")) for s in hex_slots)


# --- seed examples ----------------------------------------------------------------------------------

SEEDS = [
    (
        "mov32 r0, 1\nmov32 r1, 2\nadd r0, r1\nexit",
        slots("b4 00 0000 01000000", "b4 01 0000 02000000", "0f 10 0000 00000000", "95 00 0000 00000000"),
    ),
    (
        "ldwx r0, [r1]\nldwx r1, [r1+4]\nadd r0, r1\nbe32 r0\nexit",
        slots("61 10 0000 00000000", "61 11 0400 00000000", "0f 10 0000 00000000", "dc 00 0000 20000000",
              "95 00 0000 00000000"),
    ),
    (
        "mov r2, r1\nldwx r1,[r1]\ncall 0\nstxw [r2+4], r0\nexit",
        slots("bf 12 0000 00000000", "61 11 0000 00000000", "85 00 0000 00000000", "63 02 0400 00000000",
              "95 00 0000 00000000"),
    ),
]


@pytest.mark.parametrize(("text", "code"), SEEDS)
def test_seed_examples(text: str, code: bytes) -> None:
    assert assemble(text) == code


def test_indented_multiline_text() -> None:
    text = """
        mov32 r0, 1   ; the first operand
        mov32 r1, 2   # the second

        add r0, r1
        exit"""
    assert assemble(text) == SEEDS[0][1]


# --- conformance suites -----------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "asm_file" not in metafunc.fixturenames:
        return
    root = conformance_root(metafunc.config)
    if root is None:
        metafunc.parametrize("asm_file", [pytest.param(None, marks=pytest.mark.skip(reason=NOT_FOUND))])
        return
    params = [
        pytest.param(path, id=path.relative_to(root).as_posix())
        for path in data_files(root)
        if parse_data_file(path).asm is not None
    ]
    metafunc.parametrize("asm_file", params)


def test_conformance_asm(asm_file: Path) -> None:
    df = parse_data_file(asm_file)
    assert df.asm is not None
    if asm_file.parent.name == "negative" and asm_file.name.startswith("invalid_") and df.asm.strip():
        with pytest.raises(AssemblerError) as info:
            assemble(df.asm)
        assert info.value.line >= 1
        assert info.value.column >= 1
        return
    code = assemble(df.asm, any_register=True)  # uBPF's error tests write r11 on purpose
    if df.raw is not None:
        assert code.hex() == df.raw.hex()


# --- rbpf/uBPF dialect details ----------------------------------------------------------------------

EQUIVALENT_RBPF = [
    ("add %r0, %r1", "add r0, r1"),
    ("ldxw %r0, [ %r1 + 4 ]", "ldxw r0, [r1+4]"),
    ("ldxw r0, [r1 - 0x10]", "ldxw r0, [r1-16]"),
    ("ldxdw r0, [r1+0]", "ldxdw r0, [r1]"),
    ("lddwx r0, [r1+8]", "ldxdw r0, [r1+8]"),
    ("ldhx r0, [r1+2]", "ldxh r0, [r1+2]"),
    ("ldbx r0, [r1+1]", "ldxb r0, [r1+1]"),
    ("swap32 r3", "bswap32 r3"),
    ("add64 r1, 2", "add r1, 2"),
    ("neg64 r1", "neg r1"),
    ("mov r1 r2", "mov r1, r2"),
    ("jeq r1 5 +1", "jeq r1, 5, +1"),
    ("call helper 7", "call 7"),
    ("call %r3", "call r3"),
    ("lock fetch xchg [r1], r2", "lock xchg [r1], r2"),
    ("mov32 r0, 0xffffffff", "mov32 r0, -1"),
    ("jsge r1, 0x80000000, +0", "jsge r1, -2147483648, +0"),
    ("lddw r0, -1", "lddw r0, 0xffffffffffffffff"),
    ("lddw r0, 18446744073709551615", "lddw r0, 0xffffffffffffffff"),
    ("ja 2", "ja +2"),
    ("ldxb r0, [r1+0x7fff]", "ldxb r0, [r1+32767]"),
]


@pytest.mark.parametrize(("text", "same_as"), EQUIVALENT_RBPF)
def test_equivalent_spellings(text: str, same_as: str) -> None:
    assert assemble(text) == assemble(same_as)


EXPECTED_RBPF = [
    ("sdiv r1, 3", Instruction(0x37, 1, 0, 1, 3)),
    ("smod32 r1, r2", Instruction(0x9C, 1, 2, 1, 0)),
    ("movsx1632 r0, r1", Instruction(0xBC, 0, 1, 16, 0)),
    ("movsx3264 r0, r1", Instruction(0xBF, 0, 1, 32, 0)),
    ("le64 r2", Instruction(0xD4, 2, 0, 0, 64)),
    ("bswap16 r2", Instruction(0xD7, 2, 0, 0, 16)),
    ("lddw r1, 0x1122334455667788", Instruction(0x18, 1, 0, 0, 0x55667788, 0x11223344)),
    ("stb [r10-1], 0xff", Instruction(0x72, 10, 0, -1, 0xFF)),
    ("stw [r10-4], 0x80000001", Instruction(0x62, 10, 0, -4, -0x7FFFFFFF)),
    ("lock add [r10-8], r1", Instruction(0xDB, 10, 1, -8, 0x00)),
    ("lock fetch or32 [r10-8], r1", Instruction(0xC3, 10, 1, -8, 0x41)),
    ("lock and [r1], r2", Instruction(0xDB, 1, 2, 0, 0x50)),
    ("lock xchg32 [r1+4], r2", Instruction(0xC3, 1, 2, 4, 0xE1)),
    ("lock cmpxchg [r1], r2", Instruction(0xDB, 1, 2, 0, 0xF1)),
    ("ja32 -3", Instruction(0x06, 0, 0, 0, -3)),
    ("call local -2", Instruction(0x85, 0, 1, 0, -2)),
    ("call runtime 9", Instruction(0x85, 0, 2, 0, 9)),
    ("call r2", Instruction(0x8D, 2, 0, 0, 0)),
    ("ldabsh 12", Instruction(0x28, 0, 0, 0, 12)),
    ("ldindb r3, -4", Instruction(0x50, 0, 3, 0, -4)),
    ("neg32 r4", Instruction(0x84, 4, 0, 0, 0)),
]


@pytest.mark.parametrize(("text", "insn"), EXPECTED_RBPF)
def test_rbpf_instructions(text: str, insn: Instruction) -> None:
    assert assemble_instructions(text) == [insn]


def test_unchecked_registers_assemble_but_do_not_decode() -> None:
    code = assemble("mov r11, r15\nexit", any_register=True)
    assert code[1] == 0xFB
    with pytest.raises(DecodeError):
        decode(code)


# --- labels -----------------------------------------------------------------------------------------


def test_forward_label_counts_lddw_as_two_slots() -> None:
    insns = assemble_instructions("""
        mov r0, 0
        jeq r1, 0, done
        lddw r2, 0x100000000
    done:
        exit""")
    assert insns[1].off == 2


def test_backward_label_and_label_with_instruction() -> None:
    insns = assemble_instructions("mov r0, 0\nloop: add r0, 1\njne r0, 10, loop\nexit")
    assert insns[2].off == -2


def test_exit_label_is_predefined() -> None:
    insns = assemble_instructions("jne r0, 0, exit\nmov r0, 1\nexit\nexit")
    assert insns[0].off == 1


def test_defined_exit_label_wins() -> None:
    insns = assemble_instructions("ja exit\nexit\nexit:\nexit")
    assert insns[0].off == 1


def test_call_local_and_ja32_labels() -> None:
    insns = assemble_instructions("call local fn\nja32 end\nfn: mov r0, 1\nexit\nend: exit")
    assert insns[0] == Instruction(0x85, 0, 1, 0, 1)
    assert insns[1] == Instruction(0x06, 0, 0, 0, 2)


def test_label_after_last_instruction() -> None:
    assert assemble_instructions("ja end\nexit\nend:")[0].off == 1


# --- map references ---------------------------------------------------------------------------------


def test_map_reference() -> None:
    insns = assemble_instructions("lddw r1, map:counters\nexit", maps={"counters": 7})
    assert insns[0] == Instruction(0x18, 1, PseudoSrc.MAP_FD, 0, 7, 0)


def test_map_value_reference() -> None:
    insns = assemble_instructions("lddw r2, map_value:table+16", maps={"table": 3})
    assert insns[0] == Instruction(0x18, 2, PseudoSrc.MAP_VALUE, 0, 3, 16)


def test_numeric_pseudo_references() -> None:
    assert assemble_instructions("lddw r1, map:5")[0] == Instruction(0x18, 1, 1, 0, 5, 0)
    assert assemble_instructions("lddw r1, btf_id:42")[0] == Instruction(0x18, 1, 3, 0, 42, 0)
    assert assemble_instructions("lddw r1, map_idx_value:2-8")[0] == Instruction(0x18, 1, 6, 0, 2, -8)
    assert assemble_instructions("r1 = map:5 ll")[0] == Instruction(0x18, 1, 1, 0, 5, 0)


def test_func_reference_resolves_a_label() -> None:
    insns = assemble_instructions("lddw r1, func:cb\nexit\ncb: exit")
    assert insns[0] == Instruction(0x18, 1, PseudoSrc.FUNC, 0, 2, 0)


@pytest.mark.parametrize("maps", [None, {"other": 1}])
def test_unknown_map(maps: dict[str, int] | None) -> None:
    with pytest.raises(AssemblerError, match="unknown map counters") as info:
        assemble("lddw r1, map:counters", maps=maps)
    assert (info.value.line, info.value.column) == (1, 14)


# --- LLVM / kernel syntax ---------------------------------------------------------------------------

EQUIVALENT_LLVM = [
    ("r0 = 1", "mov r0, 1"),
    ("w0 = 1", "mov32 r0, 1"),
    ("r0 = -1", "mov r0, -1"),
    ("w0 = 0xffffffff", "mov32 r0, -1"),
    ("r1 = 0xffffffff", "lddw r1, 0xffffffff"),
    ("r0 = r1", "mov r0, r1"),
    ("w0 = w1", "mov32 r0, r1"),
    ("r0 += r1", "add r0, r1"),
    ("w0 -= 3", "sub32 r0, 3"),
    ("r0 *= r1", "mul r0, r1"),
    ("r0 /= r1", "div r0, r1"),
    ("r0 %= 7", "mod r0, 7"),
    ("r0 s/= r1", "sdiv r0, r1"),
    ("w0 s%= -3", "smod32 r0, -3"),
    ("r0 |= r1", "or r0, r1"),
    ("r0 &= 0xff", "and r0, 0xff"),
    ("r0 ^= r1", "xor r0, r1"),
    ("r0 <<= 3", "lsh r0, 3"),
    ("r0 >>= r1", "rsh r0, r1"),
    ("r0 s>>= 2", "arsh r0, 2"),
    ("w5 s>>= w6", "arsh32 r5, r6"),
    ("r0 = -r0", "neg r0"),
    ("w3 = -w3", "neg32 r3"),
    ("r0 = (s8)r1", "movsx864 r0, r1"),
    ("r0 = (s16)r1", "movsx1664 r0, r1"),
    ("r0 = (s32)r1", "movsx3264 r0, r1"),
    ("w0 = (s8)w1", "movsx832 r0, r1"),
    ("w0 = (s16)w1", "movsx1632 r0, r1"),
    ("r0 = be16 r0", "be16 r0"),
    ("r0 = le32 r0", "le32 r0"),
    ("r0 = bswap64 r0", "bswap64 r0"),
    ("r0 = 0x1122334455667788 ll", "lddw r0, 0x1122334455667788"),
    ("r0 = 5 ll", "lddw r0, 5"),
    ("r0 = *(u32 *)(r1 + 4)", "ldxw r0, [r1+4]"),
    ("w0 = *(u16 *)(r1 + 4)", "ldxh r0, [r1+4]"),
    ("r0 = *(s16 *)(r1 - 2)", "ldxsh r0, [r1-2]"),
    ("r0 = *(s8 *)(r1 + 0)", "ldxsb r0, [r1]"),
    ("r0 = *(u64 *)(r10 -8)", "ldxdw r0, [r10-8]"),
    ("*(u32 *)(r10 - 4) = r1", "stxw [r10-4], r1"),
    ("*(u8 *)(r10 - 1) = w1", "stxb [r10-1], r1"),
    ("*(u64 *)(r10 - 8) = 7", "stdw [r10-8], 7"),
    ("*(u16 *)(r2 + 6) = -1", "sth [r2+6], -1"),
    ("lock *(u64 *)(r1 + 0) += r2", "lock add [r1], r2"),
    ("lock *(u32 *)(r1 + 8) |= w2", "lock or32 [r1+8], r2"),
    ("lock *(u64 *)(r1 - 8) &= r2", "lock and [r1-8], r2"),
    ("lock *(u64 *)(r1 + 0) ^= r2", "lock xor [r1], r2"),
    ("r2 = atomic_fetch_add((u64 *)(r1 + 0), r2)", "lock fetch add [r1], r2"),
    ("w2 = atomic_fetch_and((u32 *)(r1 + 0), w2)", "lock fetch and32 [r1], r2"),
    ("r0 = atomic_fetch_or((u64 *)(r1 - 8), r0)", "lock fetch or [r1-8], r0"),
    ("r3 = atomic_fetch_xor((u64 *)(r1 + 0), r3)", "lock fetch xor [r1], r3"),
    ("r2 = atomic64_fetch_add((u64 *)(r1 +0), r2)", "lock fetch add [r1], r2"),
    ("r2 = xchg_64(r1 + 0, r2)", "lock xchg [r1], r2"),
    ("w2 = xchg32_32(r1 + 4, w2)", "lock xchg32 [r1+4], r2"),
    ("r0 = cmpxchg_64(r1 + 0, r0, r2)", "lock cmpxchg [r1], r2"),
    ("w0 = cmpxchg32_32(r1 + 0, w0, w2)", "lock cmpxchg32 [r1], r2"),
    ("r2 = atomic64_xchg((u64 *)(r1 +0), r2)", "lock xchg [r1], r2"),
    ("r0 = atomic64_cmpxchg((u64 *)(r1 +0), r0, r2)", "lock cmpxchg [r1], r2"),
    ("if r1 == 2 goto +3", "jeq r1, 2, +3"),
    ("if r1 != r2 goto +3", "jne r1, r2, +3"),
    ("if r1 > 2 goto +3", "jgt r1, 2, +3"),
    ("if r1 >= r2 goto +3", "jge r1, r2, +3"),
    ("if r1 < 2 goto +3", "jlt r1, 2, +3"),
    ("if r1 <= r2 goto +3", "jle r1, r2, +3"),
    ("if r1 s> 2 goto +3", "jsgt r1, 2, +3"),
    ("if r1 s>= r2 goto +3", "jsge r1, r2, +3"),
    ("if r1 s< -2 goto +3", "jslt r1, -2, +3"),
    ("if r1 s<= r2 goto +3", "jsle r1, r2, +3"),
    ("if r1 & 0x4 goto +3", "jset r1, 4, +3"),
    ("if w1 s< w2 goto -1", "jslt32 r1, r2, -1"),
    ("if w1 == 0xffffffff goto +1", "jeq32 r1, -1, +1"),
    ("if r1 == r2 goto pc+1", "jeq r1, r2, +1"),
    ("goto +3", "ja +3"),
    ("goto -1", "ja -1"),
    ("goto +0x10", "ja +16"),
    ("gotol +70000", "ja32 +70000"),
    ("call 1", "call 1"),
    ("call pc+2", "call local +2"),
    ("call pc-3", "call local -3"),
    ("callx r2", "call r2"),
    ("call bpf_map_lookup_elem#1", "call 1"),
    ("exit", "exit"),
    ("r0 = *(u8 *)skb[4]", "ldabsb 4"),
    ("r0 = *(u32 *)skb[r1 + 8]", "ldindw r1, 8"),
    ("r0 = *(u16 *)skb[r1]", "ldindh r1, 0"),
    ("   3:\t b7 00 00 00 01 00 00 00\tr0 = 1", "mov r0, 1"),
    ("  5:\t18 01 00 00 44 33 22 11 00 00 00 00 88 77 66 55\tr1 = 0x5566778811223344 ll",
     "lddw r1, 0x5566778811223344"),
    ("0: (b7) r0 = 1", "mov r0, 1"),
    ("2: (18) r1 = 0x5", "lddw r1, 5"),
    ("7: (07) r1 += -8", "add r1, -8"),
]


@pytest.mark.parametrize(("llvm", "rbpf"), EQUIVALENT_LLVM)
def test_llvm_syntax(llvm: str, rbpf: str) -> None:
    assert assemble(llvm).hex() == assemble(rbpf).hex()


EXPECTED_LLVM = [
    ("r0 = (s16)r1", Instruction(0xBF, 0, 1, 16, 0)),
    ("w0 s%= -3", Instruction(0x94, 0, 0, 1, -3)),
    ("r2 = atomic_fetch_add((u64 *)(r1 + 0), r2)", Instruction(0xDB, 1, 2, 0, 0x01)),
    ("r0 = cmpxchg_64(r1 + 0, r0, r2)", Instruction(0xDB, 1, 2, 0, 0xF1)),
    ("gotol -2", Instruction(0x06, 0, 0, 0, -2)),
    ("callx r2", Instruction(0x8D, 2, 0, 0, 0)),
    ("call pc+2", Instruction(0x85, 0, 1, 0, 2)),
    ("r1 = 0x1122334455667788 ll", Instruction(0x18, 1, 0, 0, 0x55667788, 0x11223344)),
    ("*(u32 *)(r10 - 4) = r1", Instruction(0x63, 10, 1, -4, 0)),
    ("if r1 > 2 goto +3", Instruction(0x25, 1, 0, 3, 2)),
]


@pytest.mark.parametrize(("llvm", "insn"), EXPECTED_LLVM)
def test_llvm_instructions(llvm: str, insn: Instruction) -> None:
    assert assemble_instructions(llvm) == [insn]


OBJDUMP = """
prog.o:\tfile format elf64-bpf

Disassembly of section .text:

0000000000000000 <func>:
       0:\tb7 00 00 00 00 00 00 00\tr0 = 0
       1:\t25 01 01 00 02 00 00 00\tif r1 > 2 goto +1 <LBB0_2>
       2:\tb7 00 00 00 01 00 00 00\tr0 = 1

0000000000000018 <LBB0_2>:
       3:\t95 00 00 00 00 00 00 00\texit
"""

VERIFIER_LOG = """
0: (b7) r0 = 0
1: (25) if r1 > 0x2 goto pc+1
; return 1;
2: (b7) r0 = 1
3: (95) exit
"""

LLVM_SOURCE = """
func:
    r0 = 0
    if r1 > 2 goto LBB0_2
    r0 = 1
LBB0_2:
    exit
"""


@pytest.mark.parametrize("listing", [OBJDUMP, VERIFIER_LOG, LLVM_SOURCE], ids=["objdump", "verifier", "labels"])
def test_llvm_listings(listing: str) -> None:
    expected = bytes.fromhex("".join(re.findall(r"\t((?:[0-9a-f]{2} ){7}[0-9a-f]{2})\t", OBJDUMP)).replace(" ", ""))
    assert len(expected) == 32
    assert assemble(listing) == expected


def test_llvm_call_to_label() -> None:
    insns = assemble_instructions("call helper_fn\nexit\nhelper_fn:\nr0 = 1\nexit")
    assert insns[0] == Instruction(0x85, 0, 1, 0, 1)


def test_mixed_syntax_program() -> None:
    text = "r0 = 0\nadd r0, 1\nif r0 < 3 goto -2\nexit"
    assert assemble(text) == assemble("mov r0, 0\nadd r0, 1\njlt r0, 3, -2\nexit")


# llvm-objdump 14 -dr of two XDP functions: a bpf-to-bpf call it prints as a helper call (`call -1`,
# told apart by the src nibble of its bytes), relocation lines, and an atomic it cannot decode.
OBJDUMP_CALLS = """
0000000000000000 <xdp_vlan_push>:
      44:\tb7 01 00 00 00 00 00 00\tr1 = 0
      45:\t85 10 00 00 ff ff ff ff\tcall -1
\t\t0000000000000168:  R_BPF_64_32\t.text
      46:\t18 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00\tr1 = 0 ll
\t\t0000000000000170:  R_BPF_64_64\txdp_stats
      48:\tc3 41 38 00 a1 00 00 00\t<unknown>
      49:\t85 00 00 00 06 00 00 00\tcall 6
"""
OBJDUMP_CALLS_CODE = slots("b7 01 0000 00000000", "85 10 0000 ffffffff", "18 01 0000 00000000", "00 00 0000 00000000",
                           "c3 41 3800 a1000000", "85 00 0000 06000000")


def test_objdump_bytes_settle_calls_and_unknown_instructions() -> None:
    assert assemble(OBJDUMP_CALLS) == OBJDUMP_CALLS_CODE
    no_addresses = re.sub(r"(?m)^ +[0-9]+:", "", OBJDUMP_CALLS)  # llvm-objdump --no-leading-addr
    assert assemble(no_addresses) == OBJDUMP_CALLS_CODE
    # A linked call (positive offset): only the bytes tell it from a helper call.
    assert assemble_instructions("  3:\t85 10 00 00 02 00 00 00\tcall 2") == [Instruction(0x85, 0, 1, 0, 2)]
    assert assemble_instructions("  3:\t85 20 00 00 02 00 00 00\tcall 2") == [Instruction(0x85, 0, 2, 0, 2)]


def test_signed_call_targets_are_relative() -> None:
    # Without the bytes (--no-show-raw-insn): helper ids are never negative.
    assert assemble_instructions("  45:\tcall -1") == [Instruction(0x85, 0, 1, 0, -1)]
    assert assemble_instructions("call 0xffffffff") == [Instruction(0x85, 0, 0, 0, -1)]  # helper id 2**32-1


def test_unknown_without_bytes_is_an_error() -> None:
    with pytest.raises(AssemblerError, match="could not decode this instruction") as info:
        assemble("r0 = 0\n      48:\t<unknown>\nexit")
    assert (info.value.line, info.value.column) == (2, 11)


def test_hex_lines_with_comments() -> None:
    text = "b7 00 00 00 2a 00 00 00  ; r0 = 42\n95 00 00 00 00 00 00 00  # exit\n"
    assert assemble(text) == slots("b7 00 0000 2a000000", "95 00 0000 00000000")
    with pytest.raises(AssemblerError, match="no valid instruction: unknown opcode 0xff") as info:
        assemble("exit\n  ff 00 00 00 00 00 00 00\n")
    assert (info.value.line, info.value.column) == (2, 3)


# A kernel verifier log (log_level 2): state lines, the fall-through path first, then the branch,
# which revisits instruction 7 and places 4-6 before it.
VERIFIER_PATHS = """
func#0 @0
0: R1=ctx(off=0,imm=0) R10=fp0
; int prog(struct xdp_md *ctx) @ prog.c:10
0: (b7) r0 = 2                        ; R0_w=2
1: (15) if r1 == 0x0 goto pc+2
 R0_w=2 R1=ctx(off=0,imm=0) R10=fp0
2: (b7) r0 = 1                        ; R0_w=1
3: (05) goto pc+3
7: (95) exit
from 1 to 4: R0_w=2 R1=ctx(off=0,imm=0) R10=fp0
4: (18) r0 = 0x1122334455667788
6: (05) goto pc+0
7: (95) exit
caller:
 R6=ctx() R10=fp0
callee:
 frame1: R1=ctx() R10=fp0
7: safe
mark_precise: frame0: last_idx 6 first_idx 0 subseq_idx -1
regs=1 stack=0 before 4: (18) r0 = 0x1122334455667788
verification time 31 usec
stack depth 0
processed 9 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0
"""


def test_verifier_log_places_instructions_by_number() -> None:
    assert assemble(VERIFIER_PATHS) == assemble("r0 = 2\nif r1 == 0 goto +2\nr0 = 1\ngoto +3\n"
                                                "r0 = 0x1122334455667788 ll\ngoto +0\nexit")


@pytest.mark.parametrize(("log", "line", "fragment"), [
    ("0: (b7) r0 = 2\n2: (95) exit", 2, "instruction 1 is missing from the listing (it goes on with instruction 2)"),
    ("0: (b7) r0 = 2\n1: (95) exit\n0: (b7) r0 = 3", 3, "instruction 0 was given before as 'r0 = 2'"),
    ("0: (18) r0 = 0x1\n1: (95) exit", 2, "instruction 1 is inside an lddw of the listing"),
    ("5: (b7) r0 = 2\n3: (95) exit", 2, "instruction 3 is before the first one of the listing"),
    ("0: (b7) r0 = 2\n3: (95) exit\n3: (95) exit\n3: (b7) r0 = 1", 4, "instruction 3 was given before as 'exit'"),
])
def test_verifier_log_inconsistencies(log: str, line: int, fragment: str) -> None:
    with pytest.raises(AssemblerError) as info:
        assemble(log)
    assert info.value.message == fragment and info.value.line == line


def test_bpftool_dump() -> None:
    dump = ("int xdp_prog(struct xdp_md * ctx):\n; int xdp_prog(struct xdp_md *ctx)\n   0: (b7) r0 = 2\n"
            "       b7 00 00 00 02 00 00 00\n   1: (18) r1 = map[id:5]\n"
            "       18 11 00 00 07 00 00 00 00 00 00 00 00 00 00 00\n   3: (18) r2 = map[id:5][0]+8\n   5: (95) exit\n")
    assert assemble_instructions(dump) == [Instruction(0xB7, 0, 0, 0, 2), Instruction(0x18, 1, 1, 0, 5, 0),
                                           Instruction(0x18, 2, 2, 0, 5, 8), Instruction(0x95)]


def test_objdump_sections_restart_numbering() -> None:
    listing = ("Disassembly of section .text:\n\n0000000000000000 <f>:\n   0:\t(b7) r0 = 1\n   1:\t(95) exit\n\n"
               "Disassembly of section xdp:\n\n0000000000000000 <g>:\n   0:\t(b7) r0 = 2\n   1:\t(95) exit\n")
    assert assemble(listing) == assemble("r0 = 1\nexit\nr0 = 2\nexit")


# --- errors -----------------------------------------------------------------------------------------

ERRORS = [
    ("mov32 r0, 2147483648", 1, 11, "out of range"),
    ("mov32 r0, 0x100000000", 1, 11, "out of range"),
    ("mov r0, -2147483649", 1, 9, "out of range"),
    ("lddw r0, 0x10000000000000000", 1, 10, "out of range"),
    ("exit\nldxq r0, [r1]", 2, 1, "unknown mnemonic 'ldxq'"),
    ("or r0, %r50", 1, 8, "bad register"),
    ("or r16, 1", 1, 4, "bad register"),
    ("lddw r0", 1, 1, "expects 2 operands, got 1"),
    ("mov r0, r1, r2", 1, 1, "expects 2 operands, got 3"),
    ("exit 0", 1, 1, "expects 0 operands"),
    ("lock", 1, 1, "lock expects an operation"),
    ("lock or [r10-8]", 1, 1, "expects 2 operands"),
    ("lock nand [r1], r2", 1, 6, "unknown atomic operation"),
    ("ldxb r0, [r1+0x10000]", 1, 13, "offset +0x10000 out of range"),
    ("ldxb r0, [r1-32769]", 1, 13, "out of range"),
    ("jeq r1, 1, +40000", 1, 12, "offset +40000 out of range"),
    ("ja nowhere\nexit", 1, 4, "unknown label nowhere"),
    ("ja exit", 1, 4, "unknown label exit"),
    ("a:\nexit\n  a:", 3, 3, "duplicate label 'a'"),
    ("ldxb r0, r1", 1, 10, "bad memory operand"),
    ("stxw r1, r0", 1, 6, "bad memory operand"),
    ("ldxb r0, [r1+4", 1, 15, "bad memory operand"),
    ("ldxb r0, [4]", 1, 11, "bad memory operand"),
    ("mov r0, [r1]", 1, 9, "expected a register or an immediate"),
    ("neg 5", 1, 5, "expected a register"),
    ("add r0,", 1, 8, "expected an operand after ','"),
    ("exit\n  add r0, $1", 2, 11, "unexpected character '$'"),
    ("mov r0, 1abc", 1, 9, "bad number"),
    ("mov r0, 0x", 1, 9, "bad number"),
    ("w0 = (s32)w1", 1, 4, "no such instruction"),
    ("r1 = -r2", 1, 7, "must name the destination register"),
    ("r1 = be16 r2", 1, 11, "must name the destination register"),
    ("if r1 =< r2 goto +1", 1, 7, "unknown condition"),
    ("if r1 > r2 goto", 1, 16, "expected a jump offset or label"),
    ("r0 = *(u128 *)(r1 + 0)", 1, 8, "unknown type 'u128'"),
    ("*(s32 *)(r1 + 0) = r2", 1, 3, "unsigned type"),
    ("r0 = *(u32 *)(r1 + 0) + 1", 1, 23, "unexpected '+'"),
    ("r3 = cmpxchg_64(r1 + 0, r3, r2)", 1, 25, "cmpxchg compares and returns r0"),
    ("r3 = atomic_fetch_add((u64 *)(r1 + 0), r2)", 1, 40, "must name the destination register"),
    ("r0 = frobnicate(r1)", 1, 6, "unknown function"),
    ("w0 = 1 ll", 1, 1, "needs an r register"),
    ("r1 = *(u8 *)skb[4]", 1, 1, "legacy packet loads write r0"),
    ("r0 = *(u64 *)skb[4]", 1, 8, "no ld_abs instruction"),
    ("lddw r1, btf_id:foo", 1, 17, "expected a number"),
    ("ja far\n" + "exit\n" * 32768 + "far: exit", 1, 4, "offset 32768 to label far out of range"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_errors(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(AssemblerError) as info:
        assemble(text)
    err = info.value
    assert fragment in err.message
    assert (err.line, err.column) == (line, column), err.message
    assert err.text == text.split("\n")[line - 1]
    assert "\n" not in err.message


# --- robustness -------------------------------------------------------------------------------------

VOCABULARY = [
    "mov", "mov32", "add", "lddw", "ldxw", "stxw", "stw", "ja", "ja32", "jeq", "jne32", "call", "local", "lock",
    "fetch", "cmpxchg", "xchg", "exit", "be16", "neg", "movsx832", "r0", "%r1", "w2", "r10", "r11", "%r99", "[", "]",
    "(", ")", "+", "-", "*", ",", ":", "=", "+=", "s>>=", "<<=", "==", "s<", "&", "if", "goto", "gotol", "0",
    "1", "0x7fffffff", "0xffffffffffffffff", "-1", "label", "map", "map_value", "func", "ll", "u32", "s8", "skb",
    "atomic_fetch_add", "xchg_64", "cmpxchg32_32", "pc", "#", ";", "callx", "3:", "(b7)", "<f>:", "\n", "\t", "12",
]


def _assembles_or_reports(text: str) -> None:
    try:
        assemble(text, maps={"label": 1})
    except AssemblerError as err:
        assert err.line >= 1
        assert err.column >= 1


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_text_only_raises_assembler_error(text: str) -> None:
    _assembles_or_reports(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=14).map(" ".join))
def test_random_token_soup_only_raises_assembler_error(text: str) -> None:
    _assembles_or_reports(text)
