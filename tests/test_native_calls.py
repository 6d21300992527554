"""The native call paths give exactly what the Python ones give: Python helpers that JIT code
calls through the native library (results converted as the interpreter converts them, failures
raised as it raises them), and program-type runs entered from Python in one native call."""

from __future__ import annotations

import array
import enum
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from jitbpf import ProgType
from jitbpf.asm import assemble
from jitbpf.contract import HelperExit
from jitbpf.errors import BpfError, ExecutionError
from jitbpf.isa import MASK64
from jitbpf.linux import pktrun
from jitbpf.vm import VM

HELPER_ID = 77
CALL_SOURCE = f"mov r1, 3\nmov r2, -1\ncall {HELPER_ID}\nexit"  # r0 = the helper's result (pc 2)


class Colour(enum.IntEnum):
    """An int subclass as a result."""

    RED = 5  # any value


class Indexable:
    """A result that is a number only through __index__."""

    def __index__(self) -> int:
        return 9


def _raise(exc: BaseException) -> Callable[..., int]:
    def helper(*_args: int) -> int:
        raise exc
    return helper


# (case, helper, r0 or the exception type both engines end with)
HELPER_CASES: list[tuple[str, Callable[..., Any], int | type[BaseException]]] = [
    ("arguments", lambda a, b, c, d, e: a * 10 + (b == MASK64) + c + d + e, 31),
    ("negative", lambda *_: -1, MASK64),
    ("wider than 64 bits", lambda *_: 2**70 + 5, 5),
    ("bool", lambda *_: True, 1),
    ("int subclass", lambda *_: Colour.RED, 5),
    ("float", lambda *_: 3.9, 3),
    ("numeric string", lambda *_: "12", 12),
    ("__index__ only", lambda *_: Indexable(), 9),
    ("no number", lambda *_: None, ExecutionError),
    ("raises", _raise(ValueError("bad")), ExecutionError),
    ("HelperExit", _raise(HelperExit(7)), 7),
    ("KeyboardInterrupt", _raise(KeyboardInterrupt()), KeyboardInterrupt),
]


def _outcome(run: Callable[[], object]) -> tuple[Any, ...]:
    try:
        return ("r0", run())
    except BaseException as exc:  # KeyboardInterrupt included: it must come out as it went in
        return (type(exc), str(exc), getattr(exc, "pc", None))


@pytest.mark.parametrize(("fn", "expected"), [(fn, want) for _case, fn, want in HELPER_CASES],
                         ids=[case for case, _fn, _want in HELPER_CASES])
def test_python_helper_results_and_failures_match_the_interpreter(fn: Callable[..., Any],
                                                                  expected: int | type[BaseException]) -> None:
    with VM(assemble(CALL_SOURCE), verify=False) as vm:
        vm.register_helper(HELPER_ID, fn, name="h")
        interp, jit = _outcome(vm.execute), _outcome(vm.execute_jit)
        assert jit == interp
        if isinstance(expected, int):
            assert jit == ("r0", expected)
        else:
            assert jit[0] is expected
            if expected is ExecutionError:
                assert jit[2] == 2 and "helper h" in jit[1]


def test_a_helper_gone_from_the_vm_fails_at_its_pc() -> None:
    """(Running refuses a call to an id never registered before it gets that far.)"""
    with VM(assemble(CALL_SOURCE), verify=False) as vm:
        vm.register_helper(HELPER_ID, lambda *_: 1, name="h")
        vm.jit_compile()
        del vm.helpers[HELPER_ID]
        outcomes = [_outcome(vm.execute), _outcome(vm.execute_jit)]
    assert outcomes[0] == outcomes[1] == (ExecutionError, f"call to unknown helper {HELPER_ID} at PC 2", 2)


def test_a_helper_registered_after_compiling_is_called() -> None:
    with VM(assemble(CALL_SOURCE), verify=False) as vm:
        vm.register_helper(HELPER_ID, lambda *_: 1, name="first")
        assert vm.execute_jit() == 1
        vm.register_helper(HELPER_ID, lambda *_: 2, name="second")
        assert vm.execute_jit() == vm.execute() == 2


