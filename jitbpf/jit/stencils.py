"""Instruction stencils: the machine code of a class of eBPF instructions, learnt from the target's
own emitter, with holes for the immediate and the offset (one level above the x86 templates of
``encoding``: these hold the whole code of one eBPF instruction, often several x86 instructions).

A target sorts each instruction into a class: the instructions its emitter turns into the same
code up to the bytes of ``imm`` and ``off``. The first instruction of a class is emitted normally,
then twice more with two probe values of the class in each varied operand; where the probes'
bytes differ are the holes, and a stencil is kept only when the three emissions agree everywhere
else and the stencil patched with the real operands gives back the real code byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from dataclasses import dataclass

from jitbpf.isa import Instruction, OpInfo

_PACKERS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}


@dataclass(frozen=True, slots=True, eq=False)
class Probe:
    """How one operand (imm or off) appears in the code of a class: a field of ``width`` bytes
    holding the operand's low bytes, or nowhere (``width`` 0: the class's code never depends on
    it). ``a`` and ``b`` are two values of the class, different in every byte of the field.
    Compared by identity: in a class key, each probe object stands for its class."""

    width: int  # bytes of the field; 0 when the operand is not in the code
    a: int  # first probe value
    b: int  # second probe value


@dataclass(frozen=True, slots=True)
class Stencil:
    """The code of one instruction class, like a relocatable object: bytes, the holes of imm and
    off (offset -1 when there is none), and the rel32 field of a branch to the instruction's
    target (-1 when it has none)."""

    code: bytes  # the code with probe values in the holes
    imm_at: int  # offset of the imm field, or -1
    imm_pack: struct.Struct  # its packer (unsigned, of its width)
    imm_mask: int  # the operand is truncated to the field
    off_at: int  # offset of the off field, or -1
    off_pack: struct.Struct
    off_mask: int
    branch: int  # offset of the branch's rel32 field, or -1

    def instantiate(self, imm: int, off: int) -> bytearray:
        """The stencil's code for these operands (what the compile loop does inline)."""
        out = bytearray(self.code)
        if self.imm_at >= 0:
            self.imm_pack.pack_into(out, self.imm_at, imm & self.imm_mask)
        if self.off_at >= 0:
            self.off_pack.pack_into(out, self.off_at, off & self.off_mask)
        return out


UNSEEN = Stencil(b"", -1, _PACKERS[1], 0, -1, _PACKERS[1], 0, -1)
"""What a stencil cache's ``get`` returns for a class not met before (never patched into code)."""

StencilKey = tuple[Hashable, ...]
"""A target's class of an instruction: a tuple that starts with its opcode, opcode-table variant,
dst and src, ends with its imm and off (each the exact value, or the Probe of how the class's
code holds it) and holds, in between, whatever else its emitter's code depends on."""


def key_probes(key: StencilKey, insn: Instruction, info: OpInfo) -> tuple[Probe | None, Probe | None]:
    """The probes of imm and off in ``key`` (None for an exact value), checking that the key
    follows the convention for ``insn``."""
    imm, off = key[-2], key[-1]
    if (key[:4] != (insn.opcode, info.variant, insn.dst, insn.src) or len(key) < 6
            or not (isinstance(imm, Probe) or imm == insn.imm) or not (isinstance(off, Probe) or off == insn.off)):
        raise ValueError(f"stencil class {key!r} does not describe {insn}")
    return (imm if isinstance(imm, Probe) else None), (off if isinstance(off, Probe) else None)


def _hole(probe: Probe | None, a: bytes, b: bytes) -> tuple[int, struct.Struct, int] | None:
    """Where ``probe``'s field lies in the probes' code (offset, packer, mask); None when it has no
    field; raises LookupError when it cannot be found exactly once."""
    if probe is None or not probe.width:
        return None
    packer = _PACKERS[probe.width]
    mask = (1 << 8 * probe.width) - 1
    pa = packer.pack(probe.a & mask)
    at = a.find(pa)
    if at < 0 or a.find(pa, at + 1) >= 0 or b[at : at + probe.width] != packer.pack(probe.b & mask):
        raise LookupError("field not found exactly once")
    return at, packer, mask


def derive(real: bytes, a: bytes, b: bytes, branches: tuple[int, int, int], imm: Probe | None,
           off: Probe | None, operands: tuple[int, int]) -> Stencil | None:
    """The stencil of a class from its three emissions: ``real`` (of the instruction with
    ``operands`` = (imm, off)), ``a`` and ``b`` (of its probes), with the offset of their branch
    field in ``branches`` (-1 without one). None when they do not make one."""
    if not len(real) == len(a) == len(b) or len(set(branches)) != 1:
        return None
    try:
        imm_hole, off_hole = _hole(imm, a, b), _hole(off, a, b)
    except LookupError:
        return None
    covered: set[int] = set()
    for hole, probe in ((imm_hole, imm), (off_hole, off)):
        if hole is not None and probe is not None:
            span = set(range(hole[0], hole[0] + probe.width))
            if covered & span:
                return None
            covered |= span
    if branches[0] >= 0 and covered & set(range(branches[0], branches[0] + 4)):
        return None
    if any(x != y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i not in covered):
        return None
    none = (-1, _PACKERS[1], 0)
    ih, oh = imm_hole or none, off_hole or none
    stencil = Stencil(a, ih[0], ih[1], ih[2], oh[0], oh[1], oh[2], branches[0])
    return stencil if stencil.instantiate(*operands) == real else None
