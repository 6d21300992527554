"""Runs the workloads in the interpreter, the JIT and native C side by side, and collects the figures."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt

from benchmarks.measure import REPO_ROOT, Contender, Plan, Progress, measure, median_call_ns, median_ns
from benchmarks.packets import packet_mix
from benchmarks.workloads import FILTER_SOURCE, MAP_HANDLES, Context, Workload, fnv1a_source
from jitbpf.asm import assemble
from jitbpf.errors import BudgetExceeded, VerifierError
from jitbpf.pcap import run_pcap
from jitbpf.vm import VM

BUDGET = 10**9  # instructions per call: the long loops run millions in one call
COMPILE_INSNS = 100_000  # size of the generated straight-line program
COMPILE_INSNS_QUICK = 1_000
COMPILE_INSNS_SMALL = 100  # a small program: what a compile costs beyond its size


@dataclass(frozen=True)
class Loaded:
    """A workload's program loaded into a VM, and how it was checked."""

    vm: VM
    verified: str  # "verified" or why it runs with verify=False


def load_vm(ctx: Context, w: Workload, units: int, *, verify: bool = True) -> Loaded:
    """The program of ``w`` for ``units`` units per call, in a VM with its helpers and maps.

    Loop-free programs are verified. Programs with loops run with ``allow_loops`` and without the
    verifier, which walks a loop iteration by iteration up to the budget (10**9 here); so does a
    program the verifier rejects (or a checkout without one), and the table says which.
    """
    code = assemble(w.source(units), maps=MAP_HANDLES)
    reason = ("verify=False, allow_loops=True (the verifier walks loops iteration by iteration, up to the budget)"
              if w.loops else "verify=False")
    if verify and (not w.loops or w.bounded):
        vm = VM(code, budget=BUDGET, helpers=w.helpers(ctx), allow_loops=w.loops)
        w.configure(ctx, vm)
        try:
            vm.check()
            return Loaded(vm, "verified")
        except (VerifierError, ImportError) as exc:
            reason = f"verify=False (verifier: {type(exc).__name__}: {exc})"[:300]
            vm.close()
    vm = VM(code, budget=BUDGET, allow_loops=w.loops, helpers=w.helpers(ctx), verify=False)
    w.configure(ctx, vm)
    vm.check()
    return Loaded(vm, reason)


def executed_insns(vm: VM, args: tuple[Any, ...]) -> int:
    """Instructions the interpreter executes in one call: the smallest budget that lets it finish.

    Both engines charge the budget per block on entry, so that smallest budget is exactly the count
    of executed instructions (an lddw counts once).
    """
    saved = vm.budget

    def finishes(budget: int) -> bool:
        vm.budget = budget
        try:
            vm.execute(*args)
        except BudgetExceeded:
            return False
        return True

    try:
        lo, hi = 0, 256
        while not finishes(hi):
            lo, hi = hi, hi * 4
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if finishes(mid):
                hi = mid
            else:
                lo = mid
        return hi
    finally:
        vm.budget = saved


def _mean_insns(ctx: Context, w: Workload, units: int, calls: Sequence[tuple[Any, ...]]) -> float:
    loaded = load_vm(ctx, w, units, verify=False)
    with loaded.vm as vm:
        return sum(executed_insns(vm, args) for args in calls) / len(calls)


def insns_per_unit(ctx: Context, w: Workload, calls: Sequence[tuple[Any, ...]]) -> float:
    """Executed eBPF instructions per unit of work, without the fixed cost of a call (prologue, exit)."""
    if not w.scales:
        return _mean_insns(ctx, w, 1, calls)
    return _mean_insns(ctx, w, 2, calls) - _mean_insns(ctx, w, 1, calls)


def _try_jit(vm: VM) -> str:
    """Compile; "" on success, else why not (the JIT may be missing or unfinished in this checkout)."""
    try:
        vm.jit_compile()
    except Exception as exc:  # any failure of the JIT makes its column "n/a", not the suite fail
        return f"{type(exc).__name__}: {exc}"
    return ""


