"""Reader for the ``.data`` conformance test files of bpf_conformance and uBPF.

The files are not part of jitbpf: the caller points at a directory holding them (the
``JITBPF_CONFORMANCE_DIR`` environment variable, or ``../shared/conformance`` beside a checkout).
jitbpf's own verifier cases use the same format with two more sections: ``-- options`` (one
``key: value`` per line: how the program is loaded) and ``-- error pc`` (where the error is
reported; a file with an error and no such section expects an error without a location).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "JITBPF_CONFORMANCE_DIR"


@dataclass(frozen=True)
class DataFile:
    """One parsed ``.data`` file."""

    path: Path  # where it was read from
    sections: dict[str, str] = field(default_factory=dict)  # raw section bodies by name
    asm: str | None = None  # assembly source
    raw: bytes | None = None  # bytecode (takes precedence over asm)
    mem: bytes = b""  # input memory
    result: int | None = None  # expected r0
    error: str | None = None  # expected failure message ("" = any failure)
    error_is_pattern: bool = False  # error is a regular expression
    no_jit: bool = False  # upstream does not run it with a JIT
    options: dict[str, str] = field(default_factory=dict)  # "-- options": key -> value, as written
    error_pc: int | None = None  # "-- error pc": the instruction the error names

    @property
    def runnable(self) -> bool:
        """Has a program and an expected outcome, and needs nothing outside the file."""
        if "pyelf" in self.sections or "reload" in self.sections or "unload" in self.sections:
            return False
        if self.asm is None and self.raw is None:
            return False
        return self.result is not None or self.error is not None

    @property
    def expects_error(self) -> bool:
        return self.error is not None


def _parse_raw(body: str, path: Path) -> bytes:
    tokens = body.split()
    # negative/unused-*.data write each instruction as 8 two-digit hex bytes in memory order.
    if tokens and all(len(t) == 2 and not t.startswith("0x") for t in tokens):
        return bytes(int(t, 16) for t in tokens)
    return b"".join((int(t, 0) & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") for t in tokens)


def _parse_mem(body: str) -> bytes:
    out = bytearray()
    for line in body.splitlines():
        if ":" in line:  # hexdump prefix "0x0000:"
            line = line.split(":", 1)[1]
        for tok in line.split():
            tok = tok.removeprefix("0x")
            out += bytes.fromhex(tok if len(tok) % 2 == 0 else "0" + tok)
    return bytes(out)


def _parse_options(body: str, path: Path) -> dict[str, str]:
    options: dict[str, str] = {}
    for line in body.splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"{path}: option line {line.strip()!r} is not 'key: value'")
        options[key.strip()] = value.strip()
    return options


def parse_data_file(path: str | os.PathLike[str]) -> DataFile:
    """Parse a ``.data`` file; includes (``-- asm @ FILE``) resolve beside it when present."""
    p = Path(path)
    sections: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    missing_include = False
    for raw_line in p.read_text().splitlines():
        line = raw_line.rstrip("\r").split("#", 1)[0].rstrip()
        if line.startswith("--"):
            if current is not None:
                sections[current] = "\n".join(lines)
            current, lines = line[2:].strip(), []
            if "@" in current:
                current, include = (s.strip() for s in current.split("@", 1))
                inc = p.parent / include
                if inc.exists():
                    lines = [x.split("#", 1)[0].rstrip() for x in inc.read_text().splitlines()]
                else:
                    missing_include = True
            continue
        if current is not None and line.strip():
            lines.append(line)
    if current is not None:
        sections[current] = "\n".join(lines)
    result_text = sections.get("result")
    result = None
    if result_text is not None and result_text.strip():
        result = int(result_text.split()[-1], 0) & 0xFFFF_FFFF_FFFF_FFFF
    error = sections.get("error", sections.get("error pattern"))
    if missing_include:
        sections["missing include"] = ""
    return DataFile(
        path=p,
        sections=sections,
        asm=sections.get("asm") if not missing_include else None,
        raw=_parse_raw(sections["raw"], p) if "raw" in sections else None,
        mem=_parse_mem(sections.get("mem", "")),
        result=result,
        error=error.strip() if error is not None else None,
        error_is_pattern="error pattern" in sections,
        no_jit="no jit" in sections,
        options=_parse_options(sections.get("options", ""), p),
        error_pc=int(sections["error pc"].strip(), 0) if "error pc" in sections else None,
    )


def error_matches(expected: str, message: str, *, pattern: bool) -> bool:
    """Whether ``message`` satisfies an expected error ("" accepts any failure)."""
    if not expected:
        return True
    if pattern:
        return re.search(expected, message) is not None
    return expected in message


def find_conformance_dir(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The conformance directory: ``$JITBPF_CONFORMANCE_DIR``, else ``../shared/conformance``
    beside the checkout that holds ``start`` (default: this package)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(start or __file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "conformance"
        if candidate.is_dir():
            return candidate
    return None


def data_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every ``.data`` file below ``root``, sorted by path."""
    return sorted(Path(root).rglob("*.data"))
