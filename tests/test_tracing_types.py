"""BTF-typed program types (fentry, fexit, fmod_ret, tp_btf, iter, lsm, struct_ops): the context is
the attach target's ``u64 args[]``, typed by a target BTF; loads through typed pointers are checked
against the struct's layout and run as probe loads (memory the run was not given reads as 0).

Most cases use a small hand-built BTF and assembled programs, so that they need neither clang nor
the running kernel's BTF; the C programs at the end need clang (and, for one, a readable vmlinux BTF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf import VM, assemble
from jitbpf.errors import BpfError, VerifierError
from jitbpf.linux.btfctx import AttachError, BtfTypes, resolve_attach
from jitbpf.linux.elf import VMLINUX_BTF, Btf, BtfKind, load_elf
from jitbpf.linux.programs import AttachType, ProgType, section_attach_type, section_program_type
from jitbpf.verifier import RegType
from tests.support import BtfBuilder, c_builder

ENGINES = ("interp", "jit")

# -- a tiny target BTF ------------------------------------------------------------------------------


def tiny_btf() -> Btf:
    """The tiny target BTF, parsed (see ``_tiny_blob``)."""
    return Btf(_tiny_blob())


def _tiny_blob() -> bytes:
    """``int target(int x, struct obj *o, unsigned char c)`` with ``struct obj { int a; struct obj
    *next; unsigned long long b; }``, an lsm hook of the same prototype, a tracepoint and an
    iterator over objects."""
    b = BtfBuilder()
    i32 = b.integer("int", 4, signed=True)
    u8 = b.integer("unsigned char", 1)
    u64 = b.integer("unsigned long long", 8)
    # struct obj's "next" is the pointer type recorded right after it (BTF ids may refer forward).
    obj = b.struct("obj", 24, [("a", i32, 0), ("next", b.count + 2, 8), ("b", u64, 16)])
    obj_ptr = b.ptr(obj)
    proto = b.proto(i32, [("x", i32), ("o", obj_ptr), ("c", u8)])
    b.func("target", proto)
    b.func("bpf_lsm_hook", proto)
    meta = b.struct("bpf_iter_meta", 8, [("seq", u64, 0)])
    meta_ptr = b.ptr(meta)
    b.struct("bpf_iter__thing", 16, [("meta", meta_ptr, 0), ("o", obj_ptr, 8)])
    void_ptr = b.ptr(0)
    b.struct("bpf_iter__elem", 16, [("meta", meta_ptr, 0), ("key", void_ptr, 8)])
    b.struct("some_ops", 8, [("op", b.ptr(b.proto(i32, [("o", obj_ptr)])), 0)])
    b.typedef("btf_trace_evt", b.ptr(b.proto(0, [("__data", void_ptr), ("o", obj_ptr)])))
    b.func("bpf_lsm_audit_rule_known", proto)  # a hook whose programs return 0 or 1
    b.func("bpf_lsm_getprocattr", proto)  # a hook no program may attach to
    return b.blob()


@pytest.fixture(scope="module")
def btf() -> BtfTypes:
    return BtfTypes(tiny_btf())


def test_tiny_btf_is_what_it_says(btf: BtfTypes) -> None:
    obj = btf.lookup(BtfKind.STRUCT, "obj")
    assert obj is not None
    nxt = btf.member(obj, "next")
    assert nxt is not None and nxt.offset == 8
    assert btf.field(obj, 8, 8).type_id == obj  # the pointer field points to struct obj again


def tracing(src: str, btf: BtfTypes, attach: str = "fentry/target", **kwargs: object) -> VM:
    prog_type = section_program_type(attach)
    vm = VM(assemble(src), prog_type=prog_type, attach=attach, btf=btf, **kwargs)  # type: ignore[arg-type]
    vm.check()
    return vm


def both(vm: VM, *args: object, **kwargs: object) -> Any:
    """The result of a run, the same in both engines."""
    results = [vm.run_tracing(*args, engine=engine, **kwargs) for engine in ENGINES]
    assert results[0] == results[1], results
    return results[0]


# -- sections and attach types ----------------------------------------------------------------------

SECTIONS = [
    ("fentry/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FENTRY),
    ("fentry.s/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FENTRY),
    ("fexit/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FEXIT),
    ("fexit.s/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FEXIT),
    ("fmod_ret/security_x", ProgType.TRACING, AttachType.MODIFY_RETURN),
    ("tp_btf/sched_switch", ProgType.TRACING, AttachType.TRACE_RAW_TP),
    ("iter/task", ProgType.TRACING, AttachType.TRACE_ITER),
    ("iter.s/task", ProgType.TRACING, AttachType.TRACE_ITER),
    ("lsm/file_open", ProgType.LSM, AttachType.LSM_MAC),
    ("lsm.s/file_open", ProgType.LSM, AttachType.LSM_MAC),
    ("lsm_cgroup/socket_bind", ProgType.LSM, AttachType.LSM_CGROUP),
    ("raw_tp.w/bpf_test_finish", ProgType.RAW_TRACEPOINT_WRITABLE, AttachType.NONE),
    ("raw_tracepoint.w/bpf_test_finish", ProgType.RAW_TRACEPOINT_WRITABLE, AttachType.NONE),
    ("struct_ops/ssthresh", ProgType.STRUCT_OPS, AttachType.STRUCT_OPS),
    ("freplace/handler", ProgType.EXT, AttachType.NONE),
]


@pytest.mark.parametrize(("section", "prog_type", "attach_type"), SECTIONS)
def test_section_names_give_libbpf_types(section: str, prog_type: ProgType, attach_type: AttachType) -> None:
    assert section_program_type(section) is prog_type
    assert section_attach_type(section) is attach_type


# -- the context: argument slots -------------------------------------------------------------------

ATTACH_SLOTS = [
    ("fentry/target", ("x", "o", "c"), (False, True, False)),
    ("fexit/target", ("x", "o", "c", "ret"), (False, True, False, False)),
    ("fmod_ret/target", ("x", "o", "c", "ret"), (False, True, False, False)),
    ("lsm/hook", ("x", "o", "c", "ret"), (False, True, False, False)),
    ("tp_btf/evt", ("o",), (True,)),
    ("iter/thing", ("meta", "o"), (True, True)),
    ("struct_ops/some_ops.op", ("o",), (True,)),
    ("freplace/target", ("x", "o", "c"), (False, True, False)),
]


@pytest.mark.parametrize(("section", "names", "pointers"), ATTACH_SLOTS)
def test_attach_target_gives_the_slots(btf: BtfTypes, section: str, names: tuple[str, ...],
                                       pointers: tuple[bool, ...]) -> None:
    target = resolve_attach(btf, section)
    assert target.names == names
    assert tuple(bool(a.type_id) for a in target.args) == pointers


@pytest.mark.parametrize("section", ["tp_btf/evt", "struct_ops/some_ops.op", "freplace/target"])
def test_other_flavours_run_on_their_arguments(btf: BtfTypes, section: str) -> None:
    # r0 = the first struct obj argument's a, whichever slot it is in
    slot = resolve_attach(btf, section).names.index("o")
    vm = tracing(f"r2 = *(u64 *)(r1 + {8 * slot})\nr0 = *(u32 *)(r2 + 0)\nexit", btf, section)
    args: list[object] = [0] * len(resolve_attach(btf, section).names)
    args[slot] = {"a": 21}
    assert both(vm, *args) == 21


def test_iter_objects_but_meta_may_be_null(btf: BtfTypes) -> None:
    target = resolve_attach(btf, "iter/thing")
    assert [a.nullable for a in target.args] == [False, True]


def test_scalar_argument_and_pointer_field(btf: BtfTypes) -> None:
    # return x + o->a
    vm = tracing("""
        r2 = *(u64 *)(r1 + 0)
        r3 = *(u64 *)(r1 + 8)
        r4 = *(u32 *)(r3 + 0)
        r0 = r2
        r0 += r4
        exit
    """, btf, "fmod_ret/target")
    assert both(vm, 5, {"a": 37}, 0) == (42, 42)
    assert both(vm, 0, {"a": 0}, 0) == (0, None)  # r0 == 0: the function runs


def test_pointer_field_gives_a_typed_pointer(btf: BtfTypes) -> None:
    # return o->next->b: two probe loads through typed pointers
    vm = tracing("""
        r2 = *(u64 *)(r1 + 8)
        r3 = *(u64 *)(r2 + 8)
        r0 = *(u64 *)(r3 + 16)
        exit
    """, btf, "fmod_ret/target")
    assert both(vm, 0, {"next": {"b": 7}}, 0) == (7, 7)
    assert both(vm, 0, {"next": None}, 0) == (0, None)  # NULL->b reads 0


@pytest.mark.parametrize("wild", [0, 8, 0xDEAD_0000, 0xFFFF_FFFF_FFFF_FFF0, 1 << 47])
def test_probe_load_of_a_wild_pointer_gives_zero(btf: BtfTypes, wild: int) -> None:
    vm = tracing("""
        r2 = *(u64 *)(r1 + 8)
        r0 = *(u64 *)(r2 + 16)
        r0 += 1
        exit
    """, btf, "fmod_ret/target")
    assert both(vm, 0, wild, 0) == (1, 1)


def test_bytes_and_ctypes_give_the_object(btf: BtfTypes) -> None:
    import ctypes

    class Obj(ctypes.LittleEndianStructure):
        _fields_ = (("a", ctypes.c_int32), ("_pad", ctypes.c_uint32), ("next", ctypes.c_uint64),
                    ("b", ctypes.c_uint64))

    vm = tracing("""
        r2 = *(u64 *)(r1 + 8)
        r0 = *(u64 *)(r2 + 16)
        exit
    """, btf, "fmod_ret/target")
    assert both(vm, 0, Obj(b=99), 0) == (99, 99)
    assert both(vm, 0, bytes(16) + (5).to_bytes(8, "little"), 0) == (5, 5)


def test_scalar_is_bounded_by_its_c_type(btf: BtfTypes) -> None:
    # c is an unsigned char: the branch to the scalar dereference can never be taken.
    vm = tracing("""
        r2 = *(u64 *)(r1 + 16)
        if r2 > 255 goto bad
        r0 = 0
        exit
    bad:
        r0 = *(u64 *)(r2 + 0)
        exit
    """, btf)
    assert both(vm, 0, None, 0x1FF) == 0  # the runner cuts it to the type's width too


def test_fexit_reads_the_return_value(btf: BtfTypes) -> None:
    # fexit must return 0: store nothing, but only accept if the ret slot is readable
    vm = tracing("""
        r2 = *(u64 *)(r1 + 24)
        r0 = 0
        exit
    """, btf, "fexit/target")
    assert both(vm, 1, None, 2, ret=-5) == 0


def test_iter_object_must_be_checked_for_null(btf: BtfTypes) -> None:
    src = """
        r2 = *(u64 *)(r1 + 8)
        {check}
        r3 = *(u32 *)(r2 + 0)
    out:
        r0 = 0
        exit
    """
    with pytest.raises(VerifierError, match="null pointer"):
        tracing(src.format(check=""), btf, "iter/thing")
    vm = tracing(src.format(check="if r2 == 0 goto out"), btf, "iter/thing")
    assert both(vm, {"seq": 1}, {"a": 3}) == 0
    assert both(vm, {"seq": 1}, None) == 0


def test_iter_untyped_pointer_is_memory_or_null(btf: BtfTypes) -> None:
    src = """
        r2 = *(u64 *)(r1 + 8)
        r0 = 0
        {check}
        r0 = *(u8 *)(r2 + 0)
        r0 &= 1
    out:
        exit
    """
    with pytest.raises(VerifierError, match="null pointer"):
        tracing(src.format(check=""), btf, "iter/elem")
    vm = tracing(src.format(check="if r2 == 0 goto out"), btf, "iter/elem")
    assert both(vm, {"seq": 0}, b"\x03") == 1
    assert both(vm, {"seq": 0}, None) == 0


# -- what the verifier refuses ---------------------------------------------------------------------

REJECTED = [
    ("arg index out of range", "fentry/target", "r2 = *(u64 *)(r1 + 24)\nr0 = 0\nexit", "3 argument slot"),
    ("return slot of fentry", "fentry/target", "r2 = *(u64 *)(r1 + 24)\nr0 = 0\nexit", "slot 3"),
    ("narrow argument load", "fentry/target", "r2 = *(u32 *)(r1 + 0)\nr0 = 0\nexit", "8-byte slots"),
    ("misaligned argument load", "fentry/target", "r2 = *(u64 *)(r1 + 4)\nr0 = 0\nexit", "8-byte slots"),
    ("write to the arguments", "fentry/target", "*(u64 *)(r1 + 0) = 1\nr0 = 0\nexit", "read-only"),
    ("write through a typed pointer", "fentry/target",
     "r2 = *(u64 *)(r1 + 8)\n*(u32 *)(r2 + 0) = 1\nr0 = 0\nexit", "only read is supported"),
    ("load past the struct", "fentry/target",
     "r2 = *(u64 *)(r1 + 8)\nr3 = *(u64 *)(r2 + 20)\nr0 = 0\nexit", "struct obj is 24 bytes"),
    ("negative offset", "fentry/target",
     "r2 = *(u64 *)(r1 + 8)\nr3 = *(u8 *)(r2 - 1)\nr0 = 0\nexit", "struct obj is 24 bytes"),
    ("variable offset", "fentry/target",
     "r2 = *(u64 *)(r1 + 8)\nr3 = *(u64 *)(r1 + 16)\nr2 += r3\nr3 = *(u8 *)(r2 + 0)\nr0 = 0\nexit",
     "variable offset"),
    ("scalar argument dereferenced", "fentry/target",
     "r2 = *(u64 *)(r1 + 0)\nr3 = *(u8 *)(r2 + 0)\nr0 = 0\nexit", "scalar"),
    ("fentry returns non-zero", "fentry/target", "r0 = 1\nexit", "should have been in"),
]


@pytest.mark.parametrize(("case", "section", "src", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_verifier_refuses(btf: BtfTypes, case: str, section: str, src: str, message: str) -> None:
    with pytest.raises(VerifierError, match=message) as info:
        tracing(src, btf, section)
    assert info.value.pc is not None


@pytest.mark.parametrize("section", ["fentry/nowhere", "lsm/nohook", "tp_btf/noevent", "iter/nothing",
                                     "struct_ops/nostruct.op"])
def test_unknown_attach_target(btf: BtfTypes, section: str) -> None:
    with pytest.raises(AttachError, match=r"target BTF has no|STRUCT\.MEMBER"):
        tracing("r0 = 0\nexit", btf, section)


def test_no_attach_target_given(btf: BtfTypes) -> None:
    with pytest.raises(AttachError, match="needs its attach target"):
        VM(assemble("r0 = 0\nexit"), prog_type="tracing", btf=btf)


def test_no_target_btf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("jitbpf.linux.elf.VMLINUX_BTF", str(tmp_path / "missing"))
    with pytest.raises(AttachError, match="is not readable; give the target BTF"):
        VM(assemble("r0 = 0\nexit"), prog_type="tracing", attach="fentry/target")


def test_verifier_types_the_registers(btf: BtfTypes) -> None:
    from jitbpf.verifier import verify

    vm = tracing("r2 = *(u64 *)(r1 + 8)\nr0 = 0\nexit", btf)
    spec = vm.context_spec()
    assert spec is not None and spec.args is not None
    result = verify(vm.program, context=spec, helpers=vm.helpers, log=True)
    assert result.probe_loads == frozenset()  # the slot load is a context load, not a probe
    probe = tracing("r2 = *(u64 *)(r1 + 8)\nr0 = *(u32 *)(r2 + 0)\nr0 = 0\nexit", btf)
    spec = probe.context_spec()
    assert spec is not None
    assert verify(probe.program, context=spec, helpers=probe.helpers).probe_loads == {1}
    assert RegType.PTR_TO_BTF_ID.value == "ptr_"


def test_wrong_number_of_arguments(btf: BtfTypes) -> None:
    vm = tracing("r0 = 0\nexit", btf)
    with pytest.raises(ValueError, match="takes 3 argument"):
        vm.run_tracing(1, 2)


def test_unknown_field_name(btf: BtfTypes) -> None:
    vm = tracing("r0 = 0\nexit", btf)
    with pytest.raises(ValueError, match=r"no field 'nope'.*fields: a, next, b"):
        vm.run_tracing(1, {"nope": 1}, 0)


# -- C programs ------------------------------------------------------------------------------------

HEADER = """
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
"""

KERNEL_SIDE = """
struct item { int id; struct item *next; const char *label; };
__attribute__((noinline)) int handle_item(int dfd, struct item *it) { return dfd + (it ? it->id : 0); }
"""

PROGRAM_SIDE = """
struct item { int id; struct item *next; const char *label; } __attribute__((preserve_access_index));
char seen[16];
int seen_id, next_id;
SEC("fentry/handle_item")
int BPF_PROG(on_item, int dfd, struct item *it)
{
    seen_id = it->id + dfd;
    next_id = it->next->id;
    bpf_probe_read_kernel_str(seen, sizeof(seen), it->label);
    return 0;
}
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return c_builder(tmp_path_factory.mktemp("tracing"), HEADER)


