"""A non-editable install of a clean copy of the project into a fresh virtualenv, for each CPython
3.11-3.13 this machine has, running a maps + JIT program and the console script from elsewhere."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import jitbpf
from tests.test_readme import BLOCKS, needs_checkout

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("3.11", "3.12", "3.13")
PYTHONS_ENV = "JITBPF_TEST_PYTHONS"  # os.pathsep-separated interpreters to use before searching
IGNORED = (".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis")

# Runs in the fresh environment, from a directory outside the copy: the README's examples (maps,
# helpers, batches, both engines), then what a user checks first (version, type marker).
SCRIPT = """
import json, sys
from importlib import resources
import jitbpf

for number, code in enumerate(json.loads(sys.argv[1]), 1):
    exec(compile(code, f"README.md example {number}", "exec"), {"__name__": "readme"})
print(json.dumps({
    "python": list(sys.version_info[:2]),
    "version": jitbpf.__version__,
    "file": jitbpf.__file__,
    "typed": resources.files("jitbpf").joinpath("py.typed").is_file(),
}))
"""


def _version_of(python: str) -> str | None:
    try:
        proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _candidates(version: str) -> list[str]:
    """Where an interpreter of ``version`` may be: the environment's list, PATH, uv, pyenv."""
    found = [p for p in os.environ.get(PYTHONS_ENV, "").split(os.pathsep) if p]
    found += [p for p in (shutil.which(f"python{version}"), f"/usr/bin/python{version}") if p]
    for tool, args in (("uv", ["python", "find", version]), ("pyenv", ["root"])):
        exe = shutil.which(tool)
        if exe is None:
            continue
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
        out = proc.stdout.strip()
        if proc.returncode != 0 or not out:
            continue
        if tool == "uv":
            found.append(out)
        else:  # pyenv keeps each version under ROOT/versions/X.Y.Z
            found += sorted(str(p) for p in Path(out).glob(f"versions/{version}.*/bin/python{version}"))
    return found


def find_python(version: str) -> str | None:
    return next((p for p in _candidates(version) if _version_of(p) == version), None)


def clean_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them: tracked and new files, nothing ignored."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=False)
    if listed.returncode == 0 and listed.stdout:
        for name in listed.stdout.decode().split("\0"):
            source = ROOT / name
            if name and source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
    else:  # not a git checkout (a source archive): everything but build and environment output
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*IGNORED), dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clean_copy(tmp_path_factory.mktemp("clean-copy"))


def peachpy_dir() -> Path | None:
    """The directory PeachPy is imported from here (Debian's package, as the set-up unpacks it)."""
    spec = importlib.util.find_spec("peachpy")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.parent


def run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_non_editable_install(version: str, source_copy: Path, tmp_path: Path) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} on this machine (install it, or list it in ${PYTHONS_ENV})")
    peachpy = peachpy_dir()
    if peachpy is None:
        pytest.skip("PeachPy does not import here (tools/bootstrap.sh sets it up); the JIT examples need it")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["JITBPF_CACHE_DIR"] = str(tmp_path / "cache")  # the native library is built afresh too
    venv = tmp_path / "venv"
    run([python, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    vpy = str(venv / "bin" / "python")
    run([vpy, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source_copy)], cwd=tmp_path,
        env=env)
    purelib = run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env)
    Path(purelib.strip(), "peachpy-deb.pth").write_text(f"{peachpy}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    examples = json.dumps([code for code in BLOCKS if not needs_checkout(code) and "jitbpf." in code])
    report = json.loads(run([vpy, "-c", SCRIPT, examples], cwd=elsewhere, env=env).splitlines()[-1])
    assert report["python"] == [int(x) for x in version.split(".")]
    assert report["version"] == jitbpf.__version__
    assert Path(report["file"]).is_relative_to(venv)  # the installed copy, not this checkout
    assert report["typed"]
    (elsewhere / "prog.s").write_text("mov r0, 0x2a\nexit\n")
    script = str(venv / "bin" / "jitbpf")
    assert run([script, "run", "prog.s", "--jit"], cwd=elsewhere, env=env) == "r0 = 0x2a (42)\n"
    assert run([script, "--version"], cwd=elsewhere, env=env) == f"jitbpf {jitbpf.__version__}\n"
