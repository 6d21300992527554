"""The ``VM`` facade: one program, its helpers and maps, run by the interpreter or the JIT."""

from __future__ import annotations

import array
import errno
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jitbpf import cfg
from jitbpf.contract import (
    DEFAULT_BUDGET,
    FUNCTION_ADDRESS_BASE,
    MAX_TAIL_CALLS,
    STACK_BYTES,
    Engine,
    TailCall,
    function_address,
    scratch_args,
)
from jitbpf.errors import AccessError, BpfError, ExecutionError, VerifierError, not_an_async_callback
from jitbpf.helpers import Helper, HelperFn
from jitbpf.interpreter import CompiledBlocks, Env, Translator, run
from jitbpf.isa import FP, MASK64, STACK_SIZE, Instruction, Kind, Program, PseudoSrc
from jitbpf.jit.runtime import ERROR_RESULT
from jitbpf.linux.pktrun import Workers
from jitbpf.linux.programs import ENGINES, ProgramRunners, ProgType
from jitbpf.memory import MemoryMap, PacketSource, Region, access_operand, region_of
from jitbpf.sandbox import Pages

if TYPE_CHECKING:
    from jitbpf.jit import JitProgram
    from jitbpf.linux.programs import BtfSource
    from jitbpf.verifier import GlobalFunc

# What a thread is doing with a VM (VM._enter): nested runs of one VM on one thread would share
# its stack, its context memory and its run state, so a run may not start inside another.
IDLE = 0  # no run of the VM on this thread
PREPARING = 1  # a runner is setting up a run (a program type's context, a batch)
RUNNING = 2  # the program is running (its helpers may call anything)


class RunState:
    """Per-thread state of the runs of one VM: the stack, and the memory of the current run.

    ``memory`` is built on first use, so runs that call no Python helper never pay for it.
    """

    __slots__ = ("_mm", "extra", "mem", "more", "stack", "stack_base", "stack_view", "tail_calls_left")

    def __init__(self, more: Callable[[], Sequence[Region]] | None = None) -> None:
        self.stack = Pages(STACK_BYTES)  # in the sandbox: the JIT may access it unchecked
        self.stack_base = self.stack.address
        self.stack_view = self.stack.view[:STACK_BYTES]
        self.mem: Region | None = None
        self.extra: Sequence[Region] = ()
        self._mm: MemoryMap | None = None
        self.tail_calls_left = 0  # set by the run loop that supports tail calls (0: they fail)
        self.more = more  # the regions of maps that become reachable during a run (see MemoryMap)

    def begin(self, mem: Region, extra: Sequence[Region], tail_calls_left: int) -> None:
        """Start a run (of either engine) on ``mem`` (left out when empty) and ``extra``."""
        self.mem, self.extra, self._mm = mem if mem.size else None, extra, None
        self.tail_calls_left = tail_calls_left

    @property
    def memory(self) -> MemoryMap:
        if self._mm is None:
            regions = [Region(self.stack_base, STACK_BYTES, self.stack_view, True, "stack")]
            if self.mem is not None:
                regions.insert(0, self.mem)
            regions.extend(self.extra)
            self._mm = MemoryMap(regions, self.more)
        return self._mm

    def zero_frame(self, frame: int) -> None:
        """Clear the stack frame ``frame`` (0 = outermost, at the top of the stack area)."""
        hi = STACK_BYTES - frame * STACK_SIZE
        self.stack_view[hi - STACK_SIZE : hi] = bytes(STACK_SIZE)

    def frame_pointer(self) -> int:
        return self.stack_base + STACK_BYTES


def _map_regions_of(ref: weakref.ref[VM]) -> Callable[[], list[Region]]:
    """``VM.map_regions`` of the VM ``ref`` refers to (none once it is gone)."""
    def regions() -> list[Region]:
        vm = ref()
        return vm.map_regions() if vm is not None else []

    return regions


class _Interpreter:
    """The reference interpreter as the ``Engine`` of one VM (made for each run: it holds the VM)."""

    __slots__ = ("vm",)

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def run_regions(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, *,
                    packet: PacketSource | None = None, budget: int | None = None, tail_calls_left: int = 0,
                    callback: tuple[int, int] | None = None) -> int:
        vm = self.vm
        return vm._interpret(mem, extra, r1, r2, packet, vm.budget if budget is None else budget, tail_calls_left,
                             callback)


