"""Callbacks: bpf_loop (181) and bpf_for_each_map_elem (164) call a function of the program whose
address `lddw rX, func:F` loads. Each rule of the verifier has a minimal program accepted or
rejected; accepted ones give the same results in both engines, and so do the helpers' run-time
failures of unverified programs. An object built from C with both helpers runs as well."""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.cfg import analyze
from jitbpf.contract import MAX_LOOP_ITERATIONS, function_address
from jitbpf.errors import BudgetExceeded, ExecutionError, JitError, VerifierError
from jitbpf.isa import Program
from jitbpf.linux.elf import load_elf
from jitbpf.linux.maps import Array, HashMap
from jitbpf.vm import VM
from tests.support import ENGINES, c_builder, load, run, s64

# sum = 0; n = bpf_loop(10, cb, &sum, 0); return n << 32 | sum, where cb adds i and stops after i = 5.
LOOP_SUM = """
    stdw [r10-8], 0
    mov r1, {nr}
    lddw r2, func:cb
    mov r3, r10
    add r3, -8
    mov r4, {flags}
    call 181
    ldxdw r1, [r10-8]
    lsh r0, 32
    or r0, r1
    exit
cb:
    ldxdw r3, [r2]
    add r3, r1
    stxdw [r2], r3
    mov r0, 0
    jlt r1, 5, +1
    mov r0, 1
    exit
"""


def loop_sum(nr: int = 10, flags: int = 0) -> str:
    return LOOP_SUM.format(nr=nr, flags=flags)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("nr", "count", "total"), [(10, 6, 15), (3, 3, 3), (1, 1, 0), (0, 0, 0)])
def test_bpf_loop_runs_until_the_callback_says_stop(engine: str, nr: int, count: int, total: int) -> None:
    assert run(load(loop_sum(nr)), engine, bytearray(8)) == count << 32 | total


@pytest.mark.parametrize("engine", ENGINES)
def test_a_loop_of_no_iterations_never_verifies_its_callback(engine: str) -> None:
    """With a count known to be 0 the callback is never called: the kernel does not verify it
    (here it returns 3, which a callback may not), and neither does jitbpf."""
    text = """
        mov r4, 0               ; flags
        mov r3, r4              ; the callback's context: none
        lddw r2, func:cb
        mov r1, 0               ; no iterations
        call 181
        exit
    cb:
        mov r0, 3
        exit
    """
    assert run(load(text), engine, bytearray(8)) == 0
    with pytest.raises(VerifierError, match="At callback return"):
        load(text.replace("mov r1, 0 ", "mov r1, 1 ")).check()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_function_address_may_move_but_calls_back_only_unmoved(engine: str) -> None:
    """The kernel's rules for PTR_TO_FUNC: arithmetic on it is allowed (the result compares and
    spills as an address), a helper refuses it as a callback once moved."""
    moved = load("lddw r2, func:cb\nadd r2, 8\nmov r0, 0\njeq r2, 0, +1\nmov r0, 1\nexit\ncb:\nmov r0, 0\nexit")
    assert run(moved, engine, bytearray(8)) == 1
    called = "mov r1, 4\nlddw r2, func:cb\n{move}mov r3, 0\nmov r4, 0\ncall 181\nexit\ncb:\nmov r0, 0\nexit"
    assert run(load(called.format(move="")), engine, bytearray(8)) == 4
    with pytest.raises(VerifierError, match="dereference of modified func ptr r2 off=8 disallowed"):
        load(called.format(move="add r2, 8\n")).check()


@pytest.mark.parametrize(("ctx", "refused"), [("mov r3, r10\n    add r3, -8", False), ("mov r3, 0", False),
                                              ("mov r3, r1", True), ("mov r3, 8", True)])
def test_the_callbacks_context_is_on_the_stack_or_null(ctx: str, refused: bool) -> None:
    """As the kernel's ARG_PTR_TO_STACK_OR_NULL: the context bpf_loop hands its callback."""
    vm = load(f"""
        {ctx}
        lddw r2, func:cb
        mov r1, 1
        mov r4, 0
        call 181
        exit
    cb:
        mov r0, 1
        exit
    """)
    if refused:
        with pytest.raises(VerifierError, match=r"r3 type=.* expected=fp"):
            vm.check()
    else:
        vm.check()


