"""Cases, the worker process that runs them, and the supervisor that feeds workers, enforces the
time limit and keeps reproducers of findings.

A case is made from its kind and seed alone (so a finding is reproducible from those two), in the
supervisor; the worker (``python -m tests.fuzz.harness``, one JSON line per case on stdin, one
per result on its own channel) runs it and answers with a status, or with the finding it made.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import enum
import faulthandler
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jitbpf import cfg
from jitbpf.asm import assemble
from jitbpf.errors import AccessError, BpfError, InternalError, VerifierError
from jitbpf.isa import MASK32, Program
from jitbpf.isa import Kind as InsnKind
from jitbpf.linux.helperids import HelperId
from jitbpf.linux.maps import Array, BpfMap, HashMap, RingBuf
from jitbpf.vm import VM
from tests.fuzz import inputs, objects, programs
from tests.kernel_oracle import KernelMap, kernel_test_runs

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("interp", "jit")
BUDGET = 100_000  # instructions per run: generated loops end quickly, in both engines alike
RECYCLE = 300  # cases per worker process, so that a slow leak cannot build up
PACKET_TYPES = frozenset({"xdp", "sched_cls", "socket_filter", "cgroup_skb"})
TRACE_TYPES = frozenset({"kprobe", "tracepoint", "perf_event"})


class Kind(enum.Enum):
    """What a case feeds jitbpf."""

    PROGRAM = "program"  # generated XDP bytecode or a mutant of it: verified and unverified runs
    ASM = "asm"  # mutated assembly text, run when it assembles
    ELF = "elf"  # a mutated object with a (maybe mutated) CO-RE target BTF, each program run
    PCAP = "pcap"  # a mutated capture through run_pcap
    CRASH = "crash"  # the harness's own check: this case kills its worker
    HANG = "hang"  # the harness's own check: this case never ends


FUZZ_KINDS = (Kind.PROGRAM, Kind.ASM, Kind.ELF, Kind.PCAP)


@dataclass(frozen=True)
class Case:
    kind: Kind
    seed: int
    data: bytes
    extra: bytes = b""  # ELF: the CO-RE target BTF

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "seed": self.seed, "data": base64.b64encode(self.data).decode(),
                "extra": base64.b64encode(self.extra).decode()}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Case:
        return cls(Kind(obj["kind"]), int(obj["seed"]), base64.b64decode(obj["data"]), base64.b64decode(obj["extra"]))


class Finding(Exception):
    """What a case revealed: a bug in jitbpf."""


@dataclass
class Result:
    case: Case
    status: str  # what happened ("ran", "rejected", "refused", ...) or "finding"
    finding: str = ""


# -- cases ---------------------------------------------------------------------------------------

MAP_HANDLES = {name: i + 1 for i, name in enumerate(programs.MAP_NAMES)}


def make_case(kind: Kind, seed: int, corpus: Sequence[objects.Seed] = ()) -> Case:
    """The case of ``kind`` made from ``seed`` (the ELF kind needs the compiled ``corpus``)."""
    rng = random.Random(f"{kind.value}:{seed}")
    match kind:
        case Kind.PROGRAM:
            code = assemble(programs.xdp_program(rng), maps=MAP_HANDLES)
            for _ in range(rng.choice((0, 0, 1, 1, 2))):
                code = programs.mutate_bytecode(rng, code)
            return Case(kind, seed, code)
        case Kind.ASM:
            return Case(kind, seed, inputs.mutate_text(rng, programs.xdp_program(rng)).encode())
        case Kind.ELF:
            if not corpus:
                raise ValueError("ELF cases need a corpus (objects.build_corpus)")
            base = rng.choice(corpus)
            btf = objects.mutate_btf(rng, base.btf) if rng.random() < 0.3 else base.btf
            data = base.data if btf != base.btf and rng.random() < 0.5 else objects.mutate_object(rng, base.data)
            return Case(kind, seed, data, btf)
        case Kind.PCAP:
            data = inputs.capture(inputs.FRAMES[2:], pcapng=rng.random() < 0.5)
            return Case(kind, seed, inputs.mutate_capture(rng, data))
        case _:
            return Case(kind, seed, b"")


# -- running one case (in the worker) ------------------------------------------------------------


def _maps() -> dict[str, BpfMap]:
    return {"A": Array(value_size=16, max_entries=4, name="A"),
            "H": HashMap(key_size=4, value_size=16, max_entries=8, name="H"),
            "R": RingBuf(max_entries=4096, name="R")}


def _dump(maps: dict[str, BpfMap]) -> tuple[Any, ...]:
    ring = maps["R"]
    assert isinstance(ring, RingBuf)
    return (sorted(maps["A"].raw_items().items()), sorted(maps["H"].raw_items().items()),
            [bytes(e) for e in ring.read_events()])


def _outcome(exc: BpfError) -> tuple[Any, ...]:
    if isinstance(exc, InternalError):
        raise Finding(f"internal error: {exc}") from exc
    return (type(exc).__name__, exc.pc)


def _reset(maps: dict[str, BpfMap]) -> None:
    """The maps as created, so that the second engine starts where the first did."""
    array, table, ring = maps["A"], maps["H"], maps["R"]
    assert isinstance(array, Array) and isinstance(table, HashMap) and isinstance(ring, RingBuf)
    for index in range(array.max_entries):
        array.set(index, bytes(array.value_size))
    table.clear()
    ring.read_events()


@dataclass(frozen=True)
class Runs:
    """What each engine gave on every frame (a result or an error), then the maps after them."""

    interp: tuple[Any, ...]
    jit: tuple[Any, ...]
    reads_uninit_stack: bool  # privileged code may; what it reads is undefined (see _against_kernel)
    uses_addresses: bool  # the verifier found a result or branch that follows where memory lies


def _run_program(code: bytes, *, verify: bool, frames: Sequence[bytes] = inputs.FRAMES) -> Runs | None:
    """Every frame in each engine, on one machine (so that the addresses a program may leak in r0
    or a map are the same in both), the maps reset in between; None when the verifier refuses."""
    maps = _maps()
    vm = VM(code, prog_type="xdp", verify=verify, allow_loops=True, budget=BUDGET)
    try:
        for name, m in maps.items():
            vm.add_map(m, MAP_HANDLES[name])
        vm.use_standard_helpers()
        try:
            vm.check()
        except VerifierError:
            return None
        results = []
        for engine in ENGINES:
            _reset(maps)
            out: list[Any] = []
            for frame in frames:
                try:
                    action, after = vm.run_xdp(frame, engine=engine)
                    out.append((int(action), bytes(after)))
                except BpfError as exc:
                    if verify and isinstance(exc, AccessError) and exc.pc in vm._proven:
                        raise Finding(f"an access the verifier proved in bounds failed ({engine}): {exc}") from exc
                    out.append(_outcome(exc))
            results.append((*out, _dump(maps)))
        return Runs(results[0], results[1], vm._reads_uninit_stack, vm._uses_addresses)
    finally:
        vm.close()
        for m in maps.values():
            m.close()


KERNEL_MAPS = {MAP_HANDLES["A"]: KernelMap(2, 4, 16, 4), MAP_HANDLES["H"]: KernelMap(1, 4, 16, 8),
               MAP_HANDLES["R"]: KernelMap(27, 0, 0, 4096)}
KERNEL_FRAMES = [frame for frame in inputs.FRAMES if len(frame) >= 14]  # the kernel's XDP minimum
XDP = 6  # enum bpf_prog_type
SANDBOX = (1 << 31, 1 << 32)  # where the memory programs reach lies (see the README's safety model)


def _functions(code: bytes) -> tuple[int, ...]:
    """The entry slots of a program's functions when it has several: the kernel takes a function's
    address (a callback) only with BTF describing them, which raw bytecode lacks, so the oracle
    makes that BTF (as a compiler would have)."""
    try:
        flow = cfg.analyze(Program.from_bytes(code))
    except BpfError:
        return ()
    return tuple(fn.entry for fn in flow.functions) if len(flow.functions) > 1 else ()


def _against_kernel(code: bytes, runs: Runs | None) -> str:
    """The kernel's verdict on ``code`` and, when both accept it, its results against jitbpf's."""
    ref = kernel_test_runs(code, XDP, KERNEL_MAPS, KERNEL_FRAMES, _functions(code))
    if "missing btf func_info" in ref.verdict.log:  # callbacks need BTF there (see _functions)
        return "kernel-needs-btf"
    if "verifier bug" in ref.verdict.log:  # the kernel's own consistency check, not a verdict
        return "kernel-bug"
    if ref.verdict.accepted != (runs is not None):
        return "only-kernel-accepts" if ref.verdict.accepted else "only-jitbpf-accepts"
    if runs is None:
        return "both-reject"
    if runs.reads_uninit_stack:  # the kernel's test runs read their own stack's leftovers there
        return "both-accept-uninit"
    mine = runs.interp
    differ = ""
    for i, run in enumerate(ref.runs):
        ours = mine[i]
        if ours and ours[0] == "BudgetExceeded" and not isinstance(run, int):
            return "budget-exceeded"  # the harness's budget ended jitbpf's run; the kernel has none
        if not isinstance(run, int) and len(ours) == 2 and ours[1] == run[1] and SANDBOX[0] <= ours[0] < SANDBOX[1]:
            return "both-accept-address"  # r0 holds an address (privileged code may return one): each its own
        if isinstance(run, int) or len(ours) != 2 or isinstance(ours[0], str) or (ours[0] & MASK32, ours[1]) != run:
            differ = f"jitbpf and the kernel disagree, frame {i}: jitbpf {ours!r:.300} vs kernel {run!r:.300}"
            break
    array, table, _ring = mine[-1]
    kernel_array = sorted(ref.maps[MAP_HANDLES["A"]].items())
    if not differ and (array != kernel_array or table != sorted(ref.maps[MAP_HANDLES["H"]].items())):
        differ = (f"jitbpf and the kernel disagree on the maps: jitbpf {array!r:.200} {table!r:.200} vs "
                  f"kernel {kernel_array!r:.200} {sorted(ref.maps[MAP_HANDLES['H']].items())!r:.200}")
    if not differ:
        return "both-accept"
    # A result that follows where memory lies (a pointer folded into a checksum, pointers of two
    # objects compared) differs between any two machines: a second jitbpf run, whose maps and
    # packet lie elsewhere, tells it apart from a real disagreement.
    again = _run_program(code, verify=True, frames=KERNEL_FRAMES)
    if (again is not None and again.interp != runs.interp) or runs.uses_addresses:
        return "both-accept-address"
    raise Finding(differ)


# Helpers whose result changes from one call to the next (clocks, random numbers): runs of a
# program that calls one need not agree, between the engines or with the kernel.
_NONDETERMINISTIC = frozenset({HelperId.KTIME_GET_NS, HelperId.GET_PRANDOM_U32, HelperId.JIFFIES64,
                               HelperId.KTIME_GET_BOOT_NS, HelperId.KTIME_GET_COARSE_NS, HelperId.KTIME_GET_TAI_NS})


def _nondeterministic(code: bytes) -> bool:
    return any(info.kind is InsnKind.CALL and insn.imm in _NONDETERMINISTIC
               for _pc, insn, info in Program.from_bytes(code))


def _without_ring(runs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The runs with the ring buffer's records left out of the maps after them."""
    array, table, _ring = runs[-1]
    return (*runs[:-1], (array, table))


