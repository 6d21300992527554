"""What the JIT leaves out, and when it must not: bounds checks on frame-pointer accesses, budget
counting in programs that cannot loop, and the per-instruction memo of the compile loop."""

from __future__ import annotations

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import BudgetExceeded, ExecutionError
from jitbpf.maps import ProgramArray
from jitbpf.vm import VM

STACK_TRAFFIC = """
    mov r1, 7
    stxdw [r10-8], r1
    stxw [r10-512], r1
    ldxdw r0, [r10-8]
    ldxw r2, [r10-512]
    add r0, r2
    exit
"""


def _listing(vm: VM) -> str:
    vm.jit_compile()
    return vm.jit_dump()


def test_frame_pointer_accesses_need_no_check() -> None:
    with VM(assemble(STACK_TRAFFIC), verify=False) as vm:
        assert vm.execute_jit() == vm.execute() == 14
        assert "stub: bounds check" not in _listing(vm)


@pytest.mark.parametrize("offset", ["+0", "-513", "-4"])
def test_accesses_past_the_frame_are_checked(offset: str) -> None:
    """[r10+0] and [r10-513] leave the frame; [r10-4] as a dword crosses its top."""
    source = f"mov r1, 7\nstxdw [r10{offset}], r1\nmov r0, 0\nexit"
    with VM(assemble(source), verify=False) as vm:
        assert "stub: bounds check" in _listing(vm)


@pytest.mark.parametrize("write", ["mov r10, r1", "ldxdw r10, [r1]", "lddw r10, 0x1000", "neg r10",
                                   "lock fetch add [r1], r10"])
def test_a_program_that_moves_r10_gets_checks_back(write: str) -> None:
    """Unverified programs may write r10; then [r10-8] can point anywhere and is checked, with the
    interpreter's error, not a crash."""
    source = f"{write}\nstxdw [r10-8], r1\nmov r0, 0\nexit"
    mem = bytearray(8)
    with VM(assemble(source), verify=False) as vm:
        assert "stub: bounds check" in _listing(vm)
        with pytest.raises(ExecutionError) as interp:
            vm.execute(bytearray(mem))
        with pytest.raises(ExecutionError) as jit:
            vm.execute_jit(bytearray(mem))
        assert jit.value.pc == interp.value.pc == (2 if write.startswith("lddw") else 1)


def _straight_line(n: int) -> str:
    return "\n".join(["mov r0, 0", *["add r0, 1"] * (n - 2), "exit"])


def test_acyclic_program_without_calls_does_not_count() -> None:
    with VM(assemble(_straight_line(50)), verify=False) as vm:
        assert "budget exhausted" not in _listing(vm)
        assert vm.execute_jit() == 48


def test_loops_and_small_budgets_count() -> None:
    loop = "mov r0, 0\nadd r0, 1\njlt r0, 10, -2\nexit"
    with VM(assemble(loop), verify=False) as vm:
        assert "budget exhausted" in _listing(vm)
    with VM(assemble(_straight_line(50)), verify=False, budget=10) as vm:
        assert "budget exhausted" in _listing(vm)
        with pytest.raises(BudgetExceeded):
            vm.execute_jit()


TAIL = """
    lddw r2, map:JMP
    mov r3, 0
    call 12
    mov r0, 1
    exit
"""


@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_tail_call_target_with_less_budget_than_its_length(engine: str) -> None:
    """The target of a tail call runs on what its caller left: fewer instructions than the
    target's length, so the JIT switches to the budget-counting twin of the target's code."""
    jmp = ProgramArray(max_entries=1, name="JMP")
    caller = VM(assemble(TAIL, maps={"JMP": 1}), budget=60, verify=False)
    caller.add_map(jmp, 1)
    caller.use_standard_helpers()
    target = VM(assemble(_straight_line(58)), budget=60, verify=False)
    jmp[0] = target
    run = caller.execute if engine == "interp" else caller.execute_jit
    with pytest.raises(BudgetExceeded) as err:
        run(bytearray(4))
    assert err.value.pc == 0


def test_memo_copies_repeated_instructions_exactly() -> None:
    """Repeated instructions reuse their bytes; the listing shows the same code for each."""
    source = "\n".join(["mov r0, 0", *["add r0, r1", "ldxdw r2, [r10-8]", "stxdw [r10-8], r0"] * 3, "exit"])
    with VM(assemble(source), verify=False) as vm:
        dump = _listing(vm)
        assert vm.execute_jit() == vm.execute()
    blocks = dump.split("add r0, r1")[1:]
    first = [line.split(None, 1)[1] for line in blocks[0].splitlines()[1:2]]
    for block in blocks[1:]:
        assert [line.split(None, 1)[1] for line in block.splitlines()[1:2]] == first
