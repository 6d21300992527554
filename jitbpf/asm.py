"""Assembler: eBPF text in the rbpf/uBPF dialect or the LLVM/kernel syntax (auto-detected per line) to bytecode,
pasted llvm-objdump listings, kernel verifier logs and bpftool dumps included."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

from jitbpf.errors import AssemblerError, DecodeError
from jitbpf.isa import (
    BY_MNEMONIC,
    MASK32,
    MASK64,
    NUM_REGS,
    OPCODES,
    Field,
    Instruction,
    Kind,
    OpInfo,
    PseudoSrc,
    decode,
    encode,
    sign_extend,
)

__all__ = [
    "LLVM_ALU_OPS",
    "LLVM_CONDITIONS",
    "LLVM_LOCK_OPS",
    "PSEUDO_NAMES",
    "assemble",
    "assemble_instructions",
]

INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MAX_ENCODABLE_REG = 15  # the 4-bit register field; the decoder rejects r11..r15

# LLVM compound assignments -> rbpf mnemonic (the "32" suffix is added for w registers).
LLVM_ALU_OPS: Final[Mapping[str, str]] = MappingProxyType({
    "+=": "add", "-=": "sub", "*=": "mul", "/=": "div", "%=": "mod", "s/=": "sdiv", "s%=": "smod",
    "|=": "or", "&=": "and", "^=": "xor", "<<=": "lsh", ">>=": "rsh", "s>>=": "arsh",
})
# LLVM jump conditions -> rbpf mnemonic.
LLVM_CONDITIONS: Final[Mapping[str, str]] = MappingProxyType({
    "==": "jeq", "!=": "jne", ">": "jgt", ">=": "jge", "<": "jlt", "<=": "jle",
    "s>": "jsgt", "s>=": "jsge", "s<": "jslt", "s<=": "jsle", "&": "jset",
})
# `lock *(u64 *)(rD + off) OP= rS` -> atomic operation name.
LLVM_LOCK_OPS: Final[Mapping[str, str]] = MappingProxyType({"+=": "add", "|=": "or", "&=": "and", "^=": "xor"})
# lddw operand prefixes `KIND:VALUE[+OFF]` selecting the pseudo source; "map" is the short name of MAP_FD.
PSEUDO_NAMES: Final[Mapping[str, PseudoSrc]] = MappingProxyType(
    {"map": PseudoSrc.MAP_FD} | {p.name.lower(): p for p in PseudoSrc if p is not PseudoSrc.IMM64}
)
_MAP_PSEUDOS: Final = frozenset({PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX, PseudoSrc.MAP_IDX_VALUE})

# rbpf spellings of the load mnemonics, and `swapN` for `bswapN`, both derived from the table.
_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {r.mnemonic[:2] + r.mnemonic[3:] + "x": r.mnemonic for r in OPCODES if r.kind is Kind.LDX}
    | {r.mnemonic[1:]: r.mnemonic for r in OPCODES if r.kind is Kind.BSWAP}
)
# (kind, access size in bytes) -> mnemonic, for the LLVM `*(u32 *)` forms.
_MEM_MNEMONICS: Final[Mapping[tuple[Kind, int], str]] = MappingProxyType(
    {(r.kind, r.size): r.mnemonic for r in OPCODES if r.size and r.kind is not Kind.ATOMIC}
)
_MEM_TYPES: Final[Mapping[str, tuple[int, bool]]] = MappingProxyType(
    {f"{sign}{bits}": (bits // 8, sign == "s") for sign in "us" for bits in (8, 16, 32, 64)}
)

# Operand signature per kind: R register, V register or number, N number, M memory operand,
# T jump target (offset or label), I lddw value (number or pseudo reference).
_SIGNATURES: Final[Mapping[Kind, str]] = MappingProxyType({
    Kind.ALU: "RV", Kind.NEG: "R", Kind.MOVSX: "RR", Kind.END: "R", Kind.BSWAP: "R", Kind.LDDW: "RI",
    Kind.LDX: "RM", Kind.LDXSX: "RM", Kind.ST: "MN", Kind.STX: "MR", Kind.ATOMIC: "MR", Kind.JA: "T",
    Kind.MAY_GOTO: "T", Kind.JCOND: "RVT", Kind.CALL: "N", Kind.CALL_LOCAL: "T", Kind.CALL_KFUNC: "N",
    Kind.CALLX: "R", Kind.EXIT: "", Kind.LD_ABS: "N", Kind.LD_IND: "RN",
})
_EXPECTED: Final[Mapping[str, str]] = MappingProxyType({
    "R": "a register", "V": "a register or an immediate", "N": "an immediate", "M": "a memory operand [rN+off]",
    "T": "a jump offset or label", "I": "a 64-bit immediate or map reference",
})

_TOKEN_RE: Final = re.compile(
    r"(?P<ws>\s+)"
    r"|(?P<op>s>>=|<<=|>>=|s/=|s%=|s>=|s<=|s>|s<|==|!=|>=|<=|\+=|-=|\*=|/=|%=|\|=|&=|\^=)"
    r"|(?P<num>[0-9][0-9A-Za-z_]*)"
    r"|(?P<name>%?[A-Za-z_.][0-9A-Za-z_.]*)"
    r"|(?P<op1>[-+*/%()\[\],=<>&|^:#])",
    re.ASCII,
)
_NUMBER_RE: Final = re.compile(r"0[xX](?P<hex>[0-9a-fA-F]+)|(?P<dec>[0-9]+)", re.ASCII)
_REG_RE: Final = re.compile(r"%?(?P<kind>[rw])(?P<num>[0-9]+)", re.ASCII)
# A comment starts at `;` or `#`, except the `#` of a kernel helper name such as `bpf_trace_printk#6`.
_COMMENT_RE: Final = re.compile(r";|#(?![0-9])|(?<![0-9A-Za-z_])#", re.ASCII)
# llvm-objdump / verifier-log decoration: slot number, raw bytes (8 or 16, each two hex digits), kernel's `(op)`.
_PREFIX_RE: Final = re.compile(
    r"\s*(?:(?P<slot>[0-9]+):)?"
    r"(?P<raw>\s*[0-9a-fA-F]{2}(?:\s+[0-9a-fA-F]{2}){7}(?:(?:\s+[0-9a-fA-F]{2}){8})?(?=\s|$))?"
    r"(?:\s*\((?P<op>[0-9a-fA-F]{2})\))?",
    re.ASCII,
)
_HEADER_RE: Final = re.compile(r"\s*(?:[0-9a-fA-F]+\s+)?<(?P<name>[^<>]+)>:\s*$", re.ASCII)
_ANNOTATION_RE: Final = re.compile(r"\s<[^<>\s]*>\s*$", re.ASCII)  # objdump's `goto +3 <LBB0_2>`
_UNKNOWN_RE: Final = re.compile(r"\s*(?P<unknown><unknown>)\s*$", re.ASCII)  # llvm-objdump: cannot decode it
# Lines of a listing that hold no instruction: objdump's headers and relocations (`-r`), the kernel
# verifier log's register states, path and statistics lines, bpftool's function prototypes.
_IGNORED_RE: Final = re.compile(
    r"\s*(?:Disassembly of section\s|\S+:\s+file format\s|[0-9a-fA-F]+:\s+R_BPF_\w+\b"
    r"|(?:[0-9]+:\s*)?(?:frame[0-9]+:\s*)?R[0-9]+(?:_[a-zA-Z]+)?(?:=|\s+type=)"
    r"|from [0-9]+ to [0-9]+:|[0-9]+:\s*safe\s*$|func#[0-9]+ @[0-9]+|processed [0-9]+ insns|Func#[0-9]"
    r"|mark_precise: frame|last_idx [0-9]|regs=|parent didn't have|propagating [rf]|verification time [0-9]"
    r"|stack depth [0-9]|returning from callee:|to caller at [0-9]|Validating \S+ func#|Live regs before"
    r"|[A-Za-z_][\w\s*]*\s[\w*]+\([^()]*\):\s*$)",  # and bpftool's `int prog(struct xdp_md * ctx):`
    re.ASCII,
)
# The verifier log's call markers, ignored only in a log: elsewhere they would be labels.
_LOG_ONLY_RE: Final = re.compile(r"\s*(?:caller|callee):\s*$", re.ASCII)
_SECTION_RE: Final = re.compile(r"\s*Disassembly of section\s", re.ASCII)
_LDDW_OPCODE: Final = 0x18
_CALL_OPCODE: Final = 0x85
_CALL_KINDS: Final[Mapping[int, str]] = MappingProxyType({1: "call local", 2: "call runtime"})  # by src
_MAX_DIGITS: Final = 100


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "num", "name" or "op"
    text: str
    col: int  # 1-based


@dataclass(frozen=True, slots=True)
class _Reg:
    num: int
    wide: bool  # rN (True) or wN (False)
    tok: _Tok


@dataclass(frozen=True, slots=True)
class _Num:
    value: int  # with its sign
    text: str
    signed: bool  # written with an explicit sign
    hex: bool
    tok: _Tok  # first token (the sign, when there is one)


@dataclass(frozen=True, slots=True)
class _Mem:
    reg: int
    off: int
    tok: _Tok


@dataclass(frozen=True, slots=True)
class _Name:
    name: str
    tok: _Tok


@dataclass(frozen=True, slots=True)
class _Pseudo:
    src: PseudoSrc
    value: _Num | _Name  # map handle / id / function offset, or a map name or label
    next_imm: int
    tok: _Tok


_Operand = _Reg | _Num | _Mem | _Name | _Pseudo


@dataclass(frozen=True, slots=True)
class _Statement:
    """One parsed instruction before encoding: a table mnemonic with rbpf-shaped operands."""

    mnemonic: str
    tok: _Tok  # where errors about the whole instruction point
    operands: tuple[_Operand, ...]


@dataclass(frozen=True, slots=True)
class _Fixup:
    index: int  # position in the instruction list
    slot: int
    field: str  # "off" or "imm"
    label: _Name
    line: int
    text: str


class _Cursor:
    """Tokens of one line with a read position; builds errors that point into the line."""

    def __init__(self, tokens: list[_Tok], line: int, text: str, end_col: int, *, any_register: bool = False) -> None:
        self.tokens = tokens
        self.any_register = any_register  # r11..r15 accepted (bytecode the decoder must reject)
        self.pos = 0
        self.line = line
        self.text = text
        self.end_col = end_col

    def error(self, message: str, tok: _Tok | None = None) -> AssemblerError:
        col = tok.col if tok is not None else self.end_col
        return AssemblerError(message, line=self.line, column=col, text=self.text)

    def peek(self, ahead: int = 0) -> _Tok | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.tokens)

    def take(self, what: str = "an operand") -> _Tok:
        tok = self.peek()
        if tok is None:
            raise self.error(f"expected {what}, found end of line")
        self.pos += 1
        return tok

    def accept(self, *texts: str) -> _Tok | None:
        tok = self.peek()
        if tok is not None and tok.text in texts:
            self.pos += 1
            return tok
        return None

    def expect(self, text: str) -> _Tok:
        tok = self.take(f"'{text}'")
        if tok.text != text:
            raise self.error(f"expected '{text}', found '{tok.text}'", tok)
        return tok

    def expect_end(self) -> None:
        tok = self.peek()
        if tok is not None:
            raise self.error(f"unexpected '{tok.text}'", tok)

    # --- operands shared by both syntaxes ---

    def number(self) -> _Num:
        """An optionally signed decimal or hex number."""
        first = self.take("a number")
        sign = 1
        if first.text in ("+", "-"):
            sign = -1 if first.text == "-" else 1
            tok = self.take("a number")
        else:
            tok = first
        if tok.kind != "num":
            raise self.error(f"expected a number, found '{tok.text}'", tok)
        m = _NUMBER_RE.fullmatch(tok.text)
        if m is None:
            raise self.error(f"bad number '{tok.text}'", tok)
        hexd = m["hex"]
        if len(tok.text) > _MAX_DIGITS:  # keeps int() away from its digit limit
            raise self.error(f"number '{tok.text[:20]}...' out of range", tok)
        value = int(hexd, 16) if hexd is not None else int(m["dec"], 10)
        text = tok.text if first is tok else first.text + tok.text
        return _Num(sign * value, text, first is not tok, hexd is not None, first)

    def register(self, *, allow_w: bool = False) -> _Reg:
        tok = self.take("a register")
        reg = self.as_register(tok, allow_w=allow_w)
        if reg is None:
            raise self.error(f"expected a register, found '{tok.text}'", tok)
        return reg

    def as_register(self, tok: _Tok, *, allow_w: bool = False) -> _Reg | None:
        """The register a token names, None when it is no register; bad register numbers raise."""
        if tok.kind != "name":
            return None
        m = _REG_RE.fullmatch(tok.text)
        if m is None or (m["kind"] == "w" and not allow_w):
            if tok.text.startswith("%"):
                raise self.error(f"bad register '{tok.text}'", tok)
            return None
        num = int(m["num"]) if len(m["num"]) < _MAX_DIGITS else MAX_ENCODABLE_REG + 1
        if num > MAX_ENCODABLE_REG:
            raise self.error(f"bad register '{tok.text}'", tok)
        if num >= NUM_REGS and not self.any_register:
            raise self.error(f"'{tok.text}' is not a register: eBPF has r0-r{NUM_REGS - 1} (w0-w{NUM_REGS - 1})", tok)
        return _Reg(num, m["kind"] == "r", tok)

    def memory(self, open_: str, close: str) -> _Mem:
        """`[rN]`, `[rN+off]`, `[rN-off]` (rbpf) or `(rN + off)` (LLVM)."""
        start = self.take(f"'{open_}'")
        if start.text != open_:
            raise self.error(f"bad memory operand: expected '{open_}', found '{start.text}'", start)
        tok = self.take("a register")
        reg = self.as_register(tok)
        if reg is None:
            raise self.error(f"bad memory operand: expected a base register, found '{tok.text}'", tok)
        off = 0
        sign = self.accept("+", "-")
        if sign is not None:
            num = self.number()
            value = -num.value if sign.text == "-" else num.value
            if not INT16_MIN <= value <= INT16_MAX:
                raise self.error(f"offset {sign.text}{num.text} out of range", sign)
            off = value
        end = self.peek()
        if end is None or end.text != close:
            found = f"'{end.text}'" if end is not None else "end of line"
            raise self.error(f"bad memory operand: expected '{close}', found {found}", end)
        self.pos += 1
        return _Mem(reg.num, off, start)

    def pseudo(self) -> _Pseudo:
        """`KIND:VALUE[+OFF]`, VALUE a number, a map name or (for func) a label."""
        kind_tok = self.take()
        src = PSEUDO_NAMES[kind_tok.text]
        self.expect(":")
        tok = self.peek()
        value: _Num | _Name
        if tok is not None and tok.kind == "name" and not tok.text.startswith("%"):
            if src is PseudoSrc.BTF_ID:
                raise self.error(f"expected a number, found '{tok.text}'", tok)
            self.pos += 1
            value = _Name(tok.text, tok)
        else:
            value = self.number()
        next_imm = 0
        if (tok := self.peek()) is not None and tok.text in ("+", "-"):
            next_imm = self.imm32(self.number(), "offset")
        return _Pseudo(src, value, next_imm, kind_tok)

    # --- range checks ---

    def imm32(self, num: _Num, what: str = "immediate") -> int:
        """Decimal in the int32 range, or unsigned hex up to 0xffffffff taken as a bit pattern."""
        if num.hex and not num.signed and 0 <= num.value <= MASK32:
            return sign_extend(num.value, 32)
        if INT32_MIN <= num.value <= INT32_MAX:
            return num.value
        raise self.error(f"{what} {num.text} out of range", num.tok)

    def imm64(self, num: _Num) -> int:
        if -(1 << 63) <= num.value <= MASK64:
            return num.value & MASK64
        raise self.error(f"immediate {num.text} out of range", num.tok)

    def offset(self, num: _Num, *, wide: bool) -> int:
        lo, hi = (INT32_MIN, INT32_MAX) if wide else (INT16_MIN, INT16_MAX)
        if lo <= num.value <= hi:
            return num.value
        raise self.error(f"offset {num.text} out of range", num.tok)


def _tokenize(line: str, start: int, stop: int, lineno: int) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = start
    while pos < stop:
        m = _TOKEN_RE.match(line, pos, stop)
        if m is None:
            raise AssemblerError(f"unexpected character {line[pos]!r}", line=lineno, column=pos + 1, text=line)
        kind = m.lastgroup
        if kind != "ws":
            tokens.append(_Tok("op" if kind == "op1" else str(kind), m.group(), pos + 1))
        pos = m.end()
    return tokens


# --- rbpf/uBPF dialect -----------------------------------------------------------------------------


def _rbpf_operand(cur: _Cursor) -> _Operand:
    tok = cur.peek()
    assert tok is not None
    if tok.text == "[":
        return cur.memory("[", "]")
    if tok.kind == "num" or tok.text in ("+", "-"):
        return cur.number()
    if tok.kind != "name":
        raise cur.error(f"unexpected '{tok.text}'", tok)
    reg = cur.as_register(tok)
    if reg is not None:
        cur.pos += 1
        return reg
    nxt = cur.peek(1)
    if tok.text in PSEUDO_NAMES and nxt is not None and nxt.text == ":":
        return cur.pseudo()
    cur.pos += 1
    return _Name(tok.text, tok)


def _rbpf_statement(cur: _Cursor) -> _Statement:
    head = cur.take("a mnemonic")
    name = head.text
    if name == "lock":
        fetch = cur.accept("fetch") is not None
        op = cur.peek()
        if op is None or op.kind != "name" or not BY_MNEMONIC.get(f"lock {op.text}", ()):
            if op is None or op.text in ("[", ","):
                raise cur.error("lock expects an operation and 2 operands", head)
            raise cur.error(f"unknown atomic operation '{op.text}'", op)
        cur.pos += 1
        name = f"lock {op.text}"
        # xchg and cmpxchg always fetch; tolerate the redundant word
        if fetch and f"lock fetch {op.text}" in BY_MNEMONIC:
            name = f"lock fetch {op.text}"
    elif name == "call":
        return _call_statement(cur, head)
    else:
        name = _ALIASES.get(name, name)
        base = name.removesuffix("64")
        if name not in BY_MNEMONIC and base in BY_MNEMONIC and BY_MNEMONIC[base][0].kind in (Kind.ALU, Kind.NEG):
            name = base  # rbpf's explicit 64-bit spellings (add64, neg64, ...)
        if name not in BY_MNEMONIC:
            raise cur.error(f"unknown mnemonic '{head.text}'", head)
    operands: list[_Operand] = []
    while not cur.at_end():
        if operands and cur.accept(",") is not None and cur.at_end():
            raise cur.error("expected an operand after ','")
        operands.append(_rbpf_operand(cur))
    return _Statement(name, head, tuple(operands))


def _call_statement(cur: _Cursor, head: _Tok) -> _Statement:
    """Every call spelling of both syntaxes."""
    tok = cur.take("a helper id, register or target")
    if tok.text in ("helper", "runtime"):
        mnem = "call" if tok.text == "helper" else "call runtime"
        return _Statement(mnem, head, (cur.number(),))
    if tok.text == "local":
        return _Statement("call local", head, (_target(cur),))
    reg = cur.as_register(tok)
    if reg is not None:
        return _Statement("callx", head, (reg,))
    cur.pos -= 1
    if tok.kind == "num" or tok.text in ("+", "-"):
        num = cur.number()
        # Helper ids are never signed: `call -1` is pc-relative, as llvm-objdump prints an unlinked
        # bpf-to-bpf call.
        return _Statement("call local" if num.signed else "call", head, (num,))
    if tok.kind == "name":
        nxt = cur.peek(1)
        if nxt is not None and nxt.text == "#":  # kernel log: `call bpf_map_lookup_elem#1`
            cur.pos += 2
            return _Statement("call", head, (cur.number(),))
        return _Statement("call local", head, (_target(cur),))
    raise cur.error(f"unexpected '{tok.text}'", tok)


def _target(cur: _Cursor) -> _Num | _Name:
    """`+N`, `-N`, `N`, `pc+N` (kernel log) or a label."""
    tok = cur.peek()
    if tok is None:
        raise cur.error("expected a jump offset or label, found end of line")
    nxt = cur.peek(1)
    if tok.text == "pc" and nxt is not None and nxt.text in ("+", "-"):
        cur.pos += 1
        return cur.number()
    if tok.kind == "name" and not tok.text.startswith("%"):
        cur.pos += 1
        return _Name(tok.text, tok)
    return cur.number()


# --- LLVM / kernel syntax --------------------------------------------------------------------------


def _is_llvm(cur: _Cursor) -> bool:
    first, second = cur.peek(), cur.peek(1)
    assert first is not None
    if first.text in ("*", "if", "goto", "gotol"):
        return True
    if first.text == "lock":
        return second is not None and second.text == "*"
    return (
        _REG_RE.fullmatch(first.text) is not None
        and second is not None
        and (second.text == "=" or second.text in LLVM_ALU_OPS)
    )


def _cast(cur: _Cursor) -> tuple[int, bool, _Tok]:
    """`(u32 *)` -> (size in bytes, signed, type token)."""
    cur.expect("(")
    tok = cur.take("a type")
    if tok.text not in _MEM_TYPES:
        raise cur.error(f"unknown type '{tok.text}'", tok)
    cur.expect("*")
    cur.expect(")")
    size, signed = _MEM_TYPES[tok.text]
    return size, signed, tok


def _mem_mnemonic(cur: _Cursor, kind: Kind, size: int, tok: _Tok) -> str:
    mnem = _MEM_MNEMONICS.get((kind, size))
    if mnem is None:
        raise cur.error(f"no {kind.value} instruction for type '{tok.text}'", tok)
    return mnem


def _llvm_value(cur: _Cursor) -> _Reg | _Num:
    tok = cur.peek()
    if tok is not None and (reg := cur.as_register(tok, allow_w=True)) is not None:
        cur.pos += 1
        return reg
    return cur.number()


def _same_reg(cur: _Cursor, dst: _Reg, other: _Reg, what: str) -> None:
    if other.num != dst.num:
        raise cur.error(f"{what} must name the destination register r{dst.num}", other.tok)


def _llvm_statement(cur: _Cursor, lddw_hint: bool) -> _Statement:
    head = cur.peek()
    assert head is not None
    if head.text in ("goto", "gotol"):
        cur.pos += 1
        return _Statement("ja" if head.text == "goto" else "ja32", head, (_target(cur),))
    if head.text == "if":
        cur.pos += 1
        lhs = cur.register(allow_w=True)
        cond = cur.take("a condition")
        if cond.text not in LLVM_CONDITIONS:
            raise cur.error(f"unknown condition '{cond.text}'", cond)
        rhs = _llvm_value(cur)
        cur.expect("goto")
        mnem = LLVM_CONDITIONS[cond.text] + ("" if lhs.wide else "32")
        return _Statement(mnem, head, (lhs, rhs, _target(cur)))
    if head.text == "lock":
        cur.pos += 2
        size, _, type_tok = _cast(cur)
        mem = cur.memory("(", ")")
        op = cur.take("an atomic operation")
        if op.text not in LLVM_LOCK_OPS:
            raise cur.error(f"unknown atomic operation '{op.text}'", op)
        mnem = _atomic_mnemonic(cur, LLVM_LOCK_OPS[op.text], size, type_tok)
        return _Statement(mnem, head, (mem, cur.register(allow_w=True)))
    if head.text == "*":
        cur.pos += 1
        size, signed, type_tok = _cast(cur)
        if signed:
            raise cur.error(f"stores take an unsigned type, not '{type_tok.text}'", type_tok)
        mem = cur.memory("(", ")")
        cur.expect("=")
        value = _llvm_value(cur)
        kind = Kind.STX if isinstance(value, _Reg) else Kind.ST
        return _Statement(_mem_mnemonic(cur, kind, size, type_tok), head, (mem, value))
    dst = cur.register(allow_w=True)
    op = cur.take("an assignment")
    suffix = "" if dst.wide else "32"
    if op.text in LLVM_ALU_OPS:
        return _Statement(LLVM_ALU_OPS[op.text] + suffix, op, (dst, _llvm_value(cur)))
    if op.text != "=":
        raise cur.error(f"unknown operator '{op.text}'", op)
    return _llvm_assignment(cur, dst, op, suffix, lddw_hint)


def _llvm_assignment(cur: _Cursor, dst: _Reg, op: _Tok, suffix: str, lddw_hint: bool) -> _Statement:
    """The right-hand side of `rD = ...`."""
    tok = cur.peek()
    if tok is None:
        raise cur.error("expected a value, found end of line")
    nxt = cur.peek(1)
    if tok.text == "-" and nxt is not None and (src := cur.as_register(nxt, allow_w=True)) is not None:
        cur.pos += 2
        _same_reg(cur, dst, src, "negation")
        return _Statement("neg" + suffix, op, (dst,))
    if tok.text == "(" and nxt is not None and nxt.text in ("s8", "s16", "s32"):
        cur.pos += 2
        cur.expect(")")
        return _Statement(f"movsx{nxt.text[1:]}{64 if dst.wide else 32}", op, (dst, cur.register(allow_w=True)))
    if tok.text == "*":
        cur.pos += 1
        size, signed, type_tok = _cast(cur)
        if cur.accept("skb") is not None:
            return _skb_load(cur, dst, op, size, type_tok)
        mem = cur.memory("(", ")")
        return _Statement(_mem_mnemonic(cur, Kind.LDXSX if signed else Kind.LDX, size, type_tok), op, (dst, mem))
    if tok.kind == "name" and tok.text in BY_MNEMONIC and BY_MNEMONIC[tok.text][0].kind in (Kind.END, Kind.BSWAP):
        cur.pos += 1
        _same_reg(cur, dst, cur.register(allow_w=True), "byte swap operand")
        return _Statement(tok.text, op, (dst,))
    if tok.text == "map" and nxt is not None and nxt.text == "[":
        return _Statement("lddw", op, (dst, _bpftool_map(cur)))
    if tok.kind == "name" and tok.text in PSEUDO_NAMES and nxt is not None and nxt.text == ":":
        pseudo = cur.pseudo()
        cur.accept("ll")
        return _Statement("lddw", op, (dst, pseudo))
    if tok.kind == "name" and nxt is not None and nxt.text == "(":
        return _llvm_atomic_call(cur, dst, tok)
    value = _llvm_value(cur)
    if isinstance(value, _Reg):
        return _Statement("mov" + suffix, op, (dst, value))
    if cur.accept("ll") is not None or lddw_hint:
        if not dst.wide:
            raise cur.error("a 64-bit immediate needs an r register", dst.tok)
        return _Statement("lddw", op, (dst, value))
    # Write what the value means: a 64-bit constant outside the sign-extended int32 range needs lddw.
    if dst.wide and not INT32_MIN <= value.value <= INT32_MAX:
        return _Statement("lddw", op, (dst, value))
    return _Statement("mov" + suffix, op, (dst, value))


def _bpftool_map(cur: _Cursor) -> _Pseudo:
    """bpftool's `map[id:5]` and `map[id:5][0]+8`: a map, or an address in its value, by map id."""
    kind_tok = cur.take()
    cur.expect("[")
    cur.expect("id")
    cur.expect(":")
    map_id = cur.number()
    cur.expect("]")
    if cur.accept("[") is None:
        return _Pseudo(PseudoSrc.MAP_FD, map_id, 0, kind_tok)
    cur.expect("0")
    cur.expect("]")
    offset = cur.imm32(cur.number(), "offset") if not cur.at_end() else 0
    return _Pseudo(PseudoSrc.MAP_VALUE, map_id, offset, kind_tok)


