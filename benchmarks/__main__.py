"""``python -m benchmarks``: a short demo of the VM, then the benchmark suite as one table (``--help``)."""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

from benchmarks import native
from benchmarks.measure import Plan, Progress, machine
from benchmarks.micro import PROGRAMS, micro_figures
from benchmarks.packets import packet_mix
from benchmarks.report import fmt_ns, json_text, render, write_chart, write_json
from benchmarks.suite import (
    BUDGET,
    COMPILE_INSNS,
    COMPILE_INSNS_QUICK,
    COMPILE_INSNS_SMALL,
    batch_figures,
    compile_speed,
    fresh_process_compile,
    helper_figures,
    packet_run_figures,
    proof_figures,
    run_workload,
    startup_figures,
    straight_line_source,
    verifier_figures,
)
from benchmarks.workloads import FILTER_SOURCE, Context, all_workloads
from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from jitbpf.vm import VM

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latest.json"
DEFAULT_CHART = HERE / "results" / "chart.png"  # untracked: the README's chart is replaced on purpose only
STDOUT = "-"  # --json without a path: the figures alone on stdout
DUMP_LINES = 14  # lines of the JIT listing shown by the demo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="small doses and few samples, no fresh-process compile (a smoke run, not figures)")
    default_json = DEFAULT_JSON.relative_to(HERE.parent)
    parser.add_argument("--json", metavar="PATH", nargs="?", const=STDOUT,
                        help=f"write the figures as JSON to PATH; without PATH print them alone on stdout (no demo, "
                             f"no table). Full runs always write {default_json}")
    parser.add_argument("--chart", metavar="PATH.png", type=Path, nargs="?", const=DEFAULT_CHART,
                        help=f"write a bar chart (default path: {DEFAULT_CHART.relative_to(HERE.parent)})")
    parser.add_argument("--only", metavar="KEY[,KEY]", help="run only these workloads (keys as in the JSON)")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo, run only the suite")
    return parser.parse_args(argv)


def demo(out: TextIO) -> None:
    """A program assembled from text, verified, interpreted, JIT-compiled and run again."""
    print("== demo: an Ethernet/IPv4/TCP port-80 filter, from assembly text to x86-64 ==", file=out)
    body = textwrap.dedent(FILTER_SOURCE).strip("\n").splitlines()
    print(textwrap.indent("\n".join([*body[:6], "    ...", *body[-4:]]), "    "), file=out)
    code = assemble(FILTER_SOURCE)
    print(f"assembled: {len(code) // 8} instructions ({len(code)} bytes)", file=out)
    vm = VM(code)
    try:
        vm.check()
        print("verified: accepted", file=out)
    except (VerifierError, ImportError) as exc:
        print(f"verified: not available or rejected ({type(exc).__name__}: {exc}); running with verify=False", file=out)
        vm = VM(code, verify=False)
    frames = [p for p in packet_mix() if p.name in ("HTTP GET, full-size frame", "TLS to :443", "DNS query")]
    with vm:
        for p in frames:
            print(f"interpreter: {p.name:<26} ({len(p.frame):4d} bytes) -> {vm.execute(bytearray(p.frame))}", file=out)
        start = time.perf_counter_ns()
        try:
            vm.jit_compile()
        except Exception as exc:  # the demo goes on to the suite without a JIT
            print(f"JIT: n/a ({type(exc).__name__}: {exc})", file=out)
            print(file=out)
            return
        print(f"JIT: compiled in {fmt_ns(time.perf_counter_ns() - start)}", file=out)
        for p in frames:
            print(f"JIT:         {p.name:<26} ({len(p.frame):4d} bytes) -> {vm.execute_jit(bytearray(p.frame))}",
                  file=out)
        dump = vm.jit_dump().splitlines()
        # Skip the entry stubs and prologue: the point is to see eBPF instructions become x86-64.
        first = next((i for i, ln in enumerate(dump) if ln.strip().startswith("0:")), 0)
        print(f"jit_dump(), lines {first + 1}-{min(first + DUMP_LINES, len(dump))} of {len(dump)}:", file=out)
        for ln in dump[first:first + DUMP_LINES]:
            print("    " + ln, file=out)
    print(file=out)


def run_suite(quick: bool, only: set[str] | None, out: TextIO) -> dict[str, Any]:
    """Every benchmark, in one process; the figures as a JSON-ready dict."""
    plan = Plan.for_mode(quick)
    lib = native.load()
    ctx = Context(lib)
    work = [w for w in all_workloads(ctx) if only is None or w.key in only]
    contenders = 3
    progress = Progress(sum(2 + plan.samples * contenders for _ in work) + (9 if quick else 10) + len(PROGRAMS))
    print(f"running {len(work)} workloads{' (--quick)' if quick else ''}...", file=out, flush=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "plan": {"batch_ns": plan.batch_ns, "samples": plan.samples, "warmup": plan.warmup},
        "budget": BUDGET,
        "native": {"compiler": lib.compiler, "cflags": list(native.CFLAGS)},
        "workloads": {},
    }
    try:
        for w in work:
            results["workloads"][w.key] = run_workload(ctx, w, quick, plan, progress)
        code = assemble(straight_line_source(COMPILE_INSNS_QUICK if quick else COMPILE_INSNS))
        results["compile"] = compile_speed(code, quick, progress)
        results["compile_small"] = compile_speed(assemble(straight_line_source(COMPILE_INSNS_SMALL)), quick, progress)
        results["fresh_compile"] = None if quick else fresh_process_compile(code, progress)
        results["fresh_compile_small"] = None if quick else fresh_process_compile(
            assemble(straight_line_source(COMPILE_INSNS_SMALL)), progress)
        results["startup"] = startup_figures(quick, progress)
        # The per-call figures below start from a collected heap: what the large compiles left
        # for the collector can make Python-level calls measurably slower until it runs.
        gc.collect()
        results["helpers"] = helper_figures(quick, progress)
        gc.collect()
        results["packet_runs"] = packet_run_figures(quick, progress)
        gc.collect()
        results["batch"] = batch_figures(ctx, quick, progress)
        results["proofs"] = proof_figures(quick, progress)
        results["micro"] = micro_figures(lib, quick, progress)
        results["verifier"] = verifier_figures(quick)
    finally:
        progress.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the demo and the suite; 1 when engines disagree on a result, else 0 (missed targets included)."""
    args = parse_args(argv)
    to_stdout = args.json == STDOUT
    # With the JSON on stdout, the words go to stderr so that the output stays one document.
    out = sys.stderr if to_stdout else sys.stdout
    if not args.no_demo and not to_stdout:
        demo(out)
    only = set(args.only.split(",")) if args.only else None
    results = run_suite(args.quick, only, out)
    if to_stdout:
        sys.stdout.write(json_text(results))
    else:
        print(render(results), file=out)
    json_paths = [Path(args.json)] if args.json not in (None, STDOUT) else []
    if not args.quick and DEFAULT_JSON not in json_paths:
        json_paths.append(DEFAULT_JSON)
    for path in json_paths:
        write_json(results, path)
        print(f"\nfigures written to {path}", file=out)
    if args.chart is not None:
        write_chart(results, args.chart)
        print(f"chart written to {args.chart}", file=out)
    return 1 if any(w.get("agree") is False for w in results["workloads"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
