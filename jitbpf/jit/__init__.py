"""The x86-64 JIT: eBPF programs compiled to host machine code by copy-and-patch.

``JitProgram`` is imported on first use: the interpreter needs the run-time layout of
``jitbpf.jit.runtime`` but not the emitter, so importing that module must not load the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jitbpf.jit.program import JitProgram


def __getattr__(name: str) -> Any:
    if name == "JitProgram":
        from jitbpf.jit.program import JitProgram

        return JitProgram
    raise AttributeError(f"module 'jitbpf.jit' has no attribute {name!r}")


__all__ = ["JitProgram"]
