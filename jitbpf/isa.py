"""The eBPF instruction set (RFC 9669, ISA v1-v4): field enums, the instruction model and the
one opcode table that the assembler, disassembler, interpreter, verifier and JIT derive from."""

from __future__ import annotations

import array
import enum
import functools
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from jitbpf.errors import DecodeError

SLOT = struct.Struct("<BBhi")  # opcode, dst:4|src:4, off (signed), imm (signed)
SLOT_SIZE = 8
NUM_REGS = 11  # r0..r10
FP = 10  # r10, the read-only frame pointer
STACK_SIZE = 512  # bytes of stack per frame
MASK32 = 0xFFFF_FFFF
CORE_POISON = 0xBAD2310  # helper id of an instruction whose CO-RE relocation failed (libbpf's mark)
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# Legacy packet loads (LD_ABS/LD_IND) at negative offsets, as Linux's filter.h defines them: from
# SKF_NET_OFF on they count from the network header, from SKF_LL_OFF on from the link-layer one.
SKF_NET_OFF = -0x100000
SKF_LL_OFF = -0x200000


class InsnClass(enum.IntEnum):
    """Instruction class: the low three bits of the opcode."""

    LD = 0x00  # non-standard loads: lddw and the legacy packet loads
    LDX = 0x01  # load into register from memory
    ST = 0x02  # store immediate to memory
    STX = 0x03  # store register to memory (and atomics)
    ALU = 0x04  # 32-bit arithmetic
    JMP = 0x05  # 64-bit jumps, calls, exit
    JMP32 = 0x06  # 32-bit jumps
    ALU64 = 0x07  # 64-bit arithmetic


class Source(enum.IntEnum):
    """Operand source bit of ALU and JMP opcodes."""

    K = 0x00  # use the 32-bit immediate
    X = 0x08  # use the source register


class AluOp(enum.IntEnum):
    """Arithmetic operation code (high four bits of ALU/ALU64 opcodes)."""

    ADD = 0x00  # dst += src
    SUB = 0x10  # dst -= src
    MUL = 0x20  # dst *= src
    DIV = 0x30  # dst /= src (off=1: signed)
    OR = 0x40  # dst |= src
    AND = 0x50  # dst &= src
    LSH = 0x60  # dst <<= src
    RSH = 0x70  # dst >>= src, logical
    NEG = 0x80  # dst = -dst
    MOD = 0x90  # dst %= src (off=1: signed)
    XOR = 0xA0  # dst ^= src
    MOV = 0xB0  # dst = src (off=8/16/32: sign-extending move)
    ARSH = 0xC0  # dst >>= src, arithmetic
    END = 0xD0  # byte-order conversion


class JmpOp(enum.IntEnum):
    """Jump operation code (high four bits of JMP/JMP32 opcodes)."""

    JA = 0x00  # unconditional jump
    JEQ = 0x10  # ==
    JGT = 0x20  # > unsigned
    JGE = 0x30  # >= unsigned
    JSET = 0x40  # dst & src != 0
    JNE = 0x50  # !=
    JSGT = 0x60  # > signed
    JSGE = 0x70  # >= signed
    CALL = 0x80  # call helper, local function or kfunc
    EXIT = 0x90  # return
    JLT = 0xA0  # < unsigned
    JLE = 0xB0  # <= unsigned
    JSLT = 0xC0  # < signed
    JSLE = 0xD0  # <= signed
    JCOND = 0xE0  # pseudo condition (src=0: may_goto, taken when the run's loop allowance is spent)


class Mode(enum.IntEnum):
    """Addressing mode of load and store opcodes."""

    IMM = 0x00  # 64-bit immediate (lddw)
    ABS = 0x20  # legacy packet load, absolute offset
    IND = 0x40  # legacy packet load, register-relative offset
    MEM = 0x60  # regular load or store
    MEMSX = 0x80  # sign-extending load (v4)
    ATOMIC = 0xC0  # atomic read-modify-write


