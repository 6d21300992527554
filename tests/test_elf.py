"""ELF loading: the C examples compiled by clang, their maps, global data and relocations, and corrupt objects."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf import load_elf
from jitbpf.errors import BpfError, ElfError, VerifierError
from jitbpf.isa import Program, PseudoSrc
from jitbpf.linux.elf import RELOCATIONS, ElfObject, Reloc, RelocTarget
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLANG = shutil.which("clang")
needs_clang = pytest.mark.skipif(
    CLANG is None, reason="clang is not installed: the ELF examples are compiled from C (apt-get install clang)"
)
ENGINES = [
    "interp",
    pytest.param("jit", marks=pytest.mark.skipif(not hasattr(VM, "execute_jit_regions"),
                                                 reason="the JIT engine is not available")),
]
Compiler = Callable[[str], Path]


def compile_c(source: Path, out_dir: Path) -> Path:
    """Compile one C file to an eBPF object as the examples are built (clang -target bpf -O2 -g)."""
    assert CLANG is not None
    out = out_dir / (source.stem + ".o")
    cmd = [CLANG, "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-I", str(EXAMPLES / "include"),
           "-c", str(source), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise AssertionError(f"clang failed on {source.name}:\n{done.stderr}")
    return out


def example_compiler(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    """A function compiling ``examples/NAME.c`` (or a C source text) once into a temporary directory."""
    if CLANG is None:
        pytest.skip("clang is not installed: the ELF examples are compiled from C (apt-get install clang)")
    out_dir = tmp_path_factory.mktemp("bpf-objects")
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            source = EXAMPLES / f"{name}.c"
            if "\n" in name:  # C source text given by a test
                source = out_dir / f"src{len(built)}.c"
                source.write_text(name)
            built[name] = compile_c(source, out_dir)
        return built[name]

    return build


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return example_compiler(tmp_path_factory)


# -- what the examples hold --------------------------------------------------------------------------

EXPECTED = {
    "xdp_firewall": {"xdp_firewall": ("xdp", ProgType.XDP)},
    "xdp_adjust": {"xdp_vlan_push": ("xdp", ProgType.XDP), "xdp_truncate": ("xdp", ProgType.XDP)},
    "socket_filter": {"udp_only": ("socket", ProgType.SOCKET_FILTER)},
    "tc_classifier": {"tc_filter": ("tc", ProgType.SCHED_CLS)},
    "kprobe": {"trace_openat": ("kprobe/do_sys_openat2", ProgType.KPROBE)},
    "perf_event": {"on_sample": ("perf_event", ProgType.PERF_EVENT)},
    "cgroup_skb": {"ingress": ("cgroup_skb/ingress", ProgType.CGROUP_SKB)},
    "cgroup_sock": {"sock_create": ("cgroup/sock", ProgType.CGROUP_SOCK)},
    "cgroup_dev": {"dev_policy": ("cgroup/dev", ProgType.CGROUP_DEVICE)},
    "sock_addr": {"connect_redirect": ("cgroup/connect4", ProgType.CGROUP_SOCK_ADDR)},
    "sockops": {"tune": ("sockops", ProgType.SOCK_OPS)},
    "sk_skb": {"parser": ("sk_skb/stream_parser", ProgType.SK_SKB),
               "verdict": ("sk_skb/stream_verdict", ProgType.SK_SKB)},
    "sk_msg": {"msg_verdict": ("sk_msg", ProgType.SK_MSG)},
    "xdp_tail_call": {"xdp_dispatch": ("xdp", ProgType.XDP), "xdp_udp_stage": ("xdp", ProgType.XDP),
                      "xdp_icmp_stage": ("xdp", ProgType.XDP)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_example_loads_with_its_programs_and_types(example: Compiler, name: str) -> None:
    obj = load_elf(example(name))
    got = {p.name: (p.section, p.prog_type) for p in obj.programs.values()}
    assert got == EXPECTED[name]
    assert obj.license in ("GPL", "Dual MIT/GPL")
    for prog in obj.programs.values():
        assert len(prog.code) % 8 == 0
        Program.from_bytes(prog.code)  # decodes
        prog.vm().check()  # and passes the verifier with its program type's context


def test_btf_map_of_the_firewall(example: Compiler) -> None:
    obj = load_elf(example("xdp_firewall"))
    spec = obj.map_defs["BLOCKED_IPS"]
    assert (spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.origin) == (1, 4, 1, 1024, "btf")
    m = obj.maps["BLOCKED_IPS"]
    assert (m.key_size, m.value_size, m.max_entries, m.name) == (4, 1, 1024, "BLOCKED_IPS")
    lddw = [i for i in Program.from_bytes(obj.programs["xdp_firewall"].code).insns if i.opcode == 0x18]
    assert [(i.src, i.imm) for i in lddw] == [(PseudoSrc.MAP_FD, obj.map_handles["BLOCKED_IPS"])]


def test_legacy_maps_section(example: Compiler) -> None:
    obj = load_elf(example("socket_filter"))
    spec = obj.map_defs["proto_count"]
    assert (spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.origin, spec.section) == (
        2, 4, 8, 256, "legacy", "maps")


def test_global_data_becomes_single_entry_array_maps(example: Compiler) -> None:
    obj = load_elf(example("tc_classifier"))
    rodata, data, bss = (obj.map_defs[n] for n in (".rodata", ".data", ".bss"))
    assert (rodata.map_type, rodata.max_entries, rodata.value_size, rodata.origin) == (2, 1, 2, "data")
    assert rodata.flags & 0x80  # programs may not write .rodata
    assert bss.value_size == 16 and data.value_size == 4
    assert bytes(obj.maps[".rodata"].view(0)) == struct.pack("<H", 53)
    assert bytes(obj.maps[".data"].view(0)) == struct.pack("<I", 0x42)
    assert bytes(obj.maps[".bss"].view(0)) == bytes(16)
    insns = Program.from_bytes(obj.programs["tc_filter"].code).insns
    refs = {(obj.map_handles[n], off) for n, off in ((".rodata", 0), (".data", 0), (".bss", 0), (".bss", 8))}
    seen = {(i.imm, i.next_imm) for i in insns if i.opcode == 0x18 and i.src == PseudoSrc.MAP_VALUE}
    assert seen == refs


def test_bpf_to_bpf_callee_from_text_is_appended_to_each_program(example: Compiler) -> None:
    obj = load_elf(example("xdp_adjust"))
    with open(example("xdp_adjust"), "rb") as f:
        elf = ELFFile(f)
        text, xdp = elf.get_section_by_name(".text"), elf.get_section_by_name("xdp")
        assert text is not None and xdp is not None
        text_size, xdp_size = text.data_size, xdp.data_size
    push, trunc = obj.programs["xdp_vlan_push"], obj.programs["xdp_truncate"]
    assert len(push.code) + len(trunc.code) == xdp_size + 2 * text_size  # each got its own copy of count()
    for prog in (push, trunc):
        slots = len(prog.code) // 8
        calls = [(pc, insn) for pc, insn, _ in Program.from_bytes(prog.code) if insn.opcode == 0x85 and insn.src == 1]
        assert calls
        for pc, insn in calls:
            assert pc + 1 + insn.imm == slots - text_size // 8  # the appended callee's first slot


def test_program_array_values_initialiser(example: Compiler) -> None:
    obj = load_elf(example("xdp_tail_call"))
    spec = obj.map_defs["jump_table"]
    assert (spec.map_type, spec.key_size, spec.value_size, spec.max_entries) == (3, 4, 4, 256)
    table = obj.maps["jump_table"]
    assert list(table) == [1, 17]
    assert table.get(17).program.to_bytes() == obj.programs["xdp_udp_stage"].code


def test_several_programs_in_one_section_and_lookup_by_section(example: Compiler) -> None:
    obj = load_elf(example("xdp_adjust"))
    assert sorted(obj.sections()["xdp"], key=lambda p: p.name) == sorted(obj.programs.values(), key=lambda p: p.name)
    with pytest.raises(ElfError, match="several programs"):
        obj.program("xdp")
    assert obj.program("xdp_truncate").name == "xdp_truncate"
    sk = load_elf(example("sk_skb"))
    assert sk.program("sk_skb/stream_verdict").name == "verdict"
    with pytest.raises(ElfError, match="no program or section"):
        sk.program("nope")


def test_loads_from_bytes_like_from_a_path(example: Compiler) -> None:
    path = example("tc_classifier")
    a, b = load_elf(path), load_elf(path.read_bytes())
    assert {n: p.code for n, p in a.programs.items()} == {n: p.code for n, p in b.programs.items()}
    assert a.maps[".bss"] is not b.maps[".bss"]  # every load creates its own maps


@pytest.mark.parametrize("engine", ENGINES)
def test_programs_of_one_object_share_its_maps(example: Compiler, engine: str) -> None:
    obj = load_elf(example("xdp_adjust"))
    frame = bytes(range(6)) * 2 + b"\x08\x00" + bytes(100)
    action, out = obj.programs["xdp_vlan_push"].vm().run_xdp(frame, engine=engine)
    assert int(action) == 3 and len(out) == len(frame) + 4
    action, out = obj.programs["xdp_truncate"].vm().run_xdp(frame, engine=engine)
    assert int(action) == 2 and len(out) == 64
    stats = obj.maps["xdp_stats"]
    assert (stats[0], stats[1]) == (len(frame) + 4, len(frame) - 64)


def test_run_convenience_uses_the_program_types_runner(example: Compiler) -> None:
    obj = load_elf(example("cgroup_dev"))
    assert obj.programs["dev_policy"].run(1, 3) == 1
    assert obj.programs["dev_policy"].run(1, 1) == 0


def test_attach_gives_a_vm_the_objects_maps(example: Compiler) -> None:
    obj = load_elf(example("xdp_firewall"))
    vm = VM(obj.programs["xdp_firewall"].code, prog_type="xdp")
    obj.attach(vm)
    assert vm.maps[obj.map_handles["BLOCKED_IPS"]] is obj.maps["BLOCKED_IPS"]


# -- corrupt and unsupported objects -------------------------------------------------------------


def _section_header(data: bytes, name: str) -> tuple[int, int]:
    """(offset, size) of a section's contents."""
    elf = ELFFile(io.BytesIO(data))
    sec = elf.get_section_by_name(name)
    assert sec is not None
    return int(sec["sh_offset"]), int(sec["sh_size"])


