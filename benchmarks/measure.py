"""Timing discipline (warm-up, calibrated batches, interleaved samples, medians), progress bar, machine facts."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_BATCH = 1 << 20  # calls per batch at most: the prepared argument list must stay small


@dataclass
class Contender:
    """One way of running a workload: ``fn(*args)`` is one call; ``units`` units of work per call.

    The args of successive calls cycle through ``args`` (several inputs, such as a mix of packets).
    """

    name: str  # "interp", "jit" or "native"
    fn: Callable[..., Any]  # the raw callable, timed without any wrapper of ours around it
    args: Sequence[tuple[Any, ...]]  # argument tuples, used in turn
    units: int = 1  # units of work one call does
    samples: list[float] = field(default_factory=list)  # ns per unit, one per batch
    batch: int = 1  # calls per timed batch (calibrated)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass(frozen=True)
class Plan:
    """How hard to measure: the wall time a batch should last, batches per contender, warm-up calls."""

    batch_ns: int  # a batch lasts at least this long (amortizes the timer and loop)
    samples: int  # batches per contender; the median is reported
    warmup: int  # untimed calls before calibration

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        return cls(batch_ns=300_000, samples=3, warmup=1) if quick else cls(batch_ns=5_000_000, samples=15, warmup=3)


@contextmanager
def no_gc() -> Iterator[None]:
    """Keep the cyclic collector from firing inside a timed batch (as timeit does)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _time_batch(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> int:
    """Nanoseconds for the calls; the loop is as lean as Python allows, the same for every contender."""
    clock = time.perf_counter_ns
    start = clock()
    for args in calls:
        fn(*args)
    return clock() - start


def _calls(c: Contender, n: int) -> list[tuple[Any, ...]]:
    return [c.args[i % len(c.args)] for i in range(n)]


def calibrate(c: Contender, plan: Plan) -> None:
    """Warm up, then pick the batch size that makes one batch last about ``plan.batch_ns``."""
    for i in range(plan.warmup):
        c.fn(*c.args[i % len(c.args)])
    n = max(1, len(c.args))
    while True:
        elapsed = _time_batch(c.fn, _calls(c, n))
        if elapsed >= plan.batch_ns or n >= MAX_BATCH:
            break
        # Aim a little past the target so that the next try is usually the last one.
        n = min(MAX_BATCH, max(n * 2, int(n * 1.2 * plan.batch_ns / max(elapsed, 1))))
        n = -(-n // len(c.args)) * len(c.args)  # whole rounds of the input mix
    c.batch = n


def measure(contenders: Sequence[Contender], plan: Plan, tick: Callable[[], None] | None = None) -> None:
    """Fill each contender's ``samples`` with ns/unit, taking their batches in turn (round-robin), so
    that a slow drift of the machine (frequency, other load) affects all of them alike."""
    for c in contenders:
        calibrate(c, plan)
    batches = {id(c): _calls(c, c.batch) for c in contenders}
    with no_gc():
        for _ in range(plan.samples):
            for c in contenders:
                elapsed = _time_batch(c.fn, batches[id(c)])
                c.samples.append(elapsed / (c.batch * c.units))
                if tick is not None:
                    tick()


def median_ns(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``repeats`` single calls of a long operation (such as a compile),
    after ``warmup`` untimed calls (for operations whose first calls fill caches)."""
    times = []
    with no_gc():
        for _ in range(warmup):
            fn()
        for _ in range(repeats):
            start = time.perf_counter_ns()
            fn()
            times.append(time.perf_counter_ns() - start)
    return float(statistics.median(times))


def median_call_ns(fn: Callable[[], Any], calls: int, repeats: int, warmup: int = 1) -> float:
    """Wall time per call of a short operation: the median of ``repeats`` samples of ``calls``
    calls back to back (each sample long enough that a tick or an interrupt does not decide it),
    after ``warmup`` untimed samples."""
    def many() -> None:
        for _ in range(calls):
            fn()
    return median_ns(many, repeats, warmup) / calls


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.total = max(total, 1)
        self.done = 0
        self.width = width
        self.label = ""

    def step(self, label: str | None = None, n: int = 1) -> None:
        if label is not None:
            self.label = label
        self.done = min(self.done + n, self.total)
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {100 * self.done // self.total:3d}% {self.label[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (self.width + 48) + "\r")
            self.stream.flush()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The checked-out commit, with "+dirty" when the working tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, Python, OS, compiler, commit and date."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
