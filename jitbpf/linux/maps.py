"""eBPF maps with storage in C memory, shared by Python, both engines and the native helpers."""

from __future__ import annotations

import ctypes
import enum
import errno
import ipaddress
import os
import struct
import threading
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from jitbpf._native import Native, native
from jitbpf.errors import MapError
from jitbpf.memory import Region

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_CURRENT_CPU",
    "BPF_F_INNER_MAP",
    "BPF_F_NO_COMMON_LRU",
    "BPF_F_NO_PREALLOC",
    "BPF_F_RDONLY_PROG",
    "BPF_F_REUSE_STACKID",
    "BPF_F_USER_STACK",
    "BPF_F_WRONLY_PROG",
    "BPF_NOEXIST",
    "Array",
    "ArrayOfMaps",
    "BloomFilter",
    "BpfMap",
    "CgroupArray",
    "CgroupStorage",
    "Converter",
    "CpuMap",
    "DevMap",
    "DevMapHash",
    "HashMap",
    "HashOfMaps",
    "InodeStorage",
    "LpmKey",
    "LpmTrie",
    "LruHashMap",
    "LruPerCpuHashMap",
    "MapKeyError",
    "MapShape",
    "MapType",
    "MapUser",
    "PerCpuArray",
    "PerCpuCgroupStorage",
    "PerCpuHashMap",
    "PerfEventArray",
    "ProgramArray",
    "Queue",
    "ReuseportSockArray",
    "RingBuf",
    "SkStorage",
    "SockHash",
    "SockMap",
    "Stack",
    "StackTraceMap",
    "TaskStorage",
    "UpdateFlag",
    "UserRecord",
    "UserRingBuf",
    "XskMap",
    "create_map",
    "current_cpu",
    "num_cpus",
    "set_current_cpu",
]


@runtime_checkable
class MapUser(Protocol):
    """What a map knows of a VM that uses it, or that a program array holds: whether it is
    closed, and how to tell it that the maps it reaches changed. Maps reach no further into the
    VM (the VM that runs a tail call checks its target)."""

    @property
    def closed(self) -> bool: ...

    def regions_changed(self) -> None: ...  # an outer map it uses now holds other inner maps

    def quiescent(self) -> bool: ...  # no run of it is in progress on any thread

    def sweep_when_idle(self, outer: _MapOfMaps) -> None: ...  # outer.sweep() once its runs now in progress end


class MapType(enum.IntEnum):
    """Map types, numbered as the kernel's ``enum bpf_map_type``."""

    HASH = 1  # hash table of fixed-size keys and values
    ARRAY = 2  # u32 index -> value, preallocated and zeroed
    PROG_ARRAY = 3  # u32 index -> program, the targets of bpf_tail_call
    PERF_EVENT_ARRAY = 4  # per-CPU event buffers filled by bpf_perf_event_output
    PERCPU_HASH = 5  # hash table with one value per CPU
    PERCPU_ARRAY = 6  # array with one value per CPU
    STACK_TRACE = 7  # stack id -> call stack addresses, recorded by bpf_get_stackid
    CGROUP_ARRAY = 8  # u32 index -> cgroup, for bpf_current_task_under_cgroup / bpf_skb_under_cgroup
    LRU_HASH = 9  # hash table that evicts its least recently used element when full
    LRU_PERCPU_HASH = 10  # LRU hash table with one value per CPU
    LPM_TRIE = 11  # longest-prefix-match trie (routing tables)
    ARRAY_OF_MAPS = 12  # u32 index -> inner map, which a program's lookup returns
    HASH_OF_MAPS = 13  # key -> inner map, which a program's lookup returns
    DEVMAP = 14  # u32 index -> network device (ifindex), for bpf_redirect_map
    SOCKMAP = 15  # u32 index -> socket
    CPUMAP = 16  # u32 index -> CPU queue (queue size), for bpf_redirect_map
    XSKMAP = 17  # u32 index -> AF_XDP socket, for bpf_redirect_map
    SOCKHASH = 18  # key -> socket
    CGROUP_STORAGE = 19  # (cgroup, attach type) -> value, which bpf_get_local_storage returns
    REUSEPORT_SOCKARRAY = 20  # u32 index -> socket of a SO_REUSEPORT group, for bpf_sk_select_reuseport
    PERCPU_CGROUP_STORAGE = 21  # CGROUP_STORAGE with one value per CPU
    QUEUE = 22  # FIFO of values
    SK_STORAGE = 24  # socket -> value, created by bpf_sk_storage_get
    DEVMAP_HASH = 25  # u32 key -> network device (ifindex), for bpf_redirect_map
    STACK = 23  # LIFO of values
    RINGBUF = 27  # multi-producer ring buffer of variable-size records
    INODE_STORAGE = 28  # inode -> value, created by bpf_inode_storage_get
    TASK_STORAGE = 29  # task -> value, created by bpf_task_storage_get
    BLOOM_FILTER = 30  # set membership with false positives: push adds, peek tests
    USER_RINGBUF = 31  # ring buffer that user space produces into and programs drain


class UpdateFlag(enum.IntEnum):
    """The ``flags`` of an update: when it may create or replace an element."""

    ANY = 0  # create or replace
    NOEXIST = 1  # create only (EEXIST if the key exists)
    EXIST = 2  # replace only (ENOENT if the key is missing)


BPF_ANY = UpdateFlag.ANY
BPF_NOEXIST = UpdateFlag.NOEXIST
BPF_EXIST = UpdateFlag.EXIST
BPF_F_NO_PREALLOC = 1 << 0  # accepted (storage is always preallocated here)
BPF_F_NO_COMMON_LRU = 1 << 1  # LRU maps: accepted (one exact LRU order either way)
BPF_F_RDONLY_PROG = 1 << 7  # programs may read the values but not write them
BPF_F_WRONLY_PROG = 1 << 8  # programs may write the values but not read them
BPF_F_INNER_MAP = 1 << 12  # an inner map template: inner maps of any max_entries fit
BPF_F_CURRENT_CPU = 0xFFFF_FFFF  # perf_event_output: the ring of the calling CPU
RING_HEADER = 8  # bytes before each ring buffer record: its length and flags, its page offset

# Types whose values programs reach through pointers: they contribute a memory region.
_POINTER_TYPES = frozenset({MapType.HASH, MapType.ARRAY, MapType.PERCPU_HASH, MapType.PERCPU_ARRAY,
                            MapType.LRU_HASH, MapType.LRU_PERCPU_HASH, MapType.LPM_TRIE, MapType.RINGBUF,
                            MapType.SK_STORAGE, MapType.INODE_STORAGE, MapType.TASK_STORAGE,
                            MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE, MapType.USER_RINGBUF})

_PERCPU_TYPES = frozenset({MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
                           MapType.PERCPU_CGROUP_STORAGE})  # one value per CPU
MAP_OF_MAPS_TYPES = frozenset({MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})  # values are inner maps
SOCKET_MAP_TYPES = frozenset({MapType.SOCKMAP, MapType.SOCKHASH})  # values are sockets
CGROUP_STORAGE_TYPES = frozenset({MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE})
# The helpers each map type may be given (the kernel's map-to-helper compatibility; by helper
# id, as maps sit below the helper layer); types not listed go to any helper that takes them.
# bpf_map_lookup_elem (1) is the only way a program reaches an outer map's inner maps, and
# bpf_get_local_storage (81) the only way to cgroup storage.
_LOOKUP, _UPDATE, _DELETE = 1, 2, 3
MAP_WRITE_HELPERS = frozenset({_UPDATE, _DELETE})  # bpf_map_update_elem, bpf_map_delete_elem
_PUSH, _POP, _PEEK = 87, 88, 89
HELPERS_OF_TYPE: dict[MapType, frozenset[int]] = {
    MapType.PROG_ARRAY: frozenset({12}),  # tail_call
    # perf_event_read, perf_event_output, perf_event_read_value, skb_output, xdp_output
    MapType.PERF_EVENT_ARRAY: frozenset({22, 25, 55, 111, 121}),
    # ringbuf_output, _reserve, _submit, _discard, _query and the dynptr forms
    MapType.RINGBUF: frozenset({130, 131, 132, 133, 134, 198, 199, 200}),
    MapType.STACK_TRACE: frozenset({27}),  # get_stackid
    MapType.CGROUP_ARRAY: frozenset({33, 37}),  # skb_under_cgroup, current_task_under_cgroup
    MapType.ARRAY_OF_MAPS: frozenset({_LOOKUP}),
    MapType.HASH_OF_MAPS: frozenset({_LOOKUP}),
    MapType.CGROUP_STORAGE: frozenset({81}),
    MapType.PERCPU_CGROUP_STORAGE: frozenset({81}),
    MapType.DEVMAP: frozenset({51, _LOOKUP}),  # redirect_map
    MapType.DEVMAP_HASH: frozenset({51, _LOOKUP}),
    MapType.CPUMAP: frozenset({51}),
    MapType.XSKMAP: frozenset({51, _LOOKUP}),
    # sk_redirect_map, sock_map_update, msg_redirect_map, sk_select_reuseport
    MapType.SOCKMAP: frozenset({52, 53, 60, 82, _LOOKUP, _UPDATE, _DELETE}),
    # sock_hash_update, msg_redirect_hash, sk_redirect_hash, sk_select_reuseport
    MapType.SOCKHASH: frozenset({70, 71, 72, 82, _LOOKUP, _UPDATE, _DELETE}),
    MapType.REUSEPORT_SOCKARRAY: frozenset({82}),  # sk_select_reuseport
    MapType.QUEUE: frozenset({_PUSH, _POP, _PEEK}),
    MapType.STACK: frozenset({_PUSH, _POP, _PEEK}),
    MapType.BLOOM_FILTER: frozenset({_PUSH, _PEEK}),
    MapType.SK_STORAGE: frozenset({107, 108, 194}),  # sk_storage_get, _delete, kptr_xchg
    MapType.INODE_STORAGE: frozenset({145, 146, 194}),
    MapType.TASK_STORAGE: frozenset({156, 157, 194}),
    MapType.USER_RINGBUF: frozenset({209}),  # user_ringbuf_drain
}

# The map types each helper takes, the other way round (by helper id): a tail call needs a
# PROG_ARRAY, bpf_sock_map_update a SOCKMAP, ...
_PERCPU_LOOKUP = frozenset({MapType.PERCPU_ARRAY, MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH})
TYPES_OF_HELPER: dict[int, frozenset[MapType]] = {
    12: frozenset({MapType.PROG_ARRAY}),
    **{h: frozenset({MapType.PERF_EVENT_ARRAY}) for h in (22, 25, 55, 111, 121)},
    **{h: frozenset({MapType.RINGBUF}) for h in (130, 131, 134, 198)},
    209: frozenset({MapType.USER_RINGBUF}),
    27: frozenset({MapType.STACK_TRACE}),
    33: frozenset({MapType.CGROUP_ARRAY}),
    37: frozenset({MapType.CGROUP_ARRAY}),
    51: frozenset({MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP, MapType.XSKMAP}),
    **{h: frozenset({MapType.SOCKMAP}) for h in (52, 53, 60)},
    **{h: frozenset({MapType.SOCKHASH}) for h in (70, 71, 72)},
    82: frozenset({MapType.REUSEPORT_SOCKARRAY, MapType.SOCKMAP, MapType.SOCKHASH}),
    _PUSH: frozenset({MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER}),
    _POP: frozenset({MapType.QUEUE, MapType.STACK}),
    _PEEK: frozenset({MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER}),
    195: _PERCPU_LOOKUP,  # map_lookup_percpu_elem
    107: frozenset({MapType.SK_STORAGE}),
    108: frozenset({MapType.SK_STORAGE}),
    145: frozenset({MapType.INODE_STORAGE}),
    146: frozenset({MapType.INODE_STORAGE}),
    156: frozenset({MapType.TASK_STORAGE}),
    157: frozenset({MapType.TASK_STORAGE}),
    81: frozenset({MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE}),
}

