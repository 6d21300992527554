"""The JIT against the interpreter on random programs: same r0, same memory, same error (type,
pc and message); random bytes never crash the process."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf.errors import BpfError
from jitbpf.helpers import Helper, HelperExit
from jitbpf.isa import (
    LDDW_OPCODE,
    OPCODES,
    CallSrc,
    InsnClass,
    Instruction,
    JmpOp,
    Kind,
    OpInfo,
)
from jitbpf.vm import VM

MEM_SIZE = 64  # bytes of mem given to every run
BUDGET = 3000  # small, so that random loops end quickly (with the same error in both engines)
HELPER_ID = 7  # the registered Python helper
EXIT_HELPER_ID = 9  # a helper that ends the program (HelperExit)
INT32 = st.integers(-(2**31), 2**31 - 1)
INTERESTING = st.sampled_from([0, 1, -1, 2, 7, 8, 31, 32, 33, 63, 64, 65, 255, 0x7FFF_FFFF, -(2**31), 0x1234_5678])
IMM = st.one_of(INTERESTING, st.integers(-70, 70), INT32)

ALU_ROWS = [r for r in OPCODES if r.kind in (Kind.ALU, Kind.NEG, Kind.MOVSX, Kind.END, Kind.BSWAP)]
JCOND_ROWS = [r for r in OPCODES if r.kind is Kind.JCOND]
MEM_ROWS = [r for r in OPCODES if r.kind in (Kind.LDX, Kind.LDXSX, Kind.ST, Kind.STX)]
ATOMIC_ROWS = [r for r in OPCODES if r.kind is Kind.ATOMIC]
PACKET_ROWS = [r for r in OPCODES if r.kind in (Kind.LD_ABS, Kind.LD_IND)]
JA = InsnClass.JMP | JmpOp.JA
JA32 = InsnClass.JMP32 | JmpOp.JA
CALL = InsnClass.JMP | JmpOp.CALL
EXIT = InsnClass.JMP | JmpOp.EXIT


def helper(a: int, b: int, c: int, d: int, e: int) -> int:
    if a % 13 == 5:
        raise ValueError(f"bad argument {a}")
    return (a * 31 + b * 7 + c - d) ^ e


def exit_helper(a: int, _b: int, _c: int, _d: int, _e: int) -> int:
    if a & 1:
        raise HelperExit(a * 3)
    return a + 1


HELPERS = [Helper(HELPER_ID, "mix", helper), Helper(EXIT_HELPER_ID, "maybe_exit", exit_helper)]


@dataclass(frozen=True)
class Jump:
    """A jump in a function under construction; the target is an item index in that function."""

    insn: Instruction  # with the offset still to fill in
    target: int  # item index


@dataclass(frozen=True)
class LocalCall:
    """A bpf-to-bpf call to function ``fn``."""

    fn: int  # function index


Item = Instruction | Jump | LocalCall


def row_insn(draw: st.DrawFn, row: OpInfo, **fields: int) -> Instruction:
    values = {"dst": 0, "src": 0, "off": 0, "imm": 0}
    values.update(fields)
    if row.variant_field:
        values[row.variant_field] = row.variant
    return Instruction(row.opcode, **values)


@st.composite
def items(draw: st.DrawFn, nfuncs: int, length: int) -> Item:
    dst = draw(st.integers(0, 9))
    src = draw(st.integers(0, 10))
    choice = draw(st.sampled_from(["alu"] * 8 + ["lddw", "mem", "mem", "mem", "atomic", "jump", "jump", "call",
                                                  "callx", "local", "packet", "exit"]))
    match choice:
        case "alu":
            row = draw(st.sampled_from(ALU_ROWS))
            return row_insn(draw, row, dst=dst, src=src if row.reg_src else 0, imm=0 if row.reg_src else draw(IMM))
        case "lddw":
            return Instruction(LDDW_OPCODE, dst, 0, 0, draw(INT32), draw(INT32))
        case "mem":
            row = draw(st.sampled_from(MEM_ROWS))
            base, off = draw(st.one_of(
                st.tuples(st.just(10), st.integers(-516, 4)),  # the stack (and just past it)
                st.tuples(st.just(1), st.integers(-4, MEM_SIZE + 4)),  # mem (and just past it)
                st.tuples(st.integers(0, 10), st.integers(-40, 40)),  # wherever a register points
            ))
            if row.kind in (Kind.LDX, Kind.LDXSX):
                return row_insn(draw, row, dst=dst, src=base, off=off)
            if row.kind is Kind.ST:
                return row_insn(draw, row, dst=base, off=off, imm=draw(IMM))
            return row_insn(draw, row, dst=base, src=src, off=off)
        case "atomic":
            row = draw(st.sampled_from(ATOMIC_ROWS))
            base, off = draw(st.one_of(
                st.tuples(st.just(10), st.integers(-64, 0).map(lambda x: x * row.size)),
                st.tuples(st.just(1), st.integers(0, MEM_SIZE // row.size).map(lambda x: x * row.size)),
                st.tuples(st.integers(0, 10), st.integers(-16, 16)),
            ))
            return Instruction(row.opcode, base, src, off, row.op)
        case "jump":
            target = draw(st.integers(0, length))
            if draw(st.booleans()):
                return Jump(Instruction(draw(st.sampled_from([JA, JA, JA32]))), target)
            row = draw(st.sampled_from(JCOND_ROWS))
            return Jump(row_insn(draw, row, dst=dst, src=src if row.reg_src else 0,
                                 imm=0 if row.reg_src else draw(IMM)), target)
        case "call":
            return Instruction(CALL, imm=draw(st.sampled_from([HELPER_ID, EXIT_HELPER_ID])))
        case "callx":
            return Instruction(CALL | 0x08, dst=dst)
        case "local":
            return LocalCall(draw(st.integers(0, nfuncs - 1)))
        case "packet":
            row = draw(st.sampled_from(PACKET_ROWS))
            if row.kind is Kind.LD_ABS:
                return row_insn(draw, row, imm=draw(st.integers(-4, MEM_SIZE + 4)))
            return row_insn(draw, row, src=src, imm=draw(st.integers(-8, MEM_SIZE + 4)))
        case "exit":
            return Instruction(EXIT)
        case _:
            raise NotImplementedError(choice)


def layout(functions: list[list[Item]]) -> list[Instruction]:
    """Place the functions one after the other and resolve jump and call offsets."""
    starts: list[list[int]] = []  # slot of each item, per function, plus the end
    entries: list[int] = []
    pc = 0
    for body in functions:
        entries.append(pc)
        slots = []
        for item in body:
            slots.append(pc)
            pc += item.width if isinstance(item, Instruction) else 1
        slots.append(pc)
        starts.append(slots)
    out: list[Instruction] = []
    for fn, body in enumerate(functions):
        for i, item in enumerate(body):
            here = starts[fn][i]
            if isinstance(item, Jump):
                target = starts[fn][min(item.target, len(body) - 1)]
                rel = target - here - 1
                insn = item.insn
                if insn.opcode == JA32:
                    out.append(Instruction(insn.opcode, imm=rel))
                else:
                    out.append(Instruction(insn.opcode, insn.dst, insn.src, rel, insn.imm))
            elif isinstance(item, LocalCall):
                out.append(Instruction(CALL, src=CallSrc.LOCAL, imm=entries[item.fn] - here - 1))
            else:
                out.append(item)
    return out


@st.composite
def programs(draw: st.DrawFn) -> list[Instruction]:
    nfuncs = draw(st.integers(1, 3))
    functions = []
    for _ in range(nfuncs):
        length = draw(st.integers(1, 24))
        body = [draw(items(nfuncs, length)) for _ in range(length)]
        functions.append([*body, Instruction(EXIT)])
    return layout(functions)


def outcome(vm: VM, engine: str, mem: bytearray, initial: bytes) -> tuple[object, ...]:
    mem[:] = initial
    state = vm._state()
    state.stack_view[:] = bytes(len(state.stack_view))  # both engines start from the same stack
    try:
        result: object = vm.execute(mem) if engine == "interp" else vm.execute_jit(mem)
    except BpfError as exc:
        result = (type(exc).__name__, exc.pc, str(exc))
    return result, bytes(mem), bytes(state.stack_view)


def compare(insns: list[Instruction], initial: bytes) -> None:
    vm = VM(insns, verify=False, budget=BUDGET, helpers=HELPERS)
    mem = bytearray(initial)
    try:
        expected = outcome(vm, "interp", mem, initial)
        for _ in range(2):  # the first JIT run binds this thread; the second is a bare native run
            got = outcome(vm, "jit", mem, initial)
            assert got[0] == expected[0]
            assert got[1] == expected[1], "mem differs"
            assert got[2] == expected[2], "stack differs"
    finally:
        vm.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs(), st.binary(min_size=MEM_SIZE, max_size=MEM_SIZE))
def test_random_programs_agree(insns: list[Instruction], initial: bytes) -> None:
    compare(insns, initial)


def test_atomic_fetch_ops_agree() -> None:
    """Every atomic op, with every source register (r0 included), on the stack."""
    for row in ATOMIC_ROWS:
        for src in (0, 2):
            insns = [
                Instruction(LDDW_OPCODE, 0, 0, 0, 0x1357_9BDF, 0x0246_8ACE),
                Instruction(LDDW_OPCODE, 2, 0, 0, 0x1111_2222, 0x3333_4444),
                Instruction(InsnClass.STX | 0x60 | 0x18, 10, 0, -8),  # *(u64 *)(r10 - 8) = r0
                Instruction(row.opcode, 10, src, -8, row.op),
                Instruction(InsnClass.LDX | 0x60 | 0x18, 3, 10, -8),
                Instruction(InsnClass.ALU64 | 0xA0 | 0x08, 0, 3),  # r0 ^= r3
                Instruction(InsnClass.ALU64 | 0xA0 | 0x08, 0, 2),  # r0 ^= r2
                Instruction(EXIT),
            ]
            compare(insns, bytes(MEM_SIZE))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=160).map(lambda b: b[: len(b) // 8 * 8]))
def test_random_bytes_never_crash(code: bytes) -> None:
    try:
        vm = VM(code, verify=False, budget=BUDGET, helpers=HELPERS)
    except BpfError:
        return
    vm.close()
    compare(list(vm.program.insns), bytes(MEM_SIZE))



@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs(), st.lists(st.binary(min_size=MEM_SIZE, max_size=MEM_SIZE), min_size=1, max_size=4))
def test_batches_agree_with_one_interpreter_run_per_input(insns: list[Instruction], inputs: list[bytes]) -> None:
    """execute_records (one native loop when the program calls no Python helper) gives each
    input's r0 and memory as the interpreter does, and stops with the first input's error."""
    vm = VM(insns, verify=False, budget=BUDGET, helpers=HELPERS)
    records = bytearray(b"".join(inputs))  # both engines run on it: the same addresses for each input
    view = memoryview(records)
    try:
        expected: list[object] = []
        for i in range(len(inputs)):
            try:
                expected.append(vm.execute(view[i * MEM_SIZE:(i + 1) * MEM_SIZE]))
            except BpfError as exc:
                expected.append((type(exc).__name__, exc.pc))
                break
        after = bytes(records[:MEM_SIZE * (len(expected) - isinstance(expected[-1], tuple))])
        records[:] = b"".join(inputs)
        try:
            got: list[object] = list(vm.execute_records(records, MEM_SIZE))
        except BpfError as exc:
            assert f"in input {len(expected) - 1} of the batch" in (exc.__notes__ or [])
            got = [*expected[:-1], (type(exc).__name__, exc.pc)]
        assert got == expected
        assert records[:len(after)] == after
    finally:
        view.release()
        vm.close()


# Verified programs: their prologue leaves out the frame's regions and limits when no access is
# checked (and its packet fields without legacy packet loads); both engines must still agree.
VERIFIED_ALU = ["add", "sub", "mul", "or", "and", "xor", "mov", "lsh", "rsh", "arsh", "add32", "xor32", "mov32"]


@st.composite
def verified_programs(draw: st.DrawFn) -> str:
    lines = [f"mov r{r}, {draw(IMM)}" for r in range(10)]
    for _ in range(draw(st.integers(1, 30))):
        op, dst, src = draw(st.sampled_from(VERIFIED_ALU)), draw(st.integers(0, 9)), draw(st.integers(0, 9))
        kind = draw(st.integers(0, 3))
        if kind == 0 and op not in ("lsh", "rsh", "arsh"):
            lines.append(f"{op} r{dst}, r{src}")
        elif kind <= 1:
            lines.append(f"{op} r{dst}, {draw(st.integers(0, 31))}")
        elif kind == 2:
            lines.append(f"stxdw [r10-{8 * draw(st.integers(1, 8))}], r{src}")
        else:
            lines.append(f"stxdw [r10-8], r{src}")
            lines.append(f"ldxdw r{dst}, [r10-8]")
    lines.append("exit")
    return "\n".join(lines)


@settings(max_examples=150, deadline=None)
@given(verified_programs(), st.binary(min_size=MEM_SIZE, max_size=MEM_SIZE))
def test_verified_programs_with_a_short_prologue_agree(source: str, initial: bytes) -> None:
    from jitbpf.asm import assemble

    with VM(assemble(source), budget=BUDGET) as vm:
        vm.check()
        mem = bytearray(initial)
        expected = outcome(vm, "interp", mem, initial)
        for _ in range(2):
            assert outcome(vm, "jit", mem, initial)[:2] == expected[:2]


def _prologue_length(source: str, verify: bool) -> int:
    """x86 instructions from the per-run prologue to the code of slot 0 (the prologue of a
    batch's runs, which comes last; the other is the same but for where r1 and r2 come from)."""
    from jitbpf.asm import assemble

    with VM(assemble(source), verify=verify) as vm:
        vm.jit_compile()
        lines = vm.jit_dump().splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.startswith("; entry: run") and ln.endswith("prologue"))
    first = next(i for i, ln in enumerate(lines) if ln.strip().startswith("0:"))
    return sum(1 for ln in lines[start + 1 : first] if not ln.startswith(";"))


