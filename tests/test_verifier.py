"""Verifier tests: a minimal program per rejection rule, real-world shapes that must pass, the
conformance programs, and a soundness property (accepted programs never fault on memory)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf.cfg import analyze
from jitbpf.conformance import DataFile, data_files, parse_data_file
from jitbpf.errors import BpfError, ExecutionError, VerifierError
from jitbpf.helpers import Helper, conformance_helpers
from jitbpf.interpreter import Env, Translator, run
from jitbpf.isa import STACK_SIZE, Program
from jitbpf.linux.maps import BPF_F_WRONLY_PROG, MapType
from jitbpf.memory import MemoryMap, region_of
from jitbpf.verifier import ArgType, ContextSpec, RetType, VerifyResult, verify
from jitbpf.vm import VM

from .conftest import conformance_root

asm = pytest.importorskip("jitbpf.asm", reason="the assembler (jitbpf.asm) is not available")


def prog(text: str, maps: Mapping[str, int] | None = None) -> bytes:
    code: bytes = asm.assemble(text, maps=maps)
    return code


# --- fixtures of the tests -----------------------------------------------------------------------

XDP = ContextSpec(size=24, readable=((0, 24),), fields={0: "packet", 4: "packet_end", 8: "packet_meta"},
                  ret_range=(0, 4))
XDP_RW = ContextSpec(size=24, readable=((0, 24),), writable=((0, 24),),
                     fields={0: "packet", 4: "packet_end", 8: "packet_meta"}, ret_range=(0, 4))
CTX16 = ContextSpec(size=16, readable=((0, 16),), writable=((0, 16),))
SK_MSG = ContextSpec(size=80, readable=((0, 72),), fields={0: "packet", 8: "packet_end"},
                     field_sizes={0: 8, 8: 8})  # sk_msg_md: data and data_end are 64-bit pointers


class FakeMap:
    """Just what the verifier reads of a map."""

    key_size = 4
    value_size = 16
    max_entries = 8
    map_type: str | MapType = "array"
    flags = 0


def _never(*_args: int) -> int:
    raise AssertionError("not called by these tests")


class FakeLockMap(FakeMap):
    """An array whose 16-byte values hold a struct bpf_spin_lock at offset 4."""

    spin_lock_off = 4


class FakeWriteOnlyMap(FakeMap):
    """An array programs may write but not read (BPF_F_WRONLY_PROG)."""

    flags = BPF_F_WRONLY_PROG


class FakeProgArray(FakeMap):
    """A program array: only bpf_tail_call takes it."""

    map_type = MapType.PROG_ARRAY


MAPS = {3: FakeMap(), 5: FakeLockMap(), 6: FakeWriteOnlyMap(), 7: FakeProgArray()}
LOOKUP = Helper(1, "map_lookup_elem", _never, args=("map", "key"), ret="map_value_or_null")
MEMFROB = Helper(2, "memfrob", _never, args=("mem", "size"))
TAKES_SCALAR = Helper(3, "takes_scalar", _never, args=("scalar",))
TAKES_CTX = Helper(4, "takes_ctx", _never, args=("ctx", "scalar"))
FILL = Helper(5, "fill", _never, args=("uninit_mem", "size_or_zero"), ret="void")
LOCK = Helper(6, "spin_lock", _never, args=("spin_lock",), ret="void")
UNLOCK = Helper(7, "spin_unlock", _never, args=("spin_unlock",), ret="void")
READ_OR_NULL = Helper(8, "read_or_null", _never, args=("mem_or_null", "size_or_zero"))
HELPERS = {h.id: h for h in (LOOKUP, MEMFROB, TAKES_SCALAR, TAKES_CTX, FILL, LOCK, UNLOCK, READ_OR_NULL)}

LOOKUP_KEY = """
    stw [r10-4], 0
    mov r2, r10
    add r2, -4
    lddw r1, map:m
    call 1
"""


# --- one minimal program per rejection rule --------------------------------------------------------

# The cases are data files (tests/verifier/GROUP/RULE.data, the conformance format): the program,
# its load options, the expected message fragment and the pc of the fault.
CASES = Path(__file__).parent / "verifier"
CONTEXTS = {"xdp": XDP, "xdp-writable": XDP_RW, "ctx16": CTX16, "sk-msg": SK_MSG}  # "context:" option values


def case_options(case: DataFile) -> dict[str, Any]:
    """``verify()`` keyword arguments from a case's options (``allow-loops: yes``, ``budget: 2000``)."""
    kwargs: dict[str, Any] = {}
    for key, value in case.options.items():
        name = key.replace("-", "_")
        if name == "context":
            kwargs[name] = CONTEXTS[value]
        elif value in ("yes", "no"):
            kwargs[name] = value == "yes"
        else:
            kwargs[name] = int(value, 0)
    return kwargs


def rejection_cases() -> list[tuple[str, str | bytes, dict[str, Any], str, int | None]]:
    """(id, program, verify() keyword arguments, fragment of the message, pc of the fault)."""
    cases = []
    for path in data_files(CASES):
        case = parse_data_file(path)
        source = case.raw if case.raw is not None else case.asm
        assert source is not None and case.error is not None, f"{path}: needs a program and an error"
        cases.append((path.relative_to(CASES).with_suffix("").as_posix(), source, case_options(case), case.error,
                      case.error_pc))
    return cases


REJECTIONS = rejection_cases()