def _program_case(code: bytes, *, unverified: bool = True, kernel: bool = False) -> str:
    results = _run_program(code, verify=True, frames=KERNEL_FRAMES if kernel else inputs.FRAMES)
    if results is not None and _nondeterministic(code):
        return "nondeterministic"  # (it ran in both engines: neither crashed nor raised a wrong error)
    if results is not None:
        interp, jit = results.interp, results.jit
        if results.uses_addresses:
            # Records the second engine reserves lie further on in the ring buffer (its positions
            # only ever grow): where the program stores their addresses, the records differ.
            interp, jit = _without_ring(interp), _without_ring(jit)
        if interp != jit:
            diff = next(i for i, (a, b) in enumerate(zip(interp, jit, strict=True)) if a != b)
            raise Finding(f"the engines disagree, frame {diff}: interpreter {interp[diff]!r:.300} vs "
                          f"JIT {jit[diff]!r:.300}")
    if kernel:
        return _against_kernel(code, results)
    if results is not None:
        return "ran"
    if unverified:
        # Refused code also runs unverified, every access checked, in both engines. Their results
        # are not compared: such code may read registers a call clobbered, whose values are
        # undefined (as in the kernel); what counts is that neither engine crashes or raises
        # anything but a BpfError.
        _run_program(code, verify=False)
    return "rejected"