class Size(enum.IntEnum):
    """Access size of load and store opcodes."""

    W = 0x00  # 4 bytes
    H = 0x08  # 2 bytes
    B = 0x10  # 1 byte
    DW = 0x18  # 8 bytes


SIZE_BYTES = {Size.W: 4, Size.H: 2, Size.B: 1, Size.DW: 8}


class AtomicOp(enum.IntEnum):
    """Atomic operation, in the imm field of ATOMIC instructions."""

    ADD = 0x00  # *p += src
    OR = 0x40  # *p |= src
    AND = 0x50  # *p &= src
    XOR = 0xA0  # *p ^= src
    XCHG = 0xE0 | 0x01  # src = xchg(*p, src)
    CMPXCHG = 0xF0 | 0x01  # r0 = cmpxchg(*p, r0, src)


ATOMIC_FETCH = 0x01  # flag ORed into AtomicOp: the old value is returned in src


class PseudoSrc(enum.IntEnum):
    """Meaning of the src field of lddw (the kernel's BPF_PSEUDO_* values)."""

    IMM64 = 0  # plain 64-bit constant
    MAP_FD = 1  # imm = map handle; dst = address of the map
    MAP_VALUE = 2  # imm = map handle, next imm = offset; dst = address in the map's value
    BTF_ID = 3  # imm = BTF id of a kernel variable
    FUNC = 4  # imm = relative offset of a local function; dst = its address
    MAP_IDX = 5  # imm = index into the program's map table
    MAP_IDX_VALUE = 6  # as MAP_VALUE, with a map index


class CallSrc(enum.IntEnum):
    """Meaning of the src field of a call instruction."""

    HELPER = 0  # imm = helper id
    LOCAL = 1  # imm = offset of a local function (pc + 1 + imm)
    KFUNC = 2  # imm = BTF id of a kernel function ("call runtime")


class Kind(enum.Enum):
    """What an instruction does, at the granularity the engines dispatch on."""

    ALU = "alu"  # dst = dst OP src (binary arithmetic, incl. mov)
    NEG = "neg"  # dst = -dst
    MOVSX = "movsx"  # dst = sign-extended low bits of src
    END = "end"  # le/be conversion (to-little-endian truncates on a little-endian host)
    BSWAP = "bswap"  # unconditional byte swap (v4)
    LDDW = "lddw"  # dst = 64-bit immediate, two slots
    LDX = "ldx"  # dst = *(size *)(src + off)
    LDXSX = "ldxsx"  # dst = *(signed size *)(src + off), sign-extended
    ST = "st"  # *(size *)(dst + off) = imm
    STX = "stx"  # *(size *)(dst + off) = src
    ATOMIC = "atomic"  # atomic read-modify-write on *(size *)(dst + off)
    JA = "ja"  # unconditional jump
    JCOND = "jcond"  # conditional jump
    MAY_GOTO = "may_goto"  # jump taken once the run's loop allowance (contract.MAY_GOTO_BUDGET) is spent
    CALL = "call"  # helper call by id
    CALL_LOCAL = "call_local"  # bpf-to-bpf call
    CALL_KFUNC = "call_kfunc"  # kernel function call (decoded, not executable here)
    CALLX = "callx"  # helper call by id held in a register
    EXIT = "exit"  # return from function / end of program
    LD_ABS = "ld_abs"  # legacy packet load, absolute offset
    LD_IND = "ld_ind"  # legacy packet load, offset from a register

    # Members are singletons compared by identity, so the identity hash is consistent and, being
    # native, keeps the engines' per-instruction dispatch tables off Enum's Python-level hash.
    __hash__ = object.__hash__


class Field(enum.Flag):
    """Instruction fields an opcode uses (the others must be zero)."""

    NONE = 0
    DST = enum.auto()  # destination register
    SRC = enum.auto()  # source register
    OFF = enum.auto()  # 16-bit offset
    IMM = enum.auto()  # 32-bit immediate


