"""Map keys and values and global variables decoded through an object's BTF, as the C source
declares them: structs and unions become dicts with the C field names, arrays lists (``char``
arrays strings), enums their enumerator names, integers signed or not as declared."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from jitbpf.errors import ElfError
from jitbpf.linux.elf import Btf, BtfKind
from jitbpf.output import plain

if TYPE_CHECKING:
    from jitbpf.linux.elf import ElfObject

MAX_DEPTH = 32  # nesting of types, as the loader's size computation allows
VALUES_PER_BYTE = 64  # values one decode may produce per byte decoded (bitfields, nesting), plus a margin
_FLOATS = {4: struct.Struct("<f"), 8: struct.Struct("<d")}
_INT_SIGNED, _INT_CHAR, _INT_BOOL = 1, 2, 4  # BTF_INT_* encodings


class Decoder:
    """Decodes raw bytes of BTF types (by type id) into plain Python values."""

    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        self._left = 0  # values the decode in progress may still produce

    def decode(self, type_id: int, data: bytes, depth: int = 0) -> Any:
        """The value of type ``type_id`` stored in ``data`` (bytes when the type says nothing more).

        A malformed BTF (a struct holding itself, members overlapping many times over) is an
        ElfError once the values decoded far outnumber the bytes, rather than a decode that
        never ends."""
        if depth == 0:
            self._left = VALUES_PER_BYTE * (len(data) + 64)
        elif depth > MAX_DEPTH:
            return bytes(data)
        self._left -= 1
        if self._left < 0:
            raise ElfError(f"BTF type {type_id} describes more values than its {len(data)} bytes can hold "
                           "(a type that contains itself?)", section=".BTF")
        _, t = self.btf.resolve(type_id)
        match t.kind:
            case BtfKind.INT:
                if t.encoding & _INT_BOOL:
                    return any(data)
                return int.from_bytes(data[: t.size_or_type], "little", signed=bool(t.encoding & _INT_SIGNED))
            case BtfKind.ENUM | BtfKind.ENUM64:
                value = int.from_bytes(data[: t.size_or_type], "little", signed=bool(t.encoding))
                return next((name for name, v in t.enumerators if v == value), value)
            case BtfKind.PTR:
                return int.from_bytes(data[:8], "little")
            case BtfKind.FLOAT if t.size_or_type in _FLOATS and len(data) >= t.size_or_type:
                return _FLOATS[t.size_or_type].unpack_from(data)[0]
            case BtfKind.ARRAY:
                return self._array(t.array, data, depth)
            case BtfKind.STRUCT | BtfKind.UNION:
                return self._fields(t.members, data, depth)
            case _:
                return bytes(data)

    def _array(self, array: tuple[int, int], data: bytes, depth: int) -> Any:
        elem_id, count = array
        _, elem = self.btf.resolve(elem_id)
        size = self.btf.size_of(elem_id)
        if elem.kind is BtfKind.INT and size == 1 and (elem.encoding & _INT_CHAR or elem.name == "char"):
            return data[:count].split(b"\0", 1)[0].decode("utf-8", "replace")
        count = min(count, len(data) // size) if size > 0 else 0  # elements past the data do not exist
        return [self.decode(elem_id, data[i * size : (i + 1) * size], depth + 1) for i in range(count)]

    def _fields(self, members: tuple[tuple[str, int, int], ...], data: bytes, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, member_type, bit_offset in members:
            bits, offset = bit_offset >> 24, bit_offset & 0xFFFFFF  # bitfield size (kind_flag structs), offset
            size = self.btf.size_of(member_type)
            if bits:
                whole = int.from_bytes(data[offset // 8 : offset // 8 + size], "little")
                value: Any = (whole >> (offset % 8)) & ((1 << bits) - 1)
            else:
                value = self.decode(member_type, data[offset // 8 : offset // 8 + size], depth + 1)
            if not name and isinstance(value, dict):
                out.update(value)  # an anonymous struct or union: its fields are the parent's, as in C
            else:
                out[name] = value
        return out


def _raw(value: Any, size: int) -> bytes:
    """A key or value as a map hands it out (an int for sizes 1, 2, 4 and 8), back to its bytes."""
    if isinstance(value, int):
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return bytes(value)


class TypedMap:
    """A map of an ELF object whose keys and values read as their C types (read-only view)."""

    def __init__(self, obj: ElfObject, name: str) -> None:
        self.name = name
        self.map = obj[name]
        self.key_type, self.value_type = map_types(obj, name)
        self._decoder = Decoder(obj.btf) if obj.btf is not None else None

    def _decode(self, type_id: int | None, value: Any, size: int) -> Any:
        if self._decoder is None or type_id is None:
            return value
        if isinstance(value, list):  # per-CPU maps: one value per CPU
            return [self._decode(type_id, v, size) for v in value]
        return self._decoder.decode(type_id, _raw(value, size))

    def items(self, *, skip_zero: bool = False) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs, decoded; arrays give every index (or, with ``skip_zero``, those
        whose value is not all zeroes)."""
        m = self.map
        keys = (m.nonzero_indices() if skip_zero else range(m.max_entries)) if _is_array(m) else list(m)
        for key in keys:
            yield (self._decode(self.key_type, key, m.key_size), self._decode(self.value_type, m[key], m.value_size))

    def __iter__(self) -> Iterator[Any]:
        return (key for key, _ in self.items())

    def __getitem__(self, key: Any) -> Any:
        return self._decode(self.value_type, self.map[key], self.map.value_size)


