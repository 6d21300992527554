"""Program structure shared by every engine: functions, basic blocks and the structural checks
(jump targets, lddw boundaries, function ends) that must hold before anything runs."""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from jitbpf.contract import ARG_REGS, CALLBACK_HELPER_IDS
from jitbpf.errors import InternalError, VerifierError
from jitbpf.isa import (
    ATOMIC_FETCH,
    FP,
    OPCODES,
    AluOp,
    AtomicOp,
    Instruction,
    Kind,
    OpInfo,
    Program,
    PseudoSrc,
    opcode_mask,
)

DEFAULT_MAX_INSNS = 1_000_000  # the kernel's program size limit, in slots


@dataclass(frozen=True, slots=True)
class Function:
    """A bpf-to-bpf function: the slots [entry, end) of the program."""

    entry: int  # first slot (0 for the main program)
    end: int  # one past its last slot


class Block(NamedTuple):
    """A basic block: straight-line slots [start, end); control enters only at ``start``.

    Every engine charges ``cost`` instructions to the budget when it enters the block, so that
    the interpreter and the JIT stop a runaway program at the same point. (A tuple: a long
    program has one per few instructions, made faster so than dataclasses.)
    """

    start: int  # first slot
    end: int  # one past the last slot
    cost: int  # number of instructions (an lddw counts once)
    last: int  # slot of the last instruction


@dataclass(frozen=True, slots=True)
class ControlFlow:
    """The structure of a program: functions, blocks, and where every jump and call goes."""

    program: Program  # the decoded program
    functions: tuple[Function, ...]  # main program first, then local functions by address
    blocks: tuple[Block, ...]  # in address order
    block_at: dict[int, Block]  # block starting at each leader slot
    targets: dict[int, int]  # slot of each jump / local call -> target slot
    callbacks: dict[int, int]  # slot of each lddw of a function address (src=4) -> the function's entry
    # Facts derived from the fields above, found on first use: a ControlFlow never changes once
    # analyze made it (its dicts are filled before and only read after), and each fact costs a
    # pass over the program.
    _back_edges: bool | None = field(default=None, init=False, repr=False, compare=False)
    _max_insns: int | None = field(default=None, init=False, repr=False, compare=False)
    _successors: dict[int, tuple[int, ...]] | None = field(default=None, init=False, repr=False, compare=False)

    def function_of(self, pc: int) -> Function:
        for fn in reversed(self.functions):
            if fn.entry <= pc:
                return fn
        return self.functions[0]

    @property
    def entries(self) -> frozenset[int]:
        return frozenset(fn.entry for fn in self.functions)

    @property
    def has_back_edges(self) -> bool:
        """Whether some jump goes backwards (or to itself): only then can a function loop."""
        found = self._back_edges
        if found is None:
            infos = self.program.infos
            found = any(target <= pc and (info := infos[pc]) is not None and info.kind is not _CALL_LOCAL
                        for pc, target in self.targets.items())
            object.__setattr__(self, "_back_edges", found)
        return found

    @property
    def successor_map(self) -> Mapping[int, tuple[int, ...]]:
        """``successors`` of every block, by the block's start."""
        found = self._successors
        if found is None:
            found = {b.start: tuple(successors(self, b)) for b in self.blocks}
            object.__setattr__(self, "_successors", found)
        return found

    @property
    def max_insns(self) -> int:
        """Instructions one run executes at most when nothing loops or calls: each once."""
        found = self._max_insns
        if found is None:
            found = sum(b.cost for b in self.blocks)
            object.__setattr__(self, "_max_insns", found)
        return found


def register_writes(insn: Instruction, info: OpInfo) -> int:
    """Bit mask of the registers an instruction may write (bit n: rn). Helper calls write r0 (the
    VM keeps r1-r5); a local call's callee may write r0-r5."""
    kind = info.kind
    if kind in _WRITES_DST:
        return 1 << insn.dst
    if kind is _ATOMIC:
        if info.op == _CMPXCHG:
            return 1  # the old value goes to r0
        return 1 << insn.src if info.op & ATOMIC_FETCH else 0  # fetching atomics load into src
    if kind is _CALL_LOCAL:
        return 0b111111
    if kind in _WRITES_R0:
        return 1
    return 0


