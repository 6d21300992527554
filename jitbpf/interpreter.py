"""The reference interpreter: each basic block is pre-translated once into a small Python
function built from the opcode table's semantics, then a dispatch loop threads the blocks.

Registers live in a list ``R``; memory goes through the run's ``MemoryMap`` (real addresses,
bounds-checked); the budget is charged per block on entry, exactly as the JIT does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from jitbpf.cfg import Block, ControlFlow
from jitbpf.contract import MAX_CALL_DEPTH, HelperExit, TailCall
from jitbpf.errors import BpfError, ExecutionError, budget_exhausted, call_too_deep
from jitbpf.helpers import Helper
from jitbpf.isa import (
    ATOMIC_FETCH,
    FP,
    MASK32,
    MASK64,
    PY_NAMESPACE,
    STACK_SIZE,
    AluOp,
    AtomicOp,
    Instruction,
    Kind,
    OpInfo,
)
from jitbpf.memory import MemoryMap

EXIT = -1  # block result: the function returns
CALL = -2  # block result: a local call (target in the block table)


_A = re.compile(r"\ba\b")
_B = re.compile(r"\bb\b")


class Env:
    """What generated block code calls during one run: memory, helpers, atomics, packet loads."""

    __slots__ = ("helpers", "ld", "mm", "packet", "probe", "st")

    def __init__(self, mm: MemoryMap, helpers: Mapping[int, Helper], packet: tuple[int, int]) -> None:
        self.mm = mm
        self.ld = mm.load
        self.probe = mm.probe_load
        self.st = mm.store
        self.helpers = helpers
        self.packet = packet  # (address, length) seen by legacy LD_ABS/LD_IND

    def call(self, helper_id: int, a: int, b: int, c: int, d: int, e: int, pc: int) -> int:
        helper = self.helpers.get(helper_id)
        if helper is None:
            raise ExecutionError(f"call to unknown helper {helper_id}", pc=pc)
        try:
            return int(helper.fn(a, b, c, d, e)) & MASK64
        except TailCall:
            raise
        except (HelperExit, BpfError) as exc:
            if isinstance(exc, ExecutionError) and exc.pc is None:
                raise ExecutionError(f"helper {helper.name} failed: {exc.message}", pc=pc,
                                     address=exc.address) from exc
            raise
        except Exception as exc:
            raise ExecutionError(f"helper {helper.name} raised {type(exc).__name__}: {exc}", pc=pc) from exc

    def atomic(self, addr: int, size: int, op: int, R: list[int], src: int, pc: int) -> None:
        mask = (1 << (8 * size)) - 1
        old = self.ld(addr, size, pc)
        val = R[src] & mask
        base = op & ~ATOMIC_FETCH
        if op == AtomicOp.CMPXCHG:
            if old == R[0] & mask:
                self.st(addr, size, val, pc)
            R[0] = old
            return
        if op == AtomicOp.XCHG:
            new = val
        elif base == AtomicOp.ADD:
            new = old + val
        elif base == AtomicOp.OR:
            new = old | val
        elif base == AtomicOp.AND:
            new = old & val
        else:
            new = old ^ val
        self.st(addr, size, new & mask, pc)
        if op & ATOMIC_FETCH:
            R[src] = old

    def ld_packet(self, offset: int, size: int) -> int:
        """Legacy LD_ABS/LD_IND: big-endian load from the packet; out of range ends the program
        with r0 = 0, as in the kernel."""
        base, length = self.packet
        if offset < 0 or offset + size > length:
            raise HelperExit(0)
        return int.from_bytes(self.mm.read(base + offset, size), "big")


@dataclass(frozen=True)
class CompiledBlocks:
    """The translated program: one Python function per block, indexed by its first slot."""

    fns: list[Callable[[list[int], Env], int] | None]  # block function per leader slot
    costs: list[int]  # budget charge per leader slot
    call_targets: dict[int, int]  # block start -> local-call target
    returns: dict[int, int]  # block start -> slot after its local call
    source: str  # the generated Python, for debugging


class Translator:
    """Turns instructions into Python statements using the opcode table's semantics."""

    def __init__(self, resolve_lddw: Callable[[int, Instruction], int],
                 probe_loads: frozenset[int] = frozenset()) -> None:
        self.resolve_lddw = resolve_lddw
        self.probe_loads = probe_loads  # loads whose failure gives 0 (BPF_PROBE_MEM)

    @staticmethod
    def _operands(insn: Instruction, info: OpInfo) -> tuple[str, str]:
        m = "M64" if info.width == 64 else "M32"
        a = f"R[{insn.dst}]" if info.width == 64 else f"(R[{insn.dst}] & M32)"
        if info.reg_src:
            b = f"R[{insn.src}]" if info.width == 64 else f"(R[{insn.src}] & M32)"
        else:
            b = str(insn.imm & (MASK64 if info.width == 64 else MASK32))
        del m
        return a, b

    @staticmethod
    def _expr(template: str, a: str, b: str) -> str:
        return _B.sub(b, _A.sub(a, template))

    def statement(self, pc: int, insn: Instruction, info: OpInfo, targets: Mapping[int, int]) -> list[str]:
        d, s, off = insn.dst, insn.src, insn.off
        mask = "M64" if info.width == 64 else "M32"
        kind = info.kind
        match kind:
            case Kind.ALU:
                a, b = self._operands(insn, info)
                if info.op == AluOp.MOV:
                    return [f"R[{d}] = {b}" if info.width == 64 else f"R[{d}] = {b} & M32"]
                return [f"R[{d}] = ({self._expr(info.py, a, b)}) & {mask}"]
            case Kind.NEG:
                return [f"R[{d}] = -R[{d}] & {mask}"]
            case Kind.MOVSX:
                return [f"R[{d}] = sx{info.op}(R[{s}]) & {mask}"]
            case Kind.END:
                if info.reg_src:  # be: swap (x86 is little-endian)
                    return [f"R[{d}] = bswap(R[{d}], {info.op})"]
                return [f"R[{d}] &= {(1 << info.op) - 1:#x}"]
            case Kind.BSWAP:
                return [f"R[{d}] = bswap(R[{d}], {info.op})"]
            case Kind.LDDW:
                return [f"R[{d}] = {self.resolve_lddw(pc, insn):#x}"]
            case Kind.LDX:
                load = "E.probe" if pc in self.probe_loads else "E.ld"
                return [f"R[{d}] = {load}((R[{s}] + {off}) & M64, {info.size}, {pc})"]
            case Kind.LDXSX:
                load = "E.probe" if pc in self.probe_loads else "E.ld"
                return [f"R[{d}] = sx{info.size * 8}({load}((R[{s}] + {off}) & M64, {info.size}, {pc})) & M64"]
            case Kind.ST:
                return [f"E.st((R[{d}] + {off}) & M64, {info.size}, {insn.imm & MASK64:#x}, {pc})"]
            case Kind.STX:
                return [f"E.st((R[{d}] + {off}) & M64, {info.size}, R[{s}], {pc})"]
            case Kind.ATOMIC:
                return [f"E.atomic((R[{d}] + {off}) & M64, {info.size}, {info.op}, R, {s}, {pc})"]
            case Kind.JA:
                return [f"return {targets[pc]}"]
            case Kind.JCOND:
                a, b = self._operands(insn, info)
                return [f"return {targets[pc]} if {self._expr(info.py, a, b)} else {pc + 1}"]
            case Kind.CALL | Kind.CALLX:
                helper = str(insn.imm) if kind is Kind.CALL else f"R[{d}]"
                # r1-r5 survive helper calls (rbpf's semantics, which the seed's fib example uses).
                return [f"R[0] = E.call({helper}, R[1], R[2], R[3], R[4], R[5], {pc})"]
            case Kind.CALL_LOCAL:
                return [f"return {CALL}"]
            case Kind.EXIT:
                return [f"return {EXIT}"]
            case Kind.LD_ABS:
                return [f"R[0] = E.ld_packet({insn.imm}, {info.size})"]
            case Kind.LD_IND:
                return [f"R[0] = E.ld_packet(sx32((R[{s}] + {insn.imm}) & M32), {info.size})"]
            case Kind.CALL_KFUNC:
                return [f"raise ExecutionError('kernel function calls are not supported', pc={pc})"]
            case _:
                raise NotImplementedError(kind)

    def translate(self, flow: ControlFlow) -> CompiledBlocks:
        program = flow.program
        n = len(program)
        # One module-level function per block: nested in one enclosing function, their names
        # would be that function's locals, which CPython's compiler handles in quadratic time.
        lines: list[str] = []
        call_targets: dict[int, int] = {}
        returns: dict[int, int] = {}
        costs = [0] * n
        for block in flow.blocks:
            costs[block.start] = block.cost
            lines.append(f"def b{block.start}(R, E):")
            body = self._block_body(flow, block)
            lines.extend("    " + stmt for stmt in body)
            last = program.infos[block.last]
            if last is not None and last.kind is Kind.CALL_LOCAL:
                call_targets[block.start] = flow.targets[block.last]
                returns[block.start] = block.end
        source = "\n".join(lines)
        namespace = dict(PY_NAMESPACE, ExecutionError=ExecutionError)
        exec(compile(source, "<jitbpf-interpreter>", "exec"), namespace)
        fns: list[Callable[[list[int], Env], int] | None] = [None] * n
        for block in flow.blocks:
            fns[block.start] = namespace[f"b{block.start}"]
        return CompiledBlocks(fns, costs, call_targets, returns, source)

    def _block_body(self, flow: ControlFlow, block: Block) -> list[str]:
        program = flow.program
        body: list[str] = []
        terminated = False
        for pc in range(block.start, block.end):
            insn = program.slots[pc]
            info = program.infos[pc]
            if insn is None or info is None:
                continue
            body.extend(self.statement(pc, insn, info, flow.targets))
            terminated = info.kind in (Kind.JA, Kind.JCOND, Kind.EXIT, Kind.CALL_LOCAL)
        if not terminated:
            body.append(f"return {block.end}")
        return body


