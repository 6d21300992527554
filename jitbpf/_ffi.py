"""The one cffi ``FFI`` instance and the libc functions jitbpf calls (declared once, typed).

When the native library is already built, its own FFI and functions are used: they were compiled
from the same declarations, so nothing is parsed at start-up (parsing C declarations with cffi
was most of the time a short-lived process such as the conformance plugin spent starting).
Otherwise the declarations are parsed here and libc is opened in ABI mode.
"""

from __future__ import annotations

from typing import Any

from jitbpf._native.build import JIT_HEADER, LIBC_DECLARATIONS, built_path, header_declarations, load


def _open() -> tuple[Any, Any]:
    """``(ffi, libc)``: the compiled library's when it is built and loads, else parsed here."""
    path = built_path()
    if path is not None:
        try:
            return load(path)
        except (ImportError, OSError):  # a stale or foreign build: parse the declarations instead
            pass
    import cffi

    parsed = cffi.FFI()
    parsed.cdef(LIBC_DECLARATIONS)
    # The JIT's native data (regions, the run context, the call frame): declared in the native
    # library's header, so that C and Python share one declaration.
    parsed.cdef(header_declarations(JIT_HEADER))
    return parsed, parsed.dlopen(None)


ffi, libc = _open()
# Finalizers unmap memory, and may run inside cffi while this thread holds the FFI's lock (which
# is not reentrant): resolving a dlopen'ed function or parsing a type name takes that lock. So
# what they call is resolved here, once, and they cast with a type object rather than a name.
munmap: Any = libc.munmap
VOID_P: Any = ffi.typeof("void *")


def address_of(buf: Any) -> int:
    """Address of a cffi buffer or pointer as an int."""
    return int(ffi.cast("uintptr_t", buf))
