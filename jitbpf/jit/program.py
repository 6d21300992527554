"""JitProgram: compiles one program to host machine code, owns that code and its helper table,
and runs it with one native call per run (a native run context per thread)."""

from __future__ import annotations

import array
import bisect
import functools
import inspect
import itertools
import platform
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jitbpf._ffi import ffi
from jitbpf.cfg import ControlFlow, writes_fp
from jitbpf.contract import CALLBACK_HELPER_IDS, TIMER_SET_CALLBACK, CallbackKind
from jitbpf.errors import BpfError, JitError, not_an_async_callback
from jitbpf.helpers import POINTER_ARGS, ArgType, Helper
from jitbpf.isa import FP, MASK64, OPCODES, Instruction, Kind, PseudoSrc, opcode_mask, sign_extend
from jitbpf.jit.encoding import Assembler, default_cache
from jitbpf.jit.execmem import ExecutableMemory
from jitbpf.jit.runtime import (
    ENTRY_TYPE,
    ERROR_RESULT,
    Dispatcher,
    JitThreadContext,
    Status,
    clamp_budget,
    layout,
    run_error,
)
from jitbpf.jit.target import CompiledCode, CompileOptions, HelperTable
from jitbpf.jit.x86_64 import X86_64
from jitbpf.memory import LegacyPacket, access_operand
from jitbpf.sandbox import contained

if TYPE_CHECKING:
    from jitbpf.memory import PacketSource, Region
    from jitbpf.vm import RunState

RegionsRunner = Callable[..., int]
"""Runs a program over explicit regions: (mem, extra, r1, r2, *, packet) -> r0."""
MIN_TABLE = 16  # helper table entries at least (ids below are looked up without Python)
MAX_TABLE = 4096  # at most; larger ids go through the dispatcher
# Bare-run tokens (see jitbpf/_native/run.c): unique for the life of the process, never reused,
# so that a thread's binding for a program that is gone can never match a live one.
_TOKENS = itertools.count(1)
# Helper argument kinds that are (or may be) pointers the helper follows: see _native_for.
_UNCHECKED_ARGS = frozenset({ArgType.ANYTHING})  # even the verifier does not check these
_GATE_POLL = 50e-6  # seconds between looks at a closing program's native runs
_MAX_NAMES = 1024  # region names kept for errors (forgotten all at once past this)
_NOTABLE = frozenset({Kind.CALL, Kind.CALLX, Kind.CALL_LOCAL, Kind.LDDW})  # kinds the runner asks about
_NOTABLE_OPCODES = opcode_mask(row.opcode for row in OPCODES if row.kind in _NOTABLE)


def _closed(*_args: Any) -> int:
    raise JitError("the JIT program is closed")


def _retire_gate(gate: Any, wait: bool) -> bool:
    """Close a program's run gate (jitbpf/_native/jbrun.h) and, once no native run is inside the
    code any more, recycle it; True when the code may be unmapped. With ``wait``, runs on other
    threads are waited for (the GIL handed over: they take no Python), unless this thread is
    itself inside a native run, which could be one of them: then the gate and the code are left
    as they are (a leak, never an unmapping under a running program)."""
    nat = runner_lib()
    if gate is None or nat is None:
        return True
    lib = nat.lib
    if lib.jb_gate_close(gate):
        if not wait or lib.jb_gate_running_here():
            return False
        while lib.jb_gate_active(gate):
            time.sleep(_GATE_POLL)
    lib.jb_gate_free(gate)
    return True


def _weak(fn: Callable[..., Any] | None) -> Callable[[], Callable[..., Any] | None]:
    """A weak reference to a bound method (a strong one to anything else)."""
    if inspect.ismethod(fn):
        return weakref.WeakMethod(fn)
    return lambda: fn


@functools.cache
def runner_lib() -> Any | None:
    """The native run loops (``jitbpf._native``: bare runs, batches), or None when the native
    library cannot be built here (no C compiler): callers then take the Python paths."""
    try:
        from jitbpf._native import native

        nat = native()
    except BpfError:
        return None
    nat.lib.jb_jit_init(ERROR_RESULT)
    return nat


RegionKey = tuple[tuple[int, int, bool], ...]  # (base, size, writable) of each non-empty region


