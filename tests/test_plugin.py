"""The bpf_conformance plugin, driven as bpf_conformance_runner drives it, over the shared suites."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jitbpf import plugin
from jitbpf.conformance import DataFile, data_files, parse_data_file
from jitbpf.errors import AssemblerError

from .conftest import conformance_root

MODES = ("--interp", "--jit")
NO_SUITES = "conformance suites not found: pass --conformance-dir or set JITBPF_CONFORMANCE_DIR"
# Runner self-tests and stale files that must not pass (strict xfail, so the list stays honest).
KNOWN = {
    line.split("|")[0].strip(): line.split("|", 1)[1].strip()
    for line in (Path(__file__).parent / "known_failures.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
} | {
    "bpf_conformance/negative/error.data": "runner self-test: the program (r0 read before it is written) only "
                                          "fails under a verifier, and the plugin runs unverified, as uBPF's does",
}
# Run through real processes (the rest runs in-process): memory, helpers, lddw, atomics, v4,
# a load error, and a local call.
SUBPROCESS_SAMPLE = (
    "bpf_conformance/add.data",
    "bpf_conformance/ldxb.data",
    "bpf_conformance/lddw.data",
    "bpf_conformance/call_unwind_fail.data",
    "bpf_conformance/lock_fetch_add.data",
    "bpf_conformance/sdiv64-by-zero-imm.data",
    "bpf_conformance/call_local.data",
    "bpf_conformance/mem-len.data",
    "ubpf/helpers/call-memfrob.data",
    "ubpf/errors/err-call-unreg.data",
)


def hex_bytes(data: bytes) -> str:
    """The runner's encoding: two lower-case hex digits and two spaces per byte."""
    return "".join(f"{b:02x}  " for b in data)


def jit_available() -> bool:
    try:
        from jitbpf.jit import JitProgram  # noqa: F401
    except ImportError:
        return False
    return True


def runner_invocation(df: DataFile, mode: str) -> tuple[list[str], str] | None:
    """argv and stdin for one test, as the runner builds them (None: the runner cannot send it)."""
    if df.raw is not None:
        program = df.raw
    else:
        from jitbpf.asm import assemble

        assert df.asm is not None
        try:
            program = assemble(df.asm, any_register=True)
        except AssemblerError:
            # The runner's own assembler rejects it (negative/invalid_* are runner self-tests
            # that must fail there): the plugin never sees it.
            if df.expects_error or "negative" in df.path.parts:
                return None
            raise
    argv = [hex_bytes(df.mem)] if df.mem else []
    return [*argv, mode], hex_bytes(program) + "\n"


def check_outcome(df: DataFile, status: int, out: str, err: str) -> None:
    """What the runner checks, plus where the message goes (load errors on stdout)."""
    if df.expects_error:
        assert status != 0, f"expected an error ({df.error!r}), but the plugin printed {out.strip()!r}"
        message = out or err
        assert message.strip() and "\n" not in message.strip(), f"expected a one-line message: {message!r}"
        assert "Traceback" not in out + err
        expected = df.error or ""
        # Without a loop-rejecting verifier an infinite loop ends in the budget, at run time.
        if expected.startswith("Failed to load code") and "infinite loop" not in expected:
            assert out.startswith("Failed to load code: "), f"expected a load error on stdout, got {out!r} / {err!r}"
        elif expected.startswith("uBPF error"):
            assert not out and err.strip(), f"expected a run-time error on stderr, got {out!r} / {err!r}"
        return
    assert status == 0, f"plugin failed: {out!r} {err!r}"
    assert df.result is not None
    text = out.removesuffix("\n")
    assert text == text.lower() and not text.startswith("0x"), f"r0 must be lower-case hex without 0x: {text!r}"
    assert int(text, 16) == df.result, f"r0 = {text}, expected {df.result:#x}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "plugin_case" not in metafunc.fixturenames:
        return
    root = conformance_root(metafunc.config)
    if root is None:
        skip = pytest.mark.skip(reason=NO_SUITES)
        metafunc.parametrize("plugin_case", [pytest.param(None, marks=skip)])
        return
    params = []
    for path in data_files(root):
        rel = path.relative_to(root).as_posix()
        if not parse_data_file(path).runnable:
            continue  # files without a program or an expectation are not tests
        for mode in MODES:
            marks = [pytest.mark.xfail(reason=KNOWN[rel], strict=True)] if rel in KNOWN else []
            params.append(pytest.param((path, mode), id=f"{rel}{mode}", marks=marks))
    metafunc.parametrize("plugin_case", params)


def _prepare(plugin_case: tuple[Path, str]) -> tuple[DataFile, list[str], str]:
    path, mode = plugin_case
    df = parse_data_file(path)
    if mode == "--jit" and df.no_jit:
        pytest.skip("upstream does not run this test with a JIT (-- no jit)")
    if mode == "--jit" and not jit_available():
        pytest.skip("the JIT (jitbpf.jit) is not available")
    invocation = runner_invocation(df, mode)
    if invocation is None:
        pytest.skip("rejected by the runner's assembler; never reaches a plugin")
    argv, stdin = invocation
    return df, argv, stdin


def test_plugin_case(plugin_case: tuple[Path, str]) -> None:
    df, argv, stdin = _prepare(plugin_case)
    status, out, err = plugin.run(argv, stdin)
    check_outcome(df, status, out, err)


def _commands() -> list[list[str]]:
    """The ways to start the plugin: the module, the CLI's subcommand, the console script."""
    entry = Path(sys.executable).parent / "jitbpf"
    commands = [[sys.executable, "-m", "jitbpf.plugin"], [sys.executable, "-m", "jitbpf", "conformance-plugin"]]
    if entry.exists():
        commands.append([str(entry), "conformance-plugin"])
    return commands