def _symbol_index(data: bytes, name: str) -> int:
    elf = ELFFile(io.BytesIO(data))
    symtab = elf.get_section_by_name(".symtab")
    assert isinstance(symtab, SymbolTableSection)
    return next(i for i, s in enumerate(symtab.iter_symbols()) if s.name == name)


def _patch_relocation(data: bytes, rel_section: str, index: int, *, offset: int | None = None,
                      sym: int | None = None, kind: int | None = None) -> bytes:
    out = bytearray(data)
    base, _ = _section_header(data, rel_section)
    r_offset, r_info = struct.unpack_from("<QQ", out, base + 16 * index)
    r_sym, r_type = r_info >> 32, r_info & 0xFFFFFFFF
    struct.pack_into("<QQ", out, base + 16 * index, r_offset if offset is None else offset,
                     (r_sym if sym is None else sym) << 32 | (r_type if kind is None else kind))
    return bytes(out)


def test_not_an_elf_object() -> None:
    with pytest.raises(ElfError, match="not an ELF"):
        load_elf(b"hello world, not an object")
    with pytest.raises(ElfError, match="not an ELF"):
        load_elf(b"")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ElfError, match="cannot read"):
        load_elf(tmp_path / "nope.o")


def test_truncated_file(example: Compiler) -> None:
    data = example("xdp_firewall").read_bytes()
    for cut in (40, 63, len(data) // 2, len(data) - 1):
        with pytest.raises(ElfError, match=r"truncated|past the end"):
            load_elf(data[:cut])


def test_wrong_machine(example: Compiler) -> None:
    data = bytearray(example("xdp_firewall").read_bytes())
    struct.pack_into("<H", data, 18, 62)  # EM_X86_64
    with pytest.raises(ElfError, match="wrong machine EM_X86_64"):
        load_elf(bytes(data))


def test_big_endian_and_32_bit_objects_are_refused(example: Compiler) -> None:
    data = bytearray(example("xdp_firewall").read_bytes())
    data[5] = 2
    with pytest.raises(ElfError, match="big-endian"):
        load_elf(bytes(data))
    data[5], data[4] = 1, 1
    with pytest.raises(ElfError, match="64-bit"):
        load_elf(bytes(data))


def test_bad_relocation_type(example: Compiler) -> None:
    data = _patch_relocation(example("xdp_firewall").read_bytes(), ".relxdp", 0, kind=Reloc.R_BPF_64_ABS32)
    with pytest.raises(ElfError, match="unsupported relocation type R_BPF_64_ABS32") as info:
        load_elf(data)
    assert info.value.section == "xdp"
    data = _patch_relocation(example("xdp_firewall").read_bytes(), ".relxdp", 0, kind=77)
    with pytest.raises(ElfError, match="unsupported relocation type 77"):
        load_elf(data)


def test_relocation_out_of_bounds(example: Compiler) -> None:
    data = _patch_relocation(example("xdp_firewall").read_bytes(), ".relxdp", 0, offset=0x4000)
    with pytest.raises(ElfError, match="out of bounds") as info:
        load_elf(data)
    assert "offset 0x4000" in str(info.value)


def test_relocation_not_on_lddw(example: Compiler) -> None:
    data = _patch_relocation(example("xdp_firewall").read_bytes(), ".relxdp", 0, offset=0)
    with pytest.raises(ElfError, match="must be on an lddw"):
        load_elf(data)


def test_relocation_to_a_symbol_that_is_not_a_map(example: Compiler) -> None:
    raw = example("xdp_firewall").read_bytes()
    data = _patch_relocation(raw, ".relxdp", 0, sym=_symbol_index(raw, "LICENSE"))
    with pytest.raises(ElfError, match="neither a map nor global data"):
        load_elf(data)
    data = _patch_relocation(raw, ".relxdp", 0, sym=10_000)
    with pytest.raises(ElfError, match="symbol 10000, which does not exist"):
        load_elf(data)


def test_relocation_table_refuses_what_clang_does_not_emit(example: Compiler) -> None:
    """A call relocation must name a function: aimed at a map's lddw it is refused by the table."""
    data = _patch_relocation(example("xdp_firewall").read_bytes(), ".relxdp", 0, kind=Reloc.R_BPF_64_32)
    with pytest.raises(ElfError, match=r"R_BPF_64_32 cannot refer to '.*', a map") as info:
        load_elf(data)
    assert info.value.section == "xdp"
    assert set(RELOCATIONS) == {(Reloc.R_BPF_64_64, t) for t in RelocTarget} | {
        (Reloc.R_BPF_64_32, RelocTarget.FUNCTION)}


def test_relocation_to_an_unknown_map(example: Compiler) -> None:
    raw = example("xdp_firewall").read_bytes()
    # Turn the local label LBB0_5 into a section symbol of .maps at an offset where no map lies.
    index = _symbol_index(raw, "LBB0_5")
    symtab, _ = _section_header(raw, ".symtab")
    maps_index = next(i for i, s in enumerate(ELFFile(io.BytesIO(raw)).iter_sections()) if s.name == ".maps")
    data = bytearray(raw)
    entry = symtab + 24 * index
    data[entry + 4] = 3  # STB_LOCAL, STT_SECTION
    struct.pack_into("<HQ", data, entry + 6, maps_index, 16)
    data = bytearray(_patch_relocation(bytes(data), ".relxdp", 0, sym=index))
    with pytest.raises(ElfError, match="unknown map 'LBB0_5'"):
        load_elf(bytes(data))


def test_undefined_map_symbol(example: Compiler) -> None:
    source = """
#include "jitbpf_helpers.h"
extern struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u32); } missing
    __attribute__((section(".maps")));
SEC("xdp") int prog(struct xdp_md *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&missing, &k) ? 1 : 2; }
"""
    with pytest.raises(ElfError, match="'missing' is undefined"):
        load_elf(example(source))


def test_bpf_to_bpf_calls_in_hand_made_sections(example: Compiler) -> None:
    # Callees given a section of their own are linked like .text ones (libbpf would refuse this).
    source = """
#include "jitbpf_helpers.h"
__noinline int twice(int x) { return x * 2; }
SEC("xdp") int prog(struct xdp_md *ctx) { return twice(ctx->rx_queue_index) == 4 ? XDP_DROP : XDP_PASS; }
"""
    obj = load_elf(example(source))
    vm = obj.programs["prog"].vm()
    assert vm.run_xdp(bytes(20), rx_queue_index=2)[0] == 1
    assert vm.run_xdp(bytes(20), rx_queue_index=3)[0] == 2


def test_text_only_objects_give_untyped_programs(example: Compiler) -> None:
    source = """
int add(int *mem) { return mem[0] + mem[1]; }
"""
    obj = load_elf(example(source))
    prog = obj.programs["add"]
    assert prog.prog_type is ProgType.UNSPEC and prog.section == ".text"
    assert prog.run(bytearray(struct.pack("<ii", 40, 2))) == 42


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_corrupt_objects_raise_only_bpf_errors(example: Compiler, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["xdp_firewall", "tc_classifier", "xdp_adjust", "socket_filter"]))
    raw = bytearray(example(name).read_bytes())
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1,
                               max_size=12))
    for pos, value in edits:
        raw[pos] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    blob = bytes(raw if cut is None else raw[:cut])
    try:
        obj: ElfObject = load_elf(blob)
        for prog in obj.programs.values():
            prog.vm().check()
    except BpfError:
        pass


