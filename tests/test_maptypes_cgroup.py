"""CGROUP_ARRAY and the helpers that test against it (``bpf_current_task_under_cgroup``,
``bpf_skb_under_cgroup``): the kernel's slot rules (errors included), the helpers' answers from the
host context in both engines, and the update errors against the kernel's map syscalls."""

from __future__ import annotations

import errno
import os

import pytest

from jitbpf.errors import MapError, VerifierError
from jitbpf.linux.maps import BPF_ANY, BPF_EXIST, BPF_NOEXIST, CgroupArray, MapType, create_map
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM
from tests import kernel_oracle
from tests.support import ENGINES, errno_of, load, s64

ROOT, SERVICE, OTHER = 1, 4242, 777  # cgroup ids: the root, a child the task is in, an unrelated one

TASK_UNDER = """
    lddw r1, map:CGROUPS
    mov r2, {index}
    call 37
    exit
"""

SKB_UNDER = """
    lddw r2, map:CGROUPS
    mov r3, {index}
    call 33
    exit
"""


def _run(vm: VM, engine: str) -> int:
    """r0 of one run on a zeroed context of the program's type (a packet for packet types), signed."""
    info = vm.program_state.info if vm.program_state is not None else None
    packet = bytes(64) if info is not None and info.packet else None
    return s64(vm.run_context(packet=packet, engine=engine).retval)  # type: ignore[arg-type]


def test_slots_follow_the_kernel() -> None:
    cg = CgroupArray(max_entries=2, name="CGROUPS")
    cg[0] = SERVICE
    assert cg[0] == SERVICE and cg.get(1) is None and len(cg) == 1
    assert errno_of(cg.insert, 1, SERVICE, BPF_NOEXIST) == errno.EINVAL  # BPF_ANY only
    assert errno_of(cg.insert, 0, SERVICE, BPF_EXIST) == errno.EINVAL
    assert errno_of(cg.insert, 2, SERVICE) == errno.E2BIG
    assert errno_of(cg.insert, 1, 0) == errno.EBADF  # no such cgroup
    assert errno_of(cg.__delitem__, 1) == errno.ENOENT
    assert errno_of(cg.__delitem__, 5) == errno.E2BIG
    assert errno_of(cg.__getitem__, 1) == errno.ENOENT
    del cg[0]
    assert len(cg) == 0 and list(cg.indices()) == []


@pytest.mark.parametrize(("key_size", "value_size"), [(4, 8), (8, 4), (2, 4)])
def test_bad_shapes_are_refused(key_size: int, value_size: int) -> None:
    with pytest.raises(MapError) as exc:
        create_map(MapType.CGROUP_ARRAY, key_size, value_size, 4)
    assert exc.value.errno == errno.EINVAL


def _cgroups() -> CgroupArray:
    cg = CgroupArray(max_entries=4, name="CGROUPS")
    cg[0], cg[1], cg[2] = ROOT, SERVICE, OTHER
    return cg


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("index", "expected"), [
    (0, 1), (1, 1), (2, 0), (3, -errno.EAGAIN), (4, -errno.E2BIG), (-1, -errno.E2BIG)])
def test_current_task_under_cgroup(engine: str, index: int, expected: int) -> None:
    vm = load(TASK_UNDER.format(index=index), _cgroups(), prog_type=ProgType.KPROBE)
    vm.std.host.cgroups = frozenset({ROOT, SERVICE})
    assert _run(vm, engine) == expected


@pytest.mark.parametrize("engine", ENGINES)
def test_the_default_task_is_in_the_root_cgroup_only(engine: str) -> None:
    cg = _cgroups()
    assert [_run(load(TASK_UNDER.format(index=i), cg, prog_type=ProgType.KPROBE), engine)
            for i in range(3)] == [1, 0, 0]


@pytest.mark.parametrize("engine", ENGINES)
def test_skb_under_cgroup_asks_the_packets_socket(engine: str) -> None:
    cg = _cgroups()
    vm = load(SKB_UNDER.format(index=1), cg, prog_type=ProgType.SCHED_CLS)
    assert _run(vm, engine) == 0  # the socket is in the task's cgroups: the root only
    vm.std.host.cgroups = frozenset({ROOT, SERVICE})
    assert _run(vm, engine) == 1
    vm.std.host.socket_cgroups = frozenset({ROOT})
    assert _run(vm, engine) == 0
    vm.std.host.packet_socket = False
    assert _run(vm, engine) == -errno.ENOENT
    over = load(SKB_UNDER.format(index=9), cg, prog_type=ProgType.SCHED_CLS)
    assert _run(over, engine) == -errno.E2BIG


def test_xdp_may_ask_about_the_task_not_the_packet() -> None:
    # As the kernel: bpf_current_task_under_cgroup is one of every type's (for a privileged
    # loader), bpf_skb_under_cgroup one of the socket buffer's.
    load(TASK_UNDER.format(index=0), _cgroups(), prog_type=ProgType.XDP).check()
    with pytest.raises(VerifierError, match="skb_under_cgroup"):
        load(SKB_UNDER.format(index=0), _cgroups(), prog_type=ProgType.XDP).check()


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    return None


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
def test_update_errors_agree_with_the_kernel() -> None:
    """The flag and index errors come before the kernel looks at the descriptor; stores that
    succeed are compared too where a cgroup2 hierarchy is mounted (the kernel takes no other)."""
    mount = _cgroup2_mount()
    steps = [(0, BPF_NOEXIST), (0, BPF_EXIST), (2, BPF_ANY), (9, BPF_ANY)]
    if mount is not None:
        steps += [(0, BPF_ANY), (0, BPF_ANY), (1, BPF_EXIST)]
    ours = CgroupArray(max_entries=2)
    cgroup_fd = os.open(mount or "/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with kernel_oracle.kernel_map(kernel_oracle.KernelMap(int(MapType.CGROUP_ARRAY), 4, 4, 2)) as theirs:
            for index, flags in steps:
                key = index.to_bytes(4, "little")
                mine = errno_of(ours.insert, index, os.stat(mount or "/").st_ino, flags)
                assert mine == theirs.update(key, cgroup_fd.to_bytes(4, "little"), flags), (index, flags)
            for index in (1, 0, 0, 2):
                key = index.to_bytes(4, "little")
                assert errno_of(ours.__delitem__, index) == theirs.delete(key), index
    finally:
        os.close(cgroup_fd)
