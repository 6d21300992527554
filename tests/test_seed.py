"""The book chapter's three rbpf examples, with their assembly verbatim, in both engines."""

from __future__ import annotations

import pytest

import jitbpf

ENGINES = ("interp", "jit")


def run(vm: jitbpf.VM, engine: str, mem: bytes | bytearray | None = None) -> int:
    return vm.execute(mem) if engine == "interp" else vm.execute_jit(mem)


@pytest.mark.parametrize("engine", ENGINES)
def test_add_two_constants(engine: str) -> None:
    prog = jitbpf.assemble("""
        mov32 r0, 1
        mov32 r1, 2
        add r0, r1
        exit""")
    with jitbpf.VM(prog) as vm:
        assert run(vm, engine) == 0x3


@pytest.mark.parametrize("engine", ENGINES)
def test_add_from_context_memory(engine: str) -> None:
    prog = jitbpf.assemble("""
        ldwx r0, [r1]
        ldwx r1, [r1+4]
        add r0, r1
        be32 r0
        exit""")
    mem = bytearray([0x0, 0x22, 0x0, 0x0, 0x0, 0x0, 0x33, 0x0])
    with jitbpf.VM(prog) as vm:
        assert run(vm, engine, mem) == 0x00223300


def fib(r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    i, j, k = 1, 1, r1
    while k - 2 > 0:
        j = i + j
        i = j - i
        k -= 1
    return j


@pytest.mark.parametrize("engine", ENGINES)
def test_fibonacci_through_a_helper(engine: str) -> None:
    prog = jitbpf.assemble("""
        mov r2, r1
        ldwx r1,[r1]
        call 0
        stxw [r2+4], r0
        exit""")
    mem = bytearray([0xA, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0])
    with jitbpf.VM(prog) as vm:
        vm.register_helper(0, fib)
        assert run(vm, engine, mem) == 0x37
    assert mem[4] == 0x37


@pytest.mark.parametrize("engine", ENGINES)
def test_read_only_memory_is_copied(engine: str) -> None:
    prog = jitbpf.assemble("stb [r1], 7\nldxb r0, [r1]\nexit")
    data = bytes(4)
    with jitbpf.VM(prog) as vm:
        assert run(vm, engine, data) == 7
    assert data == bytes(4)
