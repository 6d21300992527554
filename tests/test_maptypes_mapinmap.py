"""ARRAY_OF_MAPS and HASH_OF_MAPS: inner maps of the template's shape (the kernel's update rules
and errors), a program's lookup of an inner map and of its values in both engines, the verifier's
map pointer or NULL, and BTF-defined maps of maps with ``.values`` initialisers from C."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.errors import MapError, VerifierError
from jitbpf.linux.elf import load_elf
from jitbpf.linux.maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_INNER_MAP,
    BPF_NOEXIST,
    Array,
    ArrayOfMaps,
    BpfMap,
    HashMap,
    HashOfMaps,
    MapShape,
    MapType,
    create_map,
)
from tests import kernel_oracle
from tests.support import ENGINES, c_builder, errno_of, load, run

MISS = 99  # what the program returns when a lookup finds nothing
SOCKET_FILTER = 1  # the kernel's program type for the oracle's loads

# outer[1] -> inner, then inner[7]: its 8-byte value (MISS when either lookup misses).
TWO_LOOKUPS = """
    mov r1, 1
    stxw [r10-4], r1
    mov r2, r10
    add r2, -4
    lddw r1, map:OUTER
    call 1
    jeq r0, 0, miss
    mov r1, r0
    mov r3, 7
    stxw [r10-8], r3
    mov r2, r10
    add r2, -8
    call 1
    jeq r0, 0, miss
    ldxdw r0, [r0]
    exit
miss:
    mov r0, 99
    exit
