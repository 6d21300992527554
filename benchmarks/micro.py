"""Pure-execution microbenchmarks (``benchmarks/micro/``) side by side: jitbpf's JIT, the same C
compiled by gcc -O2, and, where the machine allows, the running kernel's JIT through
``BPF_PROG_TEST_RUN``. The eBPF side is clang's output for the C kernels (no hand-written eBPF),
so every engine runs the same bytecode; each result is checked against the others."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.kernel import open_kernel
from benchmarks.measure import Progress, no_gc
from benchmarks.native import BUILD_DIR, NativeLib, build_into
from jitbpf import VM, load_elf
from jitbpf.errors import VerifierError

MICRO_DIR = Path(__file__).resolve().parent / "micro"
PROGRAMS = ("alu_mix", "branchy", "bytes", "bitcount", "calls")
FRAME = bytes(64)  # the XDP frame the kernel's test run gets (the programs ignore it)
CLANG_FLAGS = ("-target", "bpf", "-O2", "-c")
RECORD = 8  # bytes of each record of the batch runs


def _clang() -> str | None:
    return shutil.which("clang-19") or shutil.which("clang")


def build_object(build_dir: Path = BUILD_DIR) -> Path:
    """clang's object for micro.bpf.c (cached by the sources' hash)."""
    clang = _clang()
    if clang is None:
        raise RuntimeError("clang is needed for the microbenchmarks (apt-get install clang)")
    sources = sorted(MICRO_DIR.glob("*.[ch]"))
    digest = hashlib.sha256(" ".join((clang, *CLANG_FLAGS)).encode())
    for path in sources:
        digest.update(path.name.encode() + path.read_bytes())
    target = build_dir / f"micro-{digest.hexdigest()[:16]}.o"
    if target.exists():
        return target
    build_into(target, lambda out: [clang, *CLANG_FLAGS, str(MICRO_DIR / "micro.bpf.c"), "-o", out],
               "the microbenchmarks")
    return target


def _per_call_ns(fn: Any, calls: int, samples: int) -> float:
    """Median over ``samples`` of the mean time of ``calls`` back-to-back calls of ``fn``."""
    times = []
    with no_gc():
        for _ in range(samples):
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter_ns() - start) / calls)
    return float(statistics.median(times))


def micro_figures(native: NativeLib, quick: bool, progress: Progress) -> dict[str, Any]:
    """Per program: ns per run for each engine, and whether the results agree."""
    out: dict[str, Any] = {"programs": {}}
    try:
        obj = load_elf(str(build_object()))
    except (RuntimeError, OSError) as exc:
        out["error"] = str(exc)
        return out
    kernel = open_kernel()
    out["kernel"] = "BPF_PROG_TEST_RUN" if not isinstance(kernel, str) else f"n/a ({kernel})"
    calls, samples, repeat = (50, 3, 200) if quick else (300, 7, 2000)
    for name in PROGRAMS:
        progress.step(f"micro: {name}")
        code = obj.programs[name].code
        fig: dict[str, Any] = {"insns": len(code) // 8}
        # Verified, as the kernel verifies them (bounded loops allowed); a program jitbpf's
        # verifier rejects runs unverified, every access the JIT cannot place checked.
        vm = VM(code, allow_loops=True)
        try:
            vm.check()
            fig["verified"] = True
        except VerifierError as exc:
            vm.close()
            vm = VM(code, verify=False, allow_loops=True)
            fig["verified"] = False
            fig["rejected"] = str(exc)
        with vm:
            vm.jit_compile()
            results = {"jit": vm.execute_jit() & 0xFFFF_FFFF, "interpreter": vm.execute() & 0xFFFF_FFFF}
            fig["jit_ns"] = _per_call_ns(vm.execute_jit, calls, samples)
            # The kernel's figure is per run of its own repeat loop, without the syscall: the like
            # of that is a batch of runs (one record each, which the programs ignore).
            records = bytearray(RECORD * repeat)
            batch = vm.execute_records(records, RECORD)
            fig["batch_agrees"] = all(r & 0xFFFF_FFFF == results["jit"] for r in batch)
            fig["jit_batch_ns"] = _per_call_ns(partial(vm.execute_records, records, RECORD), 1, samples) / repeat
        c_fn = getattr(native.lib, f"micro_native_{name}")
        results["c"] = int(c_fn())
        fig["c_ns"] = _per_call_ns(c_fn, calls, samples)
        if not isinstance(kernel, str):
            fd = kernel.load(code)
            try:
                retval, _ = kernel.test_run(fd, FRAME, 1)
                results["kernel"] = retval
                fig["kernel_ns"] = statistics.median(kernel.test_run(fd, FRAME, repeat)[1] for _ in range(samples))
            finally:
                os.close(fd)
        fig["results"] = results
        fig["agree"] = len(set(results.values())) == 1 and fig["batch_agrees"]
        out["programs"][name] = fig
    return out
