"""bpf_timer: a map value's timer initialised, given a callback, started and cancelled, with the
kernel helpers' results (-EBUSY, -EINVAL, whether a cancel stopped an armed timer) in both engines
and in the kernel's BPF_PROG_TEST_RUN where it is available; and the verifier's rules for the
timer argument (exactly the value's struct bpf_timer, of the map given) and for the callback (a
function of the timer's map element, verified apart, that returns 0), checked against the kernel."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import jitbpf
import jitbpf.linux.timers as timers_module
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.linux.elf import load_elf
from tests.kernel import Kernel
from tests.support import c_builder, packet_run_everywhere
from tests.test_skb_room_helpers import UDP4

Build = Callable[[str], Path]
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
# Each helper's result goes into 6 bits of r0 (-EINVAL: 42, -EBUSY: 48).
TEMPLATE = """
struct elem { int pad; struct bpf_timer t; int n; };
struct plain { long a, b; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2); __type(key, int); __type(value, struct elem); }
    timers SEC(".maps"), other SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, int); __type(value, struct plain); }
    plain SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 2); __type(key, int); __type(value, struct elem); }
    htimers SEC(".maps");
static int count(void *map, int *key, struct elem *v) { v->n++; return 0; }
static int returns_one(void *map, int *key, struct elem *v) { return 1; }
#define R(x) (out = out * 64 + ((x) & 63))
SEC("tc") int prog(struct __sk_buff *skb) {
    int k = 0;
    struct elem *e = bpf_map_lookup_elem(&timers, &k);
    struct plain *p = bpf_map_lookup_elem(&plain, &k);
    if (!e || !p)
        return 1;
    long out = 0;
    %s;
    return out & 0x7fffffff;
}
"""
CALLS = [
    # armed by start, stopped by cancel; a second init is -EBUSY
    "R(bpf_timer_init(&e->t, &timers, 1)); R(bpf_timer_init(&e->t, &timers, 1));"
    " R(bpf_timer_set_callback(&e->t, count)); R(bpf_timer_start(&e->t, 1000000000, 0)); R(bpf_timer_cancel(&e->t))",
    # nothing works before init; clock 5 is none of the three a timer may use
    "R(bpf_timer_set_callback(&e->t, count)); R(bpf_timer_start(&e->t, 1, 0)); R(bpf_timer_cancel(&e->t));"
    " R(bpf_timer_init(&e->t, &timers, 5))",
    # start needs the callback, and knows two flags only
    "R(bpf_timer_init(&e->t, &timers, 0)); R(bpf_timer_start(&e->t, 1, 0)); R(bpf_timer_set_callback(&e->t, count));"
    " R(bpf_timer_start(&e->t, 1, 4)); R(bpf_timer_start(&e->t, 1, 1))",
    "R(bpf_timer_init(&e->t, &timers, 7 | 16))",  # flags beyond the clock
    # a cancel also forgets the callback: the next start needs a new one
    "R(bpf_timer_init(&e->t, &timers, 7)); R(bpf_timer_set_callback(&e->t, count)); R(bpf_timer_cancel(&e->t));"
    " R(bpf_timer_start(&e->t, 5000000000ULL, 0)); R(bpf_timer_cancel(&e->t))",
    "R(bpf_timer_init(&e->t, &timers, 1)); R(bpf_timer_set_callback(&e->t, count));"
    " R(bpf_timer_start(&e->t, 5000000000ULL, 0)); R(bpf_timer_cancel(&e->t)); R(bpf_timer_cancel(&e->t))",
    # an update of the array element frees its timer: a start fails, a new init works
    "struct elem z = {}; R(bpf_timer_init(&e->t, &timers, 1)); R(bpf_timer_set_callback(&e->t, count));"
    " R(bpf_map_update_elem(&timers, &k, &z, 0)); R(bpf_timer_start(&e->t, 1, 0));"
    " R(bpf_timer_init(&e->t, &timers, 1))",
    # so does deleting a hash map's element (and an update of it)
    "struct elem z = {}, *h; bpf_map_update_elem(&htimers, &k, &z, 0); h = bpf_map_lookup_elem(&htimers, &k);"
    " if (!h) return 2; R(bpf_timer_init(&h->t, &htimers, 1)); R(bpf_map_delete_elem(&htimers, &k));"
    " bpf_map_update_elem(&htimers, &k, &z, 0); h = bpf_map_lookup_elem(&htimers, &k); if (!h) return 3;"
    " R(bpf_timer_init(&h->t, &htimers, 1)); bpf_map_update_elem(&htimers, &k, &z, BPF_EXIST);"
    " R(bpf_timer_init(&h->t, &htimers, 1)); R(bpf_timer_init(&h->t, &htimers, 1))",
]
REFUSED = [
    "bpf_timer_init(&e->t, &other, 1)",  # the timer of another map
    "bpf_timer_init((struct bpf_timer *)&e->n, &timers, 1)",  # not where the value's timer is
    "bpf_timer_init((struct bpf_timer *)p, &plain, 1)",  # a map without timers
    "bpf_timer_set_callback(&e->t, returns_one)",  # a timer's callback returns 0
]
# The program's own loads and stores may not touch the timer (any byte of it), as in the kernel.
DIRECT = [
    "out = *(long *)&e->t",
    "*(long *)&e->t = 0",
    "out = ((char *)&e->t)[15]",
    "*(int *)&e->pad = 0; ((char *)&e->t)[15] = 1",
]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    compile_c = c_builder(tmp_path_factory.mktemp("timers"), HEADER)
    return lambda body: compile_c(TEMPLATE % body)


@pytest.mark.parametrize("calls", CALLS)
def test_matches_the_kernel(build: Build, kernel: Kernel | None, calls: str) -> None:
    packet_run_everywhere(build(calls), UDP4, kernel)


def test_the_results(build: Build) -> None:
    def fields(calls: str, n: int) -> list[int]:
        retval, _ = packet_run_everywhere(build(calls), UDP4, None)
        return [retval >> (6 * (n - 1 - i)) & 63 for i in range(n)]

    assert fields(CALLS[0], 5) == [0, 48, 0, 0, 1]
    assert fields(CALLS[1], 4) == [42, 42, 42, 42]
    assert fields(CALLS[4], 5) == [0, 0, 0, 42, 0]
    assert fields(CALLS[5], 5) == [0, 0, 0, 1, 0]
    assert fields(CALLS[6], 5) == [0, 0, 0, 42, 0]
    assert fields(CALLS[7], 5) == [0, 0, 0, 0, 48]


@pytest.mark.parametrize("body", REFUSED)
def test_the_verifier_refuses(build: Build, kernel: Kernel | None, body: str) -> None:
    path = build(body)
    with pytest.raises(VerifierError):
        load_elf(path).programs["prog"].vm().check()
    if kernel is not None:
        assert isinstance(kernel.load(path, "prog", None), str)


@pytest.mark.parametrize("body", DIRECT)
def test_the_timer_is_no_data(build: Build, kernel: Kernel | None, body: str) -> None:
    path = build(body)
    message = "bpf_timer cannot be accessed directly by load/store"
    with pytest.raises(VerifierError, match=message):
        load_elf(path).programs["prog"].vm().check()
    if kernel is not None:
        why = kernel.load(path, "prog", None)
        assert isinstance(why, str) and message in why, why


def test_the_fields_beside_the_timer_are_data(build: Build, kernel: Kernel | None) -> None:
    assert packet_run_everywhere(build("e->pad = 3; e->n = 4; out = e->pad + e->n"), UDP4, kernel)[0] == 7


@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_a_timer_lives_across_runs_until_python_updates_its_element(build: Build, engine: str) -> None:
    prog = load_elf(build("R(bpf_timer_init(&e->t, &timers, 1))")).programs["prog"]
    vm = prog.vm()
    assert [vm.run_tc(UDP4, engine=engine)[0] for _ in range(2)] == [0, 48]  # -EBUSY: it is still there
    timers = prog.obj.maps["timers"]
    timers[0] = bytes(timers.value_size)  # as user space's update, which frees the element's timer
    assert vm.run_tc(UDP4, engine=engine)[0] == 0


# Timers that fire: the VM's clock moves only by advance_time(), and the callbacks of the timers
# whose time came run then, between runs, with the kernel's arguments (map, key, value).
FIRING = """
struct elem { int key; struct bpf_timer t; long n, period, cancel, when[4]; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2); __type(key, int); __type(value, struct elem); }
    timers SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 2); __type(key, int); __type(value, struct elem); }
    htimers SEC(".maps");