class VM(ProgramRunners):
    """An eBPF program ready to run.

    >>> vm = VM(assemble("mov32 r0, 1\\nexit"))
    >>> vm.execute()
    1

    ``mem`` given to ``execute``/``execute_jit`` is a writable buffer the program reads and writes
    in place (r1 = its address, r2 = its length); read-only bytes are copied first.
    """

    def __init__(
        self,
        program: bytes | bytearray | memoryview | Program | Sequence[Instruction],
        *,
        verify: bool = True,
        budget: int = DEFAULT_BUDGET,
        max_insns: int = cfg.DEFAULT_MAX_INSNS,
        helpers: Iterable[Helper] = (),
        allow_loops: bool = False,
        prog_type: ProgType | int | str | None = None,
        max_tail_calls: int = MAX_TAIL_CALLS,
        elide_checks: bool = True,
        privileged: bool = True,
        strict_alignment: bool = False,
        attach: str | None = None,
        btf: BtfSource | None = None,
        functions: Mapping[int, GlobalFunc] | None = None,
    ) -> None:
        if isinstance(program, Program):
            self.program = program
        elif isinstance(program, bytes | bytearray | memoryview):
            self.program = Program.from_bytes(program)
        else:
            self.program = Program.from_instructions(program)
        self.flow = cfg.analyze(self.program, max_insns=max_insns)
        self.verify_enabled = verify
        self.allow_loops = allow_loops
        self.privileged = privileged  # the kernel's rules for a privileged loader (see verify_flow)
        self.strict_alignment = strict_alignment  # the kernel's BPF_F_STRICT_ALIGNMENT (see verify_flow)
        # The global functions by entry slot (from the object's BTF), verified on their own (see verify_flow).
        self.functions: dict[int, GlobalFunc] = dict(functions or {})
        self._reads_uninit_stack = False
        self._uses_addresses = False  # the verifier's VerifyResult.uses_addresses
        # The JIT drops the runtime bounds check of every access the verifier proved in bounds;
        # off, it checks them all the same (to measure what the proofs save, or to distrust them).
        self.elide_checks = elide_checks
        self.budget = budget
        helpers = tuple(helpers)
        bad = next((h for h in helpers if not isinstance(h, Helper)), None)
        if bad is not None:
            raise TypeError(f"helpers are jitbpf.helpers.Helper objects (or use register_helper), not "
                            f"{type(bad).__name__}")
        self.helpers: dict[int, Helper] = {h.id: h for h in helpers}
        self.maps: dict[int, Any] = {}  # map handle -> map object (see jitbpf.linux.maps)
        self.max_tail_calls = max_tail_calls
        self.std: Any = None  # the standard helpers' context (jitbpf.linux.stdhelpers), once enabled
        self._local = threading.local()
        self.workers = Workers()  # the threads batches run on when split (threads > 1)
        self._blocks: CompiledBlocks | None = None
        self._checked = False
        self._proven: frozenset[int] = frozenset()
        self._probe_loads: frozenset[int] = frozenset()  # loads whose failure gives 0 (BTF-typed pointers)
        self._python_calls: frozenset[int] = frozenset()  # helper calls the JIT must make through Python
        self._jit: JitProgram | None = None
        self._compile_lock = threading.Lock()  # one JitProgram per VM, whichever thread runs first
        # execute_jit()'s native fast path (see JitProgram.bind_bare), once the JIT has run.
        # (run, token) and (run with memory, the native library's ffi.from_buffer, token).
        self._bare: tuple[Callable[[int], int], int] = _UNBOUND
        self._bare_mem: tuple[Callable[[int, Any, int], int], Callable[..., Any], int] = _UNBOUND_MEM
        # execute_records()'s: (the native records loop, token), or None before binding.
        self._bare_records: tuple[Callable[..., Any], int] | None = None
        self._closed = False
        # Runs in progress on every thread, and a close() waiting for them to end: nothing a run
        # uses (code pages, maps) is freed under it.
        self._lifetime = threading.Lock()
        self._active = 0
        self._close_pending = False
        self._retiring: JitProgram | None = None  # the code close() is letting go of (see quiescent)
        # Outer maps waiting for this VM's runs in progress to end before they free inner maps
        # taken out of them (see jitbpf.linux.maps._MapOfMaps): swept when it is next idle.
        self._sweeps: set[Any] = set()
        if attach is not None and not isinstance(attach, str):
            raise TypeError(f"attach names a section or target (a str), not {type(attach).__name__}")
        # Context layout, runners and type helpers (jitbpf.linux.programs); the BTF-typed types take
        # their context from the attach target (a section name, "fentry/do_unlinkat") in ``btf``.
        self._init_program_type(prog_type, attach, btf)

    # -- configuration -------------------------------------------------------------------------

    def register_helper(self, helper: int | Helper, fn: HelperFn | None = None, *, name: str | None = None) -> None:
        """Make ``call ID`` run ``fn(r1, r2, r3, r4, r5) -> r0`` (or register a ``Helper``)."""
        if isinstance(helper, Helper):
            h = helper
        else:
            if isinstance(helper, bool) or not isinstance(helper, int):
                raise TypeError(f"a helper id is an int, not {type(helper).__name__}")
            if fn is None:
                raise TypeError("register_helper(id, fn): fn is required")
            h = Helper(int(helper), name or str(getattr(fn, "__name__", f"helper_{helper}")), fn)
        if not 0 <= h.id < 1 << 31:
            raise ValueError(f"helper id {h.id} out of range")
        self.helpers[h.id] = h
        self._checked = False
        self._unbind()  # rebind: the helper may need Python
        self._config_changed()  # native typed-run bindings are redone (jitbpf.linux.pktrun)
        if self._jit is not None:
            self._jit.set_helper(h)

    @property
    def memory(self) -> MemoryMap:
        """The memory of this thread's current (or last) run, for helpers that follow pointers."""
        return self._state().memory

    # -- maps and standard helpers (jitbpf.linux.maps, jitbpf.linux.stdhelpers) ------------------------------

    def add_map(self, bpf_map: Any, handle: int | None = None) -> int:
        """Make ``bpf_map`` available under ``handle`` (what ``lddw rX, map:NAME`` holds).

        Without a handle: the map's own (from an earlier ``add_map``) if free here, else the next
        free number from 1. Returns the handle.
        """
        from jitbpf.linux.maps import BpfMap

        if not isinstance(bpf_map, BpfMap):
            raise TypeError(f"add_map takes a jitbpf map (HashMap, Array, RingBuf, ...), not {type(bpf_map).__name__}")
        if handle is None:
            for h, m in list(self.maps.items()):
                if m is bpf_map:
                    return h
            own = getattr(bpf_map, "handle", None)
            handle = own if own is not None and own not in self.maps else max(self.maps, default=0) + 1
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise TypeError(f"a map handle is an int, not {type(handle).__name__}")
        if not 0 <= handle < 1 << 31:
            raise ValueError(f"map handle {handle} out of range")
        old = self.maps.get(handle)
        if old is not None and old is not bpf_map and (self._blocks is not None or self._jit is not None):
            from jitbpf.errors import MapError

            raise MapError(f"map handle {handle} is already compiled into the program", errno=errno.EBUSY)
        self.maps[handle] = bpf_map
        bpf_map.use_by(self)  # the map's storage lives while this VM is open
        if getattr(bpf_map, "handle", None) is None:
            bpf_map.handle = handle
        self._checked = False
        self._unbind()  # rebind with this map's regions
        self._config_changed()  # native typed-run bindings are redone (jitbpf.linux.pktrun)
        return handle

    def map_by_name(self, name: str) -> Any:
        """The map called ``name`` (KeyError if there is none)."""
        for m in list(self.maps.values()):
            if m.name == name:
                return m
        raise KeyError(f"no map named {name!r}")

    def map_handles(self) -> dict[str, int]:
        """``{name: handle}`` of the named maps: what ``assemble(..., maps=...)`` takes."""
        return {m.name: h for h, m in list(self.maps.items()) if m.name}

    def reachable_maps(self) -> list[Any]:
        """Every map a program may reach: those added, and the inner maps of outer maps among them."""
        found: dict[int, Any] = {}
        for m in list(self.maps.values()):  # (a copy, as everywhere here: another thread may add a map)
            for r in m.reachable_maps():
                found.setdefault(id(r), r)
        return list(found.values())

    def map_regions(self) -> list[Region]:
        """The memory of every map (values, ring buffers; inner maps' too): both engines must
        accept accesses there."""
        return [region for m in self.reachable_maps() for region in m.regions()]

    def regions_changed(self) -> None:
        """An outer map of this VM now holds other inner maps: runs bind the new set of regions."""
        self._unbind()
        self._config_changed()  # native typed-run bindings are redone (jitbpf.linux.pktrun)

    def use_standard_helpers(self, **options: Any) -> Any:
        """Register the standard Linux helpers (``jitbpf.linux.stdhelpers``); returns their context
        (trace log, redirect targets). Not the default: ids 1-5 differ from the conformance set."""
        from jitbpf.linux.stdhelpers import standard_helpers

        for h in standard_helpers(self, **options):
            self.register_helper(h)
        return self.std

    @property
    def trace_log(self) -> list[str]:
        """What ``bpf_trace_printk`` printed, in order (empty without the standard helpers)."""
        return self.std.trace_log if self.std is not None else []

    def request_tail_call(self, prog_array: Any, index: int) -> int:
        """The core of ``bpf_tail_call``: raise ``TailCall`` for the program at ``index``, or return
        a negative errno and let the program fall through (empty slot, bad index, limit reached)."""
        if index >= prog_array.max_entries:
            return -errno.E2BIG
        target = prog_array.get(index)
        if target is None:
            return -errno.ENOENT
        if _type_name(target) != _type_name(self):
            # The kernel keeps a program array to one program type: the target would take this
            # run's context (r1, the regions) for one of another layout.
            raise ExecutionError(f"bpf_tail_call: the program at index {index} of {prog_array.name!r} is of type "
                                 f"{_type_name(target)}, this one of type {_type_name(self)}")
        if self._state().tail_calls_left <= 0:
            return -errno.ELOOP
        raise TailCall(target)

    # -- checks --------------------------------------------------------------------------------

    def _state(self) -> RunState:
        state: RunState | None = getattr(self._local, "state", None)
        if state is None:
            state = RunState(_map_regions_of(weakref.ref(self)))  # (weakly: the VM holds the state)
            self._local.state = state
        return state

    def resolve_lddw(self, pc: int, insn: Instruction) -> int:
        """The value an lddw loads: its constant, or the address a pseudo source refers to."""
        if insn.src == PseudoSrc.IMM64:
            return insn.imm64
        if insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX, PseudoSrc.MAP_IDX_VALUE):
            bpf_map = self.maps.get(insn.imm)
            if bpf_map is None:
                raise VerifierError(f"lddw refers to map {insn.imm}, which does not exist", pc=pc)
            if insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX):
                return int(bpf_map.address) & MASK64
            return int(bpf_map.value_address(insn.next_imm)) & MASK64
        if insn.src == PseudoSrc.FUNC:
            return function_address(pc + 1 + insn.imm)  # a callback: engines call it by this value
        raise VerifierError(f"lddw with pseudo source {insn.src} is not supported", pc=pc)

    def check(self) -> None:
        """Load-time checks that depend on helpers and maps; with ``verify`` on, the verifier too."""
        if self._checked:
            return
        refused = self._check_program_type()  # helpers the program type may not call
        for pc, insn, info in self.program:
            # Verified, such calls are refused where a path reaches them (dead code may call
            # anything, as the kernel allows): unverified, wherever they are.
            if info.kind is Kind.CALL and not self.verify_enabled:
                if insn.imm in refused:
                    raise VerifierError(refused[insn.imm], pc=pc)
                if insn.imm not in self.helpers:
                    raise VerifierError(f"call to nonexistent function {insn.imm}", pc=pc)
            if info.kind is Kind.LDDW:
                self.resolve_lddw(pc, insn)
            if info.kind is Kind.CALL_KFUNC:
                raise VerifierError("kernel function calls are not supported", pc=pc)
        if self.verify_enabled:
            from jitbpf.verifier import verify_flow

            # The maps give key and value sizes: helper arguments are checked for their whole
            # size (C helpers read all of it), and accesses to map values can be proven.
            # Read-only global data is frozen first, as libbpf freezes .rodata before loading:
            # the verifier folds its bytes as constants (dead branches of settings are pruned).
            # Other maps are frozen only by their owner's freeze(), as with BPF_MAP_FREEZE.
            for m in list(self.maps.values()):
                if getattr(m, "freeze_on_load", False):
                    m.freeze()
            try:
                # (Copies: another thread may register a helper or add a map meanwhile.)
                result = verify_flow(self.flow, helpers=dict(self.helpers), allow_loops=self.allow_loops,
                                     budget=self.budget, context=self.context_spec(), maps=dict(self.maps),
                                     privileged=self.privileged, strict_alignment=self.strict_alignment,
                                     functions=self.functions, refused_helpers=refused)
            except VerifierError as exc:
                if not self.allow_loops and exc.message.startswith("back-edge"):
                    exc.add_note("a loop: VM(..., allow_loops=True) accepts it if it is bounded, "
                                 "VM(..., verify=False) skips the verifier")
                raise
            self._proven = result.proven
            self._probe_loads = result.probe_loads
            self._python_calls = result.unchecked_calls
            self._reads_uninit_stack = result.reads_uninit_stack
            self._uses_addresses = result.uses_addresses
        self._checked = True

    # -- running -------------------------------------------------------------------------------

    def _registers(self, state: RunState, r1: int, r2: int) -> list[int]:
        regs = [0] * 11
        regs[1], regs[2] = r1 & MASK64, r2 & MASK64
        regs[FP] = state.frame_pointer()
        return regs

    def _raw_only(self, method: str) -> None:
        """Refuse to run a typed program on a raw buffer: it was verified (and compiled) for its
        type's context, whose fields it reads and writes at their offsets."""
        if self.program_state is not None:
            raise ExecutionError(f"{method}() runs a program on a raw buffer, but this is a "
                                 f"{self.program_state.info.name} program: run it on its context with "
                                 "run_context() or the run_* method of its type")

    def execute(self, mem: Any = None) -> int:
        """Run the program in the reference interpreter; return r0 (unsigned 64-bit)."""
        self._raw_only("execute")
        region, _pin = _mem_region(mem)  # _pin keeps a copied buffer alive for the run
        return self.execute_regions(region, (), region.base, region.size, packet=region)

    def execute_regions(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, *,
                        packet: PacketSource | None = None) -> int:
        """Interpret with an explicit set of regions (used by the program types); every map's
        regions are added.

        Tail calls: after a tail-call request (a helper raised ``TailCall``, which ends the
        running program), this loop runs ``target`` with the same ctx (r1, r2), regions and
        remaining budget and a fresh stack, at most ``max_tail_calls`` times per run; the JIT
        follows them in the same loop (``_run_chain``).
        """
        return self._run_chain(_Interpreter, mem, extra, r1, r2, packet)

    def _run_chain(self, engine_of: Callable[[VM], Engine], mem: Region, extra: Sequence[Region],
                   r1: int, r2: int, packet: PacketSource | None, callback: tuple[int, int] | None = None) -> int:
        """Run this program and the chain of its tail calls, each in the engine ``engine_of``
        gives for its VM, with the same regions (every map's added) and the budget left;
        ``callback`` (address, r3) enters the first one at that asynchronous callback."""
        regions = [*extra, *self.map_regions()]
        vm, budget, left = self, self.budget, self.max_tail_calls
        while True:
            engine = engine_of(vm)
            outer = vm._enter(RUNNING)
            try:
                return engine.run_regions(mem, regions, r1, r2, packet=packet, budget=budget, tail_calls_left=left,
                                          callback=callback)
            except TailCall as tail:
                # Keep only what the request says: the exception's traceback holds the engine's
                # frames, whose memory views must not end up in a cycle the collector breaks.
                target, budget = tail.target, tail.budget
            finally:
                vm._leave(outer)
            vm, left, callback = target, left - 1, None
            known = {r.base for r in regions}
            regions += [r for r in vm.map_regions() if r.base not in known]

    def _interpret(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, packet: PacketSource | None,
                   budget: int, tail_calls_left: int, callback: tuple[int, int] | None = None) -> int:
        """One interpreted run (the caller entered the VM)."""
        from jitbpf.jit.program import runner_lib

        nat = runner_lib()
        reserved = nat.lib.jb_ringbuf_pending() if nat is not None else 0
        try:
            return self._interpret_entered(mem, extra, r1, r2, packet, budget, tail_calls_left, callback)
        finally:
            # Ring buffer records the run reserved and neither submitted nor discarded are discarded
            # (the JIT's run loops do the same): the verifier refuses such programs, as the kernel's.
            if nat is not None and nat.lib.jb_ringbuf_pending() > reserved:
                nat.lib.jb_ringbuf_release_since(reserved)

    def _interpret_entered(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, packet: PacketSource | None,
                           budget: int, tail_calls_left: int, callback: tuple[int, int] | None) -> int:
        self.check()
        if self._blocks is None:
            spec = self.context_spec()
            scratch = self.verify_enabled and scratch_args(spec is not None and spec.size is not None)
            self._blocks = Translator(self.resolve_lddw, scratch, self._probe_loads).translate(self.flow)
        state = self._state()
        state.begin(mem, extra, tail_calls_left)
        env = Env(state.memory, self.helpers, packet)
        regs = self._registers(state, r1, r2)
        entry = 0
        if callback is not None:
            address, regs[3] = callback[0], callback[1] & MASK64
            entry = address - FUNCTION_ADDRESS_BASE
            if not 0 <= entry < len(self.program.slots) or entry not in self._blocks.entries:
                raise not_an_async_callback(address)
        try:
            return run(self._blocks, regs, env, budget=budget, stack_zero=state.zero_frame, entry=entry)
        except AccessError as err:
            if err.pc is None or err.operand:
                raise
            raise err.at(err.pc, access_operand(self.program, err.pc)) from None

    def jit_compile(self) -> None:
        """Translate the (verified) program to x86-64 machine code."""
        self._ensure_open()
        self.check()
        with self._compile_lock:  # threads racing to the first run must not compile twice
            if self._jit is None:
                jit = self._new_jit_program()
                with self._lifetime:  # a close() meanwhile released what there was: not this
                    if not self._closed:
                        self._jit = jit
                if self._jit is not jit:
                    jit.close()
                    self._ensure_open()

    def _new_jit_program(self) -> JitProgram:
        from jitbpf.jit import JitProgram

        return JitProgram(self.flow, resolve_lddw=self.resolve_lddw, helpers=self.helpers,
                          proven=self._proven if self.elide_checks else frozenset(),
                          state=self._state, budget=self.budget,
                          # Code for unverified programs clears the stack frames, as the interpreter does:
                          # a program that reads stack it never wrote needs that as well.
                          runner=self.execute_jit_regions,
                          verified=self.verify_enabled and not self._reads_uninit_stack,
                          python_calls=self._python_calls, probe_loads=self._probe_loads)

    def _unbind(self) -> None:
        """Forget the native fast paths (the next run binds again, or runs the ordinary way)."""
        self._bare, self._bare_mem, self._bare_records = _UNBOUND, _UNBOUND_MEM, None

    def _bind(self, jit: JitProgram) -> None:
        """Bind this thread's native fast paths to ``jit`` (see JitProgram.bind_bare), if it has them."""
        nat = jit.bind_bare(self.map_regions())
        if nat is not None:
            self._bare = (nat.lib.jb_bare_run, jit.token)
            self._bare_mem = (nat.lib.jb_bare_run_mem, nat.ffi.from_buffer, jit.token)
            self._bare_records = (nat.fast.records, jit.token)

    def execute_jit(self, mem: Any = None) -> int:
        """Run the JIT-compiled program (compiling it first if needed); return r0."""
        # After the first run on a thread, a run is one native call (see JitProgram.bind_bare).
        if mem is None:
            run, token = self._bare
            result = run(token)
        else:
            run_mem, pin_of, token = self._bare_mem
            try:
                # A bytearray is writable; asking cffi to check costs more than the run itself.
                pin = pin_of(mem) if type(mem) is bytearray else pin_of(mem, require_writable=True)
            except (TypeError, BufferError, ValueError):  # read-only or odd buffers: copied on the tracked path
                return self._jit_program().run(mem)
            size = len(pin)
            if not size:
                return self._jit_program().run(mem)
            result = run_mem(token, pin, size)
        if result != ERROR_RESULT:
            return result
        return self._execute_jit_bare(result, mem)

    def _jit_program(self) -> JitProgram:
        # Programs with calls or lddw run through execute_jit_regions (the JitProgram's runner),
        # which adds self.map_regions() for the JIT's bounds checks and handles tail calls.
        jit = self._jit
        if jit is None:
            self.jit_compile()
            jit = self._jit
            assert jit is not None
        return jit

    def _execute_jit_bare(self, result: int, mem: Any) -> int:
        """A bare run returned ERROR_RESULT: the run stopped early, or nothing is bound yet on
        this thread (then run the ordinary way and bind for the next time)."""
        jit = self._jit
        if jit is not None and self._bare[1] == jit.token and jit.bare_bound():
            return jit.finish(result)
        self._raw_only("execute_jit")  # typed VMs never bind: every raw run of one comes here
        jit = self._jit_program()
        result = jit.run(mem)
        self._bind(jit)
        return result

    def execute_batch(self, buffers: Sequence[Any], *, threads: int = 1) -> array.array[int]:
        """Run the JIT-compiled program once per buffer, as ``execute_jit`` would, and return
        every r0, in order, as an ``array.array("Q")`` (compact; any buffer-protocol consumer
        such as numpy can wrap it without a copy). Programs that call no Python helper run the whole batch in one
        native call (per thread); others fall back to one call per buffer. ``threads`` > 1 splits
        the batch over that many threads, each with its own CPU id for per-CPU maps; the GIL is
        released while native code runs. Read-only buffers are copied (their writes are lost).
        An input that fails raises its error, with a note naming the input's index."""
        self._raw_only("execute_batch")
        items = buffers if all(type(b) is bytearray for b in buffers) else [
            b if _writable(b) else bytearray(_batch_input(i, b)) for i, b in enumerate(buffers)]
        outer = self._enter(PREPARING)  # the code and maps stay while the native loop runs
        try:
            jit = self._jit_program()
            if not jit.batchable:
                return self._one_by_one(items)
            regions = self.map_regions()
            return self.workers.split(len(items), threads, lambda lo, hi: jit.run_batch(items[lo:hi], regions))
        finally:
            self._leave(outer)

    def execute_records(self, data: Any, record_size: int, *, threads: int = 1) -> array.array[int]:
        """Run the JIT-compiled program over each ``record_size``-byte record of the writable
        buffer ``data`` (one contiguous array of fixed-size inputs, e.g. a numpy array's bytes),
        each as its own mem; return every r0. Like ``execute_batch`` otherwise."""
        # After the first batch on a thread, one native call (see JitProgram.bind_bare).
        fast = self._bare_records
        if fast is not None and threads == 1 and type(record_size) is int and record_size > 0:
            done = self._records_bare(fast, data, record_size)
            if done is not None:
                return done
        self._raw_only("execute_records")
        if isinstance(record_size, bool) or not isinstance(record_size, int):
            raise TypeError(f"record_size must be an int, not {type(record_size).__name__}")
        if record_size <= 0:
            raise ValueError(f"record size {record_size} must be positive")
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(f"execute_records needs a buffer (bytearray, numpy array, ...), "
                            f"not {type(data).__name__}") from None
        if view.readonly or not view.c_contiguous:
            raise TypeError("execute_records needs a writable, C-contiguous buffer (records are run in place); "
                            "copy a strided view first (bytearray(view), numpy.ascontiguousarray)")
        view = view.cast("B")
        count = len(view) // record_size
        outer = self._enter(PREPARING)
        try:
            jit = self._jit_program()
            if not jit.batchable:
                return self._one_by_one([view[i * record_size:(i + 1) * record_size] for i in range(count)])
            regions = self.map_regions()
            out = self.workers.split(count, threads, lambda lo, hi: jit.run_records(
                view[lo * record_size:hi * record_size], record_size, regions))
        finally:
            self._leave(outer)
        if threads == 1 and not jit.bare_bound():
            self._bind(jit)
        return out

    def _records_bare(self, fast: tuple[Callable[..., Any], int], data: Any, record_size: int
                      ) -> array.array[int] | None:
        """execute_records as one native call through this thread's binding; None when it did
        not run (nothing bound here, the program closed, a buffer the ordinary path must judge)."""
        run, token = fast
        got = run(token, data, record_size, _ONE_RESULT, None, 0)
        if got is None:
            return None
        out: array.array[int] = got[0]
        start: int = got[1]
        jit = self._jit
        while start < len(out):  # the record at start stopped early: its outcome, then the rest
            if jit is None:  # closed by another thread meanwhile: the record's outcome went with it
                raise ExecutionError("the VM is closed")
            try:
                out[start] = jit.finish(out[start])
            except BpfError as err:
                err.add_note(f"in input {start} of the batch")
                raise
            got = run(token, data, record_size, _ONE_RESULT, out, start + 1)
            if got is None:
                raise ExecutionError("the VM is closed")  # since the last record
            start = got[1]
        return out

    def _one_by_one(self, inputs: Sequence[Any]) -> array.array[int]:
        """A batch as one execute_jit per input (programs with Python helpers), with the same
        error note as the native loop's."""
        out = array.array("Q")
        for i, mem in enumerate(inputs):
            try:
                out.append(self.execute_jit(mem))
            except BpfError as err:
                err.add_note(f"in input {i} of the batch")
                raise
        return out

    # -- time ----------------------------------------------------------------------------------

    def advance_time(self, ns: int, *, engine: str = "interp") -> int:
        """Move this VM's clock ``ns`` nanoseconds on and run, in ``engine`` ("interp" or "jit"),
        the callbacks of the timers whose time comes, in order (``jitbpf.linux.timers``); returns
        how many ran. The first call makes the clock virtual: from then on bpf_ktime_get_ns and
        its kin read it, and it moves only by these calls (``vm.clock``)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        if self.std is None:
            raise ExecutionError("advance_time() needs the standard helpers (use_standard_helpers()): "
                                 "the VM's clock and timers are theirs")
        from jitbpf.linux.clock import clock_helpers

        if self.std.clock.make_virtual():
            for h in clock_helpers(self.std.clock):
                self.register_helper(h)
        return int(self.std.timers.advance(self, ns, engine=engine))

    @property
    def clock(self) -> Any:
        """The clock of the standard helpers (``jitbpf.linux.clock.Clock``): ``vm.clock.now()``."""
        if self.std is None:
            raise ExecutionError("the VM's clock belongs to the standard helpers (use_standard_helpers())")
        return self.std.clock

    def run_async_callback(self, address: int, args: tuple[int, int, int], extra: Sequence[Region], *,
                           engine: str) -> int:
        """Run the program's function at ``address`` (as ``lddw func:`` loads it) on its own, with
        r1-r3 = ``args`` and the regions ``extra`` besides the maps', in ``engine``: a timer's
        callback, as it fires. Returns its r0."""
        engine_of: Callable[[VM], Engine] = VM._jit_engine if engine == "jit" else _Interpreter
        empty = Region(0, 0, memoryview(b""), False, "mem")
        return self._run_chain(engine_of, empty, extra, args[0], args[1], None, (address, args[2]))

    def execute_jit_regions(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, *,
                            packet: PacketSource | None = None) -> int:
        """The JIT's execute_regions: the same regions (every map's added) and tail calls."""
        return self._run_chain(VM._jit_engine, mem, extra, r1, r2, packet)

    def _jit_engine(self) -> JitProgram:
        """The compiled program (compiled now if it was not yet)."""
        if self._jit is None:
            self.jit_compile()
            assert self._jit is not None
        return self._jit

    def jit_dump(self) -> str:
        """The generated x86-64, disassembled, under the eBPF instruction each block came from."""
        self.jit_compile()
        assert self._jit is not None
        return self._jit.dump()

    # -- lifetime ------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise ExecutionError("the VM is closed")  # a run of either engine, refused

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (the VM runs no more)."""
        return self._closed

    def _enter(self, level: int) -> int:
        """Start a run (or its set-up, ``PREPARING``) on this thread; returns what the thread
        was doing with this VM, for ``_leave``. Refuses a run inside a run of the same VM (a
        helper running it again), which would share the running one's stack and context."""
        local = self._local
        outer: int = getattr(local, "running", IDLE)
        if outer >= level:
            raise ExecutionError("this VM is already running on this thread (a helper ran it again): nested runs "
                                 "of one VM would share its stack and context; run another VM of the program")
        if outer == IDLE:
            with self._lifetime:
                self._ensure_open()
                self._active += 1
        local.running = level
        return outer

    def enter_setup(self) -> int:
        """``_enter(PREPARING)``, for the runners that build a run's memory (jitbpf.linux.programs);
        pair with ``_leave``."""
        return self._enter(PREPARING)

    def _leave(self, outer: int) -> None:
        self._local.running = outer
        if outer == IDLE:
            with self._lifetime:
                self._active -= 1
                release = self._close_pending and not self._active
                self._close_pending = self._close_pending and not release
            if release:
                self._release()
            elif self._sweeps and not self._active:
                self._sweep()

    def close(self) -> None:
        """Release the machine code (unmaps the executable pages) and this VM's hold on its maps.
        Called while runs are in progress (from a helper, or another thread), the release waits
        for the last of them to end; no new run starts."""
        self._unbind()
        with self._lifetime:
            self._closed = True
            if self._active:
                self._close_pending = True
                return
        self._release()

    def _release(self) -> None:
        jit = self._retiring = self._jit
        self._jit = None
        if jit is not None:
            jit.shut()
            if jit.busy_elsewhere():
                # Native runs on other threads (bare, batch, typed) are still inside the code:
                # the code and the maps go once the last of them leaves, close() does not wait.
                threading.Thread(target=self._release_now, args=(jit,), name="jitbpf-close", daemon=True).start()
                return
        self._release_now(jit)

    def _release_now(self, jit: JitProgram | None) -> None:
        self.workers.close()
        self._config_changed()
        if jit is not None:
            jit.close()
        self._retiring = None
        for m in list(self.maps.values()):
            m.unuse_by(self)
        self._sweep()

    def quiescent(self) -> bool:
        """Whether no run of this VM is in progress on any thread: none entered through the VM,
        none inside its compiled code (bare, batch and typed runs). A map taken out of an outer
        map is freed only once every VM using the outer map has been quiescent since."""
        if self._active:
            return False
        return all(jit is None or jit.idle() for jit in (self._jit, self._retiring))

    def sweep_when_idle(self, outer: Any) -> None:
        """Call ``outer.sweep()`` once this VM's runs in progress have ended (it waits for them)."""
        self._sweeps.add(outer)

    def _sweep(self) -> None:
        sweeps, self._sweeps = self._sweeps, set()
        for outer in sweeps:
            outer.sweep()

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its bytecode, options, program type, maps and helpers, so that other
        processes can run it (see ``jitbpf.pickling``)."""
        from jitbpf.pickling import reduce_vm

        return reduce_vm(self)

    def __del__(self) -> None:
        # No run can be in progress: a run holds a reference to its VM.
        if getattr(self, "_lifetime", None) is not None:
            self._closed = True
            self._release()


def _unbound(_token: int) -> int:
    """The bare-run function of a VM whose JIT code has not run yet: always "not bound"."""
    return ERROR_RESULT


def _unbound_mem(_token: int, _pin: Any, _size: int) -> int:
    return ERROR_RESULT


def _view(mem: Any, require_writable: bool = False) -> memoryview:
    """A stand-in pin before binding: the unbound run never reads it."""
    return memoryview(mem)


_UNBOUND = (_unbound, 0)
_UNBOUND_MEM = (_unbound_mem, _view, 0)


def _type_name(vm: VM) -> str:
    return vm.program_state.info.name if vm.program_state is not None else "none"


def _batch_input(index: int, buf: Any) -> Any:
    """``buf`` if it is a buffer (an int would make a zero-filled one of that size)."""
    if not _is_buffer(buf):
        raise TypeError(f"execute_batch takes buffers (bytearray, bytes, memoryview, ...); input {index} is "
                        f"{type(buf).__name__}")
    return buf


def _is_buffer(buf: Any) -> bool:
    try:
        memoryview(buf)
    except TypeError:
        return False
    return True


def _writable(buf: Any) -> bool:
    try:
        return not memoryview(buf).readonly
    except TypeError:
        return False


def _mem_region(mem: Any) -> tuple[Region, Any]:
    """The caller's memory as a Region (read-only buffers are copied) and its pin."""
    if mem is None:
        return Region(0, 0, memoryview(b""), False, "mem"), None
    try:
        view = memoryview(mem)
    except TypeError:
        raise ExecutionError(f"mem must be a buffer (bytearray, memoryview, ...), not {type(mem).__name__}") from None
    if view.readonly:
        mem = bytearray(view.tobytes())
    return region_of(mem, "mem")

# What the native records loop repeats into a batch's results (never written itself).
_ONE_RESULT = array.array("Q", [0])