def _region_key(regions: Sequence[Region]) -> RegionKey:
    return tuple((r.base, r.size, r.writable) for r in regions if r.size)


def _region_table(key: RegionKey) -> Any:
    """The native ``jitbpf_region`` array of ``key`` (never empty: cffi arrays need a size)."""
    table = ffi.new("struct jitbpf_region[]", max(1, len(key)))
    for i, (base, size, writable) in enumerate(key):
        table[i].base, table[i].size, table[i].writable = base, size, int(writable)
    return table


def _check_host() -> None:
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise JitError(f"the JIT generates x86-64 code for Linux; this host is {sys.platform}/{platform.machine()}")


class JitProgram:
    """A program compiled to x86-64.

    ``helpers`` is the VM's live helper dict (Python helpers are looked up at call time);
    ``set_helper`` also updates the in-memory table the code calls through, so helpers may be
    (re)registered after compilation. ``state`` returns the calling thread's RunState, whose
    stack the program uses. Several threads may run one JitProgram at once.
    """

    def __init__(
        self,
        flow: ControlFlow,
        *,
        resolve_lddw: Callable[[int, Instruction], int],
        helpers: Mapping[int, Helper],
        proven: frozenset[int],
        state: Callable[[], RunState],
        budget: int,
        runner: RegionsRunner | None = None,
        assembler: Assembler | None = None,
        count_budget: bool | None = None,
        verified: bool = False,
        python_calls: frozenset[int] = frozenset(),
        confine: bool = True,
        probe_loads: frozenset[int] = frozenset(),
    ) -> None:
        _check_host()
        # Without the sandbox nothing may be left unchecked on the verifier's word, and the C
        # helpers (which accept only sandbox memory) take no pointers from JIT code.
        # ``confine=False`` trusts the proofs outright: only for measuring what confinement costs.
        self.contained = contained()
        if not self.contained and confine:
            proven = frozenset()
        self._verified = verified
        self._python_calls = python_calls  # helper calls made through Python whatever the helper
        self._flow = flow
        self._region_names: dict[int, str] = {}  # base address -> name of regions runs were given
        self._args: dict[str, Any] = dict(resolve_lddw=resolve_lddw, helpers=helpers, proven=proven, state=state,
                                          budget=budget, runner=runner, assembler=assembler, verified=verified,
                                          python_calls=python_calls, confine=confine, probe_loads=probe_loads)
        self._counting: JitProgram | None = None  # the budget-counting twin (see run_regions)
        self._twin_lock = threading.Lock()
        self._direct_lock = threading.Lock()  # guards _direct_runs (see _direct)
        self._direct_runs = 0
        self._helpers = helpers
        self._state = _weak(state)  # the VM's: held weakly, the VM owns this object
        self._budget = budget
        self._tls = threading.local()  # .rc: this thread's JitThreadContext
        # The VM's execute_jit_regions, which adds map regions and follows tail calls; run()
        # takes it for programs that may need either.
        self._runner = _weak(runner)
        # One pass over the program gathers what the runner needs to know about it.
        by_kind: dict[Kind, list[tuple[int, Instruction]]] = {}
        slots, infos = flow.program.slots, flow.program.infos
        # Most programs have few of these: the pass that finds them looks at the opcodes alone.
        for pc in flow.program.find_slots(_NOTABLE_OPCODES):
            insn, info = slots[pc], infos[pc]
            if insn is not None and info is not None and info.kind in _NOTABLE:
                by_kind.setdefault(info.kind, []).append((pc, insn))
        helper_calls = by_kind.get(Kind.CALL, [])
        self._kinds = frozenset(by_kind)
        # callx picks its helper at run time: the verifier cannot have checked the arguments for
        # the one it reaches, so such programs get no trusting C helpers.
        self._verified = verified and Kind.CALLX not in self._kinds and self.contained
        self._writes_memory: bool | None = None  # found out on first use (batches only)
        call_ids = [insn.imm for _pc, insn in helper_calls]
        self._call_ids = frozenset(call_ids)
        self._call_pcs = frozenset(pc for pc, _insn in helper_calls)
        self._has_calls = bool(helper_calls or by_kind.get(Kind.CALLX))
        # Without loops or calls of any kind each instruction runs at most once, so a budget of
        # at least the program's length cannot run out: the code then skips counting.
        loops_or_calls = flow.has_back_edges or self._has_calls or Kind.CALL_LOCAL in by_kind
        self._max_insns = flow.max_insns
        if count_budget is None:
            count_budget = loops_or_calls or self._max_insns > budget
        self.counts_budget = count_budget
        # Without helper calls or map pseudo-loads a program cannot reach memory beyond mem and
        # the stack, so run() may skip region bookkeeping altogether.
        self.simple = not self._has_calls and not any(
            insn.src != PseudoSrc.IMM64 for _pc, insn in by_kind.get(Kind.LDDW, ()))
        wanted = max([i for i in (*call_ids, *helpers) if 0 <= i < MAX_TABLE], default=0) + 1
        self._capacity = max(MIN_TABLE, wanted)
        # Helper calls go through a table: a helper's native address per id, or the native
        # library's jb_helper_python, which calls the Python function of the helper itself from
        # the dispatcher's handle that each run passes (Python helpers, unknown ids). No cffi
        # callback: libffi maps its trampolines writable and executable.
        nat = runner_lib()
        if nat is None and self._has_calls:
            raise JitError("JIT code calls helpers through jitbpf's native library, which needs a C compiler "
                           "to build (install gcc, or set CC); the interpreter (execute) needs none")
        self._dispatcher = None if nat is None else Dispatcher(helpers, self._tls, nat.ffi)
        self._python: Any = None if self._dispatcher is None else self._dispatcher.handle
        self._dispatch_addr = 0 if nat is None else nat.address("jb_helper_python")
        self._table = ffi.new("uint64_t[]", [self._dispatch_addr] * self._capacity)
        self._natives: dict[int, Helper] = {}  # helpers whose native code the table points at
        self._table_done = False  # set_helper calls from here on are registrations after compiling
        for helper in list(helpers.values()):  # (a copy: another thread may register one meanwhile)
            self.set_helper(helper)
        self._note_python_calls()
        self._table_done = True
        table = HelperTable(int(ffi.cast("uintptr_t", self._table)), self._capacity, self._dispatch_addr)
        callbacks = {pc: h.callback for pc, insn in helper_calls
                     if insn.imm in CALLBACK_HELPER_IDS and (h := helpers.get(insn.imm)) is not None
                     and h.callback is not None}
        if {CallbackKind.FOR_EACH, CallbackKind.USER_RINGBUF} & set(callbacks.values()) and nat is None:
            raise JitError("bpf_for_each_map_elem and bpf_user_ringbuf_drain need jitbpf's native library, which "
                           "needs a C compiler to build")
        for_each_step = nat.address("jb_for_each_step") if nat is not None else 0
        # A program that sets timers' callbacks may have runs enter any of its callbacks.
        async_entries = tuple(sorted(set(flow.callbacks.values()))) if TIMER_SET_CALLBACK in self._call_ids else ()
        options = CompileOptions(resolve_lddw, proven, table, count_budget, verified, python_calls,
                                 self.contained and confine, callbacks, for_each_step, probe_loads - proven,
                                 nat.address("jb_user_ringbuf_step") if nat is not None else 0, async_entries,
                                 self._has_calls)
        assembler = assembler or default_cache()
        self.compiled: CompiledCode = X86_64(assembler, flow, options).compile()
        assembler.persist()
        blocks = (self.compiled.blocks, self.compiled.entries["cold"])
        self._code = ExecutableMemory(self.compiled.code, self.compiled.entries["abort_fault"], blocks)
        self._pc_offsets: list[int] | None = None  # ascending code offsets of instructions (faults)
        self.token = next(_TOKENS)  # names this program to the native bare-run table
        # Native runs that bypass the VM's bookkeeping (bare and single typed runs) hold this
        # gate while they run, so that close() waits for them instead of unmapping code under them.
        self._gate: Any = None if nat is None else nat.lib.jb_gate_new(self.token)
        if nat is not None and self._gate == nat.ffi.NULL:
            self._gate = None  # out of memory: no native fast paths (bind_bare, regions_binding)
        self._gate_finalizer = weakref.finalize(self, _retire_gate, self._gate, False)
        self._gate_recycled = False  # close() gave the gate back (see idle)
        self._gate_finalizer.atexit = False  # (as the code's: a daemon thread may be inside it at exit)
        entries = self.compiled.entries
        self._entry_none: Callable[[Any], int] = self._code.function(entries["none"], ENTRY_TYPE)
        self._entry_mem: Callable[[Any], int] = self._code.function(entries["mem"], ENTRY_TYPE)
        self._entry_regions: Callable[[Any], int] = self._code.function(entries["regions"], ENTRY_TYPE)
        # With the native library, single runs enter the code through it with the run gate held
        # (see close), and this program's dispatcher is the one their Python helper calls reach:
        # the regions entry (without GIL, with), and the args entry with its buffer pinner.
        self._native_entry: tuple[Callable[..., int], Callable[..., int]] | None = None
        self._native_args: tuple[Callable[..., int], Callable[..., Any]] | None = None
        if nat is not None and self._gate is not None:
            self._native_entry = (nat.lib.jb_run_entry, nat.lib.jb_run_entry_gil)
            self._native_args = (nat.lib.jb_run_args, nat.ffi.from_buffer)
        self._regions_address = self._code.address + entries["regions"]
        self._args_address = self._code.address + entries["args"]

    # -- helpers ----------------------------------------------------------------------------------

    def set_helper(self, helper: Helper) -> None:
        """Make the code call ``helper`` for its id (natively when it has a native address)."""
        if 0 <= helper.id < self._capacity:
            native = self._native_for(helper)
            if native:
                self._natives[helper.id] = helper  # keeps the native code's owner alive
                self._table[helper.id] = native
            else:
                self._natives.pop(helper.id, None)
                self._table[helper.id] = self._dispatch_addr
        self._note_python_calls()

    def _note_python_calls(self) -> None:
        # Whether a run may call Python (then it keeps the GIL: see _run_code), and whether
        # batches run natively (see batchable): both change only with the helpers.
        self._calls_python = (Kind.CALLX in self._kinds or bool(self._python_calls)
                              or any(i not in self._natives and not self._calls_back(i) for i in self._call_ids))
        self._batchable = (runner_lib() is not None and Kind.CALLX not in self._kinds and not self._python_calls
                           and all(i in self._natives for i in self._call_ids if i in self._helpers))

    def _calls_back(self, helper_id: int) -> bool:
        """Whether calls of this id are the engine's own loop over a callback (no helper called)."""
        helper = self._helpers.get(helper_id)
        return helper_id in CALLBACK_HELPER_IDS and helper is not None and helper.callback is not None

    def _native_for(self, helper: Helper) -> int:
        """The C function to call for ``helper``, or 0 for its Python one. C helpers trust their
        pointer arguments, which the verifier checks against their declared kinds; an unverified
        program (or a verified one, for arguments of no checked kind) calls those through the
        Python functions, which check every pointer at run time."""
        if not helper.native:
            return 0
        # The verification covered the helpers there were then: one registered later was not
        # checked against the program, so only pointer-free ones of those run as C.
        declared = helper.signature[0] if helper.args else ()  # a helper of no arguments takes no pointer
        if self._verified and not self._table_done and not _UNCHECKED_ARGS.intersection(declared):
            return helper.native
        if not POINTER_ARGS.intersection(declared):
            return helper.native
        return 0

    def _run_code(self, rc: JitThreadContext) -> int:
        """Run the regions entry on ``rc``. Programs that may call Python keep the GIL while
        their code runs: each helper call then costs no GIL hand-over."""
        native = self._native_entry
        if native is None:
            return self._direct("_entry_regions", rc)
        result = int(native[self._calls_python](self._gate, self.token, self._regions_address, rc.ctx_addr,
                                                self._python))
        if result == ERROR_RESULT and self.closed:
            raise JitError("the JIT program is closed")  # closed by another thread: nothing ran
        return result

    # -- running ----------------------------------------------------------------------------------

    def _context(self) -> JitThreadContext:
        state = self._state()
        if state is None:
            raise JitError("the VM of this JIT program is gone")
        rc = JitThreadContext(state(), self._budget)
        self._tls.rc = rc
        return rc

    def bind_bare(self, extra: Sequence[Region] = ()) -> Any | None:
        """Bind this thread's run context to ``token`` in the native bare-run table, with
        ``extra`` (the maps' regions) as its further regions; return the native library
        (``Native``) whose ``jb_bare_run(token)``, ``jb_bare_run_mem(token, pin, size)`` and
        ``jb_bare_records`` then run the program (what ``VM.execute_jit`` and ``execute_records``
        call), or None when runs need run()'s
        bookkeeping (Python helpers, tail calls). A result of ``ERROR_RESULT`` goes to ``finish``."""
        nat = runner_lib()
        if nat is None or self._gate is None or self.closed or not (self.simple or self.batchable):
            return None
        rc = self._thread_context()
        key = _region_key(extra)
        self._name_regions(extra)
        table = rc.bare_extra = _region_table(key)  # the binding's own: run_regions may replace the context's
        args, batch = (self._code.address + self.compiled.entries[e] for e in ("args", "batch"))
        nat.lib.jb_bare_bind(self.token, self._gate, args, batch, rc.ctx_addr, int(ffi.cast("uintptr_t", table)),
                             len(key), self._python)
        return nat

    def bare_bound(self) -> bool:
        """Whether this thread's bare entry is bound (so a bare run really ran)."""
        nat = runner_lib()
        return nat is not None and bool(nat.lib.jb_bare_bound(self.token))

    def finish(self, result: int) -> int:
        """The outcome of this thread's bare run that returned ``ERROR_RESULT``."""
        return self._finish(self._tls.rc, result)

    def regions_binding(self) -> tuple[int, JitThreadContext, Any] | None:
        """The "regions" entry's address, this thread's run context and the program's run gate
        (which native runs hold while they run: see ``close``), for native runners that fill
        the context's inputs themselves (``jitbpf.linux.pktrun``); None when runs need Python
        (``batchable`` is false) or the code is gone. Results of ``ERROR_RESULT`` go to ``finish``."""
        if runner_lib() is None or self._gate is None or self.closed or not self.batchable:
            return None
        return self._code.address + self.compiled.entries["regions"], self._thread_context(), self._gate

    def _thread_context(self) -> JitThreadContext:
        try:
            rc: JitThreadContext = self._tls.rc
        except AttributeError:
            rc = self._context()
        return rc

    @property
    def writes_memory(self) -> bool:
        """Whether a run may write memory other than its own stack frames: stores and atomics
        not relative to an unchanging r10, and helper calls (a helper may write through a
        pointer it is given)."""
        if self._writes_memory is None:
            fp_fixed = not writes_fp(self._flow.program)
            self._writes_memory = bool(self._call_ids) or Kind.CALLX in self._kinds or any(
                info.kind in (Kind.ST, Kind.STX, Kind.ATOMIC) and not (fp_fixed and insn.dst == FP)
                for _pc, insn, info in self._flow.program)
        return self._writes_memory

    @property
    def batchable(self) -> bool:
        """Whether batches run in one native loop: the program calls no Python helper (those need
        each run's memory map) and makes no tail call, and the native library is there."""
        return self._batchable and self._gate is not None  # batch loops hold the run gate

    def run_batch(self, buffers: Sequence[Any], extra: Sequence[Region] = ()) -> array.array[int]:
        """Run once per buffer (each as r1/r2 and the packet) in one native loop; ``extra`` are
        further regions (maps). The buffers are packed back to back first (one copy, far cheaper
        than pinning each one) and, if the program may write memory, copied back after. Requires
        ``batchable``."""
        nat = runner_lib()
        assert nat is not None
        nffi = nat.ffi  # the native library's FFI: its functions take its own cdata
        packed = bytearray().join(buffers)
        # Sizes in bytes, as join packs them (len() of an array counts items; a subclass may
        # say anything): the program's bounds must be the copy's.
        sizes = [len(b) if type(b) is bytearray else memoryview(b).nbytes for b in buffers]
        n = len(sizes)
        pin = nffi.from_buffer(packed, require_writable=True)
        lens = nffi.new("uint64_t[]", sizes)
        out = array.array("Q", [0]) * n
        results = nffi.from_buffer("uint64_t[]", out, require_writable=True)

        def loop(start: int, rc: JitThreadContext) -> int:
            return int(nat.lib.jb_run_packed(self._gate, self.token, self._batch_entry(), rc.ctx_addr, rc.extra_addr,
                                             len(rc.extra_key), pin + offsets[start], lens + start, n - start,
                                             results + start, self._python))

        offsets = list(itertools.accumulate(sizes, initial=0))
        try:
            self._batch(loop, n, results, extra)
        finally:
            if self.writes_memory:
                view = memoryview(packed)
                for buf, lo, hi in zip(buffers, offsets, offsets[1:], strict=False):
                    if type(buf) is bytearray:
                        buf[:] = view[lo:hi]
                    else:
                        with memoryview(buf) as whole, whole.cast("B") as raw:
                            raw[:] = view[lo:hi]
                del view
            nffi.release(pin)
        return out

    def run_records(self, data: Any, record_size: int, extra: Sequence[Region] = ()) -> array.array[int]:
        """Run once per ``record_size``-byte record of the writable buffer ``data``, in one native
        loop (trailing bytes short of a record are not run). Requires ``batchable``."""
        if record_size <= 0:
            raise ValueError(f"record size {record_size} must be positive")
        nat = runner_lib()
        assert nat is not None
        nffi = nat.ffi
        pin = nffi.from_buffer(data, require_writable=True)
        n = len(pin) // record_size
        out = array.array("Q", [0]) * n
        results = nffi.from_buffer("uint64_t[]", out, require_writable=True)

        def loop(start: int, rc: JitThreadContext) -> int:
            return int(nat.lib.jb_run_records(self._gate, self.token, self._batch_entry(), rc.ctx_addr, rc.extra_addr,
                                              len(rc.extra_key), pin + start * record_size if start else pin,
                                              record_size, n - start, results + start if start else results,
                                              self._python))

        self._batch(loop, n, results, extra)
        nffi.release(pin)
        return out

    def _batch_entry(self) -> int:
        if self.closed:
            raise JitError("the JIT program is closed")
        return self._code.address + self.compiled.entries["batch"]

    def _batch(self, loop: Callable[[int, JitThreadContext], int], n: int, results: Any,
               extra: Sequence[Region]) -> None:
        """Run ``loop`` from the first input until all have run (it sets the context's regions to
        ``extra``); an input that stopped early raises its error (noted with its index), or
        records what a stopping helper returned."""
        rc = self._thread_context()
        table = self._extra_table(rc, extra)  # held here: what rc.extra_addr points to
        start = 0
        while start < n:
            done = loop(start, rc)
            if done > n:  # the gate was closed before the loop began: another thread closed the program
                raise JitError("the JIT program is closed")
            start += done
            if start < n:
                try:
                    results[start] = self._finish(rc, results[start])
                except BpfError as err:
                    err.add_note(f"in input {start} of the batch")
                    raise
                start += 1
        del table

    def _extra_table(self, rc: JitThreadContext, extra: Sequence[Region]) -> Any:
        """The native region table for ``extra`` (cached on the thread's context)."""
        key = _region_key(extra)
        if key != rc.extra_key:
            rc.extra_regions, rc.extra_key = _region_table(key), key
            rc.extra_addr = int(ffi.cast("uintptr_t", rc.extra_regions))
            self._name_regions(extra)
        return rc.extra_regions

    def _name_regions(self, regions: Sequence[Region]) -> None:
        """Remember the names of regions runs are given, for their access errors."""
        names = self._region_names
        if len(names) > _MAX_NAMES:
            names.clear()
        names.update((r.base, r.name) for r in regions if r.size)

    def _operand_at(self, pc: int) -> str:
        return access_operand(self._flow.program, pc)

    def run(self, mem: Any = None) -> int:
        """Run with ``mem`` as r1/r2 and as the packet; return r0."""
        if not self.simple:
            return self._run_tracked(mem)
        try:
            rc: JitThreadContext = self._tls.rc
        except AttributeError:
            rc = self._context()
        native = self._native_args
        if native is not None:
            result = self._run_args(native, rc, mem)
        elif mem is None:
            result = self._direct("_entry_none", rc)
        else:
            try:
                buf = ffi.from_buffer(mem, require_writable=True)
            except (TypeError, BufferError, ValueError):  # (numpy says ValueError for read-only)
                return self._run_tracked(mem)  # read-only or odd buffers: copied like the interpreter
            size = len(buf)
            if size:
                ctx = rc.ctx
                ctx.mem = buf
                ctx.mem_size = size
                result = self._direct("_entry_mem", rc)
            else:
                result = self._direct("_entry_none", rc)
        if result == ERROR_RESULT:
            return self._finish(rc, result)
        return result

    def _direct(self, entry: str, rc: JitThreadContext) -> int:
        """A run by a direct cffi call of the code (no native library, so no run gate): counted,
        so that close() on another thread waits for it. The entry is looked up once counted:
        close() replaces the entries before it waits for the count to fall to zero."""
        with self._direct_lock:
            self._direct_runs += 1
        try:
            result: int = getattr(self, entry)(rc.ctx)
        finally:
            with self._direct_lock:
                self._direct_runs -= 1
        return result

    def _run_args(self, native: tuple[Callable[..., int], Callable[..., Any]], rc: JitThreadContext,
                  mem: Any) -> int:
        """run() through the native library: the args entry with the run gate held, so that a
        close() on another thread waits for this run (direct cffi calls of the code could still
        be on their way in when it unmaps)."""
        run_args, pin_of = native
        rc.ctx.nextra = 0  # only mem and the stack, as the other entries make it
        if mem is None:
            pin, size = None, 0
        else:
            try:
                pin = pin_of(mem, require_writable=True)
            except (TypeError, BufferError, ValueError):  # (numpy says ValueError for read-only)
                return self._run_tracked(mem)  # read-only or odd buffers: copied like the interpreter
            size = len(pin)
        result = int(run_args(self._gate, self.token, self._args_address, rc.ctx_addr, pin if size else ffi.NULL,
                              size, self._python))
        if result == ERROR_RESULT and self.closed:
            raise JitError("the JIT program is closed")
        del pin
        return result

    def _run_tracked(self, mem: Any) -> int:
        """Run with a Region for mem through the VM's runner (map regions, tail calls), so that
        Python helpers also see the run's memory."""
        from jitbpf.vm import _mem_region

        region, pin = _mem_region(mem)
        runner = self._runner() or self.run_regions
        try:
            return runner(region, (), region.base, region.size, packet=region)
        finally:
            # The buffer stays pinned until the run is over; then no traceback may keep the pin
            # (the garbage collector cannot safely break cycles through pinned memoryviews).
            del region, pin

    def run_regions(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, *,
                    packet: PacketSource | None = None, budget: int | None = None, tail_calls_left: int = 0,
                    callback: tuple[int, int] | None = None) -> int:
        """Run with explicit regions (searched in order: mem, the stack, then ``extra``).

        ``callback`` = (address, r3) enters the asynchronous callback at that address instead
        (r1-r3 its arguments); only programs that set timers' callbacks have that entry.

        ``budget`` overrides the program's for this run (a tail call continues with what its
        caller left); ``tail_calls_left`` is published to helpers through the RunState."""
        if budget is not None and budget < self._max_insns and not self.counts_budget:
            # This code does not count; a run that may exhaust a smaller budget takes the twin
            # that does, so both engines stop at the same instruction.
            with self._twin_lock:  # threads must not make two (the loser's code would be unmapped)
                if self._counting is None:
                    self._counting = JitProgram(self._flow, count_budget=True, **self._args)
            return self._counting.run_regions(mem, extra, r1, r2, packet=packet, budget=budget,
                                              tail_calls_left=tail_calls_left, callback=callback)
        try:
            rc: JitThreadContext = self._tls.rc
        except AttributeError:
            rc = self._context()
        ctx = rc.ctx
        ctx.mem = ffi.cast("char *", mem.base) if mem.size else ffi.NULL
        ctx.mem_size = mem.size
        rc.mem_name = mem.name
        ctx.mem_writable = 1 if mem.writable else 0
        ctx.r1 = r1 & MASK64
        ctx.r2 = r2 & MASK64
        if isinstance(packet, LegacyPacket):
            ctx.pkt_bounds, ctx.pkt_net = packet.bounds, packet.net
        else:  # a packet no helper moves (or none): the context's own words hold it
            own = ctx.pkt_own
            own[0], own[1], own[2] = (packet.base, packet.base + packet.size, 0) if packet is not None else (0, 0, 0)
            own_at = rc.ctx_addr + layout().ctx_pkt_own
            ctx.pkt_bounds, ctx.pkt_net = own_at, own_at + 16
        regions = self._extra_table(rc, extra)  # held here: a nested run may replace rc's
        ctx.extra = regions
        ctx.nextra = len(rc.extra_key)
        if self._has_calls:
            rc.state.begin(mem, extra, tail_calls_left)
        if callback is not None:
            if TIMER_SET_CALLBACK not in self._call_ids:
                raise not_an_async_callback(callback[0])
            ctx.callback, ctx.r3 = callback[0] & MASK64, callback[1] & MASK64
        try:
            if budget is None or budget == self._budget:
                result: int = self._run_code(rc)
            else:
                ctx.budget = clamp_budget(budget)
                try:
                    result = self._run_code(rc)
                finally:
                    ctx.budget = clamp_budget(self._budget)
        finally:
            ctx.callback = ctx.r3 = 0
        del regions
        if result == ERROR_RESULT:
            return self._finish(rc, result)
        return result

    def _finish(self, rc: JitThreadContext, result: int) -> int:
        status = int(rc.ctx.status)
        if not status:
            return result  # the program really returned ERROR_RESULT
        if status == Status.HELPER and int(rc.ctx.err_info) in self._call_pcs:
            rc.helper_id = sign_extend(rc.helper_id, 64)  # `call imm` names the id as written
        outcome = run_error(rc, status, self._pc_at, self._operand_at, self._region_names)
        if isinstance(outcome, int):
            return outcome
        try:
            raise outcome
        finally:
            del outcome  # the traceback's frame must not refer back to the exception (a cycle)

    def _pc_at(self, address: int) -> int | None:
        """The eBPF pc whose code holds the host ``address`` (None outside the hot code)."""
        pcs = sorted(self.compiled.pcs)
        if self._pc_offsets is None:
            self._pc_offsets = [off for off, _pc in pcs]
        i = bisect.bisect_right(self._pc_offsets, address - self._code.address) - 1
        return pcs[i][1] if i >= 0 else None

    # -- listing and lifetime ---------------------------------------------------------------------

    def dump(self) -> str:
        """The machine code disassembled, each group of lines under the eBPF instruction (or the
        prologue, stub or runtime routine) it came from."""
        from jitbpf.jit.listing import listing

        return listing(self.compiled, self._flow.program, X86_64.capstone_arch)

    @property
    def closed(self) -> bool:
        return self._code.closed

    def idle(self) -> bool:
        """Whether no run is inside the code on any thread: no direct run, and no native run
        holding the run gate (bare, batch and typed runs, and runs from Python alike)."""
        if self._direct_runs:
            return False
        nat = runner_lib()
        gate = self._gate
        return gate is None or nat is None or self._gate_recycled or not nat.lib.jb_gate_active(gate)

    def shut(self) -> None:
        """Let no new run start (``close`` then waits for those inside and unmaps the code)."""
        self._entry_none = self._entry_mem = self._entry_regions = _closed
        self._native_entry = self._native_args = None
        nat = runner_lib()
        if self._gate is not None and nat is not None and not self._gate_recycled:
            nat.lib.jb_gate_close(self._gate)  # (again in close: it only clears the token)

    def busy_elsewhere(self) -> bool:
        """Whether runs on other threads are inside the code (close() would wait for them)."""
        nat = runner_lib()
        return not self.idle() and not (nat is not None and nat.lib.jb_gate_running_here())

    def close(self) -> None:
        """Unmap the machine code. Native runs still inside it (bare runs and single typed runs
        on other threads, which the VM does not count) are waited for; no new one starts."""
        self.shut()
        while True:  # direct runs (without the native library) have no helpers: none is this thread's
            with self._direct_lock:
                if not self._direct_runs:
                    break
            time.sleep(_GATE_POLL)
        if self._gate is not None and self._gate_finalizer.alive:
            self._gate_finalizer.detach()
            if not _retire_gate(self._gate, True):
                return  # this very thread may be inside the code: it stays mapped (see _retire_gate)
            self._gate_recycled = True  # another program's from now on
        self._code.close()
        if self._counting is not None:
            self._counting.close()

    def __enter__(self) -> JitProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
