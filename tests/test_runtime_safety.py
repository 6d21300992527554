"""Run-time containment: what no program or API misuse may do to the process (crash, hang, touch
freed or foreign memory), each case where the old behaviour killed the process run in a child
Python so that the suite survives a regression."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf import cfg
from jitbpf.asm import assemble
from jitbpf.errors import BpfError, BudgetExceeded, ExecutionError
from jitbpf.helpers import Helper
from jitbpf.isa import Program
from jitbpf.jit.loops import plan_loops
from jitbpf.jit.x86_64 import X86_64
from jitbpf.linux.maps import ProgramArray
from jitbpf.vm import VM
from tests.support import ENGINES, load

ROOT = Path(__file__).resolve().parent.parent


def isolated(script: str, *, timeout: float = 120) -> str:
    """Run ``script`` in a fresh Python (the project importable); it must exit normally (a signal
    or a hang fails the test, not the suite). Returns its standard output."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


# --- item 5: loop versioning checks exactly what the loop reaches --------------------------------

SUFFIX = {1: "b", 2: "h", 4: "w", 8: "dw"}


def _walk(step: int, off: int, size: int, late: bool) -> str:
    access = f"ldx{SUFFIX[size]} r5, [r3{off:+d}]"
    body = ["add r3, " + str(step), access] if late else [access, "add r3, " + str(step)]
    return "\n".join(["mov r0, 0", "mov r3, r1", "mov r4, r1", "add r4, r2", "loop:", *body,
                      "jlt r3, r4, loop", "exit"])


@settings(max_examples=300, deadline=None)
@given(step=st.one_of(st.integers(1, 64), st.integers(2**31 - 2**17, 2**31 - 1)),
       off=st.one_of(st.integers(0, 64), st.integers(2**15 - 64, 2**15 - 1), st.integers(-2**15, -2**15 + 64)),
       size=st.sampled_from([1, 2, 4, 8]), late=st.booleans())
def test_a_versioned_loop_range_is_exact(step: int, off: int, size: int, late: bool) -> None:
    """For any step and offset, a loop is versioned only if the target's range check can add the
    loop's exact reach to an address; that reach covers every byte an iteration touches."""
    flow = cfg.analyze(Program.from_bytes(assemble(_walk(step, off, size, late))))
    plans = plan_loops(flow, X86_64.loop_reach)
    reach = off + (step if late else 0) + size  # one past the last byte, from rX before the step
    if off + (step if late else 0) < 0 or reach > X86_64.loop_reach:
        assert not plans
        return
    (plan,) = plans.values()
    assert plan.hi == reach and plan.lo == reach - size
    assert plan.hi <= X86_64.loop_reach


def test_a_step_near_2_to_31_runs_checked() -> None:
    """The reviewer's shape: with a step of 2**31 - 1 and an access after it, the entry check's
    32-bit displacement used to wrap and the unchecked copy read 2 GiB past mem (SIGSEGV), even
    unverified and with elide_checks off. Every engine must now stop at the access."""
    out = isolated("""
        from jitbpf import VM, ExecutionError, assemble
        from tests.test_runtime_safety import _walk
        for off in (0x7fff, 8, 0):
            for elide in (True, False):
                vm = VM(assemble(_walk(2**31 - 1, off, 8, True)), verify=False, elide_checks=elide)
                for run in (vm.execute, vm.execute_jit):
                    try:
                        run(bytearray(64))
                    except ExecutionError as err:
                        print("stopped at", err.pc)
                    else:
                        raise AssertionError("no error")
    """)
    assert out.split("\n").count("stopped at 5") == 12


# --- item 10: finalizers never wait for cffi's lock ------------------------------------------------

def test_dropping_a_compiled_vm_inside_cffi_does_not_deadlock() -> None:
    """cffi holds its FFI's non-reentrant lock while it parses a type; a garbage collection there
    runs finalizers on the same thread. The code-page finalizer used to resolve ``munmap`` under
    that lock, and hung the process (seen after a threaded batch, at a new VM's first run)."""
    out = isolated("""
        import gc
        import jitbpf._native.build as build
        found, build.built_path = build.built_path, lambda: None
        from jitbpf._ffi import ffi  # the FFI parsed at run time, as before the library is built
        build.built_path = found
        from jitbpf import VM, assemble
        vm = VM(assemble("mov r0, 1\\nexit"))
        assert vm.execute_jit() == 1
        with ffi._lock:  # as cffi's parser holds it when a collection starts
            del vm
            gc.collect()
        print("freed")
    """, timeout=60)
    assert out == "freed\n"


