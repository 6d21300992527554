"""CO-RE: the ``.BTF.ext`` relocation records clang emits for ``__builtin_preserve_access_index``
(bpf_core_read.h), resolved against a target BTF the way libbpf does before loading.

A relocation names a local type (in the object's BTF), an access path ("0:1:2": an array index on
the root, then member or element indices) and what the program wants: a field's byte offset,
size, existence, signedness or bitfield shifts; a type's id, existence or size; an enumerator's
existence or value. The same path is matched by member names in the target BTF (local names
with a ``___flavour`` suffix match the name without it) and the instruction gets the target's
number. A relocation that cannot be resolved poisons its instruction, as libbpf does: the
program fails verification there, with a message naming the relocation, only if that
instruction can run (code guarded by ``bpf_core_field_exists`` and friends stays loadable).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from jitbpf.errors import ElfError
from jitbpf.isa import CORE_POISON, OPCODE_CALL, OPCODE_LDDW, SIZE_BYTES, InsnClass, Mode, Size, Source
from jitbpf.linux.elf import Btf, BtfKind, BtfType

SECTION = ".BTF.ext"
_LDDW = OPCODE_LDDW


class CoreKind(enum.IntEnum):
    """What a relocation asks for (libbpf's ``enum bpf_core_relo_kind``)."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


_FIELD_KINDS = frozenset(k for k in CoreKind if k <= CoreKind.FIELD_RSHIFT_U64)
_ENUM_KINDS = frozenset({CoreKind.ENUMVAL_EXISTS, CoreKind.ENUMVAL_VALUE})
_EXISTS_KINDS = frozenset({CoreKind.FIELD_EXISTS, CoreKind.TYPE_EXISTS, CoreKind.ENUMVAL_EXISTS,
                           CoreKind.TYPE_MATCHES})


@dataclass(frozen=True)
class CoreRelo:
    """One ``bpf_core_relo`` record."""

    section: str  # the code section it applies to
    insn_off: int  # byte offset of the instruction in that section
    type_id: int  # the local (object BTF) root type
    access: str  # the access path, "0:1" or an enumerator index
    kind: CoreKind  # what is asked

    def describe(self, btf: Btf) -> str:
        """The relocation as libbpf's log names it: kind, root type and access path."""
        t = btf.get(self.type_id) if 0 <= self.type_id < len(btf.types) else None
        root = f"{t.kind.name.lower()} {t.name}" if t is not None else f"type #{self.type_id}"
        return f"CO-RE relocation {self.kind.name.lower()} of {root} ({self.access}) at {self.section}" \
               f"+{self.insn_off:#x}"


def read_relocations(ext: bytes, btf: Btf) -> list[CoreRelo]:
    """The CO-RE relocation records of a ``.BTF.ext`` section (section names from ``btf``)."""
    if len(ext) < 8:
        raise ElfError("header is truncated", section=SECTION)
    magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", ext, 0)
    if magic != 0xEB9F or version != 1:
        raise ElfError(f"bad magic {magic:#x} or version {version}", section=SECTION)
    if hdr_len < 32 or len(ext) < 32:
        return []  # no core_relo part: an older compiler, or no relocations
    off, length = struct.unpack_from("<II", ext, 24)
    start = hdr_len + off
    if length == 0:
        return []
    if start + length > len(ext) or length < 4:
        raise ElfError("CO-RE relocation records extend past the section", section=SECTION)
    rec_size = struct.unpack_from("<I", ext, start)[0]
    if rec_size < 16:
        raise ElfError(f"CO-RE relocation record size {rec_size} is too small", section=SECTION)
    pos, end = start + 4, start + length
    out: list[CoreRelo] = []
    while pos < end:
        if pos + 8 > end:
            raise ElfError("CO-RE relocation section header is truncated", section=SECTION)
        name_off, count = struct.unpack_from("<II", ext, pos)
        pos += 8
        if pos + count * rec_size > end:
            raise ElfError("CO-RE relocation records are truncated", section=SECTION)
        section = btf.string(name_off)
        for i in range(count):
            insn_off, type_id, access_off, kind = struct.unpack_from("<IIII", ext, pos + i * rec_size)
            try:
                core_kind = CoreKind(kind)
            except ValueError:
                raise ElfError(f"unknown CO-RE relocation kind {kind} at {section}+{insn_off:#x}",
                               section=SECTION) from None
            out.append(CoreRelo(section, insn_off, type_id, btf.string(access_off), core_kind))
        pos += count * rec_size
    return out


def essential_name(name: str) -> str:
    """A local type or field name without its ``___flavour`` suffix."""
    cut = name.find("___")
    return name[:cut] if cut > 0 else name


class _Unresolved(Exception):
    """The relocation has no answer in the target (poison, or 0 for the ``*_EXISTS`` kinds)."""


@dataclass(frozen=True)
class _Field:
    bit_off: int  # from the root's start
    bit_size: int  # bitfield width, 0 when not a bitfield
    type_id: int  # the field's type (in its BTF)


class Resolver:
    """Resolves relocations of one object (``local``) against one target BTF."""

    def __init__(self, local: Btf, target: Btf) -> None:
        self.local = local
        self.target = target
        self._by_name: dict[str, list[int]] | None = None

    def _candidates(self, local_id: int) -> list[int]:
        t = self.local.get(local_id)
        if not t.name:
            raise _Unresolved("anonymous root type")
        if self._by_name is None:
            self._by_name = {}
            for i, tt in enumerate(self.target.types):
                if tt.name:
                    self._by_name.setdefault(tt.name, []).append(i)
        want = _family(t.kind)
        return [i for i in self._by_name.get(essential_name(t.name), []) if _family(self.target.types[i].kind) == want]

    def value(self, relo: CoreRelo) -> int:
        """The number the instruction gets (raises _Unresolved when there is none)."""
        if relo.kind is CoreKind.TYPE_ID_LOCAL:
            return relo.type_id
        results: set[tuple[int, ...]] = set()
        for cand in self._candidates(relo.type_id):
            try:
                results.add(self._against(relo, cand))
            except (_Unresolved, ElfError):  # this candidate does not fit (or its BTF is broken)
                continue
        if not results:
            if relo.kind in _EXISTS_KINDS:
                return 0
            raise _Unresolved("no matching type or field in the target BTF")
        if len(results) > 1:
            raise _Unresolved(f"{len(results)} target types match with different answers")
        (answer,) = results
        return answer[0]

    def field_sizes(self, relo: CoreRelo) -> tuple[int, int]:
        """(local, target) byte size of the field a FIELD_BYTE_OFFSET relocation reaches."""
        local = _walk(self.local, relo.type_id, relo.access, None)
        results = set()
        for cand in self._candidates(relo.type_id):
            try:
                f = _walk(self.target, cand, relo.access, (self.local, relo.type_id))
            except (_Unresolved, ElfError):
                continue
            results.add(self.target.size_of(f.type_id))
        return self.local.size_of(local.type_id), results.pop() if len(results) == 1 else 0

    def _against(self, relo: CoreRelo, cand: int) -> tuple[int, ...]:
        tgt = self.target
        if relo.kind in (CoreKind.TYPE_ID_TARGET, CoreKind.TYPE_EXISTS, CoreKind.TYPE_MATCHES):
            return (1 if relo.kind is not CoreKind.TYPE_ID_TARGET else cand,)
        if relo.kind is CoreKind.TYPE_SIZE:
            return (tgt.size_of(cand),)
        if relo.kind in _ENUM_KINDS:
            _, local_enum = self.local.resolve(relo.type_id)
            index = _index(relo.access)
            if not 0 <= index < len(local_enum.enumerators):
                raise ElfError(f"enumerator {index} of {local_enum.name} does not exist", section=SECTION)
            name = essential_name(local_enum.enumerators[index][0])
            _, target_enum = tgt.resolve(cand)
            for ename, evalue in target_enum.enumerators:
                if essential_name(ename) == name:
                    return (1 if relo.kind is CoreKind.ENUMVAL_EXISTS else evalue & 0xFFFF_FFFF_FFFF_FFFF,)
            raise _Unresolved(f"no enumerator {name}")
        f = _walk(tgt, cand, relo.access, (self.local, relo.type_id))
        return (_field_value(tgt, f, relo.kind),)


def _family(kind: BtfKind) -> str:
    """Kinds that may stand for each other between BTFs (a forward declaration for a struct...)."""
    if kind in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.FWD):
        return "composite"
    if kind in (BtfKind.ENUM, BtfKind.ENUM64):
        return "enum"
    return kind.name


