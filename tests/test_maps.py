"""Maps from Python: the aya-style API, conversions, errors, and fuzzing against Python models."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.errors import MapError
from jitbpf.linux.maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    MAP_OF_MAPS_TYPES,
    Array,
    DevMap,
    HashMap,
    LpmKey,
    LpmTrie,
    MapKeyError,
    MapShape,
    MapType,
    PerCpuArray,
    PerCpuHashMap,
    PerfEventArray,
    ProgramArray,
    Queue,
    RingBuf,
    SockHash,
    SockMap,
    Stack,
    create_map,
    num_cpus,
)
from jitbpf.vm import VM

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def errno_of(exc: pytest.ExceptionInfo[MapError]) -> int:
    return exc.value.errno


# ---------------------------------------------------------------------------------------------
# The seed's user-space examples


def test_blocked_ips_as_a_set() -> None:
    blocked = HashMap(key_type=ctypes.c_uint32, value_type=ctypes.c_uint8, max_entries=1024, name="BLOCKED_IPS")
    assert (blocked.key_size, blocked.value_size, blocked.map_type) == (4, 1, MapType.HASH)
    blocked.insert(int(ipaddress.IPv4Address("192.168.0.1")), 1, 0)
    blocked.insert(int(ipaddress.IPv4Address("192.168.0.2")), 1, 0)
    assert int(ipaddress.IPv4Address("192.168.0.1")) in blocked
    assert int(ipaddress.IPv4Address("10.0.0.1")) not in blocked
    assert sorted(blocked) == [0xC0A80001, 0xC0A80002]
    assert len(blocked) == 2


def test_array_set_get_round_trip() -> None:
    array = Array(value_size=4, max_entries=1024, name="ARRAY")
    array.set(1, 42, 0)
    assert array.get(1) == 42
    assert array[0] == 0  # preallocated and zeroed
    assert len(array) == 1024
    array[1023] = 7
    assert array[1023] == 7


def test_stack_and_queue_order() -> None:
    stack = Stack(value_size=4, max_entries=1024, name="STACK")
    queue = Queue(value_size=4, max_entries=1024, name="QUEUE")
    for v in (1, 2, 3):
        stack.push(v)
        queue.push(v)
    assert [stack.pop() for _ in range(3)] == [3, 2, 1]
    assert [queue.pop() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(MapError) as exc:
        stack.pop()
    assert exc.value.errno == errno.ENOENT


def test_lpm_routes() -> None:
    routes = LpmTrie(key_size=8, value_size=1, max_entries=1024, name="ROUTES")
    routes.insert(LpmKey(8, ipaddress.IPv4Address("10.0.0.0")), 1, 0)
    routes.insert(LpmKey(16, int(ipaddress.IPv4Address("10.11.0.0"))), 2, 0)
    assert routes[LpmKey(32, "10.11.1.1")] == 2
    assert routes.lookup("10.1.1.1") == 1
    assert routes.get("192.168.1.1") is None
    # The key's own prefix length bounds the match, as the kernel's lookup.
    assert routes[LpmKey(12, "10.11.1.1")] == 1
    assert sorted((k.prefix_len, bytes(k.data)) for k in routes) == [(8, bytes([10, 0, 0, 0])),
                                                                       (16, bytes([10, 11, 0, 0]))]
    routes["10.11.0.0/16"] = 3
    assert routes.lookup("10.11.200.1") == 3
    del routes[ipaddress.ip_network("10.11.0.0/16")]
    assert routes.lookup("10.11.1.1") == 1


# ---------------------------------------------------------------------------------------------
# API details


def test_missing_key_is_a_key_error_and_a_map_error() -> None:
    m = HashMap(key_size=4, value_size=8, max_entries=4, name="M")
    with pytest.raises(KeyError):
        m[1]
    with pytest.raises(MapKeyError) as exc:
        del m[1]
    assert exc.value.errno == errno.ENOENT
    assert isinstance(exc.value, MapError)
    assert m.get(1) is None
    assert m.get(1, "dflt") == "dflt"
    assert "no such element" in str(exc.value)


def test_update_flags_and_full_map() -> None:
    m = HashMap(key_size=4, value_size=4, max_entries=2)
    m.insert(1, 10, BPF_NOEXIST)
    with pytest.raises(MapError) as exc:
        m.insert(1, 11, BPF_NOEXIST)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(MapError) as exc:
        m.insert(2, 11, BPF_EXIST)
    assert exc.value.errno == errno.ENOENT
    m.insert(1, 12, BPF_EXIST)
    m[2] = 20
    with pytest.raises(MapError) as exc:
        m[3] = 30
    assert exc.value.errno == errno.E2BIG
    m[2] = 21  # replacing in a full map is fine
    with pytest.raises(MapError) as exc:
        m.insert(1, 0, 7)
    assert exc.value.errno == errno.EINVAL
    assert dict(m.items()) == {1: 12, 2: 21}


def test_bad_shapes_are_einval() -> None:
    for args in ((MapType.ARRAY, 8, 4, 4), (MapType.HASH, 0, 4, 4), (MapType.HASH, 4, 0, 4),
                 (MapType.HASH, 4, 4, 0), (MapType.QUEUE, 4, 4, 4), (MapType.RINGBUF, 0, 0, 1000),
                 (MapType.LPM_TRIE, 4, 4, 4), (MapType.PROG_ARRAY, 4, 8, 4)):
        with pytest.raises(MapError) as exc:
            create_map(*args)
        assert exc.value.errno == errno.EINVAL, args
    with pytest.raises(MapError) as exc:
        create_map(99, 4, 4, 4)
    assert exc.value.errno == errno.EINVAL


def test_factory_builds_each_type() -> None:
    shapes = {
        MapType.HASH: (4, 4, 8), MapType.ARRAY: (4, 4, 8), MapType.PROG_ARRAY: (4, 4, 8),
        MapType.PERF_EVENT_ARRAY: (4, 4, 8), MapType.PERCPU_HASH: (4, 4, 8), MapType.PERCPU_ARRAY: (4, 4, 8),
        MapType.LPM_TRIE: (8, 4, 8), MapType.DEVMAP: (4, 4, 8), MapType.SOCKMAP: (4, 8, 8),
        MapType.SOCKHASH: (12, 8, 8), MapType.QUEUE: (0, 4, 8), MapType.STACK: (0, 4, 8),
        MapType.RINGBUF: (0, 0, 4096), MapType.CPUMAP: (4, 4, 8), MapType.XSKMAP: (4, 4, 8),
        MapType.LRU_HASH: (4, 4, 8), MapType.LRU_PERCPU_HASH: (4, 4, 8), MapType.CGROUP_ARRAY: (4, 4, 8),
        MapType.SK_STORAGE: (4, 4, 0), MapType.DEVMAP_HASH: (4, 4, 8), MapType.BLOOM_FILTER: (0, 4, 8),
        MapType.STACK_TRACE: (4, 8, 8), MapType.TASK_STORAGE: (4, 4, 0), MapType.INODE_STORAGE: (4, 4, 0),
        MapType.ARRAY_OF_MAPS: (4, 4, 8), MapType.HASH_OF_MAPS: (8, 4, 8), MapType.CGROUP_STORAGE: (16, 4, 0),
        MapType.PERCPU_CGROUP_STORAGE: (8, 4, 0), MapType.REUSEPORT_SOCKARRAY: (4, 8, 8),
        MapType.USER_RINGBUF: (0, 0, 4096),
    }
    assert set(shapes) == set(MapType)
    for kind, (ks, vs, n) in shapes.items():
        storage = {MapType.SK_STORAGE, MapType.TASK_STORAGE, MapType.INODE_STORAGE}
        flags = 1 if kind in storage else 0  # BPF_F_NO_PREALLOC, which local storage requires
        options: dict[str, Any] = {"inner": MapShape(MapType.ARRAY, 4, 4, 1, 0)} if kind in MAP_OF_MAPS_TYPES else {}
        m = create_map(kind, ks, vs, n, flags, name=kind.name.lower(), **options)
        assert (m.map_type, m.key_size, m.value_size, m.max_entries, m.name) == (kind, ks, vs, n, kind.name.lower())
        assert m.address != 0
        pointer_types = {MapType.HASH, MapType.ARRAY, MapType.PERCPU_HASH, MapType.PERCPU_ARRAY,
                         MapType.LRU_HASH, MapType.LRU_PERCPU_HASH, MapType.LPM_TRIE, MapType.RINGBUF,
                         MapType.SK_STORAGE, MapType.TASK_STORAGE, MapType.INODE_STORAGE,
                         MapType.CGROUP_STORAGE, MapType.PERCPU_CGROUP_STORAGE, MapType.USER_RINGBUF}
        assert bool(m.regions()) == (kind in pointer_types)


def test_conversions() -> None:
    class Pair(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint16)]

    m = HashMap(key_type=Pair, value_type="<IH", max_entries=8)
    assert (m.key_size, m.value_size) == (8, 6)
    m[Pair(1, 2)] = (3, 4)
    assert m[Pair(1, 2)] == (3, 4)
    key = next(iter(m))
    assert isinstance(key, Pair) and (key.a, key.b) == (1, 2)
    raw = HashMap(key_size=3, value_size=16, max_entries=8, value_type=bytes)
    raw[b"abc"] = bytes(range(16))
    assert raw[b"abc"] == bytes(range(16))
    assert list(raw) == [b"abc"]  # keys of odd sizes come back as bytes
    with pytest.raises(MapError):
        raw[b"ab"] = bytes(16)
    with pytest.raises(MapError):
        raw[b"abc"] = bytes(15)
    ints = HashMap(key_size=2, value_size=8, max_entries=8)
    ints[0xFFFF] = -2  # negative values are two's complement
    assert ints[0xFFFF] == (1 << 64) - 2
    with pytest.raises(MapError, match="key -1 is negative"):  # a key never wraps around
        ints[-1] = 0
    with pytest.raises(MapError):
        ints[1 << 16] = 0
    with pytest.raises(MapError):
        HashMap(key_type=ctypes.c_uint64, key_size=4)


def test_array_view_is_live() -> None:
    a = Array(value_size=8, max_entries=4, name="A")
    a[2] = 0x1122334455667788
    view = a.view(2)
    assert bytes(view) == (0x1122334455667788).to_bytes(8, "little")
    view[0] = 0
    assert a[2] == 0x1122334455667700
    region = a.regions()[0]
    assert region.base == a.value_address() and region.size == 4 * 8 and region.writable
    assert a.value_address(5) == region.base + 5
    with pytest.raises(MapError):
        a.value_address(8)
    with pytest.raises(MapError):
        HashMap().value_address()


def test_value_slab_is_aligned_and_padded() -> None:
    a = Array(value_size=3, max_entries=5)
    assert a.regions()[0].size == 5 * 8  # values are 8-byte aligned, as the kernel
    assert a.regions()[0].base % 8 == 0


def test_percpu_maps_hold_one_value_per_cpu() -> None:
    n = num_cpus()
    a = PerCpuArray(value_size=4, max_entries=4)
    assert a[0] == [0] * n
    a[1] = list(range(n))
    assert a[1] == list(range(n))
    a[2] = 9
    assert a[2] == [9] * n
    with pytest.raises(MapError):
        a[0] = [1] * (n + 1)
    h = PerCpuHashMap(key_size=4, value_size=8, max_entries=4)
    h[5] = [7 * (c + 1) for c in range(n)]
    assert h[5] == [7 * (c + 1) for c in range(n)]
    assert a.regions()[0].size == 4 * 8 * n


def test_program_array_slots() -> None:
    pa = ProgramArray(max_entries=4, name="JMP")
    target = VM(assemble("mov r0, 1\nexit"))
    pa[1] = target
    assert pa.get(1) is target and pa.get(0) is None
    assert list(pa) == [1] and pa.indices() == [1]
    with pytest.raises(MapError) as exc:
        pa[4] = target
    assert exc.value.errno == errno.E2BIG
    del pa[1]
    with pytest.raises(MapKeyError):
        del pa[1]
    with pytest.raises(KeyError):
        pa[1]


def test_sockmap_and_sockhash_hold_python_objects() -> None:
    sm = SockMap(max_entries=4, name="SOCKS")
    a, b = object(), object()
    sm[0] = a
    sm.insert(1, b, BPF_NOEXIST)
    with pytest.raises(MapError) as exc:
        sm.insert(1, a, BPF_NOEXIST)
    assert exc.value.errno == errno.EEXIST
    assert sm[0] is a and sm[1] is b and sm.get(2) is None
    sm[1] = a
    assert sm[1] is a
    del sm[0]
    with pytest.raises(MapError) as exc:
        del sm[0]  # the kernel answers EINVAL for an empty sockmap slot
    assert exc.value.errno == errno.EINVAL
    assert len(sm) == 1
    sh = SockHash(key_size=12, max_entries=4, name="FLOWS")
    key = bytes(range(12))
    sh[key] = b
    assert sh[key] is b and key in sh and list(sh) == [key]
    del sh[key]
    assert key not in sh


def test_devmap() -> None:
    dm = DevMap(max_entries=4, name="TX")
    dm[1] = 7
    assert dm[1] == 7 and dm.get(0) is None
    dm[1] = 0  # ifindex 0 empties the slot
    assert dm.get(1) is None


def test_event_maps_empty() -> None:
    perf = PerfEventArray(name="EVENTS")
    assert perf.max_entries == num_cpus() and perf.rings == num_cpus()
    assert perf.read_events() == [] and perf.lost == 0
    assert perf.poll(0.01) == []
    rb = RingBuf(max_entries=4096, name="RB")
    assert rb.read_events() == [] and rb.avail_data == 0


def test_handles_and_close() -> None:
    m = HashMap(name="X")
    assert m.handle is None
    m.close()
    m.close()
    with pytest.raises(MapError):
        m[1] = 2
    assert m == m and m != HashMap(name="X")  # maps compare by identity


@pytest.mark.parametrize("use", ["view", "value_address", "nonzero_indices"])
def test_a_freed_arrays_memory_is_refused_with_a_map_error(use: str) -> None:
    a = Array(value_size=8, max_entries=2, name="GONE")
    a.close()  # no VM uses it: its storage is freed
    with pytest.raises(MapError, match="'GONE' is closed"):
        list(a.nonzero_indices()) if use == "nonzero_indices" else getattr(a, use)(0)


def test_concurrent_readers_never_miss_stable_keys() -> None:
    """Lock-free lookups race with inserts and deletes of other keys in the same buckets."""
    m = HashMap(key_size=4, value_size=8, max_entries=64)
    stable = list(range(0, 64, 2))[:16]
    for k in stable:
        m[k] = k * 10
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            k = 1 + 2 * (i % 40)
            try:
                m[k] = i
                del m[k]
            except MapError as exc:
                if exc.errno != errno.E2BIG:
                    errors.append(repr(exc))
            i += 1

    def reader() -> None:
        for _ in range(3000):
            for k in stable[:4]:
                if m.get(k) != k * 10:
                    errors.append(f"lost {k}")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert errors == []


# ---------------------------------------------------------------------------------------------
# Fuzzing against Python models

KEYS = st.integers(0, 11)
FLAGS = st.sampled_from([BPF_ANY, BPF_NOEXIST, BPF_EXIST])


def expect(errno_code: int | None, action: object) -> None:
    assert callable(action)
    if errno_code is None:
        action()
        return
    with pytest.raises(MapError) as exc:
        action()
    assert exc.value.errno == errno_code


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["update", "delete", "lookup"]), KEYS, st.integers(0, 2**32 - 1), FLAGS),
                max_size=60),
       st.sampled_from([MapType.HASH, MapType.PERCPU_HASH]))
def test_hash_matches_a_dict(ops: list[tuple[str, int, int, int]], kind: MapType) -> None:
    cap = 6
    m = create_map(kind, 4, 4, cap)
    assert isinstance(m, HashMap)
    model: dict[int, int] = {}
    n = num_cpus() if kind is MapType.PERCPU_HASH else 1

    def val(v: int) -> object:
        return [v] * n if n > 1 or kind is MapType.PERCPU_HASH else v

    for op, key, value, flags in ops:
        if op == "update":
            code = None
            if flags == BPF_NOEXIST and key in model:
                code = errno.EEXIST
            elif flags == BPF_EXIST and key not in model:
                code = errno.ENOENT
            elif key not in model and len(model) >= cap:
                code = errno.E2BIG
            expect(code, lambda k=key, v=value, f=flags: m.insert(k, v, f))
            if code is None:
                model[key] = value
        elif op == "delete":
            expect(None if key in model else errno.ENOENT, lambda k=key: m.__delitem__(k))
            model.pop(key, None)
        else:
            assert m.get(key) == (val(model[key]) if key in model else None)
        assert len(m) == len(model)
    assert sorted(m) == sorted(model)
    assert {k: m[k] for k in m} == {k: val(v) for k, v in model.items()}


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["update", "delete", "lookup"]), st.integers(0, 7), st.integers(0, 255),
                          st.sampled_from([BPF_ANY, BPF_NOEXIST, BPF_EXIST, 3])), max_size=40),
       st.sampled_from([MapType.ARRAY, MapType.PERCPU_ARRAY]))
def test_array_matches_a_list(ops: list[tuple[str, int, int, int]], kind: MapType) -> None:
    cap = 5
    m = create_map(kind, 4, 1, cap)
    assert isinstance(m, Array)
    model = [0] * cap
    percpu = kind is MapType.PERCPU_ARRAY
    for op, index, value, flags in ops:
        if op == "update":
            code = errno.EINVAL if flags > BPF_EXIST else errno.E2BIG if index >= cap else \
                errno.EEXIST if flags == BPF_NOEXIST else None
            expect(code, lambda i=index, v=value, f=flags: m.set(i, v, f))
            if code is None:
                model[index] = value
        elif op == "delete":
            expect(errno.EINVAL, lambda i=index: m._delete_raw(m._key(i), "delete"))
        elif index < cap:
            assert m[index] == ([model[index]] * num_cpus() if percpu else model[index])
        else:
            expect(errno.ENOENT, lambda i=index: m.get(i))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "peek"]), st.integers(0, 1000),
                          st.sampled_from([BPF_ANY, BPF_EXIST, 1])), max_size=50),
       st.sampled_from([MapType.STACK, MapType.QUEUE]))
def test_stack_and_queue_match_a_list(ops: list[tuple[str, int, int]], kind: MapType) -> None:
    cap = 4
    m = create_map(kind, 0, 2, cap)
    assert isinstance(m, Stack | Queue)
    model: list[int] = []  # oldest first
    for op, value, flags in ops:
        if op == "push":
            code = errno.EINVAL if flags not in (BPF_ANY, BPF_EXIST) else \
                errno.E2BIG if len(model) == cap and flags != BPF_EXIST else None
            expect(code, lambda v=value, f=flags: m.push(v, f))
            if code is None:
                if len(model) == cap:
                    model.pop(0)  # BPF_EXIST drops the oldest
                model.append(value)
        elif not model:
            expect(errno.ENOENT, m.pop if op == "pop" else m.peek)
        else:
            want = model[-1] if kind is MapType.STACK else model[0]
            got = m.pop() if op == "pop" else m.peek()
            assert got == want
            if op == "pop":
                model.remove(want) if kind is MapType.QUEUE else model.pop()
        assert len(m) == len(model)


def _masked(plen: int, data: int) -> int:
    return data & (((1 << 32) - 1) ^ ((1 << (32 - plen)) - 1)) if plen else 0


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["insert", "delete", "lookup"]), st.integers(0, 32),
                          st.sampled_from([0x0A000000, 0x0A0B0000, 0x0A0B0C0D, 0xC0A80001, 0xFFFFFFFF, 0]) |
                          st.integers(0, 2**32 - 1),
                          st.integers(0, 255), FLAGS), max_size=50))
def test_lpm_trie_matches_longest_prefix_model(ops: list[tuple[str, int, int, int, int]]) -> None:
    cap = 8
    t = LpmTrie(key_size=8, value_size=1, max_entries=cap)
    model: dict[tuple[int, int], int] = {}
    for op, plen, data, value, flags in ops:
        key = (plen, _masked(plen, data))
        if op == "insert":
            code = None
            if flags == BPF_NOEXIST and key in model:
                code = errno.EEXIST
            elif flags == BPF_EXIST and key not in model:
                code = errno.ENOENT
            elif key not in model and len(model) >= cap:
                code = errno.ENOSPC
            expect(code, lambda p=plen, d=data, v=value, f=flags: t.insert(LpmKey(p, d), v, f))
            if code is None:
                model[key] = value
        elif op == "delete":
            expect(None if key in model else errno.ENOENT, lambda p=plen, d=data: t.__delitem__(LpmKey(p, d)))
            model.pop(key, None)
        else:
            matches = [(p, v) for (p, d), v in model.items() if _masked(p, data) == d]
            assert t.get(LpmKey(32, data)) == (max(matches)[1] if matches else None)
        assert len(t) == len(model)
    assert sorted((k.prefix_len, _masked(k.prefix_len, int.from_bytes(k.data, "big"))) for k in t) == sorted(model)
