"""The README's Python examples run as written, from the top of the checkout (the ELF example
compiles examples/xdp_firewall.c with clang into the current directory, so it runs in a copy)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def needs_checkout(code: str) -> bool:
    """Whether an example reads the checkout's files (examples/...) rather than only the package."""
    return "examples/" in code


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = BLOCKS[index]
    if needs_checkout(code):
        if shutil.which("clang") is None:
            pytest.skip("clang is not installed: the example compiles a C program (apt-get install clang)")
        shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)  # as a user's own directory: only what the example makes itself
    exec(compile(code, f"README.md example {index + 1}", "exec"), {"__name__": "readme"})


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 4