@dataclass(frozen=True, slots=True)
class OpInfo:
    """One row of the opcode table: everything an engine needs to know about an opcode variant.

    ``variant`` disambiguates opcodes shared by several operations: it is matched against
    ``off`` (sdiv/smod, movsx), ``imm`` (le/be/bswap width, atomic op) or ``src`` (call, lddw),
    as ``variant_field`` says.
    """

    opcode: int  # the full 8-bit opcode
    mnemonic: str  # rbpf/uBPF assembler mnemonic
    kind: Kind  # how engines dispatch on it
    op: int = 0  # AluOp / JmpOp / AtomicOp value (or width in bits for END/BSWAP)
    is64: bool = True  # 64-bit operation (ALU64/JMP) vs 32-bit (ALU/JMP32)
    size: int = 0  # memory access size in bytes
    reg_src: bool = False  # source operand is a register (Source.X)
    signed: bool = False  # signed variant (sdiv/smod, signed compares)
    variant_field: str = ""  # "", "off", "imm" or "src"
    variant: int = 0  # value the variant field must hold
    fields: Field = Field.NONE  # fields the instruction may use
    version: int = 1  # ISA version that introduced it
    py: str = ""  # Python expression of the result for ALU/JCOND (a = dst, b = src)
    cc: str = ""  # x86 condition code suffix for JCOND ("e", "a", "ge", ...)
    width: int = field(default=64)  # operand width in bits (32 or 64)


# Python semantics of binary ALU ops over unsigned operands a, b truncated to the op width.
# {sx} sign-extends from the width, {sh} is the shift mask; the caller masks the result.
_ALU_PY = {
    AluOp.ADD: "a + b",
    AluOp.SUB: "a - b",
    AluOp.MUL: "a * b",
    AluOp.DIV: "(a // b if b else 0)",
    AluOp.OR: "a | b",
    AluOp.AND: "a & b",
    AluOp.LSH: "a << (b & {sh})",
    AluOp.RSH: "a >> (b & {sh})",
    AluOp.MOD: "(a % b if b else a)",
    AluOp.XOR: "a ^ b",
    AluOp.MOV: "b",
    AluOp.ARSH: "{sx}(a) >> (b & {sh})",
}
_SIGNED_ALU_PY = {
    AluOp.DIV: "sdiv({sx}(a), {sx}(b))",
    AluOp.MOD: "smod({sx}(a), {sx}(b))",
}
# Jump conditions: Python predicate over a, b and the x86 condition code after `cmp dst, src`.
_JMP_COND = {
    JmpOp.JEQ: ("a == b", "e", False),
    JmpOp.JGT: ("a > b", "a", False),
    JmpOp.JGE: ("a >= b", "ae", False),
    JmpOp.JSET: ("a & b", "nz", False),
    JmpOp.JNE: ("a != b", "ne", False),
    JmpOp.JSGT: ("{sx}(a) > {sx}(b)", "g", True),
    JmpOp.JSGE: ("{sx}(a) >= {sx}(b)", "ge", True),
    JmpOp.JLT: ("a < b", "b", False),
    JmpOp.JLE: ("a <= b", "be", False),
    JmpOp.JSLT: ("{sx}(a) < {sx}(b)", "l", True),
    JmpOp.JSLE: ("{sx}(a) <= {sx}(b)", "le", True),
}
_V2_JUMPS = {JmpOp.JLT, JmpOp.JLE, JmpOp.JSLT, JmpOp.JSLE}
SIZE_SUFFIX = {Size.B: "b", Size.H: "h", Size.W: "w", Size.DW: "dw"}  # the mnemonics' size suffix
_ATOMIC_NAMES = {
    AtomicOp.ADD: "add",
    AtomicOp.OR: "or",
    AtomicOp.AND: "and",
    AtomicOp.XOR: "xor",
}


def _render(template: str, width: int) -> str:
    return template.format(sx=f"sx{width}", sh=width - 1)