def test_sample_through_processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """A sample of the suites through real plugin processes, started as the runner starts them."""
    root = conformance_root(request.config)
    if root is None:
        pytest.skip(NO_SUITES)
    # Where the environment forbids bytecode caching, every process would compile the whole
    # package again: cache it outside the tree.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path_factory.getbasetemp() / "pycache"))
    # One process per file, the modes taking turns (each mode runs every file in-process above).
    modes = MODES if jit_available() else ("--interp",)
    commands = _commands()
    cases = []
    for i, rel in enumerate(SUBPROCESS_SAMPLE):
        df = parse_data_file(root / rel)
        mode = modes[i % len(modes)]
        invocation = runner_invocation(df, mode)
        assert invocation is not None
        cases.append((rel, mode, df, commands[i % len(commands)], *invocation))

    def start(case: tuple[str, str, DataFile, list[str], list[str], str]) -> subprocess.CompletedProcess[str]:
        _rel, _mode, _df, command, argv, stdin = case
        return subprocess.run([*command, *argv], input=stdin, capture_output=True, text=True, timeout=120,
                              check=False)

    # The first case of each mode runs alone, so that the others find the bytecode cached.
    procs = [start(case) for case in cases[: len(modes)]]
    with ThreadPoolExecutor(max_workers=max(2, min(8, 2 * (os.cpu_count() or 1)))) as pool:
        procs += pool.map(start, cases[len(modes) :])
    failures = []
    for (rel, mode, df, command, _argv, _stdin), proc in zip(cases, procs, strict=True):
        try:
            check_outcome(df, proc.returncode, proc.stdout, proc.stderr)
        except AssertionError as exc:
            failures.append(f"{rel} {mode} via {' '.join(command[-2:])}: {exc}")
    assert not failures, "\n".join(failures)


# -- the protocol's details --------------------------------------------------------------------

PROGRAM = bytes.fromhex("61 10 00 00 00 00 00 00 95 00 00 00 00 00 00 00")  # ldxw r0, [r1]; exit


def test_memory_argument_and_ignored_options() -> None:
    argv = ["01  02  03  04  ", "--profile", "safe", "--unknown-option", "--interp"]
    assert plugin.run(argv, hex_bytes(PROGRAM)) == (0, "4030201\n", "")


def test_hex_is_whitespace_tolerant() -> None:
    status, out, _ = plugin.run(["01 02\n03\t04"], PROGRAM.hex() + "\n\n")
    assert (status, out) == (0, "4030201\n")


def test_program_option_instead_of_stdin() -> None:
    assert plugin.run(["01  02  03  04  ", "--program", PROGRAM.hex()], "") == (0, "4030201\n", "")


def test_no_memory_means_r1_is_zero() -> None:
    mov_r0_r1 = bytes.fromhex("bf 10 00 00 00 00 00 00 95 00 00 00 00 00 00 00")
    assert plugin.run([], hex_bytes(mov_r0_r1)) == (0, "0\n", "")


def test_bad_memory_hex_is_a_usage_error() -> None:
    status, out, err = plugin.run(["01  zz  "], hex_bytes(PROGRAM))
    assert status == 2 and not out
    assert err.count("\n") == 1 and "invalid memory argument: invalid hex digit 'z' at character 5" in err


def test_bad_program_hex_is_a_load_error() -> None:
    status, out, err = plugin.run([], "95 00 0")
    assert status == 1 and not err
    assert out.startswith("Failed to load code: invalid program hex") and out.count("\n") == 1


def test_runtime_error_goes_to_stderr() -> None:
    status, out, err = plugin.run([], hex_bytes(PROGRAM))  # no memory: the load faults
    assert status == 1 and not out
    assert err.startswith("jitbpf error: ") and err.count("\n") == 1


def test_help() -> None:
    status, out, _ = plugin.run(["--help"], "")
    assert status == 0 and "MEM_HEX" in out


def test_elf_without_loader_or_bad_object_fails_cleanly() -> None:
    status, out, err = plugin.run(["--elf"], hex_bytes(b"\x7fELF" + bytes(60)))
    assert status == 1 and out.startswith("Failed to load code: ") and out.count("\n") == 1
    assert "Traceback" not in out + err


def test_elf_object_on_stdin(tmp_path: Path) -> None:
    clang = shutil.which("clang")
    if clang is None or importlib.util.find_spec("jitbpf.linux.elf") is None:
        pytest.skip("needs clang and jitbpf.linux.elf")
    (tmp_path / "prog.c").write_text("int main(void) { return 42; }\n")
    subprocess.run([clang, "-O2", "-target", "bpf", "-c", "prog.c", "-o", "prog.o"], cwd=tmp_path, check=True,
                   timeout=120)
    stdin = hex_bytes((tmp_path / "prog.o").read_bytes()) + "\n"
    assert plugin.run(["--elf"], stdin) == (0, "2a\n", "")
    proc = subprocess.run([sys.executable, "-m", "jitbpf.plugin", "--elf", "--interp"], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, "2a\n")


def test_cli_dispatch_of_runner_arguments() -> None:
    from jitbpf.cli import plugin_argv

    assert plugin_argv(["01  02  ", "conformance-plugin", "--jit"]) == ["01  02  ", "--jit"]
    assert plugin_argv(["--debug", "conformance-plugin", "--elf"]) == ["--elf"]
    assert plugin_argv(["run", "conformance-plugin"]) is None
    assert plugin_argv(["run", "x.s"]) is None