def register_reads(insn: Instruction, info: OpInfo, *, main: bool = True,
                   call_args: Mapping[int, int] | None = None) -> int:
    """Bit mask of the registers an instruction may read. Calls read r1-r5 (engines pass all
    five), or with ``call_args`` (helper id -> mask) the arguments a helper's signature names, as
    far as the verifier checks them; ``exit`` of a local function hands r0-r5 back; the legacy
    packet loads read the context from r6."""
    kind = info.kind
    dst, src = 1 << insn.dst, 1 << insn.src
    match kind:
        case Kind.ALU:
            return (src if info.reg_src else 0) | (0 if info.op == AluOp.MOV else dst)
        case Kind.NEG | Kind.END | Kind.BSWAP | Kind.ST:
            return dst
        case Kind.MOVSX | Kind.LDX | Kind.LDXSX:
            return src
        case Kind.LD_ABS:
            return _CTX_REG
        case Kind.LD_IND:
            return src | _CTX_REG
        case Kind.STX:
            return dst | src
        case Kind.ATOMIC:
            return dst | src | (1 if info.op == AtomicOp.CMPXCHG else 0)
        case Kind.JCOND:
            return dst | (src if info.reg_src else 0)
        case Kind.CALL:
            return ARG_REGS if call_args is None else call_args.get(insn.imm, ARG_REGS)
        case Kind.CALL_LOCAL | Kind.CALL_KFUNC:
            return ARG_REGS
        case Kind.CALLX:
            return dst | ARG_REGS
        case Kind.EXIT:
            return 1 if main else 1 | ARG_REGS
        case Kind.LDDW | Kind.JA | Kind.MAY_GOTO:
            return 0
        case _:
            raise InternalError(f"registers read by {kind}")


def successors(flow: ControlFlow, block: Block) -> list[int]:
    """Starts of the blocks control may enter after ``block``: the next block first, then a jump's
    target (a local call continues at the next block: the callee is another function)."""
    info = flow.program.infos[block.last]
    assert info is not None
    match info.kind:
        case Kind.JA:
            return [flow.targets[block.last]]
        case Kind.JCOND | Kind.MAY_GOTO:
            return [block.end, flow.targets[block.last]]
        case Kind.EXIT:
            return []
        case _:
            return [block.end]


def live_in(flow: ControlFlow, *, call_args: Mapping[int, int] | None = None) -> tuple[int, ...]:
    """Per slot, the registers that may be read from there on before being written, within the
    slot's function (a backward data-flow over the blocks; 0 for an lddw's second slot).
    ``call_args`` is ``register_reads``'s."""
    program = flow.program
    n = len(program)
    main_end = flow.functions[0].end
    slots, infos, words = program.slots, program.infos, program.words
    uses, defs = [0] * n, [0] * n
    # The registers depend on the instruction's encoding alone (and, for an exit, on its
    # function: the main program's or another's): identical instructions, most of a long
    # program's, share one look-up.
    known: tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]] = ({}, {})
    for pc in range(n):
        insn = slots[pc]
        if insn is None:
            continue
        main = pc < main_end
        cache = known[main]
        got = cache.get(words[pc])
        if got is None:
            info = infos[pc]
            assert info is not None
            got = cache[words[pc]] = (register_reads(insn, info, main=main, call_args=call_args),
                                      register_writes(insn, info))
        uses[pc], defs[pc] = got
    succ = flow.successor_map
    per_pc = [0] * n
    if not flow.has_back_edges:
        # Every successor of a block starts after it: one pass from the end is the fixpoint.
        block_in: dict[int, int] = {}
        for b in reversed(flow.blocks):
            cur = 0
            for t in succ[b.start]:
                cur |= block_in[t]
            for pc in range(b.end - 1, b.start - 1, -1):
                if slots[pc] is not None:
                    cur = uses[pc] | (cur & ~defs[pc])
                    per_pc[pc] = cur
            block_in[b.start] = cur
        return tuple(per_pc)
    block_gen_kill: dict[int, tuple[int, int]] = {}
    for b in flow.blocks:
        gen = kill = 0
        for pc in range(b.start, b.end):
            gen |= uses[pc] & ~kill
            kill |= defs[pc]
        block_gen_kill[b.start] = (gen, kill)
    block_in = {b.start: 0 for b in flow.blocks}
    changed = True
    while changed:
        changed = False
        for b in reversed(flow.blocks):
            out = 0
            for t in succ[b.start]:
                out |= block_in[t]
            gen, kill = block_gen_kill[b.start]
            new = gen | (out & ~kill)
            if new != block_in[b.start]:
                block_in[b.start], changed = new, True
    for b in flow.blocks:
        cur = 0
        for t in succ[b.start]:
            cur |= block_in[t]
        for pc in range(b.end - 1, b.start - 1, -1):
            if slots[pc] is None:
                continue
            cur = uses[pc] | (cur & ~defs[pc])
            per_pc[pc] = cur
    return tuple(per_pc)


