"""CO-RE relocations resolved against a target BTF: a hand-made layout that moves fields, and the
running kernel's BTF when it is readable."""

from __future__ import annotations

import io
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf.errors import ElfError, VerifierError
from jitbpf.linux.core import CoreKind, read_relocations
from jitbpf.linux.elf import VMLINUX_BTF, Btf, BtfKind, load_elf
from tests.support import c_builder

CLANG = shutil.which("clang")
LIBBPF_HEADERS = Path("/usr/include/bpf/bpf_core_read.h")
ENGINES = ["interp", "jit"]
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
"""
Build = Callable[[str], Path]

# What the program was compiled against ...
LOCAL = """
struct thing { int a; int b; unsigned char c; int gone; unsigned int bf:3, bf2:5; }
    __attribute__((preserve_access_index));
enum colour { RED = 1, GREEN = 2 };
struct thing g;
"""
# ... and the target's layout: fields moved and widened, one gone, enumerators renumbered.
TARGET = """
struct thing { long pad; int b; int a; unsigned int bf:4, bf2:6; unsigned char c; };
enum colour { GREEN = 7, RED = 1 };
struct thing x; enum colour y;
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("core"), HEADER)


def btf_of(obj: Path) -> bytes:
    """The raw .BTF section of an object: a target BTF as a kernel would describe its types."""
    with obj.open("rb") as f:
        sec = ELFFile(io.BytesIO(f.read())).get_section_by_name(".BTF")
        assert sec is not None
        return bytes(sec.data())


@pytest.fixture(scope="module")
def target(build: Build) -> bytes:
    return btf_of(build(TARGET))


def run(path: Path, target: bytes | None, engine: str, expr: str) -> int:
    obj = load_elf(path, btf=target)
    return int(obj.programs["prog"].run(bytes(64), engine=engine)[0])


CASES = [  # expression, value against the local layout, value against TARGET
    ("bpf_core_field_offset(struct thing, b)", 4, 8),
    ("bpf_core_field_offset(struct thing, c)", 8, 18),  # after the 10 bits of bitfields
    ("bpf_core_field_size(struct thing, c)", 1, 1),
    ("bpf_core_field_exists(struct thing, gone)", 1, 0),
    ("bpf_core_field_exists(struct thing, a)", 1, 1),
    ("bpf_core_type_size(struct thing)", 20, 24),
    ("bpf_core_type_exists(struct thing)", 1, 1),
    ("bpf_core_enum_value(enum colour, GREEN)", 2, 7),
    ("bpf_core_enum_value_exists(enum colour, RED)", 1, 1),
    ("__builtin_preserve_field_info(((struct thing *)0)->a, 3)", 1, 1),  # BPF_FIELD_SIGNED
    ("__builtin_preserve_field_info(((struct thing *)0)->c, 3)", 0, 0),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("expr", "local", "moved"), CASES)
def test_relocation_kinds(build: Build, target: bytes, engine: str, expr: str, local: int, moved: int) -> None:
    path = build(LOCAL + f'SEC("xdp") int prog(struct xdp_md *ctx) {{ return {expr}; }}')
    own = btf_of(path)
    assert run(path, own, engine, expr) == local
    assert run(path, target, engine, expr) == moved


@pytest.mark.parametrize("engine", ENGINES)
def test_reads_follow_the_target_layout(build: Build, target: bytes, engine: str) -> None:
    # The global has the target's layout here (a kernel object would): reads must find b and bf2.
    path = build("""
struct thing { int a; int b; unsigned int bf:3, bf2:5; } __attribute__((preserve_access_index));
struct { long pad; int b; int a; unsigned int bits; unsigned char c; } g;
SEC("xdp") int prog(struct xdp_md *ctx)
{ struct thing *t = (void *)&g; return t->b * 1000 + BPF_CORE_READ_BITFIELD(t, bf2); }
""")
    obj = load_elf(path, btf=target)
    view = obj.variable("g")
    struct.pack_into("<qiiI", view, 0, 0, 5, 9, 42 << 4 | 0xF)
    assert obj.programs["prog"].run(bytes(64), engine=engine)[0] == 5 * 1000 + 42


@pytest.mark.parametrize("engine", ENGINES)
def test_fields_inside_anonymous_members_match_by_name(build: Build, engine: str) -> None:
    """Locally a field sits in an anonymous union (access 0:1:0); in the target it sits in another
    anonymous member at another place. As libbpf, only named members are matched."""
    local = """
struct pkt { int a; union { long stamp; long alias; }; int b; } __attribute__((preserve_access_index));
struct pkt g;
SEC("xdp") int prog(struct xdp_md *ctx)
{ return bpf_core_field_offset(struct pkt, stamp) * 100 + bpf_core_field_offset(struct pkt, b); }
"""
    target = btf_of(build("""
struct pkt { long pad; int a; int b; struct { int other; long stamp; }; };
struct pkt x;
"""))
    path = build(local)
    assert run(path, btf_of(path), engine, "") == 8 * 100 + 16
    assert run(path, target, engine, "") == 24 * 100 + 12