def test_prologue_sets_up_only_what_the_code_uses() -> None:
    plain = _prologue_length("mov r0, 1\nexit", verify=True)
    checked = _prologue_length("ldxb r0, [r1]\nexit", verify=False) - _prologue_length("mov r0, 1\nexit", verify=False)
    packet = _prologue_length("ldabsb 0\nexit", verify=False) - _prologue_length("mov r0, 1\nexit", verify=False)
    assert plain <= 16
    assert checked > 0 and packet > 0


# Local calls save only the registers the callee writes itself: the caller's r6-r9 (and r10)
# must come back whatever subset the callee, or a function it calls, clobbers.
@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(6, 9), max_size=4), st.lists(st.integers(6, 9), max_size=4), st.booleans(),
       st.lists(st.integers(0, 2**31 - 1), min_size=4, max_size=4))
def test_local_calls_restore_the_callers_registers(inner: list[int], nested: list[int], moves_fp: bool,
                                                  values: list[int]) -> None:
    from jitbpf.asm import assemble

    caller = [f"mov r{6 + i}, {v}" for i, v in enumerate(values)]
    caller += ["stdw [r10-8], 5", "call f", "ldxdw r0, [r10-8]"]  # r10 must be the caller's frame again
    caller += [f"{op} r0, r{r}" for op, r in zip(("add", "xor", "add", "xor"), range(6, 10), strict=True)]
    callee = [f"mov r{r}, {r * 11}" for r in inner] + ["stdw [r10-8], 9"]
    if moves_fp:  # unverified code may move r10; the interpreter restores it on return as well
        callee += ["mov r10, r10"]
    callee += ["call g", "mov r0, r6", "exit"]
    innermost = [f"mov r{r}, {r * 13}" for r in nested] + ["exit"]
    source = "\n".join([*caller, "exit", "f:", *callee, "g:", *innermost])
    for verify in (False,) if moves_fp else (True, False):
        with VM(assemble(source), verify=verify, budget=BUDGET) as vm:
            mem = bytearray(MEM_SIZE)
            expected = outcome(vm, "interp", mem, bytes(MEM_SIZE))
            for _ in range(2):
                assert outcome(vm, "jit", mem, bytes(MEM_SIZE))[:2] == expected[:2]


