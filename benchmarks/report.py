"""Presents the figures: the targets they are held to, the text table, the JSON file and the bar chart."""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOP_RATIO = 1.3  # long loops: JIT time / native time
CALL_RATIO = 1.5  # empty program: execute_jit / bare cffi call
INTERP_RATE = 3e6  # interpreter, tight ALU loop: executed instructions per second
COMPILE_RATE = 1e6  # warm compile: eBPF instructions per second
COMPILE_SMALL_NS = 200e3  # warm compile of a 100-instruction program
FRESH_NS = 300e6  # first compile of a 100-instruction program in a fresh process, from the spawn
FRESH_LARGE_NS = 2e9  # the same for the 100,000-instruction program
HELPER_NS = 250.0  # one Python helper call from JIT code
HELPER_RATIO = 1.0  # a program calling a Python helper: JIT time / interpreter time
RUN_XDP_NS = 500.0  # run_xdp(packet) from Python, per call
RUN_BATCH_NS = 30.0  # run_batch(packets), per packet beyond the program (which does nothing here)
FLOOR_NS = 3.0  # batch of records: per-run cost of an empty program
BATCH_OVERHEAD_NS = 10.0  # batch of records: per-input time beyond C's loop over the same records
IMPORT_NS = 100e6  # "import jitbpf", beyond a bare interpreter's start-up
PLUGIN_NS = 150e6  # one whole "jitbpf conformance-plugin" process, per engine
MICRO_KERNEL_RATIO = 0.85  # microbenchmarks: JIT time / the kernel JIT's (geomean)
MICRO_PEER_RATIO = 3.0  # microbenchmarks: no program slower than this against its best peer
VERIFIER_RATIO = 5.0  # verification: jitbpf's time / the kernel's, same program, same run
VERIFIER_LIMIT_S = 10.0  # verification of a program processed up to the kernel's complexity limit


@dataclass(frozen=True)
class Target:
    """A goal the figures are held to; ``met`` is None when the figure could not be measured."""

    key: str  # the row it belongs to: a workload's key, "compile" or "fresh_compile"
    what: str  # the figure
    goal: str  # the goal, as text
    value: float | None  # the measured figure
    met: bool | None

    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "n/a"}[self.met]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "what": self.what, "goal": self.goal, "value": self.value, "met": self.met}


def _target(key: str, what: str, goal: str, value: float | None, ok: Callable[[float], bool]) -> Target:
    return Target(key, what, goal, value, None if value is None else ok(value))