def test_c_fentry_on_a_target_btf_built_by_clang(build) -> None:  # type: ignore[no-untyped-def]
    kernel = load_elf(build(KERNEL_SIDE), create_maps=False)
    assert kernel.btf is not None
    obj = load_elf(build(PROGRAM_SIDE), btf=BtfTypes(kernel.btf).btf)
    prog = obj.programs["on_item"]
    assert prog.prog_type is ProgType.TRACING and prog.attach_type is AttachType.TRACE_FENTRY
    for engine in ENGINES:
        got = prog.run(3, {"id": 4, "next": {"id": 9}, "label": "hello"}, engine=engine)
        assert got == 0
        assert int.from_bytes(obj.variable("seen_id"), "little") == 7
        assert int.from_bytes(obj.variable("next_id"), "little") == 9
        assert bytes(obj.variable("seen")).rstrip(b"\0") == b"hello"
        # A wild pointer: every probe load through it reads 0, the string copy fails cleanly.
        assert prog.run(1, 0xBAD0_0000, engine=engine) == 0
        assert int.from_bytes(obj.variable("seen_id"), "little") == 1
        assert int.from_bytes(obj.variable("next_id"), "little") == 0


VMLINUX_PROGRAM = """
struct filename { const char *name; } __attribute__((preserve_access_index));
char seen[32];
int seen_dfd;
SEC("fentry/do_unlinkat")
int BPF_PROG(on_unlink, int dfd, struct filename *name)
{
    seen_dfd = dfd;
    bpf_probe_read_kernel_str(seen, sizeof(seen), name->name);
    return 0;
}
"""


