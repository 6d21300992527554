"""Runs that cost one native call: execute_jit() without memory (bound per thread), and batches
over many inputs (execute_batch, execute_records), single- and multi-threaded."""

from __future__ import annotations

import array
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import BudgetExceeded, ExecutionError
from jitbpf.jit.runtime import ERROR_RESULT
from jitbpf.linux.maps import PerCpuArray, num_cpus
from jitbpf.vm import VM

SUM_FIRST_BYTES = """
    mov r0, 0
    jlt r2, 2, out
    ldxb r0, [r1]
    ldxb r3, [r1+1]
    add r0, r3
out:
    exit
"""
MARK = """
    stb [r1], 0x5a          ; every input is written: the caller must see it
    mov r0, r2
    exit
"""
READ_EIGHT = """
    ldxdw r0, [r1]          ; faults on inputs shorter than 8 bytes
    exit
"""


def inputs() -> list[bytearray]:
    return [bytearray([i, 2 * i, 7]) if i % 3 else bytearray([i]) for i in range(40)]


def test_results_are_a_compact_array() -> None:
    with VM(assemble(SUM_FIRST_BYTES)) as vm:
        out = vm.execute_records(bytearray(range(16)), 4)
        assert out.typecode == "Q" and out.itemsize == 8
        assert memoryview(out).tolist() == [1, 9, 17, 25]


def test_batch_matches_one_run_per_input() -> None:
    with VM(assemble(SUM_FIRST_BYTES)) as vm:
        expected = [vm.execute(b) for b in inputs()]
        assert list(vm.execute_batch(inputs())) == expected
        assert list(vm.execute_batch([])) == []
        assert list(vm.execute_batch([bytes(b) for b in inputs()])) == expected  # read-only: copied


def test_batch_writes_reach_the_callers_buffers() -> None:
    with VM(assemble(MARK)) as vm:
        bufs = inputs()
        assert list(vm.execute_batch(bufs)) == [len(b) for b in inputs()]
        assert all(b[0] == 0x5A and b[1:] == orig[1:] for b, orig in zip(bufs, inputs(), strict=True))


def test_records_run_in_place() -> None:
    data = bytearray(range(64)) * 4
    with VM(assemble(MARK)) as vm:
        assert list(vm.execute_records(data, 16)) == [16] * 16
    assert data[::16] == bytes([0x5A]) * 16
    with VM(assemble(SUM_FIRST_BYTES)) as vm:
        records = bytearray(range(100))
        assert list(vm.execute_records(records, 10)) == [records[i] + records[i + 1] for i in range(0, 100, 10)]
        assert list(vm.execute_records(records, 33)) == [0 + 1, 33 + 34, 66 + 67]  # the last byte is no record
        with pytest.raises(TypeError):
            vm.execute_records(bytes(10), 5)
        with pytest.raises(ValueError):
            vm.execute_records(records, 0)


def test_failing_input_raises_with_its_index() -> None:
    bufs = [bytearray(8), bytearray(8), bytearray(3), bytearray(8)]
    with VM(assemble(READ_EIGHT), verify=False) as vm:
        with pytest.raises(ExecutionError) as err:
            vm.execute_batch(bufs)
        assert err.value.pc == 0
        assert "in input 2 of the batch" in (err.value.__notes__ or [])
        with pytest.raises(ExecutionError) as err:
            vm.execute_records(bytearray(20), 5)
        assert "in input 0 of the batch" in (err.value.__notes__ or [])


# Each input of a batch is a run of its own: what one run leaves (stack bytes, budget spent,
# ring buffer reservations, a stopped run's error state) is not seen by the next.
STACK_LEFT = """
    ldxdw r0, [r10-8]       ; unverified: reads what the stack holds when the run starts
    stxdw [r10-8], r2       ; and leaves its input's length there
    exit
"""
LOOP_FIRST_BYTE = """
    ldxb r3, [r1]
    mov r0, 0
again:
    jeq r3, 0, out
    add r0, 1
    sub r3, 1
    ja again
out:
    exit
"""
RESERVE_SUBMIT = """
    lddw r1, map:RB
    mov r2, 8
    mov r3, 0
    call 131                ; bpf_ringbuf_reserve
    jeq r0, 0, out
    mov r1, r0
    mov r2, 0
    call 132                ; bpf_ringbuf_submit: a run out of budget before it leaves the record reserved
out:
    mov r0, 0
    exit
"""


