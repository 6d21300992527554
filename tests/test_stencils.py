"""Instruction stencils give the code the emitters give: random programs compile to the same bytes,
branch fixups, pcs and marks with stencils as without, with proofs and without; the checks that
turn a class down each reject a minimal case."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf.errors import JitError
from jitbpf.isa import OPCODES, Instruction, Kind, OpInfo
from jitbpf.jit.encoding import Assembler
from jitbpf.jit.stencils import Probe, StencilKey, derive
from jitbpf.jit.target import CompiledCode, CompileOptions, HelperTable
from jitbpf.jit.x86_64 import X86_64
from jitbpf.vm import VM
from tests.test_differential import programs

_ACCESSES = frozenset({Kind.LDX, Kind.LDXSX, Kind.ST, Kind.STX})
_TABLE = HelperTable(0x1000, 16, 0x2000)  # never called: the code is compared, not run


class _Emitted(X86_64):
    """The x86-64 target with every instruction emitted (no stencils)."""

    def stencil_classes(self) -> dict[Kind, Callable[[int, Instruction, OpInfo], StencilKey | None]]:
        return {}


@pytest.fixture(scope="module")
def shared() -> Assembler:
    """One template cache for the whole module: later examples meet classes learnt by earlier ones."""
    return Assembler()


def _compile(target: type[X86_64], asm: Assembler, insns: list[Instruction], proven: bool,
             count_budget: bool = True) -> CompiledCode:
    with VM(insns, verify=False) as vm:
        accesses = frozenset(pc for pc, _insn, info in vm.program if info.kind in _ACCESSES)
        options = CompileOptions(vm.resolve_lddw, accesses if proven else frozenset(), _TABLE,
                                 count_budget=count_budget, contained=True)
        return target(asm, vm.flow, options).compile()


@settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(programs(), st.booleans(), st.booleans())
def test_stencilled_code_is_the_emitted_code(shared: Assembler, insns: list[Instruction], proven: bool,
                                             count_budget: bool) -> None:
    # The first compile learns this program's new classes and encodings, the second uses them
    # (without a budget charge, whole runs of blocks at once).
    for _ in range(2):
        assert (_compile(X86_64, shared, insns, proven, count_budget)
                == _compile(_Emitted, shared, insns, proven, count_budget))


# Values on both sides of every boundary the emitters test: imm8/imm32 forms, zero, sign, shift
# counts in and out of range, disp0/disp8/disp32 and the edges of the stack frame.
EDGES = [0, 1, -1, 2, 8, -8, -9, 31, 32, 33, 63, 64, 127, 128, -128, -129, -504, -512, -513, 0x7FFF, -0x8000,
         0x1234_5678, -(2**31), 2**31 - 1]
ROWS = [r for r in OPCODES if r.kind in (Kind.ALU, Kind.JCOND, Kind.JA, Kind.LDX, Kind.LDXSX, Kind.ST, Kind.STX,
                                         Kind.NEG, Kind.MOVSX, Kind.END, Kind.BSWAP)]


def _variants(row: OpInfo, base: int) -> list[Instruction]:
    """``row`` with each edge value in the operand it varies (imm, or off for accesses)."""
    fields = {"dst": 1, "src": 2 if row.reg_src else 0, "off": 0, "imm": 0}
    if row.variant_field:
        fields[row.variant_field] = row.variant
    if row.kind in (Kind.LDX, Kind.LDXSX, Kind.ST, Kind.STX):
        fields["src" if row.kind in (Kind.LDX, Kind.LDXSX) else "dst"] = base
        return [Instruction(row.opcode, **{**fields, "off": v, "imm": v * 3 if row.kind is Kind.ST else 0})
                for v in EDGES if -0x8000 <= v <= 0x7FFF]
    if row.reg_src or row.variant_field == "imm" or row.kind in (Kind.JA, Kind.NEG):
        return [Instruction(row.opcode, **fields)]
    return [Instruction(row.opcode, **{**fields, "imm": v}) for v in EDGES]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.mnemonic}-{r.opcode:#x}")
@pytest.mark.parametrize("base", [10, 3])
def test_every_class_edge(row: OpInfo, base: int) -> None:
    """Each row at every edge value, learnt in both orders (each class from either end)."""
    variants = _variants(row, base)
    for order in (variants, variants[::-1]):
        asm = Assembler()
        insns = [*order, Instruction(0x95)]
        for proven in (False, True):
            for _ in range(2):
                assert _compile(X86_64, asm, insns, proven) == _compile(_Emitted, asm, insns, proven)


def test_stencils_are_used() -> None:
    """A class met before costs no emission: its instructions come from the stencil."""
    asm = Assembler()
    source = [Instruction(0x07, 1, 0, 0, 5), Instruction(0x07, 1, 0, 0, 9), Instruction(0x95)]  # add r1, imm
    _compile(X86_64, asm, source, False)
    stencils = asm.derived[("stencils", "X86_64", (True, True))]
    assert [s for s in stencils.values() if s is not None and s.imm_at >= 0]


I8 = Probe(1, 0x31, 0x52)


@pytest.mark.parametrize(("real", "a", "b", "branches", "why"), [
    (b"\x01\x05", b"\x01\x31", b"\x01\x52\x00", (-1, -1, -1), "lengths differ"),
    (b"\x01\x05", b"\x02\x31", b"\x01\x52", (-1, -1, -1), "bytes differ outside the hole"),
    (b"\x31\x05", b"\x31\x31", b"\x52\x52", (-1, -1, -1), "the probe value is found twice"),
    (b"\x01\x05", b"\x01\x30", b"\x01\x52", (-1, -1, -1), "the probe value is not found"),
    (b"\x01\x07", b"\x01\x31", b"\x01\x52", (-1, -1, -1), "patched, it does not give the real code"),
    (b"\x01\x05", b"\x01\x31", b"\x01\x52", (0, 1, 0), "the branch field moves"),
])
def test_derive_rejects(real: bytes, a: bytes, b: bytes, branches: tuple[int, int, int], why: str) -> None:
    assert derive(real, a, b, branches, I8, None, (5, 0)) is None, why


def test_derive_finds_the_hole() -> None:
    stencil = derive(b"\x01\x05\x02", b"\x01\x31\x02", b"\x01\x52\x02", (-1, -1, -1), I8, None, (5, 0))
    assert stencil is not None and stencil.imm_at == 1 and stencil.instantiate(-2, 0) == b"\x01\xfe\x02"


class _WrongKey(X86_64):
    """A target whose ALU classes forget the destination register."""

    def _alu_class(self, pc: int, insn: Instruction, info: OpInfo) -> StencilKey:
        return insn.opcode, info.variant, 0, insn.src, insn.imm, insn.off


def test_a_key_that_does_not_describe_its_instruction_is_an_error() -> None:
    insns = [Instruction(0x07, 3, 0, 0, 5), Instruction(0x95)]  # add r3, 5
    with pytest.raises(JitError, match="does not describe") as err:
        _compile(_WrongKey, Assembler(), insns, False)
    assert err.value.pc == 0


def test_the_stencil_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Classes with exact values (a division by each constant) do not grow the cache forever."""
    monkeypatch.setattr("jitbpf.jit.target._MAX_STENCILS", 8)
    asm = Assembler()
    insns = [Instruction(0x37, 1, 0, 0, k) for k in range(3, 40)] + [Instruction(0x95)]  # div r1, k
    assert _compile(X86_64, asm, insns, False) == _compile(_Emitted, asm, insns, False)
    assert len(asm.derived[("stencils", "X86_64", (True, True))]) <= 8