"""


def _inner(name: str = "", value: int | None = None, max_entries: int = 4) -> HashMap:
    m = HashMap(key_size=4, value_size=8, max_entries=max_entries, name=name)
    if value is not None:
        m[7] = value
    return m


@pytest.fixture(params=[ArrayOfMaps, HashOfMaps])
def outer(request: pytest.FixtureRequest) -> BpfMap:
    cls = request.param
    return cls(inner=_inner(), max_entries=2, name="OUTER")  # type: ignore[no-any-return]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_reaches_an_inner_maps_values(outer: Any, engine: str) -> None:
    vm = load(TWO_LOOKUPS, outer)
    assert run(vm, engine, bytearray(8)) == MISS  # no inner map yet
    first, second = _inner("FIRST", 1234), _inner("SECOND", 5678)
    outer[1] = first
    assert run(vm, engine, bytearray(8)) == 1234
    outer[1] = second  # the VM follows the outer map's change (the new inner map's values)
    assert run(vm, engine, bytearray(8)) == 5678
    del outer[1]
    assert run(vm, engine, bytearray(8)) == MISS


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_writes_into_an_inner_array(engine: str) -> None:
    template = Array(value_size=8, max_entries=2)
    outer = ArrayOfMaps(inner=template, max_entries=2, name="OUTER")
    inner = Array(value_size=8, max_entries=2, name="INNER")
    outer[1] = inner
    text = TWO_LOOKUPS.replace("mov r3, 7", "mov r3, 1").replace("ldxdw r0, [r0]", "stdw [r0], 42\n    mov r0, 0")
    assert run(load(text, outer), engine, bytearray(8)) == 0
    assert inner[1] == 42


# Programs the verifier refuses, each for one rule: (what changes in TWO_LOOKUPS, the message).
REFUSED = [
    pytest.param(("    jeq r0, 0, miss\n    mov r1, r0", "    mov r1, r0"),
                 "r1 type=map_value_or_null expected=map_ptr", id="inner-map-not-checked-against-null"),
    pytest.param(("    mov r1, r0\n", "    ldxdw r1, [r0]\n"), "r0 invalid mem access .map_ptr.",
                 id="inner-map-dereferenced"),
    pytest.param(("ldxdw r0, [r0]", "ldxdw r0, [r0+8]"), "invalid access to map value, value_size=8 off=8",
                 id="inner-value-bounds-from-the-template"),
    pytest.param(("lddw r1, map:OUTER\n    call 1", "lddw r1, map:OUTER\n    call 3"),
                 "cannot pass map_type", id="outer-delete-from-a-program"),
    pytest.param(("    mov r1, r0\n", "    add r0, 8\n    mov r1, r0\n"), "r0 pointer arithmetic on map_ptr",
                 id="arithmetic-on-map-pointer-or-null"),
]


@pytest.mark.parametrize(("change", "message"), REFUSED)
def test_the_verifier_refuses(outer: Any, change: tuple[str, str], message: str) -> None:
    text = TWO_LOOKUPS.replace(*change, 1)
    assert text != TWO_LOOKUPS
    vm = load(text, outer)
    with pytest.raises(VerifierError, match=message):
        vm.check()


def test_the_verifier_types_an_outer_lookup_as_map_pointer_or_null() -> None:
    outer = ArrayOfMaps(inner=_inner(), max_entries=1, name="OUTER")
    vm = load(TWO_LOOKUPS.replace("    jeq r0, 0, miss\n    mov r1, r0", "    ldxdw r1, [r0]", 1), outer)
    with pytest.raises(VerifierError, match="map_ptr_or_null"):
        vm.check()


def test_inner_maps_must_fit_the_template(outer: Any) -> None:
    other_sizes = HashMap(key_size=4, value_size=4, max_entries=4)
    other_type = Array(value_size=8, max_entries=4)
    other_capacity = _inner(max_entries=8)
    for bad in (other_sizes, other_type, other_capacity):
        assert errno_of(outer.__setitem__, 0, bad) == errno.EINVAL
    assert len(outer) == 0
    with pytest.raises(TypeError):
        outer[0] = 5


def test_bpf_f_inner_map_lets_capacities_differ() -> None:
    template = HashMap(key_size=4, value_size=8, max_entries=4, flags=BPF_F_INNER_MAP)
    outer = ArrayOfMaps(inner=template, max_entries=1)
    outer[0] = HashMap(key_size=4, value_size=8, max_entries=64, flags=BPF_F_INNER_MAP)
    assert outer[0].max_entries == 64


def test_array_of_maps_follows_the_kernels_update_rules() -> None:
    outer = ArrayOfMaps(inner=_inner(), max_entries=2)
    inner = _inner()
    assert errno_of(outer.insert, 0, inner, BPF_NOEXIST) == errno.EINVAL  # BPF_ANY only
    assert errno_of(outer.insert, 0, inner, BPF_EXIST) == errno.EINVAL
    assert errno_of(outer.__setitem__, 2, inner) == errno.E2BIG
    assert errno_of(outer.__delitem__, 0) == errno.ENOENT
    outer[0] = inner
    outer[1] = inner  # one inner map may be in several slots
    assert list(outer) == [0, 1] and outer.get(1) is inner and outer.get(0) is inner
    assert errno_of(outer.__getitem__, 5) == errno.ENOENT
    del outer[0]
    assert list(outer) == [1]


def test_hash_of_maps_follows_the_kernels_update_rules() -> None:
    outer = HashOfMaps(inner=_inner(), key_size=8, max_entries=1)
    inner = _inner()
    assert errno_of(outer.insert, 5, inner, BPF_EXIST) == errno.ENOENT
    outer.insert(5, inner, BPF_NOEXIST)
    assert errno_of(outer.insert, 5, inner, BPF_NOEXIST) == errno.EEXIST
    assert errno_of(outer.insert, 6, inner) == errno.E2BIG
    assert 5 in outer and list(outer) == [5] and outer[5] is inner
    assert errno_of(outer.__delitem__, 6) == errno.ENOENT


@pytest.mark.parametrize("template", [
    pytest.param(None, id="no-template"),
    pytest.param(MapShape(MapType.ARRAY_OF_MAPS, 4, 4, 1, 0), id="map-of-maps-inside"),
    pytest.param(MapShape(MapType.CGROUP_STORAGE, 16, 4, 0, 0), id="cgroup-storage-inside"),
])
def test_outer_maps_need_a_usable_template(template: MapShape | None) -> None:
    for kind in (MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS):
        with pytest.raises(MapError) as exc:
            create_map(kind, 4, 4, 1, inner=template)
        assert exc.value.errno == errno.EINVAL


def test_an_inner_map_lives_while_an_outer_map_holds_it() -> None:
    outer = ArrayOfMaps(inner=_inner(), max_entries=1, name="OUTER")
    inner = _inner("INNER", 1234)
    outer[0] = inner
    inner.close()  # closed for Python; the outer map still holds its storage
    assert not inner._freed
    vm = load(TWO_LOOKUPS.replace("mov r1, 1", "mov r1, 0"), outer)
    assert run(vm, "interp", bytearray(8)) == run(vm, "jit", bytearray(8)) == 1234
    del outer[0]
    assert inner._freed


# r6 = outer[0]; the helper 100 (the caller's control plane) runs; then inner[0] = 0x666
# through r6, read back: what a run that looked the inner map up before it was replaced does.
HELD_ACROSS_A_CHANGE = """
    stw [r10-4], 0
    lddw r1, map:OUTER
    mov r2, r10
    add r2, -4
    call 1
    jeq r0, 0, miss
    mov r6, r0
    call 100
    mov r1, r6
    mov r2, r10
    add r2, -4
    call 1
    jeq r0, 0, miss
    stdw [r0], 0x666
    ldxdw r0, [r0]
    exit
