"""BTF-typed contexts: what the arguments of a tracing program are, and the memory they point to.

Programs of the BTF-typed kinds (fentry, fexit, fmod_ret, lsm, tp_btf, iter, struct_ops,
freplace) see the kernel's ``u64 args[]``: one 8-byte slot per argument of the function they
attach to, as that function's prototype in the target BTF declares (fexit, fmod_ret and lsm add
the return value's slot). A scalar argument is bounded by its C type; a pointer to a struct is a
``PTR_TO_BTF_ID`` of that struct, whose field loads the verifier checks against the struct's
layout (``BtfTypes.field``). ``Objects`` lays out what a caller gives for such pointers (bytes,
ctypes values, or dicts by field name) in memory a run may read.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jitbpf.errors import ElfError, VerifierError
from jitbpf.isa import MASK64
from jitbpf.linux.elf import Btf, BtfKind, BtfType
from jitbpf.memory import Region
from jitbpf.sandbox import Pages
from jitbpf.verifier import BtfArg

_COMPOSITE = (BtfKind.STRUCT, BtfKind.UNION)
_SCALAR_KINDS = (BtfKind.INT, BtfKind.ENUM, BtfKind.ENUM64)
MAX_ARGS = 12  # the kernel's MAX_BPF_FUNC_ARGS


class AttachError(VerifierError):
    """The attach target of a BTF-typed program cannot be found or described (the kernel
    refuses such a program at load time)."""


@dataclass(frozen=True)
class Member:
    """One field of a struct, where it is and what it holds."""

    name: str  # the field's name ("" for an anonymous member)
    type_id: int  # its type
    offset: int  # byte offset in the outermost struct
    bits: int = 0  # bitfield width (0 when not a bitfield)
    bit_shift: int = 0  # bitfield: bits from ``offset`` to the field's lowest bit


class BtfTypes:
    """A target BTF as typed contexts need it: names looked up once, fields by offset."""

    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        self._names: dict[tuple[BtfKind, str], int] | None = None

    def lookup(self, kind: BtfKind, name: str) -> int | None:
        """The id of the type of this kind and name (None when the BTF has none)."""
        if self._names is None:
            names: dict[tuple[BtfKind, str], int] = {}
            for i, t in enumerate(self.btf.types):
                if t.name:
                    names.setdefault((t.kind, t.name), i)
            self._names = names
        return self._names.get((kind, name))

    def type_name(self, type_id: int) -> str:
        """``struct name`` (or ``union name``) of a type, for messages."""
        _, t = self.btf.resolve(type_id)
        return f"{t.kind.name.lower()} {t.name or '(anonymous)'}"

    def slot(self, type_id: int, name: str = "", nullable: bool = False, memory: bool = False) -> BtfArg:
        """What a u64 slot (or a field) of C type ``type_id`` holds; with ``memory``, a pointer
        to anything but a struct is one to memory of unknown size (else a number)."""
        _, t = self.btf.resolve(type_id)
        if t.kind in _SCALAR_KINDS:
            size = t.size_or_type
            signed = bool(t.encoding & 1)
            return BtfArg(size=size if size in (1, 2, 4, 8) else 8, signed=signed, name=name)
        if t.kind is BtfKind.PTR:
            target, pointee = self.btf.resolve(t.size_or_type)
            if pointee.kind in _COMPOSITE:
                return BtfArg(type_id=target, nullable=nullable, name=name)
            if memory:
                return BtfArg(nullable=nullable, memory=True, name=name)
        return BtfArg(name=name)  # void *, char *, function pointers...: a number to the program

    def field(self, type_id: int, off: int, size: int) -> BtfArg:
        """What a load of ``size`` bytes at ``off`` of the struct ``type_id`` gives (the
        verifier's question, see ``jitbpf.verifier.BtfLayout``)."""
        try:
            tid, t = self.btf.resolve(type_id)
            total = self.btf.size_of(tid)
        except ElfError as exc:
            raise LookupError(exc.message) from None
        if off < 0 or off + size > total:
            raise LookupError(f"{self.type_name(tid)} is {total} bytes")
        return self._walk(tid, t, off, size, "", 0)

    def _walk(self, tid: int, t: BtfType, off: int, size: int, name: str, depth: int) -> BtfArg:
        if depth > 32:
            raise LookupError("types nest too deep")
        if t.kind in _COMPOSITE:
            for m in self.members(t):
                width = (m.bit_shift + m.bits + 7) // 8 if m.bits else self.btf.size_of(m.type_id)
                end = m.offset + width
                if m.offset <= off and off + size <= end:
                    if m.bits:
                        return BtfArg(size=size, name=m.name)
                    mid, mt = self.btf.resolve(m.type_id)
                    return self._walk(mid, mt, off - m.offset, size, m.name or name, depth + 1)
            return BtfArg(size=size, name=name)  # padding, or across fields: a number as wide as the load
        if t.kind is BtfKind.ARRAY:
            elem, count = t.array
            esize = self.btf.size_of(elem) if count else 0
            if esize and off % esize + size <= esize:
                eid, et = self.btf.resolve(elem)
                return self._walk(eid, et, off % esize, size, name, depth + 1)
            return BtfArg(size=size, name=name)
        if t.kind is BtfKind.PTR and off == 0 and size == 8:
            return self.slot(tid, name)
        return BtfArg(size=size, name=name)

    def members(self, t: BtfType) -> list[Member]:
        """The fields of a struct or union type, with byte offsets (and bitfield positions)."""
        out = []
        for name, mtype, raw in t.members:
            bit = raw & 0xFFFFFF if t.encoding else raw
            bits = raw >> 24 if t.encoding else 0
            if bits:
                out.append(Member(name, mtype, bit // 8, bits, bit % 8))
            else:
                out.append(Member(name, mtype, bit // 8))
        return out

    def member(self, type_id: int, name: str, depth: int = 0, seen: set[int] | None = None) -> Member | None:
        """The field ``name`` of a struct, looking into anonymous members as C does (each type
        once: hostile BTF may nest an anonymous member's type in itself)."""
        resolved, t = self.btf.resolve(type_id)
        seen = set() if seen is None else seen
        if t.kind not in _COMPOSITE or depth > 32 or resolved in seen:
            return None
        seen.add(resolved)
        for m in self.members(t):
            if m.name == name:
                return m
        for m in self.members(t):
            if not m.name:
                inner = self.member(m.type_id, name, depth + 1, seen)
                if inner is not None:
                    return Member(inner.name, inner.type_id, m.offset + inner.offset, inner.bits, inner.bit_shift)
        return None

    def field_names(self, type_id: int, seen: frozenset[int] = frozenset()) -> list[str]:
        """The names a dict for this struct may use (those of anonymous members included; a type
        inside itself, which only hostile BTF holds, adds nothing)."""
        resolved, t = self.btf.resolve(type_id)
        if resolved in seen or len(seen) > 32:
            return []
        names: list[str] = []
        for m in self.members(t):
            if m.name:
                names.append(m.name)
            elif self.btf.resolve(m.type_id)[1].kind in _COMPOSITE:
                names.extend(self.field_names(m.type_id, seen | {resolved}))
        return names

    # -- attach targets ------------------------------------------------------------------------

    def prototype(self, func_name: str, what: str) -> list[tuple[str, int]]:
        """(name, type) of each parameter of the function ``func_name``."""
        fid = self.lookup(BtfKind.FUNC, func_name)
        if fid is None:
            raise AttachError(f"{what}: the target BTF has no function {func_name!r}")
        return self.params(self.btf.get(fid).size_or_type, what)

    def params(self, proto_id: int, what: str) -> list[tuple[str, int]]:
        """(name, type) of each parameter of a function prototype (or a pointer to one)."""
        _, proto = self.btf.resolve(proto_id)
        if proto.kind is BtfKind.PTR:
            _, proto = self.btf.resolve(proto.size_or_type)
        if proto.kind is not BtfKind.FUNC_PROTO:
            raise AttachError(f"{what}: the target's type is a {proto.kind.name}, not a function prototype")
        params = [(n, t) for n, t, _ in proto.members if t]  # a trailing 0 type: "..." of a variadic function
        if len(params) > MAX_ARGS:
            raise AttachError(f"{what}: the target has {len(params)} arguments, more than {MAX_ARGS}")
        return params

    def return_type(self, func_name: str) -> int:
        """The return type of the function ``func_name`` (0 for void)."""
        fid = self.lookup(BtfKind.FUNC, func_name)
        assert fid is not None
        _, proto = self.btf.resolve(self.btf.get(fid).size_or_type)
        return proto.size_or_type


@dataclass(frozen=True)
class AttachTarget:
    """The resolved attach target of a BTF-typed program."""

    section: str  # what it was given as ("fentry/do_unlinkat", ...)
    flavour: str  # the section prefix without "/" ("fentry", "fexit", "iter", ...)
    target: str  # the function, tracepoint, hook or iterator attached to
    names: tuple[str, ...]  # each slot's name (the return value's slot is "ret")
    types: tuple[int, ...]  # each slot's C type (BTF id; 0 for void)
    args: tuple[BtfArg, ...]  # what each slot holds, for the verifier
    has_return: bool = False  # the last slot is the attached function's return value


RETURN_SLOT = frozenset({"fexit", "fexit.s", "fmod_ret", "lsm", "lsm.s", "lsm_cgroup"})
# LSM hooks no BPF program may attach to (the kernel's bpf_lsm_disabled_hooks: their callers do
# not expect a BPF program's 0-or-errno convention), and those whose programs return 0 or 1.
LSM_DISABLED_HOOKS = frozenset({
    "vm_enough_memory", "inode_need_killpriv", "inode_getsecurity", "inode_listsecurity", "inode_copy_up_xattr",
    "getselfattr", "getprocattr", "setprocattr", "key_getsecurity", "audit_rule_match", "xfrm_decode_session",
    "ismaclabel",
})
LSM_BOOL_HOOKS = frozenset({"xfrm_state_pol_flow_match", "audit_rule_known", "inode_xattr_skipcap"})


def resolve_attach(types: BtfTypes, section: str) -> AttachTarget:
    """The context of a program of section ``section`` ("fentry/do_unlinkat", "iter/task",
    "tp_btf/sched_switch", "lsm/file_open", "struct_ops/tcp_congestion_ops.ssthresh", ...)."""
    flavour, _, target = section.removeprefix("?").partition("/")
    if flavour == "netfilter" and not target:  # every hook has the same context: struct bpf_nf_ctx
        sid = types.lookup(BtfKind.STRUCT, "bpf_nf_ctx")
        if sid is None:
            raise AttachError(f"section {section!r}: the target BTF has no struct bpf_nf_ctx")
        params = [(m.name, m.type_id) for m in types.members(types.btf.get(sid))]
        return _target(types, section, flavour, "bpf_nf_ctx", params, None)
    if not target:
        raise AttachError(f"section {section!r} names no attach target")
    what = f"attach target {section!r}"
    if flavour in ("fentry", "fexit", "fmod_ret", "fentry.s", "fexit.s", "fmod_ret.s", "freplace"):
        func = target
    elif flavour in ("lsm", "lsm.s", "lsm_cgroup"):
        func = f"bpf_lsm_{target}"
        if target in LSM_DISABLED_HOOKS:
            raise AttachError(f"{what}: attach_btf_id {types.lookup(BtfKind.FUNC, func) or 0} points to disabled "
                              f"hook {func}")
    elif flavour == "tp_btf":
        tid = types.lookup(BtfKind.TYPEDEF, f"btf_trace_{target}")
        if tid is None:
            raise AttachError(f"{what}: the target BTF has no tracepoint type btf_trace_{target}")
        params = types.params(types.btf.get(tid).size_or_type, what)[1:]  # after the tracepoint's void *data
        return _target(types, section, flavour, target, params, None)
    elif flavour in ("iter", "iter.s"):
        sid = types.lookup(BtfKind.STRUCT, f"bpf_iter__{target}")
        if sid is None:
            raise AttachError(f"{what}: the target BTF has no iterator context struct bpf_iter__{target}")
        params = []
        for m in types.members(types.btf.get(sid)):
            name, tid = m.name, m.type_id
            _, mt = types.btf.resolve(tid)
            if not name and mt.kind is BtfKind.UNION and mt.members:  # union { struct x *x; }
                name, tid, _ = mt.members[0]
            params.append((name, tid))
        return _target(types, section, flavour, target, params, None, iterator=True)
    elif flavour == "struct_ops":
        struct_name, dot, member = target.partition(".")
        sid = types.lookup(BtfKind.STRUCT, struct_name)
        op = types.member(sid, member) if sid is not None and dot else None
        if op is None:
            raise AttachError(f"{what}: give the struct_ops member as STRUCT.MEMBER, found in the target BTF")
        params = types.params(op.type_id, what)
        return _target(types, section, flavour, target, params, None)
    else:
        raise AttachError(f"section {section!r} is not one of a BTF-typed program")
    params = types.prototype(func, what)
    ret = types.return_type(func) if flavour in RETURN_SLOT else None
    return _target(types, section, flavour, target, params, ret)


def _target(types: BtfTypes, section: str, flavour: str, target: str, params: Sequence[tuple[str, int]],
            ret: int | None, iterator: bool = False) -> AttachTarget:
    """The slots of ``params`` (and of the return type ``ret``, unless None). In an iterator's
    context every object but the first (the meta) may be NULL, the iteration's end, and untyped
    pointers (a map element's key and value) are memory the program reads."""
    names = [n or f"arg{i}" for i, (n, _) in enumerate(params)]
    tids = [t for _, t in params]
    if ret is not None:
        names.append("ret")
        tids.append(ret)
    args = tuple(types.slot(t, n, nullable=iterator and i > 0, memory=iterator) if t else BtfArg(name=n)
                 for i, (n, t) in enumerate(zip(names, tids, strict=True)))
    return AttachTarget(section, flavour, target, tuple(names), tuple(tids), args, ret is not None)


# -- the memory a run's pointer arguments point to ---------------------------------------------------


class Objects:
    """Objects a caller gives for pointer arguments, laid out in read-only pages for one run.

    ``add`` returns a handle; once everything is added, ``place`` lays the objects out and
    ``address`` gives where each handle went (pointer fields inside dicts are filled in then).
    """

    ALIGN = 16

    def __init__(self, types: BtfTypes | None) -> None:
        self.types = types
        self.blobs: list[bytearray] = []
        self.fixups: list[tuple[int, int, int]] = []  # (blob, offset, blob pointed to)
        self.pages: Pages | None = None
        self.bases: list[int] = []

    def add(self, value: Any, type_id: int, what: str) -> int:
        """Add the object ``value`` of C type ``type_id`` (0: untyped bytes); its handle."""
        if isinstance(value, str):
            value = value.encode() + b"\0"
        if isinstance(value, ctypes.Structure | ctypes.Union | ctypes.Array):
            value = bytes(value)
        if isinstance(value, bytes | bytearray | memoryview):
            self.blobs.append(bytearray(value))
            return len(self.blobs) - 1
        if isinstance(value, Mapping):
            if not type_id or self.types is None:
                raise TypeError(f"{what}: a dict needs the struct's BTF type")
            size = self.types.btf.size_of(type_id)
            self.blobs.append(bytearray(size))
            index = len(self.blobs) - 1
            self._fill(index, 0, type_id, value, what)
            return index
        raise TypeError(f"{what}: give bytes, a str, a ctypes value or a dict by field name, "
                        f"not {type(value).__name__}")

    def _fill(self, index: int, base: int, type_id: int, value: Mapping[str, Any], what: str) -> None:
        assert self.types is not None
        for key, item in value.items():
            m = self.types.member(type_id, key)
            if m is None:
                names = ", ".join(self.types.field_names(type_id))
                raise ValueError(f"{what}: {self.types.type_name(type_id)} has no field {key!r} (fields: {names})")
            self._put(index, base + m.offset, m, item, f"{what}.{key}")

    def _put(self, index: int, off: int, m: Member, item: Any, what: str) -> None:
        assert self.types is not None
        btf = self.types.btf
        blob = self.blobs[index]
        tid, t = btf.resolve(m.type_id)
        if m.bits:
            width = (m.bit_shift + m.bits + 7) // 8
            word = int.from_bytes(blob[off : off + width], "little")
            mask = ((1 << m.bits) - 1) << m.bit_shift
            word = word & ~mask | (int(item) << m.bit_shift) & mask
            blob[off : off + width] = word.to_bytes(width, "little")
            return
        size = btf.size_of(tid)
        if t.kind in _SCALAR_KINDS:
            blob[off : off + size] = (int(item) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif t.kind is BtfKind.PTR:
            if item is None or isinstance(item, int):
                blob[off : off + 8] = ((item or 0) & MASK64).to_bytes(8, "little")
            else:
                target, pointee = btf.resolve(t.size_or_type)
                typed = target if pointee.kind in _COMPOSITE else 0
                self.fixups.append((index, off, self.add(item, typed, what)))
        elif t.kind in _COMPOSITE and isinstance(item, Mapping):
            self._fill(index, off, tid, item, what)
        elif t.kind is BtfKind.ARRAY and isinstance(item, list | tuple):
            esize = btf.size_of(t.array[0]) if t.array[1] else 0
            if len(item) > t.array[1]:
                raise ValueError(f"{what}: the array holds {t.array[1]} elements")
            for i, element in enumerate(item):
                self._put(index, off + i * esize, Member("", t.array[0], 0), element, f"{what}[{i}]")
        else:
            if isinstance(item, int):  # (bytes() would take it as a length)
                raise TypeError(f"{what}: a {t.kind.name.lower()} takes a dict of its fields or bytes, not a number")
            raw = item.encode() if isinstance(item, str) else bytes(item)
            if len(raw) > size:
                raise ValueError(f"{what}: {len(raw)} bytes do not fit the field's {size}")
            blob[off : off + len(raw)] = raw

    def place(self, arena: Pages | None = None, start: int = 0) -> list[Region]:
        """Lay the objects out from byte ``start`` of ``arena`` (the run's own pages, when they
        fit; else fresh pages): the read-only regions a run is given."""
        total = sum(-(-max(len(b), 1) // self.ALIGN) * self.ALIGN for b in self.blobs)
        if not total:
            return []
        if arena is None or start + total > arena.size:
            self.pages = Pages(total)
            arena, start = self.pages, 0
        addr = arena.address
        pos = start
        for blob in self.blobs:
            self.bases.append(addr + pos)
            pos += -(-max(len(blob), 1) // self.ALIGN) * self.ALIGN
        for index, off, target in self.fixups:
            self.blobs[index][off : off + 8] = self.bases[target].to_bytes(8, "little")
        view = arena.view
        for base, blob in zip(self.bases, self.blobs, strict=True):
            view[base - addr : base - addr + len(blob)] = blob
        return [Region(base, len(blob), view[base - addr : base - addr + len(blob)], False, "btf object")
                for base, blob in zip(self.bases, self.blobs, strict=True) if blob]

    def address(self, handle: int) -> int:
        """Where the object of ``handle`` was placed."""
        return self.bases[handle]

    def close(self) -> None:
        """Free the pages of their own (after the run)."""
        if self.pages is not None:
            self.pages.close()
            self.pages = None
