"""The verifier's numeric domain: known bits (a "tnum") plus unsigned and signed ranges, at any width."""

from __future__ import annotations

from typing import NamedTuple

from jitbpf.errors import InternalError
from jitbpf.isa import AluOp, JmpOp, alu_function, jump_function

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


class Scalar(NamedTuple):
    """A set of n-bit integers: every member matches the known bits and lies in both ranges.

    Known bits work like a ternary number: bits set in ``mask`` are unknown, the others equal the
    same bit of ``value`` (which is zero where ``mask`` is set). The width is not stored: 64 bits
    for register values, and 8/16/32 only transiently while computing narrower operations.

    A 64-bit set may also say which 32-bit set its low halves lie in (``low32``), beyond what the
    other fields imply: what a 32-bit comparison learnt of a value whose upper half is unknown.
    It is None when it would add nothing, so that equal sets compare equal.
    """

    value: int  # known bits (zero where unknown)
    mask: int  # unknown bits
    umin: int  # unsigned lower bound
    umax: int  # unsigned upper bound
    smin: int  # signed lower bound
    smax: int  # signed upper bound
    low32: Scalar | None = None  # the 32-bit set the low halves lie in (64-bit sets only), if narrower

    @property
    def is_const(self) -> bool:
        return self.mask == 0

    def __str__(self) -> str:
        if self.mask == 0:
            return f"{self.smin}" if -4096 < self.smin < 0 else f"{self.value:#x}"
        parts = []
        if self.umin or self.umax != M64:
            parts.append(f"u[{self.umin:#x}, {self.umax:#x}]")
        signed_full = self.smin == -(1 << 63) and self.smax == (1 << 63) - 1
        same_as_unsigned = self.smin >= 0 and self.smax == self.umax and self.smin == self.umin
        if not signed_full and not same_as_unsigned:
            parts.append(f"s[{self.smin}, {self.smax}]")
        if self.mask != M64 and (self.value or (self.mask + 1) & self.mask):
            parts.append(f"bits={self.value:#x}/{self.mask:#x}")
        if self.low32 is not None:
            parts.append(f"w32=[{self.low32.umin:#x}, {self.low32.umax:#x}]")
        return "scalar(" + ", ".join(parts) + ")" if parts else "scalar"


# Scalar(...) without the call of NamedTuple's __new__ (which only packs its arguments, defaults
# included): for the sets made once per instruction.
_new = tuple.__new__