def test_every_input_starts_with_a_fresh_stack() -> None:
    with VM(assemble(STACK_LEFT), verify=False) as vm:
        assert list(vm.execute_records(bytearray(64), 8)) == [0] * 8
        assert list(vm.execute_batch([bytearray(n) for n in range(1, 6)])) == [0] * 5


def test_every_input_has_the_whole_budget() -> None:
    with VM(assemble(LOOP_FIRST_BYTE), budget=200, verify=False) as vm:
        assert list(vm.execute_records(bytearray([40, 0, 0, 0]) * 10, 4)) == [40] * 10
        with pytest.raises(BudgetExceeded) as err:
            vm.execute_records(bytearray([40, 0, 90, 0, 40, 0]), 2)
        assert "in input 1 of the batch" in (err.value.__notes__ or [])
        # The run that stopped leaves nothing behind for the next batch, nor for its next input.
        assert list(vm.execute_batch([bytearray([n]) for n in (40, 3, 0)])) == [40, 3, 0]
        assert list(vm.execute_records(bytearray([40, 1]), 1)) == [40, 1]


def test_later_batches_of_records_take_one_native_call() -> None:
    """After a thread's first batch its binding runs the next ones in one call: the same results,
    in place in any writable buffer, a program's own return of the error value being no error; a
    record that stops early raises with its index; other buffers still get the ordinary path's
    errors; and a program with a Python helper never binds (its runs need Python)."""
    import array

    with VM(assemble(LOOP_FIRST_BYTE), budget=200, verify=False) as vm:
        assert list(vm.execute_records(bytearray([3, 0]), 1)) == [3, 0]
        assert vm._bare_records is not None  # bound by that batch
        assert list(vm.execute_records(array.array("B", [5, 9, 0, 2]), 2)) == [5, 0]
        with pytest.raises(BudgetExceeded) as err:
            vm.execute_records(bytearray([1, 2, 90, 4, 5]), 1)
        assert "in input 2 of the batch" in (err.value.__notes__ or [])
        with pytest.raises(TypeError, match="writable"):
            vm.execute_records(bytes(4), 2)
        assert list(vm.execute_records(bytearray(range(6)), 1)) == list(range(6))
    with VM(assemble(f"ldxb r2, [r1]\nmov r0, 7\njne r2, 1, +2\nlddw r0, {ERROR_RESULT:#x}\nexit")) as vm:
        for _ in range(2):  # the ordinary path, then the bound one
            assert list(vm.execute_records(bytearray([0, 1, 0, 1]), 1)) == [7, ERROR_RESULT, 7, ERROR_RESULT]
    with VM(assemble("mov r6, r1\nldxb r1, [r6]\ncall 7\nldxb r0, [r6+1]\nexit")) as vm:
        vm.register_helper(7, lambda r1, *_: 0)  # a Python helper: no native batches
        assert list(vm.execute_records(bytearray([1, 2, 3, 4]), 2)) == [2, 4]
        assert vm._bare_records is None


def test_reservations_a_stopped_run_leaves_are_dropped() -> None:
    from jitbpf.jit.program import runner_lib
    from jitbpf.linux.maps import RingBuf

    nat = runner_lib()
    assert nat is not None
    rb = RingBuf(max_entries=4096, name="RB")
    for budget, failing in ((6, True), (100, False)):
        with VM(assemble(RESERVE_SUBMIT, maps={"RB": 1}), budget=budget) as vm:
            vm.add_map(rb, 1)
            vm.use_standard_helpers()
            vm.jit_compile()
            assert vm._jit is not None and vm._jit.batchable
            if failing:
                with pytest.raises(BudgetExceeded):
                    vm.execute_records(bytearray(16), 8)
                assert rb.read_events() == []
            else:
                assert list(vm.execute_records(bytearray(200 * 8), 8)) == [0] * 200
                assert len(rb.read_events()) == 200
            assert nat.lib.jb_ringbuf_pending() == 0


