"""DEVMAP_HASH (u32 key -> device) against a model and the kernel's map syscalls, and
``bpf_redirect_map`` over every redirect map type with its flags (fallback action in the low bits,
BPF_F_BROADCAST for device maps only) in both engines."""

from __future__ import annotations

import contextlib
import errno
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.errors import MapError
from jitbpf.linux.maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    BpfMap,
    CpuMap,
    DevMap,
    DevMapHash,
    MapType,
    XskMap,
    create_map,
)
from tests import kernel_oracle
from tests.support import ENGINES, errno_of, load, run

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT = 0, 1, 2, 4
BPF_F_BROADCAST = 8
MAX = 3

REDIRECT_MAP = """
    lddw r1, map:{name}
    mov r2, {key}
    mov r3, {flags}
    call 51
    exit
"""


def _expected_update(model: dict[int, int], key: int, flags: int) -> int:
    if flags not in (BPF_ANY, BPF_NOEXIST, BPF_EXIST):
        return errno.EINVAL
    if key in model:
        return errno.EEXIST if flags == BPF_NOEXIST else 0
    return errno.E2BIG if len(model) == MAX else 0  # BPF_EXIST creates a missing key, as in the kernel


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["update", "delete"]), st.sampled_from([0, 7, 1000, 2**32 - 1, 5]),
                          st.integers(1, 2**31), st.sampled_from([BPF_ANY, BPF_NOEXIST, BPF_EXIST, 4])), max_size=40))
def test_devmap_hash_follows_the_model(steps: list[tuple[str, int, int, int]]) -> None:
    m = DevMapHash(max_entries=MAX, name="TX")
    model: dict[int, int] = {}
    for op, key, ifindex, flags in steps:
        if op == "update":
            code = _expected_update(model, key, flags)
            assert errno_of(m.insert, key, ifindex, flags) == code
            if code == 0:
                model[key] = ifindex
        else:
            assert errno_of(m.__delitem__, key) == (0 if model.pop(key, None) is not None else errno.ENOENT)
        assert dict(m.items()) == model


def test_devmap_hash_refuses_ifindex_zero_and_bad_shapes() -> None:
    m = DevMapHash(max_entries=2)
    assert errno_of(m.insert, 1, 0) == errno.EINVAL
    for ks, vs in ((8, 4), (4, 2), (4, 12)):
        with pytest.raises(MapError) as exc:
            create_map(MapType.DEVMAP_HASH, ks, vs, 4)
        assert exc.value.errno == errno.EINVAL
    assert isinstance(create_map(MapType.DEVMAP_HASH, 4, 8, 4), DevMapHash)


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
def test_devmap_hash_errors_agree_with_the_kernel() -> None:
    """Interface 1 (loopback) exists in every network namespace."""
    ours = DevMapHash(max_entries=2)
    with kernel_oracle.kernel_map(kernel_oracle.KernelMap(int(MapType.DEVMAP_HASH), 4, 4, 2)) as theirs:
        for key, flags in [(10, BPF_EXIST), (10, BPF_ANY), (10, BPF_NOEXIST), (10, BPF_EXIST), (20, BPF_NOEXIST),
                           (30, BPF_ANY), (30, 4)]:
            k = key.to_bytes(4, "little")
            assert errno_of(ours.insert, key, 1, flags) == theirs.update(k, (1).to_bytes(4, "little"), flags), key
        for key in (20, 20, 30):
            assert errno_of(ours.__delitem__, key) == theirs.delete(key.to_bytes(4, "little")), key
        assert theirs.lookup((10).to_bytes(4, "little"), 4) == (0, (1).to_bytes(4, "little"))
        assert ours[10] == 1


def _maps() -> list[BpfMap]:
    dev = DevMap(max_entries=8, name="DEV")
    dev[3] = 7
    hashed = DevMapHash(max_entries=8, name="DEVH")
    hashed[1000], hashed[5] = 9, 11
    cpus = CpuMap(max_entries=4, name="CPUS")
    cpus[3] = 512
    xsks = XskMap(max_entries=4, name="XSKS")
    xsks[3] = "queue 3"
    return [dev, hashed, cpus, xsks]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("name", "key", "target"), [("DEV", 3, 7), ("DEVH", 1000, 9), ("CPUS", 3, 512),
                                                     ("XSKS", 3, "queue 3")])
def test_redirect_map_over_every_redirect_map(engine: str, name: str, key: int, target: object) -> None:
    maps = {m.name: m for m in _maps()}
    vm = load(REDIRECT_MAP.format(name=name, key=key, flags=0), maps[name])
    assert run(vm, engine) == XDP_REDIRECT
    assert vm.std.redirect.target == target and vm.std.redirect.map is maps[name]
    for fallback in (XDP_ABORTED, XDP_DROP, XDP_PASS):  # a missing key: the action in the low bits
        missing = load(REDIRECT_MAP.format(name=name, key=2, flags=fallback), maps[name])
        assert run(missing, engine) == fallback
    broadcast = load(REDIRECT_MAP.format(name=name, key=2, flags=BPF_F_BROADCAST), maps[name])
    if name.startswith("DEV"):  # every device of the map, whatever the key
        assert run(broadcast, engine) == XDP_REDIRECT
        assert sorted(broadcast.std.redirect.target) == ([7] if name == "DEV" else [9, 11])
    else:  # not a flag these maps know
        assert run(broadcast, engine) == XDP_ABORTED
    unknown = load(REDIRECT_MAP.format(name=name, key=key, flags=0x20), maps[name])
    assert run(unknown, engine) == XDP_ABORTED


@pytest.mark.parametrize("kind", [DevMap, DevMapHash])
def test_a_broadcast_leaves_out_devices_another_thread_deletes(kind: type[DevMap] | type[DevMapHash]) -> None:
    """The broadcast lists the devices, then reads each: one deleted in between failed the run
    with a KeyError; the kernel's walk leaves it out."""
    dev = kind(max_entries=64, name="DEV")
    vm = load("lddw r1, map:DEV\nmov r2, 0\nmov r3, 8\ncall 51\nexit", dev, prog_type="xdp")
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            dev[i % 63 + 1] = 7
            with contextlib.suppress(KeyError):
                del dev[(i * 7) % 63 + 1]

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert vm.run_xdp(bytes(20), engine="jit")[0] == 4  # XDP_REDIRECT
    finally:
        stop.set()
        worker.join()
    vm.close()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", [DevMap, DevMapHash])
def test_a_redirect_map_closed_for_python_still_serves_the_vms_runs(engine: str,
                                                                    kind: type[DevMap] | type[DevMapHash]) -> None:
    """As a lookup in a closed hash map does: the open VM's programs keep the map (its Python
    accessors, which the redirect helpers use, refused a closed map); Python does not."""
    dev = kind(max_entries=4, name="DEV")
    dev[1] = 7
    vm = load("lddw r1, map:DEV\nmov r2, 1\nmov r3, 0\ncall 51\nexit", dev, prog_type="xdp")
    dev.close()
    assert [vm.run_xdp(bytes(20), engine=engine)[0] for _ in range(2)] == [4, 4]  # XDP_REDIRECT
    assert vm.std.redirect is not None and vm.std.redirect.target == 7
    with pytest.raises(MapError, match="is closed"):
        dev.get(1)
    vm.close()
