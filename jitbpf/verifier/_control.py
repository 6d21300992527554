"""Control-flow analysis: reachability, back-edges, the call graph, loops, prune points and liveness."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from jitbpf import cfg
from jitbpf.cfg import ControlFlow
from jitbpf.isa import FP, OPCODES, Kind, opcode_mask


@dataclass(frozen=True)
class Control:
    """What the data-flow analysis needs to know about the program's structure."""

    prune_points: frozenset[int]  # slots where states are remembered and compared
    merge_points: frozenset[int]  # prune points outside every loop, where states may be merged
    back_edges: frozenset[tuple[int, int]]  # (jump slot, target slot) closing a loop
    live_in: tuple[int, ...]  # per slot: bit mask of registers that may be read from there on
    calls: Mapping[int, frozenset[tuple[int, int]]]  # function entry -> {(call slot, callee entry)}
    function_entry: tuple[int, ...]  # per slot: entry slot of its function


Reject = Callable[[int, str], Exception]
_NOTABLE = opcode_mask(row.opcode for row in OPCODES if row.kind in (Kind.CALL_KFUNC, Kind.MAY_GOTO))


def analyze_control(flow: ControlFlow, *, arg_masks: Mapping[int, int],
                    allow_loops: bool, max_call_depth: int, reject: Reject) -> Control:
    """Check the program's structure and derive what the data-flow analysis needs.

    Rejects calls to kernel functions, unreachable code, back-edges (unless
    ``allow_loops``, or the loop holds a may_goto, which bounds it at run time), recursion and
    call chains deeper than ``max_call_depth`` frames. A callback (the function whose address an
    lddw loads) counts as called from the function of that lddw.
    """
    program = flow.program
    n = len(program)
    may_gotos: list[int] = []
    for pc in program.find_slots(_NOTABLE):  # (the few instructions whose opcode may be one of those)
        info = program.infos[pc]
        if info is not None and info.kind is Kind.CALL_KFUNC:
            raise reject(pc, "kernel function calls are not supported")
        if info is not None and info.kind is Kind.MAY_GOTO:
            may_gotos.append(pc)

    fn_entry = [0] * n
    for fn in flow.functions:
        fn_entry[fn.entry:fn.end] = [fn.entry] * (fn.end - fn.entry)

    # Depth-first search over blocks: finds what is reachable and the edges that close a cycle.
    succ = flow.successor_map
    preds: dict[int, int] = {}
    seen: set[int] = set()
    back_edges: set[tuple[int, int]] = set()
    calls: dict[int, set[tuple[int, int]]] = {}
    for pc, callback in flow.callbacks.items():
        calls.setdefault(fn_entry[pc], set()).add((pc, callback))
        preds[callback] = preds.get(callback, 0) + 1
    roots = [0, *flow.callbacks.values()]
    done_roots: set[int] = set()
    while roots:
        root = roots.pop()
        if root in done_roots:
            continue
        done_roots.add(root)
        calls.setdefault(root, set())
        on_path: set[int] = {root}
        seen.add(root)
        stack: list[tuple[int, int]] = [(root, 0)]
        while stack:
            start, i = stack[-1]
            block = flow.block_at[start]
            nxt = succ[start]
            if i == 0:
                last_info = program.infos[block.last]
                assert last_info is not None
                if last_info.kind is Kind.CALL_LOCAL:
                    callee = flow.targets[block.last]
                    calls[fn_entry[start]].add((block.last, callee))
                    preds[callee] = preds.get(callee, 0) + 1
                    roots.append(callee)
            if i < len(nxt):
                stack[-1] = (start, i + 1)
                t = nxt[i]
                preds[t] = preds.get(t, 0) + 1
                if t in on_path:
                    if not allow_loops and not _loop_has_may_goto(flow, stack, t):
                        raise reject(block.last, f"back-edge from insn {block.last} to {t}")
                    back_edges.add((block.last, t))
                elif t not in seen:
                    seen.add(t)
                    on_path.add(t)
                    stack.append((t, 0))
            else:
                stack.pop()
                on_path.discard(start)
    for block in flow.blocks:
        if block.start not in seen:
            raise reject(block.start, f"unreachable instruction (unreachable insn {block.start})")

    _check_call_graph(calls, max_call_depth, reject)

    in_loop = _blocks_in_cycles(flow, succ) if back_edges else set()
    prune = {start for start, count in preds.items() if count > 1}
    prune.update(t for _pc, t in back_edges)
    prune.update(fn.entry for fn in flow.functions)
    prune.update(may_gotos)
    merge = {pc for pc in prune if pc not in in_loop}

    live = tuple(mask | 1 << FP for mask in cfg.live_in(flow, call_args=arg_masks))  # r10: always
    return Control(frozenset(prune), frozenset(merge), frozenset(back_edges), live,
                   {k: frozenset(v) for k, v in calls.items()}, tuple(fn_entry))


def _loop_has_may_goto(flow: ControlFlow, path: list[tuple[int, int]], head: int) -> bool:
    """Whether the cycle closed by a jump to ``head`` (the blocks of ``path`` from ``head`` on)
    holds a may_goto: the kernel bounds such a loop at run time and needs no proof it ends."""
    infos = flow.program.infos
    starts = [start for start, _i in path]
    for start in starts[starts.index(head):]:
        last = infos[flow.block_at[start].last]
        if last is not None and last.kind is Kind.MAY_GOTO:
            return True
    return False


def _check_call_graph(calls: Mapping[int, set[tuple[int, int]]], max_depth: int, reject: Reject) -> None:
    """Reject recursion, and call chains of more than ``max_depth`` frames (the main one included)
    at the call that would push the frame too many."""
    deepest: dict[int, int] = {}  # function entry -> most frames it was entered with so far
    on_chain: set[int] = set()

    def visit(fn: int, frames: int) -> None:
        # The depth limit bounds this recursion (a chain longer than it is rejected first).
        if deepest.get(fn, 0) >= frames:
            return  # already explored from at least as deep: nothing new below
        deepest[fn] = frames
        on_chain.add(fn)
        for pc, callee in sorted(calls.get(fn, ())):
            if callee in on_chain:
                # (The kernel's stack-depth walk follows the cycle to its frame limit and says so.)
                raise reject(pc, f"recursive call from insn {pc} to function at {callee}: the call stack of "
                                 f"{max_depth} frames is too deep !")
            if frames + 1 > max_depth:
                raise reject(pc, f"call stack is too deep: {frames + 1} frames (max {max_depth})")
            visit(callee, frames + 1)
        on_chain.discard(fn)

    visit(0, 1)


def _blocks_in_cycles(flow: ControlFlow, succ: Mapping[int, tuple[int, ...]]) -> set[int]:
    """Starts of blocks that lie on a cycle (Tarjan's strongly connected components, iteratively)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    comp_stack: list[int] = []
    out: set[int] = set()
    counter = 0
    for b in flow.blocks:
        if b.start in index:
            continue
        work: list[tuple[int, int]] = [(b.start, 0)]
        while work:
            v, i = work[-1]
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                comp_stack.append(v)
                on_stack.add(v)
            nxt = succ[v]
            if i < len(nxt):
                work[-1] = (v, i + 1)
                w = nxt[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp: list[int] = []
                while True:
                    w = comp_stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in succ[v]:
                    out.update(comp)
    return out