Converter = Any  # None, int, bytes, a ctypes type, a struct format string, or a callable (events)


class MapKeyError(MapError, KeyError):
    """A missing key (ENOENT): a ``MapError`` that ``dict``-style code can catch as ``KeyError``."""

    def __str__(self) -> str:
        return self.message


# What each error means for a map operation (the kernel's codes).
_MEANING = {
    errno.ENOENT: "no such element",
    errno.E2BIG: "map full or index out of range",
    errno.EEXIST: "element exists",
    errno.EINVAL: "invalid argument (flags, sizes or operation)",
    errno.ENOSPC: "no space left",
    errno.ENOMEM: "out of memory",
}


def _fail(rc: int, what: str) -> MapError:
    code = -rc
    cls = MapKeyError if code == errno.ENOENT else MapError
    name = errno.errorcode.get(code, str(code))
    return cls(f"{what}: {_MEANING.get(code, os.strerror(code))} ({name})", errno=code)


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise _fail(rc, what)


def _u32(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
        raise MapError(f"{what} must be an unsigned 32-bit integer, not {value!r}", errno=errno.EINVAL)
    return int(value)


def num_cpus() -> int:
    """The CPU count per-CPU maps use (``os.cpu_count()``, fixed at the first map's creation)."""
    return native().num_cpus


def current_cpu() -> int:
    """The calling thread's CPU id (threads get ids round-robin on first use)."""
    return int(native().lib.jb_current_cpu())


def set_current_cpu(cpu: int | None) -> None:
    """Pin the calling thread's CPU id (``None``: get a round-robin id again on next use)."""
    if native().lib.jb_set_current_cpu(-1 if cpu is None else int(cpu)) < 0:
        raise MapError(f"CPU id {cpu} out of range (num_cpus = {num_cpus()})", errno=errno.EINVAL)


# ---------------------------------------------------------------------------------------------
# Conversions


def _size_of(kind: Converter) -> int | None:
    if isinstance(kind, str):
        return struct.calcsize(kind)
    if isinstance(kind, type) and issubclass(kind, ctypes.Structure | ctypes.Union | ctypes.Array):
        return ctypes.sizeof(kind)
    if isinstance(kind, type) and hasattr(kind, "_type_") and hasattr(kind, "from_buffer_copy"):
        return ctypes.sizeof(kind)  # simple ctypes types: c_uint32, ...
    return None


def _buffer_bytes(obj: Any) -> bytes | None:
    try:
        view = memoryview(obj)
    except TypeError:
        return None
    return view.tobytes()


class Codec:
    """Converts keys or values to and from their fixed-size bytes.

    Accepted on input: ints (little-endian, the size of the field), bytes-like objects and ctypes
    instances of exactly that size, and tuples for struct formats. Output is ``kind``: int (the
    default for 1, 2, 4 and 8 bytes), bytes (the default otherwise), a ctypes type, or a struct
    format (a tuple, or the single value of one-field formats).
    """

    __slots__ = ("_struct", "kind", "signed", "size", "what")

    def __init__(self, size: int, kind: Converter, what: str, *, signed: bool = True) -> None:
        self.size, self.kind, self.what = size, kind, what
        self.signed = signed  # negative ints accepted (two's complement); keys of hash maps are not
        self._struct = struct.Struct(kind) if isinstance(kind, str) else None
        expected = _size_of(kind)
        if expected is not None and expected != size:
            raise MapError(f"{what} type {kind!r} has {expected} bytes, the map's {what}s have {size}",
                           errno=errno.EINVAL)

    def __reduce__(self) -> tuple[Any, ...]:
        return _codec, (self.size, self.kind, self.what, self.signed)

    def encode(self, obj: Any) -> bytes:
        if self._struct is not None and isinstance(obj, tuple):
            return self._struct.pack(*obj)
        if isinstance(obj, int):
            if self._struct is not None:
                return self._struct.pack(obj)
            if obj < 0 and not self.signed:
                raise MapError(f"{self.what} {obj} is negative: the map's {self.what}s are unsigned {self.size}-byte "
                               "numbers (give bytes, or a struct format such as '<i', for signed keys)",
                               errno=errno.E2BIG)
            try:
                return obj.to_bytes(self.size, "little", signed=obj < 0)
            except OverflowError:
                raise MapError(f"{self.what} {obj} does not fit in {self.size} bytes", errno=errno.E2BIG) from None
        data = _buffer_bytes(obj)
        if data is None:
            raise TypeError(f"cannot use {type(obj).__name__} as a map {self.what}")
        if len(data) != self.size:
            raise MapError(f"{self.what} has {len(data)} bytes, the map's {self.what}s have {self.size}",
                           errno=errno.EINVAL)
        return data

    def decode(self, data: bytes) -> Any:
        kind = self.kind
        if kind is None:
            return int.from_bytes(data, "little") if self.size in (1, 2, 4, 8) else bytes(data)
        if kind is int:
            return int.from_bytes(data, "little")
        if kind is bytes:
            return bytes(data)
        if self._struct is not None:
            fields = self._struct.unpack(data)
            return fields[0] if len(fields) == 1 else fields
        if hasattr(kind, "from_buffer_copy"):
            value = kind.from_buffer_copy(data)
            return value.value if hasattr(kind, "_type_") and isinstance(kind._type_, str) else value
        return kind(data)


def _decode_event(kind: Converter, data: bytes) -> Any:
    """An event record as ``kind``: bytes by default, a ctypes structure, a struct tuple, a callable."""
    if kind is None or kind is bytes:
        return data
    if isinstance(kind, str):
        size = struct.calcsize(kind)
        fields = struct.unpack(kind, data[:size].ljust(size, b"\0"))
        return fields[0] if len(fields) == 1 else fields
    if hasattr(kind, "from_buffer_copy"):
        size = ctypes.sizeof(kind)
        return kind.from_buffer_copy(data[:size].ljust(size, b"\0"))
    return kind(data)


# ---------------------------------------------------------------------------------------------
# The base class


def _codec(size: int, kind: Converter, what: str, signed: bool) -> Codec:
    """A Codec rebuilt from its arguments (its struct is not picklable)."""
    return Codec(size, kind, what, signed=signed)


class BpfMap:
    """One map: its C storage, its shape, its name and the handle bytecode refers to it by.

    ``address`` is the address of the C map structure: what ``lddw rX, map:NAME`` loads and what
    helpers receive. Values live in one preallocated slab; ``regions()`` lists the memory programs
    may reach through pointers that helpers return (lookups, ring buffer reservations).
    """

    map_type: MapType  # the kernel's type number
    _TYPE: ClassVar[MapType]

    def __init__(self, map_type: MapType, key_size: int, value_size: int, max_entries: int, flags: int = 0,
                 name: str = "", *, aux: int = 0) -> None:
        self._nat: Native = native()
        ffi, lib = self._nat.ffi, self._nat.lib
        err = ffi.new("int *")
        ptr = lib.jb_map_create(int(map_type), _u32(key_size, "key_size"), _u32(value_size, "value_size"),
                                _u32(max_entries, "max_entries"), _u32(flags, "flags"), aux, err)
        if ptr == ffi.NULL:
            raise _fail(err[0], f"cannot create {map_type.name} map {name!r} (key_size={key_size}, "
                                f"value_size={value_size}, max_entries={max_entries})")
        self._ptr: Any = ffi.gc(ptr, lib.jb_map_free)
        self.map_type = map_type
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.handle: int | None = None  # set by the first VM.add_map, kept by later ones
        # Where a value holds its struct bpf_spin_lock (from the map's BTF; set it for maps made
        # here), or None: bpf_spin_lock takes only that field, and loads and stores may not touch it.
        self.spin_lock_off: int | None = None
        self.timer_off: int | None = None  # the same for its struct bpf_timer (bpf_timer_* take only that)
        self.address = int(ffi.cast("uintptr_t", ptr))
        self.num_cpus = int(lib.jb_map_num_cpus(ptr))  # values per element: 1, or num_cpus()
        self._stride = (value_size + 7) & ~7
        self._closed = False
        self._freed = False
        # The VMs this map was added to: its storage is freed only once none of them is open
        # (their code holds its address, their runs its values).
        self._users: weakref.WeakSet[MapUser] = weakref.WeakSet()
        # The outer maps holding this one (ArrayOfMaps, HashOfMaps): their values hold its
        # address, so it is not freed while any of them holds it.
        self._holders: weakref.WeakSet[BpfMap] = weakref.WeakSet()
        # Outer maps that let go of this one while runs that may have looked it up were in
        # progress: not freed before those end (as the kernel's RCU grace period).
        self._grace = 0
        self._regions = self._make_regions()

    def _make_regions(self) -> list[Region]:
        ffi, lib = self._nat.ffi, self._nat.lib
        size = ffi.new("uint64_t *")
        if self.map_type not in _POINTER_TYPES or lib.jb_map_values(self._ptr, size) == ffi.NULL or size[0] == 0:
            return []
        # The values' memory is this view's: it goes when the last view of it does (views given
        # out, map_regions() of VMs), never under a view that outlived the map.
        free = lib.jb_map_values_free  # resolved now: a destructor must not enter cffi's parser
        base = ffi.gc(lib.jb_map_give_values(self._ptr, size), free)
        view = memoryview(ffi.buffer(base, size[0])).cast("B")
        writable = not self.flags & BPF_F_RDONLY_PROG
        return [Region(int(ffi.cast("uintptr_t", base)), int(size[0]), view, writable, f"map {self.name}")]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its shape and elements (see ``jitbpf.pickling``)."""
        from jitbpf.pickling import reduce_map

        return reduce_map(self)

    # -- identity: two maps are equal only if they are the same map ----------------------------

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} {self.map_type.name} key_size={self.key_size} "
                f"value_size={self.value_size} max_entries={self.max_entries}>")

    # -- layout --------------------------------------------------------------------------------

    def regions(self) -> list[Region]:
        """The memory programs may access through pointers into this map (fixed for its life)."""
        return list(self._regions)

    def value_address(self, offset: int = 0) -> int:
        """Address of value 0 plus ``offset``: global data (``.data``, ``.bss``, ``.rodata``) lives in
        single-element arrays, and ``lddw`` with MAP_VALUE loads this."""
        if self.map_type is not MapType.ARRAY:
            raise MapError(f"direct value access needs an ARRAY map, {self.name!r} is {self.map_type.name}",
                           errno=errno.EINVAL)
        if not 0 <= offset < self.value_size:
            raise MapError(f"offset {offset} outside the {self.value_size}-byte value of {self.name!r}",
                           errno=errno.EINVAL)
        return self._storage().base + offset

    def _storage(self) -> Region:
        """The first region of the map's memory (MapError once that is freed: closed, and no
        VM uses it)."""
        if self._freed:
            raise MapError(f"map {self.name!r} is closed", errno=errno.EBADF)
        return self._regions[0]

    @property
    def ptr(self) -> Any:
        """The C map (a cffi pointer of the native library's FFI). A map closed for Python is
        still the programs' while a run of a VM using it is in progress (their helpers' too)."""
        if self._closed and (self._freed or not self._in_a_run()):
            raise MapError(f"map {self.name!r} is closed", errno=errno.EBADF)
        return self._ptr

    def _in_a_run(self) -> bool:
        """Whether a run of a VM that reaches this map (directly, or through an outer map) is in
        progress on some thread."""
        return any(not vm.quiescent() for vm in list(self._users)) \
            or any(outer._in_a_run() for outer in list(self._holders))

    def close(self) -> None:
        """Close the map for Python, and free its C storage once no open VM uses it (as the
        kernel keeps a map its loaded programs hold: they keep running with it until then)."""
        self._closed = True
        self._free_if_unused()

    def use_by(self, vm: MapUser) -> None:
        """Note that ``vm`` uses the map (``VM.add_map``)."""
        if self._closed:
            raise MapError(f"map {self.name!r} is closed", errno=errno.EBADF)
        self._users.add(vm)

    def unuse_by(self, vm: MapUser) -> None:
        """``vm`` let go of its maps (closed, and its last run over): it no longer holds the map."""
        self._users.discard(vm)
        self._free_if_unused()

    def _free_if_unused(self) -> None:
        # A VM leaves _users when it lets go of its maps (VM._release), not when close() is
        # called: a run still in progress (close() from a helper, or another thread) keeps using
        # the map, and its value pointers, until it ends.
        if self._closed and not self._freed and not self._grace and not list(self._users) \
                and not any(not outer._freed for outer in list(self._holders)):
            self._freed = True
            self._regions = []
            self._nat.ffi.release(self._ptr)
            self._freed_storage()

    def _freed_storage(self) -> None:
        """The C storage is gone (outer maps let go of their inner maps here)."""

    def reachable_maps(self) -> list[BpfMap]:
        """This map and those programs may reach through it (an outer map's inner maps)."""
        return [self]

    def _changed_reach(self) -> None:
        """The maps reachable through this one changed: the VMs using it redo their bindings."""
        for vm in list(self._users):
            vm.regions_changed()

    def __len__(self) -> int:
        return int(self._nat.lib.jb_map_count(self.ptr))

    # -- byte-level operations -----------------------------------------------------------------

    def _out(self) -> Any:
        return self._nat.ffi.new("uint8_t[]", max(8, self._stride * self.num_cpus))

    def _lookup_raw(self, key: bytes, what: str) -> bytes:
        ffi = self._nat.ffi
        out = self._out()
        _check(self._nat.lib.jb_map_lookup_all(self.ptr, ffi.from_buffer(key), out), what)
        return bytes(ffi.buffer(out))

    def _has_raw(self, key: bytes) -> bool:
        out = self._out()
        return bool(self._nat.lib.jb_map_lookup_all(self.ptr, self._nat.ffi.from_buffer(key), out) == 0)

    def _update_raw(self, key: bytes, value: bytes, flags: int, what: str) -> None:
        ffi = self._nat.ffi
        _check(self._nat.lib.jb_map_update_all(self.ptr, ffi.from_buffer(key), ffi.from_buffer(value),
                                               _u32(int(flags), "flags")), what)

    def _delete_raw(self, key: bytes, what: str) -> None:
        _check(self._nat.lib.jb_map_delete(self.ptr, self._nat.ffi.from_buffer(key)), what)

    def raw_items(self) -> dict[bytes, bytes]:
        """Every element as raw bytes: key -> value (per-CPU maps: each CPU's value, padded to 8
        bytes, CPU after CPU), for comparing maps byte for byte."""
        found: dict[bytes, bytes] = {}
        for key in self._keys_raw():
            out = self._out()
            if self._nat.lib.jb_map_lookup_all(self.ptr, self._nat.ffi.from_buffer(key), out) == 0:
                size = self._stride * self.num_cpus if self.map_type in _PERCPU_TYPES else self.value_size
                found[key] = bytes(self._nat.ffi.buffer(out, size))
        return found

    def _keys_raw(self) -> list[bytes]:
        """Every key, collected first (so deleting while iterating is safe)."""
        ffi, lib = self._nat.ffi, self._nat.lib
        keys: list[bytes] = []
        nxt = ffi.new("uint8_t[]", max(self.key_size, 4))
        prev: Any = ffi.NULL
        while lib.jb_map_get_next_key(self.ptr, prev, nxt) == 0:
            key = bytes(ffi.buffer(nxt, self.key_size))
            keys.append(key)
            prev = ffi.from_buffer(key)
        return keys


# ---------------------------------------------------------------------------------------------
# Hash maps and arrays


class HashMap(BpfMap, MutableMapping[Any, Any]):
    """``BPF_MAP_TYPE_HASH`` as a Python mapping (aya's ``HashMap``).

    >>> blocked = HashMap(key_size=4, value_size=1, max_entries=1024, name="BLOCKED_IPS")
    >>> blocked.insert(0xC0A80001, 1)
    >>> 0xC0A80001 in blocked
    True
    """

    _TYPE = MapType.HASH

    def __init__(self, *, key_size: int | None = None, value_size: int | None = None, max_entries: int = 1024,
                 flags: int = 0, name: str = "", key_type: Converter = None, value_type: Converter = None) -> None:
        ks = key_size if key_size is not None else _size_of(key_type) or 4
        vs = value_size if value_size is not None else _size_of(value_type) or 4
        super().__init__(self._TYPE, ks, vs, max_entries, flags, name)
        self._keys = Codec(ks, key_type, "key", signed=False)  # -1 must not quietly become 0xffffffff
        self._values = Codec(vs, value_type, "value")

    def _encode_value(self, value: Any) -> bytes:
        return self._values.encode(value)

    def _decode_value(self, raw: bytes) -> Any:
        return self._values.decode(raw[: self.value_size])

    def __getitem__(self, key: Any) -> Any:
        return self._decode_value(self._lookup_raw(self._keys.encode(key), f"lookup of {key!r} in {self.name!r}"))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.insert(key, value)

    def __delitem__(self, key: Any) -> None:
        self._delete_raw(self._keys.encode(key), f"delete of {key!r} from {self.name!r}")

    def __contains__(self, key: object) -> bool:
        return self._has_raw(self._keys.encode(key))

    def __iter__(self) -> Iterator[Any]:
        return iter([self._keys.decode(k) for k in self._keys_raw()])

    def __len__(self) -> int:
        return BpfMap.__len__(self)

    def insert(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Create or replace as ``flags`` says (BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        self._update_raw(self._keys.encode(key), self._encode_value(value), flags,
                         f"update of {key!r} in {self.name!r}")

    def remove(self, key: Any) -> None:
        """Delete ``key`` (MapKeyError if it is missing)."""
        del self[key]


class PerCpuHashMap(HashMap):
    """``BPF_MAP_TYPE_PERCPU_HASH``: ``m[key]`` is a list with one value per CPU.

    Assign a list (one value per CPU) or a single value (stored for every CPU).
    """

    _TYPE = MapType.PERCPU_HASH

    def _encode_value(self, value: Any) -> bytes:
        return _encode_percpu(self, self._values, value)

    def _decode_value(self, raw: bytes) -> list[Any]:
        return _decode_percpu(self, self._values, raw)


class LruHashMap(HashMap):
    """``BPF_MAP_TYPE_LRU_HASH``: a ``HashMap`` that, when full, makes room for a new key by
    evicting the least recently used element instead of failing with E2BIG.

    A use is an update (from Python or a program) or a program's lookup; Python's reads are not
    uses, as the kernel's syscall lookups are not. jitbpf keeps the exact order; the kernel's is
    approximate (reference bits and per-CPU free lists), so it may evict another old element, or
    evict before ``max_entries`` elements are stored. ``BPF_F_NO_COMMON_LRU`` is accepted.
    """

    _TYPE = MapType.LRU_HASH


class LruPerCpuHashMap(PerCpuHashMap):
    """``BPF_MAP_TYPE_LRU_PERCPU_HASH``: a ``PerCpuHashMap`` with ``LruHashMap``'s eviction."""

    _TYPE = MapType.LRU_PERCPU_HASH


def _encode_percpu(m: BpfMap, codec: Codec, value: Any) -> bytes:
    values = value if isinstance(value, list) else [value] * m.num_cpus
    if len(values) != m.num_cpus:
        raise MapError(f"a per-CPU value needs {m.num_cpus} values, got {len(values)}", errno=errno.EINVAL)
    pad = bytes(m._stride - m.value_size)
    return b"".join(codec.encode(v) + pad for v in values)


def _decode_percpu(m: BpfMap, codec: Codec, raw: bytes) -> list[Any]:
    stride = m._stride
    return [codec.decode(raw[c * stride : c * stride + m.value_size]) for c in range(m.num_cpus)]


class Array(BpfMap):
    """``BPF_MAP_TYPE_ARRAY``: ``max_entries`` preallocated, zeroed values indexed by u32.

    ``a[i]``/``a.get(i)`` read, ``a[i] = v``/``a.set(i, v)`` write; ``view(i)`` is a live
    memoryview of value ``i`` (the same bytes programs change through lookup pointers).
    """

    _TYPE = MapType.ARRAY

    def __init__(self, *, value_size: int | None = None, max_entries: int = 1024, flags: int = 0, name: str = "",
                 value_type: Converter = None, key_size: int = 4) -> None:
        vs = value_size if value_size is not None else _size_of(value_type) or 4
        super().__init__(self._TYPE, key_size, vs, max_entries, flags, name)
        self._values = Codec(vs, value_type, "value")
        self.frozen = False  # see freeze()
        self.freeze_on_load = False  # frozen before the verifier runs (a loader's read-only global data)

    def freeze(self) -> None:
        """Forbid writes from Python from now on (``BPF_MAP_FREEZE``): the verifier then takes
        a read-only (``BPF_F_RDONLY_PROG``) single-value array's bytes as constants."""
        self.frozen = True

    @staticmethod
    def _key(index: int) -> bytes:
        return _u32(index, "index").to_bytes(4, "little")

    def _decode_value(self, raw: bytes) -> Any:
        return self._values.decode(raw[: self.value_size])

    def _encode_value(self, value: Any) -> bytes:
        return self._values.encode(value)

    def get(self, index: int) -> Any:
        """Value at ``index`` (MapKeyError beyond ``max_entries``)."""
        return self._decode_value(self._lookup_raw(self._key(index), f"lookup of index {index} in {self.name!r}"))

    def set(self, index: int, value: Any, flags: int = BPF_ANY) -> None:
        """Store ``value`` at ``index`` (E2BIG beyond ``max_entries``; BPF_NOEXIST gives EEXIST;
        EPERM once frozen)."""
        if self.frozen:
            raise MapError(f"update of index {index} in {self.name!r}: the map is frozen", errno=errno.EPERM)
        self._update_raw(self._key(index), self._encode_value(value), flags,
                         f"update of index {index} in {self.name!r}")

    def __getitem__(self, index: int) -> Any:
        return self.get(index)

    def __setitem__(self, index: int, value: Any) -> None:
        self.set(index, value)

    def __iter__(self) -> Iterator[Any]:
        return (self.get(i) for i in range(self.max_entries))

    def __len__(self) -> int:
        return self.max_entries

    def __contains__(self, index: object) -> bool:
        """Whether ``index`` is an index of the array (every one always holds a value)."""
        return isinstance(index, int) and 0 <= index < self.max_entries

    def __delitem__(self, index: int) -> None:
        """Zero value ``index``: array elements cannot be removed (the kernel refuses the delete
        with EINVAL), so ``del``, as in bcc, resets the element to its initial zeroes."""
        self.set(index, bytes(self.value_size))

    def nonzero_indices(self) -> Iterator[int]:
        """The indices whose value (on some CPU, for per-CPU arrays) is not all zeroes, found a
        block of values at a time: a large array is scanned without visiting each element."""
        n, stride, mem = self.max_entries, self._stride, self._storage().view
        block = max(1, (1 << 16) // stride)
        zero = bytes(block * stride)
        for start in range(0, n, block):
            end = min(start + block, n)
            spans = [(cpu * n + start) * stride for cpu in range(self.num_cpus)]
            width = (end - start) * stride
            if all(mem[at : at + width] == zero[:width] for at in spans):
                continue
            for i in range(start, end):
                at = [(cpu * n + i) * stride for cpu in range(self.num_cpus)]
                if any(mem[a : a + stride] != zero[:stride] for a in at):
                    yield i

    def view(self, index: int, cpu: int = 0) -> memoryview:
        """The live bytes of value ``index`` (of CPU ``cpu`` for per-CPU arrays); read-only once
        the map is frozen."""
        if not 0 <= index < self.max_entries or not 0 <= cpu < self.num_cpus:
            raise MapError(f"index {index} (cpu {cpu}) out of range", errno=errno.E2BIG)
        start = (cpu * self.max_entries + index) * self._stride
        view = self._storage().view[start : start + self.value_size]
        return view.toreadonly() if self.frozen else view


class PerCpuArray(Array):
    """``BPF_MAP_TYPE_PERCPU_ARRAY``: each element is a list with one value per CPU."""

    _TYPE = MapType.PERCPU_ARRAY

    def _encode_value(self, value: Any) -> bytes:
        return _encode_percpu(self, self._values, value)

    def _decode_value(self, raw: bytes) -> list[Any]:
        return _decode_percpu(self, self._values, raw)


# ---------------------------------------------------------------------------------------------
# LPM trie


@dataclass(frozen=True)
class LpmKey:
    """A key of an LPM trie: the first ``prefix_len`` bits of ``data``, most significant first.

    ``data`` is bytes (network order), an int (written big-endian, so ``0x0A000000`` is 10.0.0.0),
    an ``ipaddress`` address or an address string.
    """

    prefix_len: int  # significant leading bits
    data: Any  # bytes, int, IPv4Address/IPv6Address or str

    @classmethod
    def from_network(cls, network: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> LpmKey:
        """The key of a network such as ``"10.11.0.0/16"``."""
        net = ipaddress.ip_network(network) if isinstance(network, str) else network
        return cls(net.prefixlen, net.network_address.packed)

    def data_bytes(self, size: int) -> bytes:
        data = self.data
        if isinstance(data, str):
            data = ipaddress.ip_address(data)
        if isinstance(data, ipaddress.IPv4Address | ipaddress.IPv6Address):
            data = data.packed
        if isinstance(data, int):
            try:
                return data.to_bytes(size, "big")
            except OverflowError:
                raise MapError(f"LPM data {data:#x} does not fit in {size} bytes", errno=errno.EINVAL) from None
        raw = _buffer_bytes(data)
        if raw is None or len(raw) != size:
            raise MapError(f"LPM data must be {size} bytes, got {data!r}", errno=errno.EINVAL)
        return raw


class LpmTrie(BpfMap, MutableMapping[Any, Any]):
    """``BPF_MAP_TYPE_LPM_TRIE``: keys are ``LpmKey`` (or networks, ``"10.0.0.0/8"``).

    ``t[key]`` is the kernel's lookup: the value of the longest stored prefix matching the first
    ``key.prefix_len`` bits; a bare address means all its bits. Deletion is by exact prefix.
    A full trie fails inserts with ENOSPC, as the kernel.
    """

    _TYPE = MapType.LPM_TRIE

    def __init__(self, *, key_size: int = 8, value_size: int | None = None, max_entries: int = 1024,
                 flags: int = BPF_F_NO_PREALLOC, name: str = "", value_type: Converter = None) -> None:
        vs = value_size if value_size is not None else _size_of(value_type) or 4
        super().__init__(self._TYPE, key_size, vs, max_entries, flags, name)
        self.data_size = key_size - 4
        self._values = Codec(vs, value_type, "value")

    def _key(self, key: Any) -> bytes:
        if isinstance(key, ipaddress.IPv4Network | ipaddress.IPv6Network) or (isinstance(key, str) and "/" in key):
            key = LpmKey.from_network(key)
        lpm: LpmKey = key if isinstance(key, LpmKey) else LpmKey(8 * self.data_size, key)
        return _u32(lpm.prefix_len, "prefix_len").to_bytes(4, "little") + lpm.data_bytes(self.data_size)

    def __getitem__(self, key: Any) -> Any:
        raw = self._lookup_raw(self._key(key), f"lookup of {key!r} in {self.name!r}")
        return self._values.decode(raw[: self.value_size])

    def lookup(self, address: Any) -> Any:
        """The value of the longest prefix containing ``address`` (MapKeyError if none)."""
        return self[address]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.insert(key, value)

    def insert(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Store ``value`` for the prefix ``key`` as ``flags`` says."""
        self._update_raw(self._key(key), self._values.encode(value), flags, f"update of {key!r} in {self.name!r}")

    def __delitem__(self, key: Any) -> None:
        self._delete_raw(self._key(key), f"delete of {key!r} from {self.name!r}")

    def __contains__(self, key: object) -> bool:
        return self._has_raw(self._key(key))

    def __iter__(self) -> Iterator[LpmKey]:
        return iter([LpmKey(int.from_bytes(k[:4], "little"), k[4:]) for k in self._keys_raw()])

    def __len__(self) -> int:
        return BpfMap.__len__(self)


# ---------------------------------------------------------------------------------------------
# Queue and stack


BPF_F_SKIP_FIELD_MASK = 0xFF  # bpf_get_stackid: frames to skip
BPF_F_USER_STACK = 1 << 8  # the user stack instead of the kernel's
BPF_F_FAST_STACK_CMP = 1 << 9  # accepted: stacks are always compared in full here
BPF_F_REUSE_STACKID = 1 << 10  # a different stack with the same id replaces the old one (else EEXIST)
_STACKID_FLAGS = BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID
_GET_STACK_FLAGS = BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK  # build ids (1 << 11) are not known here: EINVAL


def copy_stack(stack: list[int], flags: int, size: int) -> tuple[int, bytes]:
    """``bpf_get_stack`` over ``stack`` (innermost first) into a buffer of ``size`` bytes: the
    result (bytes of addresses copied, or a negative errno) and the buffer's new contents, zero
    past the copy (all zero on an error). Every frame skipped, or none at all, copies 0 bytes."""
    if flags & ~_GET_STACK_FLAGS or size % 8:
        return -errno.EINVAL, bytes(size)
    ips = stack[flags & BPF_F_SKIP_FIELD_MASK :][: size // 8]
    raw = struct.pack(f"<{len(ips)}Q", *(ip & 0xFFFF_FFFF_FFFF_FFFF for ip in ips))
    return len(raw), raw.ljust(size, b"\0")


class StackTraceMap(BpfMap):
    """``BPF_MAP_TYPE_STACK_TRACE``: stack id -> the call stack's addresses (innermost first), as
    ``bpf_get_stackid`` recorded them from the host's stacks (``Host.kernel_stack``,
    ``Host.user_stack``). Python reads and deletes; it cannot store (EINVAL), as the kernel's
    syscall. Ids are a hash of the stack (jitbpf's, not the kernel's) modulo ``max_entries``
    rounded up to a power of two; BPF_F_STACK_BUILD_ID is refused (EINVAL).
    """

    _TYPE = MapType.STACK_TRACE

    def __init__(self, *, max_entries: int = 1024, value_size: int = 127 * 8, name: str = "", key_size: int = 4,
                 flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)
        self.max_depth = value_size // 8
        self.buckets = 1 << (max_entries - 1).bit_length()

    def _key(self, stack_id: int) -> bytes:
        return _u32(stack_id, "stack id").to_bytes(4, "little")

    def __getitem__(self, stack_id: int) -> tuple[int, ...]:
        raw = self._lookup_raw(self._key(stack_id), f"lookup of stack {stack_id} in {self.name!r}")
        ips = struct.unpack(f"<{self.max_depth}Q", raw[: self.value_size])
        depth = len(ips)
        while depth and ips[depth - 1] == 0:  # the kernel pads a short stack with zeroes
            depth -= 1
        return ips[:depth]

    def get(self, stack_id: int) -> tuple[int, ...] | None:
        """The stack recorded under ``stack_id``, or None."""
        return self[stack_id] if self._has_raw(self._key(stack_id)) else None

    def __delitem__(self, stack_id: int) -> None:
        self._delete_raw(self._key(stack_id), f"delete of stack {stack_id} from {self.name!r}")

    def __iter__(self) -> Iterator[int]:
        return iter([int.from_bytes(k, "little") for k in self._keys_raw()])

    def __setitem__(self, stack_id: int, value: object) -> None:
        raise MapError(f"update of stack {stack_id} in {self.name!r}: stacks are recorded by bpf_get_stackid only",
                       errno=errno.EINVAL)

    def record(self, stack: list[int], flags: int) -> int:
        """``bpf_get_stackid`` over ``stack`` (innermost first): its id, or a negative errno."""
        if flags & ~_STACKID_FLAGS:
            return -errno.EINVAL
        ips = stack[flags & BPF_F_SKIP_FIELD_MASK :][: self.max_depth]
        if not ips:
            return -errno.EFAULT  # no stack, or every frame skipped
        raw = struct.pack(f"<{len(ips)}Q", *(ip & 0xFFFF_FFFF_FFFF_FFFF for ip in ips)).ljust(self.value_size, b"\0")
        stack_id = zlib.crc32(raw) & (self.buckets - 1)
        key = self._key(stack_id)
        if self._has_raw(key):
            if self._lookup_raw(key, "lookup")[: self.value_size] == raw:
                return stack_id
            if not flags & BPF_F_REUSE_STACKID:
                return -errno.EEXIST  # another stack holds the id
        self._update_raw(key, raw, BPF_ANY, f"record of stack {stack_id} in {self.name!r}")
        return stack_id


class _QueueStack(BpfMap):
    _TYPE: ClassVar[MapType]

    def __init__(self, *, value_size: int | None = None, max_entries: int = 1024, flags: int = 0, name: str = "",
                 value_type: Converter = None, key_size: int = 0) -> None:
        vs = value_size if value_size is not None else _size_of(value_type) or 4
        super().__init__(self._TYPE, key_size, vs, max_entries, flags, name)
        self._values = Codec(vs, value_type, "value")

    def push(self, value: Any, flags: int = BPF_ANY) -> None:
        """Add ``value``; on a full map, E2BIG, or with BPF_EXIST the oldest value is dropped."""
        data = self._values.encode(value)
        _check(self._nat.lib.jb_map_push(self.ptr, self._nat.ffi.from_buffer(data), _u32(int(flags), "flags")),
               f"push to {self.name!r}")

    def _take(self, remove: bool) -> Any:
        ffi, lib = self._nat.ffi, self._nat.lib
        out = ffi.new("uint8_t[]", self.value_size)
        rc = lib.jb_map_pop(self.ptr, out) if remove else lib.jb_map_peek(self.ptr, out)
        if rc < 0:
            code = -rc
            meaning = "empty" if code == errno.ENOENT else _MEANING.get(code, os.strerror(code))
            raise MapError(f"{'pop' if remove else 'peek'} from {self.name!r}: {meaning}", errno=code)
        return self._values.decode(bytes(ffi.buffer(out)))

    def pop(self) -> Any:
        """Remove and return the next value (MapError with errno ENOENT when empty)."""
        return self._take(True)

    def peek(self) -> Any:
        """The next value, left in place."""
        return self._take(False)


class BloomFilter(BpfMap):
    """``BPF_MAP_TYPE_BLOOM_FILTER``: values are added (``bpf_map_push_elem``, ``add``) and tested
    (``bpf_map_peek_elem``: 0 if maybe present, -ENOENT if surely absent; ``in``), never listed,
    read back or removed (pop: EOPNOTSUPP). ``map_extra`` is the number of hash functions (1 to
    15; 0: 5); the bit array is sized as the kernel's (max_entries * hashes / ln 2, a power of
    two). jitbpf's hash functions are its own, so which absent values test positive (rarely)
    differs from the kernel's.
    """

    _TYPE = MapType.BLOOM_FILTER

    def __init__(self, *, value_size: int | None = None, max_entries: int = 1024, flags: int = 0, name: str = "",
                 value_type: Converter = None, key_size: int = 0, map_extra: int = 0) -> None:
        vs = value_size if value_size is not None else _size_of(value_type) or 4
        super().__init__(self._TYPE, key_size, vs, max_entries, flags, name, aux=_u32(map_extra, "map_extra"))
        self.map_extra = map_extra
        self._values = Codec(vs, value_type, "value")

    def add(self, value: Any, flags: int = BPF_ANY) -> None:
        """Add ``value`` (flags other than BPF_ANY: EINVAL)."""
        data = self._values.encode(value)
        _check(self._nat.lib.jb_map_push(self.ptr, self._nat.ffi.from_buffer(data), _u32(int(flags), "flags")),
               f"add to {self.name!r}")

    def __contains__(self, value: object) -> bool:
        data = bytearray(self._values.encode(value))
        return bool(self._nat.lib.jb_map_peek(self.ptr, self._nat.ffi.from_buffer(data)) == 0)


class Stack(_QueueStack):
    """``BPF_MAP_TYPE_STACK``: ``pop`` returns the value pushed last."""

    _TYPE = MapType.STACK


class Queue(_QueueStack):
    """``BPF_MAP_TYPE_QUEUE``: ``pop`` returns the value pushed first."""

    _TYPE = MapType.QUEUE


# ---------------------------------------------------------------------------------------------
# Event streams


class _EventSource(BpfMap):
    """Reading records out of a perf event array or a ring buffer: at once, blocking, or async."""

    poll_interval = 0.001  # seconds between checks while waiting (the producers never wake us)
    event_type: Converter

    def read_events(self) -> list[Any]:
        """Take the events waiting now (each subclass reads its own storage)."""
        raise TypeError(f"{type(self).__name__} does not say how to read its events")

    def poll(self, timeout: float | None = None) -> list[Any]:
        """Wait up to ``timeout`` seconds (forever if None) for events; return them (maybe [])."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.poll_interval / 8
        while True:
            events = self.read_events()
            if events:
                return events
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, self.poll_interval)

    def __iter__(self) -> Iterator[Any]:
        """The events available now."""
        return iter(self.read_events())

    async def events_async(self, interval: float | None = None) -> AsyncIterator[Any]:
        """Every event, as it arrives (``async for event in ...``); never ends by itself."""
        import asyncio  # here: importing it costs a third of the package's start-up

        while True:
            events = self.read_events()
            if not events:
                await asyncio.sleep(self.poll_interval if interval is None else interval)
                continue
            for event in events:
                yield event

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.events_async()


class PerfEventArray(_EventSource):
    """``BPF_MAP_TYPE_PERF_EVENT_ARRAY``: one event ring per CPU (``buffer_size`` bytes each).

    Programs write with ``bpf_perf_event_output(ctx, map, BPF_F_CURRENT_CPU, data, size)``;
    ``read_events()`` drains every ring (events of one ring stay in order). Records that do not
    fit are dropped and counted in ``lost``. ``event_type`` decodes records (e.g. a ctypes struct).
    """

    _TYPE = MapType.PERF_EVENT_ARRAY

    def __init__(self, *, max_entries: int | None = None, name: str = "", buffer_size: int = 1 << 16,
                 event_type: Converter = None, key_size: int = 4, value_size: int = 4, flags: int = 0) -> None:
        entries = max_entries if max_entries is not None else native().num_cpus
        super().__init__(self._TYPE, key_size, value_size, entries, flags, name, aux=buffer_size)
        self.buffer_size = buffer_size
        self.event_type = event_type
        self._buf = self._nat.ffi.new("uint8_t[]", buffer_size)
        self._read_lock = threading.Lock()

    @property
    def rings(self) -> int:
        """Rings that exist (one per CPU, at most ``max_entries``)."""
        return int(self._nat.lib.jb_perf_rings(self.ptr))

    @property
    def lost(self) -> int:
        """Records dropped so far because a ring was full."""
        return sum(int(self._nat.lib.jb_perf_lost(self.ptr, r)) for r in range(self.rings))

    def read_events(self, cpu: int | None = None) -> list[Any]:
        """Take the events waiting in ring ``cpu`` (all rings if None)."""
        ffi, lib = self._nat.ffi, self._nat.lib
        length = ffi.new("uint32_t *")
        events: list[Any] = []
        with self._read_lock:
            for ring in range(self.rings) if cpu is None else (cpu,):
                while lib.jb_perf_read(self.ptr, ring, self._buf, self.buffer_size, length) == 1:
                    events.append(_decode_event(self.event_type, bytes(ffi.buffer(self._buf, length[0]))))
        return events


class RingBuf(_EventSource):
    """``BPF_MAP_TYPE_RINGBUF``: ``max_entries`` bytes (a power of two, at least 4096) shared by
    every producer; records come out in reservation order once submitted."""

    _TYPE = MapType.RINGBUF

    def __init__(self, *, max_entries: int = 1 << 16, name: str = "", event_type: Converter = None,
                 key_size: int = 0, value_size: int = 0, flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)
        self.event_type = event_type
        self._buf = self._nat.ffi.new("uint8_t[]", max_entries)
        self._read_lock = threading.Lock()

    @property
    def avail_data(self) -> int:
        """Bytes reserved or written and not yet consumed."""
        return int(self._nat.lib.jb_ringbuf_query(self.ptr, 0))

    def read_events(self) -> list[Any]:
        """Take every submitted record (discarded ones are skipped)."""
        ffi, lib = self._nat.ffi, self._nat.lib
        length = ffi.new("uint32_t *")
        events: list[Any] = []
        with self._read_lock:
            while (rc := lib.jb_ringbuf_consume(self.ptr, self._buf, self.max_entries, length)) == 1:
                events.append(_decode_event(self.event_type, bytes(ffi.buffer(self._buf, length[0]))))
        if rc == -errno.EBADMSG:
            # Record headers lie in memory programs can write: a forged one is never followed.
            raise MapError(f"ring buffer {self.name}: corrupted record header at consumer position "
                           f"{int(lib.jb_ringbuf_query(self.ptr, 2))} (overwritten by a program?)")
        return events

    def is_reserved(self, address: int) -> bool:
        """Whether ``address`` is the data of a record reserved and not yet submitted (a ring
        closed for Python that an open VM still uses keeps its records, as the JIT's helpers do)."""
        return not self._freed and bool(self._nat.lib.jb_ringbuf_reserved(self._ptr, address))


class UserRecord:
    """A sample reserved in a ``UserRingBuf``: ``data`` is its memory, to fill before
    ``submit()`` (or ``discard()``), as libbpf's ``user_ring_buffer__reserve`` gives it."""

    __slots__ = ("address", "data", "ring")

    def __init__(self, ring: UserRingBuf, address: int, data: memoryview) -> None:
        self.ring, self.address, self.data = ring, address, data

    def submit(self) -> None:
        """Hand the sample to the programs that drain the ring."""
        self.ring.submit(self)

    def discard(self) -> None:
        """Give the room back: a drain skips the sample."""
        self.ring.discard(self)


class UserRingBuf(BpfMap):
    """``BPF_MAP_TYPE_USER_RINGBUF``: ``max_entries`` bytes (a power of two, at least 4096) that
    Python produces samples into (``reserve``/``submit``, or ``write``) and programs consume with
    ``bpf_user_ringbuf_drain``, which gives each sample to a callback as a dynptr (which it may
    read, write and slice, as the kernel's).
    Samples come out in reservation order once submitted; an unsubmitted one holds back those
    after it, as in the kernel."""

    _TYPE = MapType.USER_RINGBUF

    def __init__(self, *, max_entries: int = 1 << 16, name: str = "", key_size: int = 0, value_size: int = 0,
                 flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)
        self._lock = threading.Lock()

    def reserve(self, size: int) -> UserRecord:
        """Room for a sample of ``size`` bytes (MapError ENOSPC when the ring is full, E2BIG when
        it could never fit)."""
        ffi, lib = self._nat.ffi, self._nat.lib
        if not 0 <= size <= self.max_entries - RING_HEADER:
            raise MapError(f"user ring buffer {self.name}: a {size}-byte sample cannot fit", errno=errno.E2BIG)
        with self._lock:
            sample = lib.jb_user_ringbuf_reserve(self.ptr, size)
        if sample == ffi.NULL:
            raise MapError(f"user ring buffer {self.name} is full", errno=errno.ENOSPC)
        return UserRecord(self, int(ffi.cast("uintptr_t", sample)), memoryview(ffi.buffer(sample, size)).cast("B"))

    def submit(self, record: UserRecord) -> None:
        self._commit(record, False)

    def discard(self, record: UserRecord) -> None:
        self._commit(record, True)

    def write(self, data: bytes) -> None:
        """Reserve, fill and submit one sample."""
        record = self.reserve(len(data))
        record.data[:] = data
        record.submit()

    @property
    def avail_data(self) -> int:
        """Bytes produced (reserved or submitted) and not yet drained."""
        return int(self._nat.lib.jb_map_count(self.ptr))

    def _commit(self, record: UserRecord, discard: bool) -> None:
        ffi, lib = self._nat.ffi, self._nat.lib
        if record.ring is not self or not lib.jb_ringbuf_reserved(self.ptr, record.address):
            raise MapError(f"user ring buffer {self.name}: not a sample reserved here and not yet given",
                           errno=errno.EINVAL)
        with self._lock:
            lib.jb_user_ringbuf_commit(self._ptr, ffi.cast("void *", record.address), int(discard))
        record.data.release()


# ---------------------------------------------------------------------------------------------
# Slot arrays: programs, sockets, devices


class _Slots(BpfMap):
    """An array of optional entries; C keeps a u64 per slot (flag, socket id, ifindex)."""

    def _index(self, index: int) -> bytes:
        return _u32(index, "index").to_bytes(4, "little")

    def _slot(self, index: int) -> int | None:
        out = self._nat.ffi.new("uint64_t *")
        if self._nat.lib.jb_slot_get(self.ptr, _u32(index, "index"), out) < 0:
            return None
        return int(out[0])

    def _store(self, index: int, value: int, flags: int, what: str) -> None:
        self._update_raw(self._index(index), value.to_bytes(8, "little"), flags, what)

    def indices(self) -> list[int]:
        """The indices that hold an entry."""
        return [i for i in range(self.max_entries) if self._slot(i) is not None]


class ProgramArray(_Slots):
    """``BPF_MAP_TYPE_PROG_ARRAY``: index -> VM, the targets of ``bpf_tail_call``."""

    _TYPE = MapType.PROG_ARRAY

    def __init__(self, *, max_entries: int = 32, name: str = "", key_size: int = 4, value_size: int = 4,
                 flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)
        self._programs: dict[int, MapUser] = {}

    def set(self, index: int, program: MapUser) -> None:
        """Install ``program`` (a VM) at ``index`` (E2BIG beyond ``max_entries``)."""
        if not isinstance(program, MapUser):
            raise TypeError(f"the values of {self.name!r} are VMs (the programs tail calls run), "
                            f"not {type(program).__name__}")
        self._store(index, 1, BPF_ANY, f"update of index {index} in {self.name!r}")
        self._programs[index] = program

    def __setitem__(self, index: int, program: MapUser) -> None:
        self.set(index, program)

    def __getitem__(self, index: int) -> MapUser:
        program = self._programs.get(index)
        if program is None:
            raise MapKeyError(f"no program at index {index} of {self.name!r}", errno=errno.ENOENT)
        return program

    def __delitem__(self, index: int) -> None:
        self._delete_raw(self._index(index), f"delete of index {index} from {self.name!r}")
        self._programs.pop(index, None)

    def get(self, index: int) -> MapUser | None:
        """The program at ``index``, or None (what a tail call to it would run)."""
        return self._programs.get(index)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._programs))


class CgroupArray(_Slots):
    """``BPF_MAP_TYPE_CGROUP_ARRAY``: index -> cgroup, which programs test the current task or the
    packet's socket against (``bpf_current_task_under_cgroup``, ``bpf_skb_under_cgroup``).

    A cgroup is its id (the kernel's ``cgroup_id``, the inode number of its directory), where the
    kernel's user space stores a cgroup file descriptor; ``Host.cgroups`` says which cgroups the
    current task is under. Updates take BPF_ANY only (EINVAL otherwise), as every array of file
    descriptors; indices past ``max_entries`` are E2BIG, deleting an empty slot ENOENT.
    """

    _TYPE = MapType.CGROUP_ARRAY

    def __init__(self, *, max_entries: int = 1, name: str = "", key_size: int = 4, value_size: int = 4,
                 flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)

    def insert(self, index: int, cgroup_id: int, flags: int = BPF_ANY) -> None:
        """Store the cgroup ``cgroup_id`` at ``index`` as ``flags`` says."""
        if not isinstance(cgroup_id, int) or not 0 < cgroup_id < 1 << 64:
            raise MapError(f"a cgroup id is a positive 64-bit integer, not {cgroup_id!r}", errno=errno.EBADF)
        self._store(index, cgroup_id, flags, f"update of index {index} in {self.name!r}")

    def __setitem__(self, index: int, cgroup_id: int) -> None:
        self.insert(index, cgroup_id)

    def get(self, index: int) -> int | None:
        """The cgroup id at ``index``, or None."""
        return self._slot(index) if 0 <= index < self.max_entries else None

    def __getitem__(self, index: int) -> int:
        cgroup_id = self.get(index)
        if cgroup_id is None:
            raise MapKeyError(f"no cgroup at index {index} of {self.name!r}", errno=errno.ENOENT)
        return cgroup_id

    def __delitem__(self, index: int) -> None:
        self._delete_raw(self._index(index), f"delete of index {index} from {self.name!r}")


class _SocketIds:
    """Socket objects (any Python object) <-> the ids C stores, with reference counts; ``key``
    says which objects are the same owner (identity by default)."""

    def __init__(self, key: Callable[[object], Hashable] = id) -> None:
        self.key = key
        self.by_id: dict[int, object] = {}
        self.ids: dict[Hashable, int] = {}  # key(obj) -> socket id
        self.refs: dict[int, int] = {}  # socket id -> slots holding it
        self.next_id = 1

    def acquire(self, sock: object) -> int:
        sid = self.ids.get(self.key(sock))
        if sid is None:
            sid, self.next_id = self.next_id, self.next_id + 1
            self.ids[self.key(sock)], self.by_id[sid] = sid, sock
        self.refs[sid] = self.refs.get(sid, 0) + 1
        return sid

    def release(self, sid: int | None) -> None:
        if sid is None or sid not in self.refs:
            return
        self.refs[sid] -= 1
        if self.refs[sid] <= 0:
            del self.refs[sid]
            sock = self.by_id.pop(sid)
            self.ids.pop(self.key(sock), None)


class SockMap(_Slots):
    """``BPF_MAP_TYPE_SOCKMAP``: index -> socket. A socket is any Python object the application
    uses as a handle; redirect helpers report it back."""

    _TYPE = MapType.SOCKMAP

    def __init__(self, *, max_entries: int = 1024, name: str = "", key_size: int = 4, value_size: int = 8,
                 flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)
        self._socks = _SocketIds()
        self._lock = threading.Lock()

    def insert(self, index: int, sock: object, flags: int = BPF_ANY) -> None:
        """Store ``sock`` at ``index`` as ``flags`` says."""
        with self._lock:
            old = self._slot(index) if 0 <= index < self.max_entries else None
            sid = self._socks.acquire(sock)
            try:
                self._store(index, sid, flags, f"update of index {index} in {self.name!r}")
            except MapError:
                self._socks.release(sid)
                raise
            self._socks.release(old)

    def __setitem__(self, index: int, sock: object) -> None:
        self.insert(index, sock)

    def get(self, index: int) -> object | None:
        """The socket at ``index``, or None."""
        sid = self._slot(index) if 0 <= index < self.max_entries else None
        return None if sid is None else self._socks.by_id.get(sid)

    def __getitem__(self, index: int) -> object:
        sock = self.get(index)
        if sock is None:
            raise MapKeyError(f"no socket at index {index} of {self.name!r}", errno=errno.ENOENT)
        return sock

    def __delitem__(self, index: int) -> None:
        with self._lock:
            old = self._slot(index) if 0 <= index < self.max_entries else None
            self._delete_raw(self._index(index), f"delete of index {index} from {self.name!r}")
            self._socks.release(old)


class ReuseportSockArray(SockMap):
    """``BPF_MAP_TYPE_REUSEPORT_SOCKARRAY``: index -> socket of a SO_REUSEPORT group, which an
    sk_reuseport program selects with ``bpf_sk_select_reuseport`` (programs cannot look it up or
    change it)."""

    _TYPE = MapType.REUSEPORT_SOCKARRAY


class SockHash(BpfMap, MutableMapping[Any, Any]):
    """``BPF_MAP_TYPE_SOCKHASH``: key (e.g. a 5-tuple) -> socket (any Python object)."""

    _TYPE = MapType.SOCKHASH

    def __init__(self, *, key_size: int | None = None, max_entries: int = 1024, name: str = "",
                 key_type: Converter = None, value_size: int = 8, flags: int = 0) -> None:
        ks = key_size if key_size is not None else _size_of(key_type) or 4
        super().__init__(self._TYPE, ks, value_size, max_entries, flags, name)
        self._keys = Codec(ks, key_type, "key")
        self._socks = _SocketIds()
        self._lock = threading.Lock()

    def _sid(self, key: bytes) -> int | None:
        if not self._has_raw(key):
            return None
        return int.from_bytes(self._lookup_raw(key, "lookup")[:8], "little")

    def socket_for(self, key_bytes: bytes) -> object | None:
        """The socket stored under the raw key bytes, or None (used by the redirect helpers)."""
        sid = self._sid(key_bytes)
        return None if sid is None else self._socks.by_id.get(sid)

    def insert(self, key: Any, sock: object, flags: int = BPF_ANY) -> None:
        """Store ``sock`` under ``key`` as ``flags`` says."""
        kb = self._keys.encode(key)
        with self._lock:
            old = self._sid(kb)
            sid = self._socks.acquire(sock)
            try:
                self._update_raw(kb, sid.to_bytes(8, "little"), flags, f"update of {key!r} in {self.name!r}")
            except MapError:
                self._socks.release(sid)
                raise
            self._socks.release(old)

    def __setitem__(self, key: Any, sock: object) -> None:
        self.insert(key, sock)

    def __getitem__(self, key: Any) -> object:
        sock = self.socket_for(self._keys.encode(key))
        if sock is None:
            raise MapKeyError(f"no socket for {key!r} in {self.name!r}", errno=errno.ENOENT)
        return sock

    def __delitem__(self, key: Any) -> None:
        kb = self._keys.encode(key)
        with self._lock:
            old = self._sid(kb)
            self._delete_raw(kb, f"delete of {key!r} from {self.name!r}")
            self._socks.release(old)

    def __contains__(self, key: object) -> bool:
        return self._has_raw(self._keys.encode(key))

    def __iter__(self) -> Iterator[Any]:
        return iter([self._keys.decode(k) for k in self._keys_raw()])

    def __len__(self) -> int:
        return BpfMap.__len__(self)


class SkStorage(BpfMap, MutableMapping[Any, Any]):
    """``BPF_MAP_TYPE_SK_STORAGE``: one value per socket (any Python object standing for it, as in
    ``SockMap``), which programs create and reach with ``bpf_sk_storage_get``.

    As in the kernel, ``max_entries`` is 0 and ``BPF_F_NO_PREALLOC`` is required (EINVAL
    otherwise); jitbpf preallocates room for ``capacity`` sockets, and a program's create fails
    (NULL) beyond it. A program's socket argument names the socket of its context
    (``vm.std.socket``): a NULL socket, or none in the context, gets NULL.
    """

    _TYPE = MapType.SK_STORAGE

    def __init__(self, *, value_size: int | None = None, name: str = "", value_type: Converter = None,
                 key_size: int = 4, max_entries: int = 0, flags: int = BPF_F_NO_PREALLOC,
                 capacity: int = 1024) -> None:
        vs = value_size if value_size is not None else _size_of(value_type) or 4
        super().__init__(self._TYPE, key_size, vs, max_entries, flags, name, aux=capacity)
        self.capacity = capacity
        self._values = Codec(vs, value_type, "value")
        self._socks = _SocketIds(self._owner_key)
        self._lock = threading.Lock()

    @staticmethod
    def _owner_key(owner: object) -> Hashable:
        return id(owner)  # a socket is the object itself

    def owner_id(self, sock: object, *, create: bool = False) -> int | None:
        """The id C keys ``sock``'s value by (``create``: give it one if it has none)."""
        sid = self._socks.ids.get(self._owner_key(sock))
        if sid is None and create:
            sid = self._socks.acquire(sock)
        return sid

    def _key(self, sid: int) -> bytes:
        return sid.to_bytes(4, "little")

    def program_get(self, sock: object, init: int, flags: int) -> int:
        """``bpf_sk_storage_get``: the address of ``sock``'s value, created from the value at
        address ``init`` (0: zeroed) if missing and ``flags`` has BPF_SK_STORAGE_GET_F_CREATE;
        0 when missing or full. The caller checked ``init`` against the program's memory."""
        ffi, lib = self._nat.ffi, self._nat.lib
        with self._lock:
            known = self.owner_id(sock)
            create = bool(flags & 1) and not flags >> 1
            sid = self.owner_id(sock, create=create)
            if sid is None:
                return 0
            ptr = lib.jb_storage_get(self.ptr, sid, ffi.cast("void *", init), flags)
            if ptr == ffi.NULL and known is None:
                self._socks.release(sid)
            return int(ffi.cast("uintptr_t", ptr))

    def insert(self, sock: object, value: Any, flags: int = BPF_ANY) -> None:
        """Store ``value`` for ``sock`` as ``flags`` says."""
        with self._lock:
            known = self.owner_id(sock)
            sid = self.owner_id(sock, create=True)
            assert sid is not None
            try:
                self._update_raw(self._key(sid), self._values.encode(value), flags, f"update in {self.name!r}")
            except MapError:
                if known is None:
                    self._socks.release(sid)
                raise

    def __setitem__(self, sock: object, value: Any) -> None:
        self.insert(sock, value)

    def __getitem__(self, sock: object) -> Any:
        sid = self.owner_id(sock)
        if sid is None or not self._has_raw(self._key(sid)):
            raise MapKeyError(f"no value for socket {sock!r} in {self.name!r}", errno=errno.ENOENT)
        return self._values.decode(self._lookup_raw(self._key(sid), "lookup")[: self.value_size])

    def __delitem__(self, sock: object) -> None:
        with self._lock:
            sid = self.owner_id(sock)
            if sid is None:
                raise MapKeyError(f"no value for socket {sock!r} in {self.name!r}", errno=errno.ENOENT)
            self._delete_raw(self._key(sid), f"delete from {self.name!r}")
            self._socks.release(sid)

    def __contains__(self, sock: object) -> bool:
        sid = self.owner_id(sock)
        return sid is not None and self._has_raw(self._key(sid))

    def __iter__(self) -> Iterator[object]:
        ids = [int.from_bytes(k, "little") for k in self._keys_raw()]
        return iter([self._socks.by_id[i] for i in ids if i in self._socks.by_id])

    def __len__(self) -> int:
        return BpfMap.__len__(self)


class DevMap(_Slots):
    """``BPF_MAP_TYPE_DEVMAP``: index -> interface index, the targets of ``bpf_redirect_map``.
    Storing ifindex 0 empties the slot, as the kernel."""

    _TYPE = MapType.DEVMAP

    def __init__(self, *, max_entries: int = 64, name: str = "", key_size: int = 4, value_size: int = 4,
                 flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)

    def __setitem__(self, index: int, ifindex: int) -> None:
        if ifindex == 0:
            self._delete_raw(self._index(index), f"delete of index {index} from {self.name!r}")
        else:
            self._store(index, _u32(ifindex, "ifindex"), BPF_ANY, f"update of index {index} in {self.name!r}")

    def __getitem__(self, index: int) -> int:
        ifindex = self._slot(index)
        if ifindex is None:
            raise MapKeyError(f"no device at index {index} of {self.name!r}", errno=errno.ENOENT)
        return ifindex

    def __delitem__(self, index: int) -> None:
        self._delete_raw(self._index(index), f"delete of index {index} from {self.name!r}")

    def get(self, index: int) -> int | None:
        """The ifindex at ``index``, or None."""
        return self._slot(index) if 0 <= index < self.max_entries else None


class TaskStorage(SkStorage):
    """``BPF_MAP_TYPE_TASK_STORAGE``: one value per task, as ``SkStorage`` per socket; a task is
    the address a program's task pointer holds (``Host.task``, which ``bpf_get_current_task_btf``
    returns), an int in Python too."""

    _TYPE = MapType.TASK_STORAGE

    @staticmethod
    def _owner_key(owner: object) -> Hashable:
        if not isinstance(owner, int):
            raise MapError(f"a task or inode is its address, an int, not {owner!r}", errno=errno.EINVAL)
        return owner


class InodeStorage(TaskStorage):
    """``BPF_MAP_TYPE_INODE_STORAGE``: one value per inode, an address as for ``TaskStorage``."""

    _TYPE = MapType.INODE_STORAGE


class DevMapHash(BpfMap, MutableMapping[int, int]):
    """``BPF_MAP_TYPE_DEVMAP_HASH``: u32 key (any, not an index) -> interface index, the targets
    of ``bpf_redirect_map``. Keys are created and deleted as in a hash map (E2BIG when full,
    EEXIST under BPF_NOEXIST) except that BPF_EXIST creates a missing key too, as in the kernel;
    ifindex 0 names no device (EINVAL)."""

    _TYPE = MapType.DEVMAP_HASH

    def __init__(self, *, max_entries: int = 64, name: str = "", key_size: int = 4, value_size: int = 4,
                 flags: int = 0) -> None:
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)

    def _key(self, key: int) -> bytes:
        return _u32(key, "key").to_bytes(4, "little")

    def insert(self, key: int, ifindex: int, flags: int = BPF_ANY) -> None:
        """Map ``key`` to the device ``ifindex`` as ``flags`` says."""
        if _u32(ifindex, "ifindex") == 0:
            raise MapError(f"update of {key} in {self.name!r}: ifindex 0 names no device", errno=errno.EINVAL)
        value = ifindex.to_bytes(4, "little") + bytes(self.value_size - 4)
        self._update_raw(self._key(key), value, flags, f"update of {key} in {self.name!r}")

    def __setitem__(self, key: int, ifindex: int) -> None:
        self.insert(key, ifindex)

    def get(self, key: int, default: Any = None) -> Any:
        """The ifindex under ``key``, or ``default`` (what a redirect to it would use)."""
        try:  # (one lookup: another thread may delete the key between a test and a read)
            return int.from_bytes(self._lookup_raw(self._key(key), "lookup")[:4], "little")
        except MapKeyError:
            return default

    def __getitem__(self, key: int) -> int:
        ifindex: int | None = self.get(key)
        if ifindex is None:
            raise MapKeyError(f"no device under {key} in {self.name!r}", errno=errno.ENOENT)
        return ifindex

    def __delitem__(self, key: int) -> None:
        self._delete_raw(self._key(key), f"delete of {key} from {self.name!r}")

    def __iter__(self) -> Iterator[int]:
        return iter([int.from_bytes(k, "little") for k in self._keys_raw()])

    def __len__(self) -> int:
        return BpfMap.__len__(self)


