"""State pruning against the walk of every path: pruning only skips work, it never accepts a
program that walking each path to its end would reject.

The minimal cases name one rule each (a value some check depends on must match exactly, one
nobody reads need not; precision followed through the stack, through copies, across branches);
the property compares both walks on generated chains of branches over packet bytes. Where this
process may load programs, the kernel's verifier must agree with each minimal case.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jitbpf import VM, ProgType, cfg
from jitbpf.asm import assemble
from jitbpf.contract import DEFAULT_BUDGET, MAX_CALL_DEPTH
from jitbpf.isa import Program
from jitbpf.verifier import ContextSpec, VerifyResult
from jitbpf.verifier._check import Checker, Rejected
from jitbpf.verifier._state import (
    SLOTS,
    Frame,
    State,
    join_key,
    join_states,
    kinds_key,
    reg_within,
    shared_ids,
    state_within,
)
from jitbpf.verifier._types import NOT_INIT, Reg, RegType

from . import kernel_oracle
from .test_domain import abstract


def xdp_context() -> ContextSpec:
    """What r1 points to in an XDP program, as the verifier sees it."""
    with VM(assemble("mov r0, 2\nexit"), prog_type=ProgType.XDP, verify=False) as vm:
        spec = vm.context_spec()
    assert spec is not None
    return spec


XDP = xdp_context()
PACKET = 64  # bytes every program proves are in the packet before anything else
PROLOGUE = ["ldxw r2, [r1+0]", "ldxw r3, [r1+4]", "mov r4, r2", f"add r4, {PACKET}", "jgt r4, r3, out",
            "mov r6, 0", "mov r7, 0", "mov r8, 1", "stdw [r10-8], 0"]
EPILOGUE = ["out:", "mov r0, 2", "exit"]


def check(source: str, *, prune: bool, loops: bool = False) -> VerifyResult | str:
    """The verdict of one walk: the result, or the rejection's message."""
    flow = cfg.analyze(Program.from_bytes(assemble(source)))
    checker = Checker(flow, helpers={}, maps=None, context=XDP, allow_loops=loops, budget=DEFAULT_BUDGET, log=False,
                      max_call_depth=MAX_CALL_DEPTH, stack_limit=512, prune=prune)
    try:
        return checker.run()
    except Rejected as exc:
        return exc.message


def program(body: list[str]) -> str:
    return "\n".join(PROLOGUE + body + EPILOGUE)


@dataclass(frozen=True)
class Case:
    """A program body between the prologue (r2 = data with 64 bytes proven, r6 = r7 = 0, r8 = 1,
    [r10-8] = 0) and the exit, and what both walks must say."""

    name: str
    body: tuple[str, ...]
    error: str | None  # a fragment of the rejection, or None: accepted
    pruned: bool = False  # the pruned walk must have pruned something
    loops: bool = False  # loops allowed (then only the pruned walk is asked: the other never ends)