RESERVE_LEAVE = """
    lddw r1, map:RB
    mov r2, 8
    mov r3, 0
    call 131                ; bpf_ringbuf_reserve, never submitted (unverified: left to the runner)
    mov r0, 1
    exit
"""


def test_reservations_a_finished_run_leaves_are_dropped() -> None:
    """Each input's run ends with its records discarded, in records (one size) and in inputs of
    their own lengths alike: none reaches the reader, none holds the ring for the next input."""
    from jitbpf.jit.program import runner_lib
    from jitbpf.linux.maps import RingBuf

    nat = runner_lib()
    assert nat is not None
    rb = RingBuf(max_entries=4096, name="RB")
    with VM(assemble(RESERVE_LEAVE, maps={"RB": 1}), verify=False) as vm:
        vm.add_map(rb, 1)
        vm.use_standard_helpers()
        for _ in range(2):  # the ordinary path, then the bound one
            assert list(vm.execute_records(bytearray(4096 * 8), 8)) == [1] * 4096
            assert list(vm.execute_batch([bytearray(n) for n in range(1, 1000)])) == [1] * 999
        assert rb.read_events() == []
        assert nat.lib.jb_ringbuf_pending() == 0


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_threads_split_the_batch(threads: int) -> None:
    with VM(assemble(SUM_FIRST_BYTES)) as vm:
        expected = [vm.execute(b) for b in inputs()]
        assert list(vm.execute_batch(inputs(), threads=threads)) == expected
        data = bytearray(range(250))
        assert list(vm.execute_records(data, 5, threads=threads)) == list(vm.execute_records(bytearray(range(250)), 5))
        with pytest.raises(ValueError):
            vm.execute_batch(inputs(), threads=0)


class _Overlong(bytearray):
    """A buffer whose len() claims more than its buffer holds."""

    def __len__(self) -> int:
        return 1 << 20


def test_inputs_are_sized_by_their_bytes() -> None:
    """r2 is an input's size in bytes, as execute_jit gives it: len() of an array counts items,
    and a subclass may say anything (an overlong one let the program past the packed copy)."""
    with VM(assemble("mov r0, r2\nexit")) as vm:
        words = array.array("Q", [1, 2])
        assert list(vm.execute_batch([words, _Overlong(16), bytearray(3)])) == [16, 16, 3]
        assert vm.execute_jit(words) == 16
    with VM(assemble("mov r3, r1\nadd r3, 200000\nldxdw r0, [r3]\nexit"), verify=False) as vm, \
            pytest.raises(ExecutionError, match="in no region"):
        vm.execute_batch([_Overlong(16)])
    with VM(assemble("stdw [r1], 7\nmov r0, 0\nexit"), verify=False) as vm:
        words = array.array("Q", [1, 2])
        vm.execute_batch([words, bytearray(8)])
        assert list(words) == [7, 2]  # written back through its bytes


def test_split_batches_run_on_the_same_threads_each_time() -> None:
    """The threads a split batch runs on are the VM's own, kept between batches (each made its
    binding once); close() lets them go."""
    from jitbpf.linux.pktrun import Workers

    seen: set[int] = set()
    workers = Workers()

    def record(lo: int, hi: int) -> array.array[int]:
        seen.add(threading.get_ident())
        return array.array("Q", range(lo, hi))

    for _ in range(5):
        assert list(workers.split(10, 2, record)) == list(range(10))
    assert len(seen) == 2 and threading.get_ident() not in seen
    # A slice that splits on the same workers does not wait for itself.
    assert list(workers.split(4, 2, lambda lo, hi: workers.split(hi - lo, 2, record))) == [0, 1, 0, 1]
    workers.close()
    with VM(assemble(SUM_FIRST_BYTES)) as vm:
        for _ in range(3):
            vm.execute_batch(inputs(), threads=2)
        names = {t.name for t in threading.enumerate()}
        assert any(n.startswith("jitbpf-batch") for n in names)
    deadline = time.monotonic() + 10
    while any(t.name.startswith("jitbpf-batch") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("jitbpf-batch") for t in threading.enumerate())


