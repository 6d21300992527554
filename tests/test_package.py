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

# Hides PeachPy from the child process as an uninstalled package would be hidden.
_NO_PEACHPY = """
import importlib.abc, sys
class NoPeachPy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "peachpy":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoPeachPy())
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
    assert "jitbpf.maps" in loaded and not {"jitbpf.elf", "jitbpf.asm", "jitbpf.pcap", "jitbpf.jit.program"} & loaded


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
    """An empty jitbpf cache directory for the child processes, but for the native library (copied:
    building it again takes seconds)."""
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
    assert lines[0].startswith("JitError None True the JIT needs PeachPy, which is not installed (No module named")
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


_LISTING = """
import json, sys
import jitbpf
vm = jitbpf.VM(jitbpf.assemble("mov r0, 5\\nadd r0, r1\\nexit"))
vm.jit_compile()
print(json.dumps({"listing": vm.jit_dump(), "r0": vm.execute_jit(), "peachpy": "peachpy" in sys.modules}))
"""


def test_encodings_kept_for_the_next_process(fresh_cache: Path) -> None:
    """A second process compiles from the templates the first one saved: no PeachPy import, same code;
    a damaged file is ignored and written again."""
    pytest.importorskip("peachpy.x86_64")

    def compile_once() -> dict[str, object]:
        proc = child(_LISTING)
        assert proc.returncode == 0, proc.stderr
        result: dict[str, object] = json.loads(proc.stdout)
        return result

    first = compile_once()
    saved = list(fresh_cache.glob("encodings-*.json"))
    assert first["peachpy"] is True and len(saved) == 1
    second = compile_once()
    assert second == first | {"peachpy": False}
    saved[0].write_text('{"templates": [[["mov", "rax", "i32"], "zz", []]]}')
    assert compile_once() == first  # encoded afresh
    assert compile_once() == second
