"""The native (C) map library: built on first use, then loaded once per process."""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Native:
    """The loaded library and its cffi FFI (pointers to maps are cdata of this FFI)."""

    ffi: Any  # the library's own cffi FFI
    lib: Any  # its functions: jb_map_*, jb_helper_*, ...
    fast: Any  # its CPython module of single-run entry points (fast.c): pkt_run
    num_cpus: int  # per-CPU maps hold this many values per element
    # The sandbox is reserved (see sandbox.c): memory programs may reach unchecked is allocated
    # there, and JIT code confines unchecked accesses to it. When the address range is taken (or
    # the host is not x86-64 Linux), it is not, and the JIT checks every access instead.
    sandboxed: bool

    def address(self, name: str) -> int:
        """Address of one of the library's functions (what the JIT calls)."""
        return int(self.ffi.cast("uintptr_t", self.ffi.addressof(self.lib, name)))


# Threads that need the library at once must not build it at once: cffi's compiler driver
# changes the process's working directory while it runs, so concurrent builds break each other
# (and could leave a truncated library to load). The lock is taken only until the first load.
_LOAD_LOCK = threading.Lock()


@functools.cache
def native() -> Native:
    """Build (if needed) and load the library; the CPU count is fixed here, at first use."""
    from jitbpf._native.build import build, load, load_fast

    with _LOAD_LOCK:
        path = build()
        ffi, lib = load(path)
        fast = load_fast(path)
    cpus = int(lib.jb_init(os.cpu_count() or 1))
    sandboxed = lib.jb_sbx_init() == 0 and lib.jb_fault_install() == 0
    return Native(ffi, lib, fast, cpus, sandboxed)