def _index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ElfError(f"bad CO-RE access string {text!r}", section=SECTION) from None


def _walk(btf: Btf, root: int, access: str, local: tuple[Btf, int] | None) -> _Field:
    """Follow the access path from ``root`` in ``btf``: by index in the local BTF (``local`` None),
    by the local members' names in a target BTF."""
    steps = [_index(s) for s in access.split(":")] if access else []
    if not steps:
        raise ElfError("empty CO-RE access string", section=SECTION)
    type_id, t = btf.resolve(root)
    bit_off = steps[0] * 8 * btf.size_of(type_id) if steps[0] else 0
    bit_size = 0
    ltype: tuple[Btf, int, BtfType] | None = None
    if local is not None:
        ltype = (local[0], *local[0].resolve(local[1]))
    for i, step in enumerate(steps[1:], 2):
        if t.kind in (BtfKind.STRUCT, BtfKind.UNION):
            if ltype is None:
                if not 0 <= step < len(t.members):
                    raise ElfError(f"member {step} of {t.name or 'an anonymous type'} does not exist",
                                   section=SECTION)
                _, member_type, raw = t.members[step]
                kflag = bool(t.encoding)
            else:
                lbtf, _, lt = ltype
                if lt.kind not in (BtfKind.STRUCT, BtfKind.UNION) or not 0 <= step < len(lt.members):
                    raise ElfError(f"member {step} of local {lt.name or 'anonymous type'} does not exist",
                                   section=SECTION)
                lname, lmember, _ = lt.members[step]
                if not lname and i < len(steps) and lbtf.resolve(lmember)[1].kind in (BtfKind.STRUCT, BtfKind.UNION):
                    # An anonymous member on the way to a named one: as libbpf, only named members
                    # are matched, and the target's are looked for through its anonymous members.
                    ltype = (lbtf, *lbtf.resolve(lmember))
                    continue
                found = _find_member(btf, t, essential_name(lname)) if lname else None
                if found is None:
                    raise _Unresolved(f"no field {lname or '(anonymous)'} in {t.name or 'an anonymous type'}")
                extra, member_type, raw, kflag = found
                bit_off += extra
                ltype = (lbtf, *lbtf.resolve(lmember))
            bit_off += raw & 0xFFFFFF if kflag else raw
            bit_size = raw >> 24 if kflag else 0
            type_id, t = btf.resolve(member_type)
        elif t.kind is BtfKind.ARRAY:
            elem, count = t.array
            if ltype is not None:
                lbtf, _, lt = ltype
                if lt.kind is not BtfKind.ARRAY:
                    raise _Unresolved("an array in the target is not one locally")
                ltype = (lbtf, *lbtf.resolve(lt.array[0]))
            if step >= count and count > 1:
                raise _Unresolved(f"index {step} is past the {count} elements")
            bit_off += step * 8 * btf.size_of(elem)
            bit_size = 0
            type_id, t = btf.resolve(elem)
        else:
            raise _Unresolved(f"cannot index into a {t.kind.name}")
        if ltype is not None and _family(ltype[2].kind) != _family(t.kind) and not (
                {ltype[2].kind, t.kind} <= {BtfKind.INT, BtfKind.ENUM, BtfKind.ENUM64}):
            raise _Unresolved(f"field kinds differ ({ltype[2].kind.name} locally, {t.kind.name} in the target)")
    return _Field(bit_off, bit_size, type_id)