class XskMap(SockMap):
    """``BPF_MAP_TYPE_XSKMAP``: index (usually the receive queue) -> AF_XDP socket, any Python
    object standing for it; ``bpf_redirect_map`` reports it back. A program's lookup finds no
    socket here (NULL), so programs fall back to their ``bpf_redirect_map`` default."""

    _TYPE = MapType.XSKMAP

    def __init__(self, *, max_entries: int = 64, name: str = "", key_size: int = 4, value_size: int = 4,
                 flags: int = 0) -> None:
        super().__init__(max_entries=max_entries, name=name, key_size=key_size, value_size=value_size, flags=flags)


class CpuMap(DevMap):
    """``BPF_MAP_TYPE_CPUMAP``: CPU index -> queue size; a set entry is a CPU packets may be
    redirected to. Storing 0 empties the slot."""

    _TYPE = MapType.CPUMAP

    def __init__(self, *, max_entries: int = 64, name: str = "", key_size: int = 4, value_size: int = 4,
                 flags: int = 0) -> None:
        super().__init__(max_entries=max_entries, name=name, key_size=key_size, value_size=value_size, flags=flags)


# ---------------------------------------------------------------------------------------------
# Maps of maps


@dataclass(frozen=True)
class MapShape:
    """The shape every inner map of an outer map must have (the kernel's inner map template):
    what the verifier knows of a map an outer map's lookup returns."""

    map_type: MapType  # the kernel's type number
    key_size: int  # bytes per key
    value_size: int  # bytes per value
    max_entries: int  # capacity (any, when ``flags`` has BPF_F_INNER_MAP)
    flags: int  # BPF_F_* creation flags

    @classmethod
    def of(cls, m: BpfMap | MapShape) -> MapShape:
        """The shape of map ``m`` (a template map, or a shape already)."""
        if isinstance(m, MapShape):
            return m
        if not isinstance(m, BpfMap):
            raise TypeError(f"an inner map template is a jitbpf map or a MapShape, not {type(m).__name__}")
        return cls(m.map_type, m.key_size, m.value_size, m.max_entries, m.flags)

    def mismatch(self, m: BpfMap) -> str:
        """Why ``m`` cannot be an inner map of this shape ("" if it can), as the kernel compares."""
        for what in ("map_type", "key_size", "value_size", "flags"):
            if getattr(m, what) != getattr(self, what):
                return f"its {what} is {getattr(m, what)!r}, the template's {getattr(self, what)!r}"
        if not self.flags & BPF_F_INNER_MAP and m.max_entries != self.max_entries:
            return f"its max_entries is {m.max_entries}, the template's {self.max_entries} (no BPF_F_INNER_MAP)"
        return ""


