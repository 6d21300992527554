"""BPF iterators: ``run_iter`` reads an iterator's file, one run per object and a last one with
NULL, and gives what bpf_seq_write and bpf_seq_printf wrote; the seq helpers exist for iterators
only and take the seq_file of the context's meta."""

from __future__ import annotations

import errno
import struct

import pytest

from jitbpf import VM, assemble
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.linux.btfctx import BtfTypes
from jitbpf.linux.elf import Btf
from jitbpf.linux.iterators import SEQ_BUFFER, IterRead
from jitbpf.linux.programs import section_program_type
from tests.support import BtfBuilder

ENGINES = ("interp", "jit")


@pytest.fixture(scope="module")
def btf() -> BtfTypes:
    """A target with the kernel's iterator meta and two iterators: over tasks, and over untyped
    elements (memory of any size)."""
    b = BtfBuilder()
    i32 = b.integer("int", 4, signed=True)
    u64 = b.integer("unsigned long long", 8)
    seq_file = b.struct("seq_file", 16, [("size", u64, 0), ("count", u64, 8)])
    meta = b.struct("bpf_iter_meta", 24, [("seq", b.ptr(seq_file), 0), ("session_id", u64, 8), ("seq_num", u64, 16)])
    task = b.struct("task", 8, [("pid", i32, 0), ("tgid", i32, 4)])
    b.struct("bpf_iter__task", 16, [("meta", b.ptr(meta), 0), ("task", b.ptr(task), 8)])
    b.struct("bpf_iter__elem", 24, [("meta", b.ptr(meta), 0), ("key", b.ptr(0), 8), ("value", b.ptr(0), 16)])
    b.func("target", b.proto(i32, [("t", b.ptr(task))]))
    return BtfTypes(Btf(b.blob()))


def program(src: str, btf: BtfTypes, attach: str = "iter/task") -> VM:
    vm = VM(assemble(src), prog_type=section_program_type(attach), attach=attach, btf=btf)
    vm.check()
    return vm


def read(vm: VM, objects: list[object]) -> IterRead:
    """A read of the iterator, the same in both engines."""
    got = [vm.run_iter(objects, engine=engine) for engine in ENGINES]
    assert got[0] == got[1], got
    return got[0]


# r6 = meta, r7 = the object (or NULL), r1 = meta->seq
PROLOGUE = """
    r6 = *(u64 *)(r1 + 0)
    r7 = *(u64 *)(r1 + 8)
    r1 = *(u64 *)(r6 + 0)
"""

# bpf_seq_write(r1, the 8 bytes at r10 - 8), then exit with 0
WRITE_STACK8 = """
    r2 = r10
    r2 += -8
    r3 = 8
    call 127
    r0 = 0
    exit
"""

# Each task: its pid and meta->seq_num as two u32; at the end: "END" and the number of tasks.
WRITE_TASKS = PROLOGUE + """
    if r7 == 0 goto end
    r2 = *(u32 *)(r7 + 0)
    *(u32 *)(r10 - 8) = r2
    r2 = *(u64 *)(r6 + 16)
    *(u32 *)(r10 - 4) = r2
    goto out
end:
    *(u32 *)(r10 - 8) = 0x444e45
    r2 = *(u64 *)(r6 + 16)
    *(u32 *)(r10 - 4) = r2
out:
""" + WRITE_STACK8


def test_each_object_then_the_end_in_order(btf: BtfTypes) -> None:
    vm = program(WRITE_TASKS, btf)
    got = read(vm, [{"pid": 10}, {"pid": 20}, {"pid": 30}])
    assert got.error == 0 and got.shown == 3
    assert got.output == struct.pack("<8I", 10, 0, 20, 1, 30, 2, 0x444E45, 3)
    assert read(vm, []).output == struct.pack("<2I", 0x444E45, 0)  # no object: only the end