def _find_member(btf: Btf, t: BtfType, name: str, depth: int = 0,
                 seen: set[int] | None = None) -> tuple[int, int, int, bool] | None:
    """(extra bit offset, type, raw offset word, kind_flag) of member ``name``, looking inside
    anonymous members as C does; the extra offset is that of the anonymous members crossed.
    Each anonymous type is searched once (``seen``): hostile BTF may nest one in itself."""
    if depth > 32:
        return None
    seen = set() if seen is None else seen
    kflag = bool(t.encoding)
    for mname, mtype, raw in t.members:
        if essential_name(mname) == name and mname:
            return 0, mtype, raw, kflag
    for mname, mtype, raw in t.members:
        if not mname:
            inner_id, inner = btf.resolve(mtype)
            if inner.kind in (BtfKind.STRUCT, BtfKind.UNION) and inner_id not in seen:
                seen.add(inner_id)
                found = _find_member(btf, inner, name, depth + 1, seen)
                if found is not None:
                    extra, ftype, fraw, fk = found
                    return extra + (raw & 0xFFFFFF if kflag else raw), ftype, fraw, fk
    return None


def _field_value(btf: Btf, f: _Field, kind: CoreKind) -> int:
    """libbpf's field answer: offsets and sizes widened to hold a bitfield, shifts to extract it."""
    _, t = btf.resolve(f.type_id)
    size = btf.size_of(f.type_id) if t.kind is not BtfKind.ARRAY or t.array[1] else 0
    if kind is CoreKind.FIELD_EXISTS:
        return 1
    if kind is CoreKind.FIELD_SIGNED:
        if t.kind is BtfKind.INT:
            return t.encoding & 1
        return int(t.kind in (BtfKind.ENUM, BtfKind.ENUM64) and bool(t.encoding))
    if size == 0:
        raise _Unresolved("the field has no size")
    if f.bit_size:
        byte_sz = size
        byte_off = f.bit_off // 8 // byte_sz * byte_sz
        while f.bit_off + f.bit_size - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise _Unresolved("bitfield spans more than 8 bytes")
            byte_sz *= 2
            byte_off = f.bit_off // 8 // byte_sz * byte_sz
        bit_size = f.bit_size
    else:
        if f.bit_off % 8:
            raise _Unresolved("field is not at a byte")
        byte_sz, byte_off, bit_size = size, f.bit_off // 8, size * 8
    if kind is CoreKind.FIELD_BYTE_OFFSET:
        return byte_off
    if kind is CoreKind.FIELD_BYTE_SIZE:
        return byte_sz
    if kind is CoreKind.FIELD_LSHIFT_U64:
        return 64 - (f.bit_off + bit_size - byte_off * 8)
    return 64 - bit_size


