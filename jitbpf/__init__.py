"""jitbpf: a user-space eBPF virtual machine with a reference interpreter and an x86-64 JIT."""

from jitbpf.asm import assemble
from jitbpf.disasm import disassemble
from jitbpf.elf import ElfObject, ElfProgram, load_elf
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
from jitbpf.helpers import Helper, HelperExit
from jitbpf.isa import Instruction, Program
from jitbpf.maps import (
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
from jitbpf.pcap import Summary, run_pcap
from jitbpf.programs import ProgType, SkAction, TcAction, XdpAction
from jitbpf.stdhelpers import standard_helpers
from jitbpf.verifier import VerifyResult, verify
from jitbpf.vm import VM

__all__ = [
    "VM",
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
    "assemble",
    "create_map",
    "disassemble",
    "load_elf",
    "run_pcap",
    "standard_helpers",
    "verify",
]
