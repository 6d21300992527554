"""jitbpf: a user-space eBPF virtual machine with a reference interpreter and an x86-64 JIT.

The public names are imported on first use (module ``__getattr__``), so that ``import jitbpf``
stays cheap: the ELF, capture, assembler and JIT layers load only when a program needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jitbpf.errors import (
    AccessError,
    AssemblerError,
    BpfError,
    BudgetExceeded,
    DecodeError,
    ElfError,
    ExecutionError,
    InternalError,
    JitError,
    MapError,
    VerifierError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from jitbpf.asm import assemble
    from jitbpf.disasm import disassemble
    from jitbpf.helpers import Helper, HelperExit
    from jitbpf.isa import Instruction, Program
    from jitbpf.linux.elf import ElfObject, ElfProgram, load_elf
    from jitbpf.linux.maps import (
        Array,
        BpfMap,
        DevMap,
        HashMap,
        LpmKey,
        LpmTrie,
        MapType,
        PerCpuArray,
        PerCpuHashMap,
        PerfEventArray,
        ProgramArray,
        Queue,
        RingBuf,
        SockHash,
        SockMap,
        Stack,
        create_map,
    )
    from jitbpf.linux.programs import ProgType, SkAction, TcAction, XdpAction
    from jitbpf.linux.stdhelpers import standard_helpers
    from jitbpf.pcap import Summary, run_pcap
    from jitbpf.verifier import VerifyResult, verify
    from jitbpf.vm import VM

# Where each lazily imported public name is defined (the TYPE_CHECKING imports above say the same
# for type checkers; tests/test_package.py keeps the two in step).
_LAZY: dict[str, str] = {
    "assemble": "jitbpf.asm",
    "disassemble": "jitbpf.disasm",
    **dict.fromkeys(("ElfObject", "ElfProgram", "load_elf"), "jitbpf.linux.elf"),
    **dict.fromkeys(("Helper", "HelperExit"), "jitbpf.helpers"),
    **dict.fromkeys(("Instruction", "Program"), "jitbpf.isa"),
    **dict.fromkeys(("Array", "BpfMap", "DevMap", "HashMap", "LpmKey", "LpmTrie", "MapType", "PerCpuArray",
                     "PerCpuHashMap", "PerfEventArray", "ProgramArray", "Queue", "RingBuf", "SockHash", "SockMap",
                     "Stack", "create_map"), "jitbpf.linux.maps"),
    **dict.fromkeys(("Summary", "run_pcap"), "jitbpf.pcap"),
    **dict.fromkeys(("ProgType", "SkAction", "TcAction", "XdpAction"), "jitbpf.linux.programs"),
    "standard_helpers": "jitbpf.linux.stdhelpers",
    **dict.fromkeys(("VerifyResult", "verify"), "jitbpf.verifier"),
    "VM": "jitbpf.vm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jitbpf' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "VM",
    "AccessError",
    "Array",
    "AssemblerError",
    "BpfError",
    "BpfMap",
    "BudgetExceeded",
    "DecodeError",
    "DevMap",
    "ElfError",
    "ElfObject",
    "ElfProgram",
    "ExecutionError",
    "HashMap",
    "Helper",
    "HelperExit",
    "Instruction",
    "InternalError",
    "JitError",
    "LpmKey",
    "LpmTrie",
    "MapError",
    "MapType",
    "PerCpuArray",
    "PerCpuHashMap",
    "PerfEventArray",
    "ProgType",
    "Program",
    "ProgramArray",
    "Queue",
    "RingBuf",
    "SkAction",
    "SockHash",
    "SockMap",
    "Stack",
    "Summary",
    "TcAction",
    "VerifierError",
    "VerifyResult",
    "XdpAction",
    "__version__",
    "assemble",
    "create_map",
    "disassemble",
    "load_elf",
    "run_pcap",
    "standard_helpers",
    "verify",
]