def _skb_load(cur: _Cursor, dst: _Reg, op: _Tok, size: int, type_tok: _Tok) -> _Statement:
    """Legacy packet loads: `r0 = *(u8 *)skb[IMM]` and `r0 = *(u8 *)skb[rS + IMM]`."""
    if dst.num != 0:
        raise cur.error("legacy packet loads write r0", dst.tok)
    cur.expect("[")
    tok = cur.peek()
    if tok is not None and (src := cur.as_register(tok)) is not None:
        cur.pos += 1
        imm = _Num(0, "0", False, False, tok)
        if (sign := cur.accept("+", "-")) is not None:
            num = cur.number()
            imm = replace(num, value=-num.value if sign.text == "-" else num.value, signed=True, tok=sign)
        cur.expect("]")
        return _Statement(_mem_mnemonic(cur, Kind.LD_IND, size, type_tok), op, (src, imm))
    num = cur.number()
    cur.expect("]")
    return _Statement(_mem_mnemonic(cur, Kind.LD_ABS, size, type_tok), op, (num,))


_ATOMIC_CALL_RE: Final = re.compile(
    r"(?:atomic(?P<a64>64)?_)?(?P<op>fetch_(?:add|and|or|xor)|xchg|cmpxchg)(?P<sfx>_64|_32|32_32)?", re.ASCII
)


