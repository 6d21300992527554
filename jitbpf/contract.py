"""The run-time contract both engines keep: the limits of a run, and the exceptions a helper
raises to end one early. Every other module takes these from here, so that the interpreter, the
JIT, the verifier and the VM cannot disagree on them."""

from __future__ import annotations

from typing import Any

from jitbpf.isa import MASK64, STACK_SIZE

MAX_CALL_DEPTH = 8  # frames of bpf-to-bpf calls, the main program's included (as the kernel)
STACK_BYTES = STACK_SIZE * MAX_CALL_DEPTH  # the stack area of one thread's runs: every frame
DEFAULT_BUDGET = 1_000_000  # instructions one run may execute
MAX_TAIL_CALLS = 32  # chained tail calls per run (as the kernel)
ARG_REGS = 0b111110  # r1-r5 as a register mask: a helper's arguments, scratch after a call
CALLEE_SAVED = 0b11111000000  # r6-r10 as a register mask: kept across calls


class HelperExit(Exception):
    """Raised by a helper to end the program at once with ``r0 = value`` (uBPF's "unwind")."""

    def __init__(self, value: int = 0) -> None:
        super().__init__(value)
        self.value = value & MASK64


class TailCall(Exception):
    """Raised by the tail-call helper: end the running program at once and run ``target`` (a VM)
    with the same context. The engine that unwinds fills in ``budget`` (instructions left)."""

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.target = target
        self.budget = 0
