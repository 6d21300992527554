"""The contract between generated code and Python: the run-context and frame layouts (from
the cffi declarations), the status codes a run ends with, and the errors they turn into."""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from jitbpf._ffi import ffi
from jitbpf.contract import HelperExit, TailCall
from jitbpf.errors import (
    BpfError,
    ExecutionError,
    InternalError,
    budget_exhausted,
    call_too_deep,
    not_a_callback,
    out_of_bounds,
)
from jitbpf.helpers import Helper
from jitbpf.isa import MASK64

ENTRY_TYPE = "uint64_t (*)(struct jitbpf_ctx *)"  # every entry point takes the run context
ERROR_RESULT = 0xBADC_0FFE_E0DD_F00D  # returned when a run stops early; then ``status`` tells why


class Status(enum.IntEnum):
    """Why a run ended, as stored in ``jitbpf_ctx.status``."""

    OK = 0  # EXIT from the main function (or a packet load out of range)
    BUDGET = 1  # instruction budget exhausted; err_info = block pc
    OOB_LOAD = 2  # access outside every region (loads and atomics); err_info = access info
    OOB_STORE = 3  # store outside every region; err_info = access info
    RO_STORE = 4  # store to a read-only region; err_info = access info
    HELPER = 5  # a helper raised (or asked to stop); err_info = pc, exception kept in Python
    DEPTH = 6  # local calls nested too deep; err_info = block pc
    KFUNC = 7  # kernel function call; err_info = pc
    FAULT = 8  # the code faulted (a confined access outside live sandbox memory); err_info = the
    # faulting instruction's host address, err_addr = the address (set by the fault handler)
    CALLBACK = 9  # a helper that calls back was given no function's address; err_info = pc, err_addr = r2


class AccessKind(enum.IntEnum):
    """Kind of a memory access, in bits 4-7 of the access info the bounds walker gets."""

    LOAD = 0  # needs any region
    STORE = 1  # needs a writable region
    ATOMIC = 2  # read-modify-write: a load first, then needs a writable region
    CMPXCHG = 3  # like ATOMIC, but stores only if the comparison succeeds
    PROBE = 4  # a probe load (BPF_PROBE_MEM): needs any region, and gives 0 where there is none


def access_info(pc: int, kind: AccessKind, size: int) -> int:
    """Pack what the walker needs to report a failed access (pc, kind, size)."""
    return pc << 8 | kind << 4 | size


@dataclass(frozen=True, slots=True)
class Layout:
    """Byte offsets of the fields generated code touches, from the cffi struct declarations."""

    ctx_mem: int  # jitbpf_ctx.mem
    ctx_mem_size: int  # jitbpf_ctx.mem_size
    ctx_mem_writable: int  # jitbpf_ctx.mem_writable
    ctx_r1: int  # jitbpf_ctx.r1
    ctx_r2: int  # jitbpf_ctx.r2
    ctx_r3: int  # jitbpf_ctx.r3
    ctx_callback: int  # jitbpf_ctx.callback
    ctx_pkt_bounds: int  # jitbpf_ctx.pkt_bounds
    ctx_pkt_net: int  # jitbpf_ctx.pkt_net
    ctx_pkt_own: int  # jitbpf_ctx.pkt_own[0]
    ctx_extra: int  # jitbpf_ctx.extra
    ctx_nextra: int  # jitbpf_ctx.nextra
    ctx_stack_base: int  # jitbpf_ctx.stack_base
    ctx_frame_pointer: int  # jitbpf_ctx.frame_pointer
    ctx_budget: int  # jitbpf_ctx.budget
    ctx_budget_left: int  # jitbpf_ctx.budget_left
    ctx_status: int  # jitbpf_ctx.status
    ctx_err_info: int  # jitbpf_ctx.err_info
    ctx_err_addr: int  # jitbpf_ctx.err_addr
    ctx_pending: int  # jitbpf_ctx.pending
    batch_base: int  # jitbpf_batch.base
    batch_stride: int  # jitbpf_batch.stride
    batch_lens: int  # jitbpf_batch.lens
    batch_n: int  # jitbpf_batch.n
    batch_results: int  # jitbpf_batch.results
    batch_rb_pending: int  # jitbpf_batch.rb_pending
    batch_rb_reserved: int  # jitbpf_batch.rb_reserved
    batch_rb_release: int  # jitbpf_batch.rb_release
    region_size: int  # sizeof(struct jitbpf_region)
    region_base: int  # jitbpf_region.base
    region_len: int  # jitbpf_region.size
    region_writable: int  # jitbpf_region.writable
    frame_size: int  # bytes "run" reserves for jitbpf_frame (keeps rsp 16-byte aligned)
    frame_ctx: int  # jitbpf_frame.ctx
    frame_regions: int  # jitbpf_frame.regions (mem, then the stack area)
    frame_lim_load: int  # jitbpf_frame.lim_load[0]
    frame_lim_store: int  # jitbpf_frame.lim_store[0]
    frame_mem_end: int  # jitbpf_frame.mem_end
    frame_mem_wend: int  # jitbpf_frame.mem_wend
    frame_pkt_bounds: int  # jitbpf_frame.pkt_bounds
    frame_pkt_net: int  # jitbpf_frame.pkt_net
    frame_extra: int  # jitbpf_frame.extra
    frame_nextra: int  # jitbpf_frame.nextra
    frame_zero_base: int  # jitbpf_frame.zero_base
    frame_may_goto: int  # jitbpf_frame.may_goto
    frame_callback: int  # jitbpf_frame.callback[0]


