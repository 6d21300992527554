"""jitbpf: a user-space eBPF virtual machine with a reference interpreter and an x86-64 JIT."""

from jitbpf.errors import (
    AssemblerError,
    BpfError,
    BudgetExceeded,
    DecodeError,
    ElfError,
    ExecutionError,
    JitError,
    MapError,
    VerifierError,
)
from jitbpf.isa import Instruction, Program

__all__ = [
    "AssemblerError",
    "BpfError",
    "BudgetExceeded",
    "DecodeError",
    "ElfError",
    "ExecutionError",
    "Instruction",
    "JitError",
    "MapError",
    "Program",
    "VerifierError",
]