def test_a_helper_may_run_another_program() -> None:
    """The inner run has its own helpers; the outer run's are back when it returns."""
    with VM(assemble(CALL_SOURCE), verify=False) as inner, VM(assemble(
            f"call {HELPER_ID}\nmov r6, r0\ncall {HELPER_ID}\nadd r0, r6\nexit"), verify=False) as outer:
        inner.register_helper(HELPER_ID, lambda a, *_: a * 100, name="inner")
        outer.register_helper(HELPER_ID, lambda *_: inner.execute_jit() + 1, name="outer")
        assert outer.execute_jit() == outer.execute() == 602


# -- program-type runs entered from Python in one native call ---------------------------------

MARK_SOURCE = """
    ldxw r2, [r1+0]         ; data
    ldxw r3, [r1+4]         ; data_end
    mov r4, r2
    add r4, 1
    jgt r4, r3, short
    ldxw r5, [r1+12]        ; ingress_ifindex
    stxb [r2], r5
    mov r0, {verdict}
    exit
short:
    mov r0, 1
    exit
"""  # XDP: the first byte becomes the ingress ifindex; r0 = verdict (XDP_DROP if empty)


def _xdp(verdict: int = 2) -> VM:
    return VM(assemble(MARK_SOURCE.format(verdict=verdict)), prog_type=ProgType.XDP)


@pytest.mark.parametrize("packet", [b"", b"\x00" * 60, b"\x07" * 1500, bytearray(b"\x01" * 64),
                                    memoryview(b"\x02" * 64)], ids=["empty", "60", "1500", "bytearray", "memoryview"])
def test_xdp_runs_match_the_interpreter(packet: bytes | bytearray | memoryview) -> None:
    with _xdp() as vm:
        for ifindex in (1, 9):
            jit = vm.run_xdp(packet, engine="jit", ingress_ifindex=ifindex)
            assert jit == vm.run_xdp(packet, engine="interp", ingress_ifindex=ifindex)
            assert type(jit[1]) is bytes
            assert jit[1] == (bytes([ifindex]) + bytes(packet)[1:] if len(packet) else b"")


def test_an_unchanged_packet_comes_back_as_itself() -> None:
    packet = b"\x01" * 64
    with _xdp() as vm:
        assert vm.run_xdp(packet, engine="jit")[1] is packet
        assert vm.run_xdp(packet, engine="jit", ingress_ifindex=2)[1] is not packet


def test_many_programs_on_one_thread_keep_their_own_frames() -> None:
    """More programs than the native table has entries per thread, run in turn: each run must
    find its own program's frame (a taken entry is bound again, never used for another)."""
    vms = [_xdp(verdict) for verdict in (2, 3) * 50]
    try:
        for _ in range(2):
            for i, vm in enumerate(vms):
                assert int(vm.run_xdp(b"\x00" * 32, engine="jit")[0]) == (2, 3)[i % 2]
            for i, vm in enumerate(vms):
                assert list(vm.run_batch([b"\x00" * 32] * 3, engine="jit").results) == [(2, 3)[i % 2]] * 3
    finally:
        for vm in vms:
            vm.close()


def test_a_packet_larger_than_the_arena_gets_a_larger_one() -> None:
    with _xdp() as vm:
        small = vm.run_xdp(b"\x00" * 64, engine="jit")
        large = vm.run_xdp(b"\x00" * 300_000, engine="jit")
        assert (small[1][0], len(large[1]), large[1][0]) == (1, 300_000, 1)
        assert vm.run_xdp(b"\x05" * 64, engine="jit")[1] == b"\x01" + b"\x05" * 63


def test_a_helper_registered_between_runs_is_called() -> None:
    """Registering a helper redoes the native bindings: the next run sees it (here a Python
    bpf_get_prandom_u32 in place of the native one, then another)."""
    with VM(assemble("call 7\nexit"), prog_type=ProgType.XDP) as vm:
        assert vm.run_xdp(b"\x00" * 16, engine="jit")[1] == b"\x00" * 16
        for verdict in (2, 3):
            vm.register_helper(7, lambda *_, v=verdict: v, name="get_prandom_u32")
            assert int(vm.run_xdp(b"\x00" * 16, engine="jit")[0]) == verdict


