"""Pickling VMs, maps and ELF objects: rebuilt with the same program, options, maps and helpers,
running alike in this process and in others."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.linux.maps import Array, HashMap, PerCpuArray, Queue, RingBuf
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

COUNTER = """
    stw [r10-4], 0
    lddw r1, map:COUNT
    mov r2, r10
    add r2, -4
    call 1                  ; bpf_map_lookup_elem(&COUNT, &0)
    jeq r0, 0, out
    ldxdw r1, [r0]
    add r1, 1
    stxdw [r0], r1
    mov r0, r1
out:
    exit
"""


def counter_vm() -> VM:
    vm = VM(assemble(COUNTER, maps={"COUNT": 1}), budget=5000)
    vm.add_map(Array(value_size=8, max_entries=1, name="COUNT"), 1)
    vm.use_standard_helpers()
    return vm


def triple(r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
    """A custom helper that pickles (a module-level function)."""
    return r1 * 3


def test_vm_round_trip_keeps_program_options_and_map_contents() -> None:
    with counter_vm() as vm:
        assert vm.execute() == 1
        vm.jit_compile()
        assert vm.execute_jit() == 2
        with pickle.loads(pickle.dumps(vm)) as copy:
            assert copy.budget == 5000 and copy.program.to_bytes() == vm.program.to_bytes()
            assert copy.map_by_name("COUNT") is not vm.map_by_name("COUNT")
            assert copy.execute_jit() == 3 and copy.execute() == 4  # the contents came along
            assert vm.execute() == 3  # and the original is untouched


def test_maps_shared_by_two_vms_stay_shared() -> None:
    shared = Array(value_size=8, max_entries=1, name="COUNT")
    vms = [VM(assemble(COUNTER, maps={"COUNT": 1})) for _ in range(2)]
    for vm in vms:
        vm.add_map(shared, 1)
        vm.use_standard_helpers()
    first, second = pickle.loads(pickle.dumps(vms))
    assert first.execute() == 1 and second.execute() == 2
    for vm in (*vms, first, second):
        vm.close()


def test_program_type_and_its_helpers_are_rebuilt() -> None:
    code = assemble("mov r0, 2\nexit")  # XDP_PASS
    with VM(code, prog_type=ProgType.XDP) as vm, pickle.loads(pickle.dumps(vm)) as copy:
        assert copy.prog_type is ProgType.XDP
        assert set(copy.helpers) == set(vm.helpers)
        assert copy.run_xdp(b"\0" * 64, engine="jit")[0] == vm.run_xdp(b"\0" * 64)[0] == 2


def test_custom_helper_travels_as_its_function() -> None:
    with VM(assemble("mov r1, 14\ncall 77\nexit"), helpers=()) as vm:
        vm.register_helper(77, triple)
        with pickle.loads(pickle.dumps(vm)) as copy:
            assert copy.execute() == copy.execute_jit() == 42


def test_unpicklable_helper_is_named_in_the_error() -> None:
    with VM(assemble("call 77\nexit")) as vm:
        vm.register_helper(77, lambda *_args: 0, name="my_lambda")
        with pytest.raises(pickle.PicklingError, match=r"helper 77 \(my_lambda\).*module-level function"):
            pickle.dumps(vm)


@pytest.mark.parametrize("make", [lambda: Queue(value_size=4, max_entries=4), lambda: RingBuf(max_entries=4096)])
def test_maps_of_process_state_refuse_clearly(make: object) -> None:
    m = make()  # type: ignore[operator]
    with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
        pickle.dumps(m)
    m.close()


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), max_size=20))
def test_hash_map_contents_round_trip(items: dict[int, int]) -> None:
    m = HashMap(key_size=4, value_size=8, max_entries=32, name="H")
    m.update(items)
    copy = pickle.loads(pickle.dumps(m))
    assert dict(copy.items()) == items and copy.name == "H" and copy.max_entries == 32
    m.close()
    copy.close()


def test_per_cpu_values_round_trip() -> None:
    m = PerCpuArray(value_size=8, max_entries=2, name="P")
    raw = m.raw_items()
    key = next(iter(raw))
    m._update_raw(key, bytes(range(len(raw[key]))), 0, "test")
    assert pickle.loads(pickle.dumps(m)).raw_items() == m.raw_items()
    m.close()


def _run_counter(vm: VM) -> int:
    with vm:
        return vm.execute_jit()


def test_multiprocessing_runs_a_pickled_vm() -> None:
    with counter_vm() as vm:
        vm.execute()  # COUNT = 1 travels with it
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            assert pool.map(_run_counter, [vm, vm]) == [2, 2]


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is needed to build xdp_firewall.c")
def test_elf_object_round_trip() -> None:
    from jitbpf import testing
    from jitbpf.linux.elf import load_elf

    obj = load_elf(testing.compile_c(EXAMPLES / "xdp_firewall.c", include=[EXAMPLES / "include"]))
    obj["BLOCKED_IPS"][0x0100007F] = 1
    copy = pickle.loads(pickle.dumps(obj))
    assert dict(copy["BLOCKED_IPS"].items()) == {0x0100007F: 1}
    assert copy["BLOCKED_IPS"] is not obj["BLOCKED_IPS"]
    program = copy.program("xdp_firewall")
    assert program.obj is copy and program.code == obj.program("xdp_firewall").code
    with program.vm() as vm:
        assert vm.map_by_name("BLOCKED_IPS") is copy["BLOCKED_IPS"]


@pytest.fixture(scope="module")
def scaleout(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, VM, list[str]]:
    """The scale-out example, its firewall VM and three small captures."""
    if shutil.which("clang") is None:
        pytest.skip("clang is needed to build xdp_firewall.c (apt-get install clang)")
    sys.path.insert(0, str(EXAMPLES))  # spawned workers import the example by name, as its own run does
    try:
        module = importlib.import_module("pcap_scaleout")
    finally:
        sys.path.remove(str(EXAMPLES))
    captures = module.make_captures(tmp_path_factory.mktemp("captures"), 3, 200)
    return module, module.firewall(), captures


def _check_scaleout(results: list[Any]) -> None:
    assert [r.packets for r in results] == [200, 200, 200]
    assert all(r.verdicts == {"XDP_DROP": 25, "XDP_PASS": 175} for r in results)  # the map contents travelled


def test_scaleout_example_with_multiprocessing(scaleout: tuple[ModuleType, VM, list[str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    module, vm, captures = scaleout
    monkeypatch.syspath_prepend(str(EXAMPLES))
    _check_scaleout(module.with_multiprocessing(vm, captures, 2))


def test_scaleout_example_with_dask(scaleout: tuple[ModuleType, VM, list[str]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dask.distributed", reason="Dask is an optional extra (pip install jitbpf[dask])")
    module, vm, captures = scaleout
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]))
    _check_scaleout(module.with_dask(vm, captures, 2))
