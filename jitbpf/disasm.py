"""Disassembler: eBPF instructions to uBPF-dialect or LLVM/kernel-syntax text that assembles back unchanged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

from jitbpf.asm import LLVM_ALU_OPS, LLVM_CONDITIONS, LLVM_LOCK_OPS, PSEUDO_NAMES
from jitbpf.errors import DecodeError
from jitbpf.isa import Field, Instruction, Kind, OpInfo, PseudoSrc, decode, lookup

__all__ = ["SYNTAXES", "disassemble", "format_instruction"]

SYNTAXES: Final = ("ubpf", "llvm")

_ALU_SYMBOLS: Final[Mapping[str, str]] = MappingProxyType({m: op for op, m in LLVM_ALU_OPS.items()} | {"mov": "="})
_COND_SYMBOLS: Final[Mapping[str, str]] = MappingProxyType({m: op for op, m in LLVM_CONDITIONS.items()})
_LOCK_SYMBOLS: Final[Mapping[str, str]] = MappingProxyType({m: op for op, m in LLVM_LOCK_OPS.items()})
_PSEUDO_PREFIX: Final[Mapping[int, str]] = MappingProxyType(
    {int(src): name for name, src in reversed(list(PSEUDO_NAMES.items()))}  # the short "map" wins for MAP_FD
)
_VALUE_PSEUDOS: Final = frozenset({PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX_VALUE})


def _target(rel: int, pc: int | None, labels: Mapping[int, str] | None) -> str:
    """A jump or call target: the label of the target slot when known, else a signed offset."""
    if labels is not None and pc is not None:
        name = labels.get(pc + 1 + rel)
        if name is not None:
            return name
    return f"{rel:+d}"


def _addr(reg: int, off: int, *, llvm: bool) -> str:
    if llvm:
        return f"(r{reg} {'-' if off < 0 else '+'} {abs(off)})"
    return f"[r{reg}{off:+d}]"


def _helper_id(imm: int) -> str:
    # A signed `call -1` reads as a pc-relative call (llvm-objdump's unlinked bpf-to-bpf calls).
    return str(imm) if imm >= 0 else f"{imm & 0xFFFF_FFFF:#x}"


def _lddw_value(insn: Instruction, pc: int | None, labels: Mapping[int, str] | None) -> str:
    if insn.src == PseudoSrc.IMM64:
        return f"0x{insn.imm64:x}"
    prefix = _PSEUDO_PREFIX.get(insn.src)
    if prefix is None:
        raise DecodeError("invalid source register for LDDW", pc=pc)
    value = _target(insn.imm, pc, labels) if insn.src == PseudoSrc.FUNC else str(insn.imm)
    if insn.next_imm or insn.src in _VALUE_PSEUDOS:
        value += f"{insn.next_imm:+d}"
    return f"{prefix}:{value}"


def _base(info: OpInfo) -> str:
    """The mnemonic without its 32-bit suffix."""
    return info.mnemonic if info.is64 else info.mnemonic.removesuffix("32")


def _ubpf(insn: Instruction, info: OpInfo, pc: int | None, labels: Mapping[int, str] | None) -> str:
    kind, m = info.kind, info.mnemonic
    d, s = f"r{insn.dst}", f"r{insn.src}"
    match kind:
        case Kind.ALU:
            return f"{m} {d}, {s if info.reg_src else insn.imm}"
        case Kind.NEG | Kind.END | Kind.BSWAP:
            return f"{m} {d}"
        case Kind.MOVSX:
            return f"{m} {d}, {s}"
        case Kind.LDDW:
            return f"lddw {d}, {_lddw_value(insn, pc, labels)}"
        case Kind.LDX | Kind.LDXSX:
            return f"{m} {d}, {_addr(insn.src, insn.off, llvm=False)}"
        case Kind.ST:
            return f"{m} {_addr(insn.dst, insn.off, llvm=False)}, {insn.imm}"
        case Kind.STX | Kind.ATOMIC:
            return f"{m} {_addr(insn.dst, insn.off, llvm=False)}, {s}"
        case Kind.JA:
            rel = insn.imm if Field.IMM in info.fields else insn.off
            return f"{m} {_target(rel, pc, labels)}"
        case Kind.JCOND:
            return f"{m} {d}, {s if info.reg_src else insn.imm}, {_target(insn.off, pc, labels)}"
        case Kind.MAY_GOTO:
            return f"may_goto {_target(insn.off, pc, labels)}"
        case Kind.CALL:
            return f"call {_helper_id(insn.imm)}"
        case Kind.CALL_LOCAL:
            return f"call local {_target(insn.imm, pc, labels)}"
        case Kind.CALL_KFUNC:
            return f"call runtime {insn.imm}"
        case Kind.CALLX:
            return f"call {d}"
        case Kind.EXIT:
            return "exit"
        case Kind.LD_ABS:
            return f"{m} {insn.imm}"
        case Kind.LD_IND:
            return f"{m} {s}, {insn.imm}"
    raise AssertionError(kind)  # every Kind is handled above


def _llvm(insn: Instruction, info: OpInfo, pc: int | None, labels: Mapping[int, str] | None) -> str:
    kind = info.kind
    p = "r" if info.is64 else "w"  # 32-bit ALU and JMP32 operate on the w sub-registers
    d, s = f"{p}{insn.dst}", f"{p}{insn.src}"
    bits = info.size * 8
    match kind:
        case Kind.ALU:
            return f"{d} {_ALU_SYMBOLS[_base(info)]} {s if info.reg_src else insn.imm}"
        case Kind.NEG:
            return f"{d} = -{d}"
        case Kind.MOVSX:
            return f"{d} = (s{info.op}){s}"
        case Kind.END | Kind.BSWAP:
            return f"r{insn.dst} = {info.mnemonic} r{insn.dst}"
        case Kind.LDDW:
            return f"r{insn.dst} = {_lddw_value(insn, pc, labels)} ll"
        case Kind.LDX | Kind.LDXSX:
            sign = "s" if kind is Kind.LDXSX else "u"
            return f"r{insn.dst} = *({sign}{bits} *){_addr(insn.src, insn.off, llvm=True)}"
        case Kind.ST:
            return f"*(u{bits} *){_addr(insn.dst, insn.off, llvm=True)} = {insn.imm}"
        case Kind.STX:
            return f"*(u{bits} *){_addr(insn.dst, insn.off, llvm=True)} = r{insn.src}"
        case Kind.ATOMIC:
            return _llvm_atomic(insn, info)
        case Kind.JA:
            if Field.IMM in info.fields:
                return f"gotol {_target(insn.imm, pc, labels)}"
            return f"goto {_target(insn.off, pc, labels)}"
        case Kind.MAY_GOTO:
            return f"may_goto {_target(insn.off, pc, labels)}"
        case Kind.JCOND:
            rhs = s if info.reg_src else insn.imm
            return f"if {d} {_COND_SYMBOLS[_base(info)]} {rhs} goto {_target(insn.off, pc, labels)}"
        case Kind.CALL:
            return f"call {_helper_id(insn.imm)}"
        case Kind.CALL_LOCAL:
            target = _target(insn.imm, pc, labels)
            return f"call {target}" if target[0] not in "+-" else f"call pc{target}"
        case Kind.CALL_KFUNC:
            return f"call runtime {insn.imm}"
        case Kind.CALLX:
            return f"callx r{insn.dst}"
        case Kind.EXIT:
            return "exit"
        case Kind.LD_ABS:
            return f"r0 = *(u{bits} *)skb[{insn.imm}]"
        case Kind.LD_IND:
            sign = "-" if insn.imm < 0 else "+"
            return f"r0 = *(u{bits} *)skb[r{insn.src} {sign} {abs(insn.imm)}]"
    raise AssertionError(kind)  # every Kind is handled above


def _llvm_atomic(insn: Instruction, info: OpInfo) -> str:
    """LLVM's spellings: `lock *(u64 *)(r1 + 0) += r2`, `r2 = atomic_fetch_add((u64 *)(r1 + 0), r2)`,
    `r2 = xchg_64(r1 + 0, r2)`, `r0 = cmpxchg_64(r1 + 0, r0, r2)` (w registers and `32_32` for 32 bits)."""
    p = "r" if info.is64 else "w"
    src = f"{p}{insn.src}"
    addr = _addr(insn.dst, insn.off, llvm=True)
    words = info.mnemonic.split()
    op = words[-1].removesuffix("32")
    if op in ("xchg", "cmpxchg"):
        suffix = "_64" if info.is64 else "32_32"
        bare = addr[1:-1]
        if op == "xchg":
            return f"{src} = xchg{suffix}({bare}, {src})"
        return f"{p}0 = cmpxchg{suffix}({bare}, {p}0, {src})"
    cast = f"(u{info.size * 8} *){addr}"
    if words[1] == "fetch":
        return f"{src} = atomic_fetch_{op}({cast}, {src})"
    return f"lock *{cast} {_LOCK_SYMBOLS[op]} {src}"


def format_instruction(
    insn: Instruction,
    pc: int | None = None,
    *,
    syntax: str = "ubpf",
    labels: Mapping[int, str] | None = None,
) -> str:
    """One instruction as assembler text.

    ``syntax`` is "ubpf" (rbpf/uBPF mnemonics) or "llvm" (LLVM/kernel style). Jump and call
    targets print as ``+N``/``-N`` unless ``pc`` is given and ``labels`` names the target slot.
    Raises DecodeError for an instruction the opcode table does not know.
    """
    info = lookup(insn, pc)
    if syntax == "ubpf":
        return _ubpf(insn, info, pc, labels)
    if syntax == "llvm":
        return _llvm(insn, info, pc, labels)
    raise ValueError(f"unknown syntax {syntax!r}; expected one of {', '.join(SYNTAXES)}")


def disassemble(
    code: bytes | bytearray | memoryview | Sequence[Instruction],
    *,
    syntax: str = "ubpf",
    show_pc: bool = False,
) -> str:
    """A program as text, one instruction per line (no trailing newline).

    Bytecode is decoded first, so invalid bytecode raises DecodeError. ``show_pc`` prefixes each
    line with its slot number (``  3: ``), which the assembler skips.
    """
    if isinstance(code, str):
        raise TypeError("disassemble takes bytecode or Instructions, not text")
    insns = decode(code) if isinstance(code, bytes | bytearray | memoryview) else list(code)
    lines: list[str] = []
    pc = 0
    for insn in insns:
        text = format_instruction(insn, pc, syntax=syntax)
        lines.append(f"{pc:4d}: {text}" if show_pc else text)
        pc += insn.width
    return "\n".join(lines)
