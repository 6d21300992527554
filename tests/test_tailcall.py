"""bpf_tail_call through program arrays: chains, failed calls falling through, the limit, the
budget carried along, targets with their own maps, and tail calls from bpf-to-bpf functions."""

from __future__ import annotations

import errno

import pytest

from jitbpf.asm import assemble
from jitbpf.contract import MAX_TAIL_CALLS
from jitbpf.errors import BudgetExceeded
from jitbpf.linux.maps import Array, ProgramArray
from jitbpf.vm import VM
from tests.support import ENGINES, load, run, s64

STAGE = """
    stb [r1+{i}], {mark}    ; leave a mark in ctx
    lddw r2, map:JMP
    mov r3, {target}
    call 12                 ; bpf_tail_call(ctx, &JMP, target)
    mov r0, 1000            ; reached only if the tail call fails
    exit
"""
LAST = """
    ldxb r0, [r1+0]
    ldxb r2, [r1+1]
    add r0, r2
    ldxb r2, [r1+2]
    add r0, r2
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_chain_of_three_programs(engine: str) -> None:
    jmp = ProgramArray(max_entries=8, name="JMP")
    first = load(STAGE.format(i=0, mark=1, target=5), jmp)
    second = load(STAGE.format(i=1, mark=2, target=6), jmp)
    jmp[5] = second
    jmp[6] = load("stb [r1+2], 3\n" + LAST, jmp)
    mem = bytearray(4)
    assert run(first, engine, mem) == 1 + 2 + 3
    assert mem == bytearray([1, 2, 3, 0])


@pytest.mark.parametrize("engine", ENGINES)
def test_failed_tail_calls_fall_through(engine: str) -> None:
    jmp = ProgramArray(max_entries=4, name="JMP")
    fallthrough = """
        lddw r2, map:JMP
        mov r3, {index}
        call 12
        exit
    """
    empty = load(fallthrough.format(index=2), jmp)
    assert s64(run(empty, engine, bytearray(4))) == -errno.ENOENT
    out_of_range = load(fallthrough.format(index=4), jmp)
    assert s64(run(out_of_range, engine, bytearray(4))) == -errno.E2BIG
    jmp[2] = load("mov r0, 7\nexit")
    assert run(empty, engine, bytearray(4)) == 7
    del jmp[2]
    assert s64(run(empty, engine, bytearray(4))) == -errno.ENOENT
    mem = bytearray(4)
    assert run(load(STAGE.format(i=0, mark=1, target=3), jmp), engine, mem) == 1000
    assert mem[0] == 1


SELF_LOOP = """
    ldxw r6, [r1+0]
    add r6, 1
    stxw [r1+0], r6         ; count the programs run
    lddw r2, map:JMP
    mov r3, 0
    call 12                 ; tail-call ourselves until the limit
    mov r0, r6
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_limit_of_32_chained_tail_calls(engine: str) -> None:
    jmp = ProgramArray(max_entries=1, name="JMP")
    vm = load(SELF_LOOP, jmp)
    jmp[0] = vm
    mem = bytearray(4)
    assert run(vm, engine, mem) == MAX_TAIL_CALLS + 1 == 33  # the first run and 32 tail calls
    assert int.from_bytes(mem, "little") == 33
    mem = bytearray(4)
    assert run(vm, engine, mem) == 33  # the count starts over with each run


@pytest.mark.parametrize("engine", ENGINES)
def test_tail_call_limit_is_configurable(engine: str) -> None:
    jmp = ProgramArray(max_entries=1, name="JMP")
    vm = load(SELF_LOOP, jmp, max_tail_calls=5)
    jmp[0] = vm
    assert run(vm, engine, bytearray(4)) == 6
    none = load(SELF_LOOP, jmp, max_tail_calls=0)
    assert run(none, engine, bytearray(4)) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_budget_carries_over_tail_calls(engine: str) -> None:
    jmp = ProgramArray(max_entries=1, name="JMP")
    vm = load(SELF_LOOP, jmp, budget=100)  # 8 instructions a program: 33 programs need 264
    jmp[0] = vm
    with pytest.raises(BudgetExceeded):
        run(vm, engine, bytearray(4))


@pytest.mark.parametrize("engine", ENGINES)
def test_target_uses_its_own_maps(engine: str) -> None:
    jmp = ProgramArray(max_entries=2, name="JMP")
    table = Array(value_size=8, max_entries=2, name="TABLE")
    table[1] = 4242
    target = load("""
        stw [r10-4], 1
        lddw r1, map:TABLE
        mov r2, r10
        add r2, -4
        call 1
        jeq r0, 0, miss
        ldxdw r0, [r0]
        exit
    miss:
        mov r0, 0
        exit
    """, table)
    jmp[1] = target
    entry = load("lddw r2, map:JMP\nmov r3, 1\ncall 12\nexit", jmp)
    assert run(entry, engine, bytearray(4)) == 4242


@pytest.mark.parametrize("engine", ENGINES)
def test_tail_call_from_a_local_function(engine: str) -> None:
    jmp = ProgramArray(max_entries=1, name="JMP")
    jmp[0] = load("mov r0, 7\nexit")
    vm = load("""
        call jump
        mov r0, 1               ; not reached: the tail call replaces the whole program
        exit
    jump:
        lddw r2, map:JMP
        mov r3, 0
        call 12
        mov r0, 2
        exit
    """, jmp)
    assert run(vm, engine, bytearray(4)) == 7


def test_tail_call_to_a_program_of_another_type_of_helpers() -> None:
    """The target runs with its own helpers: without the standard set it cannot call them."""
    jmp = ProgramArray(max_entries=1, name="JMP")
    bare = VM(assemble("mov r0, 5\nexit"))
    jmp[0] = bare
    entry = load("lddw r2, map:JMP\nmov r3, 0\ncall 12\nexit", jmp)
    assert entry.execute(bytearray(4)) == 5


@pytest.mark.parametrize("value", [5, None, "prog"])
def test_a_program_array_holds_vms_only(value: object) -> None:
    """Anything else was stored, and failed inside the tail call that reached it."""
    jmp = ProgramArray(max_entries=2, name="JMP")
    with pytest.raises(TypeError, match="are VMs"):
        jmp[0] = value  # type: ignore[assignment]
    assert list(jmp) == [] and jmp.get(0) is None