def test_a_closed_vm_does_not_run() -> None:
    vm = _xdp()
    vm.run_xdp(b"\x00" * 16, engine="jit")
    vm.close()
    with pytest.raises(BpfError, match="closed"):
        vm.run_xdp(b"\x00" * 16, engine="jit")


def test_threads_run_one_program_at_once() -> None:
    import threading

    results: dict[int, set[bytes]] = {}
    with _xdp() as vm:
        def work(ifindex: int) -> None:
            results[ifindex] = {vm.run_xdp(bytes(64), engine="jit", ingress_ifindex=ifindex)[1][:1]
                                for _ in range(300)}

        threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {i: {bytes([i])} for i in range(1, 5)}


LOOP_SOURCE = """
    mov r0, 0
loop:
    add r0, 1
    jlt r0, 2000, loop
    mov r0, 2
    exit
"""  # XDP_PASS after a loop: its runs hand the GIL over


def test_runs_that_hand_the_gil_over_survive_bindings_redone_meanwhile() -> None:
    import threading

    stop = threading.Event()
    verdicts: list[int] = []
    failures: list[BaseException] = []
    with VM(assemble(LOOP_SOURCE), prog_type=ProgType.XDP, allow_loops=True) as vm:
        def work() -> None:
            try:
                while not stop.is_set():
                    verdicts.append(int(vm.run_xdp(bytes(64), engine="jit")[0]))
            except BaseException as exc:  # (a thread's exception would only be a warning)
                failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for i in range(200):  # each registration drops every thread's binding
            vm.register_helper(100 + i % 3, lambda *_: 0, name="unused")
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    assert verdicts and set(verdicts) == {2}


LONG_LOOP_SOURCE = LOOP_SOURCE.replace("2000", "200000")  # about 0.1 ms a run


@pytest.mark.parametrize("path", ["bare", "bare_mem", "bare_records", "xdp", "xdp_batch", "xdp_packed"])
def test_closing_a_vm_waits_for_the_runs_of_other_threads(path: str) -> None:
    """Single runs from Python skip the VM's bookkeeping (one native call each): closing the VM
    from another thread while they run must wait for them, not unmap the code under them, and
    every run after that fails with the closed VM's error."""
    import threading

    from jitbpf.linux.pktrun import Batch

    vm = VM(assemble(LONG_LOOP_SOURCE), prog_type=ProgType.XDP if path.startswith("xdp") else None, verify=False,
            budget=10**7)
    packed = Batch.of([bytes(64)] * 2)
    run: Callable[[], int] = {
        "bare": lambda: vm.execute_jit(),
        "bare_mem": lambda: vm.execute_jit(bytearray(8)),
        "bare_records": lambda: int(vm.execute_records(bytearray(16), 8)[-1]),
        "xdp": lambda: int(vm.run_xdp(bytes(64), engine="jit")[0]),
        "xdp_batch": lambda: int(vm.run_batch([bytes(64)] * 2).results[-1]),  # packets where they are
        "xdp_packed": lambda: int(vm.run_batch(packed).results[-1]),  # packed back to back
    }[path]
    assert run() == 2  # bound on this thread, and on each worker by its first run
    outcomes: list[str] = []
    started = threading.Barrier(4)

    def work() -> None:
        started.wait()
        try:
            while True:
                assert run() == 2
        except BpfError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait()
    for _ in range(20):  # let the workers' runs get going
        if vm.closed:
            break
        run()
    vm.close()
    for t in threads:
        t.join()
    assert len(outcomes) == 3 and all("closed" in o for o in outcomes), outcomes
    with pytest.raises(BpfError, match="closed"):
        run()