static int tick(void *map, int *key, struct elem *v) {
    unsigned long i = v->n++;
    if (i < 4)
        v->when[i] = bpf_ktime_get_ns();
    v->key = *key;
    v->cancel = bpf_timer_cancel(&v->t);  /* its own timer: -EDEADLK */
    if (v->period && v->n < 4)
        bpf_timer_start(&v->t, v->period, 0);
    return 0;
}
SEC("tc") int prog(struct __sk_buff *skb) {
    int k = %s;
    struct elem z = {}, *e;
    bpf_map_update_elem(&%s, &k, &z, BPF_NOEXIST);
    e = bpf_map_lookup_elem(&%s, &k);
    if (!e)
        return 1;
    e->period = %s;
    bpf_timer_init(&e->t, &%s, 1);
    bpf_timer_set_callback(&e->t, tick);
    return bpf_timer_start(&e->t, %s);
}
"""
ENGINES = ["interp", "jit"]
EDEADLK = 35


def firing(map_name: str = "timers", key: int = 1, period: int = 1000, start: str = "5000, 0") -> str:
    return FIRING % (key, map_name, map_name, period, map_name, start)


def _armed_vm(build_c: Build, body: str, engine: str) -> tuple[Any, Any, int]:
    """The object, a VM whose clock is frozen (advance_time(0)) and the time it stands at,
    after one run of ``body``'s prog that armed its timer."""
    obj = load_elf(build_c(body))
    vm = obj.programs["prog"].vm()
    assert vm.advance_time(0, engine=engine) == 0
    t0 = vm.clock.now()
    assert vm.run_tc(UDP4, engine=engine)[0] == 0
    return obj, vm, t0


