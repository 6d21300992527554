"""The reference interpreter: each basic block is pre-translated once into a small Python
function built from the opcode table's semantics, then a dispatch loop threads the blocks.

Registers live in a list ``R``; memory goes through the run's ``MemoryMap`` (real addresses,
bounds-checked); the budget is charged per block on entry, exactly as the JIT does.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jitbpf._native import native
from jitbpf.cfg import Block, ControlFlow
from jitbpf.contract import (
    CALLBACK_HELPER_IDS,
    DRAIN_FLAGS,
    FUNCTION_ADDRESS_BASE,
    MAX_CALL_DEPTH,
    MAX_LOOP_ITERATIONS,
    MAY_GOTO_BUDGET,
    SCRATCH_POISON,
    CallbackKind,
    HelperExit,
    TailCall,
)
from jitbpf.errors import BpfError, ExecutionError, InternalError, budget_exhausted, call_too_deep, not_a_callback
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
from jitbpf.memory import MemoryMap, PacketSource, Region, legacy_offset

EXIT = -1  # block result: the function returns
CALL = -2  # block result: a local call (target in the block table)
_RETURN = -3  # the return slot of an asynchronous callback's frame: its return ends the run
CALLBACK = -3  # block result: a call of a helper that calls back into the program (bpf_loop, ...)


_A = re.compile(r"\ba\b")
_B = re.compile(r"\bb\b")


class Env:
    """What generated block code calls during one run: memory, helpers, atomics, packet loads."""

    __slots__ = ("helpers", "ld", "loops", "mm", "packet", "probe", "st")

    def __init__(self, mm: MemoryMap, helpers: Mapping[int, Helper], packet: PacketSource | None) -> None:
        self.mm = mm
        self.ld = mm.load
        self.probe = mm.probe_load
        self.st = mm.store
        self.helpers = helpers
        self.packet = packet  # what legacy LD_ABS/LD_IND read (a Region: a packet no helper moves)
        self.loops = MAY_GOTO_BUDGET  # may_goto instructions this run may still fall through

    def may_goto(self) -> bool:
        """A may_goto: jump (True) once the run's allowance is spent, else use one of it."""
        if self.loops == 0:
            return True
        self.loops -= 1
        return False

    def calls_back(self, helper_id: int) -> bool:
        """Whether the helper with this id calls back into the program (the engine runs it)."""
        helper = self.helpers.get(helper_id)
        return helper is not None and helper.callback is not None

    def start_callback(self, helper_id: int, R: list[int], pc: int, entries: frozenset[int]) -> _Callback | None:
        """Begin a call of a helper that calls back: the iteration to run, or None when the call
        fails at once (r0 is then its error, as the kernel's helper returns it)."""
        helper = self.helpers[helper_id]
        target = R[2] - FUNCTION_ADDRESS_BASE
        if target not in entries:
            raise not_a_callback(R[2], pc)
        if R[4] & ~(DRAIN_FLAGS if helper.callback is CallbackKind.USER_RINGBUF else 0):
            R[0] = -errno.EINVAL & MASK64  # no other flags are defined
            return None
        if helper.callback is CallbackKind.LOOP:
            if R[1] > MAX_LOOP_ITERATIONS:
                R[0] = -errno.E2BIG & MASK64
                return None
            return _Callback(helper.callback, target, R[3], R[1], 0)
        assert helper.callback is not None
        return _Callback(helper.callback, target, R[3], 0, R[1])

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
        """Legacy LD_ABS/LD_IND: big-endian load from the packet as the run's helpers left it
        (negative offsets as ``legacy_offset`` reads them); out of range ends the program with
        r0 = 0, as in the kernel."""
        packet = self.packet
        if packet is None:
            raise HelperExit(0)
        base, length, net = (packet.base, packet.size, 0) if isinstance(packet, Region) else packet.current()
        start = legacy_offset(offset, net)
        if start < 0 or start + size > length:
            raise HelperExit(0)
        return int.from_bytes(self.mm.read(base + start, size), "big")