@pytest.mark.parametrize("path", ["run", "run_mem", "batch", "records", "regions", "direct"])
def test_closing_a_program_waits_for_every_way_into_its_code(path: str) -> None:
    """Every way a JitProgram's own methods enter its code (single runs with and without memory,
    both batch loops, explicit regions, and direct calls where the native library is missing)
    is waited for by a close() on another thread, and fails cleanly after it."""
    import threading
    import time

    from jitbpf.memory import region_of

    vm = VM(assemble(LONG_LOOP_SOURCE), verify=False, budget=10**7)
    vm.jit_compile()
    jit = vm._jit
    assert jit is not None
    if path == "direct":  # as without the native library: plain cffi calls of the entries
        jit._native_args = jit._native_entry = None
    stack_mem, _pin = region_of(bytearray(), "mem")
    run: Callable[[], Any] = {
        "run": jit.run,
        "run_mem": lambda: jit.run(bytearray(8)),
        "batch": lambda: jit.run_batch([bytearray(8)] * 3),
        "records": lambda: jit.run_records(bytearray(24), 8),
        "regions": lambda: jit.run_regions(stack_mem, (), 0, 0),
        "direct": jit.run,
    }[path]
    outcomes: list[str] = []

    def work() -> None:
        try:
            while True:
                run()
        except BpfError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.002)  # the workers are inside, or on their way in
    vm.close()
    for t in threads:
        t.join()
    assert len(outcomes) == 3 and all("closed" in o for o in outcomes), outcomes


SPIN_SOURCE = """
    ldxw r2, [r1+0]
    ldxw r3, [r1+4]
    mov r4, r2
    add r4, 1
    jgt r4, r3, out
    ldxb r5, [r2]           ; iterations: 10 times the first byte
    mul r5, 10
    mov r0, 0
loop:
    jge r0, r5, out
    add r0, 1
    ja loop
out:
    mov r0, 2
    exit
"""  # XDP_PASS after a loop the packet sets: a first byte of 255 exhausts a budget of 1000

BATCH_PACKETS = [b"\x01" * 64, b"\x02" * 1500, b"", b"\x03" * 14]


@pytest.mark.parametrize("kind", ["list of bytes", "tuple of bytes", "mixed buffers", "Batch"])
@pytest.mark.parametrize("threads", [1, 3])
def test_xdp_batches_match_single_runs(kind: str, threads: int) -> None:
    from jitbpf.linux.pktrun import Batch

    packets: Any = {
        "list of bytes": BATCH_PACKETS * 5,
        "tuple of bytes": tuple(BATCH_PACKETS * 5),
        "mixed buffers": [bytearray(p) if i % 2 else p for i, p in enumerate(BATCH_PACKETS * 5)],
        "Batch": Batch.of(BATCH_PACKETS * 5),
    }[kind]
    with _xdp(3) as vm:
        expected = [int(vm.run_xdp(p, engine="interp", ingress_ifindex=4)[0]) for p in BATCH_PACKETS * 5]
        outcome = vm.run_batch(packets, engine="jit", threads=threads, ingress_ifindex=4)
        assert list(outcome.results) == expected
        kept = vm.run_batch(packets, engine="jit", threads=threads, keep_packets=True, ingress_ifindex=4)
        assert kept.packets == [vm.run_xdp(p, engine="jit", ingress_ifindex=4)[1] for p in BATCH_PACKETS * 5]


def test_a_failing_packet_of_a_batch_names_its_index() -> None:
    packets = [b"\x01" * 20] * 7 + [b"\xff" * 20] + [b"\x01" * 20] * 3
    with VM(assemble(SPIN_SOURCE), prog_type=ProgType.XDP, verify=False, budget=1000) as vm:
        assert list(vm.run_batch(packets[:7], engine="jit").results) == [2] * 7
        with pytest.raises(ExecutionError) as info:
            vm.run_batch(packets, engine="jit")
    assert "in packet 7 of the batch" in (info.value.__notes__ or [])


HEADROOM_LEFT = """
    mov r6, r1
    mov r2, -8
    call 44                 ; bpf_xdp_adjust_head: the packet now starts in the headroom
    jne r0, 0, fail
    ldxw r2, [r6+0]
    ldxw r3, [r6+4]
    mov r4, r2
    add r4, 8
    jgt r4, r3, fail
    ldxdw r0, [r2]          ; zero when the run starts afresh
    mov r5, -1
    stxdw [r2], r5          ; what the next run must not see
    exit
fail:
    mov r0, 99
    exit
"""


def test_every_packet_of_a_batch_starts_afresh() -> None:
    packets = [bytes([i]) * (20 + i) for i in range(12)]
    with VM(assemble(HEADROOM_LEFT), prog_type=ProgType.XDP) as vm:
        vm.use_standard_helpers()
        expected = [int(vm.run_xdp(p, engine="interp")[0]) for p in packets]
        assert expected == [0] * len(packets)
        for kind in (packets, pktrun.Batch.of(packets)):
            assert list(vm.run_batch(kind, engine="jit").results) == expected
        kept = vm.run_batch(packets, engine="jit", keep_packets=True)
        assert kept.packets == [b"\xff" * 8 + p for p in packets]
        assert vm.run_xdp(packets[0], engine="jit") == (0, b"\xff" * 8 + packets[0])


