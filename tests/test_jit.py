"""What the JIT leaves out, and when it must not: bounds checks on frame-pointer accesses and in
versioned loops, budget counting in programs that cannot loop, and the instruction stencils of
the compile loop; the template store that spares later processes PeachPy."""

from __future__ import annotations

import contextlib
import marshal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf._ffi import ffi
from jitbpf.asm import assemble
from jitbpf.errors import BudgetExceeded, ExecutionError, VerifierError
from jitbpf.linux.maps import HashMap, ProgramArray
from jitbpf.vm import VM

STACK_TRAFFIC = """
    mov r1, 7
    stxdw [r10-8], r1
    stxw [r10-512], r1
    ldxdw r0, [r10-8]
    ldxw r2, [r10-512]
    add r0, r2
    exit
"""


def _listing(vm: VM) -> str:
    vm.jit_compile()
    return vm.jit_dump()


def test_frame_pointer_accesses_need_no_check() -> None:
    with VM(assemble(STACK_TRAFFIC), verify=False) as vm:
        assert vm.execute_jit() == vm.execute() == 14
        assert "stub: bounds check" not in _listing(vm)


@pytest.mark.parametrize("offset", ["+0", "-513", "-4"])
def test_accesses_past_the_frame_are_checked(offset: str) -> None:
    """[r10+0] and [r10-513] leave the frame; [r10-4] as a dword crosses its top."""
    source = f"mov r1, 7\nstxdw [r10{offset}], r1\nmov r0, 0\nexit"
    with VM(assemble(source), verify=False) as vm:
        assert "stub: bounds check" in _listing(vm)


@pytest.mark.parametrize("write", ["mov r10, r1", "ldxdw r10, [r1]", "lddw r10, 0x1000", "neg r10",
                                   "lock fetch add [r1], r10"])
def test_a_program_that_moves_r10_gets_checks_back(write: str) -> None:
    """Unverified programs may write r10; then [r10-8] can point anywhere and is checked, with the
    interpreter's error, not a crash."""
    source = f"{write}\nstxdw [r10-8], r1\nmov r0, 0\nexit"
    mem = bytearray(8)
    with VM(assemble(source), verify=False) as vm:
        assert "stub: bounds check" in _listing(vm)
        with pytest.raises(ExecutionError) as interp:
            vm.execute(bytearray(mem))
        with pytest.raises(ExecutionError) as jit:
            vm.execute_jit(bytearray(mem))
        assert jit.value.pc == interp.value.pc == (2 if write.startswith("lddw") else 1)


def _straight_line(n: int) -> str:
    return "\n".join(["mov r0, 0", *["add r0, 1"] * (n - 2), "exit"])


def test_acyclic_program_without_calls_does_not_count() -> None:
    with VM(assemble(_straight_line(50)), verify=False) as vm:
        assert "budget exhausted" not in _listing(vm)
        assert vm.execute_jit() == 48


def test_loops_and_small_budgets_count() -> None:
    loop = "mov r0, 0\nadd r0, 1\njlt r0, 10, -2\nexit"
    with VM(assemble(loop), verify=False) as vm:
        assert "budget exhausted" in _listing(vm)
    with VM(assemble(_straight_line(50)), verify=False, budget=10) as vm:
        assert "budget exhausted" in _listing(vm)
        with pytest.raises(BudgetExceeded):
            vm.execute_jit()


TAIL = """
    lddw r2, map:JMP
    mov r3, 0
    call 12
    mov r0, 1
    exit
"""


@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_tail_call_target_with_less_budget_than_its_length(engine: str) -> None:
    """The target of a tail call runs on what its caller left: fewer instructions than the
    target's length, so the JIT switches to the budget-counting twin of the target's code."""
    jmp = ProgramArray(max_entries=1, name="JMP")
    caller = VM(assemble(TAIL, maps={"JMP": 1}), budget=60, verify=False)
    caller.add_map(jmp, 1)
    caller.use_standard_helpers()
    target = VM(assemble(_straight_line(58)), budget=60, verify=False)
    jmp[0] = target
    run = caller.execute if engine == "interp" else caller.execute_jit
    with pytest.raises(BudgetExceeded) as err:
        run(bytearray(4))
    assert err.value.pc == 0


