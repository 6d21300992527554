"""Map types that real objects use beyond the basic ones: XSKMAP and CPUMAP (redirect targets),
checked against the kernel's rules (errors included) and through bpf_redirect_map in both engines."""

from __future__ import annotations

import errno

import pytest

from jitbpf.errors import MapError
from jitbpf.linux.maps import BPF_EXIST, BPF_NOEXIST, CpuMap, MapKeyError, MapType, XskMap, create_map
from tests.support import ENGINES, load, run

REDIRECT_MAP = """
    lddw r1, map:{name}
    mov r2, {key}
    mov r3, {flags}
    call 51
    exit
"""
XDP_PASS, XDP_REDIRECT = 2, 4


def test_xskmap_slots_follow_the_kernel() -> None:
    xsks = XskMap(max_entries=4, name="XSKS")
    sock = object()
    xsks[1] = sock
    assert xsks.get(1) is sock and xsks.get(0) is None and len(xsks) == 1
    with pytest.raises(MapError) as exc:
        xsks.insert(1, object(), BPF_NOEXIST)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(MapKeyError):
        xsks.insert(2, object(), BPF_EXIST)
    with pytest.raises(MapError) as exc:
        xsks.insert(4, object())
    assert exc.value.errno == errno.E2BIG
    del xsks[1]
    del xsks[1]  # deleting an empty slot succeeds, as xsk_map_delete_elem
    with pytest.raises(MapError) as exc:
        del xsks[9]
    assert exc.value.errno == errno.EINVAL
    assert len(xsks) == 0


def test_cpumap_is_an_array_of_queues() -> None:
    cpus = CpuMap(max_entries=2, name="CPUS")
    cpus[1] = 192  # queue size
    assert cpus[1] == 192 and cpus.get(0) is None
    cpus[1] = 0  # empties the slot
    assert cpus.get(1) is None
    with pytest.raises(MapError) as exc:
        del cpus[5]
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize(("map_type", "key_size", "value_size"), [
    (MapType.XSKMAP, 4, 8), (MapType.XSKMAP, 8, 4), (MapType.CPUMAP, 4, 2), (MapType.CPUMAP, 2, 4)])
def test_bad_shapes_are_refused(map_type: MapType, key_size: int, value_size: int) -> None:
    with pytest.raises(MapError) as exc:
        create_map(map_type, key_size, value_size, 4)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("engine", ENGINES)
def test_redirect_map_to_an_af_xdp_socket(engine: str) -> None:
    xsks = XskMap(max_entries=4, name="XSKS")
    sock = object()
    xsks[2] = sock
    vm = load(REDIRECT_MAP.format(name="XSKS", key=2, flags=0), xsks)
    assert run(vm, engine) == XDP_REDIRECT
    assert vm.std.redirect.target is sock and vm.std.redirect.map is xsks
    missing = load(REDIRECT_MAP.format(name="XSKS", key=3, flags=XDP_PASS), xsks)
    assert run(missing, engine) == XDP_PASS  # no socket: the action the flags name


@pytest.mark.parametrize("engine", ENGINES)
def test_redirect_map_to_a_cpu(engine: str) -> None:
    cpus = CpuMap(max_entries=4, name="CPUS")
    cpus[0] = 2048
    vm = load(REDIRECT_MAP.format(name="CPUS", key=0, flags=0), cpus)
    assert run(vm, engine) == XDP_REDIRECT and vm.std.redirect.target == 2048
    assert run(load(REDIRECT_MAP.format(name="CPUS", key=1, flags=0), cpus), engine) == 0  # XDP_ABORTED default


@pytest.mark.parametrize("engine", ENGINES)
def test_programs_find_no_socket_pointer(engine: str) -> None:
    """A lookup in an XSKMAP gives the program NULL (no xdp_sock to point to): it falls back."""
    xsks = XskMap(max_entries=4, name="XSKS")
    xsks[0] = object()
    vm = load("""
        mov r1, 0
        stxw [r10-4], r1
        mov r2, r10
        add r2, -4
        lddw r1, map:XSKS
        call 1
        exit
    """, xsks)
    assert run(vm, engine) == 0