def run(
    blocks: CompiledBlocks,
    regs: list[int],
    env: Env,
    *,
    budget: int,
    stack_zero: Callable[[int], None],
) -> int:
    """Execute from slot 0 with registers ``regs`` until the main function exits; return r0.

    ``stack_zero(frame)`` clears a frame's stack when it is entered (frame 0 = outermost).
    """
    fns, costs = blocks.fns, blocks.costs
    frames: list[tuple[int, int, int, int, int, int]] = []
    pc = 0
    R = regs
    stack_zero(0)
    try:
        while True:
            budget -= costs[pc]
            if budget < 0:
                raise budget_exhausted(pc)
            fn = fns[pc]
            assert fn is not None
            nxt = fn(R, env)
            if nxt >= 0:
                pc = nxt
            elif nxt == EXIT:
                if not frames:
                    return R[0]
                pc, R[6], R[7], R[8], R[9], R[FP] = frames.pop()
            else:
                if len(frames) + 1 >= MAX_CALL_DEPTH:
                    raise call_too_deep(pc)
                frames.append((blocks.returns[pc], R[6], R[7], R[8], R[9], R[FP]))
                R[FP] -= STACK_SIZE
                stack_zero(len(frames))
                pc = blocks.call_targets[pc]
    except HelperExit as stop:
        return stop.value
    except TailCall as tail:
        tail.budget = budget  # the target continues with what this program left
        raise