@pytest.mark.parametrize("engine", ENGINES)
def test_bpf_loop_with_flags_fails_without_calling_back(engine: str) -> None:
    """The kernel verifies any flags (its ARG_ANYTHING) and fails the call at run time: -EINVAL
    in r0, the callback never run (the sum stays 0)."""
    assert run(load(loop_sum(flags=1)), engine, bytearray(8)) == (-errno.EINVAL & 0xFFFF_FFFF) << 32


@pytest.mark.parametrize("engine", ENGINES)
def test_bpf_loop_keeps_the_callers_registers_and_clears_r1_to_r5(engine: str) -> None:
    text = """
        mov r6, 6
        mov r9, 9
        mov r1, 4
        lddw r2, func:cb
        mov r3, 0
        mov r4, 0
        call 181
        add r0, r6
        add r0, r9
        add r0, r1
        add r0, r2
        add r0, r5
        exit
    cb:
        mov r6, 100
        mov r9, 100
        mov r5, 100
        mov r0, 0
        exit
    """
    assert run(load(text, verify=False), engine, bytearray(8)) == 4 + 6 + 9


# Failures of the helper itself: it returns the kernel's error without calling back.
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("nr", "flags", "result"), [
    (10, 1, -errno.EINVAL), (MAX_LOOP_ITERATIONS + 1, 0, -errno.E2BIG), (MAX_LOOP_ITERATIONS, 1, -errno.EINVAL),
    (1 << 32 | 3, 0, -errno.E2BIG)])
@pytest.mark.parametrize("verify", [False, True])
def test_bpf_loop_failures_return_the_kernels_errors(engine: str, nr: int, flags: int, result: int,
                                                     verify: bool) -> None:
    """Verified or not (the kernel's verifier accepts any count, and so does jitbpf's): the count
    is compared whole, as the kernel's inlined bpf_loop does (measured: 2**32 + 3 is -E2BIG)."""
    text = loop_sum(0, flags).replace("    mov r1, 0\n", f"    lddw r1, {nr}\n")
    value = run(load(text, verify=verify), engine, bytearray(8))
    assert s64(value >> 32 | (0xFFFFFFFF << 32 if value >> 63 else 0)) == result
    assert value & 0xFFFFFFFF == 0  # the callback never ran


@pytest.mark.parametrize("engine", ENGINES)
def test_a_number_that_is_no_function_address_is_a_run_time_error(engine: str) -> None:
    text = loop_sum().replace("lddw r2, func:cb", f"lddw r2, {function_address(2)}")
    with pytest.raises(ExecutionError, match=r"r2 \(0x[0-9a-f]+\) is not the address of a function") as err:
        run(load(text, verify=False), engine, bytearray(8))
    assert err.value.pc == 7


@pytest.mark.parametrize("engine", ENGINES)
def test_the_budget_counts_the_callbacks_instructions(engine: str) -> None:
    text = loop_sum().replace("jlt r1, 5, +1", "jlt r1, 999, +1").replace("mov r1, 10", "mov r1, 1000")
    with pytest.raises(BudgetExceeded) as err:
        run(load(text, budget=500), engine, bytearray(8))
    assert err.value.pc == 12  # the callback's first block


@pytest.mark.parametrize("engine", ENGINES)
def test_callbacks_count_as_call_frames(engine: str) -> None:
    # main -> f1 -> ... -> f6 calls bpf_loop: the callback's frame is the eighth, a local call
    # from it would be the ninth.
    chain = "".join(f"f{i}:\n    call f{i + 1}\n    exit\n" for i in range(1, 6))
    text = f"""
        call f1
        exit
    {chain}f6:
        mov r1, 1
        lddw r2, func:cb
        mov r3, 0
        mov r4, 0
        call 181
        exit
    cb:
        call leaf
        mov r0, 0
        exit
    leaf:
        mov r0, 0
        exit
    """
    with pytest.raises(VerifierError, match="call stack is too deep"):
        load(text).check()
    with pytest.raises(ExecutionError, match="call depth exceeds 8 frames"):
        run(load(text, verify=False), engine, bytearray(8))
    shallow = text.replace("    call leaf\n", "").replace("leaf:\n        mov r0, 0\n        exit\n", "")
    assert run(load(shallow), engine, bytearray(8)) == 1


