"""Executable memory: map pages read-write, copy the code in, then flip them to read-execute."""

from __future__ import annotations

import functools
import mmap
import weakref
from typing import Any

from jitbpf._ffi import VOID_P, ffi, libc, munmap
from jitbpf.errors import JitError

PROT_READ = 0x1  # pages may be read
PROT_WRITE = 0x2  # pages may be written
PROT_EXEC = 0x4  # pages may be executed
MAP_PRIVATE = 0x02  # copy-on-write mapping, not shared with other processes
MAP_ANONYMOUS = 0x20  # not backed by a file
_PAGE = mmap.PAGESIZE  # the host's page size, which never changes while the process runs
_MAP_FAILED = 2**64 - 1  # (void *) -1


def _errno() -> int:
    return int(libc.__errno_location()[0])


@functools.cache
def _sandbox_library() -> Any | None:
    """The native library when its sandbox and fault handler are in place, else None (found
    once: whether the sandbox is there is decided when the library first loads)."""
    from jitbpf.sandbox import contained

    if not contained():
        return None
    from jitbpf._native import native

    return native()


def _fault_library() -> Any | None:
    """``_sandbox_library()`` with its fault handler installed again: a handler installed since
    (faulthandler, say) may have displaced ours (a check alone while ours is in place)."""
    nat = _sandbox_library()
    if nat is not None:
        nat.lib.jb_fault_install()
    return nat


def _unmap(address: int, size: int) -> None:
    """Also the finalizer: enters no cffi type machinery (see jitbpf._ffi)."""
    munmap(ffi.cast(VOID_P, address), size)


class ExecutableMemory:
    """Machine code in its own pages, which are never writable and executable at the same time.

    The pages are mapped read-write, filled, then made read-execute; ``close()`` (or leaving the
    ``with`` block) unmaps them. A finalizer unmaps them too if the owner forgets, as a backstop.
    """

    def __init__(self, code: bytes | bytearray, fault_landing: int | None = None,
                 blocks: tuple[int, int] | None = None) -> None:
        size = max(_PAGE, (len(code) + _PAGE - 1) // _PAGE * _PAGE)
        ptr = libc.mmap(ffi.NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        address = int(ffi.cast("uintptr_t", ptr))
        if address == _MAP_FAILED or address == 0:
            raise JitError(f"mmap of {size} bytes failed (errno {_errno()})")
        ffi.memmove(ptr, bytes(code), len(code))
        if libc.mprotect(ptr, size, PROT_READ | PROT_EXEC) != 0:
            err = _errno()
            _unmap(address, size)
            raise JitError(f"mprotect to read-execute failed (errno {err})")
        self.address = address  # host address of the first byte of code
        self.size = size  # bytes mapped (whole pages)
        self.length = len(code)  # bytes of code
        self._finalizer: weakref.finalize[..., Any]
        nat = _fault_library() if fault_landing is not None else None
        if nat is not None and fault_landing is not None:
            # Faults in this code end its run with an error (the landing takes over); the release
            # forgets the range, then unmaps, in one call of the library's, resolved beforehand:
            # a finalizer must not enter cffi's type parser (which may hold its lock already).
            # SIGINT inside ``blocks`` (offsets of the program's code) ends the run the same way.
            lo, hi = blocks if blocks is not None else (0, 0)
            slot = int(nat.lib.jb_fault_register(address, address + size, address + fault_landing,
                                                 address + lo, address + hi))
            nat.lib.jb_interrupt_install()
            self.fault_handled = slot >= 0
            release: Any = nat.lib.jb_code_release
            self._finalizer = weakref.finalize(self, release, slot, address, size)
        else:
            self.fault_handled = False
            self._finalizer = weakref.finalize(self, _unmap, address, size)
        # Not at interpreter exit, which calls the finalizers of objects still alive: a thread
        # that exit does not wait for (a daemon) may still be running this code, without the GIL.
        self._finalizer.atexit = False

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def function(self, offset: int, ctype: str) -> Any:
        """A cffi function pointer of type ``ctype`` to the code at ``offset``."""
        if self.closed:
            raise JitError("the executable memory is closed")
        return ffi.cast(ctype, self.address + offset)

    def read(self) -> bytes:
        """The code bytes (for disassembly)."""
        if self.closed:
            raise JitError("the executable memory is closed")
        return bytes(ffi.buffer(ffi.cast("char *", self.address), self.length))

    def close(self) -> None:
        """Unmap the pages (idempotent). Code must not be running in them."""
        self._finalizer()

    def __enter__(self) -> ExecutableMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
