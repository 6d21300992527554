"""STACK_TRACE and ``bpf_get_stackid``: stacks recorded from the host context's call stacks (skip,
user stack, id collisions with and without BPF_F_REUSE_STACKID), read and deleted from Python,
in both engines; the map's shape and update rules against the kernel's syscalls."""

from __future__ import annotations

import errno

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import MapError, VerifierError
from jitbpf.linux.maps import BPF_F_REUSE_STACKID, BPF_F_USER_STACK, MapType, StackTraceMap, create_map
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM
from tests import kernel_oracle
from tests.support import ENGINES, load, s64

GET_STACKID = """
    lddw r2, map:STACKS
    mov r3, {flags}
    call 27
    exit
"""

KERNEL = [0xFFFF_FFFF_8100_0010, 0xFFFF_FFFF_8100_0020, 0xFFFF_FFFF_8100_0030]
USER = [0x40_1000, 0x40_2000]


def _stackid(m: StackTraceMap, engine: str, flags: int = 0, kernel: list[int] | None = None) -> int:
    vm: VM = load(GET_STACKID.format(flags=flags), m, prog_type=ProgType.KPROBE)
    vm.std.host.kernel_stack = KERNEL if kernel is None else kernel
    vm.std.host.user_stack = USER
    return s64(vm.run_context(engine=engine).retval)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_get_stackid_records_the_hosts_stacks(engine: str) -> None:
    m = StackTraceMap(max_entries=100, value_size=8 * 4, name="STACKS")
    kid = _stackid(m, engine)
    assert 0 <= kid < 128 and m[kid] == tuple(KERNEL)
    assert _stackid(m, engine) == kid and len(m) == 1  # the same stack, the same id
    uid = _stackid(m, engine, BPF_F_USER_STACK)
    assert m[uid] == tuple(USER)
    skipped = _stackid(m, engine, 1)
    assert m[skipped] == tuple(KERNEL[1:])
    assert _stackid(m, engine, 3) == -errno.EFAULT  # every frame skipped
    assert _stackid(m, engine, kernel=[]) == -errno.EFAULT  # no stack
    assert _stackid(m, engine, 1 << 11) == -errno.EINVAL
    deep = StackTraceMap(max_entries=4, value_size=8 * 2, name="STACKS")
    assert deep[_stackid(deep, engine)] == tuple(KERNEL[:2])  # truncated to the value's depth
    del m[kid]
    assert m.get(kid) is None and sorted(m) == sorted({uid, skipped})


@pytest.mark.parametrize("engine", ENGINES)
def test_a_different_stack_with_the_same_id(engine: str) -> None:
    m = StackTraceMap(max_entries=1, value_size=8 * 4, name="STACKS")  # one bucket: every id is 0
    assert _stackid(m, engine) == 0
    assert _stackid(m, engine, kernel=[1, 2]) == -errno.EEXIST
    assert _stackid(m, engine, BPF_F_REUSE_STACKID, kernel=[1, 2]) == 0 and m[0] == (1, 2)


def test_python_cannot_store_and_shapes_are_checked() -> None:
    m = StackTraceMap(max_entries=4, name="STACKS")
    with pytest.raises(MapError) as exc:
        m[0] = (1, 2)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(MapError) as exc:
        del m[0]
    assert exc.value.errno == errno.ENOENT
    for ks, vs, flags in ((8, 64, 0), (4, 12, 0), (4, 4, 0), (4, 128 * 8, 0), (4, 64, 1 << 5)):
        with pytest.raises(MapError) as exc:
            create_map(MapType.STACK_TRACE, ks, vs, 4, flags)
        assert exc.value.errno == errno.EINVAL
    assert create_map(MapType.STACK_TRACE, 4, 64, 5).buckets == 8  # type: ignore[attr-defined]


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.parametrize(("ks", "vs", "n"), [(4, 64, 4), (8, 64, 4), (4, 12, 4), (4, 4, 4), (4, 64, 0)])
def test_shapes_and_updates_agree_with_the_kernel(ks: int, vs: int, n: int) -> None:
    spec = kernel_oracle.KernelMap(int(MapType.STACK_TRACE), ks, vs, n)
    try:
        ours: StackTraceMap | None = create_map(MapType.STACK_TRACE, ks, vs, n)  # type: ignore[assignment]
    except MapError as exc:
        ours = None
        with pytest.raises(OSError) as theirs, kernel_oracle.kernel_map(spec):
            pass
        assert theirs.value.errno == exc.errno
        return
    assert ours is not None
    with kernel_oracle.kernel_map(spec) as theirs_map:
        key = (0).to_bytes(4, "little")
        assert theirs_map.update(key, bytes(vs)) == errno.EINVAL  # stacks come from bpf_get_stackid only
        assert theirs_map.lookup(key, vs)[0] == errno.ENOENT and ours.get(0) is None
        assert theirs_map.delete(key) == errno.ENOENT


