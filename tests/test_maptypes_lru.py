"""LRU_HASH and LRU_PERCPU_HASH: a hash map that evicts its least recently used element when full,
checked against a model (errors included), through programs in both engines, and against the
kernel's map syscalls where they are available."""

from __future__ import annotations

import errno
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.errors import MapError
from jitbpf.linux.maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_NO_COMMON_LRU,
    BPF_NOEXIST,
    LruHashMap,
    LruPerCpuHashMap,
    MapType,
    create_map,
    num_cpus,
)
from tests import kernel_oracle
from tests.kernel import on_cpu0
from tests.support import ENGINES, errno_of, load, run

MAX = 4
BPF_F_LOCK = 4  # needs a bpf_spin_lock in the value: refused here, as by the kernel

LOOKUP = """
    mov r1, {key}
    stxw [r10-4], r1
    lddw r1, map:LRU
    mov r2, r10
    add r2, -4
    call 1
    mov r0, 0
    exit
"""

UPDATE = """
    mov r1, {key}
    stxw [r10-4], r1
    mov r1, {value}
    stxdw [r10-16], r1
    lddw r1, map:LRU
    mov r2, r10
    add r2, -4
    mov r3, r10
    add r3, -16
    mov r4, {flags}
    call 2
    exit
"""


class LruModel:
    """Exact LRU: an ordered dict, oldest first; updates move a key to the end."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.items: OrderedDict[int, int] = OrderedDict()

    def update(self, key: int, value: int, flags: int) -> int:
        if flags not in (BPF_ANY, BPF_NOEXIST, BPF_EXIST):
            return errno.EINVAL
        if key in self.items:
            if flags == BPF_NOEXIST:
                return errno.EEXIST
        else:
            if flags == BPF_EXIST:
                return errno.ENOENT
            if len(self.items) == self.max_entries:
                self.items.popitem(last=False)
        self.items[key] = value
        self.items.move_to_end(key)
        return 0

    def delete(self, key: int) -> int:
        return 0 if self.items.pop(key, None) is not None else errno.ENOENT


ops = st.lists(st.tuples(st.sampled_from(["update", "delete", "get"]), st.integers(0, 7), st.integers(0, 2**32),
                         st.sampled_from([BPF_ANY, BPF_NOEXIST, BPF_EXIST, BPF_F_LOCK])), max_size=60)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_lru_hash_follows_the_model(steps: list[tuple[str, int, int, int]]) -> None:
    m = LruHashMap(key_size=4, value_size=8, max_entries=MAX, name="LRU")
    model = LruModel(MAX)
    for op, key, value, flags in steps:
        if op == "update":
            assert errno_of(m.insert, key, value, flags) == model.update(key, value, flags)
        elif op == "delete":
            assert errno_of(m.remove, key) == model.delete(key)
        else:  # a read from Python is not a use: the order stays
            assert m.get(key) == model.items.get(key)
        assert dict(m.items()) == dict(model.items)


def test_a_full_map_evicts_the_least_recently_updated_element() -> None:
    m = LruHashMap(key_size=4, value_size=8, max_entries=3, name="LRU", flags=BPF_F_NO_COMMON_LRU)
    for k in (1, 2, 3):
        m[k] = k
    m[1] = 10  # 1 is now the most recent: 2 is the oldest
    m[4] = 4
    assert sorted(m) == [1, 3, 4] and len(m) == 3
    m.insert(5, 5, BPF_NOEXIST)  # creating evicts too, instead of E2BIG
    assert sorted(m) == [1, 4, 5]


def test_lru_percpu_hash_keeps_a_value_per_cpu() -> None:
    m = LruPerCpuHashMap(key_size=4, value_size=4, max_entries=2, name="LRU")
    n = num_cpus()
    m[1] = list(range(n))
    m[2] = 7
    m[3] = 8  # evicts 1
    assert sorted(m) == [2, 3] and m[2] == [7] * n
    assert isinstance(create_map(MapType.LRU_PERCPU_HASH, 4, 4, 2), LruPerCpuHashMap)


@pytest.mark.parametrize(("key_size", "value_size", "max_entries"), [(0, 4, 4), (4, 0, 4), (4, 4, 0)])
def test_bad_shapes_are_refused(key_size: int, value_size: int, max_entries: int) -> None:
    with pytest.raises(MapError) as exc:
        create_map(MapType.LRU_HASH, key_size, value_size, max_entries)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_lookup_is_a_use(engine: str) -> None:
    m = LruHashMap(key_size=4, value_size=8, max_entries=3, name="LRU")
    for k in (1, 2, 3):
        m[k] = k
    assert run(load(LOOKUP.format(key=1), m), engine) == 0  # 1 is used: 2 is now the oldest
    assert m.get(2) == 2  # a Python read does not count
    m[4] = 4
    assert sorted(m) == [1, 3, 4]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_update_evicts_instead_of_failing(engine: str) -> None:
    m = LruHashMap(key_size=4, value_size=8, max_entries=2, name="LRU")
    m[1], m[2] = 1, 2
    assert run(load(UPDATE.format(key=3, value=33, flags=BPF_NOEXIST), m), engine) == 0
    assert dict(m.items()) == {2: 2, 3: 33}
    assert run(load(UPDATE.format(key=9, value=0, flags=BPF_EXIST), m), engine) == -errno.ENOENT & 2**64 - 1


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.parametrize("map_type", [MapType.LRU_HASH, MapType.LRU_PERCPU_HASH])
def test_errors_and_eviction_agree_with_the_kernel(map_type: MapType) -> None:
    """The kernel's order is approximate, so what is compared is what both promise: the errors, no
    E2BIG when full, the newest element present, and never more than max_entries elements."""
    value_size = 8
    stride = value_size * (num_cpus() if map_type is MapType.LRU_PERCPU_HASH else 1)
    ours = create_map(map_type, 4, value_size, MAX)
    spec = kernel_oracle.KernelMap(int(map_type), 4, value_size, MAX)
    with on_cpu0(), kernel_oracle.kernel_map(spec) as theirs:
        def both(k: int, v: int, flags: int) -> int:
            key, val = k.to_bytes(4, "little"), v.to_bytes(8, "little") * (stride // 8)
            mine = errno_of(ours._update_raw, key, val, flags, "update")
            assert mine == theirs.update(key, val, flags), (k, flags)
            return mine

        assert both(1, 1, BPF_ANY) == 0
        assert both(1, 1, BPF_NOEXIST) == errno.EEXIST
        assert both(2, 2, BPF_EXIST) == errno.ENOENT
        assert both(2, 2, BPF_F_LOCK) == errno.EINVAL
        key2 = (2).to_bytes(4, "little")
        assert errno_of(ours._delete_raw, key2, "delete") == theirs.delete(key2) == errno.ENOENT
        for k in range(2, 4 * MAX):
            assert both(k, k, BPF_NOEXIST) == 0  # a full map makes room
            newest = k.to_bytes(4, "little")
            assert theirs.lookup(newest, stride)[0] == 0 and ours._has_raw(newest)
        present = sum(theirs.lookup(k.to_bytes(4, "little"), stride)[0] == 0 for k in range(4 * MAX))
        assert 1 <= present <= MAX and len(ours) == MAX
