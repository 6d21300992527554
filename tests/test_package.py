"""The package as users import it: lazy public names, version, type marker, a missing PeachPy."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import jitbpf

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jitbpf"

# Takes PeachPy's directory off the child's path: the package is then missing, as it is from an
# installation without it (a finder that refused it would not be: find_spec would still answer).
_NO_PEACHPY = """
import sys
from pathlib import Path
sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "peachpy").is_dir()]
"""


def child(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)


def type_checking_names() -> dict[str, str]:
    """The names ``jitbpf/__init__.py`` imports for type checkers, and their modules."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    return {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
            for alias in node.names if node.module}


def test_import_loads_no_layer() -> None:
    """``import jitbpf`` imports the error types only; the layers come with their first name."""
    proc = child("import json, sys, jitbpf\n"
                 "print(json.dumps(sorted(m for m in sys.modules if m.startswith('jitbpf'))))")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["jitbpf", "jitbpf.errors"]
    proc = child("import json, sys, jitbpf\njitbpf.Array\nprint(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(proc.stdout))
    assert "jitbpf.linux.maps" in loaded
    assert not {"jitbpf.linux.elf", "jitbpf.asm", "jitbpf.pcap", "jitbpf.jit.program"} & loaded


def test_lazy_names_match_their_modules() -> None:
    declared = type_checking_names()
    assert declared == jitbpf._LAZY
    for name, module in declared.items():
        assert getattr(jitbpf, name) is getattr(importlib.import_module(module), name), name
    errors = {n for n in dir(jitbpf.errors) if isinstance(getattr(jitbpf.errors, n), type)}
    assert set(jitbpf.__all__) == {*declared, "__version__", *errors}
    assert set(jitbpf.__all__) <= set(dir(jitbpf))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        jitbpf.nonexistent  # noqa: B018
    assert not hasattr(jitbpf, "_private_name")


def test_version_and_type_marker() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jitbpf.__version__"}
    assert all(part.isdigit() for part in jitbpf.__version__.split("."))
    assert (PACKAGE / "py.typed").is_file()
    shipped = meta["tool"]["setuptools"]["package-data"]["jitbpf"]
    native = {p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "_native").iterdir() if p.suffix in (".c", ".h")}
    assert native and all(any(Path(n).match(glob) for glob in shipped) for n in native)


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty jitbpf cache directory for child processes (no encodings saved by earlier runs),
    but for the native library, copied: building it again takes seconds."""
    from jitbpf._native.build import build

    cache = tmp_path / "cache"
    cache.mkdir()
    library = build()
    (cache / library.name).write_bytes(library.read_bytes())
    monkeypatch.setenv("JITBPF_CACHE_DIR", str(cache))
    return cache


@pytest.mark.usefixtures("fresh_cache")
def test_missing_peachpy_is_one_jit_error() -> None:
    """Without PeachPy the JIT fails with one JitError saying how to get it; the interpreter still runs."""
    code = _NO_PEACHPY + """
import jitbpf
vm = jitbpf.VM(jitbpf.assemble("mov r0, 7\\nexit"))
for _ in range(2):
    try:
        vm.execute_jit()
    except jitbpf.JitError as exc:
        print(type(exc).__name__, exc.__cause__, exc.__suppress_context__, exc)
print("interpreter", vm.execute())
"""
    proc = child(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == lines[1]
    assert lines[0].startswith("JitError None True the JIT needs PeachPy, which is not installed (No module named "
                               "'peachpy')")
    assert "python3-peachpy" in lines[0] and "github.com/Maratyszcza/PeachPy" in lines[0]
    assert lines[2] == "interpreter 7"


@pytest.mark.usefixtures("fresh_cache")
def test_missing_peachpy_through_the_command() -> None:
    code = _NO_PEACHPY + "import sys\nfrom jitbpf.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "run", "-", "--jit"], input="mov r0, 1\nexit\n",
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("jitbpf: error: <stdin>: the JIT needs PeachPy") and proc.stderr.count("\n") == 1


def test_runs_from_the_checkouts_parent(tmp_path: Path) -> None:
    """Nothing depends on the working directory: run from the folder above the checkout."""
    prog = tmp_path / "prog.s"
    prog.write_text("mov r0, 5\nexit\n")
    proc = subprocess.run([sys.executable, "-m", "jitbpf", "run", str(prog), "--jit"], cwd=ROOT.parent,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "r0 = 0x5 (5)\n"
