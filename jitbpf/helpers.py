"""Helper functions: how they are described, registered and called, and the helper set that the
public conformance suites expect (uBPF's test helpers)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jitbpf.contract import CallbackKind
from jitbpf.contract import HelperExit as HelperExit  # re-exported: helpers raise it
from jitbpf.isa import MASK64

if TYPE_CHECKING:
    from jitbpf.memory import MemoryMap

HelperFn = Callable[[int, int, int, int, int], int]


@dataclass(frozen=True)
class Helper:
    """A helper function callable from eBPF code with ``call ID``.

    ``fn`` takes r1-r5 as unsigned 64-bit ints and returns r0. ``args`` declares the argument
    types the verifier checks (see ``jitbpf.verifier.ArgType``); empty means "five scalars".
    ``native`` is the address of a C function with the same signature, when there is one: the JIT
    then calls it directly without entering Python. ``callback`` marks a helper whose second
    argument is a function of the program that the engines call (``contract.CallbackKind``).
    """

    id: int  # call number
    name: str  # for errors and listings
    fn: HelperFn  # Python implementation, used by the interpreter (and the JIT without native)
    args: tuple[str, ...] = ()  # verifier argument kinds
    ret: str = "scalar"  # verifier return kind
    native: int = 0  # address of an equivalent C function, or 0
    keepalive: tuple[object, ...] = field(default=(), compare=False, repr=False)  # owners of native
    # Set for helpers that call back into the program (bpf_loop, bpf_for_each_map_elem): the
    # engines run those themselves, and ``fn`` is never called.
    callback: CallbackKind | None = None


def conformance_helpers(memory: Callable[[], MemoryMap]) -> list[Helper]:
    """The helpers uBPF's test plugin provides (ids 0-5), which the conformance files call.

    ``memory`` returns the running program's MemoryMap (helpers 1 and 4 follow pointers).
    """

    def gather_bytes(a: int, b: int, c: int, d: int, e: int) -> int:
        return (a & 0xFF) << 32 | (b & 0xFF) << 24 | (c & 0xFF) << 16 | (d & 0xFF) << 8 | (e & 0xFF)

    def memfrob(ptr: int, n: int, _c: int, _d: int, _e: int) -> int:
        mm = memory()
        mm.write(ptr, bytes(x ^ 42 for x in mm.read(ptr, n)))
        return 0

    def no_op(_a: int, _b: int, _c: int, _d: int, _e: int) -> int:
        return 0

    def sqrti(a: int, _b: int, _c: int, _d: int, _e: int) -> int:
        return int(math.sqrt(float(a)))

    def strcmp_ext(a: int, b: int, _c: int, _d: int, _e: int) -> int:
        mm = memory()
        s1, s2 = mm.read_cstring(a), mm.read_cstring(b)
        for x, y in zip(s1 + b"\0", s2 + b"\0", strict=False):
            if x != y:
                return (x - y) & MASK64
        return 0

    def unwind(a: int, _b: int, _c: int, _d: int, _e: int) -> int:
        if a == 0:
            raise HelperExit(0)
        return a

    return [
        Helper(0, "gather_bytes", gather_bytes),
        Helper(1, "memfrob", memfrob, args=("mem", "size")),
        Helper(2, "no_op", no_op),
        Helper(3, "sqrti", sqrti),
        Helper(4, "strcmp_ext", strcmp_ext, args=("mem", "mem")),
        Helper(5, "unwind", unwind),
    ]
