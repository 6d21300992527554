"""Malformed objects found by mutating valid ones: each is refused with a jitbpf error naming what
is wrong, or loads and decodes within bounds; none raises a foreign exception or runs for ever."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jitbpf.errors import BpfError, ElfError, MapError
from jitbpf.linux.btfvalues import contents
from jitbpf.linux.elf import BtfKind, load_elf
from jitbpf.linux.maps import MapShape, MapType, create_map
from tests.support import c_builder
from tests.test_elf import _section_header

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""

SOURCE = """
struct inner {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
};
struct inner first SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 2);
    __type(key, __u32);
    __array(values, struct inner);
} outer SEC(".maps") = { .values = { &first } };

struct pair { __u64 a; __u32 b[3]; };
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 5);
    __type(key, __u32);
    __type(value, struct pair);
} pairs SEC(".maps");

int counts[6];
extern int CONFIG_FOO __kconfig __weak;
extern char CONFIG_NAME[7] __kconfig __weak;
struct pair last = { 1, { 2, 3, 4 } };

SEC("xdp") int prog(struct xdp_md *ctx)
{
    __u32 k = 1;
    struct pair *p = bpf_map_lookup_elem(&pairs, &k);
    if (p)
        p->a++;
    counts[1]++;
    if (CONFIG_FOO || CONFIG_NAME[1])
        return XDP_ABORTED;
    return last.a ? XDP_PASS : XDP_DROP;
}
"""

# Bytes each BTF kind adds after its 12-byte record: fixed, or per member (the kernel's btf_type layout).
_FIXED = {BtfKind.INT: 4, BtfKind.ARRAY: 12, BtfKind.VAR: 4, BtfKind.DECL_TAG: 4}
_PER_MEMBER = {BtfKind.STRUCT: 12, BtfKind.UNION: 12, BtfKind.ENUM: 8, BtfKind.FUNC_PROTO: 8, BtfKind.DATASEC: 12,
               BtfKind.ENUM64: 12}


@dataclass(frozen=True)
class Record:
    """One BTF type record of an object file: where it lies and what it says."""

    type_id: int
    kind: BtfKind
    name: str
    at: int  # file offset of the record
    words: tuple[int, ...]  # the u32 words after the 12-byte header (array: elem, index, nelems)


def btf_records(data: bytes) -> list[Record]:
    base, _ = _section_header(data, ".BTF")
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", data, base + 4)
    strings = data[base + hdr_len + str_off : base + hdr_len + str_off + str_len]
    pos, end = base + hdr_len + type_off, base + hdr_len + type_off + type_len
    out: list[Record] = []
    while pos < end:
        name_off, info = struct.unpack_from("<II", data, pos)
        kind = BtfKind((info >> 24) & 0x1F)
        extra = _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * (info & 0xFFFF)
        words = struct.unpack_from(f"<{extra // 4}I", data, pos + 12)
        name = strings[name_off : strings.index(b"\0", name_off)].decode()
        out.append(Record(len(out) + 1, kind, name, pos, words))
        pos += 12 + extra
    return out


def _array_of(data: bytes, nelems: int) -> Record:
    """The only BTF array of ``nelems`` elements (``__uint(x, nelems)`` declares one)."""
    (found,) = [r for r in btf_records(data) if r.kind is BtfKind.ARRAY and r.words[2] == nelems]
    return found


def set_nelems(nelems: int, value: int) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        struct.pack_into("<I", out, _array_of(data, nelems).at + 12 + 8, value)
        return bytes(out)

    return mutate


def set_int_size(name: str, size: int) -> Callable[[bytes], bytes]:
    """Make the BTF integer type ``name`` (``int``, ``char``) ``size`` bytes wide."""
    def mutate(data: bytes) -> bytes:
        (record,) = [r for r in btf_records(data) if r.kind is BtfKind.INT and r.name == name]
        out = bytearray(data)
        struct.pack_into("<I", out, record.at + 8, size)
        return bytes(out)

    return mutate


def struct_members_are_itself(name: str) -> Callable[[bytes], bytes]:
    """Make every member of ``struct name`` be of type ``struct name``."""
    def mutate(data: bytes) -> bytes:
        (record,) = [r for r in btf_records(data) if r.kind is BtfKind.STRUCT and r.name == name]
        out = bytearray(data)
        for member in range(len(record.words) // 3):
            struct.pack_into("<I", out, record.at + 12 + 12 * member + 4, record.type_id)
        return bytes(out)

    return mutate


@dataclass(frozen=True)
class Case:
    what: str  # the mutation
    mutate: Callable[[bytes], bytes]  # builds the malformed object from the valid one
    error: type[BpfError] | None  # what it raises (None: it loads, runs and decodes)
    message: str = ""  # a fragment of the error message

    def __str__(self) -> str:
        return self.what


CASES = [
    Case("a global array's element count far past its section's bytes (decoding it never ended)",
         set_nelems(6, 0xFFFFFFFF), None),
    Case("a struct whose two members are itself, decoded for a global variable (2^32 values)",
         struct_members_are_itself("pair"), ElfError, "a type that contains itself"),
    Case("a map of maps' type changed to a hash (the hash map got an inner map template)",
         set_nelems(MapType.ARRAY_OF_MAPS, MapType.HASH), ElfError,
         "an inner map template is for maps of maps, not HASH maps"),
    Case("a weak __kconfig int extern of 4 GiB (its zeroes were allocated: MemoryError)",
         set_int_size("int", 0xFFFFFFFF), ElfError, r"CONFIG_FOO has an unsupported type \(INT, 4294967295 bytes\)"),
    Case("a weak __kconfig string extern of 2 GiB (MemoryError)", set_nelems(7, 0x7FFFFFF0), ElfError,
         "CONFIG_NAME is an array of 2147483632 bytes: only char arrays of at most"),
    Case("a weak __kconfig string extern of 2 GiB chars (MemoryError)", set_int_size("char", 0x7FFFFFF0), ElfError,
         "CONFIG_NAME is an array of"),
    Case("an array map of 16M entries (its contents were decoded one element at a time)",
         set_nelems(5, 1 << 24), None),
]


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return c_builder(tmp_path_factory.mktemp("malformed"), HEADER)(SOURCE).read_bytes()


def load_run_decode(data: bytes) -> dict[str, object]:
    """What a user of jitbpf does with an object: load, run each program, decode the maps."""
    obj = load_elf(data)
    for prog in obj.programs.values():
        prog.run(bytes(64))
        prog.run(bytes(64), engine="jit")
    return contents(obj)


def test_the_valid_object_loads_runs_and_decodes(valid: bytes) -> None:
    found = load_run_decode(valid)
    assert found == {"maps": {"pairs": [[1, {"a": 2, "b": [0, 0, 0]}]]},
                     "globals": {"counts": [0, 2, 0, 0, 0, 0], "last": {"a": 1, "b": [2, 3, 4]}}}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_malformed_object(valid: bytes, case: Case) -> None:
    data = case.mutate(valid)
    assert data != valid
    if case.error is None:
        load_run_decode(data)
        return
    with pytest.raises(case.error, match=case.message):
        load_run_decode(data)


def test_an_inner_map_template_is_only_for_maps_of_maps() -> None:
    inner = MapShape(MapType.ARRAY, 4, 8, 1, 0)
    with pytest.raises(MapError, match="not HASH maps") as info:
        create_map(MapType.HASH, 4, 4, 2, inner=inner)
    assert info.value.errno == 22  # EINVAL


def test_a_large_array_is_scanned_by_blocks(valid: bytes) -> None:
    obj = load_elf(set_nelems(5, 1 << 24)(valid))
    pairs = obj.maps["pairs"]
    pairs.view((1 << 24) - 1)[:8] = struct.pack("<Q", 7)
    assert list(pairs.nonzero_indices()) == [(1 << 24) - 1]
    assert contents(obj)["maps"] == {"pairs": [[(1 << 24) - 1, {"a": 7, "b": [0, 0, 0]}]]}



def _raw_btf(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings)) + body + strings


# int, then struct s { struct s; struct s; } with both members anonymous: only hostile BTF nests
# a struct in itself, and each level doubled a search of anonymous members (depth 32: 2^33 steps).
SELF_NESTED = _raw_btf([struct.pack("<IIII", 1, 1 << 24, 4, 32),
                        struct.pack("<III", 5, 4 << 24 | 2, 8) + struct.pack("<III", 0, 2, 0) * 2], b"\0int\0s\0")


def test_searches_of_anonymous_members_look_at_each_type_once() -> None:
    from jitbpf.linux.btfctx import BtfTypes
    from jitbpf.linux.core import _find_member
    from jitbpf.linux.elf import Btf

    btf = Btf(SELF_NESTED)
    types = BtfTypes(btf)
    assert types.member(2, "x") is None
    assert types.field_names(2) == []  # (it recursed without end)
    assert _find_member(btf, btf.resolve(2)[1], "x") is None


NO_KEY_ROOM = """
struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); };
struct inner first SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH_OF_MAPS); __uint(max_entries, 300); __type(key, __u8);
         __array(values, struct inner); } outer SEC(".maps") = { .values = { [257] = &first } };
