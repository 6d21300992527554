"""The README's Python examples run as written (those that need no file of their own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example(index: int) -> None:
    code = BLOCKS[index]
    if "load_elf(" in code:
        pytest.skip("needs an object file (the same steps run in tests/test_programs.py)")
    exec(compile(code, f"README.md example {index + 1}", "exec"), {"__name__": "readme"})


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 4