@pytest.mark.parametrize("engine", ["interp", "jit"])
@pytest.mark.parametrize(("offsets", "lens", "message"), [
    ([0], [60000], "packet 0 of the batch \\(60000 bytes at offset 0\\) is not within its 64-byte buffer"),
    ([0, 1 << 40], [8, 8], "packet 1 .* at offset 1099511627776"),
    ([0, 2**64 - 8], [8, 16], "packet 1 "),  # (no wrap-around in the sum)
    ([0, 8], [8], "a batch of 2 offsets has 1 lengths"),
])
def test_a_batch_whose_packets_lie_outside_its_buffer_is_refused(engine: str, offsets: list[int], lens: list[int],
                                                                  message: str) -> None:
    """A caller's Batch is checked before any run: the native loop copied each packet from
    where the batch said (host memory past the buffer, or a crash)."""
    with _xdp() as vm:
        for make in (list, lambda v: array.array("Q", v)):
            batch = pktrun.Batch(bytes(64), make(offsets), make(lens))
            with pytest.raises(ValueError, match=message):
                vm.run_batch(batch, engine=engine, keep_packets=True)


@pytest.mark.parametrize("packets", [[], ()], ids=["list", "tuple"])
def test_an_empty_batch_runs_nothing(packets: list[bytes] | tuple[bytes, ...]) -> None:
    with _xdp() as vm:
        assert list(vm.run_batch(packets, engine="jit").results) == []


def test_a_single_run_that_fails_raises_the_interpreters_error() -> None:
    with VM(assemble(SPIN_SOURCE), prog_type=ProgType.XDP, verify=False, budget=1000) as vm:
        assert int(vm.run_xdp(b"\x01" * 20, engine="jit")[0]) == 2
        errors = [_outcome(partial(vm.run_xdp, b"\xff" * 20, engine=engine)) for engine in ("interp", "jit")]
        assert int(vm.run_xdp(b"\x01" * 20, engine="jit")[0]) == 2  # and the next run is fine
    assert errors[0] == errors[1] and errors[0][0].__name__ == "BudgetExceeded"


def test_a_program_may_return_what_stopped_runs_return() -> None:
    """r0 equal to the JIT's early-stop value, from a run that did not stop, is just r0."""
    from jitbpf.jit.runtime import ERROR_RESULT
    with VM(assemble(f"lddw r0, {ERROR_RESULT:#x}\nexit"), prog_type=ProgType.XDP) as vm:
        assert vm.run_context(packet=b"\x00" * 20, engine="jit").retval == ERROR_RESULT
        assert vm.run_xdp(b"\x00" * 20, engine="jit") == vm.run_xdp(b"\x00" * 20) == (ERROR_RESULT & 0xFFFF_FFFF,
                                                                                        b"\x00" * 20)


def test_runs_survive_maps_added_meanwhile() -> None:
    """Each run reads the VM's maps (their regions): maps added on another thread meanwhile must
    not make a run fail."""
    import threading

    from jitbpf.linux.maps import Array

    stop = threading.Event()
    verdicts: list[int] = []
    failures: list[BaseException] = []
    added: list[Array] = []
    with VM(assemble(LOOP_SOURCE), prog_type=ProgType.XDP, allow_loops=True) as vm:
        def work(engine: str) -> None:
            try:
                while not stop.is_set():
                    verdicts.append(int(vm.run_xdp(bytes(64), engine=engine)[0]))
            except BaseException as exc:  # (a thread's exception would only be a warning)
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(engine,)) for engine in ("jit", "interp")]
        for t in threads:
            t.start()
        for i in range(300):
            added.append(Array(value_size=8, max_entries=64, name=f"m{i}"))
            vm.add_map(added[-1])
        stop.set()
        for t in threads:
            t.join()
    for m in added:
        m.close()
    assert not failures
    assert verdicts and set(verdicts) == {2}