FORKED_SPLIT = """
import os
from jitbpf import VM
from jitbpf.asm import assemble
vm = VM(assemble("ldxb r0, [r1]\\nexit"))
inputs = [bytearray([i]) for i in range(8)]
print(list(vm.execute_batch(inputs, threads=2)), flush=True)
pid = os.fork()
if pid == 0:  # the parent's workers do not exist here
    print("child", list(vm.execute_batch(inputs, threads=2)), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent", list(vm.execute_batch(inputs, threads=2)), flush=True)
"""


def test_a_forked_child_splits_batches_on_its_own_threads() -> None:
    proc = subprocess.run([sys.executable, "-c", FORKED_SPLIT], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    run = list(range(8))
    assert proc.stdout.splitlines() == [str(run), f"child {run}", f"parent {run}"]


PERCPU_COUNT = """
    mov r1, 0
    stxw [r10-4], r1
    mov r2, r10
    add r2, -4
    lddw r1, map:COUNTS
    call 1
    jeq r0, 0, out
    mov r1, 1
    lock add [r0], r1
out:
    mov r0, 0
    exit
"""


def test_threads_count_in_their_own_per_cpu_slots() -> None:
    counts = PerCpuArray(value_size=8, max_entries=1, name="COUNTS")
    with VM(assemble(PERCPU_COUNT, maps={"COUNTS": 1})) as vm:
        vm.add_map(counts, 1)
        vm.use_standard_helpers()
        threads = min(2, num_cpus())
        assert list(vm.execute_records(bytearray(100 * 8), 8, threads=threads)) == [0] * 100
        per_cpu = counts[0]
        assert sum(per_cpu) == 100
        if threads == 2:
            assert per_cpu[:2] == [50, 50]


def test_python_helpers_fall_back_to_one_call_per_input() -> None:
    seen: list[int] = []

    def record(r1: int, *_: int) -> int:
        seen.append(r1)
        return r1 * 2

    with VM(assemble("ldxb r1, [r1]\ncall 0\nexit")) as vm:
        vm.register_helper(0, record)
        assert list(vm.execute_batch([bytearray([i]) for i in range(5)])) == [0, 2, 4, 6, 8]
        assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("first", ["execute_jit", "execute_records"])
def test_threads_racing_to_the_first_run(first: str) -> None:
    """Four threads start together on fresh VMs: one compile per VM, and every thread's bare
    entry bound to it (two compiles would unmap the loser's code under a running thread)."""
    def work(vm: VM, start: threading.Barrier, results: list[int]) -> None:
        start.wait()
        if first == "execute_records":
            results.extend(vm.execute_records(bytearray(8), 8))
        results.extend(vm.execute_jit() for _ in range(20))

    for _ in range(10):
        with VM(assemble("mov r0, 41\nadd r0, 1\nexit")) as vm:
            results: list[int] = []
            start = threading.Barrier(4)
            pool = [threading.Thread(target=work, args=(vm, start, results)) for _ in range(4)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            assert results == [42] * (84 if first == "execute_records" else 80)


def test_bare_runs_write_the_callers_memory() -> None:
    with VM(assemble("ldxb r0, [r1]\nadd r0, 1\nstxb [r1], r0\nexit")) as vm:
        buf = bytearray(1)
        assert [vm.execute_jit(buf) for _ in range(5)] == [1, 2, 3, 4, 5]
        assert buf == bytearray([5])
        assert vm.execute_jit(memoryview(buf)) == 6 and buf == bytearray([6])


def test_bare_runs_report_errors_and_real_error_results() -> None:
    with VM(assemble("mov r0, 0\nja -1\nexit"), verify=False, budget=1000) as vm:
        for _ in range(3):  # first run (binding), then bare runs
            with pytest.raises(BudgetExceeded):
                vm.execute_jit()
    with VM(assemble(f"lddw r0, {ERROR_RESULT:#x}\nexit")) as vm:
        assert [vm.execute_jit() for _ in range(3)] == [ERROR_RESULT] * 3
        assert [vm.execute_jit(bytearray(4)) for _ in range(3)] == [ERROR_RESULT] * 3
    with VM(assemble("ldxdw r0, [r1+8]\nexit"), verify=False) as vm:
        for _ in range(3):  # the bare run with memory reports the interpreter's error
            with pytest.raises(ExecutionError) as err:
                vm.execute_jit(bytearray(8))
            assert err.value.pc == 0
        assert vm.execute_jit(bytearray(range(16))) == int.from_bytes(bytes(range(8, 16)), "little")
        assert vm.execute_jit(bytes(range(16))) == int.from_bytes(bytes(range(8, 16)), "little")  # copied
    two = [VM(assemble(f"mov r0, {i}\nexit")) for i in range(2)]
    assert [vm.execute_jit() for vm in two * 3] == [0, 1] * 3  # bindings of two programs coexist
    for vm in two:
        vm.close()
        with pytest.raises(ExecutionError, match="closed"):
            vm.execute_jit()


def test_bare_runs_see_only_their_own_regions() -> None:
    """A run with further regions (as program types give their context) leaves them in the
    thread's run context; a later bare run must not reach them."""
    from jitbpf.memory import region_of

    reader = "ldxdw r2, [r1]\nldxb r0, [r2]\nexit"  # reads the byte at the address mem holds
    other = bytearray(b"\x2a" * 16)
    region, pin = region_of(other, "ctx")
    address = bytearray(region.base.to_bytes(8, "little"))
    with VM(assemble(reader), verify=False) as vm:
        for _ in range(2):  # binding, then a bare run
            with pytest.raises(ExecutionError):
                vm.execute_jit(bytearray(address))
        mem, mem_pin = region_of(bytearray(address), "mem")
        assert vm.execute_jit_regions(mem, [region], mem.base, mem.size) == 0x2A  # reachable here
        for _ in range(2):
            with pytest.raises(ExecutionError):
                vm.execute_jit(bytearray(address))
    del pin, mem_pin


def test_registering_a_helper_rebinds() -> None:
    from jitbpf.linux.maps import Array

    source = ("stw [r10-4], 0\nlddw r1, map:A\nmov r2, r10\nadd r2, -4\ncall 1\n"
              "jeq r0, 0, out\nldxdw r0, [r0]\nout:\nexit")
    first = Array(value_size=8, max_entries=1, name="A")
    first.set(0, 11)
    with VM(assemble(source, maps={"A": 1})) as vm:
        vm.add_map(first, 1)
        vm.use_standard_helpers()
        assert [vm.execute_jit() for _ in range(3)] == [11] * 3
        seen: list[int] = []

        def lookup(*args: int) -> int:  # a Python helper replaces the native one: no bare runs
            seen.append(args[0])
            return 0

        vm.register_helper(1, lookup)
        assert vm.execute_jit() == 0 and len(seen) == 1


@pytest.mark.parametrize(("call", "message"), [
    (lambda vm: vm.execute_records(memoryview(bytearray(20))[::2], 5), "needs a writable, C-contiguous buffer"),
    (lambda vm: vm.execute_batch([4]), "execute_batch takes buffers .*; input 0 is int"),
    (lambda vm: vm.add_map(object()), "add_map takes a jitbpf map .*, not object"),
])
def test_wrong_argument_types_are_named(call: Callable[[VM], object], message: str) -> None:
    with VM(assemble(SUM_FIRST_BYTES)) as vm, pytest.raises(TypeError, match=message):
        call(vm)