def _is_array(m: Any) -> bool:
    return int(getattr(m, "map_type", -1)) in (2, 6)  # BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY


def map_types(obj: ElfObject, name: str) -> tuple[int | None, int | None]:
    """The BTF type ids of a BTF-defined map's key and value (``__type(key, ...)``), None where the
    object does not say (legacy maps, ``__uint(key_size, ...)``, no BTF)."""
    btf = obj.btf
    datasec = btf.find(BtfKind.DATASEC, ".maps") if btf is not None else None
    if btf is None or datasec is None:
        return None, None
    var = next((btf.get(v) for _, v, _ in datasec.members if btf.get(v).name == name), None)
    if var is None:
        return None, None
    _, struct_type = btf.resolve(var.size_or_type)
    found: dict[str, int] = {}
    for member, member_type, _ in struct_type.members:
        _, ptr = btf.resolve(member_type)
        if member in ("key", "value") and ptr.kind is BtfKind.PTR:
            found[member] = ptr.size_or_type
    return found.get("key"), found.get("value")


def spin_lock_offset(obj: ElfObject, name: str, struct_name: str = "bpf_spin_lock") -> int | None:
    """Where the value of the BTF-defined map ``name`` holds its ``struct bpf_spin_lock`` (or
    another special struct, ``struct_name``: a member of the value struct, as the kernel looks for
    it), or None."""
    btf = obj.btf
    _key, value = map_types(obj, name)
    if btf is None or value is None:
        return None
    _, struct_type = btf.resolve(value)
    if struct_type.kind is not BtfKind.STRUCT:
        return None
    for _member, member_type, bit_offset in struct_type.members:
        _, t = btf.resolve(member_type)
        if t.kind is BtfKind.STRUCT and t.name == struct_name:
            return bit_offset // 8
    return None


def global_variables(obj: ElfObject) -> dict[str, Any]:
    """Every global variable (``.data``, ``.rodata``, ``.bss``) by its C name, decoded from its
    live bytes; raw bytes for those the BTF does not describe."""
    btf = obj.btf
    types: dict[str, int] = {}
    if btf is not None:
        for t in btf.types:
            if t.kind is BtfKind.DATASEC:
                for _, var_id, _ in t.members:
                    var = btf.get(var_id)
                    if var.kind is BtfKind.VAR:
                        types[var.name] = var.size_or_type
    decoder = Decoder(btf) if btf is not None else None
    out: dict[str, Any] = {}
    for name in obj.variables:
        data = bytes(obj.variable(name))
        type_id = types.get(name)
        out[name] = decoder.decode(type_id, data) if decoder is not None and type_id is not None else data
    return out


def typed_maps(obj: ElfObject) -> dict[str, TypedMap]:
    """The hash and array maps of ``obj`` (not its global data), as ``TypedMap``s."""
    from jitbpf.linux.maps import Array, HashMap

    data = {n for n, d in obj.map_defs.items() if d.origin == "data"}
    return {name: TypedMap(obj, name) for name, m in obj.maps.items()
            if name not in data and isinstance(m, Array | HashMap)}


ENTRIES_SHOWN = 10  # entries per map in the text report


def _is_zero(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_is_zero(v) for v in value.values())
    if isinstance(value, list):
        return all(_is_zero(v) for v in value)
    return not value


def contents(obj: ElfObject) -> dict[str, Any]:
    """The object's maps and globals after its programs ran, decoded, as JSON-ready data:
    ``{"maps": {name: [[key, value], ...]}, "globals": {name: value}}``. Maps without entries
    are left out, and so are array elements still zero (every element exists in an array)."""
    maps: dict[str, list[list[Any]]] = {}
    for name, typed in typed_maps(obj).items():
        entries = [[plain(k), plain(v)] for k, v in typed.items(skip_zero=True)
                   if not (_is_array(typed.map) and _is_zero(v))]
        if entries:
            maps[name] = entries
    found: dict[str, Any] = {}
    if maps:
        found["maps"] = maps
    # "function.name" is a static inside a function (bpf_printk's format strings): not the user's globals.
    variables = {name: value for name, value in global_variables(obj).items() if "." not in name}
    if variables:
        found["globals"] = {name: plain(value) for name, value in variables.items()}
    return found


def contents_lines(found: dict[str, Any]) -> list[str]:
    """``contents()`` as the lines ``jitbpf run`` prints."""
    lines = []
    for name, entries in found.get("maps", {}).items():
        lines.append(f"map {name}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        lines.extend(f"  {_text(k)} -> {_text(v)}" for k, v in entries[:ENTRIES_SHOWN])
        if len(entries) > ENTRIES_SHOWN:
            lines.append(f"  ... {len(entries) - ENTRIES_SHOWN} more")
    lines.extend(f"global {name} = {_text(value)}" for name, value in found.get("globals", {}).items())
    return lines


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)