class _MapOfMaps(BpfMap):
    """An outer map: each value is an inner map of the template's shape, whose address C keeps
    and a program's ``bpf_map_lookup_elem`` returns (a map pointer for its next map helper).

    The outer map holds its inner maps: an inner map is not freed while an outer map holds it,
    and the VMs using the outer map reach the inner maps' values too.
    """

    _TYPE: ClassVar[MapType]

    def __init__(self, inner: BpfMap | MapShape | None, key_size: int, value_size: int, max_entries: int,
                 flags: int, name: str) -> None:
        if inner is None:
            raise MapError(f"{self._TYPE.name} map {name!r} needs an inner map template (inner=...)",
                           errno=errno.EINVAL)
        shape = MapShape.of(inner)
        if shape.map_type in MAP_OF_MAPS_TYPES or shape.map_type in CGROUP_STORAGE_TYPES:
            raise MapError(f"{shape.map_type.name} maps cannot be inner maps", errno=errno.EINVAL)
        super().__init__(self._TYPE, key_size, value_size, max_entries, flags, name)
        self.inner = shape  # what every inner map must look like
        self._inner: dict[bytes, BpfMap] = {}  # key bytes -> the inner map stored there
        # Inner maps taken out while runs of VMs using this map were in progress (a run may hold
        # one it looked up), with those VMs: each is freed once all of them have been idle since.
        self._retired: list[tuple[BpfMap, list[MapUser]]] = []
        self._lock = threading.Lock()

    def _put(self, key: bytes, inner: BpfMap, flags: int, what: str) -> None:
        if not isinstance(inner, BpfMap):
            raise TypeError(f"{what}: the values of {self.name!r} are jitbpf maps, not {type(inner).__name__}")
        why = self.inner.mismatch(inner)
        if why:
            raise MapError(f"{what}: {inner.name!r} does not fit the inner map template: {why}", errno=errno.EINVAL)
        inner.ptr  # noqa: B018 (raises for a closed map)
        self.sweep()
        with self._lock:
            self._update_raw(key, inner.address.to_bytes(8, "little"), flags, what)
            old = self._inner.get(key)
            self._inner[key] = inner
            inner._holders.add(self)
            if old is not None and old is not inner and old not in self._inner.values():
                self._let_go(old)
        self._changed_reach()

    def _take(self, key: bytes, what: str) -> None:
        self.sweep()
        with self._lock:
            self._delete_raw(key, what)
            old = self._inner.pop(key, None)
            if old is not None and old not in self._inner.values():
                self._let_go(old)
        self._changed_reach()

    def _let_go(self, old: BpfMap) -> None:
        """This map no longer holds ``old`` (its lock held): freed once unused, but not while a
        run that may have looked it up is in progress (its next map helper would use freed
        memory, or another map allocated there)."""
        old._holders.discard(self)
        busy = [vm for vm in list(self._users) if not vm.quiescent()]
        if not busy:
            old._free_if_unused()
            return
        old._grace += 1
        self._retired.append((old, busy))
        for vm in busy:
            vm.sweep_when_idle(self)

    def sweep(self) -> None:
        """Free the inner maps let go of whose VMs have all been idle since (see ``_let_go``)."""
        if not self._retired:
            return
        with self._lock:
            kept: list[tuple[BpfMap, list[MapUser]]] = []
            done: list[BpfMap] = []
            for m, busy in self._retired:
                busy = [vm for vm in busy if not vm.quiescent()]
                if busy:
                    kept.append((m, busy))
                else:
                    done.append(m)
            self._retired = kept
        for m in done:
            m._grace -= 1
            m._free_if_unused()
        if done:
            self._changed_reach()

    def _freed_storage(self) -> None:
        # No VM uses this map any more: none of their runs is in progress either.
        held, self._inner = list(self._inner.values()), {}
        retired, self._retired = [m for m, _busy in self._retired], []
        for m in held:
            m._holders.discard(self)
            m._free_if_unused()
        for m in retired:
            m._grace -= 1
            m._free_if_unused()

    def reachable_maps(self) -> list[BpfMap]:
        # Inner maps let go of but not yet freed too: a run in progress may still use them. (Under
        # the lock: while an update is half done, the one C holds may not be in _inner yet.)
        with self._lock:
            return [self, *dict.fromkeys([*self._inner.values(), *(m for m, _busy in self._retired)])]


