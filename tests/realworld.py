"""Real programs written by others, run unchanged: the ``realworld`` test data (C sources, a
manifest, a compile script and test frames) compiled, loaded, verified and run in both engines,
and compared with the running kernel when it can serve as the reference (see ``tests.kernel``)."""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jitbpf._native.build import cache_dir
from jitbpf.errors import BpfError
from jitbpf.linux.elf import ElfObject, ElfProgram, load_elf
from jitbpf.linux.maps import BpfMap, MapType, set_current_cpu
from jitbpf.linux.programs import ProgType, ethernet_packet_type
from tests.kernel import L3_TYPES, PACKET_TYPES, Kernel, on_cpu0

ENV_VAR = "JITBPF_REALWORLD_DIR"  # overrides where the test data is
ENGINES = ("interp", "jit")
ETH_HLEN = 14
MASK32 = 0xFFFF_FFFF
# Maps whose contents both sides can read back as keys and values.
COMPARED_MAPS = frozenset({MapType.HASH, MapType.ARRAY, MapType.PERCPU_HASH, MapType.PERCPU_ARRAY,
                           MapType.LPM_TRIE})
PERCPU_MAPS = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY})


def find_root() -> Path | None:
    """The test data: ``$JITBPF_REALWORLD_DIR``, else ``shared/realworld`` beside the checkout."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "realworld"
        if (candidate / "manifest.txt").is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Entry:
    """One line of the manifest: an object built from one source."""

    id: str
    source: str
    prog_type: str | None  # the program type of sections libbpf's naming does not type


def read_manifest(root: Path) -> list[Entry]:
    entries = []
    for line in (root / "manifest.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        ident, source, _incs, _flags, prog_type = (line.split("|") + [""] * 5)[:5]
        entries.append(Entry(ident, source, prog_type.strip() or None))
    return entries


# What compile.sh needs besides clang: libbpf's headers and the 32-bit libc stubs some sources include.
BUILD_HEADERS = (Path("/usr/include/bpf/bpf_helpers.h"), Path("/usr/include/x86_64-linux-gnu/gnu/stubs-32.h"))


def missing_build_tools() -> str | None:
    """Why the objects cannot be compiled here (with the Debian packages to install), or None."""
    missing = [] if shutil.which("clang") else ["clang"]
    missing += [str(h) for h in BUILD_HEADERS if not h.is_file()]
    if not missing:
        return None
    return (f"cannot compile the realworld objects, missing {', '.join(missing)} "
            "(apt-get install clang libbpf-dev libc6-dev-i386)")


def build(root: Path, out: Path | None = None) -> Path:
    """Compile every object into ``out`` (default: a cache directory) unless all are up to date; a
    failed compile is retried once the compiler or the headers are newer than its error file."""
    out = out or cache_dir() / "realworld"
    out.mkdir(parents=True, exist_ok=True)
    newest = max(p.stat().st_mtime for p in (root / "compile.sh", root / "manifest.txt"))
    tools = max([p.stat().st_mtime for p in BUILD_HEADERS if p.is_file()] + [newest])

    def stale(e: Entry) -> bool:
        obj, err = out / f"{e.id}.o", out / f"{e.id}.err"
        if obj.is_file():
            return obj.stat().st_mtime < newest
        return not err.is_file() or err.stat().st_mtime < tools

    stale_entries = [e for e in read_manifest(root) if stale(e)]
    if stale_entries:
        subprocess.run(["bash", str(root / "compile.sh")], env={**os.environ, "OUT": str(out)},
                       check=False, capture_output=True, timeout=900)
    return out


def frames(root: Path) -> list[tuple[str, bytes]]:
    return [(p.stem, p.read_bytes()) for p in sorted((root / "packets").glob("*.bin"))]


class Status(enum.Enum):
    """How far a program got, worst first."""

    NO_OBJECT = "no-object"  # the source does not compile with these headers
    LOAD_ERROR = "load-error"  # load_elf refused the object
    VERIFY_ERROR = "verify-error"  # jitbpf's verifier refused the program
    RUN_ERROR = "run-error"  # a run failed with an error
    ENGINES_DIFFER = "engines-differ"  # the interpreter and the JIT disagree
    KERNEL_DIFFERS = "kernel-differs"  # both engines agree, the kernel's results differ
    ACCEPTS_REFUSED = "accepts-refused"  # jitbpf runs what the kernel refuses to load
    BOTH_REFUSE = "both-refuse"  # the kernel refuses it too
    VERIFIED = "verified"  # loads and verifies; no packet runs to compare (tracing types)
    ENGINES_AGREE = "engines-agree"  # packet runs agree between engines (no kernel to compare)
    IDENTICAL = "identical"  # the kernel's return value, packet and maps on every frame


@dataclass
class Outcome:
    """What happened to one program (or to an object that gave no programs)."""

    object: str
    program: str  # "" for the object itself
    status: Status
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.object}/{self.program}" if self.program else self.object


@dataclass
class _Run:
    retval: int
    packet: bytes


@dataclass
class Evaluation:
    """Every outcome of a run over the whole manifest."""

    outcomes: list[Outcome] = field(default_factory=list)
    objects: int = 0
    objects_loaded: int = 0
    kernel: str = ""  # why the kernel is not the reference, or ""

    def counts(self) -> Counter[Status]:
        return Counter(o.status for o in self.outcomes if o.program)

    def summary(self) -> str:
        c = self.counts()
        programs = sum(c.values())
        failed = {Status.LOAD_ERROR, Status.VERIFY_ERROR, Status.BOTH_REFUSE, Status.NO_OBJECT}
        verified = programs - sum(c[s] for s in failed)
        lines = [f"objects loaded: {self.objects_loaded} of {self.objects}",
                 f"programs verified: {verified} of {programs}",
                 f"programs identical to the kernel: {c[Status.IDENTICAL]}"
                 + (f" (no kernel: {self.kernel})" if self.kernel else "")]
        lines += [f"  {s.value}: {c[s]}" for s in Status if c[s]]
        return "\n".join(lines)


def _map_contents(obj: ElfObject) -> dict[str, dict[bytes, bytes]]:
    out: dict[str, dict[bytes, bytes]] = {}
    for name, m in obj.maps.items():
        if isinstance(m, BpfMap) and m.map_type in COMPARED_MAPS:
            items = m.raw_items()
            if m.map_type in PERCPU_MAPS:  # CPU 0's value: the runs happen there
                items = {k: v[: m.value_size] for k, v in items.items()}
            out[name] = items
    return out


def _kernel_name(jit_name: str, kernel_names: Iterable[str]) -> str | None:
    """The kernel's name of a map: the same, or for global data "<object prefix>.bss" for ".bss"."""
    for k in kernel_names:
        if k == jit_name or (jit_name.startswith(".") and k.endswith(jit_name)):
            return k
    return None


