"""SK_STORAGE: a value per socket, created by programs with ``bpf_sk_storage_get`` (and
BPF_SK_STORAGE_GET_F_CREATE) and removed with ``bpf_sk_storage_delete``; TASK_STORAGE and
INODE_STORAGE, the same per task or inode address; the Python API against a model (errors
included) and the helpers in both engines."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.errors import MapError
from jitbpf.linux.maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_NO_PREALLOC,
    BPF_NOEXIST,
    InodeStorage,
    MapType,
    SkStorage,
    TaskStorage,
    create_map,
)
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM
from tests.support import ENGINES, errno_of, load, s64

F_CREATE = 1

# Counts the calls per socket (the context's: skb->sk, checked against NULL; or NULL): get
# (creating from an initial value of 10 on the stack), add 1.
CONTEXT_SOCKET = "ldxdw r2, [r1+168]\n    jne r2, 0, +0"
COUNT = """
    {sk}
    mov r1, 10
    stxw [r10-4], r1
    lddw r1, map:STORE
    mov r3, 0
    mov r4, {flags}
    call 107
    jeq r0, 0, +5
    ldxw r1, [r0+0]
    add r1, 1
    stxw [r0+0], r1
    mov r0, r1
    exit
    mov r0, -1
    exit
"""

DELETE = """
    {sk}
    lddw r1, map:STORE
    call 108
    exit