def test_c_fentry_on_do_unlinkat_with_vmlinux(build) -> None:  # type: ignore[no-untyped-def]
    if not Path(VMLINUX_BTF).is_file():
        pytest.skip(f"the running kernel's BTF ({VMLINUX_BTF}) is not readable")
    try:
        open(VMLINUX_BTF, "rb").close()
    except OSError as exc:
        pytest.skip(f"the running kernel's BTF ({VMLINUX_BTF}) is not readable: {exc}")
    obj = load_elf(build(VMLINUX_PROGRAM))
    prog = obj.programs["on_unlink"]
    for engine in ENGINES:
        assert prog.run(-100, {"name": "notes.txt"}, engine=engine) == 0
        assert int.from_bytes(obj.variable("seen_dfd"), "little", signed=True) == -100
        assert bytes(obj.variable("seen")).rstrip(b"\0") == b"notes.txt"


def test_a_tracing_vm_pickles_with_its_attach_target(btf: BtfTypes) -> None:
    import pickle

    vm = tracing("r2 = *(u64 *)(r1 + 8)\nr0 = *(u32 *)(r2 + 0)\nexit", btf, "fmod_ret/target")
    copy = pickle.loads(pickle.dumps(vm))
    assert copy.run_tracing(0, {"a": 6}, 0) == (6, 6)