def _run_one(prog: ElfProgram, vm: Any, frame: bytes, engine: str) -> _Run:
    kind = prog.prog_type
    if kind is ProgType.XDP:
        action, packet = vm.run_xdp(frame, engine=engine)
        return _Run(int(action) & MASK32, packet)
    if kind in (ProgType.SCHED_CLS, ProgType.SCHED_ACT):
        # As the kernel's test run: the skb arrives on no interface (loopback is its device).
        verdict, packet = vm.run_tc(frame, engine=engine, ingress_ifindex=0)
        return _Run(int(verdict) & MASK32, packet)
    proto = int.from_bytes(frame[12:14], "little")
    if kind is ProgType.SOCKET_FILTER:
        return _Run(vm.run_socket_filter(frame[ETH_HLEN:], engine=engine, protocol=proto), frame)
    if kind is ProgType.CGROUP_SKB:
        # Its skb->pkt_type is what the frame's Ethernet header gives in the kernel's test run.
        return _Run(vm.run_cgroup_skb(frame[ETH_HLEN:], engine=engine, protocol=proto,
                                      pkt_type=ethernet_packet_type(frame)), frame)
    raise AssertionError(f"no packet runner for {kind.name}")


def _packet_type(prog: ElfProgram) -> str | None:
    for name, number in PACKET_TYPES.items():
        if number == int(prog.prog_type):
            return name
    return None


def evaluate_program(entry: Entry, path: Path, name: str, packets: Sequence[tuple[str, bytes]],
                     kernel: Kernel | None) -> Outcome:
    """Load ``name`` of the object afresh (maps of its own), run it on every frame in both
    engines, and compare with the kernel when there is one."""
    try:
        obj = load_elf(path, prog_type=entry.prog_type)
        prog = obj.programs[name]
        vm = prog.vm()
        vm.check()
    except BpfError as exc:
        status = Status.VERIFY_ERROR
        if kernel is not None:
            kprog = kernel.load(path, name, entry.prog_type)
            if isinstance(kprog, str):
                status = Status.BOTH_REFUSE
            else:
                kprog.close()
        return Outcome(entry.id, name, status, str(exc))
    kind = _packet_type(prog)
    if kind is None:
        return Outcome(entry.id, name, Status.VERIFIED, prog.prog_type.name)
    if kernel is None:
        runs, problem = _engines(entry, path, name, packets)
        if problem:
            return Outcome(entry.id, name, Status.ENGINES_DIFFER, problem)
        errors = [r for r in runs.runs if isinstance(r, str)]
        return Outcome(entry.id, name, Status.RUN_ERROR if errors else Status.ENGINES_AGREE,
                       errors[0] if errors else "")
    return _compare_kernel(entry, path, name, packets, kernel)


