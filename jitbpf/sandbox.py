"""Pages a program may be given: stacks, contexts and packets live here, as map values do.

When the native library reserved its sandbox (see ``jitbpf/_native/sandbox.c``), these pages
come from it: JIT code confines every access whose bounds check it elided to the sandbox, so a
wrong proof of the verifier can never reach host memory. Without a sandbox (the address range is
taken, or no native library) the pages are ordinary anonymous memory below 4 GiB, and the JIT keeps
every check (``contained()`` is False).

Below 4 GiB either way: context fields such as ``xdp_md.data`` are 32 bits wide, and the kernel
rewrites the program's loads of them into loads of real pointers; jitbpf does not rewrite, so the
fields hold real addresses, which must fit.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from jitbpf._ffi import ffi, libc
from jitbpf.errors import BpfError, ExecutionError

LOW_LIMIT = 1 << 32  # every page lies below this address, so 32-bit fields can point to it
PAGE = 4096
_PROT_RW = 0x1 | 0x2  # PROT_READ | PROT_WRITE
_MAP_PRIVATE_ANON = 0x02 | 0x20  # MAP_PRIVATE | MAP_ANONYMOUS
_MAP_32BIT = 0x40  # x86-64: place the mapping in the first 2 GiB
_MAP_FAILED = (1 << 64) - 1


@functools.cache
def _native() -> Any | None:
    try:
        from jitbpf._native import native

        return native()
    except BpfError:
        return None


def contained() -> bool:
    """Whether the sandbox is there: then unchecked JIT accesses are confined to it."""
    nat = _native()
    return nat is not None and bool(nat.sandboxed)


class Pages:
    """Zeroed, page-aligned memory at a fixed address below 4 GiB: ``address``, ``size`` (whole
    pages) and a writable ``view``.

    The memory is given back when the last object referring to it is gone: this object, its
    ``pointer`` and every view made from ``view`` (each holds the pointer), so no view can ever
    outlive the pages. ``close()`` drops this object's own references.
    """

    def __init__(self, size: int) -> None:
        self.size = max(PAGE, (size + PAGE - 1) // PAGE * PAGE)
        self.in_sandbox = contained()
        if self.in_sandbox:
            nat = _native()
            assert nat is not None
            address = int(nat.lib.jb_sbx_alloc(self.size))
            if not address:
                raise ExecutionError(f"the sandbox has no room for {self.size} more bytes "
                                     f"({int(nat.lib.jb_sbx_used())} in use)")
            free = nat.lib.jb_sbx_free  # resolved now: a destructor must not enter cffi's parser
            pointer = ffi.gc(ffi.cast("uint8_t *", address), lambda _p: free(address))
        else:
            raw = self._map_low(self.size)
            munmap, size = libc.munmap, self.size
            pointer = ffi.gc(ffi.cast("uint8_t *", raw), lambda p: munmap(p, size))
        self.address = int(ffi.cast("uintptr_t", pointer))
        self.pointer: Any = pointer
        self.view = memoryview(ffi.buffer(pointer, self.size)).cast("B")

    @staticmethod
    def _map_low(size: int) -> Any:
        tries: list[tuple[int, int]] = [(0, _MAP_32BIT)] if os.uname().machine in ("x86_64", "amd64") else []
        tries += [(hint, 0) for hint in range(0x1000_0000, 0xF000_0000, 0x1000_0000)]
        for hint, flags in tries:
            ptr = libc.mmap(ffi.cast("void *", hint), size, _PROT_RW, _MAP_PRIVATE_ANON | flags, -1, 0)
            addr = int(ffi.cast("uintptr_t", ptr))
            if addr == _MAP_FAILED:
                continue
            if addr + size <= LOW_LIMIT:
                return ptr
            libc.munmap(ptr, size)
        raise ExecutionError(f"cannot map {size} bytes of program memory below 4 GiB")

    @property
    def closed(self) -> bool:
        return self.pointer is None

    def close(self) -> None:
        """Drop this object's references (idempotent); the pages go once no view holds them."""
        if self.pointer is not None:
            self.view.release()
            self.pointer = None