@pytest.fixture(scope="module")
def probe_vms(btf: BtfTypes) -> dict[int, VM]:
    """fmod_ret programs returning the u64 at offset 0, 8 or 16 of the struct obj argument."""
    return {off: tracing(f"r2 = *(u64 *)(r1 + 8)\nr0 = *(u64 *)(r2 + {off})\nexit", btf, "fmod_ret/target")
            for off in (0, 8, 16)}


def _override(value: int) -> int | None:
    low = value & 0xFFFF_FFFF
    return (low - (1 << 32) if low >> 31 else low) or None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wild=st.one_of(st.integers(0, 4095), st.integers(1 << 32, (1 << 64) - 1)),
       value=st.integers(0, (1 << 64) - 1), off=st.sampled_from([0, 8, 16]))
def test_probe_loads_read_what_was_given_or_zero(probe_vms: dict[int, VM], wild: int, value: int, off: int) -> None:
    """Through a given object a load reads its bytes; through an address no memory of the run
    holds (page zero, above the sandbox's 4 GiB), 0: the same in both engines."""
    vm = probe_vms[off]
    blob = bytearray(24)
    blob[off : off + 8] = value.to_bytes(8, "little")
    assert both(vm, 0, bytes(blob), 0) == (value, _override(value))
    assert both(vm, 0, wild, 0) == (0, None)


