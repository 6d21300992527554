"""The one cffi ``FFI`` instance and the libc functions jitbpf calls (declared once, typed)."""

from __future__ import annotations

from typing import Any

import cffi

from jitbpf._native.build import JIT_HEADER, header_declarations

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
# The JIT's native data (regions, the run context, the call frame): declared in the native
# library's header, so that C and both cffi modules share one declaration.
ffi.cdef(header_declarations(JIT_HEADER))
libc: Any = ffi.dlopen(None)
# Finalizers unmap memory, and may run inside cffi while this thread holds the FFI's lock (which
# is not reentrant): resolving a dlopen'ed function or parsing a type name takes that lock. So
# what they call is resolved here, once, and they cast with a type object rather than a name.
munmap: Any = libc.munmap
VOID_P: Any = ffi.typeof("void *")


def address_of(buf: Any) -> int:
    """Address of a cffi buffer or pointer as an int."""
    return int(ffi.cast("uintptr_t", buf))
