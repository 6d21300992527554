"""The verifier's public data model (helper signatures, context, maps, result) and register values."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, Protocol

from jitbpf.helpers import ArgType as ArgType
from jitbpf.helpers import RetType as RetType
from jitbpf.verifier._scalar import UNKNOWN, ZERO, Scalar


class MapLike(Protocol):
    """What the verifier needs to know about a map (``jitbpf.linux.maps`` objects have these)."""

    @property
    def key_size(self) -> int: ...

    @property
    def value_size(self) -> int: ...

    @property
    def max_entries(self) -> int: ...

    @property
    def map_type(self) -> str | int: ...

    @property
    def flags(self) -> int: ...  # BPF_F_* creation flags (BPF_F_RDONLY_PROG: programs may not write values)


@dataclass(frozen=True)
class BtfArg:
    """What one 8-byte slot of a BTF-typed context holds (the kernel's ``u64 args[]`` of tracing
    programs), or what a load of one field through a ``PTR_TO_BTF_ID`` gives."""

    type_id: int = 0  # BTF id of the struct (or union) a pointer points to; 0 for a scalar
    size: int = 8  # a scalar's width in bytes: its value fits the C type
    signed: bool = False  # a scalar of a signed C type (sign-extended into the slot)
    nullable: bool = False  # a pointer that may be NULL: it must be compared with 0 before a load
    memory: bool = False  # a pointer to memory of unknown size (an iterator's key or value), runtime-checked
    name: str = ""  # the argument or field, for messages


class BtfLayout(Protocol):
    """The target BTF as the verifier asks it about loads through typed pointers."""

    def field(self, type_id: int, off: int, size: int) -> BtfArg:
        """What a load of ``size`` bytes at ``off`` of the struct ``type_id`` gives (LookupError
        with the reason when the struct has no such field)."""
        ...

    def type_name(self, type_id: int) -> str:
        """``struct name`` of a type, for messages."""
        ...


class ParamKind(enum.Enum):
    """What one argument of a global function is, as its BTF prototype says."""

    SCALAR = "scalar"  # an integer or enum: any number
    CTX = "ctx"  # the program's context (tagged arg:ctx, or a pointer to the type's context struct)
    MEM = "mem"  # a pointer to ``size`` readable and writable bytes (NULL allowed unless arg:nonnull)


@dataclass(frozen=True)
class Param:
    """One argument of a global function."""

    kind: ParamKind  # what the caller must pass
    size: int = 0  # MEM: bytes the pointer must reach
    nullable: bool = True  # MEM: NULL may be passed (the function must check before a load)


@dataclass(frozen=True)
class GlobalFunc:
    """A global (non-static) function of a program, which the kernel verifies once, on its own,
    for any arguments that match its BTF prototype; each call is checked against the prototype
    and returns an unknown number. ``error`` says why the prototype is one the kernel refuses
    (every call to it is then refused)."""

    name: str  # the function's name
    params: tuple[Param, ...] = ()  # r1.. in order
    error: str = ""  # the kernel's reason to refuse the prototype, or ""


# The pointers a context field may hold: packet bounds, or the socket the context is about.
CONTEXT_POINTER_KINDS = ("packet", "packet_end", "packet_meta", "sock_common_or_null", "socket", "socket_or_null",
                         "flow_keys")
CONTEXT_POINTER_SIZES = (4, 8)  # a __u32 (__sk_buff, xdp_md) or a 64-bit __bpf_md_ptr (sk_msg_md)


@dataclass(frozen=True)
class ContextSpec:
    """What r1 points to when a program starts, for one program type.

    With ``size`` None the program runs in the generic "raw memory" mode: r1 points to the
    caller's buffer of unknown size (accesses are allowed but keep their runtime check) and r2
    holds its length. With a size, r1 is a context of that many bytes: loads must fall inside
    ``readable`` (all of it when empty) and stores inside ``writable``; a load of one of
    ``fields`` (fields holding addresses) yields a packet pointer of the given kind. Such a load
    must cover exactly the field, whose width is given by ``field_sizes`` (4 bytes unless given);
    the fields are read-only and cannot be read any other way. ``packet_writable`` and ``ld_abs``
    follow the kernel's rules for the program type (direct packet writes, legacy packet loads).
    With ``args``, the context is a BTF-typed ``u64 args[]`` (``size`` = 8 per slot): each slot
    gives a bounded scalar or a pointer to a BTF struct, whose fields ``btf`` describes.
    """

    size: int | None = None  # bytes of context, or None for raw memory of unknown size
    readable: tuple[tuple[int, int], ...] = ()  # (offset, size) ranges loads may touch; empty = all
    writable: tuple[tuple[int, int], ...] = ()  # (offset, size) ranges stores may touch
    fields: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)  # pointer fields
    ret_range: tuple[int, int] | None = None  # allowed values of r0 at exit (inclusive), if restricted
    ret_pointer_ok: bool = False  # whether r0 may hold a pointer at exit
    ret_32bit: bool = False  # ``ret_range`` bounds r0's low 32 bits as a signed int (an LSM hook's int)
    field_sizes: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)  # their widths
    packet_writable: bool = True  # whether stores into the packet (and helpers writing it) are allowed
    ld_abs: bool = True  # whether the legacy LD_ABS/LD_IND loads are allowed (with r6 = the context)
    # A BTF-typed context (tracing programs): the u64 slots r1 points to; loads are 8 bytes, stores refused.
    args: tuple[BtfArg, ...] | None = None
    btf: BtfLayout | None = field(default=None, hash=False, compare=False)  # the types ``args`` point to
    # The map helpers (update 2, delete 3) that may change a socket map (SOCKMAP, SOCKHASH): the
    # kernel lets only some program types, where no socket lock can be held, do so.
    sockmap_writers: frozenset[int] = frozenset({2, 3})
    socket_context: bool = False  # the context is itself a socket (cgroup/sock): socket arguments take it
    whole_loads: bool = False  # a load reads one of ``readable``'s spans whole (the kernel's XDP context)
    # The helpers whose memory arguments may point into the packet (the kernel's pkt_access); None: all.
    packet_helpers: frozenset[int] | None = None
    # A context of ``word``-byte fields (the kernel's __sk_buff rules; 0: none): every access is
    # aligned to its size, a load reads at most ``word`` bytes (a narrow one of a field) and a
    # store writes exactly ``word``; except in ``any_width`` spans (any aligned width: cb[]) and
    # in ``whole`` fields (offset -> width: accessed whole only, such as 8-byte timestamps).
    word: int = 0
    any_width: tuple[tuple[int, int], ...] = ()
    whole: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        for off, kind in self.fields.items():
            if kind not in CONTEXT_POINTER_KINDS:
                raise ValueError(f"context field {off}: unknown pointer kind {kind!r}")
        for off, size in self.field_sizes.items():
            if off not in self.fields:
                raise ValueError(f"context field {off}: a size is given but no pointer kind")
            if size not in CONTEXT_POINTER_SIZES:
                raise ValueError(f"context field {off}: a pointer field is 4 or 8 bytes, not {size}")

    def field_size(self, off: int) -> int:
        """Bytes of the pointer field at ``off``."""
        return self.field_sizes.get(off, 4)


RAW_MEMORY = ContextSpec(ret_pointer_ok=True)
"""The default context: r1 = the caller's buffer (unknown size), r2 = its length."""