def _atomic_mnemonic(cur: _Cursor, op: str, size: int, tok: _Tok) -> str:
    if size not in (4, 8):
        raise cur.error(f"atomic operations take u32 or u64, not '{tok.text}'", tok)
    mnem = f"lock {op}{'32' if size == 4 else ''}"
    if mnem not in BY_MNEMONIC:
        raise cur.error(f"unknown atomic operation '{op}'", tok)
    return mnem


def _llvm_atomic_call(cur: _Cursor, dst: _Reg, name: _Tok) -> _Statement:
    """`rS = atomic_fetch_add((u64 *)(rD + off), rS)`, `rS = xchg_64(rD + off, rS)`,
    `r0 = cmpxchg_64(rD + off, r0, rS)` and the kernel's atomic64_* spellings."""
    m = _ATOMIC_CALL_RE.fullmatch(name.text)
    if m is None:
        raise cur.error(f"unknown function '{name.text}'", name)
    cur.pos += 2
    size = 8 if dst.wide else 4
    if m["a64"] or m["sfx"] == "_64":
        size = 8
    elif m["sfx"] in ("_32", "32_32"):
        size = 4
    tok = cur.peek(1)
    if tok is not None and tok.text in _MEM_TYPES:
        size, _, type_tok = _cast(cur)
        mem = cur.memory("(", ")")
    else:
        type_tok = name
        mem = _bare_address(cur)
    op = m["op"].replace("fetch_", "fetch ")
    cur.expect(",")
    if op == "cmpxchg":
        old = cur.register(allow_w=True)
        if old.num != 0 or dst.num != 0:
            raise cur.error("cmpxchg compares and returns r0", old.tok if old.num else dst.tok)
        cur.expect(",")
    src = cur.register(allow_w=True)
    cur.expect(")")
    if op != "cmpxchg":
        _same_reg(cur, dst, src, "the fetched value's register")
    return _Statement(_atomic_mnemonic(cur, op, size, type_tok), name, (mem, src))