@functools.cache
def layout() -> Layout:
    """Field offsets of the native structures (computed once from the cffi declarations)."""
    ctx, region, frame = "struct jitbpf_ctx", "struct jitbpf_region", "struct jitbpf_frame"
    batch = "struct jitbpf_batch"
    # "run" starts with rsp 16-byte aligned (its callers push six registers after their return
    # address, and then its own): reserving a multiple of 16 keeps it so for helper calls.
    frame_size = (ffi.sizeof(frame) + 15) // 16 * 16
    return Layout(
        ctx_mem=ffi.offsetof(ctx, "mem"),
        ctx_mem_size=ffi.offsetof(ctx, "mem_size"),
        ctx_mem_writable=ffi.offsetof(ctx, "mem_writable"),
        ctx_r1=ffi.offsetof(ctx, "r1"),
        ctx_r2=ffi.offsetof(ctx, "r2"),
        ctx_r3=ffi.offsetof(ctx, "r3"),
        ctx_callback=ffi.offsetof(ctx, "callback"),
        ctx_pkt_bounds=ffi.offsetof(ctx, "pkt_bounds"),
        ctx_pkt_net=ffi.offsetof(ctx, "pkt_net"),
        ctx_pkt_own=ffi.offsetof(ctx, "pkt_own"),
        ctx_extra=ffi.offsetof(ctx, "extra"),
        ctx_nextra=ffi.offsetof(ctx, "nextra"),
        ctx_stack_base=ffi.offsetof(ctx, "stack_base"),
        ctx_frame_pointer=ffi.offsetof(ctx, "frame_pointer"),
        ctx_budget=ffi.offsetof(ctx, "budget"),
        ctx_budget_left=ffi.offsetof(ctx, "budget_left"),
        ctx_status=ffi.offsetof(ctx, "status"),
        ctx_err_info=ffi.offsetof(ctx, "err_info"),
        ctx_err_addr=ffi.offsetof(ctx, "err_addr"),
        ctx_pending=ffi.offsetof(ctx, "pending"),
        batch_base=ffi.offsetof(batch, "base"),
        batch_stride=ffi.offsetof(batch, "stride"),
        batch_lens=ffi.offsetof(batch, "lens"),
        batch_n=ffi.offsetof(batch, "n"),
        batch_results=ffi.offsetof(batch, "results"),
        batch_rb_pending=ffi.offsetof(batch, "rb_pending"),
        batch_rb_reserved=ffi.offsetof(batch, "rb_reserved"),
        batch_rb_release=ffi.offsetof(batch, "rb_release"),
        region_size=ffi.sizeof(region),
        region_base=ffi.offsetof(region, "base"),
        region_len=ffi.offsetof(region, "size"),
        region_writable=ffi.offsetof(region, "writable"),
        frame_size=frame_size,
        frame_ctx=ffi.offsetof(frame, "ctx"),
        frame_regions=ffi.offsetof(frame, "regions"),
        frame_lim_load=ffi.offsetof(frame, "lim_load"),
        frame_lim_store=ffi.offsetof(frame, "lim_store"),
        frame_mem_end=ffi.offsetof(frame, "mem_end"),
        frame_mem_wend=ffi.offsetof(frame, "mem_wend"),
        frame_pkt_bounds=ffi.offsetof(frame, "pkt_bounds"),
        frame_pkt_net=ffi.offsetof(frame, "pkt_net"),
        frame_extra=ffi.offsetof(frame, "extra"),
        frame_nextra=ffi.offsetof(frame, "nextra"),
        frame_zero_base=ffi.offsetof(frame, "zero_base"),
        frame_may_goto=ffi.offsetof(frame, "may_goto"),
        frame_callback=ffi.offsetof(frame, "callback"),
    )