"""


def _sk(given: bool) -> str:
    return CONTEXT_SOCKET if given else "mov r2, 0"


def _count(init_on_stack: bool = False, flags: int = F_CREATE, sk: bool = True) -> str:
    text = COUNT.format(sk=_sk(sk), flags=flags)
    if init_on_stack:  # r3 = r10 - 4: the initial value
        text = text.replace("    mov r3, 0\n", "    mov r3, r10\n    add r3, -4\n")
    return text


def _run(vm: VM, engine: str, sock: object | None) -> int:
    vm.std.socket = sock
    return s64(vm.run_context(engine=engine).retval)  # type: ignore[arg-type]


class Sock:
    """A socket handle, as an application would pass one."""


socks = [Sock() for _ in range(4)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["update", "delete", "get"]), st.integers(0, 3), st.integers(0, 2**31),
                          st.sampled_from([BPF_ANY, BPF_NOEXIST, BPF_EXIST, 4])), max_size=40))
def test_storage_follows_a_dict(steps: list[tuple[str, int, int, int]]) -> None:
    m = SkStorage(value_size=4, name="STORE")
    model: dict[int, int] = {}
    for op, which, value, flags in steps:
        sock = socks[which]
        if op == "update":
            expected = (errno.EINVAL if flags not in (BPF_ANY, BPF_NOEXIST, BPF_EXIST)
                        else errno.EEXIST if flags == BPF_NOEXIST and which in model
                        else errno.ENOENT if flags == BPF_EXIST and which not in model else 0)
            assert errno_of(m.insert, sock, value, flags) == expected
            if expected == 0:
                model[which] = value
        elif op == "delete":
            assert errno_of(m.__delitem__, sock) == (0 if model.pop(which, None) is not None else errno.ENOENT)
        else:
            assert m.get(sock) == model.get(which)
        assert len(m) == len(model) and {socks.index(s) for s in m} == set(model)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key_size", "max_entries", "flags"), [(8, 0, BPF_F_NO_PREALLOC), (4, 16, BPF_F_NO_PREALLOC),
                                                                (4, 0, 0)])
def test_the_kernels_shape_rules(key_size: int, max_entries: int, flags: int) -> None:
    with pytest.raises(MapError) as exc:
        create_map(MapType.SK_STORAGE, key_size, 8, max_entries, flags)
    assert exc.value.errno == errno.EINVAL
    assert isinstance(create_map(MapType.SK_STORAGE, 4, 8, 0, BPF_F_NO_PREALLOC), SkStorage)


@pytest.mark.parametrize("engine", ENGINES)
def test_programs_create_and_update_a_value_per_socket(engine: str) -> None:
    m = SkStorage(value_size=4, name="STORE")
    a, b = Sock(), Sock()
    vm = load(_count(), m, prog_type=ProgType.SCHED_CLS)
    assert [_run(vm, engine, a), _run(vm, engine, a), _run(vm, engine, b)] == [1, 2, 1]
    assert m[a] == 2 and m[b] == 1 and len(m) == 2
    seeded = load(_count(init_on_stack=True), m, prog_type=ProgType.SCHED_CLS)
    c = Sock()
    assert _run(seeded, engine, c) == 11 and _run(seeded, engine, a) == 3  # the initial value is for creation only


@pytest.mark.parametrize("engine", ENGINES)
def test_get_without_create_or_socket_is_null(engine: str) -> None:
    m = SkStorage(value_size=4, name="STORE")
    sock = Sock()
    assert _run(load(_count(flags=0), m, prog_type=ProgType.SCHED_CLS), engine, sock) == -1
    assert _run(load(_count(flags=3), m, prog_type=ProgType.SCHED_CLS), engine, sock) == -1  # unknown flag
    assert _run(load(_count(sk=False), m, prog_type=ProgType.SCHED_CLS), engine, sock) == -1
    assert _run(load(_count(), m, prog_type=ProgType.SCHED_CLS), engine, None) == -1  # the context has no socket
    assert len(m) == 0
    m[sock] = 41
    assert _run(load(_count(flags=0), m, prog_type=ProgType.SCHED_CLS), engine, sock) == 42


@pytest.mark.parametrize("engine", ENGINES)
def test_a_full_storage_creates_nothing(engine: str) -> None:
    m = SkStorage(value_size=4, name="STORE", capacity=1)
    vm = load(_count(), m, prog_type=ProgType.SCHED_CLS)
    assert _run(vm, engine, Sock()) == 1
    assert _run(vm, engine, Sock()) == -1 and len(m) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_delete(engine: str) -> None:
    m = SkStorage(value_size=4, name="STORE")
    sock = Sock()
    m[sock] = 5
    vm = load(DELETE.format(sk=_sk(True)), m, prog_type=ProgType.SCHED_CLS)
    assert _run(vm, engine, sock) == 0 and sock not in m
    assert _run(vm, engine, sock) == -errno.ENOENT
    assert _run(load(DELETE.format(sk=_sk(False)), m, prog_type=ProgType.SCHED_CLS), engine, sock) == -errno.EINVAL


TASK_COUNT = """
    lddw r1, map:TASKS
    mov r2, {task}
    mov r3, 0
    mov r4, 1
    call {helper}
    jeq r0, 0, +5
    ldxw r1, [r0+0]
    add r1, 1
    stxw [r0+0], r1
    mov r0, r1
    exit
    mov r0, -1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("cls", "get_id", "delete_id"), [(TaskStorage, 156, 157), (InodeStorage, 145, 146)])
def test_task_and_inode_storage_key_by_address(engine: str, cls: type[TaskStorage], get_id: int,
                                               delete_id: int) -> None:
    m = cls(value_size=4, name="TASKS")
    task = 0xFFFF_8880_0123_4000
    text = TASK_COUNT.replace("mov r2, {task}", f"lddw r2, {task:#x}").format(helper=get_id)
    vm = load(text, m)
    assert [_run_raw(vm, engine) for _ in range(3)] == [1, 2, 3]
    assert m[task] == 3 and list(m) == [task]
    null = load(TASK_COUNT.format(task=0, helper=get_id), m)
    assert _run_raw(null, engine) == -1
    delete = load(f"lddw r1, map:TASKS\nlddw r2, {task:#x}\ncall {delete_id}\nexit", m)
    assert _run_raw(delete, engine) == 0 and len(m) == 0
    assert _run_raw(delete, engine) == -errno.ENOENT


def _run_raw(vm: VM, engine: str) -> int:
    return s64(vm.execute(bytes(8)) if engine == "interp" else vm.execute_jit(bytes(8)))
