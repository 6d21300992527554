"""struct bpf_dynptr: a pointer with its size, kept on the program's stack, over memory a helper
bounds-checks at each use (a map value's, or a ring buffer record's), and the helpers that make,
read, write and release one, with the kernel's results. The 16 bytes are laid out as the kernel's
``struct bpf_dynptr_kern``; the verifier keeps programs from touching them, and each helper checks
them again against the run's memory, so a forged one fails the run instead of reaching memory."""

from __future__ import annotations

import enum
import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jitbpf.errors import ExecutionError
from jitbpf.helpers import Helper
from jitbpf.isa import MASK32, MASK64
from jitbpf.linux.helperids import HelperId as H

if TYPE_CHECKING:
    from jitbpf.memory import MemoryMap

DYNPTR_SIZE = 16  # sizeof(struct bpf_dynptr)
DYNPTR_MAX_SIZE = (1 << 24) - 1  # the largest size a dynptr may have (the kernel's DYNPTR_MAX_SIZE)
_KIND_SHIFT = 28  # the kind sits in bits 28-30 of the size word, read-only in bit 31
_RDONLY = 1 << 31
_LAYOUT = struct.Struct("<QII")  # data, size | kind << 28 | rdonly << 31, offset


class DynptrKind(enum.IntEnum):
    """What a dynptr points into (the kernel's enum bpf_dynptr_type)."""

    INVALID = 0  # none: a NULL dynptr, which every helper refuses
    LOCAL = 1  # memory of the program (bpf_dynptr_from_mem: a map value)
    RINGBUF = 2  # a reserved ring buffer record, which must be submitted or discarded


@dataclass(frozen=True)
class Dynptr:
    """The decoded 16 bytes."""

    data: int  # address of the memory (0: a NULL dynptr)
    size: int  # bytes it covers
    offset: int  # where they start past ``data``
    kind: DynptrKind
    rdonly: bool

    @classmethod
    def decode(cls, raw: bytes) -> Dynptr:
        data, word, offset = _LAYOUT.unpack(raw)
        try:
            kind = DynptrKind(word >> _KIND_SHIFT & 7)
        except ValueError:
            kind = DynptrKind.INVALID
        return cls(data, word & DYNPTR_MAX_SIZE, offset, kind, bool(word & _RDONLY))

    def encode(self) -> bytes:
        return _LAYOUT.pack(self.data, self.size | self.kind << _KIND_SHIFT | (_RDONLY if self.rdonly else 0),
                            self.offset)

    def fits(self, offset: int, length: int) -> bool:
        """The kernel's bpf_dynptr_check_off_len: ``length`` bytes at ``offset`` are inside."""
        return length <= self.size and offset <= self.size - length


NULL_DYNPTR = bytes(DYNPTR_SIZE)


def _err(code: int) -> int:
    return -code & MASK64


# Ring buffer records, as the standard helpers handle them: reserve(map address, size) gives a
# record's address or 0; commit(record, flags, discard) submits or discards one.
Reserve = Callable[[int, int], int]
Commit = Callable[[int, int, bool], None]


