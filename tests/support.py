"""What several test modules share: the engines to run on, and loading an assembled program with
its maps and the standard helpers."""

from __future__ import annotations

from jitbpf.asm import assemble
from jitbpf.maps import BpfMap
from jitbpf.vm import VM

ENGINES = ("interp", "jit")  # every behaviour is checked in both


def load(text: str, *maps: BpfMap, **options: object) -> VM:
    """A VM of ``text`` with ``maps`` under handles 1, 2, ... (``lddw rX, map:NAME``) and the
    standard Linux helpers."""
    handles = {m.name: i + 1 for i, m in enumerate(maps)}
    vm = VM(assemble(text, maps=handles), **options)  # type: ignore[arg-type]
    for m in maps:
        vm.add_map(m, handles[m.name])
    vm.use_standard_helpers()
    return vm


def run(vm: VM, engine: str, mem: bytes | bytearray | None = None) -> int:
    return vm.execute(mem) if engine == "interp" else vm.execute_jit(mem)


def s64(x: int) -> int:
    """``x`` (an unsigned 64-bit result) as a signed value."""
    return x - (1 << 64) if x >> 63 else x