# Two arms leave r7 = 0 or r7 = 100 behind, then a join.
ARMS = ("ldxb r4, [r2+0]", "jgt r4, 10, big", "mov r7, 0", "ja join", "big:", "mov r7, 100", "join:")
CASES = (
    Case("a value a packet access depends on must match", (*ARMS, "mov r5, r2", "add r5, r7", "ldxb r0, [r5+0]"),
         "invalid access to packet"),
    Case("a value nobody reads may differ", (*ARMS, "mov r7, 3", "mov r5, r2", "add r5, r7", "ldxb r0, [r5+0]"),
         None, pruned=True),
    Case("a value nobody checks exactly may differ", (*ARMS, "add r7, 1", "mov r0, r7"), None, pruned=True),
    Case("precision is followed through a spill", (*ARMS, "stxdw [r10-16], r7", "ldxdw r9, [r10-16]",
                                                   "mov r5, r2", "add r5, r9", "ldxb r0, [r5+0]"),
         "invalid access to packet"),
    Case("precision is followed through a copy and arithmetic",
         (*ARMS, "mov r9, r7", "add r9, 1", "mov r5, r2", "add r5, r9", "ldxb r0, [r5+0]"),
         "invalid access to packet"),
    Case("a branch ties its operands", (*ARMS, "mov r9, 50", "jgt r9, r7, small", "ldxb r0, [r2+100]", "small:"),
         "invalid access to packet"),
    Case("a register followed back, then overwritten, is followed again",
         ("mov r7, 1", *(line.replace("r7", "r9") for line in ARMS), "mov r5, r2", "add r5, r7", "mov r7, r9",
          "add r5, r7", "ldxb r0, [r5+0]"), "invalid access to packet"),
    Case("an uninitialised register on one arm", ("ldxb r4, [r2+0]", "jgt r4, 10, skip", "mov r9, 1", "skip:",
                                                  "mov r0, r9"), "uninitialised register r9"),
    Case("a stack slot written on one arm only, read later",
         ("ldxb r4, [r2+0]", "jgt r4, 10, skip", "stdw [r10-24], 7", "skip:", "ldxdw r9, [r10-24]",
          "mov r5, r2", "add r5, r9", "ldxb r0, [r5+0]"), "register with unbounded min value"),
    Case("a loop back in exactly the state it left never ends", ("spin:", "mov r9, 1", "ja spin"),
         "infinite loop detected", loops=True),
    Case("a loop back in a narrower state may still end",
         ("ldxb r9, [r2+0]", "halve:", "jeq r9, 0, zero", "rsh r9, 1", "ja halve", "zero:"), None, loops=True),
)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pruning_rule(case: Case) -> None:
    source = program(list(case.body))
    pruned = check(source, prune=True, loops=case.loops)
    walked = pruned if case.loops else check(source, prune=False)
    for verdict in (pruned, walked):
        if case.error is None:
            assert isinstance(verdict, VerifyResult), verdict
        else:
            assert isinstance(verdict, str) and case.error in verdict, verdict
    if case.pruned:
        assert isinstance(pruned, VerifyResult) and pruned.states_pruned > 0
        assert isinstance(walked, VerifyResult) and walked.insns_processed > pruned.insns_processed


@pytest.mark.skipif(not kernel_oracle.available(), reason="loading programs into the kernel needs root")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_agrees(case: Case) -> None:
    verdict = kernel_oracle.kernel_verify(assemble(program(list(case.body))), int(ProgType.XDP))
    assert verdict.accepted == (case.error is None), verdict.log


REGS = ("r6", "r7", "r8", "r9")