class JitThreadContext:
    """One thread's native run context for one JitProgram, and what a helper left behind."""

    __slots__ = ("bare_extra", "ctx", "ctx_addr", "exc", "extra_addr", "extra_key", "extra_regions", "helper",
                 "helper_id", "mem_name", "state")

    def __init__(self, state: Any, budget: int) -> None:
        self.ctx: Any = ffi.new("struct jitbpf_ctx *")  # the struct generated code reads and writes
        self.ctx_addr = int(ffi.cast("uintptr_t", self.ctx))  # its address, as native calls take it
        self.ctx.stack_base = state.stack_base
        self.ctx.frame_pointer = state.frame_pointer()
        self.ctx.budget = clamp_budget(budget)
        self.state = state  # the VM's RunState of this thread (stack, memory map for helpers)
        self.mem_name = "mem"  # the name of the mem region of the last run given regions
        self.exc: BaseException | None = None  # what the last failing helper raised
        self.helper: Helper | None = None  # that helper (None: the id was unknown)
        self.helper_id = 0  # the id it was called with
        self.extra_key: tuple[tuple[int, int, bool], ...] = ()  # regions in extra_regions
        self.extra_regions: Any = ffi.NULL  # cffi array of jitbpf_region for run_regions
        self.extra_addr = 0  # its address
        self.bare_extra: Any = ffi.NULL  # the bare-run binding's region table (kept alive here)


class Dispatcher:
    """What a program's Python helper calls need: the helpers, and where to park a failure.

    Generated code reaches Python through the native library's ``jb_helper_python``, which
    calls the helper's function itself, with the GIL, from the run's ``struct jb_python``
    (``handle``: the helper dict and this object, by address). Nothing may propagate into native
    frames, so a failed call comes here (``__call__``) and is parked on the calling thread's run
    context. Kept apart from the JitProgram so that neither makes a reference cycle through the
    program (and, via the VM, through the stack buffers, which the garbage collector must never
    have to break).
    """

    __slots__ = ("handle", "helpers", "tls")

    def __init__(self, helpers: Mapping[int, Helper], tls: threading.local, nffi: Any) -> None:
        self.helpers = helpers  # the VM's live helper dict
        self.tls = tls  # .rc: the calling thread's JitThreadContext
        self.handle: Any = nffi.new("struct jb_python *")
        # id() is the object's address (CPython): both objects live as long as this one.
        self.handle.helpers = nffi.cast("void *", id(helpers))
        self.handle.dispatcher = nffi.cast("void *", id(self))

    def __call__(self, helper_id: int, helper: Helper | None, failure: BaseException | None) -> None:
        """Park a failed call (an unknown id: ``helper`` None); the code stops after it."""
        rc: JitThreadContext = self.tls.rc
        rc.exc, rc.helper, rc.helper_id = failure, helper, helper_id
        rc.ctx.pending = 1


