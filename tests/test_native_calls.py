"""The native call paths give exactly what the Python ones give: Python helpers that JIT code
calls through the native library (results converted as the interpreter converts them, failures
raised as it raises them), and program-type runs entered from Python in one native call."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import pytest

from jitbpf.asm import assemble
from jitbpf.contract import HelperExit
from jitbpf.errors import ExecutionError
from jitbpf.isa import MASK64
from jitbpf.vm import VM

HELPER_ID = 77
CALL_SOURCE = f"mov r1, 3\nmov r2, -1\ncall {HELPER_ID}\nexit"  # r0 = the helper's result (pc 2)


class Colour(enum.IntEnum):
    """An int subclass as a result."""

    RED = 5  # any value


class Indexable:
    """A result that is a number only through __index__."""

    def __index__(self) -> int:
        return 9


def _raise(exc: BaseException) -> Callable[..., int]:
    def helper(*_args: int) -> int:
        raise exc
    return helper


# (case, helper, r0 or the exception type both engines end with)
HELPER_CASES: list[tuple[str, Callable[..., Any], int | type[BaseException]]] = [
    ("arguments", lambda a, b, c, d, e: a * 10 + (b == MASK64) + c + d + e, 31),
    ("negative", lambda *_: -1, MASK64),
    ("wider than 64 bits", lambda *_: 2**70 + 5, 5),
    ("bool", lambda *_: True, 1),
    ("int subclass", lambda *_: Colour.RED, 5),
    ("float", lambda *_: 3.9, 3),
    ("numeric string", lambda *_: "12", 12),
    ("__index__ only", lambda *_: Indexable(), 9),
    ("no number", lambda *_: None, ExecutionError),
    ("raises", _raise(ValueError("bad")), ExecutionError),
    ("HelperExit", _raise(HelperExit(7)), 7),
    ("KeyboardInterrupt", _raise(KeyboardInterrupt()), KeyboardInterrupt),
]


def _outcome(run: Callable[[], int]) -> tuple[Any, ...]:
    try:
        return ("r0", run())
    except BaseException as exc:  # KeyboardInterrupt included: it must come out as it went in
        return (type(exc), str(exc), getattr(exc, "pc", None))


@pytest.mark.parametrize(("fn", "expected"), [(fn, want) for _case, fn, want in HELPER_CASES],
                         ids=[case for case, _fn, _want in HELPER_CASES])
def test_python_helper_results_and_failures_match_the_interpreter(fn: Callable[..., Any],
                                                                  expected: int | type[BaseException]) -> None:
    with VM(assemble(CALL_SOURCE), verify=False) as vm:
        vm.register_helper(HELPER_ID, fn, name="h")
        interp, jit = _outcome(vm.execute), _outcome(vm.execute_jit)
        assert jit == interp
        if isinstance(expected, int):
            assert jit == ("r0", expected)
        else:
            assert jit[0] is expected
            if expected is ExecutionError:
                assert jit[2] == 2 and "helper h" in jit[1]


def test_a_helper_gone_from_the_vm_fails_at_its_pc() -> None:
    """(Running refuses a call to an id never registered before it gets that far.)"""
    with VM(assemble(CALL_SOURCE), verify=False) as vm:
        vm.register_helper(HELPER_ID, lambda *_: 1, name="h")
        vm.jit_compile()
        del vm.helpers[HELPER_ID]
        outcomes = [_outcome(vm.execute), _outcome(vm.execute_jit)]
    assert outcomes[0] == outcomes[1] == (ExecutionError, f"call to unknown helper {HELPER_ID} at PC 2", 2)


def test_a_helper_registered_after_compiling_is_called() -> None:
    with VM(assemble(CALL_SOURCE), verify=False) as vm:
        vm.register_helper(HELPER_ID, lambda *_: 1, name="first")
        assert vm.execute_jit() == 1
        vm.register_helper(HELPER_ID, lambda *_: 2, name="second")
        assert vm.execute_jit() == vm.execute() == 2


def test_a_helper_may_run_another_program() -> None:
    """The inner run has its own helpers; the outer run's are back when it returns."""
    with VM(assemble(CALL_SOURCE), verify=False) as inner, VM(assemble(
            f"call {HELPER_ID}\nmov r6, r0\ncall {HELPER_ID}\nadd r0, r6\nexit"), verify=False) as outer:
        inner.register_helper(HELPER_ID, lambda a, *_: a * 100, name="inner")
        outer.register_helper(HELPER_ID, lambda *_: inner.execute_jit() + 1, name="outer")
        assert outer.execute_jit() == outer.execute() == 602