@st.composite
def bodies(draw: st.DrawFn) -> list[str]:
    """Diamonds over packet bytes whose arms set, copy, spill and narrow r6-r9, with checks in
    between that need some of them exact, initialised or written to the stack."""
    reg = st.sampled_from(REGS)
    slot = st.sampled_from((8, 16, 24))
    small = st.integers(0, 80)
    arm_line = st.one_of(
        st.builds("mov {}, {}".format, reg, small), st.builds("add {}, {}".format, reg, st.integers(-4, 40)),
        st.builds("mov {}, r4".format, reg), st.builds("mov {}, {}".format, reg, reg),
        st.builds("and {}, 63".format, reg), st.builds("stxdw [r10-{}], {}".format, slot, reg),
        st.builds("ldxdw {}, [r10-{}]".format, reg, slot), st.builds("stdw [r10-{}], {}".format, slot, small),
        st.builds("jgt {}, {}, +1\nmov {}, 0".format, reg, small, reg))
    check_line = st.one_of(
        st.builds("mov r5, r2\nadd r5, {}\nldxb r0, [r5+0]".format, reg),
        st.builds("mov r0, {}".format, reg), st.builds("ldxdw r0, [r10-{}]".format, slot))
    lines: list[str] = []
    for i in range(draw(st.integers(1, 6))):
        test = draw(st.sampled_from(("jgt", "jlt", "jeq", "jset")))
        lines += [f"ldxb r4, [r2+{draw(st.integers(0, PACKET - 1))}]", f"{test} r4, {draw(small)}, else{i}"]
        lines += [*draw(st.lists(arm_line, max_size=3)), f"ja end{i}", f"else{i}:"]
        lines += [*draw(st.lists(arm_line, max_size=3)), f"end{i}:"]
        lines += draw(st.lists(check_line, max_size=1))
    lines += draw(st.lists(check_line, max_size=2))
    return "\n".join(lines).splitlines()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_pruning_never_accepts_what_every_path_rejects(body: list[str]) -> None:
    source = program(body)
    pruned, walked = check(source, prune=True), check(source, prune=False)
    event("accepted" if isinstance(walked, VerifyResult) else "rejected")
    if isinstance(pruned, VerifyResult):
        assert isinstance(walked, VerifyResult), f"pruning accepted what a path rejects ({walked}):\n{source}"
        assert pruned.insns_processed <= walked.insns_processed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_the_keys_a_prune_point_compares_first_never_hide_a_match(body: list[str]) -> None:
    """A prune point skips the states whose kinds differ before comparing (``kinds_key``) or
    merging them (``join_key``): that must only skip comparisons and merges that would fail."""
    seen: dict[int, list[tuple[State, list[int]]]] = {}

    class Recording(Checker):
        def _prune_point(self, pc: int, st: State, parent: Any) -> Any:
            masks = self._live_masks(st, pc)
            seen.setdefault(pc, []).append((self._snapshot(st, masks), masks))
            return super()._prune_point(pc, st, parent)

    flow = cfg.analyze(Program.from_bytes(assemble(program(body))))
    with contextlib.suppress(Rejected):
        Recording(flow, helpers={}, maps=None, context=XDP, allow_loops=False, budget=DEFAULT_BUDGET, log=False,
                  max_call_depth=MAX_CALL_DEPTH, stack_limit=512, prune=True).run()
    for states in seen.values():
        for old, masks in states:
            chosen, old_kinds = kinds_key(old)
            for new, _ in states:
                if kinds_key(new, chosen)[1] != old_kinds:
                    assert not state_within(old, shared_ids(old), new)
                if join_key(old, masks) != join_key(new, masks):
                    assert join_states(old, new, masks) is None


# Registers as a prune point finds them: scalars (spill widths as stack slots have them, some
# linked), and a pointer with a variable offset.
REG_KINDS = st.sampled_from([(RegType.SCALAR, 0, 0, 0), (RegType.SCALAR, 0, 0, 3), (RegType.SCALAR, 4, 1, 0),
                             (RegType.SCALAR, 2, 0, 0), (RegType.PTR_TO_PACKET, 0, 0, 0),
                             (RegType.NOT_INIT, 0, 0, 0)])


@st.composite
def registers(draw: st.DrawFn) -> Reg:
    kind, width, aux, rid = draw(REG_KINDS)
    if kind is RegType.NOT_INIT:
        return NOT_INIT
    return Reg(kind, draw(abstract(64))[0], range=width, aux=aux, id=rid)


@settings(max_examples=300, deadline=None)
@given(registers(), registers(), st.booleans())
def test_state_comparison_of_registers_agrees_with_reg_within(old: Reg, new: Reg, precise: bool) -> None:
    """``state_within`` compares unlinked scalars without calling ``reg_within``: the verdict
    must be the one ``reg_within`` gives, precise or not."""
    def state(r: Reg) -> State:
        regs = [NOT_INIT] * 11
        regs[3] = r
        return State([Frame(regs, [None] * SLOTS, -1)])

    got = state_within(state(old), frozenset(), state(new), precise=[8 if precise else 0])
    assert got == (old.type is RegType.NOT_INIT or reg_within(old, new, None, precise))