def _elem(obj: Any, map_name: str, key: int) -> list[int]:
    """key, n, period, cancel, when[0..3] of the element (the timer's 16 bytes skipped)."""
    raw = obj.maps[map_name].raw_items()[key.to_bytes(4, "little")]
    return [int.from_bytes(raw[0:4], "little", signed=True)] + [
        int.from_bytes(raw[off:off + 8], "little", signed=True) for off in range(24, 24 + 8 * 7, 8)]


@pytest.fixture(scope="module")
def build_c(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("firing"), HEADER)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("map_name", "key"), [("timers", 1), ("htimers", 7)])
def test_a_periodic_timer_fires_when_its_time_comes(build_c: Build, engine: str, map_name: str, key: int) -> None:
    obj, vm, t0 = _armed_vm(build_c, firing(map_name, key), engine)
    assert vm.advance_time(4999, engine=engine) == 0  # not yet
    assert vm.advance_time(1, engine=engine) == 1
    assert vm.advance_time(10_000, engine=engine) == 3  # re-armed by its callback until n = 4
    assert _elem(obj, map_name, key) == [key, 4, 1000, -EDEADLK, t0 + 5000, t0 + 6000, t0 + 7000, t0 + 8000]
    assert vm.clock.now() == t0 + 15_000
    assert vm.advance_time(10**9, engine=engine) == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_an_absolute_timer_fires_at_its_time(build_c: Build, engine: str) -> None:
    absolute = "bpf_ktime_get_ns() + 3000, 1 /* BPF_F_TIMER_ABS */"
    obj, vm, t0 = _armed_vm(build_c, firing(period=0, start=absolute), engine)
    assert vm.advance_time(2999, engine=engine) == 0
    assert vm.advance_time(5, engine=engine) == 1
    assert _elem(obj, "timers", 1)[1:5] == [1, 0, -EDEADLK, t0 + 3000]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_timer_freed_with_its_element_never_fires(build_c: Build, engine: str) -> None:
    obj, vm, _ = _armed_vm(build_c, firing(), engine)
    obj.maps["timers"][1] = bytes(obj.maps["timers"].value_size)  # user space's update frees the timer
    assert vm.advance_time(10**6, engine=engine) == 0
    assert _elem(obj, "timers", 1)[1] == 0