miss:
    mov r0, 99
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("change", ["replace", "delete"])
def test_an_inner_map_taken_out_during_a_run_lives_until_the_run_ends(engine: str, change: str) -> None:
    """As the kernel's RCU grace period: a run holding an inner map it looked up keeps using
    that map, not freed memory (nor a map allocated there since); it is freed after the run."""
    outer = ArrayOfMaps(inner=Array(value_size=8, max_entries=1), max_entries=1, name="OUTER")
    old = Array(value_size=8, max_entries=1, name="OLD")
    outer[0] = old
    old.close()  # the outer map alone holds it
    made: list[Array] = []

    def control_plane(*_: int) -> int:
        if change == "replace":
            outer[0] = Array(value_size=8, max_entries=1, name="NEW")
        else:
            del outer[0]
        assert not old._freed  # the run in progress holds it
        made.extend(Array(value_size=8, max_entries=1, name=f"MINE{i}") for i in range(8))
        return 0

    vm = load(HELD_ACROSS_A_CHANGE, outer)
    vm.register_helper(100, control_plane)
    assert run(vm, engine, bytearray(8)) == 0x666
    assert old._freed  # the run is over: the map went with it
    assert all(m[0] == 0 for m in made)  # nothing the caller made since was touched
    if change == "replace":
        new = outer[0]
        assert isinstance(new, Array) and new[0] == 0
    vm.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_inner_maps_replaced_by_another_thread_during_runs(engine: str) -> None:
    """A control-plane thread replacing the inner map while runs update it through their
    lookup: every run ends normally, and the maps let go of are freed once runs pause."""
    outer = ArrayOfMaps(inner=_inner(), max_entries=1, name="OUTER")
    outer[0] = _inner()
    text = HELD_ACROSS_A_CHANGE.replace("    call 100\n", "").replace("stdw [r0], 0x666", "stdw [r0], 5")
    text = text.replace("    mov r1, r6\n    mov r2, r10\n    add r2, -4\n    call 1\n",
                        "    stdw [r10-16], 5\n    mov r1, r6\n    mov r2, r10\n    add r2, -4\n"
                        "    mov r3, r10\n    add r3, -16\n    mov r4, 0\n    call 2\n"
                        "    mov r1, r6\n    mov r2, r10\n    add r2, -4\n    call 1\n")
    vm = load(text, outer)
    stop = threading.Event()
    let_go: list[BpfMap] = []

    def swap() -> None:
        while not stop.is_set():
            m = _inner()
            previous = outer[0]
            outer[0] = m
            previous.close()
            let_go.append(previous)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert run(vm, engine, bytearray(8)) == 5
    finally:
        stop.set()
        swapper.join()
    outer.sweep()  # no run in progress now
    assert let_go and all(m._freed for m in let_go)
    vm.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "del"]), st.integers(0, 3), st.integers(0, 2)), max_size=20))
def test_array_of_maps_follows_a_dict(ops: list[tuple[str, int, int]]) -> None:
    inners = [_inner(f"I{i}") for i in range(3)]
    outer = ArrayOfMaps(inner=_inner(), max_entries=3)
    model: dict[int, HashMap] = {}
    for op, index, which in ops:
        if op == "set":
            got = errno_of(outer.__setitem__, index, inners[which])
            want = errno.E2BIG if index >= 3 else 0
            if not want:
                model[index] = inners[which]
        else:
            got = errno_of(outer.__delitem__, index)
            want = errno.E2BIG if index >= 3 else 0 if model.pop(index, None) is not None else errno.ENOENT
        assert got == want
        assert {i: outer[i] for i in outer} == model
        assert len(outer) == len(model)
    assert all(not m._holders or m in model.values() for m in inners)


HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct inner {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
};
struct inner first SEC(".maps"), second SEC(".maps");
"""

BODY = """
struct {
    __uint(type, BPF_MAP_TYPE_%s);
    __uint(max_entries, 2);
    __type(key, __u32);
    __array(values, struct inner);
} outer SEC(".maps") = {
    .values = { [0] = &first, [1] = &second },
};

SEC("socket")
int pick(struct __sk_buff *skb)
{
    __u32 slot = skb->len > 10, zero = 0;
    void *inner = bpf_map_lookup_elem(&outer, &slot);
    if (!inner)
        return 1;
    __u64 *value = bpf_map_lookup_elem(inner, &zero);
    return value ? *value : 2;
}
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return c_builder(tmp_path_factory.mktemp("mapinmap"), HEADER)