def test_a_callee_that_writes_no_saved_register_costs_no_pushes() -> None:
    from jitbpf.asm import assemble

    with VM(assemble("call f\nexit\nf:\nmov r0, 1\nexit")) as vm:
        vm.jit_compile()
        dump = vm.jit_dump()
    assert "push" not in dump.split("0: call")[1].split("1: exit")[0]


# jeq/jne rX, 0 right after an ALU instruction into rX branch on that instruction's flags.
FLAG_OPS = ["add", "sub", "and", "or", "xor", "add32", "sub32", "and32", "or32", "xor32", "mul", "lsh", "mov32"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FLAG_OPS), st.sampled_from(["jeq", "jne", "jeq32", "jne32"]), st.integers(0, 3),
       st.one_of(st.integers(0, 3).map(lambda r: f"r{r}"), IMM.map(str)), st.lists(IMM, min_size=4, max_size=4))
def test_branches_on_alu_flags_agree(op: str, jump: str, dst: int, operand: str, values: list[int]) -> None:
    from jitbpf.asm import assemble

    if op == "lsh" and not operand.startswith("r"):
        operand = str(int(operand) & 63)
    setup = [f"lddw r{r}, {v & 0xFFFF_FFFF_FFFF_FFFF}" for r, v in enumerate(values)]
    source = "\n".join([*setup, f"{op} r{dst}, {operand}", f"{jump} r{dst}, 0, +2", "mov r0, 1", "exit",
                        "mov r0, 2", "exit"])
    with VM(assemble(source)) as vm:
        assert vm.execute() == vm.execute_jit()


