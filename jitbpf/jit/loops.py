"""Loop versioning: finds the self-looping blocks whose memory accesses walk a pointer forward to a
bound, so that the JIT can check the whole range once on entry and run an unchecked copy.

The shape (what clang emits for ``for (p = buf; p < end; p++) ... *p ...``)::

    loop:  ... ldxb rD, [rX+off] ...     accesses at rX, before or after the step
           add rX, c                     the only write to rX in the block (c > 0)
           jlt rX, rY, loop              (or jgt rY, rX): rY not written in the block

Every access of an iteration is at rX_i + off', with off' = off (before the step) or off + c
(after it), and rX_i is the entry value or below rY. So all of them lie in
[rX_0 + lo, max(rX_0, rY - 1) + hi), lo and hi being the extremes of off' and off' + size: one
range check on entry proves every access of the loop in bounds of mem, or the checked copy runs.
The same bounds give the number of passes, floor((max(rX_0, rY - 1) - rX_0) / c) + 1: the loop
has no other way out, so its whole budget can be charged on entry too.
"""

from __future__ import annotations

from dataclasses import dataclass

from jitbpf.cfg import Block, ControlFlow, register_writes
from jitbpf.isa import FP, AluOp, JmpOp, Kind

_ACCESS = frozenset({Kind.LDX, Kind.LDXSX, Kind.ST, Kind.STX})  # accesses the range check covers
_NO_LOOP = frozenset({Kind.CALL, Kind.CALLX, Kind.CALL_LOCAL, Kind.CALL_KFUNC, Kind.EXIT, Kind.LD_ABS,
                      Kind.LD_IND})  # kinds a versioned block may not hold


@dataclass(frozen=True, slots=True)
class LoopPlan:
    """A block to emit twice: an unchecked copy behind a range check, and the ordinary one."""

    block: Block  # the self-looping block
    index: int  # rX, the pointer that walks forward
    bound: int  # rY, the loop-invariant bound it is compared with
    lo: int  # smallest offset from rX_i of a byte accessed (>= 0)
    hi: int  # one past the largest offset from rX_i of a byte accessed
    stores: bool  # some access writes (the range must be writable)
    accesses: frozenset[int]  # slots of the accesses the range check covers
    step: int  # c, what each pass adds to rX (> 0)


def plan_loops(flow: ControlFlow, reach: int) -> dict[int, LoopPlan]:
    """The versionable loops of ``flow``, by block start: those whose every access lies below
    ``rX + reach`` (``hi <= reach``), so that the target's range check computes ``rX + hi``
    without wrapping or truncation."""
    plans: dict[int, LoopPlan] = {}
    program = flow.program
    for block in flow.blocks:
        last = program.infos[block.last]
        insn = program.slots[block.last]
        if (last is None or insn is None or last.kind is not Kind.JCOND or not last.reg_src or not last.is64
                or flow.targets.get(block.last) != block.start):
            continue
        if last.op == JmpOp.JLT:
            index, bound = insn.dst, insn.src
        elif last.op == JmpOp.JGT:
            index, bound = insn.src, insn.dst
        else:
            continue
        plan = _plan(flow, block, index, bound)
        if plan is not None and plan.hi <= reach:
            plans[block.start] = plan
    return plans


def _plan(flow: ControlFlow, block: Block, index: int, bound: int) -> LoopPlan | None:
    if index == bound or FP in (index, bound):
        return None
    program = flow.program
    step = 0  # the increment, once seen
    offsets: list[tuple[int, int]] = []  # (off', size) of each covered access
    accesses: set[int] = set()
    stores = False
    for pc in range(block.start, block.last):
        insn, info = program.slots[pc], program.infos[pc]
        if insn is None or info is None:
            continue
        if info.kind in _NO_LOOP:
            return None
        writes = register_writes(insn, info)
        if writes >> bound & 1:
            return None
        if writes >> index & 1:
            is_step = (info.kind is Kind.ALU and info.op == AluOp.ADD and info.is64 and not info.reg_src
                       and insn.imm > 0)
            if not is_step or step:
                return None
            step = insn.imm
            continue
        base = insn.src if info.kind in (Kind.LDX, Kind.LDXSX) else insn.dst
        if info.kind in _ACCESS and base == index:
            off = insn.off + step  # after the step, rX already holds the next iteration's value
            if off < 0:
                return None
            offsets.append((off, info.size))
            accesses.add(pc)
            stores = stores or info.kind in (Kind.ST, Kind.STX)
    if not step or not offsets:
        return None
    lo = min(off for off, _size in offsets)
    hi = max(off + size for off, size in offsets)
    return LoopPlan(block, index, bound, lo, hi, stores, frozenset(accesses), step)