# bpf_loop(nr, cb, &ctx, 0) with nr and the index cb stops at read from the input: r0 = the count
# returned << 32 | the calls cb counted.
LOOP_INPUT = load("""
    ldxw r6, [r1]
    ldxw r7, [r1+4]
    stxdw [r10-8], r7
    stdw [r10-16], 0
    mov r1, r6
    lddw r2, func:cb
    mov r3, r10
    add r3, -16
    mov r4, 0
    call 181
    ldxdw r1, [r10-16]
    lsh r0, 32
    or r0, r1
    exit
cb:
    ldxdw r3, [r2]
    add r3, 1
    stxdw [r2], r3
    ldxdw r4, [r2+8]
    mov r0, 0
    jne r1, r4, +1
    mov r0, 1
    exit
""")


@settings(max_examples=60, deadline=None)
@given(nr=st.integers(0, 300), stop=st.integers(0, 400))
def test_bpf_loop_count_is_the_kernels_in_both_engines(nr: int, stop: int) -> None:
    calls = min(nr, stop + 1)
    mem = struct.pack("<II", nr, stop)
    assert LOOP_INPUT.execute(mem) == LOOP_INPUT.execute_jit(mem) == calls << 32 | calls


def test_callbacks_in_batches_and_threads() -> None:
    frames = [struct.pack("<II", n, 5) for n in range(10)]
    want = [min(n, 6) << 32 | min(n, 6) for n in range(10)]
    assert [LOOP_INPUT.execute(f) for f in frames] == want
    assert list(LOOP_INPUT.execute_batch(frames)) == want
    assert list(LOOP_INPUT.execute_batch(frames, threads=2)) == want


# -- the verifier's rules -------------------------------------------------------------------------

CALLBACK_RANGE = r"At callback return the register r0 has .* should have been in \[0, 1\]"
REJECTED = [
    # r2 is a number: no callback to verify
    (loop_sum().replace("lddw r2, func:cb", "lddw r2, func:cb\n    mov r2, 12"), 8,
     "must be the address of a function"),
    # the callback returns 2 when i >= 5
    (loop_sum().replace("mov r0, 1\n    exit", "mov r0, 2\n    exit"), 18, CALLBACK_RANGE),
    (loop_sum().replace("    mov r0, 0\n    jlt", "    mov r0, r1\n    jlt"), 18, CALLBACK_RANGE),
    # r1-r5 are not the caller's after the call
    (loop_sum().replace("ldxdw r1, [r10-8]", "mov r1, r3"), 8, "r3"),
    # the address of a function is no memory
    (loop_sum().replace("    mov r3, r10\n", "    ldxb r3, [r2]\n"), 4, "the address of a function"),
]


@pytest.mark.parametrize(("text", "pc", "message"), REJECTED)
def test_rejected_callbacks_name_the_instruction(text: str, pc: int, message: str) -> None:
    with pytest.raises(VerifierError, match=message) as err:
        load(text).check()
    assert err.value.pc == pc


def test_every_round_of_a_callback_is_covered() -> None:
    # Each round moves ctx->off 8 bytes on: after ten rounds it is 80, past the 16-byte buffer
    # the caller then indexes with it. Verifying one round only would see off = 8.
    text = """
        stdw [r10-8], 0
        stdw [r10-16], 0
        stdw [r10-24], 0
        mov r1, 10
        lddw r2, func:cb
        mov r3, r10
        add r3, -8
        mov r4, 0
        call 181
        ldxdw r1, [r10-8]
        jgt r1, {bound}, out
        mov r2, r10
        add r2, -24
        add r2, r1
        ldxb r0, [r2]
        exit
    out:
        mov r0, 0
        exit
    cb:
        ldxdw r3, [r2]
        add r3, 8
        stxdw [r2], r3
        mov r0, 0
        exit
    """
    with pytest.raises(VerifierError, match="stack"):
        load(text.format(bound=1 << 20)).check()
    vm = load(text.format(bound=15))
    vm.check()
    assert vm.execute(bytearray(8)) == vm.execute_jit(bytearray(8)) == 0


