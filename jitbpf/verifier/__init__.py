"""The eBPF verifier: control-flow checks, then abstract interpretation of every path (kernel style).

``verify`` (or ``verify_flow`` on an analysed program) accepts a program or raises
``VerifierError`` naming the instruction, its disassembly and a one-line reason; on request the
error's ``log`` holds the path of abstract states that led there. An accepted program's
``VerifyResult.proven`` lists the memory instructions whose access was proven in bounds on every
path, so that the JIT can drop their runtime check.

What is tracked: each register's type (uninitialised, scalar with known bits and signed and
unsigned ranges, pointer to the context, a stack frame, a map value or null, a map, packet data
with the number of bytes proven inside the packet, packet end, memory of unknown size, a kernel
object of a BTF struct, whose loads are probe loads (``VerifyResult.probe_loads``)) and each
stack byte (uninitialised, unknown, known value, or part of a spilled register). Subtracting two
pointers into one object (a stack frame, the context, the packet) gives a scalar. States are
remembered at join points and a path is pruned when its state lies within one already verified;
outside loops, many different states at one join point are merged. With ``allow_loops`` loops
are followed iteration by iteration, and rejected when they may not end within the budget.
Callbacks (of bpf_loop, bpf_for_each_map_elem) are verified in a frame of their own, one round
after another until a round begins within an earlier one; loops through may_goto are accepted,
the numbers they change made unknown after a few rounds so that the rounds converge. Global
functions (given with their BTF prototypes) are verified once each, after the program, for any
arguments of their prototype, as the kernel does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jitbpf import cfg
from jitbpf.cfg import ControlFlow
from jitbpf.contract import DEFAULT_BUDGET, MAX_CALL_DEPTH
from jitbpf.errors import VerifierError
from jitbpf.helpers import Helper
from jitbpf.isa import Instruction, Program
from jitbpf.verifier._check import Checker, Rejected, describe_instruction
from jitbpf.verifier._progress import Progress, ProgressCallback
from jitbpf.verifier._types import (
    RAW_MEMORY,
    ArgType,
    BtfArg,
    BtfLayout,
    ContextSpec,
    GlobalFunc,
    MapLike,
    Param,
    ParamKind,
    RegType,
    RetType,
    VerifyResult,
)

__all__ = [
    "RAW_MEMORY",
    "ArgType",
    "BtfArg",
    "BtfLayout",
    "ContextSpec",
    "GlobalFunc",
    "MapLike",
    "Param",
    "ParamKind",
    "ProgressCallback",
    "RegType",
    "RetType",
    "VerifyResult",
    "verify",
    "verify_flow",
]



def verify_flow(
    flow: ControlFlow,
    *,
    helpers: Mapping[int, Helper],
    allow_loops: bool = False,
    budget: int = DEFAULT_BUDGET,
    maps: Mapping[int, MapLike] | None = None,
    context: ContextSpec | None = None,
    log: bool = False,
    max_call_depth: int = MAX_CALL_DEPTH,
    stack_limit: int = 512,
    max_insns: int = cfg.DEFAULT_MAX_INSNS,
    privileged: bool = True,
    progress: ProgressCallback | None = None,
    strict_alignment: bool = False,
    functions: Mapping[int, GlobalFunc] | None = None,
    refused_helpers: Mapping[int, str] | None = None,
) -> VerifyResult:
    """Verify an analysed program; raise VerifierError if it is not provably safe.

    ``helpers`` are the callable helpers by id (their ``args``/``ret`` declare the types checked
    at each call); ``maps`` the maps that lddw may reference by handle (None: unknown, so map
    value accesses are allowed but not proven); ``context`` what r1 points to (None: the generic
    raw-memory mode). ``privileged`` applies the kernel's rules for a loader with CAP_BPF and
    CAP_PERFMON (pointers may leak into scalars, never-written stack may be read); off, those of
    an unprivileged one. ``strict_alignment`` (the kernel's BPF_F_STRICT_ALIGNMENT) wants every
    access aligned to its size, not only the stack's. ``functions`` names the global functions
by entry slot: each is verified once on its own, for any arguments matching its prototype, and
its calls are checked against the prototype (the other functions are verified at each call, in
the caller's state). ``refused_helpers`` (helper id -> why) are those the program type may not
call: a reached call of one is refused, as a reached call of a helper not in ``helpers`` is.
``budget`` bounds how long a loop may run
    (and, with the kernel's one million instructions as a floor, how much work the analysis may
    do). A verification that takes longer than a second reports the instructions processed so far
    to ``progress``, or without it on standard error when that is a terminal. Ctrl-C stops it
    (KeyboardInterrupt).
    """
    if len(flow.program) > max_insns:
        raise VerifierError(f"too many instructions ({len(flow.program)} > max {max_insns})")
    checker = Checker(flow, helpers=helpers, maps=maps, context=context or RAW_MEMORY, allow_loops=allow_loops,
                      budget=budget, log=log, max_call_depth=max_call_depth, stack_limit=stack_limit,
                      privileged=privileged, progress=Progress(progress), strict_alignment=strict_alignment,
                      functions=functions, refused_helpers=refused_helpers)
    try:
        return checker.run()
    except Rejected as exc:
        raise VerifierError(exc.message, pc=exc.pc, insn=describe_instruction(flow, exc.pc),
                            log=checker.log_text() if log else "") from None
    finally:
        if checker.progress is not None:
            checker.progress.close()


def verify(
    program: bytes | bytearray | memoryview | Program | Sequence[Instruction],
    *,
    helpers: Mapping[int, Helper] | Sequence[Helper] = (),
    allow_loops: bool = False,
    budget: int = DEFAULT_BUDGET,
    maps: Mapping[int, MapLike] | None = None,
    context: ContextSpec | None = None,
    log: bool = False,
    max_call_depth: int = MAX_CALL_DEPTH,
    stack_limit: int = 512,
    max_insns: int = cfg.DEFAULT_MAX_INSNS,
    privileged: bool = True,
    progress: ProgressCallback | None = None,
    strict_alignment: bool = False,
    functions: Mapping[int, GlobalFunc] | None = None,
) -> VerifyResult:
    """Decode, analyse and verify ``program`` (bytecode, a Program, or instructions).

    ``helpers`` may be a mapping by id or a sequence of ``Helper``; the other arguments are
    those of ``verify_flow``. Decoding faults raise DecodeError, everything else VerifierError.
    """
    if isinstance(program, Program):
        prog = program
    elif isinstance(program, bytes | bytearray | memoryview):
        prog = Program.from_bytes(program)
    else:
        prog = Program.from_instructions(program)
    table = helpers if isinstance(helpers, Mapping) else {h.id: h for h in helpers}
    flow = cfg.analyze(prog, max_insns=max_insns)
    return verify_flow(flow, helpers=table, allow_loops=allow_loops, budget=budget, maps=maps, context=context,
                       log=log, max_call_depth=max_call_depth, stack_limit=stack_limit, max_insns=max_insns,
                       privileged=privileged, progress=progress, strict_alignment=strict_alignment,
                       functions=functions)
