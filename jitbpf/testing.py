"""Unit tests of eBPF programs in pytest, without root or a kernel: load an object (or a C file,
compiled with clang) once, run packets through its program type, and assert on the verdict, the
packet after the run, the maps and the trace; failure messages show the packet and where the
program decided. ``test_run`` has the shape of the kernel's ``BPF_PROG_TEST_RUN``."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, SupportsBytes

from jitbpf.errors import BpfError, ElfError
from jitbpf.isa import Kind
from jitbpf.output import Events, Output, collect

if TYPE_CHECKING:
    from jitbpf.linux.btfvalues import TypedMap
    from jitbpf.linux.elf import ElfObject, ElfProgram
    from jitbpf.linux.programs import ProgType
    from jitbpf.vm import VM

PacketLike = bytes | bytearray | memoryview | SupportsBytes  # raw bytes, or a scapy/dpkt packet
CFLAGS = ("-target", "bpf", "-O2", "-g")  # how libbpf projects build their objects
PATH_KEPT = 256  # blocks remembered per run: enough to explain a decision, bounded for long loops
HEXDUMP_WIDTH = 16


def packet_bytes(packet: PacketLike) -> bytes:
    """The wire bytes of a packet: bytes-like objects as they are, scapy and dpkt packets through ``bytes()``."""
    if isinstance(packet, bytes | bytearray | memoryview):
        return bytes(packet)
    try:
        return bytes(packet)
    except TypeError:
        raise TypeError(f"a packet must be bytes or a scapy/dpkt packet, not {type(packet).__name__}") from None


# -- loading ------------------------------------------------------------------------------------


def compile_c(source: str | os.PathLike[str], *, include: Sequence[str | os.PathLike[str]] = (),
              cflags: Sequence[str] = (), out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Compile a C file with ``clang -target bpf -O2 -g`` into ``out_dir`` (a temporary directory
    by default); the object is named after the source and its flags, so equal inputs reuse it."""
    src = Path(source)
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    if clang is None:
        raise ElfError(f"{src}: compiling C needs clang (apt-get install clang, or set $CLANG)")
    args = [*CFLAGS, *(f"-I{d}" for d in include), *cflags]
    try:
        text = src.read_bytes()
    except OSError as exc:
        raise ElfError(f"cannot read {src}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(text + "\0".join(args).encode()).hexdigest()[:12]
    directory = Path(out_dir) if out_dir is not None else Path(tempfile.gettempdir()) / f"jitbpf-objects-{os.getuid()}"
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{src.stem}-{digest}.o"
    if not out.is_file():
        partial = out.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run([clang, *args, "-c", str(src), "-o", str(partial)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ElfError(f"clang failed on {src}:\n{done.stderr.strip()}")
        partial.replace(out)  # whole or not at all, for concurrent test runs
    return out


def load(source: str | os.PathLike[str], *, include: Sequence[str | os.PathLike[str]] = (),
         cflags: Sequence[str] = ()) -> ElfObject:
    """An ELF object from a ``.o`` file, or from a ``.c`` file compiled first (see ``compile_c``)."""
    from jitbpf.linux.elf import load_elf

    path = Path(source)
    if path.suffix == ".c":
        path = compile_c(path, include=include, cflags=cflags)
    return load_elf(path, name=Path(source).name)


# -- what a run did ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """Where the interpreter's run went at the end: the last conditional jump before the exit
    (its pc, text and whether it was taken) and the ``exit`` that returned."""

    exit_pc: int
    exit_text: str
    branch_pc: int | None = None
    branch_text: str = ""
    taken: bool = False

    def __str__(self) -> str:
        exit_part = f"returned at pc {self.exit_pc} ({self.exit_text})"
        if self.branch_pc is None:
            return f"{exit_part}, with no conditional jump on the way"
        return (f"decided at pc {self.branch_pc} ({self.branch_text}: {'taken' if self.taken else 'not taken'}), "
                f"{exit_part}")


@dataclass(frozen=True)
class Outcome:
    """One run: r0 and its verdict name, the packet before and after, the context's fields, what
    the program printed and sent, and (interpreter runs) where it decided."""

    program: str  # the program's name
    retval: int  # r0, unsigned 64-bit
    verdict: str | None  # the kernel's name of r0 for packet programs (XDP_DROP, TC_ACT_OK, ...)
    packet_in: bytes
    packet: bytes | None  # the packet after the run (packet program types)
    ctx: dict[str, Any]  # the context's fields after the run
    output: Output = field(default_factory=Output)
    decision: Decision | None = None
    given: Any = None  # the packet object the run was given (re-parsed the same way)

    @property
    def trace(self) -> tuple[str, ...]:
        """The ``bpf_trace_printk`` lines of this run."""
        return self.output.trace

    @property
    def events(self) -> dict[str, Events]:
        """The perf event array and ring buffer records of this run, by map name."""
        return self.output.events

    def parsed(self) -> Any:
        """The packet after the run, parsed as the input was: the same scapy or dpkt class, or a dpkt
        Ethernet frame for bytes."""
        if self.packet is None:
            raise ValueError(f"{self.program} takes no packet")
        kind = type(self.given)
        if self.given is not None and not isinstance(self.given, bytes | bytearray | memoryview):
            return kind(self.packet)
        import dpkt

        return dpkt.ethernet.Ethernet(self.packet)

    def describe(self) -> str:
        """Everything an assertion message shows about the run."""
        lines = [f"{self.program} returned {self.verdict or self.retval} (r0 = {self.retval:#x})"]
        if self.decision is not None:
            lines.append(f"  {self.decision}")
        lines.append(f"  packet in ({len(self.packet_in)} bytes):")
        lines.extend("    " + ln for ln in hexdump(self.packet_in))
        if self.packet is not None and self.packet != self.packet_in:
            lines.append(f"  packet out ({len(self.packet)} bytes):")
            lines.extend("    " + ln for ln in hexdump(self.packet))
        lines.extend("  " + ln for ln in self.output.lines())
        return "\n".join(lines)


def hexdump(data: bytes) -> list[str]:
    """Offset, hex and printable characters, 16 bytes a line."""
    if not data:
        return ["(empty)"]
    rows = []
    for off in range(0, len(data), HEXDUMP_WIDTH):
        chunk = data[off : off + HEXDUMP_WIDTH]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        rows.append(f"{off:04x}  {chunk.hex(' '):<{3 * HEXDUMP_WIDTH - 1}}  {text}")
    return rows


@dataclass(frozen=True)
class TestRun:
    """``BPF_PROG_TEST_RUN``'s results: r0 of the last run, the output packet and context, and the
    mean duration of one run in nanoseconds (as the kernel reports it)."""

    __test__ = False  # not a pytest test class, whatever module imports it

    retval: int
    data_out: bytes
    ctx_out: bytes
    duration: int  # ns per run, averaged over ``repeat``
    repeat: int


# -- the harness ---------------------------------------------------------------------------------


class _PathRecorder:
    """Wraps the interpreter's block functions so that each run remembers the blocks it entered."""

    def __init__(self, vm: VM) -> None:
        from jitbpf.interpreter import Translator

        blocks = Translator(vm.resolve_lddw).translate(vm.flow)
        self.path: deque[int] = deque(maxlen=PATH_KEPT)
        fns = [None if fn is None else self._wrap(start, fn) for start, fn in enumerate(blocks.fns)]
        vm._blocks = dataclasses.replace(blocks, fns=fns)  # this VM's interpreter runs the wrapped blocks
        self.flow = vm.flow

    def _wrap(self, start: int, fn: Callable[[list[int], Any], int]) -> Callable[[list[int], Any], int]:
        path = self.path

        def block(regs: list[int], env: Any) -> int:
            path.append(start)
            return fn(regs, env)

        return block

    def decision(self) -> Decision | None:
        from jitbpf.disasm import format_instruction

        if not self.path:
            return None
        by_start = {b.start: b for b in self.flow.blocks}
        program = self.flow.program

        def text(pc: int) -> str:
            insn = program.slots[pc]
            return format_instruction(insn, pc) if insn is not None else "?"

        steps = list(self.path)
        last = by_start[steps[-1]]
        if program.infos[last.last] is None or program.infos[last.last].kind is not Kind.EXIT:  # type: ignore[union-attr]
            return None  # the run ended in a helper (bpf_tail_call) or an error, not an exit
        for i in range(len(steps) - 2, -1, -1):
            block = by_start[steps[i]]
            info = program.infos[block.last]
            if info is not None and info.kind is Kind.JCOND:
                taken = steps[i + 1] == self.flow.targets.get(block.last)
                return Decision(last.last, text(last.last), block.last, text(block.last), taken)
        return Decision(last.last, text(last.last))


class Harness:
    """One program of an object, run as its program type: ``run(packet)`` gives an ``Outcome``.

    The interpreter (the default engine) also records where each run decided; ``engine="jit"``
    runs the x86-64 code instead. Maps are the object's (``harness.maps["NAME"]``) and keep their
    contents from run to run.
    """

    def __init__(self, program: ElfProgram, *, engine: str = "interp", verify: bool = True,
                 **vm_options: Any) -> None:
        if engine not in ("interp", "jit"):
            raise ValueError(f"engine must be 'interp' or 'jit', not {engine!r}")
        self.program = program
        self.engine = engine
        self.vm = program.vm(verify=verify, **vm_options)
        self._recorder: _PathRecorder | None = None

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def prog_type(self) -> ProgType:
        return self.program.prog_type

    @property
    def maps(self) -> dict[str, Any]:
        """The object's maps by name (``HashMap``, ``Array``, ...), shared by every run."""
        return self.program.obj.maps

    def __getitem__(self, map_name: str) -> Any:
        return self.program.obj[map_name]

    def typed(self, map_name: str) -> TypedMap:
        """A map read through the object's BTF: keys and values as their C types (dicts for structs)."""
        from jitbpf.linux.btfvalues import TypedMap

        return TypedMap(self.program.obj, map_name)

    def globals(self) -> dict[str, Any]:
        """The object's global variables by C name, decoded from their current bytes."""
        from jitbpf.linux.btfvalues import global_variables

        return global_variables(self.program.obj)

    def _run(self, packet: bytes | None, ctx: ctypes.LittleEndianStructure | Mapping[str, Any] | None) -> Any:
        self.vm.check()
        if self.engine == "interp" and self._recorder is None:
            self._recorder = _PathRecorder(self.vm)
        if self._recorder is not None:
            self._recorder.path.clear()
        return self.vm.run_context(ctx, packet=packet, engine=self.engine)

    def run(self, packet: PacketLike | None = None, **ctx_fields: Any) -> Outcome:
        """Run once on ``packet`` (bytes, or a scapy/dpkt packet) with the context fields given
        by name (``ingress_ifindex=2``, ``mark=7``, ...)."""
        from jitbpf.pcap import verdict_name

        data = packet_bytes(packet) if packet is not None else None
        start = len(self.vm.trace_log)
        result = self._run(data, ctx_fields or None)
        decision = self._recorder.decision() if self._recorder is not None else None
        return Outcome(self.name, result.retval, verdict_name(self.prog_type, result.retval), data or b"",
                       result.packet, result.fields(), collect(self.vm, trace_from=start), decision, packet)

    def call(self, *args: Any, ret: Any = 0) -> Outcome:
        """Run a BTF-typed program (fentry, fexit, lsm, iter, ...) once, as its attach target
        called with ``args`` (see ``VM.run_tracing``); ``ctx`` holds the argument slots by name."""
        self.vm.check()
        if self.engine == "interp" and self._recorder is None:
            self._recorder = _PathRecorder(self.vm)
        if self._recorder is not None:
            self._recorder.path.clear()
        start = len(self.vm.trace_log)
        result = self.vm.run_tracing(*args, ret=ret, engine=self.engine)
        retval = result[0] if isinstance(result, tuple) else result
        state = self.vm.program_state
        assert state is not None and state.attach is not None
        given = [*args, ret] if state.attach.has_return else list(args)
        decision = self._recorder.decision() if self._recorder is not None else None
        return Outcome(self.name, retval, None, b"", None, dict(zip(state.attach.names, given, strict=True)),
                       collect(self.vm, trace_from=start), decision)

    def test_run(self, data_in: PacketLike = b"", *, data_size_out: int | None = None, ctx_in: bytes | None = None,
                 repeat: int = 1) -> TestRun:
        """``BPF_PROG_TEST_RUN``: run ``repeat`` times (0 means once, as the kernel) on ``data_in``
        and the context bytes ``ctx_in`` (zeroes by default; pointer fields are filled in).
        ``data_out`` is cut to ``data_size_out`` when given."""
        data = packet_bytes(data_in)
        state = self.vm.program_state
        if state is None:
            raise BpfError(f"{self.name} has no program type to build a context for")
        info = state.info
        size = ctypes.sizeof(info.ctx)
        if ctx_in is not None and len(ctx_in) > size:
            raise ValueError(f"ctx_in has {len(ctx_in)} bytes, a {info.name} context {size}")
        ctx = info.ctx.from_buffer_copy((ctx_in or b"").ljust(size, b"\0"))
        runs = max(1, repeat)
        began = time.perf_counter_ns()
        for _ in range(runs):
            result = self._run(data if info.packet else None, ctx)
        elapsed = time.perf_counter_ns() - began
        out = result.packet or b""
        return TestRun(result.retval, out if data_size_out is None else out[:data_size_out], bytes(result.ctx),
                       elapsed // runs, runs)

    def close(self) -> None:
        self.vm.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def harness(source: str | os.PathLike[str] | ElfObject, name: str | None = None, *,
            include: Sequence[str | os.PathLike[str]] = (), **options: Any) -> Harness:
    """A ``Harness`` for program ``name`` (function or section name; optional when the object
    has one program) of an object, a ``.o`` file or a ``.c`` file (compiled with ``include``)."""
    from jitbpf.linux.elf import ElfObject

    obj = source if isinstance(source, ElfObject) else load(source, include=include)
    if name is None:
        if len(obj.programs) != 1:
            names = ", ".join(obj.programs) or "none"
            raise ElfError(f"{obj.name} has {len(obj.programs)} programs ({names}): name the one to test")
        return Harness(next(iter(obj.programs.values())), **options)
    return Harness(obj.program(name), **options)


def fixture(source: str | os.PathLike[str], name: str | None = None, *, scope: str = "module",
            include: Sequence[str | os.PathLike[str]] = (), **options: Any) -> Any:
    """A pytest fixture giving a ``Harness``, built once per ``scope`` (a test module by default)::

        firewall = jitbpf.testing.fixture("xdp_firewall.c", include=["include"])

        def test_drops(firewall): ...
    """
    import pytest

    def make() -> Iterator[Harness]:
        with harness(source, name, include=include, **options) as h:
            yield h

    return pytest.fixture(scope=scope)(make)  # type: ignore[call-overload]


# -- assertions ---------------------------------------------------------------------------------


def _verdict_value(expected: int | str) -> tuple[int | None, str]:
    """An expected verdict as r0 (None: compare names) and as text."""
    if isinstance(expected, str):
        return None, expected
    name = getattr(expected, "name", None)
    return int(expected), f"{name} ({int(expected)})" if name else str(int(expected))


def assert_verdict(outcome: Outcome, expected: int | str) -> None:
    """The run returned ``expected``: an action (``XdpAction.DROP``), its kernel name
    (``"XDP_DROP"``), or r0 as an int."""
    value, text = _verdict_value(expected)
    low32 = outcome.retval & 0xFFFF_FFFF
    if value is None:
        names = {outcome.verdict or "", (outcome.verdict or "").partition("_")[2]}
        ok = expected in names or (outcome.verdict is not None and outcome.verdict.endswith("_" + str(expected)))
    else:
        ok = outcome.retval == value & 0xFFFF_FFFF_FFFF_FFFF or low32 == value & 0xFFFF_FFFF
    if not ok:
        raise AssertionError(f"expected {text}, got {outcome.verdict or outcome.retval}\n{outcome.describe()}")


def assert_packet(outcome: Outcome, expected: PacketLike) -> None:
    """The packet after the run is ``expected`` (bytes or a scapy/dpkt packet); the message shows
    the first byte that differs."""
    want = packet_bytes(expected)
    got = outcome.packet
    if got == want:
        return
    if got is None:
        raise AssertionError(f"{outcome.program} takes no packet\n{outcome.describe()}")
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    raise AssertionError(f"packet after the run differs at byte {first} (got {len(got)} bytes, expected "
                         f"{len(want)})\n  expected:\n" + "\n".join("    " + ln for ln in hexdump(want))
                         + f"\n{outcome.describe()}")


def assert_traced(outcome: Outcome, text: str) -> None:
    """Some ``bpf_trace_printk`` line of the run contains ``text``."""
    if not any(text in line for line in outcome.trace):
        raise AssertionError(f"no trace line contains {text!r}\n{outcome.describe()}")