def _plain(result: Any) -> Any:
    """A runner's result (an action, or an action and the packet) as comparable values."""
    if isinstance(result, tuple):
        return tuple(_plain(x) for x in result)
    return bytes(result) if isinstance(result, bytes | bytearray | memoryview) else int(result)


def _elf_case(data: bytes, btf: bytes) -> str:
    from jitbpf.linux.elf import load_elf

    try:  # one object per engine: each run changes its maps
        objs = [load_elf(data, btf=btf or None) for _ in ENGINES]
    except BpfError as exc:
        _outcome(exc)
        return "refused"
    results: list[list[Any]] = [[], []]
    for obj, engine, out in zip(objs, ENGINES, results, strict=True):
        for name in sorted(obj.programs):
            prog = obj.programs[name]
            kind = prog.program_type_name
            try:
                prog.vm().check()
                if kind in PACKET_TYPES:
                    for frame in inputs.FRAMES:
                        try:
                            out.append((name, _plain(prog.run(frame, engine=engine))))
                        except BpfError as exc:
                            out.append((name, *_outcome(exc)))
                elif kind in TRACE_TYPES:
                    out.append((name, _plain(prog.run(engine=engine))))
                elif engine == "jit":
                    prog.vm().jit_compile()
            except BpfError as exc:
                out.append((name, *_outcome(exc)))
    if results[0] != results[1]:
        raise Finding(f"the engines disagree on an object: {results[0]!r:.400} vs {results[1]!r:.400}")
    return "ran"


