"""Smoke test of the benchmark suite: a --quick run reports every figure, and the engines agree on every result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import DEFAULT_CHART, main, parse_args
from benchmarks.native import load
from benchmarks.packets import packet_mix
from benchmarks.suite import insns_per_unit, load_vm, straight_line_source
from benchmarks.workloads import BUFFER_BYTES, BYTESUM, FILTER, Context, all_workloads, payload
from jitbpf.asm import assemble
from jitbpf.vm import VM

ENGINES = ("interp", "jit", "native")


def jit_available() -> bool:
    try:
        from jitbpf.jit import JitProgram  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(load())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["--quick", "--json", str(path)]) == 0
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_every_workload_has_figures(quick_run: dict[str, Any], ctx: Context) -> None:
    assert quick_run["machine"]["cpu"] and quick_run["machine"]["commit"]
    engines = ENGINES if jit_available() else ("interp", "native")
    for w in all_workloads(ctx):
        figures = quick_run["workloads"][w.key]
        assert figures["jit_error"] == "" or not jit_available(), figures["jit_error"]
        for engine in engines:
            assert figures[engine]["ns_per_unit"] > 0, (w.key, engine)
        assert figures["interp"]["insns_per_s"] > 0
        if jit_available():
            assert figures["jit_native_ratio"] > 0
    assert {t["key"] for t in quick_run["targets"]} >= {"bytesum", "fnv1a", "alu", "call_overhead", "compile"}
    if not jit_available():
        pytest.skip("jitbpf.jit has no JitProgram yet: JIT figures not checked")


def test_engines_return_the_same_results(quick_run: dict[str, Any], ctx: Context) -> None:
    for w in all_workloads(ctx):
        results = quick_run["workloads"][w.key]["results"]
        assert results["interp"] == results["native"], w.key
        if jit_available():
            assert results["jit"] == results["native"], w.key
            assert results["jit_full"] == results["native_full"], w.key
        assert quick_run["workloads"][w.key]["agree"] is True, w.key


def test_filter_accepts_exactly_the_port_80_packets(ctx: Context) -> None:
    loaded = load_vm(ctx, FILTER, 1, verify=False)
    with loaded.vm as vm:
        assert [vm.execute(bytearray(p.frame)) for p in packet_mix()] == [p.accept for p in packet_mix()]


def test_instruction_count_matches_the_program(ctx: Context) -> None:
    # Per pass: 4 instructions to set up, 4 per byte, 2 to count the pass.
    assert insns_per_unit(ctx, BYTESUM, [(b,) for b in payload()]) == 4 + 4 * BUFFER_BYTES + 2


def test_generated_compile_program_is_valid_and_sized() -> None:
    code = assemble(straight_line_source(1000))
    assert len(code) == 1000 * 8
    with VM(code, verify=False) as vm:
        vm.execute()


def test_startup_figures(quick_run: dict[str, Any]) -> None:
    """Import and plugin start-up times are rows of the table, held to their targets."""
    startup = quick_run["startup"]
    assert "error" not in startup, startup.get("error")
    assert startup["python_ns"] > 0 and startup["import_ns"] > 0
    assert set(startup["plugin_ns"]) == {"interp", "jit"} and min(startup["plugin_ns"].values()) > 0
    assert {t["key"] for t in quick_run["targets"]} >= {"import", "plugin_interp", "plugin_jit"}


def test_json_alone_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """``demo.sh --json``: stdout is one JSON document; the words go to stderr."""
    assert main(["--quick", "--only", "call_overhead", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert set(doc["workloads"]) == {"call_overhead"} and doc["targets"]
    assert "running 1 workloads" in captured.err


def test_chart_default_is_not_the_tracked_one() -> None:
    """``--chart`` without a path writes under the ignored results folder, never over the README's chart."""
    root = Path(__file__).resolve().parent.parent
    chart = parse_args(["--chart"]).chart
    assert chart == DEFAULT_CHART and chart.is_relative_to(root / "benchmarks" / "results")
    assert "benchmarks/results/" in (root / ".gitignore").read_text().split()
    assert parse_args(["--chart", "here.png"]).chart == Path("here.png")


def test_microbenchmarks_agree_in_every_engine(quick_run: dict[str, Any]) -> None:
    """clang's bytecode for the same C in each engine: one result (the kernel's too, where it can
    test-run), and a time for each."""
    micro = quick_run["micro"]
    if "error" in micro:
        pytest.skip(f"microbenchmarks not built: {micro['error']}")
    assert set(micro["programs"]) == {"alu_mix", "branchy", "bytes", "bitcount", "calls"}
    for name, fig in micro["programs"].items():
        assert fig["agree"] is True, (name, fig["results"])
        assert {"jit", "interpreter", "c"} <= set(fig["results"])
        assert fig["jit_ns"] > 0 and fig["c_ns"] > 0 and fig["jit_batch_ns"] > 0
        assert fig["batch_agrees"] is True, name
        assert ("kernel_ns" in fig) == ("kernel" in fig["results"])


def test_verifier_benchmark_measures_every_program_beside_the_kernel() -> None:
    from benchmarks import bench_verifier, report

    figures = bench_verifier.run(quick=True)
    programs = figures["programs"]
    assert set(programs) == {c.key for c in bench_verifier.CASES if c.quick_size}
    for key, fig in programs.items():
        assert "error" not in fig, (key, fig["error"])
        assert fig["processed"] >= fig["instructions"] - 3 and fig["seconds"] > 0  # all but the short exit
        if figures["kernel"] == "available":
            assert "kernel_error" not in fig, fig["kernel_error"]
            assert fig["kernel_processed"] > 0 and fig["kernel_ratio"] > 0
    goals = {t.key: t for t in report._verifier_targets(figures)}
    assert set(goals) == {f"verifier_{key}" for key in programs}
    rows = report._verifier_rows(figures, lambda key: goals[key].goal)
    assert len(rows) == len(programs) + 1
    assert all(isinstance(row, tuple) and "within 5x" in row[-1] for row in rows[1:])