@pytest.mark.parametrize(("source", "kwargs", "fragment", "pc"), [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejection(source: str | bytes, kwargs: dict[str, Any], fragment: str, pc: int | None) -> None:
    code = source if isinstance(source, bytes) else prog(source, maps={"m": 3, "n": 4, "l": 5, "w": 6, "p": 7})
    options: dict[str, Any] = {"helpers": HELPERS, "maps": MAPS, **kwargs}
    with pytest.raises(VerifierError) as info:
        verify(code, **options)
    err = info.value
    assert fragment in err.message
    assert err.pc == pc
    if pc is not None:
        assert err.insn, "the instruction is disassembled"
        assert f"at PC {pc}" in str(err)


def test_every_rule_has_a_distinct_program() -> None:
    names = [r[0] for r in REJECTIONS]
    assert len(names) == len(set(names))
    assert len({r[1] if isinstance(r[1], bytes) else r[1].strip() for r in REJECTIONS}) >= len(names) - 2


# --- acceptance ---------------------------------------------------------------------------------------

def fib(r1: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
    """The seed book's helper: the r1-th Fibonacci number (r1 >= 2)."""
    i, j = 1, 1
    for _ in range(r1 - 2):
        i, j = j, i + j
    return j


BOOK = [
    ("add", "mov32 r0, 1\nmov32 r1, 2\nadd r0, r1\nexit", b"", 3),
    ("add-context", "ldxw r0, [r1]\nldxw r1, [r1+4]\nadd r0, r1\nbe32 r0\nexit",
     bytes([0, 0x22, 0, 0, 0, 0, 0x33, 0]), 0x00223300),
    ("fibonacci", "mov r2, r1\nldxw r1, [r1]\ncall 0\nstxw [r2+4], r0\nexit", bytes([10, 0, 0, 0, 0, 0, 0, 0]), 0x37),
]


@pytest.mark.parametrize(("source", "mem", "expected"), [b[1:] for b in BOOK], ids=[b[0] for b in BOOK])
def test_book_examples_verify_and_run(source: str, mem: bytes, expected: int) -> None:
    code = prog(source)
    result = verify(code, helpers=[Helper(0, "fib", fib)])
    assert isinstance(result, VerifyResult)
    assert result.proven == frozenset()  # raw memory of unknown size: the runtime checks stay
    vm = VM(code, helpers=[Helper(0, "fib", fib)])  # verifies by default
    buf = bytearray(mem)
    assert vm.execute(buf if mem else None) == expected


def test_book_fibonacci_keeps_r1_to_r5_across_helper_calls() -> None:
    # r2 is read after the call: in this VM helpers leave r1-r5 alone (rbpf semantics).
    verify(prog("mov r2, r1\nldxw r1, [r1]\ncall 0\nstxw [r2+4], r0\nexit"), helpers=[Helper(0, "fib", fib)])


PARSER = """
    ldxw r2, [r1+0]          ; data
    ldxw r3, [r1+4]          ; data_end
    mov r4, r2
    add r4, 14
    jgt r4, r3, drop         ; Ethernet header in the packet?
    ldxh r5, [r2+12]
    jne r5, 0x8, pass        ; IPv4 (0x0800, big-endian)
    mov r4, r2
    add r4, 34
    jgt r4, r3, drop         ; IPv4 header in the packet?
    ldxb r6, [r2+23]
    jeq r6, 17, drop         ; UDP
    ldxb r6, [r2+14]
    and r6, 0xf
    lsh r6, 2                ; IHL in bytes: 0..60
    mov r4, r2
    add r4, r6               ; variable offset: the transport header
    mov r7, r4
    add r7, 18
    jgt r7, r3, drop
    ldxh r0, [r4+16]         ; after the bounds check through the copy
pass:
    mov r0, 2
    exit
drop:
    mov r0, 1
    exit
"""

PARSER_REVERSED = """
    ldxw r2, [r1]
    ldxw r3, [r1+4]
    mov r4, r2
    add r4, 14
    jle r4, r3, ok           ; the bounds check the other way round
    mov r0, 1
    exit
ok:
    ldxh r0, [r2+12]
    and r0, 3
    exit
"""

PARSER_END_FIRST = """
    ldxw r2, [r1]
    ldxw r3, [r1+4]
    mov r4, r2
    add r4, 20
    jlt r3, r4, out          ; end < pkt + 20 ?
    ldxw r0, [r2+16]
    jge r3, r4, keep         ; end >= pkt + 20 (always, here)
out:
    mov r0, 0
    exit
keep:
    ldxb r0, [r2+19]
    and r0, 3
    exit
"""

META = """
    ldxw r2, [r1+8]          ; data_meta
    ldxw r3, [r1]            ; data
    mov r4, r2
    add r4, 4
    jgt r4, r3, out
    ldxw r0, [r2]
    and r0, 3
    exit
out:
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("source", [PARSER, PARSER_REVERSED, PARSER_END_FIRST, META],
                         ids=["parser", "reversed-check", "end-first", "metadata"])
def test_header_parsers_with_data_end_checks(source: str) -> None:
    code = prog(source.replace(";", "#"))
    result = verify(code, context=XDP)
    program = Program.from_bytes(code)
    loads = {pc for pc, _insn, info in program if info.mnemonic.startswith("ldx")}
    assert loads <= result.proven  # every load, of the context or the packet, is proven in bounds


PACKET_LENGTH = """
    ldxw r2, [r1]            ; data
    ldxw r3, [r1+4]          ; data_end
    ldxw r4, [r1+8]          ; data_meta
    mov r5, r3
    sub r5, r2               ; the packet's length: an unknown scalar
    mov r6, r2
    sub r6, r4               ; the metadata's length
    mov r0, r5
    add r0, r6
    and r0, 3
    exit
"""

PACKET_OFFSETS = """
    ldxw r2, [r1]
    ldxw r6, [r1+16]
    and r6, 0x3c             ; 0..60
    mov r4, r2
    add r4, 14
    add r4, r6
    sub r4, r2               ; exactly r6 + 14: both point into the packet
    mov r5, r10
    add r5, -80
    add r5, r4               ; r10-80 + [14, 74]
    stb [r5], 0
    mov r7, r2
    add r7, 20
    sub r7, r2               ; the constant 20
    mov r5, r10
    neg r7
    add r5, r7
    stb [r5], 0
    mov r0, 0
    exit
"""


def test_pointer_differences_within_the_packet_are_scalars() -> None:
    verify(prog(PACKET_LENGTH.replace(";", "#")), context=XDP)
    result = verify(prog(PACKET_OFFSETS.replace(";", "#")), context=XDP)
    assert {10, 17} <= result.proven  # the stack stores at offsets computed from packet differences


def test_stack_pointer_difference_is_exact() -> None:
    code = prog("mov r2, r10\nadd r2, -24\nmov r3, r10\nadd r3, -8\nsub r3, r2\nmov r4, r10\nneg r3\n"
                "add r4, r3\nstb [r4], 0\nmov r0, 0\nexit")
    assert 8 in verify(code).proven  # r3 is the constant 16


SK_MSG_PARSER = """
    ldxdw r2, [r1]           ; data, a 64-bit field
    ldxdw r3, [r1+8]         ; data_end
    ldxw r0, [r1+16]         ; family, a 32-bit field
    mov r4, r2
    add r4, 5
    jgt r4, r3, out
    ldxb r0, [r2+4]
out:
    exit
"""


def test_64_bit_packet_fields_load_with_64_bit_loads() -> None:
    code = prog(SK_MSG_PARSER.replace(";", "#"))
    result = verify(code, context=SK_MSG)
    assert {0, 1, 2, 6} <= result.proven
    with pytest.raises(VerifierError, match="which is 4 bytes"):  # the same load of a 32-bit field
        verify(code, context=XDP)


def test_map_lookup_with_null_check() -> None:
    source = LOOKUP_KEY + "jeq r0, 0, out\nldxdw r1, [r0+8]\nstw [r0], 1\nmov r0, 1\nexit\nout:\nmov r0, 0\nexit"
    code = prog(source, maps={"m": 3})
    result = verify(code, helpers=HELPERS, maps=MAPS)
    assert {7, 8} <= result.proven
    assert {0} <= result.proven  # the key's store on the stack
    unknown = verify(code, helpers=HELPERS)  # maps unknown: allowed, but not proven
    assert not {7, 8} & unknown.proven


@pytest.mark.parametrize("source", [
    LOOKUP_KEY.replace("map:m", "map:w") + "jeq r0, 0, +1\nstdw [r0+8], 1\nmov r0, 0\nexit",  # writes go
    "mov r1, 0\nmov r2, 0\ncall 8\nmov r0, 0\nexit",  # NULL and size 0 where the helper takes NULL
    "stdw [r10-8], 0\nmov r1, r10\nadd r1, -8\nmov r2, 0\ncall 5\nmov r0, 0\nexit",  # a pointer and size 0
    # equal to a pointer that is not null, a possibly-null one is not null either
    LOOKUP_KEY + "mov r6, r0\n" + LOOKUP_KEY + "mov r7, r0\njeq r6, 0, +2\njne r6, r7, +1\nldxw r0, [r7+0]\n"
    "mov r0, 0\nexit",
    # r1 = r0 + 4 stays linked to r0: r1 >= 10 makes r0 >= 6, and the division dead code
    "ldxb r0, [r1+0]\nmov r1, r0\nadd r1, 4\njlt r1, 10, +2\njge r0, 6, +1\ndiv r0, 0\nmov r0, 0\nexit",
    # ... and a jmp32 test remembered in the low half decides a later one against a register
    "ldxdw r0, [r1+0]\njlt32 r0, 4, +2\nmov32 r2, 3\njeq32 r0, r2, +1\nja +1\ndiv r0, 0\nmov r0, 0\nexit",
    # a bounded scalar spilled by a 4-byte store at a slot's start keeps its bounds for a 4-byte fill
    "ldxb r4, [r1+0]\nstxw [r10-8], r4\nldxw r4, [r10-8]\nmov r3, r10\nadd r3, -264\nadd r3, r4\n"
    "stb [r3+0], 1\nmov r0, 0\nexit",
])
def test_accepted_at_the_edge_of_a_rule(source: str) -> None:
    verify(prog(source, maps={"m": 3, "w": 6}), helpers=HELPERS, maps=MAPS)


def test_map_null_check_applies_to_copies() -> None:
    source = LOOKUP_KEY + "mov r6, r0\njne r0, 0, +2\nmov r0, 0\nexit\nldxb r0, [r6+15]\nexit"
    verify(prog(source, maps={"m": 3}), helpers=HELPERS, maps=MAPS)


def test_helper_fills_uninitialised_memory() -> None:
    source = "mov r1, r10\nadd r1, -16\nmov r2, 16\ncall 5\nldxdw r0, [r10-16]\nldxdw r1, [r10-8]\nexit"
    verify(prog(source), helpers=HELPERS)


LOOP = "mov r0, 0\nmov r1, 10\nloop:\nadd r0, r1\nsub r1, 1\njne r1, 0, loop\nexit"
STACK_LOOP = """
    stdw [r10-8], 0          ; i = 0 (on the stack)
    mov r0, 0
loop:
    ldxdw r1, [r10-8]
    mov r2, r10
    add r2, -64
    add r2, r1               ; a variable stack offset, bounded by the loop
    stb [r2], 1
    add r0, r1
    add r1, 1
    stxdw [r10-8], r1
    jlt r1, 32, loop
    exit
"""


def test_bounded_loop_needs_allow_loops() -> None:
    code = prog(LOOP)
    with pytest.raises(VerifierError, match="back-edge from insn 4 to 2"):
        verify(code)
    result = verify(code, allow_loops=True)
    assert result.insns_processed > 30  # ten iterations, followed one by one
    assert VM(code, allow_loops=True).execute() == 55
    with pytest.raises(VerifierError, match="back-edge"):
        VM(code).execute()


def test_bounded_loop_with_a_stack_counter_and_variable_offsets() -> None:
    code = prog(STACK_LOOP.replace(";", "#"))
    result = verify(code, allow_loops=True)
    assert 6 in result.proven  # stb [r2] with r2 in [r10-64, r10-33]
    assert VM(code, allow_loops=True).execute() == sum(range(32))


def test_loop_budget_follows_the_runtime_budget() -> None:
    code = prog("mov r0, 0\nmov r1, 1000\nloop:\nadd r0, 1\nsub r1, 1\njne r1, 0, loop\nexit")
    verify(code, allow_loops=True, budget=4000)
    with pytest.raises(VerifierError, match="loop may not terminate within the budget"):
        verify(code, allow_loops=True, budget=2000)


LOCAL_CALLS = """
    mov r1, r10
    add r1, -8
    stdw [r10-8], 5
    stdw [r10-16], 7
    call local double        ; doubles *r1 in the caller's frame
    ldxdw r0, [r10-8]
    ldxdw r1, [r10-16]
    add r0, r1
    exit
double:
    ldxdw r2, [r1]
    stxdw [r10-8], r2        ; its own stack
    ldxdw r3, [r10-8]
    add r2, r3
    stxdw [r1], r2
    mov r0, 0
    exit
"""


def test_local_calls() -> None:
    code = prog(LOCAL_CALLS.replace(";", "#"))
    result = verify(code)
    assert result.max_stack_depth == 24  # 16 bytes in main, 8 in the callee
    program = Program.from_bytes(code)
    memory = {pc for pc, _insn, info in program if info.mnemonic.startswith(("ldx", "st"))}
    assert memory <= result.proven
    assert VM(code).execute() == 17


def test_callee_result_registers_flow_back() -> None:
    # This VM shares r0-r5 with the callee: what it leaves in them is what the caller sees.
    verify(prog("call local f\nmov r0, r2\nexit\nf: mov r2, 3\nmov r0, 0\nexit"))


def test_proven_only_when_proven_on_every_path() -> None:
    head = "ldxb r3, [r1]\nmov r2, r10\nadd r2, -8\njgt r3, 5, +1\n"
    tail = "stb [r2], 1\nmov r0, 0\nexit"
    result = verify(prog(head + "mov r2, r1\n" + tail))
    assert 5 not in result.proven  # the stack on one path, the raw memory (unknown size) on the other
    assert 0 not in result.proven
    only_stack = verify(prog(head + "add r2, -16\n" + tail))
    assert 5 in only_stack.proven


def test_scalar_ranges_refined_on_both_edges() -> None:
    source = """
        ldxdw r3, [r1]
        jgt r3, 63, out
        mov r2, r10
        add r2, -64
        add r2, r3           ; r3 <= 63 on this edge
        stb [r2], 0
        jslt r3, 0, out      ; never taken: r3 is unsigned-bounded
        jset r3, 0x40, out   ; never taken either
        mov r0, 0
        exit
    out:
        mov r0, 1
        exit
    """
    result = verify(prog(source.replace(";", "#")))
    assert 5 in result.proven


def test_alu32_zero_extends() -> None:
    source = """
        ldxdw r3, [r1]
        mov32 r3, r3         ; upper half cleared
        rsh r3, 26           ; 0..63
        mov r2, r10
        add r2, -64
        add r2, r3
        stb [r2], 0
        mov r0, 0
        exit
    """
    assert 6 in verify(prog(source.replace(";", "#"))).proven


def test_jmp32_refines_values_that_fit_in_32_bits() -> None:
    source = """
        ldxw r3, [r1]
        jgt32 r3, 40, out
        mov r2, r10
        add r2, -64
        add r2, r3
        stb [r2], 0
    out:
        mov r0, 0
        exit
    """
    assert 5 in verify(prog(source)).proven


def test_spilled_pointers_survive_aligned_stores_only() -> None:
    ok = "mov r2, r10\nstxdw [r10-8], r2\nldxdw r3, [r10-8]\nstb [r3-16], 0\nmov r0, 0\nexit"
    verify(prog(ok))
    broken = "mov r2, r10\nstxdw [r10-8], r2\nstb [r10-8], 0\nldxdw r3, [r10-8]\nstb [r3-16], 0\nmov r0, 0\nexit"
    with pytest.raises(VerifierError, match=r"invalid mem access .scalar."):
        verify(prog(broken))


@pytest.mark.parametrize("proven", [1, 4, 8])
def test_a_spilled_packet_pointer_fills_back_whatever_its_range(proven: int) -> None:
    """A pointer's range is what it may reach (here: bytes of packet proven), not the width of a
    narrow spill as a scalar's is: with fewer than 8 proven, the fill came back a number."""
    text = (f"ldxw r2, [r1+4]\nldxw r1, [r1+0]\nmov r3, r1\nadd r3, {proven}\njgt r3, r2, out\n"
            "stxdw [r10-8], r1\nldxdw r1, [r10-8]\nldxb r0, [r1+0]\nmov r0, 2\nexit\nout:\nmov r0, 1\nexit")
    assert 7 in verify(prog(text), context=XDP).proven


def diamonds(n: int) -> str:
    lines = ["mov r6, 0", "mov r7, 0", "stdw [r10-8], 0"]
    for i in range(n):
        lines += [f"ldxb r3, [r1+{i % 64}]", f"jgt r3, {i % 200 + 20}, +4", "add r6, r3",
                  f"stxdw [r10-{16 + 8 * (i % 4)}], r6", "ldxdw r4, [r10-8]", "ja +3", "xor r7, r3",
                  f"stb [r10-{40 + i % 8}], 1", "and r7, 0xffff"]
    return "\n".join([*lines, "mov r0, r6", "add r0, r7", "exit"])


def test_pruning_keeps_branching_programs_linear() -> None:
    code = prog(diamonds(400))  # 2**400 paths
    start = time.process_time()
    result = verify(code)
    elapsed = time.process_time() - start
    assert result.states_pruned >= 400
    assert result.insns_processed <= 2 * len(Program.from_bytes(code))
    assert elapsed < 5


def test_merging_bounds_paths_that_differ_where_it_matters() -> None:
    # Every diamond sets a different bit of r6, which later becomes a stack offset: precise
    # values, 2**20 combinations; states are merged at the joins instead of followed apart.
    lines = ["mov r6, 0"]
    for i in range(20):
        lines += [f"ldxb r3, [r1+{i}]", "jgt r3, 100, +1", f"or r6, {1 << (i % 9)}"]
    lines += ["and r6, 0x1ff", "mov r2, r10", "add r2, -512", "add r2, r6", "stb [r2], 0", "mov r0, 0", "exit"]
    result = verify(prog("\n".join(lines)))
    assert result.insns_processed < 5000


# --- errors -------------------------------------------------------------------------------------

def test_error_log_holds_the_path_to_the_fault() -> None:
    source = "mov r6, 1\nldxb r3, [r1]\njgt r3, 5, +2\nmov r0, 0\nexit\nldxdw r0, [r10-8]\nexit"
    with pytest.raises(VerifierError) as info:
        verify(prog(source), log=True, privileged=False)
    log = info.value.log
    assert "0: mov r6, 1 ; r6=0x1" in log
    assert "2: jgt r3, 5, +2" in log
    assert log.count("\n") < 500
    with pytest.raises(VerifierError) as quiet:
        verify(prog(source), privileged=False)
    assert quiet.value.log == ""


def test_error_carries_pc_and_disassembly() -> None:
    with pytest.raises(VerifierError) as info:
        verify(prog("mov r0, 0\nldxw r0, [r10-4]\nexit"), privileged=False)
    err = info.value
    assert err.pc == 1
    assert err.insn == "ldxw r0, [r10-4]"
    assert str(err) == ("invalid read from stack off -4+0 size 4 through r10: uninitialised bytes "
                        "at PC 1: ldxw r0, [r10-4]")


def test_vm_verifies_by_default() -> None:
    code = prog("ldxdw r0, [r10-8]\nexit")
    with pytest.raises(VerifierError):
        VM(code, privileged=False).execute()
    assert VM(code, verify=False).execute() == 0  # the stack starts zeroed


PRIVILEGED_ONLY = [r for r in REJECTIONS if r[2].get("privileged") is False]


@pytest.mark.parametrize(("source", "kwargs"), [r[1:3] for r in PRIVILEGED_ONLY], ids=[r[0] for r in PRIVILEGED_ONLY])
def test_privileged_loader_accepts(source: str | bytes, kwargs: dict[str, Any]) -> None:
    """What only an unprivileged loader rejects (as the kernel: pointer leaks, never-written stack)."""
    code = source if isinstance(source, bytes) else prog(source, maps={"m": 3, "n": 4, "l": 5, "w": 6, "p": 7})
    verify(code, **{"helpers": HELPERS, "maps": MAPS, **kwargs, "privileged": True})


def test_non_null_map_value_compared_with_zero_is_decided() -> None:
    """After its null check a map value is never 0: the kernel does not walk the dead branch."""
    verify(prog("stdw [r10-8], 0\nmov r2, r10\nadd r2, -8\nlddw r1, map:m\ncall 1\njeq r0, 0, +2\n"
                "jne r0, 0, +1\nmov r10, 0\nmov r0, 0\nexit", maps={"m": 3}), helpers=HELPERS, maps=MAPS)


def test_32_bit_copy_of_a_32_bit_value_stays_linked() -> None:
    """``w3 = w2`` with r2's upper half zero: what a compare learns of r2 holds for r3 (dead branch)."""
    verify(prog("ldxw r2, [r1+12]\nmov32 r3, r2\njlt32 r2, 9, +2\nmov r0, 0\nexit\njlt r3, 9, +1\nmov r10, 0\n"
                "mov r0, 0\nexit"), context=XDP)


def test_never_written_stack_reads_as_zero_in_both_engines() -> None:
    """A privileged program may read stack it never wrote: both engines clear it first, every run."""
    vm = VM(prog("ldxdw r0, [r10-8]\nstdw [r10-8], 7\nldxw r1, [r10-16]\nadd r0, r1\nexit"))
    for _ in range(2):
        assert vm.execute() == 0
        assert vm.execute_jit() == 0


def test_api_inputs() -> None:
    text = "mov r0, 1\nexit"
    code = prog(text)
    program = Program.from_bytes(code)
    for form in (code, bytearray(code), program, list(program.insns)):
        assert verify(form).insns_processed == 2
    assert verify(code, helpers=[LOOKUP]) == verify(code, helpers={1: LOOKUP})


def test_declarations_are_checked() -> None:
    assert [a.value for a in ArgType] == ["scalar", "anything", "ignored", "map", "key", "value", "value_or_null",
                                         "mem",
                                         "mem_or_null", "size", "size_or_zero", "ctx", "uninit_mem", "uninit_value",
                                         "released",
                                         "uninit_long", "ctx_read", "ctx_or_null", "alloc_size", "zero",
                                         "callback", "stack_or_null", "spin_lock", "spin_unlock", "timer",
                                         "async_callback",
                                         "btf_object", "sock_common",
                                         "btf_sock_common", "btf_sock_common_or_null", "released_sock",
                                         "socket_or_null", "new_local_dynptr", "new_ringbuf_dynptr", "dynptr",
                                         "released_dynptr", "value_mem"]
    assert {r.value for r in RetType} == {"scalar", "map_value_or_null", "map_value", "void", "acquired_mem_or_null",
                                         "length_or_errno", "socket_or_null", "cast_socket_or_null",
                                         "cast_tcp_sock_or_null", "acquired_socket_or_null",
                                         "acquired_sock_common_or_null", "dynptr_mem_or_null"}
    with pytest.raises(ValueError, match="unknown pointer kind"):
        ContextSpec(size=8, fields={0: "pointer"})
    with pytest.raises(ValueError, match="4 or 8 bytes, not 2"):
        ContextSpec(size=8, fields={0: "packet"}, field_sizes={0: 2})
    with pytest.raises(ValueError, match="no pointer kind"):
        ContextSpec(size=8, fields={0: "packet"}, field_sizes={4: 4})
    with pytest.raises(ValueError, match="helper 9"):
        verify(prog("mov r0, 0\nexit"), helpers=[Helper(9, "bad", _never, args=("pointer",))])


def test_uninit_long_is_eight_writable_bytes_it_fills() -> None:
    fill = [Helper(7, "fill", _never, args=("uninit_long",))]
    verify(prog("mov r1, r10\nadd r1, -8\ncall 7\nldxdw r0, [r10-8]\nexit"), helpers=fill)
    with pytest.raises(VerifierError, match="stack"):
        verify(prog("mov r1, r10\nadd r1, -4\ncall 7\nmov r0, 0\nexit"), helpers=fill)
    with pytest.raises(VerifierError):
        verify(prog("mov r1, 0\ncall 7\nmov r0, 0\nexit"), helpers=fill)


def test_helpers_without_declarations_take_anything() -> None:
    # Conformance helpers declare nothing: any register, even an unwritten one, may be passed.
    verify(prog("mov r1, 1\ncall 3\nexit"), helpers=conformance_helpers(lambda: MemoryMap([])))


# --- the conformance programs ----------------------------------------------------------------

# Runnable programs without an expected error that the verifier rejects, and why.
KNOWN_REJECTIONS = {
    "ubpf/early-exit.data": "unreachable instruction",  # dead code after the first exit
    # turns the memory pointer into a loop bound
    "ubpf/mul-loop.data": "pointer arithmetic with <<= operator prohibited",
    "ubpf/mul-loop-memory-iterations.data": "loop may not terminate",  # loop bound read from memory
    # The kernel's rules: a constant divisor of zero and subtraction from the stack pointer.
    **{f"ubpf/{op}-by-zero-imm.data": "div by zero" for op in ("div", "div64", "mod", "mod64")},
    "ubpf/stack2.data": "subtraction from stack pointer prohibited",
    "ubpf/stack3.data": "subtraction from stack pointer prohibited",
    # ... and constant shifts out of range (the suite checks what engines do with them unverified).
    **{f"bpf_conformance/{op}{width}-imm-{k}.data": "invalid shift"
       for op in ("lsh", "rsh", "arsh") for width in (32, 64) for k in ("high", "neg")},
}
CONFORMANCE_BUDGET = 20_000  # enough for every loop in the suites; keeps the memory-bound loop quick


def _conformance_files(config: pytest.Config) -> list[tuple[Path, Path]]:
    root = conformance_root(config)
    return [] if root is None else [(root, p) for p in data_files(root)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_file" in metafunc.fixturenames:
        files = _conformance_files(metafunc.config)
        metafunc.parametrize("conformance_file", files or [None],
                             ids=[str(p.relative_to(r)) for r, p in files] or ["missing"])


def test_conformance_program(conformance_file: tuple[Path, Path] | None) -> None:
    if conformance_file is None:
        pytest.skip("conformance suites not found: set JITBPF_CONFORMANCE_DIR")
    root, path = conformance_file
    rel = str(path.relative_to(root))
    data = parse_data_file(path)
    if not data.runnable or data.expects_error:
        pytest.skip("not a runnable program expected to succeed")
    try:
        code = data.raw if data.raw is not None else prog(data.asm or "")
    except BpfError as exc:
        pytest.skip(f"does not assemble: {exc}")
    helpers = conformance_helpers(lambda: MemoryMap([]))
    try:
        verify(code, helpers=helpers, allow_loops=True, budget=CONFORMANCE_BUDGET)
    except VerifierError as exc:
        reason = KNOWN_REJECTIONS.get(rel)
        assert reason is not None, f"rejected: {exc}"
        assert reason in exc.message
    else:
        assert rel not in KNOWN_REJECTIONS, "accepted now: remove it from KNOWN_REJECTIONS"


def test_conformance_programs_expected_to_fail_are_rejected(request: pytest.FixtureRequest) -> None:
    files = _conformance_files(request.config)
    if not files:
        pytest.skip("conformance suites not found: set JITBPF_CONFORMANCE_DIR")
    accepted = []
    helpers = conformance_helpers(lambda: MemoryMap([]))
    for root, path in files:
        data = parse_data_file(path)
        if not data.runnable or not data.expects_error:
            continue
        try:
            code = data.raw if data.raw is not None else prog(data.asm or "")
            verify(code, helpers=helpers, allow_loops=True, budget=CONFORMANCE_BUDGET)
        except BpfError:
            continue
        accepted.append(str(path.relative_to(root)))
    # err-unknown-opcode is stale upstream (0x06 is ja32); call_unwind_fail fails at run time.
    assert set(accepted) <= {"ubpf/errors/err-unknown-opcode.data", "bpf_conformance/call_unwind_fail.data"}


# --- soundness: accepted programs never fault on memory ---------------------------------------

REGS = st.integers(0, 9)
SIZES = ("b", "h", "w", "dw")
ALU = ("add", "sub", "mul", "div", "mod", "or", "and", "xor", "lsh", "rsh", "arsh")
JUMPS = ("jeq", "jne", "jgt", "jge", "jlt", "jle", "jsgt", "jsge", "jslt", "jsle", "jset")


@st.composite
def programs(draw: st.DrawFn) -> str:
    """Code with forward branches: stack and context accesses at offsets around the edges,
    arithmetic (some of it on pointers), and variable offsets. One line is one instruction."""
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(("mov", "alu", "ptr", "store", "load", "ctx", "var", "jump")))
        d, s = draw(REGS), draw(REGS)
        imm = draw(st.integers(-70, 70))
        off = draw(st.integers(-520, 8))
        size = draw(st.sampled_from(SIZES))
        base = draw(st.sampled_from(("r10", f"r{s}")))
        operand = f"r{s}" if draw(st.booleans()) else str(imm)
        match kind:
            case "mov":
                lines.append(f"mov{draw(st.sampled_from(('', '32')))} r{d}, {imm}")
            case "alu":
                lines.append(f"{draw(st.sampled_from(ALU))}{draw(st.sampled_from(('', '32')))} r{d}, {operand}")
            case "ptr":
                lines.append(f"mov r{d}, {draw(st.sampled_from(('r10', 'r1')))}")
            case "store":
                if draw(st.booleans()):
                    lines.append(f"stx{size} [{base}{off:+d}], r{s}")
                else:
                    lines.append(f"st{size} [{base}{off:+d}], {imm}")
            case "load":
                lines.append(f"ldx{size} r{d}, [{base}{off:+d}]")
            case "ctx":
                ctx_off = draw(st.integers(-4, 20))
                if draw(st.booleans()):
                    lines.append(f"ldx{size} r{d}, [r1{ctx_off:+d}]")
                else:
                    lines.append(f"stx{size} [r1{ctx_off:+d}], r{s}")
            case "var":
                lines += [f"and r{s}, {draw(st.sampled_from((0x7, 0x1F, 0xFF)))}", f"mov r{d}, r10",
                          f"add r{d}, {draw(st.integers(-300, -1))}", f"add r{d}, r{s}"]
            case "jump":
                lines.append(f"{draw(st.sampled_from(JUMPS))} r{d}, {operand}, @{draw(st.integers(0, 8))}")
            case _:
                raise NotImplementedError(kind)
    lines += ["mov r0, 0", "exit"]
    out = []
    for idx, line in enumerate(lines):
        if "@" in line:  # forward, landing at most on the final exit
            head, skip = line.rsplit("@", 1)
            line = f"{head}+{min(int(skip), len(lines) - idx - 2)}"
        out.append(line)
    return "\n".join(out)


def _run_frame_limited(code: bytes, ctx: bytearray) -> int:
    """Interpret with memory limited to the context and ONE 512-byte stack frame, so that any
    access outside what the verifier allows (even inside the VM's larger stack area) faults."""
    flow = analyze(Program.from_bytes(code))
    blocks = Translator(lambda _pc, insn: insn.imm64).translate(flow)
    stack = bytearray(STACK_SIZE)
    stack_region, stack_pin = region_of(stack, "stack")
    ctx_region, ctx_pin = region_of(ctx, "ctx")
    regs = [0] * 11
    regs[1] = ctx_region.base
    regs[10] = stack_region.base + STACK_SIZE

    def zero(_frame: int) -> None:
        stack_region.view[:] = bytes(STACK_SIZE)

    env = Env(MemoryMap([ctx_region, stack_region]), {}, None)
    result = run(blocks, regs, env, budget=10_000, stack_zero=zero)
    del stack_pin, ctx_pin
    return result


@pytest.fixture(scope="module")
def jit_works() -> bool:
    try:
        return VM(prog("mov r0, 7\nexit")).execute_jit() == 7
    except Exception:  # the JIT is optional for this test
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_accepted_programs_never_fault_on_memory(source: str) -> None:
    code = prog(source)
    try:
        verify(code, context=CTX16)
    except VerifierError:
        return
    _run_frame_limited(code, bytearray(16))  # raises ExecutionError on any bounds fault


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=programs())
def test_proven_accesses_never_fault_in_either_engine(jit_works: bool, source: str) -> None:
    code = prog(source)
    try:
        result = verify(code)  # the VM's own mode: r1 is raw memory, its accesses keep their check
    except VerifierError:
        return
    engines: list[Callable[[VM, bytearray], int]] = [VM.execute]
    if jit_works:
        engines.append(VM.execute_jit)
    for engine in engines:
        vm = VM(code)
        try:
            engine(vm, bytearray(16))
        except ExecutionError as exc:
            assert exc.pc not in result.proven, f"proven access faulted: {exc}"
        finally:
            vm.close()



@st.composite
def _packet_programs(draw: st.DrawFn) -> str:
    """XDP-style parsers: data and data_end from the context, bounds checks of random reach
    (some too short), then loads and stores at random offsets from data or a moved pointer."""
    lines = ["ldxw r2, [r1+0]", "ldxw r3, [r1+4]", "mov r4, r2", "mov r6, 0",
             "mov r5, r2", f"add r5, {draw(st.integers(0, 48))}", "jgt r5, r3, @out"]
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(("check", "load", "store", "move", "var")))
        off = draw(st.integers(-4, 40))
        base = draw(st.sampled_from(("r2", "r4")))
        size = draw(st.sampled_from(("b", "h", "w", "dw")))
        match kind:
            case "check":  # if (base + reach > data_end) goto out
                lines += ["mov r5, " + base, f"add r5, {draw(st.integers(0, 40))}", "jgt r5, r3, @out"]
            case "load":
                lines.append(f"ldx{size} r6, [{base}{off:+d}]")
            case "store":
                lines.append(f"stx{size} [{base}{off:+d}], r6")
            case "move":
                lines.append(f"add r4, {draw(st.integers(-8, 16))}")
            case "var":
                lines += [f"and r6, {draw(st.sampled_from((1, 3, 7, 15)))}", "add r4, r6"]
    lines += ["mov r0, 2", "exit"]
    out = []
    for idx, line in enumerate(lines):
        if "@out" in line:  # to the final "mov r0, 2"
            line = line.replace("@out", f"+{len(lines) - idx - 3}")
        out.append(line)
    return "\n".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_packet_programs(), st.integers(0, 64))