def test_stencils_copy_repeated_instructions_exactly() -> None:
    """Repeated instructions reuse their bytes; the listing shows the same code for each."""
    source = "\n".join(["mov r0, 0", *["add r0, r1", "ldxdw r2, [r10-8]", "stxdw [r10-8], r0"] * 3, "exit"])
    with VM(assemble(source), verify=False) as vm:
        dump = _listing(vm)
        assert vm.execute_jit() == vm.execute()
    blocks = dump.split("add r0, r1")[1:]
    first = [line.split(None, 1)[1] for line in blocks[0].splitlines()[1:2]]
    for block in blocks[1:]:
        assert [line.split(None, 1)[1] for line in block.splitlines()[1:2]] == first


@pytest.mark.parametrize("source", [
    "mov r10, r1\nstxdw [r10-8], r1\nmov r0, 0\nexit",  # a bounds-checked store: stubs, the walker
    "mov r6, 3\nloop:\nmov r1, r6\ncall 1\nsub r6, 1\njne r6, 0, loop\nexit",  # a helper call in a loop
    "lddw r0, 0x123456789\nldxb r1, [r1+2]\nadd r0, r1\nexit",
])
def test_replayed_code_is_the_code_emitted(source: str) -> None:
    """Entry points and runtime routines emitted once are replayed by later compiles (their
    internal branches already resolved): the code, entries, marks and pcs come out the same."""
    from jitbpf.jit.encoding import Assembler
    from jitbpf.jit.target import CompileOptions, HelperTable
    from jitbpf.jit.x86_64 import X86_64

    asm = Assembler()
    compiled = []
    for _ in range(2):
        with VM(assemble(source), verify=False, allow_loops=True) as vm:
            options = CompileOptions(vm.resolve_lddw, frozenset(), HelperTable(0x1000, 16, 0x2000))
            compiled.append(X86_64(asm, vm.flow, options).compile())
    first, second = compiled
    assert second == first
    assert second.pcs == first.pcs and len(second.pcs) == source.count("\n") + 1 - source.count(":")


# --- loop versioning ---------------------------------------------------------------------------

def _outcome(run: Callable[[bytearray], int], mem: bytearray) -> tuple[str, int | None, int | None]:
    """r0, or the error's kind and message (up to its host address), pc and address (relative to
    mem: the engines run on copies)."""
    base = int(ffi.cast("uintptr_t", ffi.from_buffer(mem)))
    try:
        return ("ok", run(mem), None)
    except ExecutionError as exc:
        what = f"{type(exc).__name__}: {exc.message.partition(' (address ')[0]}"
        return (what, exc.pc, None if exc.address is None else exc.address - base)


def _both(source: str, mem: bytes, budget: int = 100_000) -> tuple[tuple[str, int | None, int | None], bytes, str]:
    """Interpreter and JIT outcomes (which must agree) and memory afterwards; the listing."""
    with VM(assemble(source), verify=False, allow_loops=True, budget=budget) as vm:
        a, b = bytearray(mem), bytearray(mem)
        interp = _outcome(vm.execute, a)
        jit = _outcome(vm.execute_jit, b)
        assert jit == interp
        assert a == b
        return jit, bytes(b), _listing(vm)


BYTE_SUM = """
    mov r0, 0
    mov r3, r1
    mov r4, r1
    add r4, r2
    {start}
    {bound}
loop:
    ldxb r5, [r3]
    add r0, r5
    add r3, 1
    jlt r3, r4, loop
    exit
"""