def sdiv(a: int, b: int) -> int:
    """Signed division as RFC 9669 defines it: truncates toward zero, x / 0 = 0."""
    if b == 0:
        return 0
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def smod(a: int, b: int) -> int:
    """Signed remainder: takes the dividend's sign, x % 0 = x."""
    if b == 0:
        return a
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def bswap(value: int, bits: int) -> int:
    """The low ``bits`` bits of ``value`` with their bytes reversed."""
    n = bits // 8
    return int.from_bytes((value & ((1 << bits) - 1)).to_bytes(n, "little"), "big")


# What the opcode table's Python expressions (``OpInfo.py``) refer to.
PY_NAMESPACE: Final[Mapping[str, Any]] = MappingProxyType({
    "sx8": lambda x: sign_extend(x, 8),
    "sx16": lambda x: sign_extend(x, 16),
    "sx32": lambda x: sign_extend(x, 32),
    "sx64": lambda x: sign_extend(x, 64),
    "sdiv": sdiv,
    "smod": smod,
    "bswap": bswap,
    "M32": MASK32,
    "M64": MASK64,
})


@functools.cache
def alu_function(op: int, width: int, signed: bool = False) -> Callable[[int, int], int]:
    """A binary ALU operation as a function of unsigned ``width``-bit operands (result not masked),
    from the same expression the opcode table gives the engines."""
    template = _SIGNED_ALU_PY[AluOp(op)] if signed else _ALU_PY[AluOp(op)]
    fn: Callable[[int, int], int] = eval(f"lambda a, b: {_render(template, width)}", dict(PY_NAMESPACE))
    return fn


@functools.cache
def jump_function(op: int, width: int) -> Callable[[int, int], bool]:
    """A jump condition as a predicate over unsigned ``width``-bit operands, from the same
    expression the opcode table gives the engines."""
    template = _JMP_COND[JmpOp(op)][0]
    fn: Callable[[int, int], bool] = eval(f"lambda a, b: bool({_render(template, width)})", dict(PY_NAMESPACE))
    return fn