LSH64, RSH64, ARSH64 = 0x67, 0x77, 0xC7  # 64-bit shifts by an immediate
JEQ_IMM, XOR64_REG = 0x15, 0xAF


@st.composite
def extension_pairs(draw: st.DrawFn) -> list[Instruction]:
    """``lsh rX, 32`` then ``rsh``/``arsh rX, 32`` (the JIT emits each pair as one mov or movsxd,
    at the ``mov rX, rY`` before it if there is one), some with a jump landing inside, some with
    other shift amounts, registers or a 32-bit mov."""
    insns = [Instruction(LDDW_OPCODE, r, 0, 0, draw(INT32), draw(INT32)) for r in range(6)]
    for _ in range(draw(st.integers(1, 8))):
        dst, other = draw(st.integers(0, 5)), draw(st.integers(0, 5))
        right = draw(st.sampled_from([RSH64, ARSH64]))
        first, second = draw(st.sampled_from([32, 32, 32, 31])), draw(st.sampled_from([32, 32, 32, 33]))
        move = draw(st.sampled_from([None, None, 0xBF, 0xBC]))  # none, or mov / mov32 rDst, rOther first
        jump = draw(st.sampled_from([None, "lsh", "rsh"]))
        tested = draw(st.sampled_from([other, 9]))  # jumps when it is 0: r9 always is
        if jump == "lsh" and move is not None:  # lands on the lsh
            insns.append(Instruction(JEQ_IMM, tested, 0, 1, 0))
        if move is not None:
            insns.append(Instruction(move, dst, draw(st.integers(0, 5))))
        if jump == "rsh" or (jump == "lsh" and move is None):  # lands on the right shift
            insns.append(Instruction(JEQ_IMM, tested, 0, 1, 0))
        insns += [Instruction(LSH64, dst, 0, 0, first),
                  Instruction(right, draw(st.sampled_from([dst, dst, dst, other])), 0, 0, second)]
    insns += [Instruction(XOR64_REG, 0, r) for r in range(1, 6)]
    return [*insns, Instruction(EXIT)]