def dynptr_helpers(memory: Callable[[], MemoryMap], reserve: Reserve, commit: Commit) -> list[Helper]:
    """bpf_dynptr_from_mem, bpf_ringbuf_{reserve,submit,discard}_dynptr, bpf_dynptr_{read,write,data}."""

    def load(ptr: int, helper: str) -> Dynptr:
        mm = memory()
        if mm.find(ptr, DYNPTR_SIZE) is None:
            raise ExecutionError(f"{helper}: the dynptr at {ptr:#x} is out of bounds", address=ptr)
        return Dynptr.decode(mm.read(ptr, DYNPTR_SIZE))

    def store(ptr: int, raw: bytes, helper: str) -> None:
        region = memory().find(ptr, DYNPTR_SIZE)
        if region is None or not region.writable:
            raise ExecutionError(f"{helper}: the dynptr at {ptr:#x} is not writable memory", address=ptr)
        memory().write(ptr, raw)

    def reach(d: Dynptr, offset: int, length: int, helper: str, *, write: bool) -> int:
        """The address of ``length`` bytes at ``offset`` of the dynptr, checked against the run's
        memory (a dynptr the verifier did not see may point anywhere)."""
        addr = d.data + d.offset + offset
        region = memory().find(addr, length) if length else None
        if length and (region is None or (write and not region.writable)):
            raise ExecutionError(f"{helper}: the dynptr's memory at {addr:#x} ({length} bytes) is not the "
                                 f"program's", address=addr)
        return addr

    def need(addr: int, size: int, helper: str, what: str, *, write: bool) -> None:
        region = memory().find(addr, size) if size else None
        if size and (region is None or (write and not region.writable)):
            raise ExecutionError(f"{helper}: {what} at {addr:#x} ({size} bytes) is out of bounds", address=addr)

    def from_mem(data: int, size: int, flags: int, ptr: int, _r5: int) -> int:
        size &= MASK32
        name = "bpf_dynptr_from_mem"
        if flags:
            store(ptr, NULL_DYNPTR, name)
            return _err(errno.EINVAL)
        if size > DYNPTR_MAX_SIZE:
            store(ptr, NULL_DYNPTR, name)
            return _err(errno.E2BIG)
        need(data, size, name, "data", write=True)
        store(ptr, Dynptr(data, size, 0, DynptrKind.LOCAL, False).encode(), name)
        return 0

    def reserve_dynptr(map_address: int, size: int, flags: int, ptr: int, _r5: int) -> int:
        size &= MASK32
        name = "bpf_ringbuf_reserve_dynptr"
        rc = errno.EINVAL if flags else errno.E2BIG if size > DYNPTR_MAX_SIZE else 0
        record = reserve(map_address, size) if not rc else 0
        if not record:
            store(ptr, NULL_DYNPTR, name)
            return _err(rc or errno.EINVAL)  # a full ring buffer is -EINVAL too, as in the kernel
        store(ptr, Dynptr(record, size, 0, DynptrKind.RINGBUF, False).encode(), name)
        return 0

    def release(discard: bool) -> Callable[[int, int, int, int, int], int]:
        name = f"bpf_ringbuf_{'discard' if discard else 'submit'}_dynptr"

        def fn(ptr: int, flags: int, _r3: int, _r4: int, _r5: int) -> int:
            d = load(ptr, name)
            if not d.data:
                return 0  # a failed reservation: nothing to give back
            if d.kind is not DynptrKind.RINGBUF:
                raise ExecutionError(f"{name}: the dynptr at {ptr:#x} is not a ring buffer record's", address=ptr)
            commit(d.data, flags, discard)
            store(ptr, NULL_DYNPTR, name)
            return 0

        fn.__name__ = name
        return fn

    def read(dst: int, length: int, src: int, offset: int, flags: int) -> int:
        length, offset = length & MASK32, offset & MASK32
        name = "bpf_dynptr_read"
        d = load(src, name)
        if not d.data or flags:
            return _err(errno.EINVAL)
        if not d.fits(offset, length):
            return _err(errno.E2BIG)
        need(dst, length, name, "destination", write=True)
        if length:
            memory().write(dst, memory().read(reach(d, offset, length, name, write=False), length))
        return 0

    def write(dst: int, offset: int, src: int, length: int, flags: int) -> int:
        length, offset = length & MASK32, offset & MASK32
        name = "bpf_dynptr_write"
        d = load(dst, name)
        if not d.data or d.rdonly:
            return _err(errno.EINVAL)
        if not d.fits(offset, length):
            return _err(errno.E2BIG)
        if flags:
            return _err(errno.EINVAL)
        need(src, length, name, "source", write=False)
        if length:
            memory().write(reach(d, offset, length, name, write=True), memory().read(src, length))
        return 0

    def data(ptr: int, offset: int, length: int, _r4: int, _r5: int) -> int:
        length, offset = length & MASK32, offset & MASK32
        d = load(ptr, "bpf_dynptr_data")
        if not d.data or not d.fits(offset, length) or d.rdonly:
            return 0
        return reach(d, offset, length, "bpf_dynptr_data", write=True)

    return [
        Helper(H.DYNPTR_FROM_MEM, "bpf_dynptr_from_mem", from_mem,
               ("value_mem", "size_or_zero", "anything", "new_local_dynptr"), "scalar"),
        Helper(H.RINGBUF_RESERVE_DYNPTR, "bpf_ringbuf_reserve_dynptr", reserve_dynptr,
               ("map", "anything", "anything", "new_ringbuf_dynptr"), "scalar"),
        Helper(H.RINGBUF_SUBMIT_DYNPTR, "bpf_ringbuf_submit_dynptr", release(False),
               ("released_dynptr", "anything"), "void"),
        Helper(H.RINGBUF_DISCARD_DYNPTR, "bpf_ringbuf_discard_dynptr", release(True),
               ("released_dynptr", "anything"), "void"),
        Helper(H.DYNPTR_READ, "bpf_dynptr_read", read,
               ("uninit_mem", "size_or_zero", "dynptr", "anything", "anything"), "scalar"),
        Helper(H.DYNPTR_WRITE, "bpf_dynptr_write", write,
               ("dynptr", "anything", "mem", "size_or_zero", "anything"), "scalar"),
        Helper(H.DYNPTR_DATA, "bpf_dynptr_data", data, ("dynptr", "anything", "alloc_size"), "dynptr_mem_or_null"),
    ]