class _Callback:
    """A bpf_loop, bpf_for_each_map_elem or bpf_user_ringbuf_drain call in progress: what
    each invocation of its callback gets, and how many ran."""

    __slots__ = ("count", "ctx", "cursor", "entry", "kind", "map", "nr")

    def __init__(self, kind: CallbackKind, entry: int, ctx: int, nr: int, bpf_map: int) -> None:
        self.kind = kind
        self.entry = entry  # the callback's first slot
        self.ctx = ctx  # passed through to every invocation
        self.nr = nr  # bpf_loop: iterations asked for
        self.map = bpf_map  # for_each, user_ringbuf: the map's address
        self.count = 0  # invocations that returned
        self.cursor: Any = None  # for_each, user_ringbuf: the native iteration state (a uint64_t[4])

    def next_args(self, R: list[int], key: int) -> bool:
        """Set r1-r5 for the next invocation; False when done. ``key`` is where for_each puts the
        element's key (user_ringbuf: the sample's dynptr): the bottom of the callback's frame, as
        the engine placed it (not derived from r10, which an unverified program may have changed)."""
        if self.kind is CallbackKind.LOOP:
            if self.count >= self.nr:
                return False
            R[1], R[2], R[3], R[4], R[5] = self.count, self.ctx, 0, 0, 0
            return True
        nat = native()
        if self.cursor is None:
            self.cursor = nat.ffi.new("uint64_t[4]")
        if self.kind is CallbackKind.USER_RINGBUF:
            row = self.cursor  # the drain's step takes the row the JIT keeps: [count, -, -, cursor]
            row[0] = self.count
            if not nat.lib.jb_user_ringbuf_step(self.map, key, row):
                self.count = int(row[0])  # an error the step found, or the count as it was
                return False
            R[1], R[2], R[3], R[4], R[5] = key, self.ctx, 0, 0, 0
            return True
        value = int(nat.lib.jb_for_each_step(self.map, key, self.cursor))
        if not value:
            return False
        R[1], R[2], R[3], R[4], R[5] = self.map, key, value, self.ctx, 0
        return True


@dataclass(frozen=True)
class CompiledBlocks:
    """The translated program: one Python function per block, indexed by its first slot."""

    fns: list[Callable[[list[int], Env], int] | None]  # block function per leader slot
    costs: list[int]  # budget charge per leader slot
    call_targets: dict[int, int]  # block start -> local-call target
    returns: dict[int, int]  # block start -> slot after its local call (or callback helper call)
    callbacks: dict[int, tuple[int, int]]  # block start -> (helper id, slot) of its callback helper call
    entries: frozenset[int]  # slots a callback's address may name: the functions' entries
    source: str  # the generated Python, for debugging