def test_a_versioned_loop_maps_its_slots_to_the_first_copy() -> None:
    """The listing's pcs: every instruction once, ascending; the loop's first slot at its range
    check (where jumps to it land), the others in the unchecked copy, which comes first."""
    with VM(assemble(BYTE_SUM.format(start="", bound="")), verify=False, allow_loops=True, budget=100_000) as vm:
        vm.jit_compile()
        assert vm._jit is not None
        compiled = vm._jit.compiled
    pcs = compiled.pcs
    assert [pc for _off, pc in pcs] == list(range(len(vm.program)))
    assert [off for off, _pc in pcs] == sorted({off for off, _pc in pcs})
    marks = {text.split(" of ")[0].split(",")[0]: off for off, text, _pc in compiled.marks if text.startswith("loop: ")}
    offset = {pc: off for off, pc in pcs}
    loop = 4  # the slot of `loop:`
    assert offset[loop] == marks["loop: range check"]
    assert all(marks["loop: unchecked copy"] < offset[pc] < marks["loop: checked copy"] for pc in range(loop + 1, 8))


@pytest.mark.parametrize("before", range(6))
def test_a_versioned_loop_starts_on_a_32_byte_boundary(before: int) -> None:
    """However long the code before it, the unchecked copy of a loop starts 32-byte aligned in
    the code (whose pages are aligned): a short loop lies in one fetch block."""
    source = BYTE_SUM.format(start="\n".join(["mov r6, 1", "lddw r7, 0x123456789"][i % 2] for i in range(before)),
                             bound="")
    with VM(assemble(source), verify=False, allow_loops=True, budget=100_000) as vm:
        vm.jit_compile()
        assert vm._jit is not None
        compiled = vm._jit.compiled
        assert vm.execute_jit(bytearray(range(1, 101))) == sum(range(1, 101))
    unchecked = [off for off, text, _pc in compiled.marks if text.startswith("loop: unchecked copy")]
    assert compiled.blocks % 32 == 0 and len(unchecked) == 1 and unchecked[0] % 32 == 0


@pytest.mark.parametrize("back_edge", ["jlt r3, r4, loop", "jgt r4, r3, loop"])
def test_a_walking_loop_runs_unchecked_inside_mem(back_edge: str) -> None:
    source = BYTE_SUM.format(start="", bound="").replace("jlt r3, r4, loop", back_edge)
    outcome, _mem, dump = _both(source, bytes(range(1, 101)))
    assert outcome == ("ok", sum(range(1, 101)), None)
    assert "loop: unchecked copy" in dump and "loop: checked copy" in dump
    for out_of_mem in ("add r4, 1", "sub r3, 1"):
        _both(source.replace("mov r0, 0", f"mov r0, 0\n{out_of_mem}", 1), bytes(range(1, 101)))


@pytest.mark.parametrize("body", [
    "ldxb r5, [r3]\nadd r3, r6\njlt r3, r4, loop",             # the step is not a constant
    "ldxb r5, [r3]\nadd r3, 1\nadd r4, 0\njlt r3, r4, loop",  # the bound is written in the loop
    "ldxb r5, [r3]\nadd r3, 1\njslt r3, r4, loop",             # a signed compare
    "ldxb r5, [r3-1]\nadd r3, 1\njlt r3, r4, loop",            # an access below the pointer
])
def test_loops_of_other_shapes_are_not_versioned(body: str) -> None:
    source = f"mov r0, 0\nmov r6, 1\nmov r3, r1\nadd r3, 1\nmov r4, r1\nadd r4, r2\nloop:\n{body}\nexit"
    *_, dump = _both(source, bytes(range(1, 101)))
    assert "loop: unchecked copy" not in dump


AFTER_STEP = """
    mov r0, 0
    mov r3, r1
    mov r4, r1
    add r4, r2
loop:
    add r3, 2
    ldxh r5, [r3]           ; reads the next pair: past the end on the last pass
    add r0, r5
    stb [r3+1], 7
    jlt r3, r4, loop
    exit
"""


def test_accesses_after_the_step_count_the_step() -> None:
    outcome, _mem, _dump = _both(AFTER_STEP, bytes(64))
    assert outcome[0].startswith("AccessError: ")  # the final pass reads at mem + 64
    assert "past the end of the 64-byte input" in outcome[0]


@settings(max_examples=200, deadline=None)
@given(start=st.integers(-12, 40), bound=st.integers(-12, 72), step=st.integers(1, 9),
       accesses=st.lists(st.tuples(st.booleans(), st.sampled_from([1, 2, 4, 8]), st.integers(0, 12),
                                   st.booleans()), min_size=1, max_size=4),
       budget=st.integers(1, 400) | st.just(100_000))
