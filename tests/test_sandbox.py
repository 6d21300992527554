"""Containment: memory programs may reach unchecked lives in the sandbox, and JIT code confines
every access it does not check to it, so that a wrong proof (injected here) never reaches the
host: such a run ends with ExecutionError (or touches only sandbox memory) and host canaries stay
intact."""

from __future__ import annotations

import contextlib
import ctypes
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf import VM, assemble
from jitbpf.errors import ExecutionError, MapError
from jitbpf.linux.maps import Array, RingBuf
from jitbpf.sandbox import LOW_LIMIT, Pages, contained

pytestmark = pytest.mark.skipif(not contained(), reason="no sandbox on this host (the JIT then checks every access)")

SANDBOX = (2 << 30, 4 << 30)  # the window sandbox.c reserves


def address_of(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def with_wrong_proofs(source: str, **kwargs: object) -> VM:
    """A VM whose JIT trusts every memory access of ``source`` as proven (what a verifier bug
    would give it), compiled."""
    vm = VM(assemble(source), verify=False, **kwargs)  # type: ignore[arg-type]
    vm.check()
    vm._proven = frozenset(pc for pc, _insn, info in vm.program if info.size)
    vm.jit_compile()
    return vm


def test_pages_come_from_the_sandbox_below_4_gib() -> None:
    pages = Pages(10_000)
    assert SANDBOX[0] <= pages.address and pages.address + pages.size <= SANDBOX[1] <= LOW_LIMIT
    assert pages.size == 12_288 and bytes(pages.view) == bytes(pages.size)
    stack = VM(assemble("mov r0, 0\nexit"))._state().stack_base
    assert SANDBOX[0] <= stack < SANDBOX[1]
    array = Array(value_size=8, max_entries=4)
    assert all(SANDBOX[0] <= r.base and r.end <= SANDBOX[1] for r in array.regions())


def test_a_wrong_proof_cannot_write_host_memory() -> None:
    canary = bytearray(b"\xa5" * 4096)
    target = address_of(canary) + 64
    vm = with_wrong_proofs(f"lddw r2, {target:#x}\nmov r3, 0x41\nstxdw [r2+0], r3\nmov r0, 1\nexit")
    mem = bytearray(b"\x5a" * 64)
    for _ in range(3):  # the handler leaves the thread able to run again
        try:
            assert vm.execute_jit(mem) == 1  # it landed somewhere in the sandbox
        except ExecutionError as err:
            assert err.pc == 3 and "sandbox" in err.message
    assert canary == bytearray(b"\xa5" * 4096) and mem == bytearray(b"\x5a" * 64)


def test_a_stray_access_into_a_guard_page_is_an_error_with_its_pc() -> None:
    pages = Pages(4096)
    end = pages.address + pages.size  # the guard page after the allocation
    vm = with_wrong_proofs(f"lddw r1, {end:#x}\nldxw r0, [r1-2]\nexit")
    with pytest.raises(ExecutionError) as info:
        vm.execute_jit()
    assert info.value.pc == 2 and info.value.address == end
    with pytest.raises(ExecutionError):  # the interpreter checks every access itself
        vm.execute()


def test_faults_in_threads_and_after_faults_runs_still_work() -> None:
    vm = with_wrong_proofs("lddw r1, 0x10\nstxw [r1+0], r1\nmov r0, 7\nexit")
    ok = VM(assemble("mov r0, 42\nexit"))
    errors: list[ExecutionError] = []

    def work() -> None:
        for _ in range(50):
            try:
                vm.execute_jit()
            except ExecutionError as err:
                errors.append(err)
            assert ok.execute_jit() == 42

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 200 and all(e.pc == 2 for e in errors)


_KINDS = ("ldxb", "ldxh", "ldxw", "ldxdw", "stxb", "stxh", "stxw", "stxdw", "stb", "sth", "stw", "stdw",
          "lock add", "lock xchg", "lock cmpxchg")


# How r2 gets its address before an access: loaded afresh, kept from the access before (whose
# confinement then still holds), written by a mov or an add (the next access must confine it
# again), or pointed into the stack (the access succeeds, and confines r2 for the next).
_POINTING = ("lddw", "keep", "mov", "add", "stack")
_ACCESS = st.tuples(st.sampled_from(_KINDS), st.integers(0, (1 << 64) - 1), st.integers(-(1 << 15), (1 << 15) - 1),
                    st.sampled_from(_POINTING))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ACCESS, min_size=1, max_size=6), st.booleans())