@dataclass(frozen=True)
class VerifyResult:
    """What an accepted program was proven to do."""

    proven: frozenset[int]  # slots of memory instructions whose access is in bounds on every path
    insns_processed: int  # instructions the data-flow analysis stepped through
    states_pruned: int  # paths cut short because an equivalent state was already verified
    max_stack_depth: int  # bytes of stack of the deepest call chain
    # Helper calls given a pointer to memory of unknown extent (a plain program's mem): a C
    # helper would trust it, so these calls must reach a helper that checks at run time; and
    # lookups in socket maps, whose sockets only the Python helper lays out.
    unchecked_calls: frozenset[int] = frozenset()
    # A privileged program may read stack it never wrote: the engines must clear its frames.
    reads_uninit_stack: bool = False
    # Loads through BTF-typed pointers (the kernel's BPF_PROBE_MEM): a load from memory the run
    # does not hold gives 0 instead of failing.
    probe_loads: frozenset[int] = frozenset()
    # Some value or branch follows where memory lies (a privileged loader's pointer made a
    # number, stored outside the stack, compared with another object's): runs may then differ
    # wherever memory is laid out otherwise (another engine, another process, the kernel).
    uses_addresses: bool = False


class RegType(enum.Enum):
    """The kind of value a register (or spilled stack slot) holds."""

    NOT_INIT = "?"  # never written: reading it is an error
    SCALAR = "scalar"  # a number (possibly a leaked address: it cannot be dereferenced)
    PTR_TO_CTX = "ctx"  # the program's context
    PTR_TO_STACK = "fp"  # a stack frame (aux = frame index, 0 = the main program's)
    PTR_TO_MAP_VALUE = "map_value"  # a map value (aux = map handle)
    PTR_TO_MAP_VALUE_OR_NULL = "map_value_or_null"  # a map value or 0 (aux = map handle, id = lookup)
    CONST_PTR_TO_MAP = "map_ptr"  # a map itself, for helper calls (aux = map handle)
    # an outer map's lookup: an inner map or 0 (aux = the inner template's handle, id = lookup)
    CONST_PTR_TO_MAP_OR_NULL = "map_ptr_or_null"
    PTR_TO_PACKET = "pkt"  # packet data (range = bytes proven inside the packet)
    PTR_TO_PACKET_END = "pkt_end"  # one past the packet's last byte: compare only
    PTR_TO_PACKET_META = "pkt_meta"  # packet metadata, which ends where packet data starts
    PTR_TO_MEM = "mem"  # memory of unknown size: accesses keep their runtime bounds check
    PTR_TO_BUF = "buf"  # memory of ``range`` bytes a helper handed out (a ring buffer record)
    PTR_TO_BUF_OR_NULL = "buf_or_null"  # a PTR_TO_BUF or 0 (id = the call that returned it)
    PTR_TO_MAP_KEY = "map_key"  # a map's key, read-only (aux = map handle): what for_each's callback gets
    PTR_TO_FUNC = "func"  # the address of a function of the program (aux = its entry slot), for callbacks
    PTR_TO_BTF_ID = "ptr_"  # a kernel object of a BTF struct (aux = its type id): read by probe loads
    PTR_TO_BTF_ID_OR_NULL = "ptr_or_null_"  # the same, or 0 (aux = type id, id = the slot's load)
    PTR_TO_MEM_OR_NULL = "mem_or_null"  # memory of unknown size, or 0 (id = the slot's load)
    # Sockets (read-only, no arithmetic; ref = the lookup that acquired them, if any): a struct
    # bpf_sock of which only the fields every socket has may be read, a full socket, a TCP
    # socket's struct bpf_tcp_sock; and each of them or 0 (id = the load or call).
    PTR_TO_SOCK_COMMON = "sock_common"
    PTR_TO_SOCK_COMMON_OR_NULL = "sock_common_or_null"
    PTR_TO_SOCKET = "sock"
    PTR_TO_SOCKET_OR_NULL = "sock_or_null"
    PTR_TO_TCP_SOCK = "tcp_sock"
    PTR_TO_TCP_SOCK_OR_NULL = "tcp_sock_or_null"
    PTR_TO_FLOW_KEYS = "flow_keys"  # a flow dissector's struct bpf_flow_keys: read and written, constant offsets only
    # Never a register's: what both stack slots of an initialised struct bpf_dynptr hold (the
    # kernel's STACK_DYNPTR). aux = its kind (DynptrKind), id = the dynptr (its slices name it),
    # ref = the reference a ring buffer one holds, range = 1 in its first (lower) slot, 0 in the other.
    DYNPTR = "dynptr"
    CONST_PTR_TO_DYNPTR = "dynptr_ptr"  # a helper's dynptr, which the program may not change (a drain's sample)


