"""CGROUP_STORAGE and PERCPU_CGROUP_STORAGE: a value per cgroup attachment, which programs reach with
``bpf_get_local_storage`` (the attachment the host context names) in both engines; the kernel's
update and delete rules, and the verifier's rules for the helper."""

from __future__ import annotations

import errno
import os

import pytest

from jitbpf.errors import MapError, VerifierError
from jitbpf.linux.maps import (
    BPF_EXIST,
    BPF_NOEXIST,
    CgroupStorage,
    HashMap,
    MapType,
    PerCpuCgroupStorage,
    create_map,
    num_cpus,
    set_current_cpu,
)
from tests import kernel_oracle
from tests.support import ENGINES, errno_of, load, run

SERVICE = 4242  # a cgroup id
INGRESS, EGRESS = 0, 1  # BPF_CGROUP_INET_INGRESS / EGRESS

# Counts the runs in the attachment's storage and returns the new count.
COUNT = """
    lddw r1, map:STORE
    mov r2, 0
    call 81
    ldxdw r1, [r0]
    add r1, 1
    stxdw [r0], r1
    mov r0, r1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_each_attachment_has_its_own_value(engine: str) -> None:
    store = CgroupStorage(value_size=8, name="STORE")
    vm = load(COUNT, store)
    assert [run(vm, engine, bytearray(8)) for _ in range(3)] == [1, 2, 3]
    vm.std.host.attach_cgroup, vm.std.host.attach_type = SERVICE, EGRESS
    assert run(vm, engine, bytearray(8)) == 1
    assert dict(store.items()) == {(1, INGRESS): 3, (SERVICE, EGRESS): 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_per_cpu_storage_counts_per_cpu(engine: str) -> None:
    store = PerCpuCgroupStorage(value_size=8, name="STORE", key_size=8)
    vm = load(COUNT, store)
    set_current_cpu(0)
    try:
        run(vm, engine, bytearray(8))
        run(vm, engine, bytearray(8))
    finally:
        set_current_cpu(None)
    assert store[1] == [2] + [0] * (num_cpus() - 1)


def test_values_exist_from_the_attachment_on() -> None:
    store = CgroupStorage(value_size=4, capacity=1)
    key = (SERVICE, INGRESS)
    assert errno_of(store.__setitem__, key, 5) == errno.ENOENT  # not attached
    store.attach(SERVICE)
    assert store[key] == 0 and key in store and len(store) == 1
    store[key] = 5
    store.insert(key, 6, BPF_EXIST)
    assert store[key] == 6
    assert errno_of(store.insert, key, 7, BPF_NOEXIST) == errno.EINVAL
    assert errno_of(store.__delitem__, key) == errno.EINVAL  # deletes are refused
    assert errno_of(store.attach, SERVICE, EGRESS) == errno.ENOSPC  # past the preallocated attachments
    store.attach(SERVICE)  # an existing attachment keeps its value
    assert store[key] == 6


@pytest.mark.parametrize(("key_size", "value_size", "max_entries", "err"), [
    (4, 8, 0, errno.EINVAL),  # a key is a cgroup id, or struct bpf_cgroup_storage_key
    (16, 0, 0, errno.EINVAL),
    (16, 8, 1, errno.EINVAL),  # max_entries is 0
    (16, 70000, 0, errno.E2BIG),
])
def test_bad_shapes_are_refused(key_size: int, value_size: int, max_entries: int, err: int) -> None:
    for kind in (MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE):
        with pytest.raises(MapError) as exc:
            create_map(kind, key_size, value_size, max_entries)
        assert exc.value.errno == err


# The verifier's rules: (a change to COUNT, the message).
REFUSED = [
    pytest.param(("mov r2, 0", "mov r2, 1"), "doesn't support non-zero flags", id="flags-not-zero"),
    pytest.param(("mov r2, 0", "mov r2, r10"), "doesn't support non-zero flags", id="flags-unknown"),
    pytest.param(("ldxdw r1, [r0]", "ldxdw r1, [r0+8]"), "invalid access to map value, value_size=8",
                 id="value-bounds"),
    pytest.param(("call 81", "call 1"), "cannot pass map_type 19 into func bpf_map_lookup_elem#1",
                 id="lookup-of-cgroup-storage"),
]


@pytest.mark.parametrize(("change", "message"), REFUSED)
def test_the_verifier_refuses(change: tuple[str, str], message: str) -> None:
    text = COUNT.replace(*change, 1)
    vm = load(text, CgroupStorage(value_size=8, name="STORE"))
    with pytest.raises(VerifierError, match=message):
        vm.check()


def test_the_helper_takes_cgroup_storage_only() -> None:
    vm = load(COUNT, HashMap(key_size=4, value_size=8, max_entries=1, name="STORE"))
    with pytest.raises(VerifierError, match="cannot pass map_type 1 into func bpf_get_local_storage#81"):
        vm.check()


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.parametrize("kind", [MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE])
@pytest.mark.parametrize(("key_size", "value_size", "max_entries"),
                         [(16, 8, 0), (8, 8, 0), (4, 8, 0), (16, 8, 1), (16, 32768, 0), (16, 32769, 0),
                          (16, 65407, 0), (16, 65408, 0)])
def test_shapes_agree_with_the_kernel(kind: MapType, key_size: int, value_size: int, max_entries: int) -> None:
    spec = kernel_oracle.KernelMap(int(kind), key_size, value_size, max_entries)
    try:
        os.close(kernel_oracle.create(spec))
        theirs = 0
    except OSError as exc:
        theirs = exc.errno or 0
    assert errno_of(create_map, kind, key_size, value_size, max_entries) == theirs