@settings(max_examples=200, deadline=None)
@given(extension_pairs())
def test_extension_pairs_agree(insns: list[Instruction]) -> None:
    compare(insns, bytes(MEM_SIZE))


SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}  # size bits of ld/st opcodes
LDX, STX, ST_IMM = 0x61, 0x63, 0x62  # | size bits
MOV64_REG, MOV64_IMM, ADD64_IMM = 0xBF, 0xB7, 0x07


@st.composite
def pointer_walks(draw: st.DrawFn) -> list[Instruction]:
    """A verified program that accesses a stack buffer through r2 again and again (the JIT
    confines r2 once per block, not at each access), re-pointing r2, jumping and writing the
    registers in between."""
    insns = [Instruction(MOV64_IMM, r, 0, 0, draw(INT32)) for r in (3, 4, 5)]
    insns += [Instruction(ST_IMM | SIZES[8], 10, 0, -64 + 8 * k, draw(INT32)) for k in range(8)]
    base = draw(st.integers(0, 7)) * 8  # r2 = r10 - 64 + base
    insns += [Instruction(MOV64_REG, 2, 10), Instruction(ADD64_IMM, 2, 0, 0, base - 64)]
    for _ in range(draw(st.integers(1, 16))):
        size = draw(st.sampled_from([1, 2, 4, 8]))
        off = draw(st.integers(0, (64 - size) // size)) * size - base
        reg = draw(st.integers(3, 5))
        match draw(st.sampled_from(["load", "load", "store", "store", "repoint", "jump", "alu", "load r2"])):
            case "load":
                insns.append(Instruction(LDX | SIZES[size], reg, 2, off))
            case "store":
                insns.append(Instruction(STX | SIZES[size], 2, reg, off))
            case "repoint":
                base = draw(st.integers(0, 7)) * 8
                insns += [Instruction(MOV64_REG, 2, 10), Instruction(ADD64_IMM, 2, 0, 0, base - 64)]
            case "jump":
                insns.append(Instruction(JEQ_IMM, reg, 0, 1, draw(st.integers(-2, 2))))
                insns.append(Instruction(ADD64_IMM, reg, 0, 0, 1))
            case "alu":
                insns.append(Instruction(XOR64_REG, reg, draw(st.integers(3, 5))))
            case _:  # a load into r2 itself: the next access through r2 needs a fresh pointer
                insns.append(Instruction(LDX | SIZES[8], 2, 2, -base))
                insns += [Instruction(MOV64_REG, 2, 10), Instruction(ADD64_IMM, 2, 0, 0, base - 64)]
    insns += [Instruction(MOV64_REG, 0, 3), Instruction(XOR64_REG, 0, 4), Instruction(XOR64_REG, 0, 5)]
    return [*insns, Instruction(EXIT)]


@settings(max_examples=150, deadline=None)
@given(pointer_walks())
def test_repeated_accesses_through_one_pointer_agree(insns: list[Instruction]) -> None:
    with VM(insns) as vm:
        vm.check()
        assert vm._proven, "the verifier proves the accesses (or this test exercises nothing)"
        expected = vm.execute()
        state = vm._state()
        stack = bytes(state.stack_view)
        state.stack_view[:] = bytes(len(state.stack_view))
        assert vm.execute_jit() == expected
        assert bytes(state.stack_view) == stack



# A timer's callback entered on its own (as a firing timer runs it): both engines give it r1-r3,
# a zeroed frame below the outermost one and the calls it may still make.
ASYNC_MAIN = ["lddw r2, func:cb", "call 170", "lddw r2, func:other", "mov r0, 0", "exit"]  # 7 slots
ASYNC_CB_SLOT = 7


def _async_vm(depth: int) -> VM:
    from jitbpf.asm import assemble

    callback = ["cb:", "ldxdw r0, [r10-8]", "add r0, r1", "xor r0, r2", "add r0, r3", "call deeper", "exit"]
    chain = []
    for level in range(depth + 1):
        name = "deeper" if level == 0 else f"deeper{level}"
        chain += [f"{name}:", "ldxdw r5, [r10-16]", "add r0, r5"]
        chain += [f"call deeper{level + 1}"] if level < depth else []
        chain += ["exit"]
    source = "\n".join([*ASYNC_MAIN, *callback, *chain, "other:", "mov r0, 7", "exit"])
    vm = VM(assemble(source), verify=False, budget=BUDGET)
    vm.register_helper(170, lambda *_: 0, name="bpf_timer_set_callback")
    return vm


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3), st.integers(0, 7))
def test_async_callback_entries_agree(args: list[int], depth: int) -> None:
    from jitbpf.contract import function_address

    with _async_vm(depth) as vm:
        address = function_address(ASYNC_CB_SLOT)
        outcomes: list[object] = []
        for engine in ("interp", "jit"):
            try:
                outcomes.append(vm.run_async_callback(address, (args[0], args[1], args[2]), [], engine=engine))
            except BpfError as err:  # too deep: the same error in both
                outcomes.append((type(err), err.pc, str(err)))
        assert outcomes[0] == outcomes[1]
        if depth < 6:  # the callback runs at depth 1, so 6 more calls fit
            assert outcomes[0] == ((args[0] ^ args[1]) + args[2]) % 2**64


def test_an_address_that_is_no_callback_is_refused_by_both() -> None:
    from jitbpf.contract import function_address

    with _async_vm(0) as vm:
        for engine in ("interp", "jit"):
            for address in (function_address(3), 0x1234):
                try:
                    vm.run_async_callback(address, (0, 0, 0), [], engine=engine)
                except BpfError as err:
                    assert "not the address of a function" in str(err), str(err)
                else:
                    raise AssertionError(f"{address:#x} ran as a callback in {engine}")
