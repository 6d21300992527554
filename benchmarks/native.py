"""Builds the C references in ``benchmarks/native/`` into a cached shared library and loads it with cffi."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi

SOURCE_DIR = Path(__file__).resolve().parent / "native"
BUILD_DIR = Path(__file__).resolve().parent / "build"
HEADER = SOURCE_DIR / "bench.h"
CC = "gcc"
CFLAGS = ("-O2", "-shared", "-fPIC")


@dataclass(frozen=True)
class NativeLib:
    """The loaded library: ``lib.bench_*`` are the C functions, called through cffi in ABI mode."""

    ffi: Any  # the cffi.FFI that declared bench.h
    lib: Any  # ffi.dlopen() of the built .so
    path: Path  # where the .so is
    compiler: str  # first line of `gcc --version`

    def address(self, name: str) -> int:
        """Address of a C function of the library (to register it as a native helper)."""
        return int(self.ffi.cast("uintptr_t", getattr(self.lib, name)))

    def pointer(self, buf: bytearray) -> Any:
        """A ``uint8_t *`` to the bytes of ``buf`` (keep the result alive while it is used)."""
        return self.ffi.from_buffer("uint8_t[]", buf)


def compiler_version() -> str:
    out = subprocess.run([CC, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0] if out else CC


def _fingerprint(sources: list[Path], compiler: str) -> str:
    """Hash of everything the binary depends on, so that editing a C file triggers a rebuild."""
    h = hashlib.sha256()
    h.update(compiler.encode())
    h.update(" ".join(CFLAGS).encode())
    for path in [HEADER, *sources, *sorted((SOURCE_DIR.parent / "micro").glob("*.h"))]:  # headers they include
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_into(target: Path, command: Callable[[str], list[str]], what: str) -> None:
    """Run ``command(out)`` to make ``target``: into a private name, then renamed, so that two
    runs building at once never load a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        cmd = command(tmp)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building {what} failed:\n{' '.join(cmd)}\n{result.stderr}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(build_dir: Path = BUILD_DIR, compiler: str | None = None) -> Path:
    """The path of the up-to-date .so, compiling it first if the sources changed since the last build."""
    sources = sorted(SOURCE_DIR.glob("*.c"))
    compiler = compiler or compiler_version()
    target = build_dir / f"bench-{_fingerprint(sources, compiler)}.so"
    if target.exists():
        return target
    build_into(target, lambda out: [CC, *CFLAGS, "-o", out, *map(str, sources)], "the native references")
    for stale in build_dir.glob("bench-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def load(build_dir: Path = BUILD_DIR) -> NativeLib:
    """Build if needed, then ``dlopen`` the library with the declarations of bench.h."""
    compiler = compiler_version()
    path = build(build_dir, compiler)
    ffi = cffi.FFI()
    ffi.cdef(HEADER.read_text())
    return NativeLib(ffi, ffi.dlopen(str(path)), path, compiler)
