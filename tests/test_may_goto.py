"""may_goto (opcode 0xe5): the kernel's bounded-loop escape. It falls through while the run's
allowance (BPF_MAX_LOOPS, 8,388,608) lasts and jumps once it is spent; the verifier explores
both ways and accepts loops through it without a proof that they end."""

from __future__ import annotations

import pytest

from jitbpf.asm import assemble
from jitbpf.contract import MAY_GOTO_BUDGET
from jitbpf.disasm import disassemble
from jitbpf.errors import BudgetExceeded, VerifierError
from jitbpf.isa import Instruction, Kind, decode
from tests.support import ENGINES, load, run

# Counts how many times may_goto falls through before it jumps.
COUNT = """
    mov r0, 0
loop:
    may_goto out
    add r0, 1
    ja loop
out:
    exit
"""


def test_encoding_and_both_syntaxes() -> None:
    code = assemble("may_goto +2\nmov r0, 0\nexit\nexit")
    insn = decode(code)[0]
    assert insn == Instruction(0xE5, off=2)
    assert insn.info.kind is Kind.MAY_GOTO
    for syntax in ("ubpf", "llvm"):
        text = disassemble(code, syntax=syntax)
        assert text.splitlines()[0] == "may_goto +2"
        assert assemble(text) == code


@pytest.mark.parametrize("engine", ENGINES)
def test_the_allowance_is_the_kernels(engine: str) -> None:
    vm = load(COUNT, budget=4 * MAY_GOTO_BUDGET)
    assert run(vm, engine) == MAY_GOTO_BUDGET
    if engine == "jit":  # (the interpreter takes seconds a run)
        assert run(vm, engine) == MAY_GOTO_BUDGET  # each run starts with the whole allowance


@pytest.mark.parametrize("engine", ENGINES)
def test_the_instruction_budget_still_applies(engine: str) -> None:
    with pytest.raises(BudgetExceeded) as err:
        run(load(COUNT, budget=1000), engine)
    assert err.value.pc in (1, 2)  # the block of the may_goto or the loop's body


def test_a_loop_through_may_goto_needs_no_allow_loops() -> None:
    load(COUNT).check()
    without = COUNT.replace("    may_goto out\n", "    jgt r0, 10, out\n")
    with pytest.raises(VerifierError, match="back-edge"):
        load(without).check()


def test_both_ways_are_verified() -> None:
    # Taken at once, r0 was never written.
    with pytest.raises(VerifierError, match="r0 is not initialised") as err:
        load("may_goto +1\nmov r0, 0\nexit").check()
    assert err.value.pc == 2


def test_numbers_a_may_goto_loop_changes_are_not_trusted() -> None:
    # r1 grows by 8 each round: after the loop it may be anything, so indexing the stack with it
    # needs a bound check.
    text = """
        mov r1, 0
        stdw [r10-8], 0
    loop:
        may_goto out
        add r1, 8
        ja loop
    out:
        {check}
        mov r2, r10
        add r2, -8
        add r2, r1
        ldxb r0, [r2]
        exit
    done:
        mov r0, 0
        exit
    """
    with pytest.raises(VerifierError, match="stack"):
        load(text.format(check="jgt r1, 8, done")).check()
    vm = load(text.format(check="jgt r1, 7, done"), budget=4 * MAY_GOTO_BUDGET)
    vm.check()
    assert vm.execute_jit() == 0