def _pcap_case(data: bytes) -> str:
    from jitbpf.pcap import run_pcap

    code = assemble("ldxw r2, [r1+0]\nldxw r3, [r1+4]\nmov r4, r2\nadd r4, 14\nmov r0, 2\njgt r4, r3, +2\n"
                    "ldxb r0, [r2+13]\nand r0, 3\nexit")
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        f.write(data)
        f.flush()
        summaries = []
        for engine in ENGINES:
            with VM(code, prog_type="xdp") as vm:
                try:
                    summary = run_pcap(vm, f.name, engine=engine, progress=False)
                    summaries.append(repr(dataclasses.replace(summary, engine="", elapsed=0.0)))
                except BpfError as exc:
                    summaries.append(repr(_outcome(exc)))
    if summaries[0] != summaries[1]:
        raise Finding(f"the engines disagree on a capture: {summaries[0]:.300} vs {summaries[1]:.300}")
    return "ran"


def run_case(case: Case, *, kernel: bool = False) -> str:
    """Run ``case`` in this process: its status, or ``Finding`` (any other exception is one too).
    With ``kernel``, a program's verdict and results are also compared with the running kernel's."""
    match case.kind:
        case Kind.PROGRAM:
            try:
                return _program_case(case.data, kernel=kernel)
            except BpfError as exc:  # decoding fails before either engine
                _outcome(exc)
                return "refused"
        case Kind.ASM:
            try:
                code = assemble(case.data.decode(), maps=MAP_HANDLES)
            except BpfError as exc:
                _outcome(exc)
                return "refused"
            try:
                return _program_case(code, unverified=False)
            except BpfError as exc:
                _outcome(exc)
                return "refused"
        case Kind.ELF:
            return _elf_case(case.data, case.extra)
        case Kind.PCAP:
            return _pcap_case(case.data)
        case Kind.CRASH:
            ctypes.string_at(0)  # a read of address 0: the harness must report this worker's death
            return "survived"
        case Kind.HANG:
            while True:
                time.sleep(1)