LOOPING_XDP = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

volatile const int ports_len = 3;
const volatile unsigned short ports[8] = {22, 80, 443};

SEC("xdp")
int count_ports(struct xdp_md *ctx)
{
    int hits = 0;
    for (int i = 0; i < ports_len && i < 8; i++)  /* a bounded loop, as libbpf-tools write them */
        if (ports[i] > 50)
            hits++;
    return hits;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_c_programs_may_loop_as_the_kernel_lets_them(example: Compiler, engine: str) -> None:
    obj = load_elf(example(LOOPING_XDP))
    vm = obj.programs["count_ports"].vm()
    assert vm.run_xdp(bytes(64), engine=engine)[0] == 2
    with pytest.raises(VerifierError, match="back-edge"):
        obj.programs["count_ports"].vm(allow_loops=False).check()


SIZED_LATER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");  /* no max_entries: the loader sets it, as libbpf-tools' do */

SEC("xdp")
int count(struct xdp_md *ctx)
{
    __u32 key = 1;
    __u64 one = 1;
    bpf_map_update_elem(&counts, &key, &one, BPF_ANY);
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_maps_are_sized_before_they_are_created(example: Compiler) -> None:
    with pytest.raises(ElfError, match="cannot create map counts"):
        load_elf(example(SIZED_LATER))
    obj = load_elf(example(SIZED_LATER), map_settings={"counts": {"max_entries": 4}})
    assert obj.maps["counts"].max_entries == 4
    assert obj.programs["count"].vm().run_xdp(bytes(64))[0] == 2
    with pytest.raises(ElfError, match="names no map of the object: 'count'"):
        load_elf(example(SIZED_LATER), map_settings={"count": {"max_entries": 4}})
    with pytest.raises(ElfError, match="no such setting size"):
        load_elf(example(SIZED_LATER), map_settings={"counts": {"size": 4}})
    with pytest.raises(ElfError, match="max_entries must be an integer"):
        load_elf(example(SIZED_LATER), map_settings={"counts": {"max_entries": "4"}})  # type: ignore[dict-item]
    with pytest.raises(ElfError, match="give a dict of settings"):
        load_elf(example(SIZED_LATER), map_settings={"counts": 4})  # type: ignore[dict-item]
    with pytest.raises(ElfError, match="max_entries must be an unsigned 32-bit integer"):
        load_elf(example(SIZED_LATER), map_settings={"counts": {"max_entries": -1}})