class ArrayOfMaps(_MapOfMaps):
    """``BPF_MAP_TYPE_ARRAY_OF_MAPS``: index -> inner map. ``outer[i] = inner`` stores a map of
    the template's shape (``inner=``: a template map or a ``MapShape``); updates take BPF_ANY
    only, indices past ``max_entries`` are E2BIG and a shape that differs EINVAL, as the kernel.

    >>> template = HashMap(key_size=4, value_size=8, max_entries=16)
    >>> outer = ArrayOfMaps(inner=template, max_entries=4, name="PER_TENANT")
    >>> outer[0] = HashMap(key_size=4, value_size=8, max_entries=16, name="TENANT0")
    >>> outer[0].name
    'TENANT0'
    """

    _TYPE = MapType.ARRAY_OF_MAPS

    def __init__(self, *, inner: BpfMap | MapShape | None = None, max_entries: int = 1, name: str = "",
                 key_size: int = 4, value_size: int = 4, flags: int = 0) -> None:
        super().__init__(inner, key_size, value_size, max_entries, flags, name)

    @staticmethod
    def _index(index: int) -> bytes:
        return _u32(index, "index").to_bytes(4, "little")

    def insert(self, index: int, inner: BpfMap, flags: int = BPF_ANY) -> None:
        """Store ``inner`` at ``index`` (``flags`` other than BPF_ANY are EINVAL, as the kernel's)."""
        self._put(self._index(index), inner, flags, f"update of index {index} in {self.name!r}")

    def __setitem__(self, index: int, inner: BpfMap) -> None:
        self.insert(index, inner)

    def get(self, index: int) -> BpfMap | None:
        """The inner map at ``index``, or None (what a program's lookup finds)."""
        return self._inner.get(self._index(index))

    def __getitem__(self, index: int) -> BpfMap:
        inner = self.get(index)
        if inner is None:
            raise MapKeyError(f"no map at index {index} of {self.name!r}", errno=errno.ENOENT)
        return inner

    def __delitem__(self, index: int) -> None:
        self._take(self._index(index), f"delete of index {index} from {self.name!r}")

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(int.from_bytes(k, "little") for k in self._inner))