class Translator:
    """Turns instructions into Python statements using the opcode table's semantics."""

    def __init__(self, resolve_lddw: Callable[[int, Instruction], int], scratch: bool = False,
                 probe_loads: frozenset[int] = frozenset()) -> None:
        self.resolve_lddw = resolve_lddw
        self.scratch = scratch  # overwrite r1-r5 after helper calls (see contract.scratch_args)
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
                call = f"R[0] = E.call({helper}, R[1], R[2], R[3], R[4], R[5], {pc})"
                if kind is Kind.CALL and insn.imm in CALLBACK_HELPER_IDS:  # the block ends here
                    return [f"if E.calls_back({insn.imm}): return {CALLBACK}", call]
                if not self.scratch:
                    return [call]  # r1-r5 survive (rbpf's semantics, which the seed's fib example uses)
                return [call, f"R[1] = R[2] = R[3] = R[4] = R[5] = {SCRATCH_POISON:#x}"]
            case Kind.MAY_GOTO:
                return [f"return {targets[pc]} if E.may_goto() else {pc + 1}"]
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
                raise InternalError(f"no rule for {kind}")

    def translate(self, flow: ControlFlow) -> CompiledBlocks:
        program = flow.program
        n = len(program)
        # One module-level function per block: nested in one enclosing function, their names
        # would be that function's locals, which CPython's compiler handles in quadratic time.
        lines: list[str] = []
        call_targets: dict[int, int] = {}
        returns: dict[int, int] = {}
        callbacks: dict[int, tuple[int, int]] = {}
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
            last_insn = program.slots[block.last]
            if last is not None and last_insn is not None and last.kind is Kind.CALL \
                    and last_insn.imm in CALLBACK_HELPER_IDS:
                callbacks[block.start] = (last_insn.imm, block.last)
                returns[block.start] = block.end
        source = "\n".join(lines)
        namespace = dict(PY_NAMESPACE, ExecutionError=ExecutionError)
        exec(compile(source, "<jitbpf-interpreter>", "exec"), namespace)
        fns: list[Callable[[list[int], Env], int] | None] = [None] * n
        for block in flow.blocks:
            fns[block.start] = namespace[f"b{block.start}"]
        return CompiledBlocks(fns, costs, call_targets, returns, callbacks, frozenset(flow.callbacks.values()), source)

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
            terminated = info.kind in (Kind.JA, Kind.JCOND, Kind.MAY_GOTO, Kind.EXIT, Kind.CALL_LOCAL)
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
    entry: int = 0,
) -> int:
    """Execute from slot 0 with registers ``regs`` until the main function exits; return r0.

    ``stack_zero(frame)`` clears a frame's stack when it is entered (frame 0 = outermost).
    A non-zero ``entry`` runs the function there instead (an asynchronous callback), entered
    from depth 0 as a local call, as the JIT enters it, until it returns.
    """
    fns, costs = blocks.fns, blocks.costs
    # Per call: (return slot, r6-r9, r10, the callback iteration when a helper made the call).
    frames: list[tuple[int, int, int, int, int, int, _Callback | None]] = []
    pc = 0
    R = regs
    top = R[FP]  # the outermost frame's r10, as the engine set it: frame d ends d frames below
    stack_zero(0)
    if entry:
        frames.append((_RETURN, 0, 0, 0, 0, top, None))
        R[FP] -= STACK_SIZE
        stack_zero(1)
        pc = entry
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
                continue
            if nxt == EXIT:
                if not frames:
                    return R[0]
                ret, R[6], R[7], R[8], R[9], R[FP], loop = frames[-1]
                if loop is None:
                    frames.pop()
                    if ret == _RETURN:
                        return R[0]
                    pc = ret
                    continue
                loop.count += 1
                R[FP] -= STACK_SIZE
                stack_zero(len(frames))
                if R[0] == 0 and loop.next_args(R, top - (len(frames) + 1) * STACK_SIZE):
                    pc = loop.entry  # the callback again, in a fresh frame
                    continue
                frames.pop()
                R[FP] += STACK_SIZE
                R[0], R[1], R[2], R[3], R[4], R[5] = loop.count, 0, 0, 0, 0, 0
                pc = ret
                continue
            if len(frames) + 1 >= MAX_CALL_DEPTH:
                raise call_too_deep(pc)
            if nxt == CALL:
                frames.append((blocks.returns[pc], R[6], R[7], R[8], R[9], R[FP], None))
                R[FP] -= STACK_SIZE
                stack_zero(len(frames))
                pc = blocks.call_targets[pc]
                continue
            helper_id, call_pc = blocks.callbacks[pc]
            loop = env.start_callback(helper_id, R, call_pc, blocks.entries)
            ret = blocks.returns[pc]
            if loop is not None:
                frames.append((ret, R[6], R[7], R[8], R[9], R[FP], loop))
                R[FP] -= STACK_SIZE
                stack_zero(len(frames))
                if loop.next_args(R, top - (len(frames) + 1) * STACK_SIZE):
                    pc = loop.entry
                    continue
                frames.pop()
                R[FP] += STACK_SIZE
                R[0] = loop.count  # 0, or the error a drain's first step found
            R[1], R[2], R[3], R[4], R[5] = 0, 0, 0, 0, 0
            pc = ret
    except HelperExit as stop:
        return stop.value
    except TailCall as tail:
        tail.budget = budget  # the target continues with what this program left
        raise