def test_harness_calls_a_fentry_program(build) -> None:  # type: ignore[no-untyped-def]
    from jitbpf import testing

    kernel = load_elf(build(KERNEL_SIDE), create_maps=False)
    assert kernel.btf is not None
    obj = load_elf(build(PRINTING_PROGRAM), btf=kernel.btf)
    for engine in ENGINES:
        with testing.Harness(obj.programs["says_id"], engine=engine) as h:
            outcome = h.call(2, {"id": 40})
            assert outcome.retval == 0
            assert outcome.trace == ("id 42",)
            assert outcome.ctx["dfd"] == 2


PRINTING_PROGRAM = """
struct item { int id; } __attribute__((preserve_access_index));
SEC("fentry/handle_item")
int BPF_PROG(says_id, int dfd, struct item *it)
{
    bpf_printk("id %d", it->id + dfd);
    return 0;
}
"""


def test_objects_larger_than_the_arena(btf: BtfTypes) -> None:
    vm = tracing("r2 = *(u64 *)(r1 + 8)\nr0 = *(u64 *)(r2 + 16)\nexit", btf, "fmod_ret/target")
    big = bytes(16) + (123).to_bytes(8, "little") + bytes(100_000)
    assert both(vm, 0, big, 0) == (123, 123)


@pytest.mark.parametrize("form", ["path", "bytes", "Btf"])
def test_target_btf_forms(tmp_path: Path, form: str) -> None:
    b = tiny_btf()
    blob = _tiny_blob()
    given: object = {"path": str(tmp_path / "target.btf"), "bytes": blob, "Btf": b}[form]
    (tmp_path / "target.btf").write_bytes(blob)
    vm = VM(assemble("r2 = *(u64 *)(r1 + 8)\nr0 = *(u32 *)(r2 + 0)\nexit"), prog_type="fmod_ret",
            attach="fmod_ret/target", btf=given)  # type: ignore[arg-type]
    assert vm.run_tracing(0, {"a": 9}, 0) == (9, 9)


