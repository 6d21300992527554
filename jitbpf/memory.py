"""The memory a program may touch during one run: a list of regions at real addresses.

Both engines use real host addresses (the JIT has to), so a pointer is the same number in the
interpreter and in JIT code, and helpers written in Python read and write program memory
through the same bounds-checked ``MemoryMap`` whichever engine called them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jitbpf._ffi import address_of, ffi
from jitbpf.errors import ExecutionError, operand_text, out_of_bounds
from jitbpf.isa import SKF_LL_OFF, SKF_NET_OFF, Kind, Program

_UNSIGNED = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}


class Span(Protocol):
    """A region of a run as the access errors describe it (a Region, or the JIT's view of one)."""

    @property
    def base(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def name(self) -> str: ...


@dataclass(slots=True)
class Region:
    """A span of host memory a program may access: [base, base + size)."""

    base: int  # host address of the first byte
    size: int  # length in bytes
    view: memoryview  # the bytes, as a (possibly read-only) memoryview
    writable: bool  # stores allowed
    name: str  # shown in errors: "mem", "stack", "map NAME", "ctx", "packet"

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True, slots=True)
class LegacyPacket:
    """The packet LD_ABS/LD_IND read, where the run's helpers leave it: at ``bounds`` two uint64
    words (its first byte's address, one past its last), at ``net`` a uint32 (its network
    header's offset from the first byte; 0: no link-layer header before it). Packet runners
    point them into their native run state, so that a helper moving the packet moves what the
    loads see, as in the kernel (whose loads read the skb at each one)."""

    bounds: int
    net: int
    keep: Any = None  # what holds the words alive

    @classmethod
    def fixed(cls, region: Region) -> LegacyPacket:
        """A packet no helper moves: ``region``, with no link-layer header before it."""
        words = ffi.new("uint64_t[3]", [region.base, region.end, 0])
        address = int(ffi.cast("uintptr_t", words))
        return cls(address, address + 16, words)

    def current(self) -> tuple[int, int, int]:
        """(first byte's address, length, network header's offset) as they are now."""
        bounds = ffi.cast("uint64_t *", self.bounds)
        data = int(bounds[0])
        return data, int(bounds[1]) - data, int(ffi.cast("uint32_t *", self.net)[0])


PacketSource = Region | LegacyPacket  # what legacy packet loads read (a Region: a packet no helper moves)


def legacy_offset(offset: int, net: int) -> int:
    """Where a legacy packet load at ``offset`` (a signed 32-bit number) starts, from the packet's
    first byte, when its network header is ``net`` bytes in (0: it has no link-layer header
    before it); -1 where it reads nothing (the kernel's bpf_internal_load_pointer_neg_helper)."""
    if offset >= 0:
        return offset
    if offset >= SKF_NET_OFF:
        return net + offset - SKF_NET_OFF
    if offset >= SKF_LL_OFF and net:
        return offset - SKF_LL_OFF
    return -1


def region_of(buf: Any, name: str, *, writable: bool = True) -> tuple[Region, Any]:
    """A Region over a writable Python buffer or cffi buffer; also returns the object that keeps
    its address pinned (hold it for as long as the region is in use)."""
    if isinstance(buf, ffi.CData):
        size = ffi.sizeof(buf)
        pin = buf
        view = memoryview(ffi.buffer(buf)).cast("B")
    else:
        view = memoryview(buf).cast("B")
        size = view.nbytes
        if size == 0:
            return Region(0, 0, view, writable, name), None
        pin = ffi.from_buffer("uint8_t[]", view, require_writable=not view.readonly)
        writable = writable and not view.readonly
    return Region(address_of(pin), size, view, writable, name), pin


class MemoryMap:
    """The regions of one run, with bounds-checked reads and writes by address.

    Helpers written in Python use ``read``/``write``/``read_cstring`` to follow pointers the
    program passes them; an address outside every region raises ``ExecutionError``.
    """

    __slots__ = ("_more", "regions")

    def __init__(self, regions: list[Region], more: Callable[[], Sequence[Region]] | None = None) -> None:
        self.regions = [r for r in regions if r.size]
        # Regions that may appear during the run (the values of a map that another thread put
        # into an outer map after the run began, which the run may look up): asked on a miss.
        self._more = more

    def find(self, addr: int, size: int) -> Region | None:
        """The region holding all of [addr, addr + size), or None."""
        for r in self.regions:
            if r.base <= addr and addr + size <= r.base + r.size:
                return r
        return None if self._more is None else self._find_more(addr, size)

    def _find_more(self, addr: int, size: int) -> Region | None:
        known = {r.base for r in self.regions}
        added = [r for r in self._more() if r.size and r.base not in known] if self._more is not None else []
        self.regions.extend(added)
        for r in added:
            if r.base <= addr and addr + size <= r.base + r.size:
                return r
        return None

    def _region(self, addr: int, size: int, what: str, pc: int | None, write: bool) -> Region:
        r = self.find(addr, size)
        if r is None or (write and not r.writable):
            raise out_of_bounds(what, size, addr, self.regions, pc=pc, read_only=r is not None)
        return r

    def load(self, addr: int, size: int, pc: int | None = None) -> int:
        """Load an unsigned little-endian integer of ``size`` bytes."""
        r = self._region(addr, size, "load", pc, False)
        return int(_UNSIGNED[size].unpack_from(r.view, addr - r.base)[0])

    def probe_load(self, addr: int, size: int, pc: int | None = None) -> int:
        """A probe load (the kernel's BPF_PROBE_MEM): as ``load``, but memory no region holds reads as 0."""
        r = self.find(addr, size)
        if r is None:
            return 0
        return int(_UNSIGNED[size].unpack_from(r.view, addr - r.base)[0])

    def store(self, addr: int, size: int, value: int, pc: int | None = None) -> None:
        """Store the low ``size`` bytes of ``value``, little-endian."""
        r = self._region(addr, size, "store", pc, True)
        _UNSIGNED[size].pack_into(r.view, addr - r.base, value & ((1 << (8 * size)) - 1))

    def read(self, addr: int, size: int) -> bytes:
        """Copy ``size`` bytes starting at ``addr``."""
        if size == 0:
            return b""
        r = self._region(addr, size, "read", None, False)
        return bytes(r.view[addr - r.base : addr - r.base + size])

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Overwrite program memory at ``addr`` with ``data``."""
        if not len(data):
            return
        r = self._region(addr, len(data), "write", None, True)
        r.view[addr - r.base : addr - r.base + len(data)] = data

    def view(self, addr: int, size: int, *, writable: bool = False) -> memoryview:
        """A memoryview of program memory (valid only during the helper call)."""
        r = self._region(addr, size, "access", None, writable)
        return r.view[addr - r.base : addr - r.base + size]

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """Read a NUL-terminated string (without the NUL), at most ``limit`` bytes."""
        r = self._region(addr, 1, "read", None, False)
        start = addr - r.base
        chunk = bytes(r.view[start : min(r.size, start + limit)])
        nul = chunk.find(b"\0")
        if nul < 0:
            raise ExecutionError(f"unterminated string at address {addr:#x}", address=addr)
        return chunk[:nul]


def access_operand(program: Program, pc: int) -> str:
    """The base register and offset of the memory access at ``pc`` ("r1+4"), or "" if none."""
    insn, info = program.slots[pc], program.infos[pc]
    if insn is None or info is None:
        return ""
    if info.kind in (Kind.LDX, Kind.LDXSX):
        return operand_text(insn.src, insn.off)
    if info.kind in (Kind.ST, Kind.STX, Kind.ATOMIC):
        return operand_text(insn.dst, insn.off)
    return ""
