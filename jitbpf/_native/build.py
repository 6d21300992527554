"""Builds the native map library with cffi (API mode) into a per-user cache, keyed by its source."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import cffi

from jitbpf.errors import MapError

HERE = Path(__file__).resolve().parent
HEADER = HERE / "jbmaps.h"
JIT_HEADER = HERE / "jbjit.h"  # the JIT's structures, included by HEADER
INTERNAL_HEADER = HERE / "jbrun.h"  # shared by the C files only (not declared to cffi)
SOURCES = (HERE / "maps.c", HERE / "run.c", HERE / "sandbox.c", HERE / "pkt.c", HERE / "fast.c")
FAST_MODULE = "_jitbpf_fast"  # the CPython module fast.c defines in the same library
CFLAGS = ("-O2", "-std=gnu11", "-pthread", "-fno-strict-aliasing")
LDFLAGS = ("-pthread",)
CACHE_ENV = "JITBPF_CACHE_DIR"  # overrides the cache directory


EXTERN_PYTHON = "JB_EXTERN_PYTHON"  # the header's mark of functions written in Python

# The libc functions jitbpf calls from Python (page mappings, errno). The compiled library
# declares them too, so that a process with the library built needs no run-time C parsing.
LIBC_DECLARATIONS = """
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int mprotect(void *addr, size_t len, int prot);
int munmap(void *addr, size_t length);
long sysconf(int name);
int *__errno_location(void);
"""
LIBC_INCLUDES = "#include <errno.h>\n#include <sys/mman.h>\n#include <unistd.h>\n"


def header_declarations(path: Path) -> str:
    """A header's declarations without its preprocessor lines (cffi's cdef does not take them)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def cdef_text() -> str:
    """The library's declarations (the JIT's structures first: the header includes them), the
    functions marked ``JB_EXTERN_PYTHON`` declared as cffi's compiled Python callbacks."""
    text = header_declarations(JIT_HEADER) + "\n" + header_declarations(HEADER) + LIBC_DECLARATIONS
    return text.replace(EXTERN_PYTHON, 'extern "Python+C"')


def source_key() -> str:
    """A hash of everything the binary depends on: sources, flags, Python ABI and cffi version."""
    digest = hashlib.sha256()
    for path in (JIT_HEADER, HEADER, INTERNAL_HEADER, *SOURCES):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(LIBC_DECLARATIONS.encode())
    abi = importlib.machinery.EXTENSION_SUFFIXES[0]
    digest.update(" ".join((*CFLAGS, *LDFLAGS, abi, cffi.__version__)).encode())
    return digest.hexdigest()[:16]


def module_name() -> str:
    return f"_jitbpf_native_{source_key()}"


def cache_dir() -> Path:
    """``$JITBPF_CACHE_DIR``, else ``$XDG_CACHE_HOME/jitbpf``, else ``~/.cache/jitbpf``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "jitbpf"


def _writable_dir() -> Path:
    """The cache directory, or a private temporary one when the cache cannot be created."""
    for candidate in (cache_dir(), Path(tempfile.gettempdir()) / f"jitbpf-{os.getuid()}"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise MapError("no writable directory for the native map library (set JITBPF_CACHE_DIR)")


def _compiler() -> str | None:
    cc = os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc")
    first = cc.split()[0] if cc.split() else "cc"
    return shutil.which(first) or shutil.which("cc") or shutil.which("gcc")


def built_path() -> Path | None:
    """The compiled library for the current sources, if it exists."""
    name = module_name() + importlib.machinery.EXTENSION_SUFFIXES[0]
    for directory in (cache_dir(), Path(tempfile.gettempdir()) / f"jitbpf-{os.getuid()}"):
        if (directory / name).is_file():
            return directory / name
    return None


def build(*, force: bool = False, verbose: bool = False) -> Path:
    """Compile the library (unless an up-to-date one is cached) and return its path.

    Raises ``MapError`` when no C compiler is available. Concurrent builds are safe: each one
    compiles in its own temporary directory and renames the result into place.
    """
    existing = None if force else built_path()
    if existing is not None:
        return existing
    if _compiler() is None:
        raise MapError("jitbpf's maps need a C compiler to build their native library: install gcc "
                       "(e.g. apt-get install gcc), or set CC")
    directory = _writable_dir()
    name = module_name()
    target = directory / (name + importlib.machinery.EXTENSION_SUFFIXES[0])
    builder = cffi.FFI()
    builder.cdef(cdef_text())
    builder.set_source(name, LIBC_INCLUDES + '#include "jbmaps.h"', sources=[str(p) for p in SOURCES],
                       include_dirs=[str(HERE)], extra_compile_args=list(CFLAGS), extra_link_args=list(LDFLAGS))
    with tempfile.TemporaryDirectory(dir=directory, prefix="build-") as tmp:
        try:
            out = builder.compile(tmpdir=tmp, verbose=verbose)
        except Exception as exc:  # setuptools reports compiler failures with several types
            raise MapError(f"building the native map library failed: {exc}") from exc
        os.replace(out, target)
    _remove_stale(directory, target)
    return target


KEEP_BUILDS = 6  # builds kept in the cache: several installed versions must not evict each other


def _remove_stale(directory: Path, current: Path) -> None:
    """Drop all but the most recently built few of earlier sources' builds (each source change
    makes a new name); a process that still has one loaded keeps its mapping."""
    builds = [p for p in directory.glob("_jitbpf_native_*") if p != current and p.is_file()]
    with contextlib.suppress(OSError):
        builds.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in builds[KEEP_BUILDS - 1:]:
        with contextlib.suppress(OSError):  # another user's file, or already gone: harmless
            stale.unlink()


def load(path: Path | None = None) -> tuple[Any, Any]:
    """Import the compiled library (building it first if needed); returns its ``(ffi, lib)``.

    Loading the same file again gives the same module (extension modules are loaded once per
    process), so every caller shares one FFI."""
    path = path or build()
    name = re.sub(r"\..*$", "", path.name)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MapError(f"cannot load the native map library from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib


def load_fast(path: Path) -> Any:
    """The library's CPython module of single-run entry points (``fast.c``), from the file
    ``load`` loaded: one shared object, so the two modules share its state."""
    loader = importlib.machinery.ExtensionFileLoader(FAST_MODULE, str(path))
    module = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(FAST_MODULE, loader, origin=str(path)))
    loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jitbpf._native.build",
                                     description="Build jitbpf's native map library ahead of time.")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose)
    except MapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
