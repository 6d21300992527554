"""Every runnable bpf_conformance / uBPF ``.data`` file, in the interpreter and in the JIT."""

from __future__ import annotations

from pathlib import Path

import pytest

from jitbpf.conformance import data_files, parse_data_file
from jitbpf.errors import BpfError, BudgetExceeded, ExecutionError
from jitbpf.helpers import conformance_helpers
from jitbpf.vm import VM

from .conftest import conformance_root

UBPF_MAX_INSNS = 65536  # uBPF's program size limit, which its error tests rely on
ENGINES = ("interp", "jit")
# bpf_conformance's runner self-tests (FORMAT.md §8) that are not VM tests as such.
ASSEMBLER_ONLY = "bpf_conformance/negative/invalid_"  # must fail to assemble: tests/test_asm.py checks that
# `or %r0, %r10; exit` leaks the frame pointer: only a verifying VM can answer "Invalid".
VERIFIED = {"bpf_conformance/negative/error.data"}
KNOWN = {
    line.split("|")[0].strip(): line.split("|", 1)[1].strip()
    for line in (Path(__file__).parent / "known_failures.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "data_file" not in metafunc.fixturenames:
        return
    root = conformance_root(metafunc.config)
    if root is None:
        metafunc.parametrize(
            "data_file",
            [pytest.param(None, marks=pytest.mark.skip(
                reason="conformance suites not found: pass --conformance-dir or set JITBPF_CONFORMANCE_DIR"))],
        )
        return
    params = []
    for path in data_files(root):
        rel = path.relative_to(root).as_posix()
        marks = []
        if rel in KNOWN:
            marks.append(pytest.mark.xfail(reason=KNOWN[rel], strict=True))
        if rel.startswith(ASSEMBLER_ONLY):
            marks.append(pytest.mark.skip(reason="assembler rejection test, checked in tests/test_asm.py"))
        params.append(pytest.param((root, path), id=rel, marks=marks))
    metafunc.parametrize("data_file", params)


def load_program(path: Path) -> bytes | None:
    """The program of a data file: raw bytecode, else the assembled asm (None: not runnable)."""
    from jitbpf.asm import assemble

    df = parse_data_file(path)
    if not df.runnable:
        return None
    if df.raw is not None:
        return df.raw
    assert df.asm is not None
    return assemble(df.asm, any_register=True)  # the error tests use r11 to make undecodable bytecode


def check_error_kind(expected: str, exc: BpfError) -> None:
    """uBPF's messages are its own; what must agree is when the failure happens: at load time
    ("Failed to load code: ...") or while running ("uBPF error: ...")."""
    if expected.startswith("Failed to load code"):
        # Without a loop-rejecting verifier, an infinite loop is stopped by the budget instead.
        allowed_runtime = isinstance(exc, BudgetExceeded) and "infinite loop" in expected
        assert allowed_runtime or not isinstance(exc, ExecutionError), f"expected a load-time error, got {exc!r}"
    elif expected.startswith("uBPF error"):
        assert isinstance(exc, ExecutionError), f"expected a run-time error, got {exc!r}"


@pytest.mark.parametrize("engine", ENGINES)
def test_conformance(data_file: tuple[Path, Path], engine: str) -> None:
    root, path = data_file
    df = parse_data_file(path)
    verify = path.relative_to(root).as_posix() in VERIFIED
    if not df.runnable:
        pytest.skip("not a runnable test (no program, no expectation, or needs files/harness not in the suite)")
    mem = bytearray(df.mem)
    try:
        program = load_program(path)
        assert program is not None
        vm = VM(program, verify=verify, max_insns=UBPF_MAX_INSNS)
        for helper in conformance_helpers(lambda: vm.memory):
            vm.register_helper(helper)
        result = vm.execute(mem) if engine == "interp" else vm.execute_jit(mem)
    except BpfError as exc:
        if df.error is None:
            raise
        check_error_kind(df.error, exc)
        return
    if df.error is not None:
        pytest.fail(f"expected an error ({df.error!r}) but the program returned {result:#x}")
    assert result == df.result, f"r0 = {result:#x}, expected {df.result:#x}"


# --- the reader's own sections (jitbpf's verifier cases) -------------------------------------------

def test_reader_takes_options_and_error_pc(tmp_path: Path) -> None:
    path = tmp_path / "case.data"
    path.write_text("-- asm\nmov r0, 1\nexit\n-- options\nallow-loops: yes\nbudget: 2000\n"
                    "-- error\nsome rule\n-- error pc\n1\n")
    df = parse_data_file(path)
    assert df.options == {"allow-loops": "yes", "budget": "2000"}
    assert (df.error, df.error_pc) == ("some rule", 1)
    assert parse_data_file(tmp_path / "case.data").runnable


def test_reader_rejects_an_option_without_a_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.data"
    path.write_text("-- asm\nexit\n-- options\nallow-loops\n-- error\nx\n")
    with pytest.raises(ValueError, match=r"bad\.data: option line 'allow-loops' is not 'key: value'"):
        parse_data_file(path)