def live_after(flow: ControlFlow, pcs: Iterable[int]) -> dict[int, int]:
    """For each slot in ``pcs``: the registers that may be read after it before being written."""
    live = live_in(flow)
    slots = flow.program.slots
    starts = [b.start for b in flow.blocks]
    result: dict[int, int] = {}
    for pc in pcs:
        block = flow.blocks[bisect.bisect_right(starts, pc) - 1]
        insn = slots[pc]
        assert insn is not None
        if pc != block.last:
            result[pc] = live[pc + insn.width]
            continue
        out = 0
        for t in flow.successor_map[block.start]:
            out |= live[t]
        result[pc] = out
    return result


def writes_fp(program: Program) -> bool:
    """Whether an instruction may change r10 (a verified program never does; unchecked ones can),
    so that engines know if ``[r10+off]`` always lies in the current stack frame."""
    slots, infos = program.slots, program.infos
    for pc in program.find_slots(_FP_WRITERS, naming_fp=True):  # the few that could
        insn, info = slots[pc], infos[pc]
        if insn is None or info is None:
            continue
        # Kinds that write their dst write r10 when it is dst; any other kind can only write it
        # as src (fetching atomics): most instructions are ruled out without the call.
        if info.kind in _WRITES_DST:
            if insn.dst == FP:
                return True
        elif insn.src == FP and register_writes(insn, info) >> FP & 1:
            return True
    return False


_BRANCHES = frozenset({Kind.JA, Kind.JCOND, Kind.MAY_GOTO, Kind.CALL_LOCAL})  # kinds with a target slot
# The next slot starts a block.
_ENDS_BLOCK = frozenset({Kind.JA, Kind.JCOND, Kind.MAY_GOTO, Kind.EXIT, Kind.CALL_LOCAL})
# The opcodes analyze looks at: block ends, calls (of helpers that call back) and lddw (of a
# function's address).
_SHAPING_OPCODES = opcode_mask(row.opcode for row in OPCODES
                               if row.kind in _ENDS_BLOCK | _BRANCHES | {Kind.CALL, Kind.LDDW})
_WRITES_DST = frozenset({Kind.ALU, Kind.NEG, Kind.END, Kind.BSWAP, Kind.MOVSX, Kind.LDDW, Kind.LDX, Kind.LDXSX})
_CTX_REG = 1 << 6  # where the legacy packet loads find the context
_WRITES_R0 = frozenset({Kind.CALL, Kind.CALLX, Kind.CALL_KFUNC, Kind.LD_ABS, Kind.LD_IND})
# Enum members as constants for register_writes, which runs once per instruction in several
# passes (class attribute lookups of enum members are slow).
_ATOMIC, _CALL_LOCAL, _CMPXCHG = Kind.ATOMIC, Kind.CALL_LOCAL, int(AtomicOp.CMPXCHG)
# Opcodes of the kinds that may write a register the instruction names (dst, or src for atomics).
_FP_WRITERS = opcode_mask(row.opcode for row in OPCODES if row.kind in _WRITES_DST or row.kind is _ATOMIC)