def targets(results: dict[str, Any]) -> list[Target]:
    """Every target of the suite, evaluated on ``results`` (the JSON-ready dict of a run)."""
    w = results["workloads"]
    out = []
    for key in ("bytesum", "fnv1a"):
        if key in w:
            out.append(_target(key, f"{w[key]['title']}: JIT/native", f"<= {LOOP_RATIO}x", w[key]["jit_native_ratio"],
                               lambda v: v <= LOOP_RATIO))
    if "alu" in w:
        rate = w["alu"]["interp"]["insns_per_s"]
        out.append(_target("alu", "interpreter, ALU loop", f">= {INTERP_RATE / 1e6:g} M insn/s", rate,
                           lambda v: v >= INTERP_RATE))
    if "call_overhead" in w:
        out.append(_target("call_overhead", "call overhead: execute_jit/cffi", f"<= {CALL_RATIO}x",
                           w["call_overhead"]["jit_native_ratio"], lambda v: v <= CALL_RATIO))
    comp = results.get("compile") or {}
    out.append(_target("compile", "compile, warm cache", f">= {COMPILE_RATE / 1e3:g} k insn/s", comp.get("insns_per_s"),
                       lambda v: v >= COMPILE_RATE))
    small = results.get("compile_small") or {}
    if small:
        out.append(_target("compile_small", f"compile, warm, {small.get('insns', 0)} insns",
                           f"< {COMPILE_SMALL_NS / 1e3:g} us", small.get("ns"), lambda v: v < COMPILE_SMALL_NS))
    helpers = results.get("helpers") or {}
    if helpers:
        out.append(_target("helper_call", "Python helper call from JIT code", f"<= {HELPER_NS:g} ns",
                           helpers.get("jit_ns"), lambda v: v <= HELPER_NS))
        out.append(_target("helper_ratio", "Python-helper program: JIT/interpreter", f"<= {HELPER_RATIO:g}x",
                           helpers.get("jit_interp_ratio"), lambda v: v <= HELPER_RATIO))
    runs = results.get("packet_runs") or {}
    if runs:
        out.append(_target("run_xdp", "run_xdp(packet) from Python", f"<= {RUN_XDP_NS:g} ns", runs.get("run_xdp_ns"),
                           lambda v: v <= RUN_XDP_NS))
        if "run_tc_ns" in runs:
            out.append(_target("run_tc", "run_tc(packet) from Python", f"<= {RUN_XDP_NS:g} ns", runs["run_tc_ns"],
                               lambda v: v <= RUN_XDP_NS))
        out.append(_target("run_batch", "run_batch(packets), per packet", f"<= {RUN_BATCH_NS:g} ns",
                           runs.get("run_batch_ns"), lambda v: v <= RUN_BATCH_NS))
        if "run_pcap_ns" in runs:
            out.append(_target("run_pcap", "run_pcap(capture), per packet", f"<= {RUN_BATCH_NS:g} ns",
                               runs["run_pcap_ns"], lambda v: v <= RUN_BATCH_NS))
        out.append(_target("floor", "batch of records: per-run floor", f"<= {FLOOR_NS:g} ns",
                           runs.get("records_floor_ns"), lambda v: v <= FLOOR_NS))
    batch = results.get("batch") or {}
    if "overhead_ns" in batch:
        out.append(_target("batch", "batch: per-input overhead", f"<= {BATCH_OVERHEAD_NS:g} ns",
                           batch["overhead_ns"], lambda v: v <= BATCH_OVERHEAD_NS))
    startup = results.get("startup") or {}
    if "import_ns" in startup:
        out.append(_target("import", "import jitbpf", f"< {IMPORT_NS / 1e6:g} ms", startup["import_ns"],
                           lambda v: v < IMPORT_NS))
        for engine, ns in startup["plugin_ns"].items():
            out.append(_target(f"plugin_{engine}", f"conformance-plugin run, {engine}", f"< {PLUGIN_NS / 1e6:g} ms",
                               ns, lambda v: v < PLUGIN_NS))
    fresh = results.get("fresh_compile")
    if fresh is not None:
        out.append(_target("fresh_compile", "first compile, fresh process", f"< {FRESH_LARGE_NS / 1e9:g} s",
                           fresh.get("ns"), lambda v: v < FRESH_LARGE_NS))
    fresh_small = results.get("fresh_compile_small")
    if fresh_small is not None:
        out.append(_target("fresh_compile_small", "first compile of a small program, fresh process",
                           f"<= {FRESH_NS / 1e6:g} ms", fresh_small.get("ns"), lambda v: v <= FRESH_NS))
    out.extend(_verifier_targets(results.get("verifier") or {}))
    out.extend(_micro_targets(results.get("micro") or {}))
    return out


def _micro_ratios(fig: dict[str, Any]) -> tuple[float | None, float]:
    """A microbenchmark's JIT time over the kernel JIT's (runs in a batch against the kernel's
    repeat loop; None without the kernel), and over C's (one call from Python each)."""
    kernel = fig.get("kernel_ns")
    return (fig["jit_batch_ns"] / kernel if kernel else None), fig["jit_ns"] / fig["c_ns"]