def _build_table() -> tuple[OpInfo, ...]:
    rows: list[OpInfo] = []
    d, s, o, i = Field.DST, Field.SRC, Field.OFF, Field.IMM
    for cls, width, suffix in ((InsnClass.ALU64, 64, ""), (InsnClass.ALU, 32, "32")):
        is64 = width == 64
        for aop in AluOp:
            if aop is AluOp.END:
                continue
            name = aop.name.lower()
            if aop is AluOp.NEG:
                rows.append(OpInfo(cls | aop, f"neg{suffix}", Kind.NEG, aop, is64, fields=d, width=width))
                continue
            for src in Source:
                reg = src is Source.X
                opcode = cls | src | aop
                flds = d | (s if reg else i)
                py = _render(_ALU_PY[aop], width)
                signed_variant = aop in _SIGNED_ALU_PY
                rows.append(
                    OpInfo(opcode, f"{name}{suffix}", Kind.ALU, aop, is64, reg_src=reg,
                           variant_field="off" if signed_variant or (aop is AluOp.MOV and reg) else "",
                           fields=flds, py=py, width=width)
                )
                if signed_variant:
                    rows.append(
                        OpInfo(opcode, f"s{name}{suffix}", Kind.ALU, aop, is64, reg_src=reg, signed=True,
                               variant_field="off", variant=1, fields=flds | o, version=4,
                               py=_render(_SIGNED_ALU_PY[aop], width), width=width)
                    )
        for bits in (8, 16, 32) if is64 else (8, 16):
            rows.append(
                OpInfo(cls | Source.X | AluOp.MOV, f"movsx{bits}{width}", Kind.MOVSX, bits, is64,
                       reg_src=True, signed=True, variant_field="off", variant=bits, fields=d | s | o,
                       version=4, width=width)
            )
    for bits in (16, 32, 64):
        rows.append(OpInfo(InsnClass.ALU | Source.K | AluOp.END, f"le{bits}", Kind.END, bits, False,
                           variant_field="imm", variant=bits, fields=d | i, width=bits))
        rows.append(OpInfo(InsnClass.ALU | Source.X | AluOp.END, f"be{bits}", Kind.END, bits, False,
                           reg_src=True, variant_field="imm", variant=bits, fields=d | i, width=bits))
        rows.append(OpInfo(InsnClass.ALU64 | Source.K | AluOp.END, f"bswap{bits}", Kind.BSWAP, bits, True,
                           variant_field="imm", variant=bits, fields=d | i, version=4, width=bits))
    rows.append(OpInfo(InsnClass.LD | Mode.IMM | Size.DW, "lddw", Kind.LDDW, fields=d | s | i))
    for size in Size:
        nbytes = SIZE_BYTES[size]
        sfx = SIZE_SUFFIX[size]
        rows.append(OpInfo(InsnClass.LDX | Mode.MEM | size, f"ldx{sfx}", Kind.LDX, size=nbytes, fields=d | s | o))
        if size is not Size.DW:
            rows.append(OpInfo(InsnClass.LDX | Mode.MEMSX | size, f"ldxs{sfx}", Kind.LDXSX, size=nbytes,
                               signed=True, fields=d | s | o, version=4))
            rows.append(OpInfo(InsnClass.LD | Mode.ABS | size, f"ldabs{sfx}", Kind.LD_ABS, size=nbytes,
                               fields=i))
            rows.append(OpInfo(InsnClass.LD | Mode.IND | size, f"ldind{sfx}", Kind.LD_IND, size=nbytes,
                               fields=s | i))
        rows.append(OpInfo(InsnClass.ST | Mode.MEM | size, f"st{sfx}", Kind.ST, size=nbytes, fields=d | o | i))
        rows.append(OpInfo(InsnClass.STX | Mode.MEM | size, f"stx{sfx}", Kind.STX, size=nbytes,
                           reg_src=True, fields=d | s | o))
    for size, suffix in ((Size.DW, ""), (Size.W, "32")):
        opcode = InsnClass.STX | Mode.ATOMIC | size
        nbytes = SIZE_BYTES[size]
        for atom, name in _ATOMIC_NAMES.items():
            for fetch in (0, ATOMIC_FETCH):
                mnem = f"lock {'fetch ' if fetch else ''}{name}{suffix}"
                rows.append(OpInfo(opcode, mnem, Kind.ATOMIC, atom | fetch, size == Size.DW, nbytes, True,
                                   variant_field="imm", variant=atom | fetch, fields=d | s | o | i,
                                   version=3, width=nbytes * 8))
        for atom, name in ((AtomicOp.XCHG, "xchg"), (AtomicOp.CMPXCHG, "cmpxchg")):
            rows.append(OpInfo(opcode, f"lock {name}{suffix}", Kind.ATOMIC, atom, size == Size.DW, nbytes, True,
                               variant_field="imm", variant=atom, fields=d | s | o | i, version=3,
                               width=nbytes * 8))
    rows.append(OpInfo(InsnClass.JMP | JmpOp.JA, "ja", Kind.JA, JmpOp.JA, fields=o))
    rows.append(OpInfo(InsnClass.JMP32 | JmpOp.JA, "ja32", Kind.JA, JmpOp.JA, False, fields=i, version=4,
                       width=32))
    for cls, width, suffix in ((InsnClass.JMP, 64, ""), (InsnClass.JMP32, 32, "32")):
        for jop, (py, cc, signed) in _JMP_COND.items():
            version = 3 if width == 32 else (2 if jop in _V2_JUMPS else 1)
            for src in Source:
                reg = src is Source.X
                rows.append(OpInfo(cls | src | jop, f"{jop.name.lower()}{suffix}", Kind.JCOND, jop, width == 64,
                                   reg_src=reg, signed=signed, fields=d | o | (s if reg else i), version=version,
                                   py=_render(py, width), cc=cc, width=width))
    rows.append(OpInfo(InsnClass.JMP | JmpOp.JCOND, "may_goto", Kind.MAY_GOTO, JmpOp.JCOND, variant_field="src",
                       variant=0, fields=o, version=4))
    call = InsnClass.JMP | JmpOp.CALL
    rows.append(OpInfo(call, "call", Kind.CALL, JmpOp.CALL, variant_field="src", variant=CallSrc.HELPER,
                       fields=i))
    rows.append(OpInfo(call, "call local", Kind.CALL_LOCAL, JmpOp.CALL, variant_field="src",
                       variant=CallSrc.LOCAL, fields=i, version=3))
    rows.append(OpInfo(call, "call runtime", Kind.CALL_KFUNC, JmpOp.CALL, variant_field="src",
                       variant=CallSrc.KFUNC, fields=i, version=3))
    rows.append(OpInfo(call | Source.X, "callx", Kind.CALLX, JmpOp.CALL, reg_src=True, fields=d))
    rows.append(OpInfo(InsnClass.JMP | JmpOp.EXIT, "exit", Kind.EXIT, JmpOp.EXIT))
    return tuple(rows)