def jump_target(pc: int, insn: Instruction, info: OpInfo) -> int:
    """Slot a jump or local call at ``pc`` goes to (offsets count from the next slot)."""
    if info.kind is Kind.JA and not info.is64:
        return pc + 1 + insn.imm  # ja32 (gotol) keeps its offset in imm
    if info.kind is Kind.CALL_LOCAL:
        return pc + 1 + insn.imm
    return pc + 1 + insn.off


def _reject(program: Program, pc: int, message: str) -> VerifierError:
    from jitbpf.disasm import format_instruction  # the disassembler imports this module's users

    insn = program.slots[pc]
    return VerifierError(message, pc=pc, insn=format_instruction(insn, pc) if insn is not None else "")


def analyze(program: Program, *, max_insns: int = DEFAULT_MAX_INSNS) -> ControlFlow:
    """Split ``program`` into functions and blocks; raise VerifierError on a structural fault."""
    n = len(program)
    if n == 0:
        raise VerifierError("empty program")
    if n > max_insns:
        raise VerifierError(f"too many instructions ({n} > max {max_insns})")
    targets: dict[int, int] = {}
    callbacks: dict[int, int] = {}
    entries = {0}
    leaders: set[int] = set()  # starts of blocks: entries, jump targets, slots after a branch
    slots, infos = program.slots, program.infos
    for pc in program.find_slots(_SHAPING_OPCODES):  # (only these end blocks or name other slots)
        insn, info = slots[pc], infos[pc]
        if insn is None or info is None:
            continue
        kind = info.kind
        if kind in _ENDS_BLOCK or (kind is Kind.CALL and insn.imm in CALLBACK_HELPER_IDS):
            leaders.add(pc + insn.width)
        if kind is Kind.LDDW and insn.src == PseudoSrc.FUNC:
            # A callback's address: the function there is entered by the helper given it.
            target = pc + 1 + insn.imm
            if not 0 <= target < n or program.slots[target] is None:
                raise _reject(program, pc, "lddw of a function address outside the program")
            callbacks[pc] = target
            entries.add(target)
        if kind in _BRANCHES:
            target = jump_target(pc, insn, info)
            if not 0 <= target < n:
                raise _reject(program, pc, f"jump out of bounds (jump out of range from insn {pc} to {target})"
                              if info.kind is not Kind.CALL_LOCAL else "call to an address outside the program")
            if program.slots[target] is None:
                raise _reject(program, pc, "jump to middle of lddw")
            targets[pc] = target
            if kind is Kind.CALL_LOCAL:
                entries.add(target)
            else:
                leaders.add(target)
    starts = sorted(entries)
    functions = tuple(Function(s, e) for s, e in zip(starts, [*starts[1:], n], strict=True))
    if len(functions) > 1:
        fn_index = 0
        for pc, target in sorted(targets.items()):
            while fn_index + 1 < len(functions) and pc >= functions[fn_index + 1].entry:
                fn_index += 1
            fn = functions[fn_index]
            info = infos[pc]
            if info is not None and info.kind is not Kind.CALL_LOCAL and not fn.entry <= target < fn.end:
                raise _reject(program, pc, f"jump out of bounds (jump out of range from insn {pc} to {target}: "
                                           "into another function)")
    for fn in functions:
        last = fn.end - 1
        if program.slots[last] is None:
            last -= 1
        last_info = program.infos[last]
        assert last_info is not None
        if last_info.kind not in (Kind.EXIT, Kind.JA):
            raise _reject(program, last, "function does not end with exit or an unconditional jump"
                          if fn.entry else "program does not end with exit or an unconditional jump")
    leaders |= entries
    leaders.discard(n)
    ordered = sorted(leaders)
    # Instructions before each slot (an lddw counts once): block costs by subtraction.
    seen = list(itertools.accumulate(map(operator.is_not, slots, itertools.repeat(None)), initial=0))
    blocks: list[Block] = []
    new = tuple.__new__
    for start, end in zip(ordered, [*ordered[1:], n], strict=True):
        last = end - 1 if slots[end - 1] is not None else end - 2
        blocks.append(new(Block, (start, end, seen[end] - seen[start], last)))
    return ControlFlow(program, functions, tuple(blocks), {b.start: b for b in blocks}, targets, callbacks)
