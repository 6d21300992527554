"""bpf_spin_lock and bpf_spin_unlock: the kernel's verifier rules (the lock field of a map value
that the map's BTF names, one lock at a time, nothing called while holding it, released before
exit), and real mutual exclusion between threads in both engines. The rules' minimal cases are
in tests/verifier/locks/."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from jitbpf.linux.elf import load_elf
from jitbpf.linux.maps import Array
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM
from tests.kernel import Kernel
from tests.support import ENGINES, c_builder, packet_run_everywhere

Build = Callable[[str], Path]
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct val { int cnt; struct bpf_spin_lock lock; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, int); __type(value, struct val); }
    counts SEC(".maps");
static __noinline void take(struct val *v) { bpf_spin_lock(&v->lock); }
"""
COUNT = """
SEC("%s") int prog(void *ctx) {
    int k = 0;
    struct val *v = bpf_map_lookup_elem(&counts, &k);
    if (!v)
        return 0;
    %s
    v->cnt++;
    bpf_spin_unlock(&v->lock);
    return %s;
}
"""
FRAME = bytes(64)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("spinlock"), HEADER)


@pytest.mark.parametrize("take", ["bpf_spin_lock(&v->lock);", "take(v);"], ids=["inline", "in-a-subprogram"])
def test_a_counter_under_its_lock_matches_the_kernel(build: Build, kernel: Kernel | None, take: str) -> None:
    """The BTF names the lock field; taking it in a function the caller releases is allowed."""
    path = build(COUNT % ("tc", take, "v->cnt > 0"))
    assert load_elf(path).maps["counts"].spin_lock_off == 4
    assert packet_run_everywhere(path, FRAME, kernel)[0] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_threads_serialise_on_the_lock(build: Build, engine: str) -> None:
    """Two threads counting 20,000 packets under the lock lose no increment."""
    prog = load_elf(build(COUNT % ("xdp", "bpf_spin_lock(&v->lock);", "2"))).programs["prog"]
    vm = prog.vm()
    packets = [FRAME] * (2_000 if engine == "interp" else 20_000)
    outcome = vm.run_batch(packets, engine=engine, threads=2)
    assert set(outcome.results) == {2}
    assert vm.map_by_name("counts")[0] == len(packets)  # the count, and the lock free (0) above it


LOCK_AND_EXIT = """
    stw [r10-4], 0
    mov r2, r10
    add r2, -4
    lddw r1, map:counts
    call 1
    jeq r0, 0, +3
    mov r1, r0
    add r1, 4
    call 93
    mov r0, 7
    exit
"""  # unverified: it exits holding the lock


@pytest.mark.parametrize("engine", ENGINES)
def test_a_lock_left_held_never_hangs_the_next_run(engine: str) -> None:
    """A run that ends holding a lock (an unverified program, or one stopped by an error) leaves
    it held: the same thread takes it again at once, another after waiting a second for it."""
    counts = Array(value_size=8, max_entries=1, name="counts")
    counts.spin_lock_off = 4
    vm = VM(assemble(LOCK_AND_EXIT, maps={"counts": 1}), verify=False)
    vm.add_map(counts, 1)
    vm.use_standard_helpers()

    def run() -> int:
        return vm.execute(bytearray(8)) if engine == "interp" else vm.execute_jit(bytearray(8))

    assert run() == 7 and run() == 7
    results: list[int] = []
    other = threading.Thread(target=lambda: results.append(run()))
    other.start()
    other.join(timeout=30)
    assert not other.is_alive() and results == [7]


@pytest.mark.parametrize("prog_type", [ProgType.KPROBE, ProgType.TRACEPOINT, ProgType.PERF_EVENT,
                                       ProgType.RAW_TRACEPOINT])
def test_tracing_programs_may_not_use_a_map_with_a_lock(prog_type: ProgType) -> None:
    counts = Array(value_size=8, max_entries=1, name="counts")
    counts.spin_lock_off = 4
    vm = VM(assemble("lddw r1, map:counts\nmov r0, 0\nexit", maps={"counts": 1}), prog_type=prog_type)
    vm.add_map(counts, 1)
    with pytest.raises(VerifierError, match="tracing progs cannot use bpf_spin_lock yet"):
        vm.check()
    plain = VM(assemble("lddw r1, map:counts\nmov r0, 0\nexit", maps={"counts": 1}), prog_type=prog_type)
    plain.add_map(Array(value_size=8, max_entries=1, name="counts"), 1)
    plain.check()  # the same map without a lock


def test_two_known_elements_are_two_locks() -> None:
    """Lookups at a known index in range are never NULL, and each result still names its own
    element's lock: unlocking the second after locking the first is refused, as in the kernel."""
    counts = Array(value_size=8, max_entries=1, name="counts")
    counts.spin_lock_off = 4
    lookup = "mov r2, r10\nadd r2, -4\nlddw r1, map:counts\ncall 1\n"
    text = ("stw [r10-4], 0\n" + lookup + "mov r6, r0\n" + lookup + "mov r7, r0\n"
            "mov r1, r6\nadd r1, 4\ncall 93\nmov r1, {unlock}\nadd r1, 4\ncall 94\nmov r0, 0\nexit")
    for unlock, ok in (("r6", True), ("r7", False)):
        vm = VM(assemble(text.format(unlock=unlock), maps={"counts": 1}), prog_type=ProgType.SCHED_CLS)
        vm.add_map(counts, 1)
        if ok:
            vm.check()
        else:
            with pytest.raises(VerifierError, match="bpf_spin_unlock of different lock"):
                vm.check()