def _bare_address(cur: _Cursor) -> _Mem:
    """`rD + off` without brackets (LLVM's xchg/cmpxchg operands)."""
    reg = cur.register()
    off = 0
    if (sign := cur.accept("+", "-")) is not None:
        num = cur.number()
        off = -num.value if sign.text == "-" else num.value
        if not INT16_MIN <= off <= INT16_MAX:
            raise cur.error(f"offset {sign.text}{num.text} out of range", sign)
    return _Mem(reg.num, off, reg.tok)


# --- encoding --------------------------------------------------------------------------------------


def _build(info: OpInfo, *, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, next_imm: int = 0) -> Instruction:
    """An instruction of the row ``info``, with its variant field set."""
    if info.variant_field == "off":
        off = info.variant
    elif info.variant_field == "imm":
        imm = info.variant
    elif info.variant_field == "src":
        src = info.variant
    return Instruction(info.opcode, dst, src, off, imm, next_imm)


class _Assembler:
    """State of one assembly run: instructions, labels and the label references to patch."""

    def __init__(self, maps: Mapping[str, int] | None, *, any_register: bool = False) -> None:
        self.maps = maps
        self.any_register = any_register
        self.insns: list[Instruction] = []
        self.slot = 0
        self.labels: dict[str, int] = {}
        self.fixups: list[_Fixup] = []
        # A verifier log (`N: (op) text`) shows an instruction once per visit and follows paths
        # out of order: its numbers place each instruction. `log_base` is the slot of number 0.
        self.in_log = False
        self.log_base: int | None = None
        self.log_seen: dict[int, str] = {}  # number -> text of the instructions placed
        self.pending: dict[int, tuple[int, str, str]] = {}  # number -> (line, text, body) ahead of its turn
        self.after_log_insn = False  # the previous line was a `N: (op) text` instruction

    def define(self, cur: _Cursor, name: str, tok: _Tok) -> None:
        if name in self.labels:
            raise cur.error(f"duplicate label '{name}'", tok)
        self.labels[name] = self.slot

    def line(self, lineno: int, text: str) -> None:
        after_log_insn, self.after_log_insn = self.after_log_insn, False
        if _SECTION_RE.match(text):  # objdump numbers each section from 0
            self.check_pending()
            self.log_base = None
        if _IGNORED_RE.match(text) or (self.in_log and _LOG_ONLY_RE.match(text)):
            return
        stop = len(text)
        if (m := _COMMENT_RE.search(text)) is not None:
            stop = m.start()
        code = text[:stop]
        empty = _Cursor([], lineno, text, stop + 1)
        if (m := _HEADER_RE.match(code)) is not None:
            self.define(empty, m["name"], _Tok("name", m["name"], m.start("name") + 1))
            return
        prefix = _PREFIX_RE.match(code)
        assert prefix is not None  # every part of it is optional
        start = prefix.end()
        lddw_hint = prefix["op"] is not None and int(prefix["op"], 16) == _LDDW_OPCODE
        raw = bytes.fromhex("".join(prefix["raw"].split())) if prefix["raw"] else None
        raw_col = prefix.start("raw") + len(prefix["raw"] or "") - len((prefix["raw"] or "").lstrip()) + 1
        if prefix["op"] is not None and prefix["slot"] is not None:
            self.in_log = True
            if not self.in_turn(empty, int(prefix["slot"]), code[start:], lineno, text):
                self.after_log_insn = True
                return
        if (m := _UNKNOWN_RE.match(code, start)) is not None:
            if raw is None:
                raise AssemblerError("llvm-objdump could not decode this instruction; keep the raw bytes in the"
                                     " listing (leave out --no-show-raw-insn)", line=lineno,
                                     column=m.start("unknown") + 1, text=text)
            self.emit_raw(empty, raw, raw_col)
            return
        if (m := _ANNOTATION_RE.search(code, start)) is not None:
            stop = m.start()
        cur = _Cursor(_tokenize(text, start, stop, lineno), lineno, text, stop + 1, any_register=self.any_register)
        while (
            (tok := cur.peek()) is not None
            and tok.kind == "name"
            and not tok.text.startswith("%")
            and (colon := cur.peek(1)) is not None
            and colon.text == ":"
        ):
            self.define(cur, tok.text, tok)
            cur.pos += 2
        if cur.at_end():
            # Bytes alone are an instruction, unless they are bpftool's `opcodes` line for the one above.
            if raw is not None and not after_log_insn:
                self.emit_raw(cur, raw, raw_col)
            return
        stmt = _llvm_statement(cur, lddw_hint) if _is_llvm(cur) else _rbpf_statement(cur)
        cur.expect_end()
        if raw is not None and stmt.mnemonic == "call" and raw[0] == _CALL_OPCODE:
            # objdump prints helper and bpf-to-bpf calls alike (`call -1`); the bytes tell them apart.
            stmt = replace(stmt, mnemonic=_CALL_KINDS.get(raw[1] >> 4, "call"))
        self.emit(cur, stmt)
        self.after_log_insn = prefix["op"] is not None

    def in_turn(self, cur: _Cursor, number: int, body: str, lineno: int, text: str) -> bool:
        """Whether instruction ``number`` of a verifier log goes next; a revisit is checked and
        dropped, an instruction ahead of its turn waits in ``pending``."""
        if self.log_base is None:
            self.log_base = self.slot - number  # a listing may start anywhere
        want = self.slot - self.log_base
        key = " ".join(body.split())
        if number == want:
            self.log_seen[number] = key
            return True
        if number < want:
            seen = self.log_seen.get(number)
            if seen is None:
                where = "before the first one" if number < min(self.log_seen, default=0) else "inside an lddw"
                raise cur.error(f"instruction {number} is {where} of the listing")
        else:
            waiting = self.pending.setdefault(number, (lineno, text, key))
            seen = waiting[2]
        if seen != key:
            raise cur.error(f"instruction {number} was given before as '{seen}'")
        return False

    def drain(self) -> None:
        """Place the verifier-log instructions that waited for the ones before them."""
        while self.pending and self.log_base is not None and (self.slot - self.log_base) in self.pending:
            lineno, text, _ = self.pending.pop(self.slot - self.log_base)
            self.line(lineno, text)

    def check_pending(self) -> None:
        if self.pending and self.log_base is not None:
            number = min(self.pending)
            lineno, text, _ = self.pending[number]
            raise AssemblerError(f"instruction {self.slot - self.log_base} is missing from the listing (it goes on"
                                 f" with instruction {number})", line=lineno, column=1, text=text)

    def emit_raw(self, cur: _Cursor, raw: bytes, col: int) -> None:
        """Instructions given only as their bytes (objdump's `<unknown>`, a hex line)."""
        try:
            insns = decode(raw)
        except DecodeError as exc:
            raise cur.error(f"the bytes are no valid instruction: {exc.message}", _Tok("num", "", col)) from None
        for insn in insns:
            self.insns.append(insn)
            self.slot += insn.width

    def emit(self, cur: _Cursor, stmt: _Statement) -> None:
        rows = BY_MNEMONIC.get(stmt.mnemonic)
        if not rows:  # an LLVM form with no encoding, such as `w0 = (s32)w1`
            raise cur.error(f"no such instruction ({stmt.mnemonic})", stmt.tok)
        sig = _SIGNATURES[rows[0].kind]
        ops = stmt.operands
        if len(ops) != len(sig):
            plural = "" if len(sig) == 1 else "s"
            raise cur.error(f"{stmt.mnemonic} expects {len(sig)} operand{plural}, got {len(ops)}", stmt.tok)
        for code, operand in zip(sig, ops, strict=True):
            if not _fits(code, operand):
                message = "bad memory operand: expected [rN+off]" if code == "M" else f"expected {_EXPECTED[code]}"
                raise cur.error(message, operand.tok)
        info = rows[0]
        if "V" in sig:
            reg_src = isinstance(ops[1], _Reg)
            info = next(r for r in rows if r.reg_src == reg_src)
        insn, label, field = self.encode(cur, info, ops)
        if label is not None:
            self.fixups.append(_Fixup(len(self.insns), self.slot, field, label, cur.line, cur.text))
        self.insns.append(insn)
        self.slot += insn.width

    def encode(self, cur: _Cursor, info: OpInfo, ops: tuple[_Operand, ...]) -> tuple[Instruction, _Name | None, str]:
        """The instruction for checked operands, plus a label still to resolve and its field."""
        kind = info.kind

        def reg(i: int) -> int:
            operand = ops[i]
            assert isinstance(operand, _Reg)
            return operand.num

        def mem(i: int) -> _Mem:
            operand = ops[i]
            assert isinstance(operand, _Mem)
            return operand

        def imm(i: int) -> int:
            operand = ops[i]
            assert isinstance(operand, _Num)
            return cur.imm32(operand)

        def target(i: int, field: str) -> tuple[int, _Name | None]:
            operand = ops[i]
            if isinstance(operand, _Name):
                return 0, operand
            assert isinstance(operand, _Num)
            return cur.offset(operand, wide=field == "imm"), None

        if kind is Kind.ALU:
            if info.reg_src:
                return _build(info, dst=reg(0), src=reg(1)), None, ""
            return _build(info, dst=reg(0), imm=imm(1)), None, ""
        if kind in (Kind.NEG, Kind.END, Kind.BSWAP, Kind.CALLX):
            return _build(info, dst=reg(0)), None, ""
        if kind is Kind.MOVSX:
            return _build(info, dst=reg(0), src=reg(1)), None, ""
        if kind is Kind.LDDW:
            return self.lddw(cur, info, reg(0), ops[1])
        if kind in (Kind.LDX, Kind.LDXSX):
            m = mem(1)
            return _build(info, dst=reg(0), src=m.reg, off=m.off), None, ""
        if kind is Kind.ST:
            m = mem(0)
            return _build(info, dst=m.reg, off=m.off, imm=imm(1)), None, ""
        if kind in (Kind.STX, Kind.ATOMIC):
            m = mem(0)
            return _build(info, dst=m.reg, src=reg(1), off=m.off), None, ""
        if kind is Kind.JA:
            field = "imm" if Field.IMM in info.fields else "off"
            value, label = target(0, field)
            return _build(info, **{field: value}), label, field
        if kind is Kind.MAY_GOTO:
            off, label = target(0, "off")
            return _build(info, off=off), label, "off"
        if kind is Kind.JCOND:
            off, label = target(2, "off")
            if info.reg_src:
                return _build(info, dst=reg(0), src=reg(1), off=off), label, "off"
            return _build(info, dst=reg(0), imm=imm(1), off=off), label, "off"
        if kind is Kind.CALL_LOCAL:
            value, label = target(0, "imm")
            return _build(info, imm=value), label, "imm"
        if kind in (Kind.CALL, Kind.CALL_KFUNC, Kind.LD_ABS):
            return _build(info, imm=imm(0)), None, ""
        if kind is Kind.LD_IND:
            return _build(info, src=reg(0), imm=imm(1)), None, ""
        assert kind is Kind.EXIT
        return _build(info), None, ""

    def lddw(self, cur: _Cursor, info: OpInfo, dst: int, value: _Operand) -> tuple[Instruction, _Name | None, str]:
        if isinstance(value, _Num):
            v = cur.imm64(value)
            return _build(info, dst=dst, imm=sign_extend(v, 32), next_imm=sign_extend(v >> 32, 32)), None, ""
        assert isinstance(value, _Pseudo)
        ref = value.value
        if isinstance(ref, _Num):
            imm = cur.imm32(ref)
        elif value.src is PseudoSrc.FUNC:
            return _build(info, dst=dst, src=value.src, next_imm=value.next_imm), ref, "imm"
        else:
            handle = None if self.maps is None else self.maps.get(ref.name)
            if handle is None:
                raise cur.error(f"unknown map {ref.name}", ref.tok)
            if not INT32_MIN <= handle <= MASK32:
                raise cur.error(f"map handle {handle} of {ref.name} out of range", ref.tok)
            imm = sign_extend(handle, 32)
        return _build(info, dst=dst, src=value.src, imm=imm, next_imm=value.next_imm), None, ""

    def finish(self) -> list[Instruction]:
        if "exit" not in self.labels:  # predefined: the first exit instruction
            slot = 0
            for insn in self.insns:
                if BY_MNEMONIC["exit"][0].opcode == insn.opcode:
                    self.labels["exit"] = slot
                    break
                slot += insn.width
        for fix in self.fixups:
            name = fix.label.name
            if name not in self.labels:
                raise AssemblerError(f"unknown label {name}", line=fix.line, column=fix.label.tok.col, text=fix.text)
            delta = self.labels[name] - (fix.slot + 1)
            lo, hi = (INT32_MIN, INT32_MAX) if fix.field == "imm" else (INT16_MIN, INT16_MAX)
            if not lo <= delta <= hi:
                raise AssemblerError(
                    f"offset {delta} to label {name} out of range", line=fix.line, column=fix.label.tok.col,
                    text=fix.text,
                )
            self.insns[fix.index] = replace(self.insns[fix.index], **{fix.field: delta})
        return self.insns


