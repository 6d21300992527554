"""The x86-64 JIT: eBPF programs compiled to host machine code by copy-and-patch."""

from jitbpf.jit.program import JitProgram

__all__ = ["JitProgram"]