def test_versioned_loops_agree_with_the_interpreter(start: int, bound: int, step: int,
                                                    accesses: list[tuple[bool, int, int, bool]], budget: int) -> None:
    """Random walks (start and bound around mem's 64 bytes, any stride, loads and stores before
    and after the step) give the interpreter's result, error and memory; with budgets that run
    out before, inside or just after the loop (charged on entry when it is walked unchecked),
    at the same instruction."""
    suffix = {1: "b", 2: "h", 4: "w", 8: "dw"}
    before: list[str] = []
    after: list[str] = []
    for is_store, size, off, late in accesses:
        line = f"stx{suffix[size]} [r3+{off}], r0" if is_store else f"ldx{suffix[size]} r5, [r3+{off}]\nadd r0, r5"
        (after if late else before).append(line)
    source = "\n".join([
        "mov r0, 1", "mov r3, r1", f"add r3, {start}", "mov r4, r1", f"add r4, {bound}", "loop:",
        *before, f"add r3, {step}", *after, "jlt r3, r4, loop", "mov r6, r0", "add r6, 1", "mov r0, r6", "exit",
    ])
    _both(source, bytes(range(64)), budget)


# --- registers kept across helper calls --------------------------------------------------------

def _pushes_at(vm: VM, pc: int) -> int:
    """push instructions in the listing of the eBPF instruction at ``pc``."""
    lines = _listing(vm).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{pc}:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    0"))
    return sum(1 for line in lines[start + 1:end] if "push " in line)


KEEPS = """
    mov r1, 1
    mov r2, 2
    mov r3, 3
    mov r4, 4
    mov r5, 5
    call 0
    {after}
    exit
"""


@pytest.mark.parametrize(("after", "expected"), [
    ("add r0, r1\nadd r0, r2\nadd r0, r3\nadd r0, r4\nadd r0, r5", 15 + 7),  # all five read again
    ("mov r1, 0\nadd r0, r3", 3 + 7),  # r3 read; r1 written first; the rest dead
    ("jeq r0, 7, +1\nmov r0, r5\nadd r0, r2", 2 + 7),  # read on one path only: still kept
])
def test_registers_read_after_a_helper_call_survive_it(after: str, expected: int) -> None:
    def clobbering(*_: int) -> int:
        return 7

    source = KEEPS.format(after=after)
    with VM(assemble(source), verify=False) as vm:
        vm.register_helper(0, clobbering)
        assert vm.execute_jit() == vm.execute() == expected


def test_dead_registers_are_not_saved_around_calls() -> None:
    counts = []
    for after in ("add r0, r1\nadd r0, r2\nadd r0, r3\nadd r0, r4\nadd r0, r5", "add r0, 1"):
        with VM(assemble(KEEPS.format(after=after)), verify=False) as vm:
            vm.register_helper(0, lambda *_: 7)
            counts.append(_pushes_at(vm, 5))
    assert counts[0] == 6 and counts[1] == 2  # five arguments and the budget; the budget twice (alignment)


# --- native helpers and unverified programs ----------------------------------------------------

HOSTILE = [
    "mov r2, 0\nlddw r1, map:M\ncall 1\nexit",                      # NULL key
    "mov r2, 1234\nlddw r1, map:M\ncall 1\nexit",                   # wild key
    "mov r1, 77\nmov r2, r10\nadd r2, -4\ncall 1\nexit",            # not a map
    "stw [r10-4], 1\nlddw r1, map:M\nmov r2, r10\nadd r2, -4\nmov r3, 99\nmov r4, 0\ncall 2\nexit",  # wild value
    "mov r1, 4096\nmov r2, 0\ncall 132\nmov r0, 0\nexit",            # wild ring buffer sample
    "mov r1, 0\nmov r2, 64\ncall 16\nexit",                          # NULL output buffer
]


