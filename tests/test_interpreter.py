"""The interpreter's translation: one Python function per block, at module level."""

from __future__ import annotations

import pytest

from jitbpf.asm import assemble
from jitbpf.contract import SCRATCH_POISON
from jitbpf.helpers import Helper
from jitbpf.interpreter import Translator
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM


def test_blocks_become_module_level_functions() -> None:
    """Nested in one enclosing function, thousands of blocks would be its locals, which CPython
    compiles in quadratic time (a 100,000-instruction program took half a minute)."""
    source = "\n".join(["mov r0, 0", *[f"jeq r2, {i}, +1\nadd r0, 1" for i in range(300)], "exit"])
    vm = VM(assemble(source), verify=False)
    blocks = Translator(vm.resolve_lddw).translate(vm.flow)
    defs = [line for line in blocks.source.splitlines() if "def b" in line]
    assert len(defs) == len(vm.flow.blocks) > 300
    assert all(line.startswith("def b") for line in defs)
    assert vm.execute(bytearray(8)) == 299


def _second_argument(_r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
    return r2


# r2 = 7, a helper call, then a helper that returns the r2 it is handed (declared as not reading
# its arguments, so the verifier lets the program call it without setting them again).
ARGUMENT_AFTER_CALL = "mov r2, 7\ncall 7\ncall 0x10000\nexit"


@pytest.mark.parametrize(("options", "survives"), [
    ({"prog_type": ProgType.SOCKET_FILTER}, False),  # verified, typed: the kernel's convention
    ({"prog_type": ProgType.SOCKET_FILTER, "verify": False}, True),  # unverified: kept
    ({}, True),  # raw memory (rbpf's semantics): kept
])
def test_verified_typed_programs_find_r1_to_r5_scrambled_after_helper_calls(options: dict[str, object],
                                                                               survives: bool) -> None:
    vm = VM(assemble(ARGUMENT_AFTER_CALL), **options)  # type: ignore[arg-type]
    vm.use_standard_helpers()
    vm.register_helper(Helper(0x10000, "second_argument", _second_argument, ("ignored",) * 5))
    got = vm.run_socket_filter(bytes(20)) if options else vm.execute(bytearray(8))
    assert got == (7 if survives else SCRATCH_POISON & 0xFFFF_FFFF)  # a socket filter's r0 is 32 bits