def _micro_targets(micro: dict[str, Any]) -> list[Target]:
    programs = micro.get("programs") or {}
    if not programs:
        return []
    ratios = [_micro_ratios(fig) for fig in programs.values()]
    to_kernel = [k for k, _c in ratios if k is not None]
    geomean = statistics.geometric_mean(to_kernel) if len(to_kernel) == len(ratios) else None
    worst = max(max(c, k or 0.0) for k, c in ratios)  # slower than one peer: slower than the best
    return [
        _target("micro_kernel", "microbenchmarks: JIT/kernel JIT (geomean)", f"<= {MICRO_KERNEL_RATIO:g}x", geomean,
                lambda v: v <= MICRO_KERNEL_RATIO),
        _target("micro_peer", "microbenchmarks: slowest against the best peer", f"<= {MICRO_PEER_RATIO:g}x", worst,
                lambda v: v <= MICRO_PEER_RATIO),
    ]


def _verifier_targets(verifier: dict[str, Any]) -> list[Target]:
    out = []
    for key, fig in (verifier.get("programs") or {}).items():
        if key == "limit":
            out.append(_target("verifier_limit", f"verify {fig['title']}", f"< {VERIFIER_LIMIT_S:g} s",
                               None if "error" in fig else fig["seconds"], lambda v: v < VERIFIER_LIMIT_S))
        else:
            out.append(_target(f"verifier_{key}", f"verify {fig['title']}: jitbpf/kernel",
                               f"within {VERIFIER_RATIO:g}x of the kernel", fig.get("kernel_ratio"),
                               lambda v: v <= VERIFIER_RATIO))
    return out


# --- text --------------------------------------------------------------------------------------------


def fmt_ns(ns: float | None) -> str:
    """A duration with three significant digits and a unit that keeps the number readable."""
    if ns is None:
        return "n/a"
    for scale, unit in ((1e9, "s"), (1e6, "ms"), (1e3, "us")):
        if ns >= scale:
            return f"{_sig3(ns / scale)} {unit}"
    return f"{_sig3(ns)} ns"


def fmt_rate(per_s: float | None, what: str = "insn/s") -> str:
    if per_s is None:
        return "n/a"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= scale:
            return f"{_sig3(per_s / scale)} {unit} {what}"
    return f"{_sig3(per_s)} {what}"