def patch(code: bytearray, relo: CoreRelo, resolver: Resolver) -> str | None:
    """Apply one relocation to a section's code in place. Returns None, or, when it cannot be
    resolved, the reason, after poisoning the instruction."""
    pos = relo.insn_off
    if pos % 8 or pos + 8 > len(code):
        raise ElfError(f"{relo.describe(resolver.local)}: instruction offset is outside the section", section=SECTION)
    opcode = code[pos]
    try:
        value = resolver.value(relo)
        cls = opcode & 0x07
        if opcode == _LDDW:
            if pos + 16 > len(code):
                raise ElfError(f"{relo.describe(resolver.local)}: lddw is cut off", section=SECTION)
            struct.pack_into("<I", code, pos + 4, value & 0xFFFF_FFFF)
            struct.pack_into("<I", code, pos + 12, value >> 32 & 0xFFFF_FFFF)
        elif cls in (InsnClass.ALU, InsnClass.ALU64) and not opcode & Source.X:
            if not -(1 << 31) <= value < 1 << 32:
                raise _Unresolved(f"value {value} does not fit an immediate")
            struct.pack_into("<I", code, pos + 4, value & 0xFFFF_FFFF)
        elif cls in (InsnClass.LDX, InsnClass.ST, InsnClass.STX):
            if relo.kind is not CoreKind.FIELD_BYTE_OFFSET:
                raise _Unresolved("only a field offset can patch a memory access")
            if not -(1 << 15) <= value < 1 << 15:
                raise _Unresolved(f"offset {value} does not fit an instruction")
            struct.pack_into("<h", code, pos + 2, value)
            _resize(code, pos, relo, resolver)
        else:
            raise ElfError(f"{relo.describe(resolver.local)}: cannot patch instruction {opcode:#04x}",
                           section=SECTION)
    except _Unresolved as exc:
        poison(code, pos)
        return str(exc)
    return None


def _resize(code: bytearray, pos: int, relo: CoreRelo, resolver: Resolver) -> None:
    """A load or store of a field whose size differs in the target takes the target's size."""
    opcode = code[pos]
    size_bits = Size(opcode & 0x18)
    local, target = resolver.field_sizes(relo)
    if target == 0 or target == local or SIZE_BYTES[size_bits] != local:
        return
    if opcode & 0xE0 != Mode.MEM:
        raise _Unresolved(f"field is {target} bytes in the target, {local} locally")
    new = {v: k for k, v in SIZE_BYTES.items()}.get(target)
    if new is None:
        raise _Unresolved(f"field of {target} bytes cannot be loaded at once")
    code[pos] = opcode & ~0x18 & 0xFF | new


def poison(code: bytearray, pos: int) -> None:
    """Make the instruction a call to a helper that does not exist, as libbpf marks a failed
    relocation (the second half of an lddw too)."""
    slots = 2 if code[pos] == _LDDW and pos + 16 <= len(code) else 1
    for k in range(slots):
        struct.pack_into("<BBhi", code, pos + 8 * k, OPCODE_CALL, 0, 0, CORE_POISON)
