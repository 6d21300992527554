"""The verifier's numeric domain against concrete semantics: every operation over-approximates.

Each abstract value comes with concrete members known to lie in it; for every operation of the
opcode table, the result of the operation on members must be a member of the abstract result,
and a branch's refined operands must keep every pair of members that takes that edge.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jitbpf.isa import OPCODES, PY_NAMESPACE, AluOp, JmpOp, Kind, alu_function, bswap
from jitbpf.verifier import _scalar as sc

PROPERTY = settings(max_examples=60, deadline=None)
WIDTHS = (32, 64)
MEMBERS = 6  # concrete members checked per abstract value


def contains(s: sc.Scalar, x: int, bits: int = 64) -> bool:
    """Whether the ``bits``-bit integer ``x`` (unsigned) is a member of ``s``."""
    return (x & ~s.mask == s.value and s.umin <= x <= s.umax
            and s.smin <= sc.to_signed(x, bits) <= s.smax
            and (s.low32 is None or contains(s.low32, x & 0xFFFF_FFFF, 32)))


@st.composite
def abstract(draw: st.DrawFn, bits: int) -> tuple[sc.Scalar, list[int]]:
    """An abstract ``bits``-bit value and some of its members."""
    full = (1 << bits) - 1
    special = st.sampled_from([0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                               1 << 32, (1 << 63) - 1, 1 << 63, full - 1, full]).map(lambda v: v & full)
    number = st.one_of(special, st.integers(0, full), st.integers(0, 300), st.integers(full - 300, full))
    seeds = draw(st.lists(number, min_size=1, max_size=4))
    s = sc.const(seeds[0], bits)
    for x in seeds[1:]:
        s = sc.join(s, sc.const(x, bits), bits)
    how = draw(st.sampled_from(["join", "tnum", "urange", "srange", "full", "low32"] if bits == 64
                               else ["join", "tnum", "urange", "srange", "full"]))
    if how == "tnum":
        extra = draw(st.integers(0, full))
        s = sc.join(s, sc.const(seeds[0] ^ extra, bits), bits)
        seeds.append(seeds[0] ^ extra)
    elif how == "urange":
        lo, hi = sorted((draw(number), draw(number)))
        s = sc.urange(lo, hi, bits)
        seeds = [lo, hi]
    elif how == "srange":
        lo, hi = sorted(sc.to_signed(draw(number), bits) for _ in range(2))
        s = sc.srange(lo, hi, bits)
        seeds = [lo & full, hi & full]
    elif how == "full":
        s = sc.unknown(bits)
    elif how == "low32":
        # what a 32-bit comparison leaves: the low halves in a 32-bit range, the upper ones anything
        lo, hi = sorted(draw(st.integers(0, 0xFFFF_FFFF)) for _ in range(2))
        upper = draw(st.sampled_from([sc.unknown(), s]))
        got = sc.make(upper.value, upper.mask, upper.umin, upper.umax, upper.smin, upper.smax,
                      low32=sc.urange(lo, hi, 32))
        assume(got is not None)
        assert got is not None
        s = got
        seeds = [(x & ~0xFFFF_FFFF) | lo for x in seeds] + [(x & ~0xFFFF_FFFF) | hi for x in seeds]
    randoms = draw(st.lists(st.integers(0, full), min_size=MEMBERS, max_size=MEMBERS))
    candidates = seeds + [s.value | (r & s.mask) for r in randoms]
    candidates += [s.umin, s.umax, s.smin & full, s.smax & full]
    members = sorted({x for x in candidates if contains(s, x, bits)})
    assert members or how in ("urange", "srange", "low32"), (s, seeds)
    assume(members)
    return s, members[:MEMBERS + 4]


def _values(bits: int) -> st.SearchStrategy[tuple[sc.Scalar, list[int]]]:
    return abstract(bits)


# -- normalisation, set relations ------------------------------------------------------------------


@pytest.mark.parametrize("bits", WIDTHS)
@PROPERTY
@given(data=st.data())
def test_make_keeps_every_integer_of_the_description(bits: int, data: st.DataObject) -> None:
    full = (1 << bits) - 1
    x = data.draw(st.integers(0, full))
    mask = data.draw(st.integers(0, full))
    sx = sc.to_signed(x, bits)
    umin, umax = data.draw(st.integers(0, x)), data.draw(st.integers(x, full))
    smin = data.draw(st.integers(-(1 << (bits - 1)), sx))
    smax = data.draw(st.integers(sx, (1 << (bits - 1)) - 1))
    s = sc.make(x & ~mask, mask, umin, umax, smin, smax, bits)
    assert s is not None and contains(s, x, bits)


@pytest.mark.parametrize("bits", WIDTHS)
@PROPERTY
@given(data=st.data())
def test_a_description_with_every_bit_known_is_that_constant_or_nothing(bits: int, data: st.DataObject) -> None:
    """``make`` of known bits only (its shortcut for constants): the constant when both ranges
    hold it, else None; ranges may be anything, even empty or outside the width."""
    full, half = (1 << bits) - 1, 1 << (bits - 1)
    x = data.draw(st.integers(0, full))
    sx = sc.to_signed(x, bits)
    near = st.one_of(st.integers(-2 * half, 2 * full), st.sampled_from([x - 1, x, x + 1, sx - 1, sx, sx + 1]))
    umin, umax, smin, smax = (data.draw(near) for _ in range(4))
    got = sc.make(x, 0, umin, umax, smin, smax, bits)
    described = umin <= x <= umax and smin <= sx <= smax  # the only integer the known bits allow
    assert got == (sc.const(x, bits) if described else None)


@pytest.mark.parametrize("bits", WIDTHS)
@PROPERTY
@given(data=st.data())
def test_join_meet_within(bits: int, data: st.DataObject) -> None:
    a, xs = data.draw(_values(bits))
    b, ys = data.draw(_values(bits))
    j = sc.join(a, b, bits)
    assert all(contains(j, v, bits) for v in xs + ys)
    assert sc.within(a, j) and sc.within(b, j)
    m = sc.meet(a, b, bits)
    for v in xs + ys:
        if contains(a, v, bits) and contains(b, v, bits):
            assert m is not None and contains(m, v, bits)
    if sc.within(a, b):
        assert all(contains(b, v, bits) for v in xs)


def test_meet_of_a_32_bit_value_with_itself_keeps_bit_31() -> None:
    """The root of a wrong proof: 32-bit sets normalised as 64-bit ones lost their upper half."""
    top = sc.unknown(32)
    assert sc.meet(top, top, 32) == top
    minus_one = sc.const(0xFFFF_FFFF, 32)
    assert sc.meet(minus_one, minus_one, 32) == minus_one


# -- arithmetic ------------------------------------------------------------------------------------

BINARY = [(op, signed) for op in AluOp if op not in (AluOp.NEG, AluOp.END) for signed in (False, True)
          if not signed or op in (AluOp.DIV, AluOp.MOD)]


def _concrete(op: int, bits: int, signed: bool) -> Callable[[int, int], int]:
    if op == AluOp.NEG:
        return lambda a, _b: -a & ((1 << bits) - 1)
    fn = alu_function(op, bits, signed)
    return lambda a, b: fn(a, b) & ((1 << bits) - 1)


@pytest.mark.parametrize("bits", WIDTHS)
@PROPERTY
@given(value=st.integers(0, 0xFFFF), counts=st.lists(st.integers(0, 15), min_size=2, max_size=4, unique=True))
def test_left_shift_by_a_bounded_count_stays_bounded(bits: int, value: int, counts: list[int]) -> None:
    """Counts met at a join (one constant per path) shift a bounded value to a bounded one."""
    byte = sc.join(sc.const(0, bits), sc.const(value, bits), bits)
    count = sc.const(counts[0], bits)
    for c in counts[1:]:
        count = sc.join(count, sc.const(c, bits), bits)
    shifted = sc.alu(AluOp.LSH, byte, count, bits)
    assert shifted.umax <= byte.umax << max(counts)
    assert all(contains(shifted, x << c, bits) for x in (0, value) for c in counts)


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize(("op", "signed"), [*BINARY, (AluOp.NEG, False)],
                         ids=lambda v: AluOp(v).name if isinstance(v, AluOp) else str(v))
@PROPERTY
@given(data=st.data())
def test_alu_contains_every_concrete_result(bits: int, op: AluOp, signed: bool, data: st.DataObject) -> None:
    """As the verifier applies them: 64-bit register values, an operation of the instruction's width,
    the result zero-extended for 32-bit operations."""
    a, xs = data.draw(_values(64))
    b, ys = data.draw(_values(64))
    out = sc.alu_width(op, a, b, bits, signed)
    fn = _concrete(op, bits, signed)
    for x in xs:
        for y in ys:
            r = fn(x & ((1 << bits) - 1), y & ((1 << bits) - 1))
            assert contains(out, r), (AluOp(op).name, a, b, x, y, r, out)


@pytest.mark.parametrize("bits", (8, 16, 32, 64))
@PROPERTY
@given(data=st.data())
def test_truncation_extension_and_byte_swaps(bits: int, data: st.DataObject) -> None:
    a, xs = data.draw(_values(64))
    low = sc.project(a, bits)
    narrow = sc.zero_extend(low) if bits < 64 else low
    swapped = sc.swap_bytes(low, bits)
    extended = sc.sign_extend(low, bits) if bits < 64 else low
    m = (1 << bits) - 1
    for x in xs:
        assert contains(low, x & m, bits)
        assert contains(narrow, x & m)
        assert contains(swapped, bswap(x, bits))
        assert contains(extended, sc.to_signed(x, bits) & sc.M64)


# -- branches --------------------------------------------------------------------------------------

JUMPS = sorted({(info.op, info.width, info.py) for info in OPCODES if info is not None and info.kind is Kind.JCOND
                and not info.reg_src})


@pytest.mark.parametrize(("op", "width", "expr"), JUMPS, ids=lambda v: JmpOp(v).name if isinstance(v, int) and v > 64
                         else str(v))
@PROPERTY
@given(data=st.data())
def test_refinement_keeps_every_pair_taking_the_edge(op: int, width: int, expr: str, data: st.DataObject) -> None:
    a, xs = data.draw(_values(64))
    b, ys = data.draw(_values(64))
    cond = eval(f"lambda a, b: bool({expr})", dict(PY_NAMESPACE))
    taken, fall = sc.refine(op, a, b) if width == 64 else sc.refine32(op, a, b)
    m = (1 << width) - 1
    for x in xs:
        for y in ys:
            edge = taken if cond(x & m, y & m) else fall
            assert edge is not None, (JmpOp(op).name, width, a, b, x, y)
            assert contains(edge[0], x) and contains(edge[1], y), (JmpOp(op).name, width, a, b, x, y, edge)


@pytest.mark.parametrize("width", WIDTHS)
@PROPERTY
@given(data=st.data())
def test_refinement_of_a_value_against_itself(width: int, data: st.DataObject) -> None:
    """``jeq r0, r0``: the same set on both sides (the case that once dropped bit 31)."""
    a, xs = data.draw(_values(64))
    taken, _fall = sc.refine(JmpOp.JEQ, a, a) if width == 64 else sc.refine32(JmpOp.JEQ, a, a)
    assert taken is not None and all(contains(taken[0], x) for x in xs)


@PROPERTY
@given(data=st.data())
def test_a_32_bit_sub_range_is_kept_only_while_the_upper_half_is_unknown(data: st.DataObject) -> None:
    """Normal form: once the upper half is known the low half's set is folded into the value,
    so that equal sets compare equal (pruning compares them)."""
    a, _ = data.draw(_values(64))
    b, _ = data.draw(_values(64))
    for s in (a, b, sc.join(a, b), sc.meet(a, b), sc.alu(AluOp.ADD, a, b, 64), sc.alu(AluOp.LSH, a, sc.const(1), 64)):
        assert s is None or s.low32 is None or s.mask >> 32


def test_a_product_keeps_its_factors_trailing_zeros() -> None:
    """As the kernel's tnum_mul: x * 76 is a multiple of 4 whatever x is (the fuzzer found a
    stack access the kernel proves aligned this way)."""
    out = sc.alu(AluOp.MUL, sc.urange(0, 0xFFFF_FFFF), sc.const(76), 64)
    assert (out.value | out.mask) & 3 == 0
    odd = sc.alu(AluOp.MUL, sc.urange(0, 0xFF), sc.const(3), 32)
    assert odd.mask & 1  # an odd factor keeps nothing known