# bpf_get_stack (or bpf_get_task_stack, 141, of the current task in r1) into 24 bytes of stack:
# r0 = the result, or (word >= 0) that word of the buffer.
GET_STACK = """
    stdw [r10-24], -1
    stdw [r10-16], -1
    stdw [r10-8], -1
    mov r2, r10
    add r2, -24
    mov r3, {size}
    mov r4, {flags}
    call {helper}
    {load}
    exit
"""


def _get_stack(engine: str, flags: int = 0, size: int = 24, word: int = -1, kernel: list[int] | None = None,
               helper: int = 67) -> int:
    load_word = f"ldxdw r0, [r10-{24 - 8 * word}]" if word >= 0 else ""
    vm: VM = load(GET_STACK.format(size=size, flags=flags, load=load_word, helper=helper), prog_type=ProgType.KPROBE)
    vm.std.host.kernel_stack = KERNEL if kernel is None else kernel
    vm.std.host.user_stack = USER
    return s64(vm.run_context(engine=engine).retval)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_get_stack_copies_the_hosts_stacks(engine: str) -> None:
    assert _get_stack(engine) == 24
    assert [_get_stack(engine, word=i) for i in range(3)] == [s64(ip) for ip in KERNEL]
    assert _get_stack(engine, size=16) == 16  # truncated to the buffer
    assert _get_stack(engine, BPF_F_USER_STACK) == 16
    assert _get_stack(engine, BPF_F_USER_STACK, word=2) == 0  # zero past the copy
    assert _get_stack(engine, 1, word=0) == s64(KERNEL[1])  # one frame skipped
    assert _get_stack(engine, 3) == 0  # every frame skipped: nothing copied, not an error
    assert _get_stack(engine, kernel=[], word=0) == 0
    assert _get_stack(engine, size=12) == -errno.EINVAL  # not a whole number of addresses
    assert _get_stack(engine, 1 << 11, word=1) == 0  # build ids: EINVAL, the buffer cleared
    assert _get_stack(engine, size=0) == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_get_task_stack_copies_the_tasks_stack(engine: str) -> None:
    """One task runs here: bpf_get_task_stack of any task is the host's stack, as bpf_get_stack's."""
    cases = [{}, {"word": 1}, {"size": 16}, {"flags": BPF_F_USER_STACK}, {"flags": 1, "word": 0}, {"size": 12}]
    for case in cases:
        assert _get_stack(engine, helper=141, **case) == _get_stack(engine, **case), case  # type: ignore[arg-type]


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.parametrize(("size", "accepted"), [(24, True), (0, True), (32, False)])
def test_get_stack_buffer_is_checked_as_the_kernel_does(size: int, accepted: bool) -> None:
    code = assemble(GET_STACK.format(size=size, flags=0, load="mov r0, 0", helper=67))
    vm = VM(code, prog_type=ProgType.KPROBE)
    vm.use_standard_helpers()
    try:
        vm.check()
        ours = True
    except VerifierError:
        ours = False
    assert ours is accepted
    assert kernel_oracle.kernel_verify(code, 2).accepted is accepted