# --- item 11: no page writable and executable ----------------------------------------------------

def test_no_page_is_writable_and_executable() -> None:
    """Compiling and running programs with Python helpers (JIT, one by one and batched, verified
    and not; the interpreter) leaves no mapping with both write and execute permission: Python
    helpers are reached through the native library's compiled callback, not a cffi trampoline."""
    out = isolated("""
        from jitbpf import VM, assemble
        code = assemble("mov r6, r1\\nmov r1, 3\\ncall 7\\nldxb r1, [r6]\\nadd r0, r1\\ncall 7\\nexit")
        for verify in (True, False):
            vm = VM(code, verify=verify)
            vm.register_helper(7, lambda a, *_: a + 1)
            assert vm.execute(bytearray(b"\\x05")) == vm.execute_jit(bytearray(b"\\x05")) == 6
            assert list(vm.execute_batch([bytearray([i]) for i in range(4)], threads=2)) == [1, 2, 3, 4]
            vm.register_helper(8, lambda *_: 0)  # registered after compiling
            assert vm.execute_jit(bytearray(1)) == 1
        with open("/proc/self/maps") as maps:
            both = [line for line in maps if "w" in line.split()[1] and "x" in line.split()[1]]
        print(both)
    """)
    assert out == "[]\n"


# --- item 6: program-type confusion --------------------------------------------------------------

TAIL = "lddw r2, map:JMP\nmov r3, 0\ncall 12\nmov r0, 2\nexit"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("caller", "target"), [("xdp", "tc"), ("tc", "xdp"), ("xdp", None), ("socket_filter", "tc")])
def test_a_tail_call_needs_the_callers_program_type(engine: str, caller: str, target: str | None) -> None:
    """As in the kernel, a program array holds programs of one type: a tail call into another
    type (whose code would read and write this context at its own type's offsets) is refused."""
    jmp = ProgramArray(max_entries=1, name="JMP")
    vm = load(TAIL, jmp, prog_type=caller)
    jmp[0] = load("mov r0, 0\nexit", prog_type=target) if target else VM(assemble("mov r0, 0\nexit"))
    with pytest.raises(ExecutionError, match="bpf_tail_call: the program at index 0 of 'JMP' is of type") as err:
        vm.run_context(packet=bytes(64) if vm.program_state and vm.program_state.info.packet else None,
                       engine=engine)  # type: ignore[arg-type]
    assert err.value.pc == 3
    jmp[0] = load("mov r0, 5\nexit", prog_type=caller)  # the same type is fine
    assert vm.run_context(packet=bytes(64), engine=engine).retval == 5  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["execute", "execute_jit", "execute_batch", "execute_records"])
def test_a_typed_vm_refuses_a_raw_buffer(method: str) -> None:
    vm = VM(assemble("mov r0, 1\nexit"), prog_type="tc")
    runs: dict[str, Callable[[], object]] = {
            "execute": lambda: vm.execute(bytearray(16)), "execute_jit": lambda: vm.execute_jit(bytearray(16)),
            "execute_batch": lambda: vm.execute_batch([bytearray(16)]),
            "execute_records": lambda: vm.execute_records(bytearray(16), 16)}
    with pytest.raises(ExecutionError, match=rf"{method}\(\) runs a program on a raw buffer, but this is a "
                                             r"sched_cls program: run it on its context with run_context\(\)"):
        runs[method]()
    assert vm.run_tc(bytes(14))[0] == 1


def test_a_tc_program_never_stores_past_a_raw_buffer() -> None:
    """The reviewer's case: a verified sched_cls program stores into its context (proven, so not
    checked); given a 16-byte buffer it wrote past it into the heap. Now it is refused."""
    out = isolated("""
        import gc
        from jitbpf import VM, ExecutionError, assemble
        vm = VM(assemble("mov r2, 7\\nstxw [r1+144], r2\\nstxw [r1+8], r2\\nmov r0, 0\\nexit"), prog_type="tc")
        for run in (vm.execute_jit, vm.execute):
            for _ in range(100):
                try:
                    run(bytearray(16))
                except ExecutionError:
                    pass
                else:
                    raise AssertionError("ran")
        gc.collect()
        print("refused")
    """)
    assert out == "refused\n"