SEC("xdp") int prog(struct xdp_md *ctx) { return XDP_PASS; }
"""


def test_a_values_slot_past_the_outer_maps_key_is_an_elf_error(tmp_path: Path) -> None:
    """(It was an OverflowError from int.to_bytes.)"""
    path = c_builder(tmp_path, HEADER)(NO_KEY_ROOM)
    with pytest.raises(ElfError, match=r"slot 257 of \.values does not fit its 1-byte key"):
        load_elf(path)


def values_point_at_the_outer_map(data: bytes) -> bytes:
    """Make the pointer type of ``outer``'s ``.values`` elements point at outer's own struct."""
    records = btf_records(data)
    (var,) = [r for r in records if r.kind is BtfKind.VAR and r.name == "outer"]
    (inner,) = [r for r in records if r.kind is BtfKind.STRUCT and r.name == "inner"]
    (ptr,) = [r for r in records if r.kind is BtfKind.PTR and struct.unpack_from("<I", data, r.at + 8)[0] ==
              inner.type_id]
    out = bytearray(data)
    struct.pack_into("<I", out, ptr.at + 8, struct.unpack_from("<I", data, var.at + 8)[0])
    return bytes(out)


def test_a_map_of_maps_whose_template_is_itself_is_an_elf_error(valid: bytes) -> None:
    """(Reading the template read the map again: RecursionError.)"""
    with pytest.raises(ElfError, match=r"an inner map template has no \.values"):
        load_elf(values_point_at_the_outer_map(valid))


@pytest.mark.parametrize("value", ["--5", "\u00b2", "5x"])
def test_a_kconfig_value_that_is_no_number_is_an_elf_error(valid: bytes, value: str) -> None:
    """('²' is a digit to str.isdigit, not to int(): a ValueError came out.)"""
    with pytest.raises(ElfError, match="is not y, m, n or a number"):
        load_elf(valid, kconfig={"CONFIG_FOO": value})


TEMPLATE_ONLY = """
struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); };
struct { __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); __uint(max_entries, 3); __type(key, __u32);
         __array(values, struct inner); } outer SEC(".maps");
SEC("xdp") int prog(struct xdp_md *ctx) { return XDP_PASS; }
"""


def test_an_inner_map_template_of_unknown_type_is_an_elf_error(tmp_path: Path) -> None:
    """A template that is no map of its own (its type was read as a MapType: ValueError)."""
    data = set_nelems(MapType.ARRAY, 1000)(c_builder(tmp_path, HEADER)(TEMPLATE_ONLY).read_bytes())
    with pytest.raises(ElfError, match="map outer: its inner map template is of unknown type 1000"):
        load_elf(data)
