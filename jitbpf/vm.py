"""The ``VM`` facade: one program, its helpers and maps, run by the interpreter or the JIT."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from jitbpf import cfg
from jitbpf._ffi import ffi
from jitbpf.errors import ExecutionError, JitError, VerifierError
from jitbpf.helpers import Helper, HelperFn
from jitbpf.interpreter import MAX_CALL_DEPTH, CompiledBlocks, Env, Translator, run
from jitbpf.isa import FP, MASK64, STACK_SIZE, Instruction, Kind, Program, PseudoSrc
from jitbpf.memory import MemoryMap, Region, region_of

if TYPE_CHECKING:
    from jitbpf.jit import JitProgram

DEFAULT_BUDGET = 1_000_000  # executed instructions per run
STACK_BYTES = STACK_SIZE * MAX_CALL_DEPTH  # all frames of one thread


class RunState:
    """Per-thread state of the runs of one VM: the stack, and the memory of the current run.

    ``memory`` is built on first use, so runs that call no Python helper never pay for it.
    """

    __slots__ = ("_mm", "extra", "mem", "stack", "stack_base", "stack_view")

    def __init__(self) -> None:
        self.stack = ffi.new("uint8_t[]", STACK_BYTES)
        self.stack_base = int(ffi.cast("uintptr_t", self.stack))
        self.stack_view = memoryview(ffi.buffer(self.stack)).cast("B")
        self.mem: Region | None = None
        self.extra: Sequence[Region] = ()
        self._mm: MemoryMap | None = None

    def begin(self, mem: Region | None, extra: Sequence[Region]) -> None:
        self.mem, self.extra, self._mm = mem, extra, None

    @property
    def memory(self) -> MemoryMap:
        if self._mm is None:
            regions = [Region(self.stack_base, STACK_BYTES, self.stack_view, True, "stack")]
            if self.mem is not None:
                regions.insert(0, self.mem)
            regions.extend(self.extra)
            self._mm = MemoryMap(regions)
        return self._mm

    def zero_frame(self, frame: int) -> None:
        """Clear the stack frame ``frame`` (0 = outermost, at the top of the stack area)."""
        hi = STACK_BYTES - frame * STACK_SIZE
        self.stack_view[hi - STACK_SIZE : hi] = bytes(STACK_SIZE)

    def frame_pointer(self) -> int:
        return self.stack_base + STACK_BYTES


class VM:
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
        self.budget = budget
        self.helpers: dict[int, Helper] = {h.id: h for h in helpers}
        self.maps: dict[int, Any] = {}  # map handle -> map object (see jitbpf.maps)
        self._local = threading.local()
        self._blocks: CompiledBlocks | None = None
        self._checked = False
        self._proven: frozenset[int] = frozenset()
        self._jit: JitProgram | None = None
        self._closed = False

    # -- configuration -------------------------------------------------------------------------

    def register_helper(self, helper: int | Helper, fn: HelperFn | None = None, *, name: str | None = None) -> None:
        """Make ``call ID`` run ``fn(r1, r2, r3, r4, r5) -> r0`` (or register a ``Helper``)."""
        if isinstance(helper, Helper):
            h = helper
        else:
            if fn is None:
                raise TypeError("register_helper(id, fn): fn is required")
            h = Helper(int(helper), name or getattr(fn, "__name__", f"helper_{helper}"), fn)
        if not 0 <= h.id < 1 << 31:
            raise ValueError(f"helper id {h.id} out of range")
        self.helpers[h.id] = h
        self._checked = False
        if self._jit is not None:
            self._jit.set_helper(h)

    @property
    def memory(self) -> MemoryMap:
        """The memory of this thread's current (or last) run, for helpers that follow pointers."""
        return self._state().memory

    # -- checks --------------------------------------------------------------------------------

    def _state(self) -> RunState:
        state: RunState | None = getattr(self._local, "state", None)
        if state is None:
            state = RunState()
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
            raise VerifierError("lddw of a function address is not supported", pc=pc)
        raise VerifierError(f"lddw with pseudo source {insn.src} is not supported", pc=pc)

    def check(self) -> None:
        """Load-time checks that depend on helpers and maps; with ``verify`` on, the verifier too."""
        if self._checked:
            return
        for pc, insn, info in self.program:
            if info.kind is Kind.CALL and insn.imm not in self.helpers:
                raise VerifierError(f"call to nonexistent function {insn.imm}", pc=pc)
            if info.kind is Kind.LDDW:
                self.resolve_lddw(pc, insn)
            if info.kind is Kind.CALL_KFUNC:
                raise VerifierError("kernel function calls are not supported", pc=pc)
        if self.verify_enabled:
            from jitbpf.verifier import verify_flow

            result = verify_flow(self.flow, helpers=self.helpers, allow_loops=self.allow_loops,
                                 budget=self.budget)
            self._proven = result.proven
        self._checked = True

    # -- running -------------------------------------------------------------------------------

    def _registers(self, state: RunState, r1: int, r2: int) -> list[int]:
        regs = [0] * 11
        regs[1], regs[2] = r1 & MASK64, r2 & MASK64
        regs[FP] = state.frame_pointer()
        return regs

    def execute(self, mem: Any = None) -> int:
        """Run the program in the reference interpreter; return r0 (unsigned 64-bit)."""
        region, pin = _mem_region(mem)
        return self.execute_regions(region, (), region.base, region.size, packet=region)

    def execute_regions(self, mem: Region, extra: Sequence[Region], r1: int, r2: int, *,
                        packet: Region | None = None) -> int:
        """Interpret with an explicit set of regions (used by the program types)."""
        self._ensure_open()
        self.check()
        if self._blocks is None:
            self._blocks = Translator(self.resolve_lddw).translate(self.flow)
        state = self._state()
        state.begin(mem if mem.size else None, extra)
        env = Env(state.memory, self.helpers, (packet.base, packet.size) if packet is not None else (0, 0))
        return run(self._blocks, self._registers(state, r1, r2), env, budget=self.budget,
                   stack_zero=state.zero_frame)

    def jit_compile(self) -> None:
        """Translate the (verified) program to x86-64 machine code."""
        self._ensure_open()
        self.check()
        if self._jit is None:
            from jitbpf.jit import JitProgram

            self._jit = JitProgram(self.flow, resolve_lddw=self.resolve_lddw, helpers=self.helpers,
                                   proven=self._proven, state=self._state, budget=self.budget)

    def execute_jit(self, mem: Any = None) -> int:
        """Run the JIT-compiled program (compiling it first if needed); return r0."""
        jit = self._jit
        if jit is None:
            self.jit_compile()
            jit = self._jit
            assert jit is not None
        return jit.run(mem)

    def jit_dump(self) -> str:
        """The generated x86-64, disassembled, under the eBPF instruction each block came from."""
        self.jit_compile()
        assert self._jit is not None
        return self._jit.dump()

    # -- lifetime ------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise JitError("the VM is closed")

    def close(self) -> None:
        """Release the machine code (unmaps the executable pages)."""
        self._closed = True
        if self._jit is not None:
            self._jit.close()
            self._jit = None

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        jit = getattr(self, "_jit", None)
        if jit is not None:
            jit.close()


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

