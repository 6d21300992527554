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
from jitbpf.asm import assemble
from jitbpf.disasm import disassemble
from jitbpf.helpers import Helper, HelperExit
from jitbpf.isa import Instruction, Program
from jitbpf.vm import VM

__all__ = [
    "VM",
    "Helper",
    "HelperExit",
    "assemble",
    "disassemble",
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
