"""cgroup/sysctl programs: the ``struct bpf_sysctl`` context, the sysctl helpers on the access the
caller describes (name, current value, new value; truncation and error results as the kernel's),
in both engines, and a C program that rewrites a write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.linux.elf import load_elf
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM
from tests.support import ENGINES, c_builder

E2BIG, EINVAL = 7, 22

# Calls helper {hid} with a {size}-byte buffer of 0xff bytes at r10-16 and {flags} in r4, stores
# its result in the context's file_pos (r0 must be 0 or 1 at exit) and hands the buffer to helper
# 6 (replaced by one that keeps it).
CALL = """
    mov r6, r1
    stdw [r10-16], -1
    stdw [r10-8], -1
    mov r2, r10
    add r2, -16
    mov r3, {size}
    mov r4, {flags}
    call {hid}
    stxw [r6+4], r0
    mov r1, r10
    add r1, -16
    call 6
    mov r0, 1
    exit
"""


def _vm(text: str) -> VM:
    vm = VM(assemble(text), prog_type=ProgType.CGROUP_SYSCTL)
    vm.use_standard_helpers()
    return vm


def _s32(x: int) -> int:
    return x - (1 << 32) if x >> 31 else x


def _call(hid: int, size: int, engine: str, flags: int = 0, **access: Any) -> tuple[int, bytes]:
    """The helper's result and what it left in the buffer."""
    vm = _vm(CALL.format(hid=hid, size=size, flags=flags))
    buf = bytearray(16)

    def keep(r1: int, *_: int) -> int:
        buf[:] = vm.memory.read(r1, 16)
        return 0

    vm.register_helper(6, keep, name="keep")
    name = access.pop("name", "net/ipv4/tcp_mem")
    _verdict, after = vm.run_sysctl(name, engine=engine, **access)
    return _s32(after.file_pos), bytes(buf)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("hid", "size", "flags", "access", "result", "buffer"), [
    pytest.param(101, 16, 0, {}, -E2BIG, b"net/ipv4/tcp_me\0", id="name-cut-short"),
    pytest.param(101, 16, 0, {"name": "vm/swappiness"}, 13, b"vm/swappiness\0\xff\xff", id="name"),
    pytest.param(101, 16, 1, {}, 7, b"tcp_mem\0" + b"\xff" * 8, id="base-name"),
    pytest.param(101, 16, 2, {}, -EINVAL, b"\xff" * 16, id="name-unknown-flag"),
    pytest.param(102, 16, 0, {"value": "1 2 3\n"}, 6, b"1 2 3\n" + bytes(10), id="value-padded"),
    pytest.param(102, 4, 0, {"value": "1 2 3\n"}, -E2BIG, b"1 2\0" + b"\xff" * 12, id="value-cut-short"),
    pytest.param(102, 16, 0, {"value": None}, -EINVAL, bytes(16), id="value-unreadable"),
    pytest.param(103, 16, 0, {"new_value": "9\n"}, 2, b"9\n" + bytes(14), id="new-value"),
    pytest.param(103, 16, 0, {}, -EINVAL, bytes(16), id="new-value-of-a-read"),
])
def test_the_helpers_answer_from_the_access(engine: str, hid: int, size: int, flags: int, access: dict[str, Any],
                                             result: int, buffer: bytes) -> None:
    assert _call(hid, size, engine, flags, **access) == (result, buffer)


# Replaces the value being written with "42" when the sysctl is written, allows every access.
SET = """
    mov r6, r1
    stw [r10-8], 0x3234
    mov r2, r10
    add r2, -8
    mov r3, 2
    call 104
    stxw [r6+4], r0
    mov r0, 1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_rewrites_a_write(engine: str) -> None:
    vm = _vm(SET)
    verdict, after = vm.run_sysctl("kernel/ostype", "Linux\n", new_value="7\n", engine=engine)
    assert verdict == 1 and after.new_value == b"42" and after.updated and after.file_pos == 0
    verdict, after = vm.run_sysctl("kernel/ostype", "Linux\n", engine=engine)  # a read: nothing to set
    assert after.new_value is None and not after.updated and _s32(after.file_pos) == -EINVAL


@pytest.mark.parametrize(("change", "message"), [
    pytest.param(("stxw [r6+4], r0", "stxw [r6+0], r0"), "context", id="write-is-read-only"),
    pytest.param(("mov r0, 1\n    exit", "mov r0, 2\n    exit"), r"smin=2 smax=2 should have been in \[0, 1\]",
                 id="verdict-out-of-range"),
    pytest.param(("mov r3, 2", "mov r3, 0"), "zero-sized", id="empty-new-value"),
])
def test_the_verifier_refuses(change: tuple[str, str], message: str) -> None:
    with pytest.raises(VerifierError, match=message):
        _vm(SET.replace(*change)).check()


def test_the_helpers_need_run_sysctl() -> None:
    vm = _vm(SET)
    with pytest.raises(ExecutionError, match="run_sysctl"):
        vm.run_context({"write": 1})


HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""

LIMIT = """
SEC("cgroup/sysctl")
int limit(struct bpf_sysctl *ctx)
{
    char buf[16] = {};
    unsigned long value = 0;
    if (!ctx->write)
        return 1;
    if (bpf_sysctl_get_new_value(ctx, buf, sizeof(buf)) < 0)
        return 0;
    if (bpf_strtoul(buf, sizeof(buf), 0, &value) < 0)
        return 0;
    if (value <= 100)
        return 1;
    bpf_sysctl_set_new_value(ctx, "100", 3);
    return 1;
}
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return c_builder(tmp_path_factory.mktemp("sysctl"), HEADER)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_c_program_limits_writes(build: Any, engine: str) -> None:
    path: Path = build(LIMIT)
    prog = load_elf(path).programs["limit"]
    assert prog.prog_type is ProgType.CGROUP_SYSCTL
    verdict, after = prog.run("vm/swappiness", "60\n", new_value="500\n", engine=engine)
    assert (verdict, after.new_value) == (1, b"100")
    verdict, after = prog.run("vm/swappiness", "60\n", new_value="50\n", engine=engine)
    assert (verdict, after.new_value, after.updated) == (1, b"50\n", False)
    assert prog.run("vm/swappiness", "60\n", new_value="x\n", engine=engine)[0] == 0