# Out-of-bounds accesses name the operand, the access and where it went, the same in both engines.
ACCESS_ERRORS = [
    ("stw [r1+4], 1\nmov r0, 0\nexit", "r1+4: 4-byte store 4 bytes past the end of the 4-byte input", 0),
    ("ldxh r0, [r1+3]\nexit", "r1+3: 2-byte load 1 bytes past the end of the 4-byte input", 0),
    ("ldxdw r0, [r1-16]\nexit", "r1-16: 8-byte load 16 bytes before the 4-byte input", 0),
    ("ldxdw r0, [r10-5000]\nexit", "fp-5000: 8-byte load 904 bytes below the stack", 0),
    ("mov r1, 0x1000\nldxdw r0, [r1]\nexit", "r1: 8-byte load at an address in no region of the run", 1),
    ("mov r0, 1\nlock add [r1+2], r0\nexit", "r1+2: 8-byte load 6 bytes past the end of the 4-byte input", 1),
    ("stdw [r10-8], 0\nlddw r1, map:A\nmov r2, r10\nadd r2, -8\ncall 1\njeq r0, 0, +1\nldxdw r0, [r0-16]\nexit",
     "r0-16: 8-byte load 16 bytes before the 8-byte map A", 7),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("source", "message", "pc"), ACCESS_ERRORS)
def test_access_errors_name_the_region_and_offset(engine: str, source: str, message: str, pc: int) -> None:
    from jitbpf.errors import AccessError
    from jitbpf.linux.maps import Array

    vm = load(source, Array(value_size=8, max_entries=1, name="A"), verify=False)
    with pytest.raises(AccessError) as info:
        vm.execute(bytearray(4)) if engine == "interp" else vm.execute_jit(bytearray(4))
    assert info.value.pc == pc
    assert str(info.value).startswith(message + " (address 0x") and str(info.value).endswith(f") at PC {pc}")


@pytest.mark.parametrize("engine", ENGINES)
def test_store_into_read_only_memory_names_it(engine: str) -> None:
    from jitbpf.errors import AccessError
    from jitbpf.linux.maps import BPF_F_RDONLY_PROG, Array

    source = "stdw [r10-8], 0\nlddw r1, map:RO\nmov r2, r10\nadd r2, -8\ncall 1\njeq r0, 0, +1\nstb [r0+3], 1\nexit"
    vm = load(source, Array(value_size=8, max_entries=1, flags=BPF_F_RDONLY_PROG, name="RO"), verify=False)
    with pytest.raises(AccessError, match=r"^r0\+3: 1-byte store into the read-only 8-byte map RO at offset 3 "):
        vm.execute() if engine == "interp" else vm.execute_jit()


INTERRUPTED = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background job's child starts ignoring it)
from jitbpf.asm import assemble
from jitbpf.vm import VM

vm = VM(assemble("mov r0, 0\\nlddw r1, 10000000000\\nloop:\\nadd r0, 1\\njlt r0, r1, loop\\nexit"),
        verify=False, allow_loops=True, budget=1 << 62)
vm.jit_compile()
try:
    print("running", flush=True)
    vm.execute_jit() if sys.argv[1] == "execute_jit" else vm.execute_batch([bytearray(8)] * 4)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    print(VM(assemble("mov r0, 7\\nexit")).execute_jit(), flush=True)  # the JIT still works
"""


@pytest.mark.parametrize("method", ["execute_jit", "execute_batch"])
def test_ctrl_c_stops_a_long_jit_run(method: str) -> None:
    import signal

    args = [sys.executable, "-c", INTERRUPTED, method]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "running\n"
        out = ""
        for _ in range(50):  # the signal may land before the run starts: send it again
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            proc.kill()
            pytest.fail("SIGINT did not stop the JIT run")
    assert out == "interrupted\n7\n", err


# --- a helper's declared result range is what the verifier trusts: every call checks it -------

# A buffer of 16 bytes on the stack, filled by helper 9; r0 - 1 indexes it (proven from r0's range).
LENGTH_USER = """
    mov r1, r10
    add r1, -16
    mov r2, 16
    call 9
    jsle r0, 0, +5
    mov r3, r10
    add r3, -16
    add r3, r0
    ldxb r0, [r3-1]
    exit
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("returned", "ok"), [(16, True), (0, True), (-4095, True), (17, False), (-4096, False)])
def test_a_length_result_out_of_its_range_is_the_helpers_error(engine: str, returned: int, ok: bool) -> None:
    def fill(buf: int, size: int, *_: int) -> int:
        return returned & (2**64 - 1)

    vm = VM(assemble(LENGTH_USER), helpers=[Helper(9, "fill", fill, ("uninit_mem", "size"), "length_or_errno")])
    vm.check()  # r0 - 1 in [0, 15]: the load needs no check
    run = vm.execute_jit if engine == "jit" else vm.execute
    if ok:
        run(bytearray(8))
    else:
        with pytest.raises(ExecutionError, match="neither a length of at most 16 nor a negative errno"):
            run(bytearray(8))


