"""The run-time contract both engines keep: the limits of a run, and the exceptions a helper
raises to end one early. Every other module takes these from here, so that the interpreter, the
JIT, the verifier and the VM cannot disagree on them.

Where the state of a run lives (each kind once, owned by the layer that needs it):

- ``vm.RunState``: per VM and thread, for both engines: the stack, the memory of the current run
  (the map Python helpers read and write through) and the tail calls it may still make.
- ``interpreter.Env``: what the interpreter's generated blocks call during one run (loads,
  stores, helpers, atomics, the legacy packet); built from a ``RunState`` for each run.
- ``jit.runtime.JitThreadContext``: per JIT program and thread: the native ``struct jitbpf_ctx``
  generated code runs with, pointing into the thread's ``RunState``, and what a failing Python
  helper left behind.
- ``programs.ProgramState``: per VM, for a program type: its context layout and each thread's
  arena; ``programs.ProgramRun`` is one typed run (context, packet frame, helper effects).
- ``stdhelpers.StdContext``: per VM, for the standard helpers: the trace log, the host, and each
  thread's redirect and socket.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from jitbpf.isa import MASK64, STACK_SIZE

if TYPE_CHECKING:
    from jitbpf.memory import PacketSource, Region

MAX_CALL_DEPTH = 8  # frames of bpf-to-bpf calls, the main program's included (as the kernel)
STACK_BYTES = STACK_SIZE * MAX_CALL_DEPTH  # the stack area of one thread's runs: every frame
DEFAULT_BUDGET = 1_000_000  # instructions one run may execute
MAX_TAIL_CALLS = 32  # chained tail calls per run (as the kernel)
ARG_REGS = 0b111110  # r1-r5 as a register mask: a helper's arguments, scratch after a call
CALLEE_SAVED = 0b11111000000  # r6-r10 as a register mask: kept across calls
# What r1-r5 hold after a helper call in a verified program of a program type (see scratch_args).
SCRATCH_POISON = 0x5C5C_5C5C_5C5C_5C5C


def scratch_args(typed: bool) -> bool:
    """Whether r1-r5 are scratch after a helper call, a local call or LD_ABS/LD_IND.

    Programs of a kernel program type (``typed``) follow the kernel's calling convention: they
    are, so the verifier refuses to read them, and the interpreter overwrites them with
    SCRATCH_POISON after helper calls in verified programs, so that a read the verifier let
    through shows in a differential run. Programs without a type (raw memory, as rbpf runs
    them) keep r1-r5 across calls, which programs written for rbpf rely on.
    """
    return typed
MAY_GOTO_BUDGET = 8_388_608  # may_goto instructions a run executes before they jump (the kernel's BPF_MAX_LOOPS)
MAX_LOOP_ITERATIONS = 1 << 23  # the largest bpf_loop count (more fails the call with -E2BIG, as in the kernel)
# The flags bpf_user_ringbuf_drain takes (BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP: nobody waits here);
# other bits fail the call with -EINVAL, as the other callback helpers' flags do.
DRAIN_FLAGS = 0b11


# Ids of the standard helpers that call back into the program (bpf_for_each_map_elem, bpf_loop,
# bpf_user_ringbuf_drain):
# the program's blocks end after their calls, so that both engines can run the callback between.
CALLBACK_HELPER_IDS = frozenset({164, 181, 209})
# bpf_timer_set_callback's id: the callbacks of a program that calls it may run on their own,
# between the program's runs, when their timer expires (both engines then have an entry for them).
TIMER_SET_CALLBACK = 170
FUNCTION_ADDRESS_BASE = 0xFFFF_FFFF_0000_0000  # what `lddw rX, func:F` loads: this plus F's slot (never memory)


class CallbackKind(enum.Enum):
    """How a helper that takes a callback calls it: the engines run these helpers themselves,
    entering the callback with a new frame as a local call does, and the verifier checks the
    callback with the arguments it gets."""

    LOOP = "loop"  # bpf_loop(nr, cb, ctx, flags): cb(i, ctx) for i < nr, until it returns 1
    FOR_EACH = "for_each"  # bpf_for_each_map_elem(map, cb, ctx, flags): cb(map, key, value, ctx) per element
    # bpf_user_ringbuf_drain(map, cb, ctx, flags): cb(dynptr, ctx) per sample (a dynptr over its bytes)
    USER_RINGBUF = "user_ringbuf"


def function_address(entry: int) -> int:
    """The value of a callback's address in a register (``entry`` is its first slot)."""
    return FUNCTION_ADDRESS_BASE + entry


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


class Engine(Protocol):
    """What runs one program of a VM: the interpreter or the JIT code. The VM's run loop drives
    either the same way, following tail calls from one program's engine to the next one's."""

    def run_regions(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, *,
                    packet: PacketSource | None = None, budget: int | None = None, tail_calls_left: int = 0,
                    callback: tuple[int, int] | None = None) -> int:
        """Run once with the regions ``mem`` and ``extra`` (r1, r2 as given) and return r0.

        ``callback`` = (address, r3) runs the asynchronous callback at that address (a timer's,
        as ``lddw func:`` loads it) instead of the program, with r1-r3 as its arguments.

        ``packet`` is what legacy packet loads read; ``budget`` overrides the program's (a tail
        call continues with what its caller left); ``tail_calls_left`` is published to helpers.
        A tail-call request leaves as ``TailCall`` with its ``budget`` filled in."""
        ...