class HashOfMaps(_MapOfMaps, MutableMapping[Any, BpfMap]):
    """``BPF_MAP_TYPE_HASH_OF_MAPS``: key -> inner map, a Python mapping whose values are maps of
    the template's shape (``inner=``); keys and flags as in ``HashMap``."""

    _TYPE = MapType.HASH_OF_MAPS

    def __init__(self, *, inner: BpfMap | MapShape | None = None, key_size: int | None = None,
                 max_entries: int = 1024, name: str = "", key_type: Converter = None, value_size: int = 4,
                 flags: int = 0) -> None:
        ks = key_size if key_size is not None else _size_of(key_type) or 4
        super().__init__(inner, ks, value_size, max_entries, flags, name)
        self._keys = Codec(ks, key_type, "key", signed=False)

    def insert(self, key: Any, inner: BpfMap, flags: int = BPF_ANY) -> None:
        """Store ``inner`` under ``key`` as ``flags`` says (BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        self._put(self._keys.encode(key), inner, flags, f"update of {key!r} in {self.name!r}")

    def __setitem__(self, key: Any, inner: BpfMap) -> None:
        self.insert(key, inner)

    def __getitem__(self, key: Any) -> BpfMap:
        inner = self._inner.get(self._keys.encode(key))
        if inner is None:
            raise MapKeyError(f"no map under {key!r} in {self.name!r}", errno=errno.ENOENT)
        return inner

    def __delitem__(self, key: Any) -> None:
        self._take(self._keys.encode(key), f"delete of {key!r} from {self.name!r}")

    def __contains__(self, key: object) -> bool:
        return self._keys.encode(key) in self._inner

    def __iter__(self) -> Iterator[Any]:
        return iter([self._keys.decode(k) for k in self._keys_raw()])

    def __len__(self) -> int:
        return BpfMap.__len__(self)


# ---------------------------------------------------------------------------------------------
# Cgroup storage


class CgroupStorage(HashMap):
    """``BPF_MAP_TYPE_CGROUP_STORAGE``: a value per attachment of a program to a cgroup, which the
    program reaches with ``bpf_get_local_storage`` (never NULL).

    The key is the kernel's ``struct bpf_cgroup_storage_key``, ``(cgroup_id, attach_type)``
    (16 bytes with its padding), or the cgroup id alone (``key_size=8``). As in the kernel,
    ``max_entries`` is 0; an attachment's value exists from the attachment on, zeroed:
    ``attach(cgroup_id, attach_type)`` makes one, and a program run makes that of
    ``Host.attach_cgroup`` and ``Host.attach_type``. Updates replace only (ENOENT for a missing
    attachment, EINVAL for BPF_NOEXIST), deletes are EINVAL; jitbpf preallocates ``capacity``
    attachments.
    """

    _TYPE = MapType.CGROUP_STORAGE

    def __init__(self, *, value_size: int | None = None, name: str = "", value_type: Converter = None,
                 key_size: int = 16, max_entries: int = 0, flags: int = 0, capacity: int = 64) -> None:
        vs = value_size if value_size is not None else _size_of(value_type) or 4
        BpfMap.__init__(self, self._TYPE, key_size, vs, max_entries, flags, name, aux=capacity)
        self.capacity = capacity
        self._values = Codec(vs, value_type, "value")
        self._keys = Codec(key_size, "<QI4x" if key_size == 16 else "<Q", "key")

    def key_bytes(self, cgroup_id: int, attach_type: int = 0) -> bytes:
        """The key of the attachment of ``attach_type`` to the cgroup ``cgroup_id``."""
        return self._keys.encode((cgroup_id, attach_type) if self.key_size == 16 else cgroup_id)

    def attach(self, cgroup_id: int, attach_type: int = 0) -> None:
        """Make the (zeroed) value of an attachment, if it has none (ENOSPC beyond ``capacity``)."""
        self.program_get(self.key_bytes(cgroup_id, attach_type))

    def program_get(self, key: bytes) -> int:
        """``bpf_get_local_storage``: the address of the value (this CPU's, per-CPU) of the
        attachment ``key``, made zeroed if missing."""
        ffi = self._nat.ffi
        ptr = self._nat.lib.jb_cgroup_storage_get(self.ptr, ffi.from_buffer(key))
        if ptr == ffi.NULL:
            raise MapError(f"cgroup storage {self.name!r} is full ({self.capacity} attachments)", errno=errno.ENOSPC)
        return int(ffi.cast("uintptr_t", ptr))


class PerCpuCgroupStorage(CgroupStorage):
    """``BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE``: ``CgroupStorage`` with one value per CPU
    (``m[key]`` is a list; assign a list or one value for every CPU)."""

    _TYPE = MapType.PERCPU_CGROUP_STORAGE

    def _encode_value(self, value: Any) -> bytes:
        return _encode_percpu(self, self._values, value)

    def _decode_value(self, raw: bytes) -> list[Any]:
        return _decode_percpu(self, self._values, raw)


# ---------------------------------------------------------------------------------------------
# Factory


_CLASSES: dict[MapType, type[BpfMap]] = {
    MapType.HASH: HashMap,
    MapType.ARRAY: Array,
    MapType.PROG_ARRAY: ProgramArray,
    MapType.PERF_EVENT_ARRAY: PerfEventArray,
    MapType.PERCPU_HASH: PerCpuHashMap,
    MapType.PERCPU_ARRAY: PerCpuArray,
    MapType.STACK_TRACE: StackTraceMap,
    MapType.CGROUP_ARRAY: CgroupArray,
    MapType.LRU_HASH: LruHashMap,
    MapType.LRU_PERCPU_HASH: LruPerCpuHashMap,
    MapType.LPM_TRIE: LpmTrie,
    MapType.DEVMAP: DevMap,
    MapType.DEVMAP_HASH: DevMapHash,
    MapType.SOCKMAP: SockMap,
    MapType.SOCKHASH: SockHash,
    MapType.REUSEPORT_SOCKARRAY: ReuseportSockArray,
    MapType.CPUMAP: CpuMap,
    MapType.XSKMAP: XskMap,
    MapType.SK_STORAGE: SkStorage,
    MapType.INODE_STORAGE: InodeStorage,
    MapType.TASK_STORAGE: TaskStorage,
    MapType.QUEUE: Queue,
    MapType.STACK: Stack,
    MapType.RINGBUF: RingBuf,
    MapType.USER_RINGBUF: UserRingBuf,
    MapType.BLOOM_FILTER: BloomFilter,
    MapType.ARRAY_OF_MAPS: ArrayOfMaps,
    MapType.HASH_OF_MAPS: HashOfMaps,
    MapType.CGROUP_STORAGE: CgroupStorage,
    MapType.PERCPU_CGROUP_STORAGE: PerCpuCgroupStorage,
}


def create_map(map_type: MapType | int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               name: str = "", *, map_extra: int = 0, **options: Any) -> BpfMap:
    """A map of any supported type from its kernel description (as an ELF loader finds it).

    ``options`` go to the class: ``key_type``/``value_type``, ``event_type``, ``buffer_size``,
    ``inner`` (the inner map template of ARRAY_OF_MAPS and HASH_OF_MAPS).
    """
    try:
        kind = MapType(map_type)
    except ValueError:
        raise MapError(f"unsupported map type {map_type}", errno=errno.EINVAL) from None
    if kind is MapType.BLOOM_FILTER:
        options["map_extra"] = map_extra
    elif map_extra:
        raise MapError(f"map_extra is for bloom filters, not {kind.name} maps", errno=errno.EINVAL)
    if options.get("inner") is not None and kind not in MAP_OF_MAPS_TYPES:
        # An object declaring __array(values, struct {...}) on another type (libbpf: "should be map-in-map").
        raise MapError(f"an inner map template is for maps of maps, not {kind.name} maps", errno=errno.EINVAL)
    cls: Any = _CLASSES[kind]
    made: BpfMap = cls(key_size=key_size, value_size=value_size, max_entries=max_entries, flags=flags, name=name,
                       **options)
    return made