FUNC_ARG = """
    r6 = r1
    r2 = {n}
    r3 = r10
    r3 += -8
    call 183
    if r0 != 0 goto out
    r0 = *(u64 *)(r10 - 8)
out:
    exit
"""


@pytest.mark.parametrize(("n", "want"), [(0, 5), (2, 7), (3, -22 & 0xFFFF_FFFF_FFFF_FFFF)])
def test_get_func_arg(btf: BtfTypes, n: int, want: int) -> None:
    vm = tracing(FUNC_ARG.format(n=n), btf, "fmod_ret/target")
    assert both(vm, 5, None, 7)[0] == want


@pytest.mark.parametrize(("section", "args", "want_ret", "want_cnt"), [
    ("fmod_ret/target", (1, None, 2), 9, 3),
    ("tp_btf/evt", (None,), -95 & 0xFFFF_FFFF_FFFF_FFFF, 1),  # no return value: -EOPNOTSUPP
])
def test_get_func_ret_and_arg_cnt(btf: BtfTypes, section: str, args: tuple[object, ...], want_ret: int,
                                  want_cnt: int) -> None:
    ret = tracing("r3 = r10\nr3 += -8\nr2 = r3\ncall 184\nif r0 != 0 goto out\nr0 = *(u64 *)(r10 - 8)\nout:\nexit",
                  btf, section)
    extra = {"ret": 9} if section.startswith("fmod_ret") else {}
    got = both(ret, *args, **extra)
    assert (got[0] if isinstance(got, tuple) else got) == want_ret
    cnt = tracing("call 185\nexit", btf, section)
    got = both(cnt, *args, **extra)
    assert (got[0] if isinstance(got, tuple) else got) == want_cnt