def to_signed(value: int, bits: int = 64) -> int:
    """The two's complement reading of the low ``bits`` bits of ``value``."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def const(value: int, bits: int = 64) -> Scalar:
    """The set holding exactly ``value`` (taken modulo 2**bits)."""
    v = value & ((1 << bits) - 1)
    s = v - (1 << bits) if v >> (bits - 1) else v  # to_signed, inline: constants are made per instruction
    return _new(Scalar, (v, 0, v, v, s, s, None))


def unknown(bits: int = 64) -> Scalar:
    """Every ``bits``-bit integer."""
    m = (1 << bits) - 1
    return Scalar(0, m, 0, m, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def urange(lo: int, hi: int, bits: int = 64) -> Scalar:
    """The unsigned interval [lo, hi]."""
    s = make(0, (1 << bits) - 1, lo, hi, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, bits)
    assert s is not None
    return s


def srange(lo: int, hi: int, bits: int = 64) -> Scalar:
    """The signed interval [lo, hi]."""
    s = make(0, (1 << bits) - 1, 0, (1 << bits) - 1, lo, hi, bits)
    assert s is not None
    return s


UNKNOWN = unknown()
ZERO = const(0)


# -- known-bits arithmetic (all results masked to the width by the caller's `make`) ----------------

def tnum_range(lo: int, hi: int, bits: int) -> tuple[int, int]:
    """Known bits shared by every integer of the unsigned interval [lo, hi]: their common prefix."""
    if lo > hi:
        return 0, (1 << bits) - 1
    n = (lo ^ hi).bit_length()
    if n >= bits:
        return 0, (1 << bits) - 1
    low = (1 << n) - 1
    return lo & ~low, low


def _tnum_add(a: Scalar, b: Scalar) -> tuple[int, int]:
    sm = a.mask + b.mask
    sv = a.value + b.value
    carries = (sm + sv) ^ sv  # bits that may receive a carry out of the unknown positions
    mu = carries | a.mask | b.mask
    return sv & ~mu, mu


def _tnum_sub(a: Scalar, b: Scalar, bits: int) -> tuple[int, int]:
    m = (1 << bits) - 1
    dv = (a.value - b.value) & m
    alpha = (dv + a.mask) & m
    beta = (dv - b.mask) & m
    mu = (alpha ^ beta) | a.mask | b.mask
    return dv & ~mu, mu


def _tnum_mul(a: Scalar, b: Scalar, bits: int) -> tuple[int, int]:
    """Known bits of a product (the kernel's tnum_mul): the product of the known parts, plus,
    for each bit of ``a`` that is 1 or unknown, ``b`` shifted there as an unknown addend (all of
    it where that bit is unknown, its unknown bits where it is 1). Trailing zeros survive."""
    full = (1 << bits) - 1
    av, am, bv, bm = a.value, a.mask, b.value, b.mask
    known = (av * bv) & full
    uv = um = 0  # the unknown addends summed so far, as a tnum
    while av or am:
        if av & 1 or am & 1:
            add = bm if av & 1 else bv | bm  # an addend whose bits are all unknown: (0, add)
            sm, sv = um + add, uv
            mu = ((sm + sv) ^ sv | um | add) & full
            uv, um = sv & ~mu & full, mu
        av, am, bv, bm = av >> 1, am >> 1, (bv << 1) & full, (bm << 1) & full
    sm, sv = um, known + uv
    mu = ((sm + sv) ^ sv | um) & full
    return sv & ~mu & full, mu


def _tnum_and(a: Scalar, b: Scalar) -> tuple[int, int]:
    v = a.value & b.value
    return v, (a.value | a.mask) & (b.value | b.mask) & ~v


def _tnum_or(a: Scalar, b: Scalar) -> tuple[int, int]:
    v = a.value | b.value
    return v, (a.mask | b.mask) & ~v


def _tnum_xor(a: Scalar, b: Scalar) -> tuple[int, int]:
    mu = a.mask | b.mask
    return (a.value ^ b.value) & ~mu, mu


def make(value: int, mask: int, umin: int, umax: int, smin: int, smax: int, bits: int = 64,
         low32: Scalar | None = None) -> Scalar | None:
    """Normalise a description to its tightest form, or None when it describes no integer.

    The three views constrain each other: known bits bound both ranges, a range that stays on
    one side of the sign boundary is the same set as the other range, and a range fixes a
    prefix of bits. A 64-bit set's ``low32`` (the 32-bit set its low halves lie in) bounds its
    low bits, and the whole value once the upper half is known.
    """
    full = (1 << bits) - 1
    sign = 1 << (bits - 1)
    mod = 1 << bits
    mask &= full
    value &= full & ~mask
    if not mask:  # a constant (a loop counter, a bound): in both ranges, or no integer at all
        s = value - mod if value & sign else value
        return _new(Scalar, (value, 0, value, value, s, s, None)) if umin <= value <= umax and smin <= s <= smax \
            else None
    for _ in range(3):
        # Known bits bound the unsigned range.
        if value > umin:
            umin = value
        if value | mask < umax:
            umax = value | mask
        if umin > umax:
            return None
        if umax < sign:  # every value is non-negative: both ranges describe the same set
            if smin > umin:
                umin = smin
            if smax < umax:
                umax = smax
            if umin > umax:
                return None
            smin, smax = umin, umax
        elif umin >= sign:  # every value is negative when read as signed
            if smin > umin - mod:
                umin = smin + mod
            if smax < umax - mod:
                umax = smax + mod
            if umin > umax:
                return None
            smin, smax = umin - mod, umax - mod
        else:
            # The unsigned range straddles the sign boundary. Known bits bound the signed range;
            # then each range keeps the hull of what it shares with the other's image.
            tlo = value | (mask & sign)
            tlo = tlo - mod if tlo & sign else tlo
            thi = value | (mask & ~sign)
            thi = thi - mod if thi & sign else thi
            if tlo > smin:
                smin = tlo
            if thi < smax:
                smax = thi
            if smin > smax:
                return None
            lo = hi = -1
            if smax >= 0:
                plo, phi = max(smin, 0, umin), min(smax, umax)
                if plo <= phi:
                    lo, hi = plo, phi
            if smin < 0:
                nlo, nhi = max(smin + mod, umin), min(min(smax, -1) + mod, umax)
                if nlo <= nhi:
                    lo = nlo if lo < 0 else lo
                    hi = nhi
            if lo < 0:
                return None
            umin, umax = lo, hi
            slo = shi = None
            if umax >= sign:
                a, b = max(umin, sign) - mod, umax - mod
                a, b = max(a, smin), min(b, smax)
                if a <= b:
                    slo, shi = a, b
            if umin < sign:
                a, b = max(umin, smin), min(umax, sign - 1, smax)
                if a <= b:
                    slo = a if slo is None else slo
                    shi = b
            if slo is None or shi is None:
                return None
            smin, smax = slo, shi
        # The unsigned range fixes a common prefix of bits.
        n = (umin ^ umax).bit_length()
        if n < bits:
            low = (1 << n) - 1
            rv = umin & ~low
            if (rv ^ value) & ~low & ~mask:
                return None
            nm = mask & low
            nv = (value | rv) & ~nm
            if nv == value and nm == mask:
                break
            value, mask = nv, nm
        else:
            break
    if mask == 0:
        s = value - mod if value & sign else value
        return Scalar(value, 0, value, value, s, s)
    if low32 is None or bits != 64:
        return Scalar(value, mask, umin, umax, smin, smax)
    return _with_low32(Scalar(value, mask, umin, umax, smin, smax), low32)


def _with_low32(r: Scalar, low32: Scalar) -> Scalar | None:
    """``r`` (a 64-bit set of unknown bits) whose low halves lie in ``low32`` too."""
    plain = _project(r, 32)
    low = meet(plain, low32, 32)
    if low is None:
        return None
    if low == plain:
        return r
    if r.mask >> 32 == 0:  # the upper half is known: the low half's set is the whole story
        hi = r.value & ~M32
        return make(hi | low.value, low.mask, max(r.umin, hi + low.umin), min(r.umax, hi + low.umax), r.smin,
                    r.smax)
    narrowed = make((r.value & ~M32) | low.value, (r.mask & ~M32) | low.mask, r.umin, r.umax, r.smin, r.smax)
    if narrowed is None:
        return None
    if narrowed.mask >> 32 == 0:  # the low bits fixed the upper half too: fold the low half in
        return _with_low32(narrowed, low)
    r = narrowed
    plain = _project(r, 32)
    low = meet(plain, low, 32)
    if low is None:
        return None
    return r if low == plain else r._replace(low32=low)


def _wrap(lo: int, hi: int, bits: int, signed: bool) -> tuple[int, int]:
    """The interval of exact results [lo, hi] after wrapping to ``bits`` bits (full range if it wraps)."""
    mod = 1 << bits
    if signed:
        half = mod >> 1
        if hi - lo < mod and (lo + half) >> bits == (hi + half) >> bits:
            return to_signed(lo, bits), to_signed(hi, bits)
        return -half, half - 1
    if hi - lo < mod and lo >> bits == hi >> bits:
        return lo & (mod - 1), hi & (mod - 1)
    return 0, mod - 1


def project(a: Scalar, bits: int) -> Scalar:
    """The low ``bits`` bits of every member of the 64-bit set ``a`` (as a ``bits``-bit set)."""
    if bits == 64:
        return a
    p = _project(a, bits)
    if a.low32 is None or bits > 32:
        return p  # (wider than the low half: its set says nothing of the bits above it)
    low = project(a.low32, bits) if bits < 32 else a.low32
    m = meet(p, low, bits)
    return p if m is None else m


def _project(a: Scalar, bits: int) -> Scalar:
    """``project`` from the 64-bit fields only."""
    m = (1 << bits) - 1
    if a.mask == 0:
        return const(a.value, bits)
    ulo, uhi = _wrap(a.umin, a.umax, bits, False)
    slo, shi = _wrap(a.smin, a.smax, bits, True)
    s = make(a.value & m, a.mask & m, ulo, uhi, slo, shi, bits)
    return s if s is not None else unknown(bits)


def zero_extend(a: Scalar) -> Scalar:
    """A narrower set read as 64-bit values with the upper bits zero."""
    return Scalar(a.value, a.mask, a.umin, a.umax, a.umin, a.umax)


def sign_extend(a: Scalar, bits: int) -> Scalar:
    """A ``bits``-bit set read as signed and extended to 64 bits."""
    sign = 1 << (bits - 1)
    if a.mask & sign:
        value, mask = a.value, a.mask | (M64 & ~((1 << bits) - 1))
    elif a.value & sign:
        value, mask = a.value | (M64 & ~((1 << bits) - 1)), a.mask
    else:
        value, mask = a.value, a.mask
    s = make(value, mask, 0, M64, a.smin, a.smax, low32=a if bits == 32 else None)
    assert s is not None
    return s


def exact(op: int, a: int, b: int, bits: int, signed: bool) -> int:
    """The result of one ALU operation on constants (unsigned operands, RFC 9669 semantics): the
    opcode table's own expression, so that the verifier folds constants as the engines compute."""
    if op == AluOp.NEG:
        return -a
    return alu_function(op, bits, signed and op in (AluOp.DIV, AluOp.MOD))(a, b)


# Operations whose result's low 32 bits depend on the operands' low 32 bits only.
_LOW_HALF_OPS = frozenset({AluOp.ADD, AluOp.SUB, AluOp.MUL, AluOp.AND, AluOp.OR, AluOp.XOR, AluOp.NEG})
SHIFTS = frozenset({AluOp.LSH, AluOp.RSH, AluOp.ARSH})  # their counts are taken modulo the width


def alu(op: int, a: Scalar, b: Scalar, bits: int, signed: bool = False) -> Scalar:
    """The set of results of ``a OP b`` computed at ``bits`` bits (operands already projected)."""
    full = (1 << bits) - 1
    if op in SHIFTS and b.umax >= bits:
        return unknown(bits)  # a count that may reach the width: the kernel knows nothing of the result
    if a.mask == 0 and b.mask == 0:
        return const(exact(op, a.value, b.value, bits, signed), bits)
    top = UNKNOWN if bits == 64 else unknown(bits)
    value, mask = 0, full
    umin, umax, smin, smax = top.umin, top.umax, top.smin, top.smax
    match op:
        case AluOp.MOV:
            return b
        case AluOp.ADD:
            value, mask = _tnum_add(a, b)
            umin, umax = _wrap(a.umin + b.umin, a.umax + b.umax, bits, False)
            smin, smax = _wrap(a.smin + b.smin, a.smax + b.smax, bits, True)
        case AluOp.SUB | AluOp.NEG:
            if op == AluOp.NEG:
                a, b = const(0, bits), a
            value, mask = _tnum_sub(a, b, bits)
            umin, umax = _wrap(a.umin - b.umax, a.umax - b.umin, bits, False)
            smin, smax = _wrap(a.smin - b.smax, a.smax - b.smin, bits, True)
        case AluOp.MUL:
            if b.mask == 0 and b.value and b.value & (b.value - 1) == 0:
                return alu(AluOp.LSH, a, const(b.value.bit_length() - 1, bits), bits)
            value, mask = _tnum_mul(a, b, bits)
            umin, umax = _wrap(a.umin * b.umin, a.umax * b.umax, bits, False)
            corners = (a.smin * b.smin, a.smin * b.smax, a.smax * b.smin, a.smax * b.smax)
            smin, smax = _wrap(min(corners), max(corners), bits, True)
        case AluOp.DIV:
            if not signed:
                umin, umax = (a.umin // b.umax, a.umax // b.umin) if b.umin else (0, a.umax)
        case AluOp.MOD:
            if not signed:
                if b.umin and a.umax < b.umin:
                    return a  # the divisor always exceeds the dividend
                umax = min(a.umax, b.umax - 1) if b.umin else a.umax
                umin = 0
        case AluOp.AND:
            value, mask = _tnum_and(a, b)
            umin, umax = 0, min(a.umax, b.umax)
            if a.smin >= 0 or b.smin >= 0:
                smin = 0
                smax = min(x.smax for x in (a, b) if x.smin >= 0)
        case AluOp.OR:
            value, mask = _tnum_or(a, b)
            umin = max(a.umin, b.umin)
        case AluOp.XOR:
            value, mask = _tnum_xor(a, b)
        case AluOp.LSH:
            if b.mask == 0:
                k = b.value & (bits - 1)
                value, mask = (a.value << k) & full, (a.mask << k) & full
                if a.umax << k <= full:
                    umin, umax = a.umin << k, a.umax << k
                if k:
                    # Read as signed, x << k is the low (bits - k) bits of x read as signed, times
                    # 2**k: what keeps `<< 32; s>> 32` (a sign extension) bounded.
                    kept = project(a, bits - k) if bits == 64 else _project(a, bits - k)
                    smin, smax = kept.smin << k, kept.smax << k
            elif b.umax < bits and a.umax << b.umax <= full:
                # A bounded count (two paths with different constant counts met at a join): every
                # count in range keeps the value's bits, so the bounds are those of the extremes.
                umin, umax = a.umin << b.umin, a.umax << b.umax
                mask = 0
                for k in range(b.umin, b.umax + 1):
                    mask |= a.mask << k | (a.value << k ^ a.value << b.umin)
                mask &= full
                value = (a.value << b.umin) & ~mask & full
        case AluOp.RSH:
            if b.mask == 0:
                k = b.value & (bits - 1)
                value, mask = a.value >> k, a.mask >> k
                umin, umax = a.umin >> k, a.umax >> k
            elif b.umax < bits:
                umin, umax = a.umin >> b.umax, a.umax >> b.umin
            else:
                umax = a.umax
        case AluOp.ARSH:
            if b.mask == 0:
                k = b.value & (bits - 1)
                value = to_signed(a.value, bits) >> k & full
                mask = to_signed(a.mask, bits) >> k & full
                smin, smax = a.smin >> k, a.smax >> k
            elif b.umax < bits:
                lo, hi = b.umin, b.umax
                smin, smax = min(a.smin >> lo, a.smin >> hi), max(a.smax >> lo, a.smax >> hi)
        case _:
            raise InternalError(f"ALU operation {op:#x}")
    low: Scalar | None = None
    if bits == 64 and (a.low32 or b.low32) and op in _LOW_HALF_OPS:
        # The low halves' own result (a NEG's operands were swapped into 0 - a above).
        low = alu(AluOp.SUB if op == AluOp.NEG else op, project(a, 32), project(b, 32), 32, signed)
    s = make(value, mask, umin, umax, smin, smax, bits, low)
    return s if s is not None else top


def alu_width(op: int, a: Scalar, b: Scalar, width: int, signed: bool = False) -> Scalar:
    """An ALU instruction of ``width`` bits on 64-bit register values: a 32-bit operation works on
    the low halves and zero-extends its result."""
    if width == 64:
        return alu(op, a, b, 64, signed)
    return zero_extend(alu(op, project(a, 32), project(b, 32), 32, signed))


def swap_bytes(a: Scalar, bits: int) -> Scalar:
    """Byte-reverse the low ``bits`` bits (the result is zero-extended)."""
    n = bits // 8
    m = (1 << bits) - 1
    value = int.from_bytes((a.value & m).to_bytes(n, "little"), "big")
    mask = int.from_bytes((a.mask & m).to_bytes(n, "little"), "big")
    s = make(value, mask, 0, m, -(1 << 63), (1 << 63) - 1)
    assert s is not None
    return s


# -- set relations ---------------------------------------------------------------------------------

def within(new: Scalar, old: Scalar) -> bool:
    """Whether every member of ``new`` belongs to ``old``."""
    if new is old or new == old:
        return True
    return (
        old.umin <= new.umin
        and new.umax <= old.umax
        and old.smin <= new.smin
        and new.smax <= old.smax
        and new.mask & ~old.mask == 0
        and new.value & ~old.mask == old.value
        and (old.low32 is None or within(project(new, 32), old.low32))
    )


def join(a: Scalar, b: Scalar, bits: int = 64) -> Scalar:
    """The smallest set of this domain holding both ``a`` and ``b`` (``bits``-bit sets)."""
    if a == b:
        return a
    mu = a.mask | b.mask | (a.value ^ b.value)
    low = join(project(a, 32), project(b, 32), 32) if bits == 64 and (a.low32 or b.low32) else None
    s = make(a.value & ~mu, mu, min(a.umin, b.umin), max(a.umax, b.umax), min(a.smin, b.smin),
             max(a.smax, b.smax), bits, low)
    assert s is not None
    return s


def meet(a: Scalar, b: Scalar, bits: int = 64) -> Scalar | None:
    """The members common to ``a`` and ``b`` (None when there are none), both ``bits``-bit sets:
    the width decides which values are negative, so it must be the operands' own."""
    if (a.value ^ b.value) & ~a.mask & ~b.mask:
        return None
    mu = a.mask & b.mask
    low = None
    if bits == 64 and (a.low32 or b.low32):
        low = meet(project(a, 32), project(b, 32), 32)
        if low is None:
            return None
    return make((a.value | b.value) & ~mu, mu, max(a.umin, b.umin), min(a.umax, b.umax),
                max(a.smin, b.smin), min(a.smax, b.smax), bits, low)


# -- branch refinement -----------------------------------------------------------------------------

Pair = tuple[Scalar, Scalar] | None  # refined (dst, src), or None when the outcome is impossible


def _bounded(a: Scalar, *, umin: int | None = None, umax: int | None = None, smin: int | None = None,
             smax: int | None = None, bits: int = 64) -> Scalar | None:
    lo = a.umin if umin is None or umin <= a.umin else umin
    hi = a.umax if umax is None or umax >= a.umax else umax
    slo = a.smin if smin is None or smin <= a.smin else smin
    shi = a.smax if smax is None or smax >= a.smax else smax
    if lo == a.umin and hi == a.umax and slo == a.smin and shi == a.smax:
        return a  # nothing narrower (a is in its tightest form already)
    return make(a.value, a.mask, lo, hi, slo, shi, bits, a.low32)


def _lt(a: Scalar, b: Scalar, strict: bool, signed: bool, bits: int) -> Pair:
    """Refine ``a < b`` (or ``a <= b``)."""
    d = 1 if strict else 0
    if signed:
        ra = _bounded(a, smax=b.smax - d, bits=bits)
        rb = _bounded(b, smin=a.smin + d, bits=bits)
    else:
        ra = _bounded(a, umax=b.umax - d, bits=bits)
        rb = _bounded(b, umin=a.umin + d, bits=bits)
    if ra is None or rb is None:
        return None
    return ra, rb


def _ne(a: Scalar, b: Scalar, bits: int) -> Pair:
    """Refine ``a != b``: only a constant on one side can shave an end off the other."""
    if a.mask == 0 and b.mask == 0:
        return None if a.value == b.value else (a, b)
    ra: Scalar | None = a
    rb: Scalar | None = b
    if b.mask == 0:
        ra = _shave(a, b, bits)
    elif a.mask == 0:
        rb = _shave(b, a, bits)
    if ra is None or rb is None:
        return None
    return ra, rb


def _shave(a: Scalar, c: Scalar, bits: int) -> Scalar | None:
    umin, umax, smin, smax = a.umin, a.umax, a.smin, a.smax
    if umin == c.value:
        umin += 1
    if umax == c.value:
        umax -= 1
    if smin == c.smin:
        smin += 1
    if smax == c.smin:
        smax -= 1
    return make(a.value, a.mask, umin, umax, smin, smax, bits, a.low32)


def _set(a: Scalar, b: Scalar, bits: int) -> Pair:
    """Refine ``a & b != 0``."""
    if (a.value | a.mask) & (b.value | b.mask) == 0:
        return None
    if b.mask == 0 and b.value and b.value & (b.value - 1) == 0:
        ra = make(a.value | b.value, a.mask & ~b.value, a.umin, a.umax, a.smin, a.smax, bits, a.low32)
        return None if ra is None else (ra, b)
    return a, b


def _clear(a: Scalar, b: Scalar, bits: int) -> Pair:
    """Refine ``a & b == 0``."""
    if a.value & b.value:
        return None
    if b.mask == 0:
        ra = make(a.value & ~b.value, a.mask & ~b.value, a.umin, a.umax, a.smin, a.smax, bits, a.low32)
        return None if ra is None else (ra, b)
    if a.mask == 0:
        rb = make(b.value & ~a.value, b.mask & ~a.value, b.umin, b.umax, b.smin, b.smax, bits, b.low32)
        return None if rb is None else (a, rb)
    return a, b


def _swap(p: Pair) -> Pair:
    return None if p is None else (p[1], p[0])


def _decided(op: int, a: Scalar, b: Scalar, bits: int) -> tuple[Pair, Pair]:
    """``refine`` of two constants (a loop counter against its bound): one outcome, nothing narrowed."""
    m = (1 << bits) - 1
    pair = (a, b)
    return (pair, None) if jump_function(op, bits)(a.value & m, b.value & m) else (None, pair)


def refine(op: int, a: Scalar, b: Scalar, bits: int = 64) -> tuple[Pair, Pair]:
    """The operands narrowed by the outcome of ``if a OP b``: (when taken, when not taken)."""
    if a.mask == 0 and b.mask == 0:
        return _decided(op, a, b, bits)
    match op:
        case JmpOp.JEQ | JmpOp.JNE:
            m = meet(a, b, bits)
            eq: Pair = None if m is None else (m, m)
            ne = _ne(a, b, bits)
            return (eq, ne) if op == JmpOp.JEQ else (ne, eq)
        case JmpOp.JGT:
            return _swap(_lt(b, a, True, False, bits)), _lt(a, b, False, False, bits)
        case JmpOp.JGE:
            return _swap(_lt(b, a, False, False, bits)), _lt(a, b, True, False, bits)
        case JmpOp.JLT:
            return _lt(a, b, True, False, bits), _swap(_lt(b, a, False, False, bits))
        case JmpOp.JLE:
            return _lt(a, b, False, False, bits), _swap(_lt(b, a, True, False, bits))
        case JmpOp.JSGT:
            return _swap(_lt(b, a, True, True, bits)), _lt(a, b, False, True, bits)
        case JmpOp.JSGE:
            return _swap(_lt(b, a, False, True, bits)), _lt(a, b, True, True, bits)
        case JmpOp.JSLT:
            return _lt(a, b, True, True, bits), _swap(_lt(b, a, False, True, bits))
        case JmpOp.JSLE:
            return _lt(a, b, False, True, bits), _swap(_lt(b, a, True, True, bits))
        case JmpOp.JSET:
            return _set(a, b, bits), _clear(a, b, bits)
        case _:
            raise InternalError(f"jump operation {op:#x}")


def refine32(op: int, a: Scalar, b: Scalar) -> tuple[Pair, Pair]:
    """As ``refine`` for a 32-bit comparison of 64-bit values: the low halves decide; the upper
    halves are untouched, so ranges only carry over when a value fits in 32 bits."""
    if a.mask == 0 and b.mask == 0:
        return _decided(op, a, b, 32)
    a32, b32 = project(a, 32), project(b, 32)
    taken, fall = refine(op, a32, b32, 32)
    return _lift(taken, a, b), _lift(fall, a, b)


def _lift(p: Pair, a: Scalar, b: Scalar) -> Pair:
    if p is None:
        return None
    ra, rb = _lift_one(p[0], a), _lift_one(p[1], b)
    if ra is None or rb is None:
        return None
    return ra, rb


def _lift_one(low: Scalar, full: Scalar) -> Scalar | None:
    value = (full.value & ~M32) | low.value
    mask = (full.mask & ~M32) | low.mask
    return make(value, mask, full.umin, full.umax, full.smin, full.smax, low32=low)