# fp-8 = {before}; the helper's callback sets fp-8 = 0; then fp-8 indexes a 16-byte stack
# buffer. Only a call that never calls back leaves fp-8 as it was before the call.
NO_ROUND = """
    stdw [r10-16], 0
    stdw [r10-24], 0
    lddw r1, {before}
    stxdw [r10-8], r1
    {helper}
    lddw r2, func:cb
    mov r3, r10
    add r3, -8
    mov r4, 0
    call {hid}
    ldxdw r1, [r10-8]
    mov r2, r10
    add r2, -24
    add r2, r1
    ldxb r0, [r2]
    exit
cb:
    stdw [{ctx}], 0
    mov r0, 1
    exit
"""
NO_ROUND_HELPERS = {
    "bpf_loop": ("mov r1, 10", 181, "r2"),  # a count of 10 may still mean no call (flags, a failure)
    "bpf_for_each_map_elem": ("lddw r1, map:M", 164, "r4"),  # an empty map
}


@pytest.mark.parametrize("helper", NO_ROUND_HELPERS)
@pytest.mark.parametrize("before", [1 << 20, 8])
def test_the_code_after_a_callback_helper_is_verified_without_a_round_too(helper: str, before: int) -> None:
    """As the kernel: the path after the call is verified from the state before it as well (it
    was verified only from the states callback rounds leave, so an unsafe value the callback
    overwrote reached a proven access when the helper called back no times)."""
    setup, hid, ctx = NO_ROUND_HELPERS[helper]
    m = HashMap(key_size=4, value_size=8, max_entries=4, name="M")
    vm = load(NO_ROUND.format(before=before, helper=setup, hid=hid, ctx=ctx), m)
    if before > 16:
        with pytest.raises(VerifierError, match=f"invalid read from stack r2 off={before - 24} size=1") as err:
            vm.check()
        assert err.value.insn is not None and err.value.insn.startswith("ldxb r0")
        return
    vm.check()
    assert vm.execute(bytearray(8)) == vm.execute_jit(bytearray(8)) == 0


def test_a_callback_is_a_function_of_the_control_flow() -> None:
    flow = analyze(Program.from_bytes(assemble(loop_sum())))
    assert flow.callbacks == {2: 12}
    assert [fn.entry for fn in flow.functions] == [0, 12]
    assert 8 in flow.block_at  # the block after a callback helper's call starts anew


# -- bpf_for_each_map_elem ----------------------------------------------------------------------