@dataclass
class _Runs:
    runs: list[_Run | str]  # per frame: the result, or the error
    maps: dict[str, dict[bytes, bytes]]  # map contents after the last frame


def _engines(entry: Entry, path: Path, name: str, packets: Sequence[tuple[str, bytes]]) -> tuple[_Runs, str]:
    """The frames run in sequence in each engine (a fresh object each); what differs, or ""."""
    results: dict[str, _Runs] = {}
    for engine in ENGINES:
        obj = load_elf(path, prog_type=entry.prog_type)
        prog = obj.programs[name]
        vm = prog.vm()
        set_current_cpu(0)  # per-CPU values land where the kernel's comparison reads them
        try:
            runs: list[_Run | str] = []
            for _frame_name, frame in packets:
                try:
                    runs.append(_run_one(prog, vm, frame, engine))
                except BpfError as exc:
                    runs.append(f"error: {exc}")
        finally:
            set_current_cpu(None)
        results[engine] = _Runs(runs, _map_contents(obj))
    interp, jit = results["interp"], results["jit"]
    for (frame_name, _), a, b in zip(packets, interp.runs, jit.runs, strict=True):
        if a != b:
            return interp, f"{frame_name}: interpreter {a!r}, JIT {b!r}"
    return interp, "" if interp.maps == jit.maps else "map contents differ between the engines"


def _compare_kernel(entry: Entry, path: Path, name: str, packets: Sequence[tuple[str, bytes]],
                    kernel: Kernel) -> Outcome:
    kprog = kernel.load(path, name, entry.prog_type)
    if isinstance(kprog, str):
        return Outcome(entry.id, name, Status.ACCEPTS_REFUSED, kprog)
    try:
        with on_cpu0():
            theirs = [kprog.run(frame) for _, frame in packets]
            kmaps = kprog.maps()
    finally:
        kprog.close()
    # The frames the kernel refuses (too short for the type) run apart: engines must agree there too.
    taken = [(p, r) for p, r in zip(packets, theirs, strict=True) if r is not None]
    refused = [p for p, r in zip(packets, theirs, strict=True) if r is None]
    if refused:
        _, problem = _engines(entry, path, name, refused)
        if problem:
            return Outcome(entry.id, name, Status.ENGINES_DIFFER, problem)
    ours, problem = _engines(entry, path, name, [p for p, _ in taken])
    if problem:
        return Outcome(entry.id, name, Status.ENGINES_DIFFER, problem)
    for ((frame_name, frame), ref), mine in zip(taken, ours.runs, strict=True):
        assert ref is not None
        if isinstance(mine, str):
            return Outcome(entry.id, name, Status.RUN_ERROR, f"{frame_name}: {mine}")
        packet, kpacket = mine.packet, ref.packet
        if int(kprog.prog_type) in L3_TYPES:
            # These see the frame from the network header on and cannot change it; the kernel's
            # test run hands it back with the Ethernet header zeroed.
            packet, kpacket = frame[ETH_HLEN:], kpacket[ETH_HLEN:]
        if mine.retval & MASK32 != ref.retval or packet != kpacket:
            return Outcome(entry.id, name, Status.KERNEL_DIFFERS,
                           f"{frame_name}: jitbpf r0={mine.retval:#x} len={len(packet)}, "
                           f"kernel r0={ref.retval:#x} len={len(kpacket)}"
                           + ("" if packet == kpacket else ", packets differ"))
    for map_name, items in ours.maps.items():
        kname = _kernel_name(map_name, kmaps)
        if kname is not None and items != kmaps[kname]:
            return Outcome(entry.id, name, Status.KERNEL_DIFFERS, f"map {map_name} differs after the runs")
    return Outcome(entry.id, name, Status.IDENTICAL)


def evaluate_entry(entry: Entry, objdir: Path, packets: Sequence[tuple[str, bytes]],
                   kernel: Kernel | None) -> tuple[bool, list[Outcome]]:
    """(object loaded, outcome of each program) for one manifest entry."""
    path = objdir / f"{entry.id}.o"
    if not path.is_file():
        return False, [Outcome(entry.id, "", Status.NO_OBJECT, "the source does not compile")]
    try:
        names = list(load_elf(path, prog_type=entry.prog_type).programs)
    except BpfError as exc:
        return False, [Outcome(entry.id, "", Status.LOAD_ERROR, str(exc))]
    return True, [evaluate_program(entry, path, n, packets, kernel) for n in names]


def evaluate(root: Path, objdir: Path, kernel: Kernel | None, reason: str = "") -> Evaluation:
    packets = frames(root)
    ev = Evaluation(kernel=reason)
    for entry in read_manifest(root):
        ev.objects += 1
        loaded, outcomes = evaluate_entry(entry, objdir, packets, kernel)
        ev.objects_loaded += loaded
        ev.outcomes.extend(outcomes)
    return ev