def _fits(code: str, operand: _Operand) -> bool:
    if code == "R":
        return isinstance(operand, _Reg)
    if code == "V":
        return isinstance(operand, _Reg | _Num)
    if code == "N":
        return isinstance(operand, _Num)
    if code == "M":
        return isinstance(operand, _Mem)
    if code == "T":
        return isinstance(operand, _Num | _Name)
    return isinstance(operand, _Num | _Pseudo)


def assemble_instructions(text: str, *, maps: Mapping[str, int] | None = None,
                          any_register: bool = False) -> list[Instruction]:
    """Assemble ``text`` into instructions; ``maps`` resolves `map:NAME` references to handles.

    Raises AssemblerError (with 1-based line and column) for anything that cannot be assembled,
    r11-r15 included unless ``any_register`` (they fit the register field, and tests of decoders
    need such bytecode, but no program can use them).
    """
    if not isinstance(text, str):
        raise TypeError(f"assemble takes the program's text (a str), not {type(text).__name__}")
    if maps is not None and not isinstance(maps, Mapping):
        raise TypeError(f"maps must map names to handles (a dict), not {type(maps).__name__}")
    asm = _Assembler(maps, any_register=any_register)
    for lineno, line in enumerate(text.split("\n"), 1):
        asm.line(lineno, line)
        asm.drain()
    asm.check_pending()
    return asm.finish()


def assemble(text: str, *, maps: Mapping[str, int] | None = None, any_register: bool = False) -> bytes:
    """Assemble ``text`` into bytecode (8-byte slots, little-endian); see ``assemble_instructions``."""
    return encode(assemble_instructions(text, maps=maps, any_register=any_register))