@pytest.mark.parametrize("source", HOSTILE)
def test_unverified_pointers_to_native_helpers_are_checked(source: str) -> None:
    """C helpers trust their pointers; an unverified program reaches them through the checked
    Python side instead: the interpreter's error, not a crash."""
    m = HashMap(key_size=4, value_size=4, max_entries=4, name="M")
    with VM(assemble(source, maps={"M": 1}), verify=False) as vm:
        vm.add_map(m, 1)
        vm.use_standard_helpers()
        errors = []
        for run in (vm.execute, vm.execute_jit):
            with pytest.raises(ExecutionError) as err:
                run(bytearray(8))
            errors.append((err.value.pc, str(err.value)))
        assert errors[0] == errors[1]


def test_verified_programs_call_native_helpers() -> None:
    m = HashMap(key_size=4, value_size=4, max_entries=4, name="M")
    source = "stw [r10-4], 1\nlddw r1, map:M\nmov r2, r10\nadd r2, -4\ncall 1\nmov r0, 0\nexit"
    for verify in (True, False):
        with VM(assemble(source, maps={"M": 1}), verify=verify) as vm:
            vm.add_map(m, 1)
            vm.use_standard_helpers()
            vm.jit_compile()
            assert vm.execute_jit() == 0
            assert vm._jit is not None and vm._jit.batchable is verify


def test_ring_buffer_samples_are_checked_by_the_verifier_or_at_run_time() -> None:
    """bpf_ringbuf_submit's sample must be a record the program reserved: the verifier refuses any
    other pointer, and an unverified program calls the checked Python side with it."""
    from jitbpf.linux.maps import RingBuf

    rb = RingBuf(max_entries=4096, name="RB")
    source = "lddw r1, map:RB\nmov r1, 4096\nmov r2, 0\ncall 132\nmov r0, 0\nexit"
    for verify in (True, False):
        with VM(assemble(source, maps={"RB": 1}), verify=verify) as vm:
            vm.add_map(rb, 1)
            vm.use_standard_helpers()
            for run in (vm.execute, vm.execute_jit):
                with pytest.raises(VerifierError if verify else ExecutionError,
                                   match="must be a reference acquired earlier" if verify else "not a reserved"):
                    run()


@pytest.mark.parametrize("source", [
    "mov r2, 4096\ncall 16\nmov r0, 0\nexit",                  # comm into mem, far past its 16 bytes
    "lddw r1, map:M\nmov r2, r1\nmov r1, 0\nmov r4, 5\ncallx r4\nmov r0, 0\nexit",  # callx: id at run time
])
def test_verified_calls_with_unproven_pointers_go_through_python(source: str) -> None:
    """The verifier cannot bound a plain program's mem (nor check a callx's target): those calls
    reach the helper's checked Python side, never a C helper that would write past the buffer."""
    m = HashMap(key_size=4, value_size=4, max_entries=4, name="M")
    with VM(assemble(source, maps={"M": 1})) as vm:
        vm.add_map(m, 1)
        vm.use_standard_helpers()
        for run in (vm.execute, vm.execute_jit):
            mem = bytearray(16)
            with contextlib.suppress(ExecutionError):
                run(mem)
            assert len(mem) == 16


@pytest.mark.parametrize("seed", [1, 2])
def test_hostile_helper_calls_never_crash(seed: int) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "tests.hostile_helpers", str(seed), "600"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "600 programs" in done.stdout


def test_helpers_registered_after_compiling_are_not_trusted() -> None:
    """The verification covered the helpers of its time: a C helper that takes pointers and is
    registered later runs through its checked Python side."""
    m = HashMap(key_size=4, value_size=4, max_entries=4, name="M")
    source = "stw [r10-4], 1\nlddw r1, map:M\nmov r2, r10\nadd r2, -4\ncall 1\nmov r0, 0\nexit"
    with VM(assemble(source, maps={"M": 1})) as vm:
        vm.add_map(m, 1)
        vm.use_standard_helpers()
        vm.jit_compile()
        assert vm._jit is not None and vm._jit.batchable
        vm.register_helper(vm.helpers[1])
        assert not vm._jit.batchable
        assert vm.execute_jit() == vm.execute() == 0