OPCODES: tuple[OpInfo, ...] = _build_table()
"""Every valid opcode variant of ISA v1-v4."""

_BY_OPCODE: dict[int, tuple[OpInfo, ...]] = {}
for _row in OPCODES:
    _BY_OPCODE[_row.opcode] = (*_BY_OPCODE.get(_row.opcode, ()), _row)
BY_MNEMONIC: dict[str, tuple[OpInfo, ...]] = {}
for _row in OPCODES:
    BY_MNEMONIC[_row.mnemonic] = (*BY_MNEMONIC.get(_row.mnemonic, ()), _row)
del _row
# The opcodes that loaders patch (relocations, CO-RE), named from the table rather than re-typed.
OPCODE_LDDW = BY_MNEMONIC["lddw"][0].opcode  # the 16-byte load of a 64-bit immediate
OPCODE_CALL = BY_MNEMONIC["call"][0].opcode  # helper, local and kernel-function calls


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded eBPF instruction; ``lddw`` is one instruction two slots wide.

    ``imm`` is the signed 32-bit immediate; for lddw, ``next_imm`` is the immediate of the second
    slot, and ``imm64`` the whole 64-bit constant.
    """

    opcode: int  # 8-bit opcode
    dst: int = 0  # destination register (0-15 as encoded; 0-10 valid)
    src: int = 0  # source register (or pseudo/call source)
    off: int = 0  # signed 16-bit offset
    imm: int = 0  # signed 32-bit immediate
    next_imm: int = 0  # lddw only: signed 32-bit immediate of the second slot

    @property
    def cls(self) -> InsnClass:
        return InsnClass(self.opcode & 0x07)

    @property
    def width(self) -> int:
        """Number of 8-byte slots the instruction occupies."""
        return 2 if self.opcode == LDDW_OPCODE else 1

    @property
    def imm64(self) -> int:
        """The unsigned 64-bit constant of an lddw."""
        return (self.imm & MASK32) | ((self.next_imm & MASK32) << 32)

    @property
    def info(self) -> OpInfo:
        """The opcode-table row of this instruction (raises DecodeError when there is none)."""
        return lookup(self)

    def encode(self) -> bytes:
        regs = (self.src & 0xF) << 4 | (self.dst & 0xF)
        out = SLOT.pack(self.opcode, regs, self.off, self.imm)
        if self.width == 2:
            out += SLOT.pack(0, 0, 0, self.next_imm)
        return out


LDDW_OPCODE = InsnClass.LD | Mode.IMM | Size.DW


def lookup(insn: Instruction, pc: int | None = None) -> OpInfo:
    """Return the opcode-table row that matches ``insn``, or raise DecodeError."""
    rows = _BY_OPCODE.get(insn.opcode)
    if rows is None:
        raise DecodeError(f"unknown opcode 0x{insn.opcode:02x}", pc=pc)
    for row in rows:
        vf = row.variant_field
        if not vf:
            return row
        value = insn.off if vf == "off" else insn.imm if vf == "imm" else insn.src
        if value == row.variant:
            return row
    what = {"off": "offset", "imm": "immediate", "src": "source"}[rows[0].variant_field]
    if rows[0].kind in (Kind.END, Kind.BSWAP):
        raise DecodeError("invalid endian immediate", pc=pc)
    if rows[0].kind is Kind.LDDW:
        raise DecodeError("invalid source register for LDDW", pc=pc)
    raise DecodeError(f"invalid {what} {value} for opcode 0x{insn.opcode:02x}", pc=pc)


_DST, _SRC, _OFF, _IMM = (f.value for f in (Field.DST, Field.SRC, Field.OFF, Field.IMM))  # as plain ints
_MAX_PSEUDO = max(PseudoSrc)


def _check_fields(insn: Instruction, info: OpInfo, pc: int) -> None:
    used = info.fields.value  # int bit tests: Flag's own ``in`` is far slower, once per instruction
    if insn.dst > FP:
        raise DecodeError(f"r{insn.dst} is invalid: invalid destination register", pc=pc)
    if insn.src > FP and used & _SRC:
        raise DecodeError(f"r{insn.src} is invalid: invalid source register", pc=pc)
    if not used & _DST and insn.dst:
        raise DecodeError(f"non-zero unused destination register in {info.mnemonic}", pc=pc)
    if not used & _SRC and insn.src and info.variant_field != "src":
        raise DecodeError(f"non-zero unused source register in {info.mnemonic}", pc=pc)
    if not used & _OFF and insn.off and info.variant_field != "off":
        raise DecodeError(f"non-zero unused offset in {info.mnemonic}", pc=pc)
    if not used & _IMM and insn.imm and info.variant_field != "imm":
        raise DecodeError(f"non-zero unused immediate in {info.mnemonic}", pc=pc)
    if info.kind is Kind.LDDW and insn.src > _MAX_PSEUDO:
        raise DecodeError("invalid source register for LDDW", pc=pc)


def decode(code: bytes | bytearray | memoryview) -> list[Instruction]:
    """Decode and validate bytecode; raise DecodeError naming the instruction index on bad input."""
    return [insn for insn, _info in _decode(code)]


def _decode(code: bytes | bytearray | memoryview) -> list[tuple[Instruction, OpInfo]]:
    """Each instruction with its opcode-table row, validated (see ``decode``)."""
    data = bytes(code)
    if len(data) % SLOT_SIZE:
        raise DecodeError(f"program length {len(data)} is not a multiple of {SLOT_SIZE}")
    nslots = len(data) // SLOT_SIZE
    out: list[tuple[Instruction, OpInfo]] = []
    pc = 0
    while pc < nslots:
        opcode, regs, off, imm = SLOT.unpack_from(data, pc * SLOT_SIZE)
        dst, src = regs & 0xF, regs >> 4
        if opcode == LDDW_OPCODE:
            if pc + 1 >= nslots:
                raise DecodeError("incomplete lddw", pc=pc)
            op2, regs2, off2, imm2 = SLOT.unpack_from(data, (pc + 1) * SLOT_SIZE)
            if op2 != 0:
                raise DecodeError("incomplete lddw", pc=pc)
            if regs2 != 0 or off2 != 0:
                raise DecodeError("invalid lddw second half", pc=pc + 1)
            insn = Instruction(opcode, dst, src, off, imm, imm2)
        else:
            insn = Instruction(opcode, dst, src, off, imm)
        info = lookup(insn, pc)
        _check_fields(insn, info, pc)
        out.append((insn, info))
        pc += 2 if opcode == LDDW_OPCODE else 1
    return out


def encode(insns: Sequence[Instruction]) -> bytes:
    """Encode instructions back to bytecode."""
    return b"".join(insn.encode() for insn in insns)


@dataclass(frozen=True, slots=True)
class Program:
    """A decoded program: instructions indexed by slot.

    ``slots[pc]`` is the instruction starting at slot ``pc``, or None for the second slot of an
    lddw. Jump offsets and error locations count slots, as in the bytecode.
    """

    insns: tuple[Instruction, ...]  # in order, one per instruction
    slots: tuple[Instruction | None, ...]  # indexed by pc
    infos: tuple[OpInfo | None, ...]  # opcode-table row per slot (None for lddw's second slot)
    # Each slot's 64 bits as encoded (little-endian), for caches keyed by an instruction's encoding.
    words: array.array[int] = field(compare=False, repr=False)

    @classmethod
    def from_bytes(cls, code: bytes | bytearray | memoryview) -> Program:
        insns: list[Instruction] = []
        slots: list[Instruction | None] = []
        infos: list[OpInfo | None] = []
        for insn, info in _decode(code):  # the rows found while validating: no second lookup
            insns.append(insn)
            slots.append(insn)
            infos.append(info)
            if info.kind is Kind.LDDW:
                slots.append(None)
                infos.append(None)
        return cls(tuple(insns), tuple(slots), tuple(infos), _words(code))

    @classmethod
    def from_instructions(cls, insns: Sequence[Instruction]) -> Program:
        if isinstance(insns, str):
            raise TypeError("a program is bytecode or Instructions, not text: assemble it first (jitbpf.assemble)")
        slots: list[Instruction | None] = []
        infos: list[OpInfo | None] = []
        for insn in insns:
            if not isinstance(insn, Instruction):
                raise TypeError(f"a program's instructions are Instructions, not {type(insn).__name__}")
            slots.append(insn)
            infos.append(lookup(insn, len(slots) - 1))
            if insn.width == 2:
                slots.append(None)
                infos.append(None)
        return cls(tuple(insns), tuple(slots), tuple(infos), _words(encode(insns)))

    def __len__(self) -> int:
        """Length in slots."""
        return len(self.slots)

    def __iter__(self) -> Iterator[tuple[int, Instruction, OpInfo]]:
        """Yield (pc, instruction, opcode-table row) for every instruction."""
        for pc, insn in enumerate(self.slots):
            if insn is not None:
                info = self.infos[pc]
                assert info is not None
                yield pc, insn, info

    def to_bytes(self) -> bytes:
        return encode(self.insns)

    def find_slots(self, opcodes: bytes, *, naming_fp: bool = False) -> list[int]:
        """The slots whose opcode ``opcodes`` marks (a table from ``opcode_mask``), and with
        ``naming_fp`` that name r10 as dst or src: found in C, for passes that need to look at
        few of a program's instructions. (An lddw's second slot has opcode 0, which none has.)"""
        if sys.byteorder == "little":
            data = self.words.tobytes()  # the code itself
        else:
            encoded = array.array("Q", self.words)
            encoded.byteswap()
            data = encoded.tobytes()
        marks = data[0::SLOT_SIZE].translate(opcodes)
        if naming_fp:
            both = int.from_bytes(marks, "little") & int.from_bytes(data[1::SLOT_SIZE].translate(_NAMES_FP), "little")
            marks = both.to_bytes(len(marks), "little")
        found = []
        at = marks.find(1)
        while at >= 0:
            found.append(at)
            at = marks.find(1, at + 1)
        return found


def opcode_mask(opcodes: Iterable[int]) -> bytes:
    """The table of ``Program.find_slots`` that marks ``opcodes``."""
    wanted = set(opcodes)
    return bytes(int(i in wanted) for i in range(256))


_NAMES_FP = bytes(int(b & 0xF == FP or b >> 4 == FP) for b in range(256))  # by registers byte: dst or src is r10


def _words(code: bytes | bytearray | memoryview) -> array.array[int]:
    words = array.array("Q", bytes(code))
    if sys.byteorder != "little":
        words.byteswap()
    return words


def sign_extend(value: int, bits: int) -> int:
    """Interpret the low ``bits`` bits of ``value`` as a two's complement integer."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value
