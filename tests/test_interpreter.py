"""The interpreter's translation: one Python function per block, at module level."""

from __future__ import annotations

from jitbpf.asm import assemble
from jitbpf.interpreter import Translator
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