def test_wrong_proofs_never_touch_host_memory(accesses: list[tuple[str, int, int, str]], near_canary: bool) -> None:
    """Loads, stores and atomics at any address and offset, all taken as proven: the host canary
    and the caller's buffer stay intact, and the run returns or raises ExecutionError."""
    canary = bytearray(b"\xc3" * 8192)
    base = address_of(canary)
    lines = []
    for i, (kind, addr, off, pointing) in enumerate(accesses):
        if near_canary:
            addr = base + addr % 8192
        if pointing == "add" and i:
            lines.append(f"add r2, {addr & 0x7FFF_FFFF:#x}")
        elif pointing == "mov" and i:
            lines += [f"lddw r5, {addr:#x}", "mov r2, r5"]
        elif pointing == "stack":
            lines += ["mov r2, r10", f"add r2, {-256 - off}"]
        elif pointing == "lddw" or not i:
            lines.append(f"lddw r2, {addr:#x}")
        if kind.startswith("ldx"):
            lines.append(f"{kind} r4, [r2{off:+d}]")
        elif kind.startswith(("stx", "lock")):
            lines.append(f"{kind} [r2{off:+d}], r3")
        else:
            lines.append(f"{kind} [r2{off:+d}], 0x5a")
    vm = with_wrong_proofs("mov r3, 0x77\n" + "\n".join(lines) + "\nmov r0, 1\nexit")
    mem = bytearray(b"\x11" * 32)
    with contextlib.suppress(ExecutionError):
        vm.execute_jit(mem)
    assert canary == bytearray(b"\xc3" * 8192) and mem == bytearray(b"\x11" * 32)


def test_a_forged_ring_buffer_header_is_reported_not_followed() -> None:
    ring = RingBuf(max_entries=4096, name="RB")
    vm = VM(assemble("""
        lddw r1, map:RB
        mov r2, 16
        mov r3, 0
        call 131            ; bpf_ringbuf_reserve
        jeq r0, 0, out
        mov r1, r0
        mov r2, 0
        call 132            ; bpf_ringbuf_submit
    out:
        mov r0, 0
        exit
    """, maps={"RB": 1}))
    vm.add_map(ring, 1)
    vm.use_standard_helpers()
    vm.execute_jit()
    data = ring.regions()[0]
    data.view[0:4] = (0x3FFF_FFF0).to_bytes(4, "little")  # a length far past the ring
    with pytest.raises(MapError, match="corrupted record header"):
        ring.read_events()


def test_faults_outside_jit_code_still_end_the_process() -> None:
    """The handler takes only faults of JIT code; others reach the handler before it (here the
    default: the process dies of SIGSEGV, as without jitbpf)."""
    code = textwrap.dedent("""
        import ctypes, jitbpf
        vm = jitbpf.VM(jitbpf.assemble("mov r0, 1\\nexit"))
        assert vm.execute_jit() == 1
        ctypes.string_at(8)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -11, proc.stderr.decode()


def test_a_proven_access_through_a_pointer_below_the_sandbox() -> None:
    """A pointer may lie outside its object, and below the sandbox when the object is the first
    it holds, until an access's offset brings it back: the access goes where the verifier proved
    (the address is confined, not the register) and the register stays the program's."""
    code = textwrap.dedent("""
        import jitbpf
        from jitbpf.linux.maps import Array
        values = Array(value_size=16, max_entries=1)  # the process's first object: at the sandbox's start
        vm = jitbpf.VM(jitbpf.assemble('''
            stw [r10-4], 0
            mov r2, r10
            add r2, -4
            lddw r1, map:A
            call 1
            jeq r0, 0, out
            mov r7, r0
            stdw [r7+0], 42
            mov r4, r7
            add r4, -8
            ldxdw r0, [r4+8]
            mov r1, r4
            sub r1, r7
            add r0, r1
            exit
        out:
            mov r0, 0
            exit
        ''', maps={"A": 1}))
        vm.add_map(values, 1)
        vm.use_standard_helpers()
        print(vm.execute(bytearray(8)), vm.execute_jit(bytearray(8)), hex(values.regions()[0].base))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, text=True)
    assert proc.returncode == 0, proc.stderr
    interp, jit, base = proc.stdout.split()
    assert (int(interp), int(jit)) == (34, 34)  # 42, then -8
    assert int(base, 16) == 1 << 31, "the first value no longer lies at the sandbox's start: move the test's pointer"