def clamp_budget(budget: int) -> int:
    """The budget as the unsigned register holds it (negative: nothing may run)."""
    return min(max(budget, 0), MASK64)


class _Span(NamedTuple):
    base: int
    size: int
    name: str


def run_spans(rc: JitThreadContext, names: Mapping[int, str]) -> list[_Span]:
    """The regions of the run on ``rc`` (mem, the stack area, then the extra table), the extra
    ones named by base address from ``names`` (the Regions the program was given) where known."""
    ctx = rc.ctx
    spans = [_Span(int(ffi.cast("uintptr_t", ctx.mem)), int(ctx.mem_size), rc.mem_name),
             _Span(int(ctx.stack_base), int(ctx.frame_pointer) - int(ctx.stack_base), "stack")]
    for i in range(int(ctx.nextra)):
        r = ctx.extra[i]
        spans.append(_Span(int(r.base), int(r.size), names.get(int(r.base), "region")))
    return spans


def interrupted() -> bool:
    """Whether this thread's last JIT run was ended by SIGINT (and forget it)."""
    from jitbpf.jit.program import runner_lib

    nat = runner_lib()
    return nat is not None and bool(nat.lib.jb_interrupt_take())


def run_error(rc: JitThreadContext, status: int, pc_at: Callable[[int], int | None], operand_at: Callable[[int], str],
              names: Mapping[int, str]) -> BaseException | int:
    """The exception a run that ended with ``status`` raises (or r0, for HelperExit);
    ``pc_at`` maps a host address in the program's code to the eBPF pc it came from,
    ``operand_at`` gives the memory operand of the instruction at a pc ("r1+4"), ``names`` the
    names of the run's regions by base address."""
    ctx = rc.ctx
    info = int(ctx.err_info)
    match Status(status):
        case Status.FAULT:
            if interrupted():
                return KeyboardInterrupt()
            addr = int(ctx.err_addr)
            return ExecutionError(f"memory fault at address {addr:#x}: an access the verifier proved in "
                                  "bounds is not (it was confined to the sandbox)", pc=pc_at(info), address=addr)
        case Status.BUDGET:
            return budget_exhausted(info)
        case Status.OOB_LOAD | Status.OOB_STORE | Status.RO_STORE:
            pc = info >> 8
            return out_of_bounds("store" if status != Status.OOB_LOAD else "load", info & 15, int(ctx.err_addr),
                                 run_spans(rc, names), pc=pc, operand=operand_at(pc),
                                 read_only=status == Status.RO_STORE)
        case Status.HELPER:
            exc, helper, hid = rc.exc, rc.helper, rc.helper_id
            rc.exc = rc.helper = None
            return helper_error(exc, helper, hid, info, int(ctx.budget_left))
        case Status.DEPTH:
            return call_too_deep(info)
        case Status.KFUNC:
            return ExecutionError("kernel function calls are not supported", pc=info)
        case Status.CALLBACK:
            return not_a_callback(int(ctx.err_addr), info)
        case _:
            raise InternalError(f"run status {status}")


def helper_error(exc: BaseException | None, helper: Helper | None, helper_id: int, pc: int,
                 budget_left: int) -> BaseException | int:
    """What a failed helper call becomes, exactly as the interpreter's ``Env.call`` and ``run``
    make it: HelperExit ends the run with its value, a tail call leaves with the budget left."""
    if helper is None:
        return ExecutionError(f"call to unknown helper {helper_id}", pc=pc)
    if isinstance(exc, HelperExit):
        return exc.value
    if isinstance(exc, TailCall):
        exc.budget = budget_left
        return exc
    if isinstance(exc, BpfError):
        if isinstance(exc, ExecutionError) and exc.pc is None:
            err = ExecutionError(f"helper {helper.name} failed: {exc.message}", pc=pc, address=exc.address)
            err.__cause__ = exc
            return err
        return exc
    if isinstance(exc, Exception):
        err = ExecutionError(f"helper {helper.name} raised {type(exc).__name__}: {exc}", pc=pc)
        err.__cause__ = exc
        return err
    assert exc is not None
    return exc  # KeyboardInterrupt and friends pass through untouched