def test_each_read_is_a_new_session(btf: BtfTypes) -> None:
    vm = program(PROLOGUE + """
        r2 = *(u64 *)(r6 + 8)
        *(u64 *)(r10 - 16) = r2
        r2 = *(u64 *)(r6 + 16)
        *(u64 *)(r10 - 8) = r2
        r2 = r10
        r2 += -16
        r3 = 16
        call 127
        r0 = 0
        exit
    """, btf)
    reads = [struct.unpack("<4Q", vm.run_iter([{"pid": 1}]).output) for _ in range(3)]
    assert all(r[0] == r[2] and (r[1], r[3]) == (0, 1) for r in reads)  # one session, seq_num counting
    assert len({r[0] for r in reads}) == 3


def _stack_string(text: bytes, at: int) -> str:
    """Assembly that stores ``text`` (padded with NULs to 8-byte words) at r10 - ``at``."""
    text = text.ljust(-(-len(text) // 8) * 8, b"\0")
    lines = []
    for i in range(0, len(text), 8):
        word = int.from_bytes(text[i : i + 8], "little")
        lines += [f"r9 = {word:#x} ll", f"*(u64 *)(r10 - {at - i}) = r9"]
    return "\n".join(lines)


def test_seq_printf_formats_like_printk(btf: BtfTypes) -> None:
    fmt = b"pid %d of %u: %pI4 %s|\n\0"
    src = PROLOGUE + f"""
        r0 = 0
        if r7 == 0 goto done
        {_stack_string(fmt, 64)}
        {_stack_string(b"ok", 72)}
        r2 = *(s32 *)(r7 + 0)
        *(u64 *)(r10 - 104) = r2
        r2 = *(u64 *)(r6 + 16)
        *(u64 *)(r10 - 96) = r2
        r2 = r7
        r2 += 4
        *(u64 *)(r10 - 88) = r2
        r2 = r10
        r2 += -72
        *(u64 *)(r10 - 80) = r2
        r2 = r10
        r2 += -64
        r3 = {len(fmt)}
        r4 = r10
        r4 += -104
        r5 = 32
        call 126
        r0 = 0
    done:
        exit
    """
    vm = program(src, btf)
    got = read(vm, [{"pid": -3, "tgid": 0x0100007F}, {"pid": 4, "tgid": 0x04030201}])
    assert got.output == b"pid -3 of 0: 127.0.0.1 ok|\npid 4 of 1: 1.2.3.4 ok|\n"


@pytest.mark.parametrize(("fmt", "data_len", "expected"), [
    (b"%d %d\0", 8, -errno.EINVAL),  # more conversions than arguments
    (b"%d\0", 12, -errno.EINVAL),  # not a whole number of u64s
    (b"%y\0", 8, -errno.EINVAL),  # no such conversion
    (b"%d", 8, -errno.EINVAL),  # the format must end within fmt_size
    (b"%d\0", 8, 0),
])
def test_seq_printf_errors(btf: BtfTypes, fmt: bytes, data_len: int, expected: int) -> None:
    src = PROLOGUE + f"""
        {_stack_string(fmt, 32)}
        *(u64 *)(r10 - 48) = 5
        *(u64 *)(r10 - 40) = 6
        r2 = r10
        r2 += -32
        r3 = {len(fmt)}
        r4 = r10
        r4 += -48
        r5 = {data_len}
        call 126
        *(u64 *)(r10 - 8) = r0
        r1 = *(u64 *)(r6 + 0)
    """ + WRITE_STACK8
    got = read(program(src, btf), [{"pid": 1}])  # the object's run and the end's: the same output
    assert got.output == ((b"5" if expected == 0 else b"") + struct.pack("<q", expected)) * 2


def test_returning_one_stops_the_read_with_eagain(btf: BtfTypes) -> None:
    # r0 = 1 for a task whose tgid is not 0
    src = WRITE_TASKS.replace("    r0 = 0\n    exit", "    r0 = 0\n    if r8 == 0 goto quit\n    r0 = 1\n"
                              "quit:\n    exit")
    src = src.replace("    r1 = *(u64 *)(r6 + 0)\n", "    r1 = *(u64 *)(r6 + 0)\n    r8 = 0\n"
                      "    if r7 == 0 goto keep\n    r8 = *(u32 *)(r7 + 4)\nkeep:\n", 1)
    vm = program(src, btf)
    got = read(vm, [{"pid": 10}, {"pid": 20, "tgid": 1}, {"pid": 30}])
    assert (got.error, got.shown) == (-errno.EAGAIN, 1)
    assert got.output == struct.pack("<2I", 10, 0)  # the refused object's output is not read


def test_an_output_larger_than_the_buffer_is_e2big(btf: BtfTypes) -> None:
    src = PROLOGUE.replace("r7 = *(u64 *)(r1 + 8)", "r7 = *(u64 *)(r1 + 16)") + """
        if r7 == 0 goto out
        r2 = r7
        r3 = 4000
        call 127
        *(u64 *)(r10 - 8) = r0
        r1 = *(u64 *)(r6 + 0)
        r2 = r10
        r2 += -8
        r3 = 8
        call 127
    out:
        r0 = 0
        exit
    """
    vm = program(src, btf, "iter/elem")
    fits = read(vm, [(b"k", b"v" * 4000)] * 3)
    assert fits.error == 0 and fits.output == (b"v" * 4000 + bytes(8)) * 3
    # Nine writes of 4,000 bytes overflow the 32 KiB buffer: the one that does not fit fails
    # with -EOVERFLOW, and the read with -E2BIG.
    assert SEQ_BUFFER < 9 * 4000
    many = src.replace("        call 127\n        *(u64 *)(r10 - 8) = r0",
                       "        call 127\n" + "        r1 = *(u64 *)(r6 + 0)\n        r2 = r7\n        r3 = 4000\n"
                       "        call 127\n" * 8 + "        *(u64 *)(r10 - 8) = r0", 1)
    got = read(program(many, btf, "iter/elem"), [(b"k", b"v" * 4000)])
    assert (got.error, got.shown, got.output) == (-errno.E2BIG, 0, b"")


# bpf_seq_write(r1, 8 zero bytes of stack): r1 as the test sets it
SEQ_WRITE_R1 = "*(u64 *)(r10 - 8) = 0\n" + WRITE_STACK8


def test_seq_helpers_belong_to_iterators(btf: BtfTypes) -> None:
    with pytest.raises(VerifierError, match="127"):
        program("r1 = 0\n" + SEQ_WRITE_R1, btf, "fentry/target")


def test_the_seq_argument_is_the_meta_seq_file(btf: BtfTypes) -> None:
    with pytest.raises(VerifierError, match="expected=ptr_"):
        program("r1 = 0\n" + SEQ_WRITE_R1, btf)
    with pytest.raises(VerifierError, match="expected=ptr_"):
        program(SEQ_WRITE_R1, btf)  # the context itself is not a seq_file


def test_run_iter_is_for_iterators(btf: BtfTypes) -> None:
    vm = program("r0 = 0\nexit", btf, "fentry/target")
    with pytest.raises(ExecutionError, match="iterator"):
        vm.run_iter([1])


def test_objects_of_several_slots_are_tuples(btf: BtfTypes) -> None:
    vm = program("r0 = 0\nexit", btf, "iter/elem")
    assert read(vm, [(b"k", b"v")]).shown == 1
    with pytest.raises(ValueError, match="2 slot"):
        vm.run_iter([b"k"])


def test_seq_helpers_outside_a_read_fail_clearly(btf: BtfTypes) -> None:
    vm = program(WRITE_TASKS, btf)
    with pytest.raises(ExecutionError, match="run_iter"):
        vm.run_tracing({"seq": b"\0" * 16}, {"pid": 1})