def _sig3(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def _ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


COLUMNS = ("benchmark", "unit", "interpreter", "JIT", "native", "JIT/native", "target")


def _engine_cell(fig: dict[str, float] | None, rate: bool) -> str:
    if fig is None:
        return "n/a"
    cell = fmt_ns(fig["ns_per_unit"])
    if rate and "insns_per_s" in fig:
        cell += f"  {fmt_rate(fig['insns_per_s'])}"
    return cell


Row = tuple[str, ...] | str | None  # cells; a str is a line of its own; None draws a rule between sections


def _rows(results: dict[str, Any], goals: list[Target]) -> list[Row]:
    """The table's rows."""
    by_key = {t.key: t for t in goals}

    def verdict(key: str) -> str:
        t = by_key.get(key)
        return "" if t is None else f"{t.goal}: {t.verdict()}"

    rows: list[Row] = []
    for key, w in results["workloads"].items():
        title = w["title"] + ("" if w.get("agree") is not False else " [RESULTS DIFFER]")
        rows.append((title, w["unit"], _engine_cell(w["interp"], True), _engine_cell(w["jit"], True),
                     _engine_cell(w["native"], False), _ratio(w["jit_native_ratio"]), verdict(key)))
    rows.append(None)
    comp = results.get("compile") or {}
    n = comp.get("insns", 0)
    cell = "n/a" if "error" in comp else f"{fmt_ns(comp.get('ns'))}  {fmt_rate(comp.get('insns_per_s'))}"
    rows.append((f"compile, warm cache ({n:,} insns)", "program", "", cell, "", "", verdict("compile")))
    small = results.get("compile_small")
    if small is not None:
        cell = "n/a" if "error" in small else f"{fmt_ns(small.get('ns'))}  {fmt_rate(small.get('insns_per_s'))}"
        rows.append((f"compile, warm cache ({small.get('insns', 0):,} insns)", "program", "", cell, "", "",
                     verdict("compile_small")))
    for key in ("fresh_compile", "fresh_compile_small"):
        fresh = results.get(key)
        if fresh is not None:
            cell = "n/a" if "error" in fresh else fmt_ns(fresh.get("ns"))
            rows.append((f"first compile, fresh process ({fresh['insns']:,} insns)", "program", "", cell, "", "",
                         verdict(key)))
    startup = results.get("startup")
    if startup is not None:
        rows.append(None)
        rows.extend(_startup_rows(startup, verdict))
    helpers = results.get("helpers")
    if helpers is not None:
        rows.append(None)
        rows.extend(_helper_rows(helpers, verdict))
    runs = results.get("packet_runs")
    if runs is not None:
        rows.append(None)
        rows.extend(_packet_run_rows(runs, verdict))
    batch = results.get("batch")
    if batch is not None:
        rows.append(None)
        rows.extend(_batch_rows(batch, verdict("batch")))
    proofs = results.get("proofs")
    if proofs is not None:
        rows.append(None)
        if "error" in proofs:
            rows.append(f"verifier's proofs: n/a ({proofs['error']})")
        else:
            differ = "" if proofs.get("agree") else " [RESULTS DIFFER]"
            rows.append((f"map value scan, proven loads{differ}", "byte", "", fmt_ns(proofs["proven_ns"]), "", "",
                         f"speed-up {proofs['speedup']:.1f}x"))
            rows.append(("map value scan, every load checked", "byte", "", fmt_ns(proofs["checked_ns"]), "", "", ""))
            if "unconfined_ns" in proofs:
                rows.append(("map value scan, proven loads not confined (unsafe)", "byte", "",
                             fmt_ns(proofs["unconfined_ns"]), "", "",
                             f"confinement costs {100 * proofs['containment_cost']:+.1f}%"))
    micro = results.get("micro")
    if micro is not None:
        rows.append(None)
        rows.extend(_micro_rows(micro, verdict))
    verifier = results.get("verifier")
    if verifier is not None:
        rows.append(None)
        rows.extend(_verifier_rows(verifier, verdict))
    return rows


def _verifier_rows(verifier: dict[str, Any], verdict: Callable[[str], str]) -> list[Row]:
    """jitbpf's verification time in the JIT column, the kernel's in the native one."""
    programs = verifier.get("programs")
    if programs is None:  # an error, or a run that was skipped
        return ["verifier (benchmarks/bench_verifier.py): "
                + "; ".join(f"{key} {_value(key, value)}" for key, value in _flatten(verifier))]
    rows: list[Row] = [f"verifier (benchmarks/bench_verifier.py): verification time, jitbpf | kernel "
                       f"(kernel: {verifier.get('kernel')})"]
    for key, fig in programs.items():
        title = f"verify {fig['title']} ({fig['instructions']:,} insns, {fig.get('processed', 0):,} processed)"
        if "error" in fig:
            title += f" [REJECTED: {fig['error'][:60]}]"
        kernel = fig.get("kernel_seconds")
        rows.append((title, "program", "", fmt_ns(fig["seconds"] * 1e9),
                     "n/a" if kernel is None else fmt_ns(kernel * 1e9), _ratio(fig.get("kernel_ratio")),
                     verdict(f"verifier_{key}")))
    return rows


def _micro_rows(micro: dict[str, Any], verdict: Callable[[str], str]) -> list[Row]:
    """clang's bytecode of the same C in each engine; the kernel's JIT where it can test-run."""
    if "error" in micro:
        return [f"microbenchmarks: n/a ({micro['error']})"]
    rows: list[Row] = []
    to_kernel, to_c = [], []
    for name, fig in micro["programs"].items():
        title = f"micro {name} ({fig['insns']} insns{'' if fig.get('verified') else ', unverified'})"
        title += "" if fig.get("agree") else " [RESULTS DIFFER]"
        kernel_ratio, c_ratio = _micro_ratios(fig)
        note = f"in a batch {fmt_ns(fig['jit_batch_ns'])}"
        if kernel_ratio is not None:
            to_kernel.append(kernel_ratio)
            note += f"; kernel JIT (repeat) {fmt_ns(fig['kernel_ns'])}: {_ratio(kernel_ratio)}"
        to_c.append(c_ratio)
        rows.append((title, "run", "", fmt_ns(fig["jit_ns"]), fmt_ns(fig["c_ns"]), _ratio(to_c[-1]), note))
    summary = f"microbenchmarks, geomean: JIT/C {_ratio(statistics.geometric_mean(to_c))}"
    if to_kernel:
        summary += f", JIT/kernel JIT {_ratio(statistics.geometric_mean(to_kernel))} ({verdict('micro_kernel')})"
    else:
        summary += f"; kernel JIT {micro.get('kernel', 'n/a')}"
    rows.append(summary + f"; slowest against its best peer: {verdict('micro_peer')}")
    return rows


def _startup_rows(startup: dict[str, Any], verdict: Callable[[str], str]) -> list[Row]:
    """A new process: importing the package, and one conformance-plugin run per engine."""
    if "error" in startup:
        return [f"start-up: n/a ({startup['error']})"]
    plugin = startup["plugin_ns"]
    return [
        ("import jitbpf (beyond Python's own start-up)", "process", "", fmt_ns(startup["import_ns"]), "", "",
         verdict("import")),
        ("conformance-plugin run, whole process", "process", fmt_ns(plugin["interp"]), fmt_ns(plugin["jit"]), "",
         "", f"{verdict('plugin_interp')}; JIT {verdict('plugin_jit').rpartition(': ')[2]}"),
    ]


def _helper_rows(helpers: dict[str, Any], verdict: Callable[[str], str]) -> list[Row]:
    """A loop calling a Python helper, per call, in both engines."""
    if "error" in helpers:
        return [f"Python helpers: n/a ({helpers['error']})"]
    differ = "" if helpers.get("agree") else " [RESULTS DIFFER]"
    return [(f"Python helper call ({helpers['calls']:,} per run){differ}", "call", fmt_ns(helpers["interp_ns"]),
             fmt_ns(helpers["jit_ns"]), "", "", f"{verdict('helper_call')}; JIT/interpreter "
             f"{_ratio(helpers['jit_interp_ratio'])}: {verdict('helper_ratio').rpartition(': ')[2]}")]


def _packet_run_rows(runs: dict[str, Any], verdict: Callable[[str], str]) -> list[Row]:
    """XDP runs from Python, one by one and in a batch, and the per-run floor of a batch."""
    if "error" in runs:
        return [f"packet runs: n/a ({runs['error']})"]
    differ = "" if runs.get("agree") else " [RESULTS DIFFER]"
    return [
        (f"run_xdp(packet), XDP_PASS program{differ}", "call", "", fmt_ns(runs["run_xdp_ns"]), "", "",
         verdict("run_xdp")),
        *([("run_tc(packet), TC_ACT_OK program", "call", "", fmt_ns(runs["run_tc_ns"]), "", "",
             verdict("run_tc"))] if "run_tc_ns" in runs else []),
        (f"run_batch({runs['packets']:,} packets), XDP_PASS program", "packet", "", fmt_ns(runs["run_batch_ns"]), "",
         "", verdict("run_batch")),
        *([(f"run_pcap({runs['pcap_packets']:,} packets), XDP_PASS program", "packet", "",
             fmt_ns(runs["run_pcap_ns"]), fmt_ns(runs.get("pcap_read_ns")),
             f"{runs['run_pcap_ns'] / runs['pcap_read_ns']:.2f}x" if runs.get("pcap_read_ns") else "",
             verdict("run_pcap"))] if "run_pcap_ns" in runs else []),
        ("execute_records, empty program (per-run floor)", "input", "", fmt_ns(runs["records_floor_ns"]), "", "",
         verdict("floor")),
    ]


def _batch_rows(batch: dict[str, Any], verdict: str) -> list[Row]:
    """The packet filter over many inputs: records vs C's loop, a list of frames, one call per
    frame, and the records split over threads."""
    if "error" in batch:
        return [f"batch execution: n/a ({batch['error']})"]
    n, size = batch["records"], batch["record_size"]
    differ = "" if batch.get("agree") else " [RESULTS DIFFER]"
    rows: list[Row] = [
        (f"batch: filter, {n:,} records of {size} B{differ}", "input", "", fmt_ns(batch["records_ns"]),
         fmt_ns(batch["native_ns"]), _ratio(batch["records_ns"] / batch["native_ns"]),
         f"{verdict} (+{batch['overhead_ns']:.1f} ns)"),
        ("batch: filter, list of frames (copied)", "input", "", fmt_ns(batch["list_ns"]), "", "", ""),
        ("one execute_jit(frame) per input", "input", "", fmt_ns(batch["call_ns"]), "", "", ""),
    ]
    for threads, ns in batch["threads_ns"].items():
        rows.append((f"batch: FNV-1a per record, {threads} thread{'s' if threads != '1' else ''}", "input", "",
                     fmt_ns(ns), "", "", f"speed-up {batch['speedup'][threads]:.2f}x"))
    return rows


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in d.items():
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _value(key: str, value: Any) -> str:
    """A verifier figure; durations and rates are recognized by their names (``_ns``, ``seconds``, ``per_s``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    name = key.rsplit(".", 1)[-1]
    if name == "ns" or name.endswith("_ns"):
        return fmt_ns(float(value))
    if name in ("s", "seconds") or name.endswith("_seconds"):
        return fmt_ns(float(value) * 1e9)
    if name.endswith("per_s") or name.endswith("per_second"):
        return fmt_rate(float(value), "/s")
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def render(results: dict[str, Any]) -> str:
    """The header, one table with every figure, and the footnotes that say how they were taken."""
    goals = targets(results)
    m = results["machine"]
    lines = [
        f"jitbpf benchmarks  commit {m['commit']}  {m['date']}" + ("  (--quick)" if results["quick"] else ""),
        f"machine: {m['cpu']}, {m['cores']} cores; {m['python']}; {m['platform']}; {results['native']['compiler']}",
        "",
    ]
    rows = _rows(results, goals)
    widths = [max(len(c), *(len(r[i]) for r in rows if isinstance(r, tuple))) for i, c in enumerate(COLUMNS)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(wd) for c, wd in zip(cells, widths, strict=True)).rstrip()

    lines.append(line(COLUMNS))
    rule = "  ".join("-" * wd for wd in widths)
    lines.append(rule)
    for row in rows:
        lines.append(rule if row is None else row if isinstance(row, str) else line(row))
    lines.append("")
    lines.extend(footnotes(results))
    return "\n".join(lines)


def footnotes(results: dict[str, Any]) -> list[str]:
    plan = results["plan"]
    work = results["workloads"]
    scales = ", ".join(f"{w['title']} {w['units_per_call']['interp']:,} vs {w['units_per_call']['jit']:,}"
                       for w in work.values() if w["units_per_call"]["interp"] != w["units_per_call"]["jit"])
    checks: dict[str, list[str]] = {}
    for w in work.values():
        checks.setdefault(w["verified"], []).append(w["title"])
    notes = [
        f"Times are per unit of work: the median of {plan['samples']} batches of at least "
        f"{fmt_ns(plan['batch_ns'])}, after warm-up, the engines' batches taken in turn in one process.",
        "Interpreter and JIT run the same program, with the loop count an immediate; units per call "
        f"(interpreter vs JIT and C): {scales}.",
        f"JIT: vm.execute_jit(bytearray); native: gcc -O2 -shared -fPIC, a bare cffi call (ABI mode) with a prebuilt "
        f"pointer; budget {results['budget']:,} instructions per call; insn/s counts executed eBPF instructions.",
    ]
    notes += [f"{how}: {', '.join(titles)}." for how, titles in checks.items()]
    differ = [w["title"] for w in work.values() if w.get("agree") is False]
    notes.append("Results differ between engines: " + ", ".join(differ) + "!" if differ
                 else "Every workload returned the same r0 in the interpreter, the JIT and C.")
    jit_errors: dict[str, list[str]] = {}
    for key, w in work.items():
        if w.get("jit_error"):
            jit_errors.setdefault(w["jit_error"], []).append(key)
    for what in ("compile", "fresh_compile"):
        if "error" in (results.get(what) or {}):
            jit_errors.setdefault(results[what]["error"], []).append(what)
    notes += [f"JIT n/a for {', '.join(keys)}: {error}" for error, keys in jit_errors.items()]
    fresh = results.get("fresh_compile_small") or results.get("fresh_compile")
    if fresh is not None and "error" not in fresh:
        phases = (f"Python start-up {fmt_ns(fresh['startup_ns'])}, import jitbpf {fmt_ns(fresh['import_ns'])}, "
                  f"VM {fmt_ns(fresh['vm_ns'])}, jit_compile {fmt_ns(fresh['compile_ns'])}")
        notes.append(f"First compile in a fresh process ({fresh['insns']:,} insns), from the spawn: {phases} "
                     "(encodings read from the cache on disk that an earlier process saved; without it PeachPy is "
                     "imported and they are made on first use).")
    runs = results.get("packet_runs") or {}
    if runs.get("pcap_read_ns"):
        notes.append("run_pcap's native column is reading the capture alone (from the page cache into a buffer, "
                     f"{fmt_ns(runs['pcap_read_ns'])} a packet): what any runner pays before a packet runs, beyond "
                     "the target for a batch in memory.")
    startup = results.get("startup")
    if startup is not None and "error" not in startup:
        notes.append(f"Start-up: the fastest of {startup['repeats']} new processes with bytecode cached, as an "
                     f"installed package has it (Python itself starts in {fmt_ns(startup['python_ns'])}); the "
                     "plugin runs a two-instruction program given as hex on stdin, as the conformance runner does "
                     "for each test.")
    return [textwrap.fill(n, width=120, initial_indent="* ", subsequent_indent="  ") for n in notes]


# --- files -------------------------------------------------------------------------------------------


def json_text(results: dict[str, Any]) -> str:
    """The figures and the targets they are held to, as one JSON document."""
    doc = dict(results, targets=[t.as_dict() for t in targets(results)])
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(results))


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Two panels: time per unit of each engine (log scale), and the JIT's time relative to C."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    work = [w for w in results["workloads"].values() if w["native"] is not None]
    labels = [f"{w['title']}\n(per {w['unit']})" for w in work]
    engines = (("interp", "interpreter", "#c44e52"), ("jit", "JIT", "#4c72b0"), ("native", "native C", "#55a868"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.75 * len(work) + 2),
                                      gridspec_kw={"width_ratios": [3, 2]})
    height = 0.26
    for i, (key, name, color) in enumerate(engines):
        ys = [j + (i - 1) * height for j in range(len(work))]
        xs = [w[key]["ns_per_unit"] if w[key] else 0 for w in work]
        left.barh(ys, xs, height=height, label=name, color=color)
    left.set_xscale("log")
    left.set_yticks(range(len(work)), labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("ns per unit (log scale, shorter is faster)")
    left.legend(loc="lower right", fontsize=8)
    ratios = [w["jit_native_ratio"] or 0 for w in work]
    bars = right.barh(range(len(work)), ratios, color="#4c72b0")
    right.bar_label(bars, labels=[f"{r:.2f}x" if r else "n/a" for r in ratios], fontsize=7, padding=2)
    right.axvline(1.0, color="#55a868", linestyle="-", linewidth=1)
    right.axvline(LOOP_RATIO, color="#c44e52", linestyle="--", linewidth=1, label=f"{LOOP_RATIO}x (loop target)")
    right.set_xscale("log")
    right.set_yticks(range(len(work)), [""] * len(work))
    right.invert_yaxis()
    right.set_xlabel("JIT time / native C time (log scale)")
    right.legend(loc="lower right", fontsize=8)
    m = results["machine"]
    fig.suptitle(f"jitbpf: interpreter, JIT and native C ({m['cpu']}, {m['python']}, commit {m['commit']})",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