def test_proven_packet_accesses_stay_within_data_end(source: str, length: int) -> None:
    """Accesses the verifier proves against data_end (which the JIT then leaves unchecked) never
    leave [data, data_end): run in the interpreter with memory cut to exactly the packet, the
    context and one stack frame, a proven access that strays faults."""
    from jitbpf.memory import Region
    from jitbpf.sandbox import Pages

    code = prog(source)
    vm = VM(code, prog_type="xdp")
    try:
        vm.check()
    except VerifierError:
        return
    arena = Pages(4096)
    try:
        ctx_addr, data = arena.address, arena.address + 256
        arena.view[0:8] = data.to_bytes(4, "little") + (data + length).to_bytes(4, "little")
        regions = [Region(ctx_addr, 24, arena.view[0:24], True, "ctx"),
                   Region(data, length, arena.view[256:256 + length], True, "packet")]
        stack = bytearray(STACK_SIZE)
        stack_region, stack_pin = region_of(stack, "stack")
        blocks = Translator(vm.resolve_lddw).translate(vm.flow)
        regs = [0] * 11
        regs[1], regs[10] = ctx_addr, stack_region.base + STACK_SIZE
        env = Env(MemoryMap([*regions, stack_region]), {}, None)
        try:
            run(blocks, regs, env, budget=10_000, stack_zero=lambda _f: None)
        except ExecutionError as exc:
            assert exc.pc not in vm._proven, f"proven packet access faulted: {exc}"
        del stack_pin
    finally:
        arena.close()
        vm.close()


def test_helper_signature_is_typed_and_checked_when_defined() -> None:
    """Helper kinds are ArgType/RetType members (or their values); a name that is neither fails
    where the helper is defined, naming it, rather than when a program is verified."""
    assert LOOKUP.signature == ((ArgType.MAP, ArgType.KEY), RetType.MAP_VALUE_OR_NULL)
    assert Helper(9, "h", _never).signature == ((ArgType.ANYTHING,) * 5, RetType.SCALAR)
    assert Helper(9, "h", _never, (ArgType.MEM, "size")).signature[0] == (ArgType.MEM, ArgType.SIZE)
    with pytest.raises(ValueError, match=r"helper 9 \(h\): 'pointer' is not a valid ArgType"):
        Helper(9, "h", _never, ("pointer",))
    with pytest.raises(ValueError, match="is not a valid RetType"):
        Helper(9, "h", _never, ret="value_or_null")