def test_both_engines_fire_alike(build_c: Build) -> None:
    def history(engine: str) -> list[list[int]]:
        obj, vm, t0 = _armed_vm(build_c, firing(period=700), engine)
        seen = []
        for step in (100, 5000, 650, 2000, 1):
            vm.advance_time(step, engine=engine)
            elem = _elem(obj, "timers", 1)
            seen.append(elem[:4] + [w - t0 if w else 0 for w in elem[4:]])
        return seen

    assert history("interp") == history("jit")


def test_a_timer_started_again_at_once_is_stopped(build_c: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timers_module, "MAX_FIRINGS", 5)
    body = firing(period=0).replace("if (v->period && v->n < 4)", "if (1)")
    _obj, vm, _ = _armed_vm(build_c, body, "interp")
    with pytest.raises(ExecutionError, match="fired 5 times"):
        vm.advance_time(10**4)


def test_advance_time_refuses(build_c: Build) -> None:
    obj, vm, _ = _armed_vm(build_c, firing(), "interp")
    with pytest.raises(ExecutionError, match="forward only"):
        vm.advance_time(-1)
    with pytest.raises(ValueError, match="engine"):
        vm.advance_time(1, engine="kernel")
    with pytest.raises(ExecutionError, match="standard helpers"):
        jitbpf.VM(jitbpf.assemble("mov r0, 0\nexit")).advance_time(1)
    assert vm.advance_time(5000) == 1  # the refusals moved no time: the timer fires now
    assert _elem(obj, "timers", 1)[1] == 1


@pytest.mark.parametrize(("map_name", "key"), [("timers", 1), ("htimers", 7)])
def test_the_kernel_fires_the_same_callbacks(build_c: Build, kernel: Kernel | None, map_name: str, key: int) -> None:
    """The kernel's timers fire on its own clock: after a pause long enough for the four
    firings, its element is what advance_time leaves here (but for the times, which only keep
    the period apart)."""
    if kernel is None:
        pytest.skip("the kernel's BPF syscall is not available (root is needed)")
    path = build_c(firing(map_name, key))
    loaded = kernel.load(path, "prog", None)
    assert not isinstance(loaded, str), loaded
    try:
        ran = loaded.run(UDP4)
        assert ran is not None and ran.retval == 0
        raw = b""
        for _ in range(100):  # the timers fire within microseconds; wait up to 5 s for a busy machine
            raw = loaded.maps()[map_name][key.to_bytes(4, "little")]
            if int.from_bytes(raw[24:32], "little") == 4:
                break
            time.sleep(0.05)
    finally:
        loaded.close()
    theirs = [int.from_bytes(raw[0:4], "little", signed=True)] + [
        int.from_bytes(raw[off:off + 8], "little", signed=True) for off in range(24, 80, 8)]
    obj, vm, _ = _armed_vm(build_c, firing(map_name, key), "jit")
    vm.advance_time(10**6, engine="jit")
    ours = _elem(obj, map_name, key)
    assert theirs[:4] == ours[:4] == [key, 4, 1000, -EDEADLK]
    assert all(later - earlier >= 1000 for earlier, later in itertools.pairwise(theirs[4:]))