# total = 0; n = bpf_for_each_map_elem(&M, cb, &total, 0); return n << 32 | total, where cb adds
# key * 1000 + value, doubles the value in place and stops at the element whose value is 30.
FOR_EACH = """
    stdw [r10-8], 0
    lddw r1, map:M
    lddw r2, func:cb
    mov r3, r10
    add r3, -8
    mov r4, 0
    call 164
    ldxdw r1, [r10-8]
    lsh r0, 32
    or r0, r1
    exit
cb:
    ldxw r5, [r2]
    mul r5, 1000
    ldxdw r0, [r3]
    add r5, r0
    lsh r0, 1
    stxdw [r3], r0
    ldxdw r0, [r4]
    add r0, r5
    stxdw [r4], r0
    mov r0, 0
    ldxdw r5, [r3]
    jne r5, 60, +1
    mov r0, 1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("verify", [True, False])  # unverified, each frame is cleared before the key is put in it
def test_for_each_visits_an_arrays_elements_in_order(engine: str, verify: bool) -> None:
    m = Array(value_size=8, max_entries=4, name="M")
    for i, v in enumerate((10, 20, 30, 40)):
        m[i] = v
    vm = load(FOR_EACH, m, verify=verify)
    assert run(vm, engine, bytearray(8)) == 3 << 32 | (10 + 1020 + 2030)
    assert [m[i] for i in range(4)] == [20, 40, 60, 40]


@pytest.mark.parametrize("engine", ENGINES)
def test_for_each_visits_every_hash_element_once(engine: str) -> None:
    m = HashMap(key_size=4, value_size=8, max_entries=8, name="M")
    for k, v in ((3, 1), (5, 2), (7, 4)):
        m[k] = v
    vm = load(FOR_EACH, m)
    assert run(vm, engine, bytearray(8)) == 3 << 32 | (3001 + 5002 + 7004)
    assert dict(m.items()) == {3: 2, 5: 4, 7: 8}


@pytest.mark.parametrize("engine", ENGINES)
def test_for_each_over_an_empty_map_calls_nothing(engine: str) -> None:
    m = HashMap(key_size=4, value_size=8, max_entries=8, name="M")
    assert run(load(FOR_EACH, m), engine, bytearray(8)) == 0


@pytest.mark.parametrize(("old", "new", "pc", "message"), [
    ("ldxdw r0, [r3]", "ldxdw r0, [r3+4]", 15, "invalid access to map value, value_size=8 off=4 size=8"),
    ("ldxw r5, [r2]", "ldxw r5, [r2+2]", 13, "invalid access to map key, key_size=4 off=2 size=4"),
    ("ldxw r5, [r2]", "stw [r2], 1\n    ldxw r5, [r2]", 13, "cannot write into the map key"),
])
def test_for_each_pointers_are_bounded_by_the_map(old: str, new: str, pc: int, message: str) -> None:
    m = Array(value_size=8, max_entries=4, name="M")
    with pytest.raises(VerifierError, match=message) as err:
        load(FOR_EACH.replace(old, new), m).check()
    assert err.value.pc == pc


# -- from C ------------------------------------------------------------------------------------

C_HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
C_SOURCE = """
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

struct sum { __u64 total; __u32 limit; };

static long add_index(__u32 i, void *data)
{
    struct sum *s = data;
    s->total += i;
    return i + 1 >= s->limit;
}

static long add_element(void *map, __u32 *key, __u64 *value, void *data)
{
    struct sum *s = data;
    s->total += *key * 100 + *value;
    *value += 1;
    return 0;
}

SEC("xdp") int callbacks(struct xdp_md *ctx)
{
    struct sum s = { .total = 0, .limit = 7 };
    long loops = bpf_loop(100, add_index, &s, 0);
    long elems = bpf_for_each_map_elem(&counts, add_element, &s, 0);
    return (int)(s.total + loops * 100000 + elems * 10000000);
}
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return c_builder(tmp_path_factory.mktemp("callbacks"), C_HEADER)


@pytest.mark.parametrize("engine", ENGINES)
def test_c_program_with_bpf_loop_and_for_each(build: Callable[[str], Path], engine: str) -> None:
    obj = load_elf(build(C_SOURCE))
    obj["counts"][2] = 5
    obj["counts"][4] = 6
    vm: VM = obj.programs["callbacks"].vm()
    action, _packet = vm.run_xdp(bytes(64), engine=engine)
    # bpf_loop: 0 + 1 + ... + 6 = 21 in 7 iterations; for_each: 205 + 406 over 2 elements.
    assert action == 21 + 205 + 406 + 7 * 100000 + 2 * 10000000
    assert dict(obj["counts"].items()) == {2: 6, 4: 7}


# An unverified program that points r10 at a chosen address before bpf_for_each_map_elem: the key
# must still go to the callback's own frame, never where r10 says.
R10_MOVED = """
    lddw r9, 0x41414141000
    mov r10, r9
    lddw r1, map:M
    lddw r2, func:cb
    mov r3, 0
    mov r4, 0
    call 164
    exit
cb:
    ldxw r0, [r2]
    mov r0, 0
    exit
"""


def test_for_each_key_goes_to_the_engines_frame_whatever_r10_holds() -> None:
    m = Array(value_size=8, max_entries=4, name="M")
    vm = load(R10_MOVED, m, verify=False)
    assert run(vm, "interp", bytearray(8)) == 4  # each element visited, its key in the real frame
    with pytest.raises(JitError, match="writes r10 cannot call bpf_for_each_map_elem"):
        vm.jit_compile()