def worker() -> int:
    """The worker loop: cases on stdin, results on the descriptor stdout had (stdout itself goes to
    stderr, so that nothing a case prints can break the protocol)."""
    faulthandler.enable()
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin:
        request = json.loads(line)
        case = Case.from_json(request)
        try:
            reply = {"status": run_case(case, kernel=request.get("kernel", False))}
        except Finding as exc:
            reply = {"status": "finding", "finding": str(exc)}
        except Exception as exc:  # a foreign exception is a finding: jitbpf raises only BpfError
            reply = {"status": "finding", "finding": f"foreign exception {type(exc).__name__}: {exc}"[:600]}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()
    return 0


# -- the supervisor ------------------------------------------------------------------------------


class Supervisor:
    """One worker process at a time: started on demand, replaced after a crash, a hang or
    ``RECYCLE`` cases."""

    def __init__(self, timeout: float, kernel: bool = False) -> None:
        self.timeout = timeout
        self.kernel = kernel
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (the workers' stderr, kept until close)
        self._served = 0

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._served >= RECYCLE:
            self.close()
            self._log.seek(0)
            self._log.truncate()
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            self._proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.harness"], cwd=ROOT, env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
            self._served = 0
        return self._proc

    def _stderr_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-1500:].decode(errors="replace").strip()

    def run(self, case: Case) -> Result:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        self._served += 1
        try:
            proc.stdin.write((json.dumps({**case.to_json(), "kernel": self.kernel}) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
        if not ready:
            self.close()
            return Result(case, "finding", f"hang: no result within {self.timeout:g} s")
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            tail = self._stderr_tail()
            self._proc = None
            what = f"crash: signal {-code}" if code < 0 else f"crash: the worker exited with status {code}"
            return Result(case, "finding", f"{what}\n{tail}" if tail else what)
        reply = json.loads(line)
        return Result(case, reply["status"], reply.get("finding", ""))

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None

    def shutdown(self) -> None:
        self.close()
        self._log.close()


@dataclass
class Report:
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, status) -> cases
    findings: list[Result] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        for kind in sorted({k for k, _ in self.statuses}):
            counts = ", ".join(f"{s} {n}" for (k, s), n in sorted(self.statuses.items()) if k == kind)
            lines.append(f"{kind}: {counts}")
        lines.append(f"findings: {len(self.findings)}")
        return "\n".join(lines)


# Statuses whose cases are kept, and where (under a campaign's directory).
SAVED = {"finding": "findings", "only-kernel-accepts": "verdicts", "only-jitbpf-accepts": "verdicts"}


def save(result: Result, out_dir: Path) -> Path:
    """A reproducer: the case and what it found, for ``tools/fuzz.py --replay``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.case.kind.value}-{result.case.seed}.json"
    path.write_text(json.dumps({**result.case.to_json(), "finding": result.finding}, indent=1))
    return path


def campaign(cases: Iterable[Case], *, timeout: float, jobs: int = 1, out_dir: Path | None = None,
             on_result: Any = None, kernel: bool = False) -> Report:
    """Run ``cases`` over ``jobs`` workers; findings (and verdicts that differ from the kernel's)
    are saved under ``out_dir`` when given (see ``SAVED``). With
    ``kernel``, programs are also compared with the running kernel (root and the BPF syscall)."""
    report = Report()
    lock = threading.Lock()
    source: Iterator[Case] = iter(cases)

    def drain() -> None:
        supervisor = Supervisor(timeout, kernel)
        try:
            while True:
                with lock:
                    case = next(source, None)
                if case is None:
                    return
                result = supervisor.run(case)
                with lock:
                    report.statuses[case.kind.value, result.status] += 1
                    if result.status == "finding":
                        report.findings.append(result)
                    if out_dir is not None and result.status in SAVED:
                        save(result, out_dir / SAVED[result.status])
                    if on_result is not None:
                        on_result(result)
        finally:
            supervisor.shutdown()

    threads = [threading.Thread(target=drain) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.findings.sort(key=lambda r: (r.case.kind.value, r.case.seed))
    return report


if __name__ == "__main__":
    sys.exit(worker())