class Reg(NamedTuple):
    """The abstract value of one register: a type plus, for pointers, where it points.

    A pointer's offset is ``off`` (exact) plus ``var`` (a range, constant 0 when exact); for a
    scalar ``var`` is the value itself. Copies share a non-zero ``id`` so that what a branch
    learns about one (a bound, a null check, a packet range) applies to all of them; linked
    scalars differ by their ``off`` (a copy with a constant added).
    """

    type: RegType  # what kind of value
    var: Scalar = ZERO  # the scalar value, or the variable part of a pointer's offset
    off: int = 0  # exact part of a pointer's offset; a linked scalar's distance from its copies
    id: int = 0  # link between copies (0 = none)
    range: int = 0  # packet pointers: bytes [0, range) past (start + var) are inside the packet; buffers: size
    aux: int = 0  # frame index (stack pointers), map handle (map pointers) or BTF type id (BTF pointers)
    ref: int = 0  # the reference a pointer holds (an acquired ring buffer record; 0 = none)

    def __str__(self) -> str:
        t = self.type
        if t is RegType.SCALAR:
            s = str(self.var)
            return s + (f"#{self.id}" if self.id else "")
        if t is RegType.NOT_INIT:
            return "?"
        parts = []
        if t in (RegType.PTR_TO_BTF_ID, RegType.PTR_TO_BTF_ID_OR_NULL):
            parts.append(f"btf_id={self.aux}")
        if t in (RegType.PTR_TO_STACK, RegType.PTR_TO_MAP_VALUE, RegType.PTR_TO_MAP_VALUE_OR_NULL,
                 RegType.CONST_PTR_TO_MAP, RegType.CONST_PTR_TO_MAP_OR_NULL, RegType.PTR_TO_MAP_KEY):
            parts.append(f"{'frame' if t is RegType.PTR_TO_STACK else 'map'}={self.aux}")
        if self.off:
            parts.append(f"off={self.off}")
        if not self.var.is_const:
            parts.append(f"var={self.var}")
        if t in (RegType.PTR_TO_PACKET, RegType.PTR_TO_PACKET_META):
            parts.append(f"r={self.range}")
        if t in (RegType.PTR_TO_BUF, RegType.PTR_TO_BUF_OR_NULL):
            parts.append(f"size={self.range}")
        if self.id:
            parts.append(f"id={self.id}")
        return f"{t.value}({', '.join(parts)})" if parts else t.value

    @property
    def is_pointer(self) -> bool:
        return self.type is not RegType.SCALAR and self.type is not RegType.NOT_INIT


def inner_handle(outer: int) -> int:
    """The verifier's handle of an outer map's inner map template: negative, so that it never
    names a map that lddw can load."""
    return -1 - outer


NOT_INIT = Reg(RegType.NOT_INIT)
UNKNOWN_SCALAR = Reg(RegType.SCALAR, UNKNOWN)