def test_a_length_result_is_checked_in_python_only() -> None:
    with pytest.raises(ValueError, match="give no native function"):
        Helper(9, "fill", lambda *_: 0, ("uninit_mem", "size"), "length_or_errno", native=1)
    with pytest.raises(ValueError, match="needs a size argument"):
        Helper(9, "fill", lambda *_: 0, ("scalar",), "length_or_errno")


# A value pointer taken before a helper closes the VM and the map, then a lookup after it.
_CLOSE_MID_RUN = """
    lddw r1, map:1
    mov r2, r10
    add r2, -4
    stw [r10-4], 0
    call 1
    jeq r0, 0, +5
    mov r6, r0
    call 100
    stdw [r6+0], 99
    lddw r1, map:1
    mov r2, r10
    add r2, -4
    call 1
    jeq r0, 0, +1
    ldxdw r0, [r0+0]
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_map_closed_during_a_run_lives_until_the_run_ends(engine: str) -> None:
    """close() of the VM and of its map from a helper: the run goes on with the map (as the
    kernel keeps a map while a program holds it), freed once the run is over. It used to be
    freed under the run, which then wrote to freed storage."""
    out = isolated(f"""
        from jitbpf import VM, assemble
        from jitbpf.errors import MapError
        from jitbpf.linux.maps import HashMap

        m = HashMap(key_size=4, value_size=8, max_entries=4, name="counts")
        m[0] = 5
        vm = VM(assemble({_CLOSE_MID_RUN!r}))
        vm.add_map(m, 1)
        vm.use_standard_helpers()

        def close_all(*_args):
            vm.close()
            m.close()
            return 0

        vm.register_helper(100, close_all, name="close_all")
        print(vm.execute_jit() if {engine!r} == "jit" else vm.execute())
        try:
            len(m)
        except MapError as err:
            print(err)
    """)
    assert out.split("\n")[:2] == ["99", "map 'counts' is closed"], out


RESERVE_CLOSE_SUBMIT = """
    lddw r1, map:R
    mov r2, 16
    mov r3, 0
    call 131
    jeq r0, 0, out
    mov r6, r0
    call 50
    mov r1, r6
    mov r2, 0
    call 132
    mov r0, 1
out:
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_ring_closed_during_a_run_keeps_its_reserved_record(engine: str) -> None:
    """A ring buffer closed (for Python) by a helper between reserve and submit: the open VM
    still uses it, so the submit goes through in both engines (the interpreter's check of the
    record refused the closed ring, the JIT's native helper did not)."""
    from jitbpf.linux.maps import RingBuf

    rb = RingBuf(max_entries=4096, name="R")
    vm = load(RESERVE_CLOSE_SUBMIT, rb)
    def close_the_ring(*_: int) -> int:
        rb.close()
        return 0

    vm.register_helper(50, close_the_ring)
    assert [vm.execute(bytearray(8)) if engine == "interp" else vm.execute_jit(bytearray(8))
            for _ in range(2)] == [1, 1]
    vm.close()


@pytest.mark.parametrize("make, view", [
    ("Array(value_size=8, max_entries=4)", "m.view(1)"),
    ("PerCpuArray(value_size=8, max_entries=4)", "m.view(1, cpu=0)"),
    ("RingBuf(max_entries=4096)", "m.regions()[0].view[:8]"),
])
def test_a_view_of_map_values_outlives_the_map(make: str, view: str) -> None:
    """Views of a map's values (a global variable's bytes, a region) keep that memory: closing
    the map used to free it under them, and the next access killed the process."""
    out = isolated(f"""
        import gc
        from jitbpf.linux.maps import Array, PerCpuArray, RingBuf

        m = {make}
        v = {view}
        m.close()
        gc.collect()
        v[0] = 7
        print(bytes(v))
    """)
    assert out == repr(b"\x07" + bytes(7)) + "\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_closed_vm_refuses_to_run_with_an_execution_error(engine: str) -> None:
    """A run of a closed VM is refused as a run-time failure, in either engine and runner."""
    vm = load("mov r0, 2\nexit", prog_type="xdp")
    vm.jit_compile()
    vm.close()
    with pytest.raises(ExecutionError, match="the VM is closed"):
        vm.run_xdp(b"\0" * 14, engine=engine)
    with pytest.raises(ExecutionError, match="the VM is closed"):
        vm.run_batch([b"\0" * 14], engine=engine)