def _run_calls(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[int]:
    return [int(fn(*args)) for args in calls]


def run_workload(ctx: Context, w: Workload, quick: bool, plan: Plan, progress: Progress) -> dict[str, Any]:
    """Check that the three engines agree on ``w``, then time them; the figures as a JSON-ready dict."""
    scale = w.scale(quick)
    inputs = w.inputs()
    calls: list[tuple[Any, ...]] = [(b,) for b in inputs] or [()]
    out: dict[str, Any] = {"title": w.title, "unit": w.unit, "units_per_call": {"interp": scale.interp,
                                                                              "jit": scale.jit, "native": scale.jit}}
    progress.step(f"{w.title}: checking")

    # Correctness first, at the interpreter's scale: the same program, the same inputs, three engines.
    small = load_vm(ctx, w, scale.interp)
    out["verified"] = small.verified
    native_small = w.native(ctx, inputs, scale.interp)
    results: dict[str, list[int] | None] = {
        "interp": _run_calls(small.vm.execute, calls),
        "native": _run_calls(native_small.fn, native_small.args),
    }
    jit_error = _try_jit(small.vm)
    results["jit"] = None if jit_error else _run_calls(small.vm.execute_jit, calls)
    small.vm.close()
    out["results"] = results
    out["jit_error"] = jit_error
    out["insns_per_unit"] = insns_per_unit(ctx, w, calls)

    # The timed contenders: the interpreter at its scale, the JIT and C at theirs.
    interp = load_vm(ctx, w, scale.interp)
    big = load_vm(ctx, w, scale.jit) if not jit_error else None
    native = w.native(ctx, inputs, scale.jit)
    contenders = [Contender("interp", interp.vm.execute, calls, scale.interp),
                  Contender("native", native.fn, native.args, scale.jit)]
    if big is not None:
        jit_error = _try_jit(big.vm)
        if not jit_error:
            contenders.insert(1, Contender("jit", big.vm.execute_jit, calls, scale.jit))
            # The long runs of the JIT and of C must agree too (the interpreter would take too long).
            results["jit_full"] = _run_calls(big.vm.execute_jit, calls)
            results["native_full"] = _run_calls(native.fn, native.args)
        out["jit_error"] = jit_error
    progress.step(f"{w.title}: timing")
    measure(contenders, plan, tick=lambda: progress.step())
    for c in contenders:
        figures: dict[str, float] = {"ns_per_unit": c.median}
        if c.name != "native":
            figures["insns_per_s"] = out["insns_per_unit"] * 1e9 / c.median
        out[c.name] = figures
    for name in ("jit", "native"):
        out.setdefault(name, None)
    out["jit_native_ratio"] = out["jit"]["ns_per_unit"] / out["native"]["ns_per_unit"] if out["jit"] else None
    out["agree"] = agree(results)
    interp.vm.close()
    if big is not None:
        big.vm.close()
    return out


def agree(results: dict[str, list[int] | None]) -> bool:
    """All engines returned the same r0 for every input."""
    same = results["interp"] == results["native"] and results["jit"] in (None, results["native"])
    if "jit_full" in results:
        same = same and results["jit_full"] == results["native_full"]
    return same


# --- compile speed -----------------------------------------------------------------------------------

_ALU_OPS = ("add", "sub", "mul", "or", "and", "xor", "mov", "add32", "sub32", "xor32", "mov32", "mul32")
_SHIFT_OPS = ("lsh", "rsh", "arsh", "lsh32", "rsh32")
_CONDITIONS = ("jeq", "jne", "jgt", "jge", "jlt", "jsgt", "jset", "jeq32", "jlt32")
STACK_SLOTS = 64  # 8-byte slots of the 512-byte frame


def straight_line_source(n: int, seed: int = 2024) -> str:
    """A generated program of exactly ``n`` instructions: ALU, stack stores and loads, forward branches.

    No loops and no helpers, so its size alone sets the compile time; it is deterministic (seeded)
    so that runs compare.
    """
    if n < 100:
        raise ValueError("the generated program needs at least 100 instructions")
    rng = random.Random(seed)
    lines = [f"mov r{r}, {r + 1}" for r in range(10)]
    lines += [f"stxdw [r10-{8 * k}], r{k % 10}" for k in range(1, STACK_SLOTS + 1)]  # loads read initialized slots
    last = n - 2  # the final `mov r0, ...; exit` stay reachable
    while len(lines) < last:
        dst, src = rng.randrange(10), rng.randrange(10)
        roll = rng.random()
        if roll < 0.45:
            op = rng.choice(_ALU_OPS)
            operand = f"r{src}" if rng.random() < 0.5 else str(rng.randrange(-1000, 1000))
            lines.append(f"{op} r{dst}, {operand}")
        elif roll < 0.55:
            op = rng.choice(_SHIFT_OPS)
            lines.append(f"{op} r{dst}, {rng.randrange(32 if op.endswith('32') else 64)}")
        elif roll < 0.70:
            lines.append(f"stxdw [r10-{8 * rng.randrange(1, STACK_SLOTS + 1)}], r{src}")
        elif roll < 0.85:
            lines.append(f"ldxdw r{dst}, [r10-{8 * rng.randrange(1, STACK_SLOTS + 1)}]")
        else:
            skip = min(rng.randrange(1, 9), last - len(lines) - 1)
            lines.append(f"{rng.choice(_CONDITIONS)} r{dst}, {rng.randrange(256)}, +{skip}")
    lines += ["mov r0, r3", "exit"]
    return "\n".join(lines)


def compile_speed(code: bytes, quick: bool, progress: Progress) -> dict[str, Any]:
    """Median time of ``jit_compile`` for ``code``, with the encoding cache already warm."""
    n = len(code) // 8
    # A small compile takes a fraction of a millisecond: five samples of it are mostly noise.
    repeats = 1 if quick else 5 if n > 10_000 else 51
    vms = [VM(code, verify=False, allow_loops=False) for _ in range(repeats + 1)]
    for vm in vms:
        vm.check()  # structural checks out of the timing: the figure is the JIT's alone
    out: dict[str, Any] = {"insns": n}
    progress.step("compile: warm-up")
    error = _try_jit(vms[0])  # warms the encoding cache (and every import the JIT makes)
    if error:
        out["error"] = error
    else:
        pending = iter(vms[1:])
        ns = median_ns(lambda: next(pending).jit_compile(), repeats)
        out["ns"] = ns
        out["insns_per_s"] = n * 1e9 / ns
    for vm in vms:
        vm.close()
    return out


# The child runs this; its perf_counter and the parent's read the same CLOCK_MONOTONIC, so the parent
# can subtract the instant it spawned the child from the child's readings.
_FRESH_SCRIPT = """
import json, sys, time
t_start = time.perf_counter_ns()
code = sys.stdin.buffer.read()
from jitbpf.vm import VM
t_import = time.perf_counter_ns()
vm = VM(code, verify=False)
vm.check()
t_vm = time.perf_counter_ns()
vm.jit_compile()
t_compiled = time.perf_counter_ns()
result = vm.execute_jit()
print(json.dumps({"start": t_start, "import": t_import, "vm": t_vm, "compiled": t_compiled, "result": result}))
"""


def fresh_process_compile(code: bytes, progress: Progress) -> dict[str, Any]:
    """The first compile in a new Python process, from the spawn to the end of ``jit_compile``.

    That includes the interpreter's start-up and importing jitbpf; the encodings come from the cache
    on disk an earlier process saved (else PeachPy is imported and they are made afresh).
    """
    progress.step("compile: fresh process")
    n = len(code) // 8
    spawned = time.perf_counter_ns()
    proc = subprocess.run([sys.executable, "-c", _FRESH_SCRIPT], input=code, capture_output=True,
                          cwd=REPO_ROOT, timeout=600)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        return {"insns": n, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
    t = json.loads(proc.stdout)
    return {
        "insns": n,
        "ns": t["compiled"] - spawned,  # the figure the target is about
        "startup_ns": t["start"] - spawned,
        "import_ns": t["import"] - t["start"],
        "vm_ns": t["vm"] - t["import"],
        "compile_ns": t["compiled"] - t["vm"],
    }


# --- the verifier's own benchmark ------------------------------------------------------------------


def verifier_figures(quick: bool) -> dict[str, Any] | None:
    """``benchmarks.bench_verifier.run()``, when the verifier's benchmark exists (it has its own author)."""
    try:
        module = importlib.import_module("benchmarks.bench_verifier")
    except ModuleNotFoundError as exc:
        if exc.name == "benchmarks.bench_verifier":
            return None
        return {"error": f"{type(exc).__name__}: {exc}"}
    run: Callable[..., dict[str, Any]] = module.run
    params = inspect.signature(run).parameters
    kwargs: dict[str, Any] = {}
    if "quick" in params:
        kwargs["quick"] = quick
    elif quick:  # its full run takes seconds: too long for a smoke run
        return {"skipped": "with --quick (its run() takes no quick flag)"}
    try:
        return dict(run(**kwargs))
    except Exception as exc:  # another component's failure is reported, not fatal here
        return {"error": f"{type(exc).__name__}: {exc}"}


# --- batch execution ---------------------------------------------------------------------------------

RECORD_SIZE = 128  # bytes per fixed-size record (frames truncated or zero-padded to it)


def filter_records(count: int) -> bytearray:
    """``count`` records of the packet mix, back to back, each truncated or padded to RECORD_SIZE."""
    frames = [p.frame[:RECORD_SIZE].ljust(RECORD_SIZE, b"\0") for p in packet_mix()]
    return bytearray(b"".join(frames[i % len(frames)] for i in range(count)))


def batch_figures(ctx: Context, quick: bool, progress: Progress) -> dict[str, Any]:
    """The packet filter over many inputs in one call: execute_records (fixed-size records, in place)
    against C's loop over the same records, execute_batch over a list of frames, one execute_jit per
    frame; then a compute-bound batch (FNV-1a of each record) split over 1..cores threads (the GIL
    is released in native code, per-CPU ids per thread)."""
    count = 2_000  # records that stay in cache, so that the figure is the per-input cost, not DRAM's
    repeats = 5 if quick else 15
    reps = 20 if quick else 200  # calls per sample
    records = filter_records(count)
    frames = [bytearray(p.frame) for p in packet_mix()] * (count // 8)
    lib = ctx.native
    out: dict[str, Any] = {"records": count, "record_size": RECORD_SIZE}
    vm = VM(assemble(FILTER_SOURCE), budget=BUDGET)
    hasher = VM(assemble(fnv1a_source(1)), budget=BUDGET, verify=False, allow_loops=True)
    try:
        vm.jit_compile()
        hasher.jit_compile()
        progress.step("batch: checking")
        c_results = lib.ffi.new("uint64_t[]", count)
        c_base = lib.pointer(records)
        accepted = lib.lib.bench_filter_records(c_base, RECORD_SIZE, count, c_results)
        jit_results = list(vm.execute_records(records, RECORD_SIZE))
        out["agree"] = (jit_results == list(lib.ffi.unpack(c_results, count)) and sum(jit_results) == accepted
                        and list(vm.execute_batch(frames[:64])) == [vm.execute(f) for f in frames[:64]])

        def per_input(fn: Callable[[], Any], n: int, calls: int = reps) -> float:
            return median_call_ns(fn, calls, repeats) / n

        progress.step("batch: timing")
        out["native_ns"] = per_input(lambda: lib.lib.bench_filter_records(c_base, RECORD_SIZE, count, c_results),
                                     count)
        out["records_ns"] = per_input(lambda: vm.execute_records(records, RECORD_SIZE), count)
        out["list_ns"] = per_input(lambda: vm.execute_batch(frames), len(frames), max(1, reps // 10))
        out["call_ns"] = per_input(lambda: [vm.execute_jit(f) for f in frames], len(frames), max(1, reps // 20))
        out["overhead_ns"] = out["records_ns"] - out["native_ns"]
        big = filter_records(20_000 if quick else 200_000)
        cores = os.cpu_count() or 1
        scaling: dict[str, float] = {}
        for threads in sorted({1, 2, cores}):
            if threads <= cores:
                run = functools.partial(hasher.execute_records, big, RECORD_SIZE, threads=threads)
                scaling[str(threads)] = per_input(run, len(big) // RECORD_SIZE, 1)
        out["threads_ns"] = scaling
        out["speedup"] = {t: scaling["1"] / ns for t, ns in scaling.items()}
    except Exception as exc:  # a JIT missing or failing here is reported in the table, not fatal
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        vm.close()
        hasher.close()
    return out


# --- what the verifier's proofs save -----------------------------------------------------------

SCAN_BYTES = 1024  # bytes of the map value the program reads, one at a time

SCAN_SOURCE = f"""
    stw [r10-4], 0
    lddw r1, map:BUF
    mov r2, r10
    add r2, -4
    call 1                  ; bpf_map_lookup_elem(&BUF, &0)
    jeq r0, 0, out
    mov r6, 0               ; sum
    mov r7, 0               ; index
loop:
    mov r3, r0
    add r3, r7
    ldxb r4, [r3]           ; proven in bounds: r7 < {SCAN_BYTES} on every path the verifier walks
    add r6, r4
    add r7, 1
    jlt r7, {SCAN_BYTES}, loop
    mov r0, r6
out:
    exit
"""


def proof_figures(quick: bool, progress: Progress) -> dict[str, Any]:
    """A verified program summing a map value byte by byte, JIT-compiled with the verifier's
    proofs (its loads unchecked but confined to the sandbox), without them (each load checked
    against every region), and with the proofs trusted outright (loads neither checked nor
    confined: what a wrong proof could turn into a host access) to show what confinement costs."""
    from jitbpf.jit import JitProgram
    from jitbpf.linux.maps import Array

    buf = Array(value_size=SCAN_BYTES, max_entries=1, name="BUF")
    buf.set(0, bytes(i & 0xFF for i in range(SCAN_BYTES)))
    out: dict[str, Any] = {"bytes": SCAN_BYTES}
    vms = []
    try:
        progress.step("proofs: timing")
        expected = sum(i & 0xFF for i in range(SCAN_BYTES))
        contenders = []
        for key, elide in (("proven_ns", True), ("checked_ns", False), ("unconfined_ns", True)):
            vm = VM(assemble(SCAN_SOURCE, maps={"BUF": 1}), allow_loops=True, budget=BUDGET, elide_checks=elide)
            vms.append(vm)
            vm.add_map(buf, 1)
            vm.use_standard_helpers()
            if key == "unconfined_ns":
                vm.check()
                vm._jit = JitProgram(vm.flow, resolve_lddw=vm.resolve_lddw, helpers=vm.helpers,
                                     proven=vm._proven, state=vm._state, budget=vm.budget,
                                     runner=vm.execute_jit_regions, verified=True, confine=False)
            vm.jit_compile()
            if vm.execute_jit() != expected or vm.execute() != expected:
                out["agree"] = False
            contenders.append(Contender(key, vm.execute_jit, [()], SCAN_BYTES))
        # In turn, batch by batch, so that the machine's drift (clock, load) affects all three alike.
        measure(contenders, Plan.for_mode(quick))
        out.update({c.name: c.median for c in contenders})
        out.setdefault("agree", True)
        out["speedup"] = out["checked_ns"] / out["proven_ns"]
        out["containment_cost"] = out["proven_ns"] / out["unconfined_ns"] - 1
    except Exception as exc:  # reported in the table, not fatal
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for vm in vms:
            vm.close()
    return out


# --- start-up: what a new process pays before its first result --------------------------------------

STARTUP_PROGRAM = "b7 00 00 00 2a 00 00 00 95 00 00 00 00 00 00 00\n"  # mov r0, 42; exit, as the runner sends it


def _startup_env(cache: Path) -> dict[str, str]:
    """The environment of an installed package: bytecode cached (outside the tree, in ``cache``),
    as pip's install compiles it; where the caller forbids caching every start would compile
    jitbpf from source, which no user's installation does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def _process_ns(args: Sequence[str], env: dict[str, str], repeats: int, stdin: str = "") -> float:
    """Wall time of a new process running ``args``, from the spawn to its exit: the fastest of
    ``repeats`` runs after a warm-up (other processes on the machine only ever add to it)."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter_ns()
        proc = subprocess.run(list(args), input=stdin, capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                              timeout=120, check=False)
        elapsed = time.perf_counter_ns() - start
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
            raise RuntimeError(f"{' '.join(args)}: {lines[-1]}")
        if i:
            times.append(elapsed)
    return float(min(times))


_IMPORT_TIMER = ("import time; t = time.perf_counter_ns(); import jitbpf; "
                 "print(time.perf_counter_ns() - t)")


def _import_ns(env: dict[str, str], repeats: int) -> float:
    """``import jitbpf`` timed inside new processes (a difference of two process times can come
    out negative on a busy machine): the fastest of ``repeats`` after a warm-up."""
    times = []
    for i in range(repeats + 1):
        proc = subprocess.run([sys.executable, "-c", _IMPORT_TIMER], capture_output=True, text=True, env=env,
                              cwd=REPO_ROOT, timeout=120, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
            raise RuntimeError(f"import jitbpf: {lines[-1]}")
        if i:
            times.append(int(proc.stdout.split()[-1]))
    return float(min(times))


def startup_figures(quick: bool, progress: Progress) -> dict[str, Any]:
    """``import jitbpf`` beyond a bare interpreter's start, and whole ``jitbpf conformance-plugin``
    runs (one per test in the public conformance runner) in both engines."""
    progress.step("start-up: import and plugin")
    repeats = 3 if quick else 15
    script = Path(sys.executable).with_name("jitbpf")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "jitbpf"]
    with tempfile.TemporaryDirectory(prefix="jitbpf-bench-pyc-") as cache:
        env = _startup_env(Path(cache))
        try:
            bare = _process_ns([sys.executable, "-c", "pass"], env, repeats)
            imported = _import_ns(env, repeats)
            plugin = {engine: _process_ns([*command, "conformance-plugin", f"--{engine}"], env, repeats,
                                          STARTUP_PROGRAM) for engine in ("interp", "jit")}
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
    return {"python_ns": bare, "import_ns": imported, "plugin_ns": plugin, "repeats": repeats}


# --- what users meet first: per-packet runs, Python helpers, small compiles --------------------------

HELPER_CALLS = 1_000  # Python helper calls per run
HELPER_ID = 77
HELPER_SOURCE = f"""
    mov r6, {HELPER_CALLS}
    mov r7, 0
loop:
    mov r1, r6
    call {HELPER_ID}            ; a helper written in Python
    add r7, r0
    sub r6, 1
    jne r6, 0, loop
    mov r0, r7
    exit
"""
XDP_PASS_SOURCE = "mov r0, 2\nexit"  # the per-run floor: a program that does nothing
TC_OK_SOURCE = "mov r0, 0\nexit"  # the same for tc (TC_ACT_OK)
FLOOR_SOURCE = "mov r0, 0\nexit"


def _python_helper(r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    return r1 & 1


def helper_figures(quick: bool, progress: Progress) -> dict[str, Any]:
    """A loop calling a Python helper: ns per call from JIT code and from the interpreter (the
    whole loop, divided by the calls; its four other instructions cost the JIT next to nothing)."""
    progress.step("helpers: timing")
    repeats = 5 if quick else 15
    out: dict[str, Any] = {"calls": HELPER_CALLS}
    vm = VM(assemble(HELPER_SOURCE), budget=BUDGET, verify=False, allow_loops=True)
    vm.register_helper(HELPER_ID, _python_helper, name="python_helper")
    try:
        vm.jit_compile()
        expected = sum(i & 1 for i in range(1, HELPER_CALLS + 1))
        out["agree"] = vm.execute() == vm.execute_jit() == expected
        out["jit_ns"] = median_ns(vm.execute_jit, repeats) / HELPER_CALLS
        out["interp_ns"] = median_ns(vm.execute, repeats) / HELPER_CALLS
        out["jit_interp_ratio"] = out["jit_ns"] / out["interp_ns"]
    except Exception as exc:  # reported in the table, not fatal
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        vm.close()
    return out


def packet_run_figures(quick: bool, progress: Progress) -> dict[str, Any]:
    """XDP from Python: ``run_xdp(packet)`` per call, ``run_batch(packets)`` per packet (both with
    the JIT, a program returning XDP_PASS, so that the figures are the runner's cost), ``run_tc``
    per call likewise (the ``__sk_buff`` runners' context: protocol, socket, ...), ``run_pcap``
    per packet over a capture of the same packets (reading the file included); and the
    per-run floor of a batch of fixed-size records (``execute_records``, an empty program)."""
    from jitbpf.linux.programs import ProgType

    progress.step("packet runs: timing")
    repeats = 5 if quick else 15
    calls = 200 if quick else 2_000
    frames = [bytes(p.frame) for p in packet_mix()] * (calls // 8)
    records = filter_records(calls)
    out: dict[str, Any] = {"packets": len(frames)}
    vm = VM(assemble(XDP_PASS_SOURCE), prog_type=ProgType.XDP)
    tc = VM(assemble(TC_OK_SOURCE), prog_type=ProgType.SCHED_CLS)
    floor = VM(assemble(FLOOR_SOURCE))
    try:
        vm.jit_compile()
        tc.jit_compile()
        floor.jit_compile()
        out["agree"] = (vm.run_xdp(frames[0], engine="jit")[0] == 2
                        and list(vm.run_batch(frames, engine="jit").results) == [2] * len(frames)
                        and tc.run_tc(frames[0], engine="jit")[0] == 0)

        def each() -> None:
            for f in frames:
                vm.run_xdp(f, engine="jit")

        def each_tc() -> None:
            for f in frames:
                tc.run_tc(f, engine="jit")

        # Samples of several calls each (a batch of 2,000 runs takes tens of microseconds),
        # after untimed ones: the figures are the steady state's.
        rounds = 1 if quick else 5
        out["run_xdp_ns"] = median_call_ns(each, rounds, repeats, 2) / len(frames)
        out["run_tc_ns"] = median_call_ns(each_tc, rounds, repeats, 2) / len(frames)
        out["run_batch_ns"] = median_call_ns(lambda: vm.run_batch(frames, engine="jit"), 20 * rounds, repeats,
                                             2) / len(frames)
        out["records_floor_ns"] = median_call_ns(lambda: floor.execute_records(records, RECORD_SIZE),
                                                 40 * rounds, repeats, 2) / calls
        with tempfile.TemporaryDirectory(prefix="jitbpf-bench-pcap-") as tmp:
            capture = Path(tmp) / "mix.pcap"
            with capture.open("wb") as f:
                writer = dpkt.pcap.Writer(f)
                for i, frame in enumerate(frames * 10):
                    writer.writepkt(frame, ts=i / 1e6)
            out["pcap_packets"] = len(frames) * 10
            out["run_pcap_ns"] = median_call_ns(lambda: run_pcap(vm, capture, engine="jit", progress=False),
                                                rounds, repeats, 1) / out["pcap_packets"]
            # What bringing the capture into memory costs alone (read from the page cache into a
            # buffer): the part of run_pcap's figure that no runner can take off.
            buffer = bytearray(capture.stat().st_size)

            def read_capture() -> None:
                with capture.open("rb", buffering=0) as f:
                    f.readinto(buffer)

            out["pcap_read_ns"] = median_call_ns(read_capture, rounds, repeats, 1) / out["pcap_packets"]
    except Exception as exc:  # reported in the table, not fatal
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        vm.close()
        tc.close()
        floor.close()
    return out