def test_guarded_failure_loads_and_reachable_failure_is_named(build: Build, target: bytes) -> None:
    guarded = build(LOCAL + 'SEC("xdp") int prog(struct xdp_md *ctx)\n'
                    '{ struct thing *t = &g; return bpf_core_field_exists(t->gone) ? t->gone : 3; }')
    obj = load_elf(guarded, btf=target)
    assert any("(0:3)" in why for why in obj.programs["prog"].core_failures.values())
    assert obj.programs["prog"].run(bytes(64))[0] == 3
    unguarded = build(LOCAL + 'SEC("xdp") int prog(struct xdp_md *ctx) { struct thing *t = &g; return t->gone; }')
    obj = load_elf(unguarded, btf=target)
    with pytest.raises(VerifierError, match=r"CO-RE relocation field_byte_offset of struct thing \(0:3\)"):
        obj.programs["prog"].vm()


def test_records_are_read(build: Build) -> None:
    path = build(LOCAL + 'SEC("xdp") int prog(struct xdp_md *ctx) { return bpf_core_type_size(struct thing); }')
    with path.open("rb") as f:
        elf = ELFFile(io.BytesIO(f.read()))
        ext, btf_sec = elf.get_section_by_name(".BTF.ext"), elf.get_section_by_name(".BTF")
        assert ext is not None and btf_sec is not None
        relos = read_relocations(bytes(ext.data()), Btf(bytes(btf_sec.data())))
    assert [(r.section, r.kind, r.access) for r in relos] == [("xdp", CoreKind.TYPE_SIZE, "0")]


def test_bad_target_file(build: Build, tmp_path: Path) -> None:
    path = build(LOCAL + 'SEC("xdp") int prog(struct xdp_md *ctx) { return bpf_core_type_size(struct thing); }')
    with pytest.raises(ElfError, match="cannot read the target BTF"):
        load_elf(path, btf=tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"\0" * 32)
    with pytest.raises(ElfError, match="bad BTF magic"):
        load_elf(path, btf=tmp_path / "junk")


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    if not os.access(VMLINUX_BTF, os.R_OK):
        pytest.skip(f"the running kernel's BTF ({VMLINUX_BTF}) is not readable")
    return Btf(Path(VMLINUX_BTF).read_bytes())


def test_against_the_running_kernel(build: Build, vmlinux: Btf) -> None:
    path = build("""
struct task_struct { int pid; int tgid; } __attribute__((preserve_access_index));
SEC("xdp") int prog(struct xdp_md *ctx)
{ return bpf_core_field_offset(struct task_struct, tgid) - bpf_core_field_offset(struct task_struct, pid); }
""")
    task = vmlinux.find(BtfKind.STRUCT, "task_struct")
    assert task is not None
    offsets = {name: bits // 8 for name, _, bits in task.members}
    obj = load_elf(path, btf=vmlinux)
    assert obj.programs["prog"].run(bytes(64))[0] == offsets["tgid"] - offsets["pid"]
    assert load_elf(path).programs["prog"].run(bytes(64))[0] == offsets["tgid"] - offsets["pid"]  # the default


@pytest.fixture(scope="module")
def fuzz_object(build: Build) -> tuple[bytes, int, int]:
    """An object with several kinds of relocation, and where its .BTF.ext section lies."""
    path = build(LOCAL + 'SEC("xdp") int prog(struct xdp_md *ctx)\n'
                 '{ struct thing *t = &g;\n'
                 '  return t->b + bpf_core_field_exists(t->gone) + BPF_CORE_READ_BITFIELD(t, bf2); }')
    raw = path.read_bytes()
    ext = ELFFile(io.BytesIO(raw)).get_section_by_name(".BTF.ext")
    assert ext is not None
    return raw, int(ext["sh_offset"]), int(ext["sh_size"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_relocation_records_are_load_errors(fuzz_object: tuple[bytes, int, int], target: bytes,
                                                    data: st.DataObject) -> None:
    original, start, size = fuzz_object
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        at = start + data.draw(st.integers(0, size - 1))
        raw[at] = data.draw(st.integers(0, 255))
    try:
        obj = load_elf(bytes(raw), btf=target)
        obj.programs["prog"].run(bytes(64))
    except (ElfError, VerifierError):
        pass  # refused with a located error: never anything else, never a crash