def _words(asm: Assembler) -> dict[int, bytes]:
    code: dict[int, bytes] = asm.derived[("words", "X86_64", (True, True))][0]
    return code


def test_code_is_kept_by_encoding() -> None:
    """An instruction whose class depends on its encoding alone is kept by it; one whose class
    looks at its neighbour (a 64-bit register move may start an extension) or at a proof is not."""
    asm = Assembler()
    insns = [Instruction(0x07, 1, 0, 0, 5), Instruction(0xBF, 2, 1), Instruction(0x61, 0, 10, -4),  # add, mov, ldxw
             Instruction(0x95)]
    words = VM(insns, verify=False).program.words
    _compile(X86_64, asm, insns, True, count_budget=False)
    assert set(_words(asm)) == {words[0]}  # the mov looked around, the load was proven
    _compile(X86_64, asm, insns, False, count_budget=False)
    assert set(_words(asm)) == {words[0], words[2]}


@pytest.mark.parametrize("count_budget", [True, False])
def test_code_by_encoding_is_the_emitted_code(count_budget: bool) -> None:
    """Programs that share encodings with one compiled before (runs of known blocks between
    unknown ones, a jump among them) compile as without stencils."""
    asm = Assembler()
    first = [Instruction(0x07, 1, 0, 0, 5), Instruction(0x15, 1, 0, 1, 7), Instruction(0x07, 2, 0, 0, 1),
             Instruction(0xB7, 0, 0, 0, 0), Instruction(0x95)]  # add; jeq r1, 7, +1; add; mov r0, 0; exit
    second = [first[0], Instruction(0x07, 3, 0, 0, 9), *first[1:3], Instruction(0x18, 4, 0, 0, 1, 2),
              *first[3:]]  # with an unknown add and an lddw
    for insns in (first, second, first):
        assert (_compile(X86_64, asm, insns, False, count_budget)
                == _compile(_Emitted, asm, insns, False, count_budget))


def test_the_encoding_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """It starts over when a compile starts with it full (never in the middle of a program), as a
    new dict: one that a compile on another thread may be using is never emptied under it."""
    monkeypatch.setattr("jitbpf.jit.target._MAX_WORDS", 4)
    asm = Assembler()
    kept: list[dict[int, bytes]] = []
    for base in (0, 10):
        insns = [Instruction(0x07, 1, 0, 0, base + k) for k in range(6)] + [Instruction(0x95)]  # add r1, k
        assert _compile(X86_64, asm, insns, False) == _compile(_Emitted, asm, insns, False)
        kept.append(_words(asm))
        assert len(kept[-1]) == 6
    assert kept[0] is not kept[1] and len(kept[0]) == 6