def test_records_whose_vm_another_thread_closes_end_with_an_execution_error() -> None:
    """A record that stops early (its budget) after another thread closed the VM: the batch
    ends with the closed VM's error, not an internal one."""
    spin = "ldxb r3, [r1]\njeq r3, 0, +1\nja -1\nmov r0, 0\nexit"
    vm = VM(assemble(spin), verify=False, budget=100_000_000)
    vm.execute_records(bytearray(16), 8)  # binds this thread's native records loop
    closer = threading.Timer(0.02, vm.close)
    closer.start()
    try:
        with pytest.raises((ExecutionError, BudgetExceeded)) as got:
            vm.execute_records(bytearray(b"\x01" + bytes(7)), 8)
    finally:
        closer.join()
    assert "the VM is closed" in str(got.value)  # (closed long before the budget runs out)
    with pytest.raises(ExecutionError, match="the VM is closed"):
        vm.execute_records(bytearray(8), 8)


@pytest.mark.parametrize("bound", [False, True])
def test_close_does_not_wait_for_runs_on_other_threads(bound: bool) -> None:
    """close() while another thread's native run is inside the code (its first run there, or a
    bare one once bound): close() returns at once, new runs are refused, and the code goes when
    that run ends. close() used to wait for it: as long as its budget, with a large one. (Runs
    through the VM's own bookkeeping, with maps or Python helpers, already left the release to
    the last of them.)"""
    vm = VM(assemble("mov r0, 0\nja -1\nexit"), verify=False, allow_loops=True, budget=600_000_000)
    vm.jit_compile()
    ended: list[str] = []

    def spin() -> None:
        for _ in range(2 if bound else 1):
            try:
                vm.execute_jit()
            except BpfError as err:
                ended.append(type(err).__name__)

    runner = threading.Thread(target=spin)
    runner.start()
    deadline = time.monotonic() + 10
    while len(ended) < (1 if bound else 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # inside the (last) run
    started = time.monotonic()
    vm.close()
    assert time.monotonic() - started < 0.1
    jit = vm._retiring
    assert jit is not None and not jit.closed  # the run still holds the code
    with pytest.raises(ExecutionError, match="the VM is closed"):
        vm.execute_jit()
    runner.join()
    while not jit.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jit.closed and ended == ["BudgetExceeded"] * (2 if bound else 1)


def test_a_close_during_the_first_compile_leaves_no_code() -> None:
    """close() while another thread compiles: the compile's code is let go at once (it used to
    stay mapped on the closed VM), and that thread's run is refused."""
    started = threading.Event()
    for _ in range(5):
        vm = VM(assemble("mov r0, 1\n" * 3000 + "exit"))
        vm.check()
        real = vm._new_jit_program
        made: list[Any] = []

        def slow_compile(real: Callable[[], Any] = real, made: list[Any] = made) -> Any:
            started.set()
            jit = real()
            made.append(jit)
            time.sleep(0.05)  # close() lands here
            return jit

        vm._new_jit_program = slow_compile  # type: ignore[method-assign]
        errors: list[BaseException] = []

        def compile_it(vm: VM = vm, errors: list[BaseException] = errors) -> None:
            try:
                vm.jit_compile()
            except ExecutionError as err:
                errors.append(err)

        worker = threading.Thread(target=compile_it)
        started.clear()
        worker.start()
        started.wait(10)
        vm.close()
        worker.join()
        assert [str(e) for e in errors] == ["the VM is closed"]
        assert made and made[0].closed and vm._jit is None


# On packet byte 0 == 1 the program writes fp-16; else it asks bpf_xdp_load_bytes (which fails:
# offset 1000) to fill fp-16 and returns what is there.
LOAD_FAILS_THEN_READS = """
mov r6, r1
ldxw r2, [r6+0]
ldxw r3, [r6+4]
mov r4, r2
add r4, 1
jgt r4, r3, out
ldxb r5, [r2+0]
jne r5, 1, fail
lddw r7, 0x1122334455667788
stxdw [r10-16], r7
mov r0, 7
exit
fail:
mov r1, r6
mov r2, 1000
mov r3, r10
add r3, -16
mov r4, 8
call 189
ldxdw r0, [r10-16]
exit
out:
mov r0, 0
exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failed_helper_leaves_no_earlier_runs_stack(engine: str) -> None:
    """Stack a helper was given to fill but did not (it failed) reads as zero, as the rest of a
    run's never-written stack: never as what an earlier run left there."""
    vm = VM(assemble(LOAD_FAILS_THEN_READS), prog_type="xdp")
    assert vm.run_xdp(b"\x01" + bytes(63), engine=engine)[0] == 7
    assert vm.run_xdp(bytes(64), engine=engine)[0] == 0


# --- interpreter exit while daemon threads are inside JIT code -----------------------------------

# A child whose daemon threads run endless programs (no GIL held inside the code) when the
# interpreter exits: exit calls the finalizers of objects still alive, which must not unmap the
# code or retire the gate under those runs.
DAEMONS_AT_EXIT = """
import sys, threading, time
from jitbpf import VM, ProgType
from jitbpf.asm import assemble
from jitbpf.linux.maps import HashMap
how = sys.argv[1]
loop = assemble("mov r0, 0\\nja -1\\nexit")
options = dict(verify=False, allow_loops=True, budget=10**12)
if how in ("execute_jit", "execute_records", "execute_batch", "interpreter"):
    vm = VM(loop, **options)
    run = {"execute_jit": vm.execute_jit, "interpreter": vm.execute,
           "execute_records": lambda: vm.execute_records(bytearray(64), 8),
           "execute_batch": lambda: vm.execute_batch([bytearray(8)] * 3)}[how]
elif how == "run_xdp":
    vm = VM(loop, prog_type=ProgType.XDP, **options)
    run = lambda: vm.run_xdp(bytes(64), engine="jit")
else:  # a native helper on a map in the loop
    lookups = assemble("stw [r10-4], 1\\nloop:\\nlddw r1, map:M\\nmov r2, r10\\nadd r2, -4\\ncall 1\\nja loop\\nexit",
                       maps={"M": 1})
    vm = VM(lookups, **options)
    vm.add_map(HashMap(key_size=4, value_size=8, max_entries=4, name="M"), 1)
    vm.use_standard_helpers()
    run = vm.execute_jit
for _ in range(2):
    threading.Thread(target=run, daemon=True).start()
time.sleep(0.3)
print("exiting", flush=True)
"""


@pytest.mark.parametrize("how", ["execute_jit", "execute_records", "execute_batch", "run_xdp", "map_helper",
                                 "interpreter"])
def test_exit_with_daemon_threads_inside_the_code(how: str) -> None:
    proc = subprocess.run([sys.executable, "-c", DAEMONS_AT_EXIT, how], capture_output=True, text=True, timeout=120,
                          check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "exiting\n", "")


# --- fork() while runs are inside the code -----------------------------------------------------

# A child forked while another thread is inside a program's code (and, second case, while its
# own thread is, from a helper) must be able to close that program: it has only its own runs.
FORKED = """
import os, sys, threading, time
from jitbpf import VM
from jitbpf.asm import assemble
endless = VM(assemble("mov r0, 0\\nja -1\\nexit"), verify=False, allow_loops=True, budget=10**12)
endless.jit_compile()
threading.Thread(target=endless.execute_jit, daemon=True).start()
time.sleep(0.3)
forked = []
forking = VM(assemble("call 9\\nmov r0, 5\\nexit"))
forking.register_helper(9, lambda *_: forked.append(os.fork()) or 0)
result = forking.execute_jit()
if forked[0] == 0:  # the child, back from the helper and the run
    print("child", result, VM(assemble("mov r0, 7\\nexit")).execute_jit(), flush=True)
    endless.close()
    forking.close()
    print("child closed both", flush=True)
    os._exit(0)
_, status = os.waitpid(forked[0], 0)
print("parent", result, os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_forked_child_closes_programs_the_parent_was_running() -> None:
    proc = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["child 5 7", "child closed both", "parent 5 0"]