@pytest.mark.parametrize("kind", ["ARRAY_OF_MAPS", "HASH_OF_MAPS"])
def test_btf_maps_of_maps_with_initial_values(build: Any, kind: str) -> None:
    path: Path = build(BODY % kind)
    obj = load_elf(path)
    outer, first, second = obj["outer"], obj["first"], obj["second"]
    assert outer.inner == MapShape(MapType.ARRAY, 4, 8, 1, 0) and outer.value_size == 4
    assert outer[0] is first and outer[1] is second
    first[0], second[0] = 11, 22
    prog = obj.programs["pick"]
    for engine in ENGINES:
        assert prog.run(bytes(8), engine=engine) == 11
        assert prog.run(bytes(64), engine=engine) == 22
    del outer[1]
    assert prog.run(bytes(64), engine="interp") == prog.run(bytes(64), engine="jit") == 1  # no inner map


ORACLE_OUTER = {1: kernel_oracle.KernelMap(int(MapType.ARRAY_OF_MAPS), 4, 4, 2,
                                           inner=kernel_oracle.KernelMap(int(MapType.HASH), 4, 8, 4))}


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
def _refused_text(case: Any) -> str:
    old, new = case.values[0]
    return TWO_LOOKUPS.replace(old, new, 1)


@pytest.mark.parametrize("text", [TWO_LOOKUPS, *(_refused_text(p) for p in REFUSED)],
                         ids=["accepted", *(str(p.id) for p in REFUSED)])
def test_verdicts_agree_with_the_kernel(text: str) -> None:
    outer = ArrayOfMaps(inner=_inner(), max_entries=2, name="OUTER")
    vm = load(text, outer)
    code = assemble(text, maps={"OUTER": 1})
    try:
        vm.check()
        ours = True
    except VerifierError:
        ours = False
    theirs = kernel_oracle.kernel_verify(code, SOCKET_FILTER, ORACLE_OUTER)
    assert ours == theirs.accepted, theirs.log[-400:]


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.parametrize("kind", [MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS])
def test_update_errors_agree_with_the_kernel(kind: MapType) -> None:
    ours: Any = create_map(kind, 4, 4, 2, inner=_inner())
    spec = kernel_oracle.KernelMap(int(kind), 4, 4, 2, inner=kernel_oracle.KernelMap(int(MapType.HASH), 4, 8, 4))
    fits = kernel_oracle.create(kernel_oracle.KernelMap(int(MapType.HASH), 4, 8, 4))
    misfit = kernel_oracle.create(kernel_oracle.KernelMap(int(MapType.HASH), 4, 4, 4))
    try:
        with kernel_oracle.kernel_map(spec) as theirs:
            steps = [(0, BPF_EXIST, True), (0, BPF_NOEXIST, True), (0, BPF_NOEXIST, True), (2, BPF_ANY, True),
                     (0, BPF_ANY, False), (0, BPF_ANY, True), (1, BPF_ANY, True), (5, BPF_ANY, True)]
            for index, flags, fit in steps:
                inner = _inner() if fit else HashMap(key_size=4, value_size=4, max_entries=4)
                mine = errno_of(ours.insert, index, inner, flags)
                fd = fits if fit else misfit
                assert mine == theirs.update(index.to_bytes(4, "little"), fd.to_bytes(4, "little"), flags), \
                    (index, flags, fit)
            for index in (1, 1, 5):
                assert errno_of(ours.__delitem__, index) == theirs.delete(index.to_bytes(4, "little")), index
    finally:
        os.close(fits)
        os.close(misfit)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_native_xdp_run_follows_the_outer_map(engine: str) -> None:
    """XDP runs with the JIT bind their maps' regions natively: a new inner map is bound too."""
    outer = ArrayOfMaps(inner=_inner(), max_entries=2, name="OUTER")
    vm = load(TWO_LOOKUPS.replace("mov r0, 99", "mov r0, 0"), outer, prog_type="xdp")
    outer[1] = _inner("PASS", 2)
    assert vm.run_xdp(bytes(64), engine=engine)[0] == 2
    outer[1] = _inner("DROP", 1)
    assert vm.run_xdp(bytes(64), engine=engine)[0] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_updates_an_inner_map(engine: str) -> None:
    outer = ArrayOfMaps(inner=_inner(), max_entries=2, name="OUTER")
    inner = _inner("INNER")
    outer[1] = inner
    update = TWO_LOOKUPS.replace("""    call 1
    jeq r0, 0, miss
    ldxdw r0, [r0]
    exit""", """    stdw [r10-16], 31
    mov r3, r10
    add r3, -16
    mov r4, 0
    call 2
    exit""")
    assert update != TWO_LOOKUPS
    assert run(load(update, outer), engine, bytearray(8)) == 0
    assert inner[7] == 31
