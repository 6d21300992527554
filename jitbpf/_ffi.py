"""The one cffi ``FFI`` instance and the libc functions jitbpf calls (declared once, typed)."""

from __future__ import annotations

from typing import Any

import cffi

ffi = cffi.FFI()
ffi.cdef(
    """
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int mprotect(void *addr, size_t len, int prot);
    int munmap(void *addr, size_t length);
    long sysconf(int name);
    int *__errno_location(void);
    """
)
libc: Any = ffi.dlopen(None)


def address_of(buf: Any) -> int:
    """Address of a cffi buffer or pointer as an int."""
    return int(ffi.cast("uintptr_t", buf))