def test_perf_event_output_runs_as_c_for_verified_programs() -> None:
    """Its ctx argument is "ignored" (never read), so the verified call needs no distrust."""
    from jitbpf.linux.maps import PerfEventArray

    events = PerfEventArray(name="EV")
    source = ("stdw [r10-8], 42\nlddw r2, map:EV\nlddw r3, 0xffffffff\nmov r4, r10\nadd r4, -8\nmov r5, 8\n"
              "call 25\nmov r0, 0\nexit")
    with VM(assemble(source, maps={"EV": 1})) as vm:
        vm.add_map(events, 1)
        vm.use_standard_helpers()
        vm.jit_compile()
        assert vm._jit is not None and vm._jit.batchable
        assert vm.execute_jit(bytearray(4)) == 0
        assert len(events.read_events()) == 1


# -- the template store ------------------------------------------------------------------------------


def test_stored_templates_are_the_ones_encoded(tmp_path: Path) -> None:
    from jitbpf.jit.encoding import Assembler, TemplateStore

    store = TemplateStore(tmp_path)
    first = Assembler(store)
    shapes = [("mov", "rax", "i64"), ("mov", "d[r11+d8]", "eax"), ("jne", "rel32"), ("lock add", "q[r10]", "rdi")]
    holes = [1, 1, 1, 0]
    encoded = [first.encode(shape, *[0x12] * n) for shape, n in zip(shapes, holes, strict=True)]
    first.persist()
    second = Assembler(TemplateStore(tmp_path))
    assert len(second) == len(shapes)
    assert [second.cached(s) is not None for s in shapes] == [True] * len(shapes)
    assert [second.encode(shape, *[0x12] * n) for shape, n in zip(shapes, holes, strict=True)] == encoded


_GARBAGE = [b"", b"\x00\x01", b"not marshal", marshal.dumps([1, 2]),
            marshal.dumps({("mov",): (b"\x90", ((9, "i8", 1),))}),  # a hole past the code, no digest
            marshal.dumps({("mov", "eax", "i32"): (b"\xb8", ((1, "i32", 4),))})]


@pytest.mark.parametrize("garbage", _GARBAGE)
def test_a_store_that_does_not_check_out_is_ignored(tmp_path: Path, garbage: bytes) -> None:
    from jitbpf.jit.encoding import Assembler, TemplateStore

    store = TemplateStore(tmp_path)
    store.path.write_bytes(garbage)
    assert len(Assembler(store)) == 0


@pytest.mark.parametrize(("shape", "code", "hole"), [
    (("mov",), b"\x90", (9, "i8", 1)),  # a hole past the code
    (("mov", "eax", "i32"), b"\xb8", (1, "i32", 4)),  # a hole that runs past the code
])
def test_a_stored_template_that_does_not_check_out_is_not_used(tmp_path: Path, shape: tuple[str, ...],
                                                               code: bytes, hole: tuple[int, str, int]) -> None:
    """Entries are checked when first used (the file's digest being right): a bad one, and
    every entry not used before it, are encoded afresh."""
    from jitbpf.jit.encoding import Assembler, Hole, HoleKind, Template, TemplateStore

    good = ("mov", "rax", "i64")
    encoded = Assembler().encode(good, 7)
    bad = Template(shape, code, (Hole(hole[0], HoleKind(hole[1]), hole[2]),))
    TemplateStore(tmp_path).save({shape: bad, good: Assembler().template(good)})
    second = Assembler(TemplateStore(tmp_path))
    assert len(second) == 2
    assert second.cached(shape) is None
    assert second.cached(good) is None and len(second) == 0
    assert second.encode(good, 7) == encoded


def test_a_fresh_process_with_stored_templates_does_not_import_peachpy() -> None:
    code = textwrap.dedent("""
        import sys, jitbpf
        vm = jitbpf.VM(jitbpf.assemble("ldxw r0, [r1]\\nadd r0, 1\\nexit"))
        assert vm.execute_jit(bytearray(4)) == 1
        print("peachpy" in sys.modules)
    """)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert runs[1].stdout.strip() == "False"