@pytest.mark.parametrize(("hook", "src", "ok"), [
    ("hook", "r0 = 0\nexit", True),
    ("hook", "r0 = -4095\nexit", True),
    ("hook", "r0 = 1\nw0 = -w0\nexit", True),  # 0xffffffff: -1 in the hook's 32-bit int
    ("hook", "r0 = 10000\nw0 = -w0\nexit", False),
    ("hook", "r0 = 1\nexit", False),
    # A hook whose programs return a bool: 0 or 1.
    ("audit_rule_known", "r0 = 0\nexit", True), ("audit_rule_known", "r0 = 1\nexit", True),
    ("audit_rule_known", "r0 = -1\nexit", False), ("audit_rule_known", "r0 = 2\nexit", False),
])
def test_lsm_returns_what_its_hook_takes(btf: BtfTypes, hook: str, src: str, ok: bool) -> None:
    """0 or an errno, or for the kernel's bool hooks 0 or 1."""
    if ok:
        tracing(src, btf, f"lsm/{hook}")
    else:
        bounds = r"\[0, 1\]" if hook == "audit_rule_known" else r"\[-4095, 0\]"
        with pytest.raises(VerifierError, match=f"should have been in {bounds}"):
            tracing(src, btf, f"lsm/{hook}")


def test_lsm_disabled_hook_is_refused(btf: BtfTypes) -> None:
    with pytest.raises(BpfError, match="points to disabled hook bpf_lsm_getprocattr"):
        tracing("r0 = 0\nexit", btf, "lsm/getprocattr")


def test_lsm_runs_on_its_arguments(btf: BtfTypes) -> None:
    # deny (-EPERM) when o->a is set
    vm = tracing("r2 = *(u64 *)(r1 + 8)\nr3 = *(u32 *)(r2 + 0)\nr0 = 0\nif r3 == 0 goto out\nr0 = -1\nout:\nexit",
                 btf, "lsm/hook")
    assert both(vm, 0, {"a": 0}, 0) == 0
    assert both(vm, 0, {"a": 1}, 0) == 0xFFFF_FFFF_FFFF_FFFF


def test_a_number_for_a_struct_field_is_a_type_error() -> None:
    """A struct held by value given a number: bytes() took it as a length (2**70: OverflowError)."""
    b = BtfBuilder()
    i32 = b.integer("int", 4, signed=True)
    inner = b.struct("refs", 4, [("n", i32, 0)])
    wrap = b.struct("wrap", 4, [("refcnt", inner, 0)])
    b.func("held", b.proto(i32, [("w", b.ptr(wrap))]))
    vm = tracing("r0 = 0\nexit", BtfTypes(Btf(b.blob())), attach="fentry/held")
    for number in (5, 2**70):
        with pytest.raises(TypeError, match="a struct takes a dict of its fields or bytes, not a number"):
            vm.run_tracing({"refcnt": number})
    assert vm.run_tracing({"refcnt": {"n": 3}}) == 0
