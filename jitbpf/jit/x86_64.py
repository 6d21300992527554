"""The x86-64 target: register map, ``emit_*`` helpers for each instruction kind, and the code
generated once per program (entry points, bounds walker, frame zeroing, exits and aborts)."""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from jitbpf.cfg import Block, ControlFlow, live_after, register_writes, writes_fp
from jitbpf.contract import (
    ARG_REGS,
    DRAIN_FLAGS,
    MAX_CALL_DEPTH,
    MAX_LOOP_ITERATIONS,
    MAY_GOTO_BUDGET,
    STACK_BYTES,
    CallbackKind,
    function_address,
)
from jitbpf.errors import InternalError, JitError
from jitbpf.isa import (
    ATOMIC_FETCH,
    FP,
    MASK64,
    SKF_LL_OFF,
    SKF_NET_OFF,
    STACK_SIZE,
    AluOp,
    AtomicOp,
    Instruction,
    JmpOp,
    Kind,
    OpInfo,
)
from jitbpf.jit.encoding import Assembler, Shape
from jitbpf.jit.loops import LoopPlan
from jitbpf.jit.runtime import ERROR_RESULT, AccessKind, Layout, Status, access_info, layout
from jitbpf.jit.stencils import Probe, StencilKey
from jitbpf.jit.target import CompileOptions, Section, Target, location

# Set in the 32-bit address of a confined access: the sandbox is [2 GiB, 4 GiB) (see sandbox.c),
# as a signed imm32 (or sign-extends it, which a 32-bit destination then drops).
SANDBOX_BIT = -(1 << 31)


@dataclass(frozen=True, slots=True)
class HostReg:
    """The x86-64 register that holds one eBPF register, named at each operand width."""

    q: str  # 64-bit name
    d: str  # 32-bit name (writing it zero-extends, which is what 32-bit eBPF ops need)
    w: str  # 16-bit name
    b: str  # 8-bit name


REGS: tuple[HostReg, ...] = (
    HostReg("rax", "eax", "ax", "al"),  # r0: return value, where the C ABI returns helpers' results
    HostReg("rdi", "edi", "di", "dil"),  # r1: 1st C argument register, so helper calls need no moves
    HostReg("rsi", "esi", "si", "sil"),  # r2: 2nd C argument register
    HostReg("rdx", "edx", "dx", "dl"),  # r3: 3rd C argument register
    HostReg("rcx", "ecx", "cx", "cl"),  # r4: 4th C argument register (and the shift count register)
    HostReg("r8", "r8d", "r8w", "r8b"),  # r5: 5th C argument register
    HostReg("rbx", "ebx", "bx", "bl"),  # r6: callee-saved, so it survives helper calls for free
    HostReg("r13", "r13d", "r13w", "r13b"),  # r7: callee-saved
    HostReg("r14", "r14d", "r14w", "r14b"),  # r8: callee-saved
    HostReg("r15", "r15d", "r15w", "r15b"),  # r9: callee-saved
    HostReg("rbp", "ebp", "bp", "bpl"),  # r10: frame pointer, callee-saved
)
FRAME = "r12"  # the run's jitbpf_frame on the machine stack (callee-saved: survives helpers)
BUDGET = "r9"  # remaining instruction budget (caller-saved: pushed around helper calls)
ADDR = "r10"  # scratch: the address of a checked memory access
TMP = "r11"  # scratch: bounds arithmetic, stub arguments, call targets

Q = tuple(r.q for r in REGS)
D = tuple(r.d for r in REGS)
W = tuple(r.w for r in REGS)
B = tuple(r.b for r in REGS)
_SIZE_PREFIX = {1: "b", 2: "w", 4: "d", 8: "q"}
_SIZE_INDEX = {1: 0, 2: 1, 4: 2, 8: 3}
_BY_SIZE = {1: B, 2: W, 4: D, 8: Q}
_STORE_IMM = {1: "i8", 2: "i16", 4: "i32", 8: "i32"}  # immediate of a store (qword stores sign-extend imm32)
_SIMPLE_ALU: dict[int, str] = {AluOp.ADD: "add", AluOp.SUB: "sub", AluOp.OR: "or", AluOp.AND: "and", AluOp.XOR: "xor"}
_SHIFTS = {AluOp.LSH: "shl", AluOp.RSH: "shr", AluOp.ARSH: "sar"}
_ATOMIC_ALU = {AtomicOp.ADD: "add", AtomicOp.OR: "or", AtomicOp.AND: "and", AtomicOp.XOR: "xor"}
_C_SAVED = ("rbx", "rbp", "r12", "r13", "r14", "r15")  # what the C ABI has a callee keep
# A versioned loop's unchecked copy starts on a 32-byte boundary: a short loop then lies in one
# fetch block, not across two (1.7x on a byte loop's speed, by where the code before it ended).
_LOOP_ALIGN = 32
_JUMP_OVER = 8  # padding from this many bytes on is jumped over rather than run through as nops
_LOCAL_SAVED = ("rbx", "r13", "r14", "r15", "rbp")  # r6-r9 and r10, restored when a local call returns
_LOCAL_PAD = 16  # keeps a local-call frame at 64 bytes (5 saves + pad + return address)
LOCAL_FRAME = 8 * len(_LOCAL_SAVED) + _LOCAL_PAD + 8  # machine stack per local call
_ZERO_STORE = 16  # bytes cleared per SSE store when zeroing a frame
# eBPF frames are STACK_SIZE bytes and machine frames LOCAL_FRAME: the frame to zero at a local
# call is a linear function of rsp, scaled by this shift.
_ZERO_SHIFT = (STACK_SIZE // LOCAL_FRAME).bit_length() - 1
assert STACK_SIZE == LOCAL_FRAME << _ZERO_SHIFT

# Probe values of the stencil classes (see stencil_classes): each pair differs in every byte of
# its field and stays inside its class.
_I8 = Probe(1, 0x31, 0x52)  # a positive imm8 or disp8
_NEG8 = Probe(1, -0x31, -0x52)  # a negative disp8 inside the stack frame
_I16 = Probe(2, 0x1131, 0x2252)  # the imm16 of a halfword store
_I32 = Probe(4, 0x1122_3344, 0x2233_4455)  # a positive imm32
_N32 = Probe(4, -0x1122_3344, -0x2233_4455)  # a negative imm32
_D32 = Probe(4, 0x1122, 0x2233)  # a positive disp32 (off has 16 bits)
_ND32 = Probe(4, -0x111, -0x1EE)  # a negative disp32 inside the stack frame
_COUNT = Probe(1, 0x11, 0x1E)  # a shift count, not 0, below 32
_ABSENT = Probe(0, 0x31, 0x52)  # an operand the code does not hold (a branch's offset)
_STORE_PROBE = {1: _I8, 2: _I16, 4: _I32, 8: _I32}  # the immediate of a store, by size
# Enum members as plain constants for the per-instruction paths (class attribute lookups of
# enums are slow).
_MOV, _JSET = int(AluOp.MOV), int(JmpOp.JSET)
_IMM_FORM_OPS = frozenset({*_SIMPLE_ALU, int(AluOp.MUL)})  # ALU ops whose immediate is imm8 or imm32
_ZERO_TESTS = frozenset({int(JmpOp.JEQ), int(JmpOp.JNE)})
_ALU_KIND = Kind.ALU
_CALL_LOCAL, _ST, _STX = Kind.CALL_LOCAL, Kind.ST, Kind.STX
_LSH, _RSH, _ARSH = int(AluOp.LSH), int(AluOp.RSH), int(AluOp.ARSH)
# Roles in a shift pair that extends the lower half of a register (see _extension_pair).
_ZEXT, _SEXT, _SECOND, _MOVED = "zext", "sext", "second", "moved"
_CLASSIFIERS = (  # the stencil classifier method of each kind with stencils
    (Kind.ALU, "_alu_class"), (Kind.LDX, "_access_class"), (Kind.LDXSX, "_access_class"),
    (Kind.STX, "_access_class"), (Kind.ST, "_access_class"), (Kind.JCOND, "_jcond_class"), (Kind.JA, "_ja_class"),
    (Kind.NEG, "_exact_class"), (Kind.MOVSX, "_exact_class"), (Kind.END, "_exact_class"),
    (Kind.BSWAP, "_exact_class"),
)


class _BatchSlot(enum.IntEnum):
    """Where the "batch" entry keeps its loop's state, from rsp (see _emit_batch)."""

    AT = 0  # where the next input's r0 goes (in the results, uint64_t[n])
    CTX = 8  # the run context
    DESC = 16  # the struct jitbpf_batch
    NEXT = 24  # the next input's address
    END = 32  # one past the last result
    SIZES = 40  # the records' size, or where the next input's length is (uint64_t[n])


def mem(size: int | str, base: str, disp: int) -> tuple[str, tuple[int, ...]]:
    """A memory operand token and its hole values: ``[base]``, ``[base+d8]`` or ``[base+d32]``."""
    prefix = _SIZE_PREFIX[size] if isinstance(size, int) else size
    if disp == 0:
        return f"{prefix}[{base}]", ()
    if -128 <= disp < 128:
        return f"{prefix}[{base}+d8]", (disp,)
    return f"{prefix}[{base}+d32]", (disp,)


def imm_form(value: int) -> str:
    """Hole kind for a sign-extended immediate: the short form when it fits."""
    return "i8" if -128 <= value < 128 else "i32"


class X86_64(Target):
    """Generates x86-64 code following the System V ABI (Linux)."""

    name: ClassVar[str] = "x86-64"
    versions_loops: ClassVar[bool] = True
    filler: ClassVar[bytes] = b"\xcc"  # int3: padding no run reaches traps
    exported: ClassVar[tuple[str, ...]] = ("abort_fault",)
    loop_reach: ClassVar[int] = 2**31 - 1  # lea's displacement is a signed 32-bit field
    capstone_arch: ClassVar[tuple[int, int]] = (3, 8)  # CS_ARCH_X86, CS_MODE_64

    def __init__(self, asm: Assembler, flow: ControlFlow, options: CompileOptions) -> None:
        super().__init__(asm, flow, options)
        self.lay: Layout = layout()
        self._templates = asm.template
        self._cached = asm.cached  # the cache's lookup alone (None until a shape is first encoded)
        self._block_start = 0  # start of the block being emitted (budget and depth errors name it)
        # The main function also runs as a local call or a callback: its exit may return to a caller.
        targets = flow.targets
        self._main_called = 0 in flow.callbacks.values() or (0 in targets.values() and any(
            target == 0 and (info := flow.program.infos[pc]) is not None and info.kind is _CALL_LOCAL
            for pc, target in targets.items()))
        self._main_end = flow.functions[0].end  # slots past it are in local functions
        self._has_may_goto = False  # set by emit_may_goto (every may_goto is emitted, none stamped)
        self._proven = options.proven
        self._limits_used: set[tuple[bool, int]] = set()  # (load?, size) of the inline mem checks
        self._live_after_calls: dict[int, int] | None = None  # per helper call, registers read later
        self._needs_end = False  # a versioned loop checks its range against mem_end / mem_wend
        self._prepaid = False  # the block being emitted was charged for all its passes on entry
        self._needs_packet = False  # a legacy packet load reads the frame's packet fields
        self._fn_writes: dict[int, int] | None = None  # per function entry, registers it writes itself
        self._frame_regions = True  # the prologue fills the frame's regions (see emit_entries)
        # While r10 is never written, [r10+off] with the whole access in [-512, 0) lies in the
        # current frame of the stack area: no bounds check needed, verified or not.
        self._fp_fixed = not writes_fp(flow.program)

    # -- stencil classes --------------------------------------------------------------------------

    def stencil_context(self) -> tuple[bool, bool]:
        return self._fp_fixed, self.options.contained

    def stencil_classes(self) -> dict[Kind, Callable[[int, Instruction, OpInfo], StencilKey | None]]:
        """Each class mirrors the value tests of its emitter: imm_form's short and long forms,
        load_const's zero, positive and negative constants, a shift count of 0 (or out of range),
        the disp0/disp8/disp32 forms of mem() and whether an access is in the fixed frame."""
        return {kind: getattr(self, name) for kind, name in _CLASSIFIERS}

    def _exact_class(self, pc: int, insn: Instruction, info: OpInfo) -> StencilKey:
        return insn.opcode, info.variant, insn.dst, insn.src, insn.imm, insn.off

    def _alu_class(self, pc: int, insn: Instruction, info: OpInfo) -> StencilKey:
        imm = insn.imm
        cls: Probe | int = imm
        if info.reg_src:
            # Only a 64-bit mov can start an extension: the others need not look at their neighbours.
            if info.op == _MOV and info.width == 64:
                self.looked_around = True
                extension = self._extension_move(pc, insn, info)
                if extension is not None:
                    return insn.opcode, info.variant, insn.dst, insn.src, extension, imm, insn.off
        else:
            aop = info.op
            if aop in _IMM_FORM_OPS:
                cls = _I8 if -128 <= imm < 128 else _I32
            elif aop == _MOV and imm:
                cls = _I32 if imm > 0 or info.width == 32 else _N32
            elif aop in _SHIFTS and 0 < imm < info.width:
                self.looked_around = imm == 32
                pair = self._extension_pair(pc, insn, info) if imm == 32 else None
                if pair is None:
                    cls = _COUNT
                else:  # the code depends on the neighbour: one class per role, imm exact
                    return insn.opcode, info.variant, insn.dst, insn.src, pair, imm, insn.off
        return insn.opcode, info.variant, insn.dst, insn.src, cls, insn.off

    def _access_class(self, pc: int, insn: Instruction, info: OpInfo) -> StencilKey | None:
        """Loads and stores: the disp0/disp8/disp32 form, whether the access is in the fixed
        frame (each probe stands for one of those), and whether it is proven (its base perhaps
        confined already) or covered by a versioned loop's check. Probe loads have none."""
        kind = info.kind
        imm: Probe | int
        if kind is _ST:
            base, imm = insn.dst, _STORE_PROBE[info.size]
        elif kind is _STX:
            base, imm = insn.dst, insn.imm
        elif pc in self.options.probe_loads:
            return None  # a probe load's code (a failure gives 0) is emitted each time
        else:
            base, imm = insn.src, insn.imm
        off = insn.off
        access = 2 if pc in self.unchecked else pc in self._proven
        if off == 0:
            return insn.opcode, info.variant, insn.dst, insn.src, access, imm, 0
        direct = base == FP and self._fp_fixed and -STACK_SIZE <= off <= -info.size
        if -128 <= off < 128:
            return insn.opcode, info.variant, insn.dst, insn.src, access, imm, _NEG8 if direct else _I8
        return insn.opcode, info.variant, insn.dst, insn.src, access, imm, _ND32 if direct else _D32

    def _jcond_class(self, pc: int, insn: Instruction, info: OpInfo) -> StencilKey:
        imm = insn.imm
        if info.reg_src:
            return insn.opcode, info.variant, insn.dst, insn.src, imm, _ABSENT
        self.looked_around = not imm
        if not imm and self._flags_hold(pc, insn, info):  # (only a test against 0 can use the flags)
            # No compare: the ALU op before set the flags.
            return insn.opcode, info.variant, insn.dst, insn.src, "flags", imm, _ABSENT
        cls = _I32 if info.op == _JSET or not -128 <= imm < 128 else _I8
        return insn.opcode, info.variant, insn.dst, insn.src, cls, _ABSENT

    def _ja_class(self, pc: int, insn: Instruction, info: OpInfo) -> StencilKey:
        return insn.opcode, info.variant, insn.dst, insn.src, self.flow.targets[pc] == pc + 1, _ABSENT, _ABSENT

    # -- emission primitives ----------------------------------------------------------------------

    def op(self, shape: Shape, *values: int) -> None:
        """One instruction into the hot section."""
        (self._cached(shape) or self._templates(shape)).emit(self.hot, *values)

    def cop(self, shape: Shape, *values: int) -> None:
        """One instruction into the cold section."""
        self._templates(shape).emit(self.cold, *values)

    def _buf(self, section: Section) -> bytearray:
        return self.hot if section is Section.HOT else self.cold

    def branch(self, mnemonic: str, target: int, section: Section = Section.HOT) -> None:
        """A rel32 jump or call to ``target`` (a location), resolved at link time."""
        buf = self._buf(section)
        self._templates((mnemonic, "rel32")).emit(buf, 0)
        self.refer(location(section, len(buf) - 4), target)

    def branch_named(self, mnemonic: str, name: str, section: Section = Section.HOT) -> None:
        """A rel32 jump or call to a runtime routine."""
        buf = self._buf(section)
        self._templates((mnemonic, "rel32")).emit(buf, 0)
        self.refer_named(location(section, len(buf) - 4), name)

    def forward(self, mnemonic: str, section: Section = Section.HOT) -> int:
        """A rel32 jump to a label later in the same section; returns the field to ``bind``."""
        buf = self._buf(section)
        self._templates((mnemonic, "rel32")).emit(buf, 0)
        return len(buf) - 4

    def bind(self, field: int, section: Section = Section.HOT) -> None:
        """Point a ``forward`` jump at the current end of its section."""
        buf = self._buf(section)
        self.patch_branch(buf, field, len(buf) - (field + 4))

    def stub(self, info: int, abort: str, what: str, pc: int) -> int:
        """An out-of-line stub that reports ``info`` to the ``abort`` routine; returns its location."""
        loc = self.here(Section.COLD)
        self.marks.append((loc, f"stub: {what}", pc))
        self.load_tmp(info, Section.COLD)
        self.branch_named("jmp", abort, Section.COLD)
        return loc

    def load_tmp(self, value: int, section: Section) -> None:
        """TMP = value (an unsigned constant)."""
        buf = self._buf(section)
        if value < 1 << 31:
            self._templates(("mov", "r11d", "i32")).emit(buf, value)
        else:
            self._templates(("mov", TMP, "i64")).emit(buf, value)

    def load_const(self, reg: int, value: int) -> None:
        """eBPF register ``reg`` = the unsigned 64-bit ``value``, in the shortest form."""
        if value == 0:
            self.op(("xor", D[reg], D[reg]))
        elif value < 1 << 32:
            self.op(("mov", D[reg], "i32"), value)
        elif value >= (1 << 64) - (1 << 31):
            self.op(("mov", Q[reg], "i32"), value)
        else:
            self.op(("mov", Q[reg], "i64"), value)

    # -- program structure ----------------------------------------------------------------------

    def emit_entries(self) -> None:
        # The frame's regions and limits serve the inline checks, the walker their slow paths
        # reach and versioned loops; its packet fields the legacy packet loads.
        self._frame_regions = bool(self._limits_used) or self._needs_end
        self.replayed(("entries", self.options.verified, self._frame_regions, self._needs_packet, self._has_may_goto,
                       bool(self.options.async_entries), self.options.helper_calls), self._emit_entries)

    def _emit_entries(self) -> None:
        L = self.lay
        # (ctx, mem, size), for the native batch loops: mem as r1/r2 and the packet, the caller's
        # extra regions kept.
        self.entries["args"] = len(self.hot)
        self.mark("entry: arguments", Section.HOT)
        self._store("rdi", L.ctx_mem, "rsi")
        self._store("rdi", L.ctx_mem_size, "rdx")
        to_mem = self.forward("jmp")
        self.entries["none"] = len(self.hot)
        self.mark("entry: no memory", Section.HOT)
        self._store_imm("rdi", L.ctx_mem, 0)
        self._store_imm("rdi", L.ctx_mem_size, 0)
        self.entries["mem"] = len(self.hot)
        self.mark("entry: mem", Section.HOT)
        self._store_imm("rdi", L.ctx_nextra, 0)
        self.bind(to_mem)
        self._load("rax", "rdi", L.ctx_mem)
        self._store("rdi", L.ctx_r1, "rax")
        self._load("rdx", "rdi", L.ctx_mem_size)
        self._store("rdi", L.ctx_r2, "rdx")
        self._store_imm("rdi", L.ctx_mem_writable, 1)
        if self._needs_packet:  # mem is the packet, which no helper moves
            self._own_packet()
            self._own_bounds("rax", "rdx")
        # The C entries keep the callee-saved registers around "run", which every run enters by
        # a call and leaves by returning (see exit): a batch saves them once for all its inputs.
        self.entries["regions"] = len(self.hot)
        self.mark("entry: regions", Section.HOT)
        for reg in _C_SAVED:
            self.op(("push", reg))
        to_run = [self.forward("call")]
        for reg in reversed(_C_SAVED):
            self.op(("pop", reg))
        self.op(("ret",))
        batch_runs = self._emit_batch()
        for field in to_run:
            self.bind(field)
        self.mark("entry: run, prologue", Section.HOT)
        self._emit_prologue(from_mem=False)
        self.branch("jmp", location(Section.PC, 0))
        # A batch's runs take r1 and r2 where it put the input (mem and its size): two stores
        # fewer per input. This copy falls through into the program.
        for field in batch_runs:
            self.bind(field)
        self.mark("entry: run of a batch input, prologue", Section.HOT)
        self._emit_prologue(from_mem=True)

    def _emit_prologue(self, *, from_mem: bool) -> None:
        """The run's frame and state from the context (rdi), r1 and r2 from its r1 and r2 words,
        or ``from_mem`` from its mem and size."""
        L = self.lay
        self.op(("sub", "rsp", imm_form(L.frame_size)), L.frame_size)
        self.op(("mov", FRAME, "rsp"))
        self._store(FRAME, L.frame_ctx, "rdi")
        self.op(("xor", "eax", "eax"))
        self._store("rdi", L.ctx_status, "rax")
        self._store("rdi", L.ctx_pending, "rax")
        if self._has_may_goto:
            self._store_imm(FRAME, L.frame_may_goto, MAY_GOTO_BUDGET)
        mem_region = L.frame_regions
        stack_region = L.frame_regions + L.region_size
        if self._frame_regions:
            self._load("rax", "rdi", L.ctx_mem)
            self._store(FRAME, mem_region + L.region_base, "rax")
            self._load("rdx", "rdi", L.ctx_mem_size)
            self._store(FRAME, mem_region + L.region_len, "rdx")
            self._load("rcx", "rdi", L.ctx_mem_writable)
            self._store(FRAME, mem_region + L.region_writable, "rcx")
            self.branch_named("call", "limits")  # rax = mem base, rdx = mem size, rcx = writable
        if self._frame_regions or not self.options.verified:
            self._load("rax", "rdi", L.ctx_stack_base)  # (the frame zeroing below starts from it)
        if self._frame_regions:
            self._store(FRAME, stack_region + L.region_base, "rax")
            self._store_imm(FRAME, stack_region + L.region_len, STACK_BYTES)
            self._store_imm(FRAME, stack_region + L.region_writable, 1)
        if self._needs_packet:
            self._load("rcx", "rdi", L.ctx_pkt_bounds)
            self._store(FRAME, L.frame_pkt_bounds, "rcx")
            self._load("rcx", "rdi", L.ctx_pkt_net)
            self._store(FRAME, L.frame_pkt_net, "rcx")
        if self._frame_regions:
            self._load("rcx", "rdi", L.ctx_extra)
            self._store(FRAME, L.frame_extra, "rcx")
            self._load("rcx", "rdi", L.ctx_nextra)
            self._store(FRAME, L.frame_nextra, "rcx")
        if not self.options.verified:
            # Frame f of the stack area starts at top - 512 (f + 1); a local call at depth f (rsp =
            # FRAME - 64 f) enters frame f + 1, so its start is zero_base + 8 rsp.
            self.op(("lea", "rcx", "[rax+d32]"), STACK_BYTES - 2 * STACK_SIZE)
            self.op(("mov", "rdx", FRAME))
            self.op(("shl", "rdx", "i8"), _ZERO_SHIFT)
            self.op(("sub", "rcx", "rdx"))
            self._store(FRAME, L.frame_zero_base, "rcx")
            self.op(("lea", TMP, "[rax+d32]"), STACK_BYTES - STACK_SIZE)
            self.branch_named("call", "zero")
        self._load("rbp", "rdi", L.ctx_frame_pointer)
        self._load(BUDGET, "rdi", L.ctx_budget)
        if self.options.async_entries:  # a run of a timer's callback (see emit_async_entry)
            self._load("rax", "rdi", L.ctx_callback)
            self.op(("test", "rax", "rax"))
            self.branch_named("jnz", "async_entry")
        if from_mem:
            self._load("rsi", "rdi", L.ctx_mem_size)
            self._load("rdi", "rdi", L.ctx_mem)
        else:
            self._load("rsi", "rdi", L.ctx_r2)
            self._load("rdi", "rdi", L.ctx_r1)
        if not self.options.verified:
            for reg in ("eax", "edx", "ecx", "r8d", "ebx", "r13d", "r14d", "r15d"):
                self.op(("xor", reg, reg))

    def emit_async_entry(self) -> None:
        """Where the prologue goes for a run of an asynchronous callback (rax = its address, as
        ``lddw func:`` loads it): r1-r3 from the context, then the callback entered as a local
        call from depth 0 would (r10 one eBPF frame down, its frame zeroed unless verified), and
        its r0 is the run's. An address that names none of the program's callbacks aborts."""
        entries = self.options.async_entries
        if not entries:
            return
        L = self.lay
        self.define("async_entry", Section.HOT)
        self._load("rdx", "rdi", L.ctx_r3)
        self._load("rsi", "rdi", L.ctx_r2)
        self._load("rdi", "rdi", L.ctx_r1)
        if not self.options.verified:
            for reg in ("ecx", "r8d", "ebx", "r13d", "r14d", "r15d"):
                self.op(("xor", reg, reg))
        to_entry = []
        for entry in entries:
            self.op(("mov", TMP, "i64"), function_address(entry))
            self.op(("cmp", "rax", TMP))
            to_entry.append(self.forward("je"))
        self.op(("mov", ADDR, "rax"))
        self.branch("jmp", self.stub(0, "abort_callback", "not a callback", 0))
        for entry, field in zip(entries, to_entry, strict=True):
            self.bind(field)
            if not self.options.verified:  # (rsp is still depth 0's, from which the frame is found)
                self.op(("mov", TMP, "rsp"))
                self.op(("shl", TMP, "i8"), _ZERO_SHIFT)
                token, vals = mem("q", FRAME, L.frame_zero_base)
                self.op(("add", TMP, token), *vals)
                self.branch_named("call", "zero")
            self.op(("sub", "rsp", "i8"), LOCAL_FRAME - 8)
            self.op(("sub", "rbp", "i32"), STACK_SIZE)
            self.branch("call", location(Section.PC, entry))
            self.branch_named("jmp", "exit")

    def _own_packet(self) -> None:
        """Point the context's packet (rdi: the context) at its own bounds, of a packet no helper
        moves, with no link-layer header before it; the bounds are the caller's to store."""
        L = self.lay
        self.op(("lea", "rcx", "[rdi+d32]"), L.ctx_pkt_own)
        self._store("rdi", L.ctx_pkt_bounds, "rcx")
        self.op(("add", "rcx", "i8"), 16)
        self._store("rdi", L.ctx_pkt_net, "rcx")
        self._store_imm("rdi", L.ctx_pkt_own + 16, 0)

    def _own_bounds(self, base: str, size: str) -> None:
        """The context's own packet (rdi: the context) is ``size`` bytes from ``base`` (registers:
        ``base`` is left at the end)."""
        L = self.lay
        self._store("rdi", L.ctx_pkt_own, base)
        self.op(("add", base, size))
        self._store("rdi", L.ctx_pkt_own + 8, base)

    def _emit_batch(self) -> list[int]:
        """The "batch" entry, (ctx, struct jitbpf_batch *) -> inputs run: each input is one run of
        "run" as the "args" entry makes it (r1 and r2 from mem), the C registers saved once for all. Stops after a run
        that stopped early (its index returned, as the C loops did), else returns n. Each run
        starts afresh all the same: "run" resets the run's state (status, budget, stack frame,
        may_goto count) and a run's leftover ring buffer reservations are dropped after it.
        Returns the fields of its calls of "run", to bind."""
        L = self.lay
        self.entries["batch"] = len(self.hot)
        self.mark("entry: batch", Section.HOT)
        for reg in _C_SAVED:
            self.op(("push", reg))
        # The loop's state lives in the frame, where the processor forwards stores to loads
        # fastest (a run uses every register): see _BatchSlot.
        self.op(("sub", "rsp", "i8"), 64)
        self.op(("mov", "q[rsp+d8]", "rdi"), _BatchSlot.CTX)
        self.op(("mov", "q[rsp+d8]", "rsi"), _BatchSlot.DESC)
        self._load("rax", "rsi", L.batch_base)
        self.op(("mov", "q[rsp+d8]", "rax"), _BatchSlot.NEXT)
        self._load("rax", "rsi", L.batch_results)
        self.op(("mov", "q[rsp]", "rax"))
        self._load("rcx", "rsi", L.batch_n)
        self.op(("lea", "rdx", "[rax+rcx*8]"))
        self.op(("mov", "q[rsp+d8]", "rdx"), _BatchSlot.END)
        if self._needs_packet:  # each input is the packet (rcx is n again after it)
            self._own_packet()
            self._load("rcx", "rsi", L.batch_n)
        self.op(("xor", "eax", "eax"))  # (n = 0: none ran)
        self.op(("test", "rcx", "rcx"))
        to_out = [self.forward("jz")]
        to_done: list[int] = []
        self._load("rcx", "rsi", L.batch_lens)
        self.op(("test", "rcx", "rcx"))
        to_lens = self.forward("jnz")
        self._load("rdx", "rsi", L.batch_stride)
        self.op(("mov", "q[rsp+d8]", "rdx"), _BatchSlot.SIZES)
        to_run: list[int] = []
        # Two copies of the loop: records of one size, or inputs of their own lengths.
        for sized in (False, True):
            if sized:
                self.bind(to_lens)
                self.op(("mov", "q[rsp+d8]", "rcx"), _BatchSlot.SIZES)
            loop = self.here()
            if sized:
                self.op(("mov", "rcx", "q[rsp+d8]"), _BatchSlot.SIZES)
                self.op(("mov", "rdx", "q[rcx]"))
                self.op(("add", "rcx", "i8"), 8)
                self.op(("mov", "q[rsp+d8]", "rcx"), _BatchSlot.SIZES)
            else:
                self.op(("mov", "rdx", "q[rsp+d8]"), _BatchSlot.SIZES)
            self.op(("mov", "rdi", "q[rsp+d8]"), _BatchSlot.CTX)
            self.op(("mov", "rcx", "q[rsp+d8]"), _BatchSlot.NEXT)
            self.op(("add", "q[rsp+d8]", "rdx"), _BatchSlot.NEXT)
            self._store("rdi", L.ctx_mem, "rcx")
            self._store("rdi", L.ctx_mem_size, "rdx")
            if self._needs_packet:
                self._own_bounds("rcx", "rdx")
            to_run.append(self.forward("call"))
            self.op(("mov", "rcx", "q[rsp]"))
            self.op(("mov", "q[rcx]", "rax"))
            self.op(("add", "rcx", "i8"), 8)
            self.op(("mov", "q[rsp]", "rcx"))
            to_release = None
            if self.options.helper_calls:  # only a helper reserves ring buffer records
                self.op(("mov", "rsi", "q[rsp+d8]"), _BatchSlot.DESC)
                self._load("rdx", "rsi", L.batch_rb_pending)
                self.op(("mov", "edx", "d[rdx]"))
                self._cmp_field("rdx", "rsi", L.batch_rb_reserved)
                to_release = self.forward("ja")
            released = self.here()
            self.op(("mov", "rdi", "q[rsp+d8]"), _BatchSlot.CTX)
            token, vals = mem("q", "rdi", L.ctx_status)
            self.op(("cmp", token, "i8"), *vals, 0)
            to_stopped = self.forward("jne")
            resume = self.here()
            self.op(("cmp", "rcx", "q[rsp+d8]"), _BatchSlot.END)
            self.branch("jb", loop)
            to_done.append(self.forward("jmp"))
            # A non-zero status with ERROR_RESULT: the run stopped early (else it returned that).
            self.bind(to_stopped)
            self.op(("mov", "rax", "q[rcx+d8]"), -8)
            self.op(("mov", "rdx", "i64"), ERROR_RESULT)
            self.op(("cmp", "rax", "rdx"))
            self.branch("jne", resume)
            self.op(("sub", "rcx", "i8"), 8)  # the inputs before the one that stopped
            to_done.append(self.forward("jmp"))
            if to_release is not None:
                self.bind(to_release)
                self._load("rdi", "rsi", L.batch_rb_reserved)
                self.op(("sub", "rsp", "i8"), 8)
                token, vals = mem("q", "rsi", L.batch_rb_release)
                self.op(("call", token), *vals)
                self.op(("add", "rsp", "i8"), 8)
                self.op(("mov", "rcx", "q[rsp]"))
                self.branch("jmp", released)
        # rcx = where the next result would go: the inputs run are its distance from the first.
        for field in to_done:
            self.bind(field)
        self.op(("mov", "rsi", "q[rsp+d8]"), _BatchSlot.DESC)
        self._load("rax", "rsi", L.batch_results)
        self.op(("sub", "rcx", "rax"))
        self.op(("shr", "rcx", "i8"), 3)
        self.op(("mov", "rax", "rcx"))
        for field in to_out:
            self.bind(field)
        self.op(("add", "rsp", "i8"), 64)
        for reg in reversed(_C_SAVED):
            self.op(("pop", reg))
        self.op(("ret",))
        return to_run

    def quiet_block_entry(self) -> bool:
        return not self.options.count_budget

    def emit_block_entry(self, block: Block) -> None:
        self._block_start = block.start
        if not self.options.count_budget or self._prepaid:
            return
        cost = block.cost
        self.op(("sub", BUDGET, imm_form(cost)), cost)
        self.branch("jb", self.stub(block.start, "abort_budget", "budget exhausted", block.start))

    # -- arithmetic -------------------------------------------------------------------------------

    def emit_alu(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        d, s, imm = insn.dst, insn.src, insn.imm
        wide = info.width == 64
        R = Q if wide else D
        aop = info.op
        simple = _SIMPLE_ALU.get(aop)  # IntEnum keys: a plain int finds them
        if simple is not None:
            if info.reg_src:
                self.op((simple, R[d], R[s]))
            else:
                self.op((simple, R[d], imm_form(imm)), imm)
            return
        match aop:
            case AluOp.MOV:
                extension = self._extension_move(pc, insn, info)
                if extension == _ZEXT:
                    self.op(("mov", D[d], D[s]))  # the shift pair after it zero-extends rY's lower half
                elif extension == _SEXT:
                    self.op(("movsxd", Q[d], D[s]))
                elif info.reg_src:
                    if d != s or not wide:  # a 32-bit move to itself still clears the upper half
                        self.op(("mov", R[d], R[s]))
                else:
                    self.load_const(d, imm & (MASK64 if wide else 0xFFFF_FFFF))
            case AluOp.MUL:
                if info.reg_src:
                    self.op(("imul", R[d], R[s]))
                else:
                    self.op(("imul", R[d], R[d], imm_form(imm)), imm)
            case AluOp.DIV | AluOp.MOD:
                self._divmod(insn, info)
            case AluOp.LSH | AluOp.RSH | AluOp.ARSH:
                self._shift(pc, insn, info)
            case _:
                raise InternalError(f"{self.name}: ALU op {aop:#x}")

    def _shift(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        d, s = insn.dst, insn.src
        wide = info.width == 64
        R = Q if wide else D
        mnemonic = _SHIFTS[AluOp(info.op)]
        pair = self._extension_pair(pc, insn, info)
        if pair == _ZEXT:
            self.op(("mov", D[d], D[d]))  # the pair clears the upper half: rX & 0xffffffff
            return
        if pair == _SEXT:
            self.op(("movsxd", Q[d], D[d]))  # the pair sign-extends the lower half
            return
        if pair in (_SECOND, _MOVED):
            return  # the instruction before did the whole extension
        if not info.reg_src:
            count = insn.imm & (info.width - 1)  # the interpreter masks the count the same way
            if count:
                self.op((mnemonic, R[d], "i8"), count)
            elif not wide:
                self.op(("mov", D[d], D[d]))
            return
        rcx = 4  # eBPF r4 lives in rcx, whose low byte is the only variable shift count
        if s == rcx:
            self.op((mnemonic, R[d], "cl"))
        elif d == rcx:
            self.op(("mov", ADDR, "rcx"))
            self.op(("mov", "ecx", D[s]))
            self.op((mnemonic, ADDR if wide else "r10d", "cl"))
            self.op(("mov", "rcx", ADDR) if wide else ("mov", "ecx", "r10d"))
        else:
            self.op(("mov", TMP, "rcx"))
            self.op(("mov", "ecx", D[s]))
            self.op((mnemonic, R[d], "cl"))
            self.op(("mov", "rcx", TMP))

    def _shift_pair(self, pc: int, insn: Instruction, info: OpInfo) -> str | None:
        """_ZEXT or _SEXT when ``pc`` is a 64-bit ``lsh rX, 32`` followed in its block by ``rsh``
        (zero extension) or ``arsh rX, 32`` (sign extension), else None."""
        if (insn.imm != 32 or info.reg_src or info.width != 64 or info.kind is not _ALU_KIND
                or info.op != _LSH or pc + 1 in self.flow.block_at):
            return None
        slots, infos = self.flow.program.slots, self.flow.program.infos
        nxt, nxt_info = (slots[pc + 1], infos[pc + 1]) if pc + 1 < len(slots) else (None, None)
        if (nxt is None or nxt_info is None or nxt_info.kind is not _ALU_KIND or nxt_info.reg_src
                or nxt_info.width != 64 or nxt.dst != insn.dst or nxt.imm != 32):
            return None
        return _ZEXT if nxt_info.op == _RSH else _SEXT if nxt_info.op == _ARSH else None

    def _extension_move(self, pc: int, insn: Instruction, info: OpInfo) -> str | None:
        """The extension a 64-bit ``mov rX, rY`` at ``pc`` makes of rY when a shift pair on rX
        follows it in its block (then the mov does the whole extension from rY), else None."""
        if info.kind is not _ALU_KIND or info.op != _MOV or not info.reg_src or info.width != 64:
            return None
        slots, infos = self.flow.program.slots, self.flow.program.infos
        if pc + 1 >= len(slots) or pc + 1 in self.flow.block_at:
            return None
        nxt, nxt_info = slots[pc + 1], infos[pc + 1]
        if nxt is None or nxt_info is None or nxt.dst != insn.dst:
            return None
        return self._shift_pair(pc + 1, nxt, nxt_info)

    def _extension_pair(self, pc: int, insn: Instruction, info: OpInfo) -> str | None:
        """The role of a shift at ``pc`` in an extension (emitted as one x86 instruction, each
        eBPF instruction keeping its listing entry): _ZEXT or _SEXT for the lsh of a pair that
        does it, _MOVED for one whose mov before does it, _SECOND for the right shift after the
        lsh, None otherwise."""
        if insn.imm != 32 or info.reg_src or info.width != 64 or info.kind is not _ALU_KIND:
            return None
        slots, infos = self.flow.program.slots, self.flow.program.infos
        if info.op == _LSH:
            role = self._shift_pair(pc, insn, info)
            if role is not None and pc > 0 and pc not in self.flow.block_at:
                prev, prev_info = slots[pc - 1], infos[pc - 1]
                if prev is not None and prev_info is not None and self._extension_move(pc - 1, prev, prev_info):
                    return _MOVED
            return role
        if info.op in (_RSH, _ARSH) and pc > 0 and pc not in self.flow.block_at:
            prev, prev_info = slots[pc - 1], infos[pc - 1]
            if prev is not None and prev_info is not None and self._shift_pair(pc - 1, prev, prev_info):
                return _SECOND
        return None

    def _divmod(self, insn: Instruction, info: OpInfo) -> None:
        """dst = dst / src or dst % src: x / 0 = 0 and x % 0 = x; signed INT_MIN / -1 = INT_MIN and
        INT_MIN % -1 = 0, both handled before idiv, which would trap."""
        d, s = insn.dst, insn.src
        wide = info.width == 64
        R = Q if wide else D
        tmp = TMP if wide else "r11d"
        is_mod = info.op == AluOp.MOD
        signed = info.signed
        if not info.reg_src:
            divisor = insn.imm & (MASK64 if wide else 0xFFFF_FFFF)
            if divisor == 0:
                self._by_zero(d, wide, is_mod)
                return
            if signed and insn.imm == -1:
                self._by_minus_one(d, wide, is_mod)
                return
            self.op(("mov", tmp, "i32"), insn.imm)
            self._divide(d, wide, is_mod, signed)
            return
        self.op(("mov", tmp, R[s]))
        self.op(("test", tmp, tmp))
        to_zero = self.forward("jz")
        to_minus_one = -1
        if signed:
            self.op(("cmp", tmp, "i8"), -1)
            to_minus_one = self.forward("je")
        self._divide(d, wide, is_mod, signed)
        to_done = [self.forward("jmp")]
        self.bind(to_zero)
        self._by_zero(d, wide, is_mod)
        if signed:
            to_done.append(self.forward("jmp"))
            self.bind(to_minus_one)
            self._by_minus_one(d, wide, is_mod)
        for field in to_done:
            self.bind(field)

    def _by_zero(self, d: int, wide: bool, is_mod: bool) -> None:
        if not is_mod:
            self.op(("xor", D[d], D[d]))
        elif not wide:
            self.op(("mov", D[d], D[d]))

    def _by_minus_one(self, d: int, wide: bool, is_mod: bool) -> None:
        if is_mod:
            self.op(("xor", D[d], D[d]))
        else:
            self.op(("neg", Q[d] if wide else D[d]))

    def _divide(self, d: int, wide: bool, is_mod: bool, signed: bool) -> None:
        """dst = dst (/ or %) TMP with rdx:rax, saving r0 (in xmm1) and r3 (in r10) around it."""
        R = Q if wide else D
        rax, rdx = 0, 3
        if d != rdx:
            self.op(("mov", ADDR, "rdx"))
        if d != rax:
            self.op(("movq", "xmm1", "rax"))
            self.op(("mov", R[rax], R[d]))
        if signed:
            self.op(("cqo",) if wide else ("cdq",))
            self.op(("idiv", TMP if wide else "r11d"))
        else:
            self.op(("xor", "edx", "edx"))
            self.op(("div", TMP if wide else "r11d"))
        result = rdx if is_mod else rax
        if d != result:
            self.op(("mov", R[d], R[result]))
        if d != rdx:
            self.op(("mov", "rdx", ADDR))
        if d != rax:
            self.op(("movq", "rax", "xmm1"))

    def emit_neg(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        self.op(("neg", (Q if info.width == 64 else D)[insn.dst]))

    def emit_movsx(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        d, s = insn.dst, insn.src
        R = Q if info.width == 64 else D
        match info.op:
            case 8:
                self.op(("movsx", R[d], B[s]))
            case 16:
                self.op(("movsx", R[d], W[s]))
            case 32:
                self.op(("movsxd", Q[d], D[s]))
            case _:
                raise InternalError(f"{self.name}: movsx from {info.op} bits")

    def emit_endian(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        d, bits = insn.dst, info.op
        swap = info.kind is Kind.BSWAP or info.reg_src  # be* swaps on a little-endian host, le* truncates
        match bits:
            case 16:
                if swap:
                    self.op(("ror", W[d], "i8"), 8)
                self.op(("movzx", D[d], W[d]))
            case 32:
                self.op(("bswap", D[d]) if swap else ("mov", D[d], D[d]))
            case 64:
                if swap:
                    self.op(("bswap", Q[d]))
            case _:
                raise InternalError(f"{self.name}: byte swap of {bits} bits")

    def emit_lddw(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        self.load_const(insn.dst, self.options.resolve_lddw(pc, insn) & MASK64)

    # -- memory -----------------------------------------------------------------------------------

    def _address(self, pc: int, base: int, off: int, size: int, kind: AccessKind,
                 into_addr: bool = False) -> tuple[str, int, int]:
        """Where an access goes: (base register, displacement, pending check).

        Proven accesses use the eBPF register directly (or ADDR, when ``into_addr``). Others get
        an inline check of base + off (wrapping, as the interpreter) against mem, and still use
        the register (ADDR for atomics); the out-of-line part of the check, which sets ADDR for
        the region walker, is emitted by ``_close_check`` once the access is."""
        L = self.lay
        # Unchecked by construction: a versioned loop checked its range on entry, and the frame
        # of an unchanging r10 is always the current one.
        direct = pc in self.unchecked or (base == FP and self._fp_fixed and -STACK_SIZE <= off <= -size)
        if not direct and pc in self.options.proven and self.options.contained:
            # Unchecked on the verifier's word: the address itself is confined to the sandbox
            # (the low half of base + off, bit 31 set), so a wrong proof stays inside, and one
            # that is right, whose address lies in the sandbox, goes where it should. The address,
            # not the register: a pointer may lie outside the sandbox until the access's offset
            # brings it back (a map value's pointer less 8, read at +8), and the register is the
            # program's, unchanged.
            reg = ADDR if into_addr else TMP
            token, vals = mem("", Q[base], off)
            self.op(("lea", f"{reg}d", token), *vals)
            self.op(("or", f"{reg}d", "i32"), SANDBOX_BIT)
            return reg, 0, -1
        if direct or pc in self.options.proven:  # (proven without the sandbox: measurements only)
            if not into_addr:
                return Q[base], off, -1
            if off:
                token, vals = mem("", Q[base], off)
                self.op(("lea", ADDR, token), *vals)
            else:
                self.op(("mov", ADDR, Q[base]))
            return ADDR, 0, -1
        # Offset from mem's start in TMP: base + off - mem.base.
        target = ADDR if into_addr else TMP
        if off:
            token, vals = mem("", Q[base], off)
            self.op(("lea", target, token), *vals)
        else:
            self.op(("mov", target, Q[base]))
        if into_addr:
            self.op(("mov", TMP, ADDR))
        token, vals = mem("q", FRAME, L.frame_regions + L.region_base)
        self.op(("sub", TMP, token), *vals)
        load = kind in (AccessKind.LOAD, AccessKind.PROBE)
        self._limits_used.add((load, size))
        limit = (L.frame_lim_load if load else L.frame_lim_store) + 8 * _SIZE_INDEX[size]
        token, vals = mem("q", FRAME, limit)
        self.op(("cmp", TMP, token), *vals)
        pending = self.forward("jae")
        return (ADDR, 0, pending) if into_addr else (Q[base], off, pending)

    def _close_check(self, pending: int, pc: int, size: int, kind: AccessKind, ok: int,
                     done: int = -1, base: str = ADDR, off: int = 0, dst: int = -1) -> None:
        """The slow path of a bounds check: ADDR = base + off (unless the access computed it),
        the stack area inline, then the region walker. A probe load the walker finds nowhere
        gives 0 in ``dst`` and goes on at ``done``."""
        if pending < 0:
            return
        L = self.lay
        stub = self.here(Section.COLD)
        self.marks.append((stub, "stub: bounds check", pc))
        self.refer(location(Section.HOT, pending), stub)
        if base != ADDR:
            if off:
                token, vals = mem("", base, off)
                self.cop(("lea", ADDR, token), *vals)
            else:
                self.cop(("mov", ADDR, base))
        self.cop(("mov", TMP, ADDR))
        token, vals = mem("q", FRAME, L.frame_regions + L.region_size + L.region_base)
        self.cop(("sub", TMP, token), *vals)
        self.cop(("cmp", TMP, "i32"), STACK_BYTES - size + 1)
        self.branch("jb", ok, Section.COLD)
        info = access_info(pc, kind, size)
        self.load_tmp(info, Section.COLD)
        self.branch_named("call", "walk", Section.COLD)
        if kind is AccessKind.PROBE:
            self.cop(("test", "r11d", "r11d"))
            self.branch("jz", ok, Section.COLD)
            self.cop(("xor", D[dst], D[dst]))
            self.branch("jmp", done, Section.COLD)
            return
        if kind is AccessKind.CMPXCHG:
            # A read-only region: compare without storing; equal means the store would happen.
            self.cop(("test", TMP, TMP))
            self.branch("jz", ok, Section.COLD)
            wide = size == 8
            tmp, acc = (TMP, "rax") if wide else ("r11d", "eax")
            self.cop(("mov", tmp, f"{_SIZE_PREFIX[size]}[{ADDR}]"))
            self.cop(("cmp", tmp, acc))
            differ = self.forward("jne", Section.COLD)
            self.load_tmp(info, Section.COLD)
            self.branch_named("jmp", "abort_ro_store", Section.COLD)
            self.bind(differ, Section.COLD)
            self.cop(("mov", acc, tmp))
            self.branch("jmp", done, Section.COLD)
            return
        self.branch("jmp", ok, Section.COLD)

    def emit_load(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        d, size = insn.dst, info.size
        kind = AccessKind.PROBE if pc in self.options.probe_loads else AccessKind.LOAD
        base, disp, pending = self._address(pc, insn.src, insn.off, size, kind)
        ok = len(self.hot)  # here(): a hot location is its offset
        token, vals = mem(size, base, disp)
        if info.kind is Kind.LDX:
            if size < 4:
                self.op(("movzx", D[d], token), *vals)
            else:
                self.op(("mov", _BY_SIZE[size][d], token), *vals)
        elif size < 4:
            self.op(("movsx", Q[d], token), *vals)
        else:
            self.op(("movsxd", Q[d], token), *vals)
        if pending >= 0:
            self._close_check(pending, pc, size, kind, ok, done=len(self.hot), base=base, off=disp, dst=d)

    def emit_store(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        size = info.size
        base, disp, pending = self._address(pc, insn.dst, insn.off, size, AccessKind.STORE)
        ok = len(self.hot)  # here(): a hot location is its offset
        token, vals = mem(size, base, disp)
        if info.kind is Kind.STX:
            self.op(("mov", token, _BY_SIZE[size][insn.src]), *vals)
        else:
            self.op(("mov", token, _STORE_IMM[size]), *vals, insn.imm)
        if pending >= 0:
            self._close_check(pending, pc, size, AccessKind.STORE, ok, base=base, off=disp)

    def emit_atomic(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        s, size = insn.src, info.size
        wide = size == 8
        aop = info.op
        kind = AccessKind.CMPXCHG if aop == AtomicOp.CMPXCHG else AccessKind.ATOMIC
        _base, _disp, pending = self._address(pc, insn.dst, insn.off, size, kind, into_addr=True)
        ok = self.here()
        target = f"{_SIZE_PREFIX[size]}[{ADDR}]"
        S = Q[s] if wide else D[s]
        acc, tmp = ("rax", TMP) if wide else ("eax", "r11d")
        base_op = aop & ~ATOMIC_FETCH
        if aop == AtomicOp.CMPXCHG:
            self.op(("lock cmpxchg", target, S))
            if not wide:
                self.op(("mov", "eax", "eax"))  # cmpxchg leaves rax's upper half alone on success
        elif aop == AtomicOp.XCHG:
            self.op(("xchg", target, S))
        elif not aop & ATOMIC_FETCH:
            self.op((f"lock {_ATOMIC_ALU[AtomicOp(base_op)]}", target, S))
        elif base_op == AtomicOp.ADD:
            self.op(("lock xadd", target, S))
        else:
            # fetch-or/and/xor: a compare-exchange loop in rax, whose r0 waits in xmm1.
            mnemonic = _ATOMIC_ALU[AtomicOp(base_op)]
            self.op(("movq", "xmm1", "rax"))
            self.op(("mov", acc, target))
            loop = self.here()
            if s == 0:
                self.op(("movq", TMP, "xmm1"))
                self.op((mnemonic, tmp, acc))
            else:
                self.op(("mov", tmp, acc))
                self.op((mnemonic, tmp, S))
            self.op(("lock cmpxchg", target, tmp))
            self.branch("jne", loop)
            if s != 0:
                self.op(("mov", S, acc))
                self.op(("movq", "rax", "xmm1"))
        self._close_check(pending, pc, size, kind, ok, self.here())

    def emit_packet_load(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Legacy LD_ABS/LD_IND: r0 = big-endian load from the packet as the run's helpers left it
        (an offset from SKF_NET_OFF on counts from the network header, from SKF_LL_OFF on from
        the link-layer header, as the kernel's bpf_internal_load_pointer_neg_helper does); out
        of range ends the program with r0 = 0."""
        L = self.lay
        size = info.size
        self._needs_packet = True
        bounds_tok, bounds_vals = mem("q", FRAME, L.frame_pkt_bounds)
        net_tok, net_vals = mem("q", FRAME, L.frame_pkt_net)
        constant = info.kind is Kind.LD_ABS
        if constant and insn.imm < SKF_LL_OFF:
            self.branch_named("jmp", "packet_exit")
            return
        # TMP = the offset from the packet's first byte (non-negative, below 2**32 + 2**21).
        if constant and insn.imm >= 0:
            self.op(("mov", "r11d", "i32"), insn.imm)
        else:
            if constant:
                self.op(("mov", TMP, "i32"), insn.imm)
            else:
                self.op(("mov", "r11d", D[insn.src]))
                self.op(("add", "r11d", "i32"), insn.imm)
                self.op(("movsxd", TMP, "r11d"))
            to_offset = []
            if not constant:
                self.op(("test", TMP, TMP))
                to_offset.append(self.forward("jns"))
            if not constant or insn.imm < SKF_NET_OFF:
                self.op(("cmp", TMP, "i32"), SKF_NET_OFF)
                to_link = self.forward("jl")
            else:
                to_link = None
            if not constant or insn.imm >= SKF_NET_OFF:  # from the network header
                self.op(("mov", ADDR, net_tok), *net_vals)
                self.op(("mov", "eax", f"d[{ADDR}]"))
                self.op(("add", TMP, "rax"))
                self.op(("add", TMP, "i32"), -SKF_NET_OFF)
                if to_link is not None:
                    to_offset.append(self.forward("jmp"))
            if to_link is not None:  # from the link-layer header, which starts the packet if it has one
                self.bind(to_link)
                self.op(("cmp", TMP, "i32"), SKF_LL_OFF)
                self.branch_named("jl", "packet_exit")
                self.op(("mov", ADDR, net_tok), *net_vals)
                self.op(("cmp", f"d[{ADDR}]", "i8"), 0)
                self.branch_named("je", "packet_exit")
                self.op(("add", TMP, "i32"), -SKF_LL_OFF)
            for field in to_offset:
                self.bind(field)
        self.op(("mov", ADDR, bounds_tok), *bounds_vals)
        self.op(("mov", "rax", f"q[{ADDR}+d8]"), 8)
        self.op(("sub", "rax", f"q[{ADDR}]"))
        self.op(("sub", "rax", TMP))  # bytes from the offset on (signed: the offset may be past the end)
        self.op(("cmp", "rax", "i8"), size)
        self.branch_named("jl", "packet_exit")
        self.op(("add", TMP, f"q[{ADDR}]"))
        token, vals = mem(size, TMP, 0)
        match size:
            case 1:
                self.op(("movzx", "eax", token), *vals)
            case 2:
                self.op(("movzx", "eax", token), *vals)
                self.op(("ror", "ax", "i8"), 8)
            case 4:
                self.op(("mov", "eax", token), *vals)
                self.op(("bswap", "eax"))
            case _:
                raise InternalError(f"{self.name}: packet load of {size} bytes")

    # -- control flow -----------------------------------------------------------------------------

    def emit_ja(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        target = self.flow.targets[pc]
        if target != pc + 1:
            self.branch("jmp", location(Section.PC, target))

    def emit_jcond(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        d = insn.dst
        R = Q if info.width == 64 else D
        compare = "test" if info.op == JmpOp.JSET else "cmp"
        if self._flags_hold(pc, insn, info):
            pass  # the ALU instruction just before left ZF as the comparison with 0 would
        elif info.reg_src:
            self.op((compare, R[d], R[insn.src]))
        elif compare == "cmp":
            self.op(("cmp", R[d], imm_form(insn.imm)), insn.imm)
        else:
            self.op(("test", R[d], "i32"), insn.imm)
        self.branch("j" + info.cc, self.retarget.get(pc) or location(Section.PC, self.flow.targets[pc]))

    def _flags_hold(self, pc: int, insn: Instruction, info: OpInfo) -> bool:
        """Whether ``jeq/jne rX, 0`` at ``pc`` can branch on the flags of the instruction before
        it: an add, sub, and, or or xor into rX in the same block (emitted as that one x86
        instruction, which sets ZF from its result); a 32-bit one also decides a 64-bit test,
        its result being zero-extended, but not the other way round."""
        if insn.imm or info.reg_src or info.op not in _ZERO_TESTS or pc in self.flow.block_at or pc == 0:
            return False
        program = self.flow.program
        prev, prev_info = program.slots[pc - 1], program.infos[pc - 1]
        return (prev is not None and prev_info is not None and prev_info.kind is _ALU_KIND
                and prev.dst == insn.dst and prev_info.op in _SIMPLE_ALU
                and (prev_info.width == 32 or info.width == 64))

    def emit_loop(self, plan: LoopPlan) -> None:
        """The range check, the unchecked copy (entered when every access of the loop is proven
        in mem), then the ordinary copy; each copy's back-edge stays in that copy."""
        L = self.lay
        block = plan.block
        self.mark(f"loop: range check of r{plan.index} up to r{plan.bound}", Section.HOT)
        X, Y = Q[plan.index], Q[plan.bound]
        end = L.frame_mem_wend if plan.stores else L.frame_mem_end
        self._needs_end = True
        to_checked = []
        self.op(("lea", TMP, f"[{Y}+d8]"), -1)  # TMP = max(rX, rY - 1): the last index a pass may use
        self.op(("cmp", TMP, X))
        self.op(("cmovb", TMP, X))
        token, vals = mem("q", FRAME, L.frame_regions + L.region_base)
        self.op(("cmp", X, token), *vals)
        to_checked.append(self.forward("jb"))
        token, vals = mem("q", FRAME, end)
        self.op(("cmp", TMP, token), *vals)
        to_checked.append(self.forward("jae"))  # also catches rY = 0 (TMP wrapped)
        ltok, lvals = mem("", TMP, plan.hi)
        self.op(("lea", ADDR, ltok), *lvals)
        self.op(("cmp", ADDR, token), *vals)
        to_checked.append(self.forward("ja"))
        step = plan.step
        # Every pass at once: its charge times floor((TMP - rX) / c) + 1 passes; with too little
        # budget left, the checked copy stops at the very pass the interpreter does.
        prepaid = self.options.count_budget and step & (step - 1) == 0
        if prepaid:
            self.op(("mov", ADDR, TMP))
            self.op(("sub", ADDR, X))
            if step > 1:
                self.op(("shr", ADDR, "i8"), step.bit_length() - 1)
            self.op(("add", ADDR, "i8"), 1)
            if block.cost > 1:
                self.op(("imul", ADDR, ADDR, imm_form(block.cost)), block.cost)
            self.op(("cmp", BUDGET, ADDR))
            to_checked.append(self.forward("jb"))
            self.op(("sub", BUDGET, ADDR))
        self._align(_LOOP_ALIGN)
        unchecked = self.here()
        self.mark("loop: unchecked copy" + (", charged on entry" if prepaid else ""), Section.HOT)
        self.unchecked, self.retarget[block.last] = plan.accesses, unchecked
        self._prepaid = prepaid
        self.emit_block(block, record=True)
        self.unchecked, self._prepaid = frozenset(), False
        self.branch("jmp", location(Section.PC, block.end))
        for field in to_checked:
            self.bind(field)
        self.mark("loop: checked copy", Section.HOT)
        self.retarget[block.last] = self.here()
        self.emit_block(block, record=False)
        del self.retarget[block.last]

    def _align(self, boundary: int) -> None:
        """Pad the blocks' code to a multiple of ``boundary`` (from the blocks' start, which link
        aligns): a few nops run through, a longer gap is jumped over."""
        pad = -len(self.hot) % boundary
        if pad < _JUMP_OVER:
            for _ in range(pad):
                self.op(("nop",))
            return
        over = self.forward("jmp")
        self.hot += self.filler * (pad - 5)  # (a jmp rel32 is 5 bytes)
        self.bind(over)

    def _saved_around(self, pc: int) -> list[str]:
        """Host registers to keep across the helper call at ``pc``: the budget, and those of r1-r5
        read later before being written (the interpreter keeps them all; a dead one needs no
        saving), padded to an even count so that rsp stays 16-byte aligned for the call."""
        if self._live_after_calls is None:
            program = self.flow.program
            pcs = [p for p, _i, inf in program if inf.kind in (Kind.CALL, Kind.CALLX)]
            self._live_after_calls = live_after(self.flow, pcs)
        live = self._live_after_calls.get(pc, ARG_REGS)
        saved = [Q[r] for r in range(1, 6) if live >> r & 1] + [BUDGET]
        return saved if len(saved) % 2 == 0 else [*saved, BUDGET]

    def emit_call(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Helper call: r1-r5 are already the C argument registers; those still needed afterwards
        and the budget are pushed, the helper id goes in the 6th argument."""
        L = self.lay
        callback = self.options.callbacks.get(pc)
        if callback is not None:
            self._emit_call_back(pc, callback)
            return
        table = self.options.helpers
        saved = self._saved_around(pc)
        for reg in saved:
            self.op(("push", reg))
        if info.kind is Kind.CALL:
            hid = insn.imm
            if 0 <= hid < table.capacity and pc not in self.options.python_calls:
                self.op(("mov", "r9d", "i32"), hid)
                self.op(("mov", TMP, "i64"), table.address + 8 * hid)
                self.op(("call", "q[r11]"))
            else:
                self.op(("mov", BUDGET, "i32"), hid)
                self.op(("mov", TMP, "i64"), table.dispatcher)
                self.op(("call", TMP))
        else:
            self.op(("mov", BUDGET, Q[insn.dst]))
            self.op(("cmp", BUDGET, "i32"), table.capacity)
            to_dispatcher = self.forward("jae")
            self.op(("mov", TMP, "i64"), table.address)
            self.op(("call", f"q[{TMP}+{BUDGET}*8]"))
            to_done = self.forward("jmp")
            self.bind(to_dispatcher)
            self.op(("mov", TMP, "i64"), table.dispatcher)
            self.op(("call", TMP))
            self.bind(to_done)
        for reg in reversed(saved):
            self.op(("pop", reg))
        token, vals = mem("q", FRAME, L.frame_ctx)
        self.op(("mov", TMP, token), *vals)
        token, vals = mem("q", TMP, L.ctx_pending)
        self.op(("cmp", token, "i8"), *vals, 0)
        self.branch("jne", self.stub(pc, "abort_helper", "helper failed", pc))

    def emit_call_local(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """bpf-to-bpf call: a 64-byte machine frame holds r6-r9 and r10; the callee's eBPF frame
        is zeroed (unless verified) and r10 moves down one frame. Depth comes from rsp, so errors
        need no unwinding."""
        L = self.lay
        block_start = self._block_start
        self.op(("lea", TMP, "[r12+d32]"), -LOCAL_FRAME * (MAX_CALL_DEPTH - 1))
        self.op(("cmp", "rsp", TMP))
        self.branch("jbe", self.stub(block_start, "abort_depth", "call depth exceeded", pc))
        if not self.options.verified:
            self.op(("mov", TMP, "rsp"))
            self.op(("shl", TMP, "i8"), _ZERO_SHIFT)
            token, vals = mem("q", FRAME, L.frame_zero_base)
            self.op(("add", TMP, token), *vals)
            self.branch_named("call", "zero")
        # Only what the callee itself may write needs saving (its own calls restore what theirs
        # write); the machine frame keeps its size, which the depth check and zeroing rely on.
        written = self._written_by(self.flow.targets[pc])
        saved = [Q[r] for r in range(6, FP + 1) if written >> r & 1]
        pad = LOCAL_FRAME - 8 - 8 * len(saved)
        for reg in saved:
            self.op(("push", reg))
        self.op(("sub", "rsp", "i8"), pad)
        self.op(("sub", "rbp", "i32"), STACK_SIZE)
        self.branch("call", location(Section.PC, self.flow.targets[pc]))
        self.op(("add", "rsp", "i8"), pad)
        for reg in reversed(saved):
            self.op(("pop", reg))
        if not written >> FP & 1:
            self.op(("add", "rbp", "i32"), STACK_SIZE)

    def _emit_call_back(self, pc: int, kind: CallbackKind) -> None:
        """bpf_loop / bpf_for_each_map_elem / bpf_user_ringbuf_drain, as the interpreter runs
        them: r2 must be one of the program's callbacks; each invocation enters it as a local
        call would (a 64-byte machine frame holding r6-r10, r10 one eBPF frame down), the
        iteration's state kept per call depth in the run's jitbpf_frame. r0 = invocations, r1-r5 = 0 afterwards."""
        self.op(("lea", TMP, "[r12+d32]"), -LOCAL_FRAME * (MAX_CALL_DEPTH - 1))
        self.op(("cmp", "rsp", TMP))
        self.branch("jbe", self.stub(self._block_start, "abort_depth", "call depth exceeded", self._block_start))
        to_entry = []
        entries = sorted(set(self.flow.callbacks.values()))
        for entry in entries:
            self.op(("mov", TMP, "i64"), function_address(entry))
            self.op(("cmp", "rsi", TMP))
            to_entry.append(self.forward("je"))
        self.op(("mov", ADDR, "rsi"))
        self.branch("jmp", self.stub(pc, "abort_callback", "not a callback", pc))
        to_done: list[int] = []
        for entry, field in zip(entries, to_entry, strict=True):
            self.bind(field)
            to_done += self._emit_iteration(pc, kind, entry)
        for field in to_done:
            self.bind(field)
        for reg in ("edi", "esi", "edx", "ecx", "r8d"):
            self.op(("xor", reg, reg))

    def _callback_row(self, pushed: int) -> None:
        """TMP = this call depth's jitbpf_frame.callback row (less its offset), ``pushed`` bytes
        below the depth's rsp: rows are 32 bytes, depths 64 bytes of machine stack apart."""
        self.op(("mov", TMP, FRAME))
        self.op(("sub", TMP, "rsp"))
        if pushed:
            self.op(("sub", TMP, "i8"), pushed)
        self.op(("shr", TMP, "i8"), 1)
        self.op(("add", TMP, FRAME))

    def _emit_iteration(self, pc: int, kind: CallbackKind, entry: int) -> list[int]:
        """The loop of one helper call over the callback at ``entry``; returns the forward jumps
        to after it."""
        stepped = kind is not CallbackKind.LOOP  # a native step gives each invocation's arguments
        if stepped and not self._fp_fixed:
            # The key's (dynptr's) place is found from r10, which this program may change: C would
            # then write it wherever r10 points. The interpreter keeps the frames apart from r10.
            helper = "bpf_for_each_map_elem" if kind is CallbackKind.FOR_EACH else "bpf_user_ringbuf_drain"
            raise JitError(f"a program that writes r10 cannot call {helper} in the JIT (run it with the interpreter)",
                           pc=pc)
        L = self.lay
        cb = L.frame_callback
        to_errors: list[tuple[int, int]] = []
        if kind is CallbackKind.USER_RINGBUF:
            self.op(("cmp", "rcx", "i8"), DRAIN_FLAGS)  # (flags beyond the two wake-up bits make it larger)
            to_errors.append((self.forward("ja"), -errno.EINVAL))
        else:
            self.op(("test", "rcx", "rcx"))
            to_errors.append((self.forward("jnz"), -errno.EINVAL))  # no flags are defined
        if kind is CallbackKind.LOOP:
            self.op(("mov", TMP, "i64"), MAX_LOOP_ITERATIONS)
            self.op(("cmp", "rdi", TMP))
            to_errors.append((self.forward("ja"), -errno.E2BIG))
        self._callback_row(0)
        self._store_imm(TMP, cb, 0)  # invocations returned
        self._store(TMP, cb + 8, "rdi")  # the count asked for, or the map
        self._store(TMP, cb + 16, "rdx")  # the context
        self._store_imm(TMP, cb + 24, 0)  # the map cursor
        for reg in _LOCAL_SAVED:
            self.op(("push", reg))
        pushed = 8 * len(_LOCAL_SAVED) + _LOCAL_PAD  # with the call's return address: LOCAL_FRAME
        self.op(("sub", "rsp", "i8"), _LOCAL_PAD)
        saved_fp = _LOCAL_PAD  # where r10 (rbp, pushed last) is
        loop = self.here()
        if not self.options.verified:  # the callback's frame reads as zeros (the key comes after)
            self.op(("lea", TMP, "[rsp+d8]"), pushed)
            self.op(("shl", TMP, "i8"), _ZERO_SHIFT)
            token, vals = mem("q", FRAME, L.frame_zero_base)
            self.op(("add", TMP, token), *vals)
            self.branch_named("call", "zero")
        self._callback_row(pushed)
        to_end = []
        if kind is CallbackKind.LOOP:
            self._load("rdi", TMP, cb)
            token, vals = mem("q", TMP, cb + 8)
            self.op(("cmp", "rdi", token), *vals)
            to_end.append(self.forward("jae"))
            self._load("rsi", TMP, cb + 16)
            for reg in ("edx", "ecx", "r8d"):
                self.op(("xor", reg, reg))
        else:
            self._load("rdi", TMP, cb + 8)
            self._load("rsi", "rsp", saved_fp)
            self.op(("sub", "rsi", "i32"), 2 * STACK_SIZE)  # the key: the bottom of the callback's frame
            drain = kind is CallbackKind.USER_RINGBUF
            token, vals = mem("", TMP, cb if drain else cb + 24)  # the drain's step takes the whole row
            self.op(("lea", "rdx", token), *vals)
            self.op(("push", BUDGET))  # (which also aligns rsp for the C call)
            self.op(("mov", "rax", "i64"), self.options.user_ringbuf_step if drain else self.options.for_each_step)
            self.op(("call", "rax"))
            self.op(("pop", BUDGET))
            self.op(("test", "rax", "rax"))
            to_end.append(self.forward("jz"))
            self._callback_row(pushed)
            if drain:  # r1: the sample's dynptr, where the step wrote it; r2: the context
                self._load("rdi", "rsp", saved_fp)
                self.op(("sub", "rdi", "i32"), 2 * STACK_SIZE)
                self._load("rsi", TMP, cb + 16)
                for reg in ("edx", "ecx", "r8d"):
                    self.op(("xor", reg, reg))
            else:
                self.op(("mov", "rdx", "rax"))  # r3: the value
                self._load("rdi", TMP, cb + 8)
                self._load("rsi", "rsp", saved_fp)
                self.op(("sub", "rsi", "i32"), 2 * STACK_SIZE)
                self._load("rcx", TMP, cb + 16)
                self.op(("xor", "r8d", "r8d"))
        self._load("rbp", "rsp", saved_fp)
        self.op(("sub", "rbp", "i32"), STACK_SIZE)
        self.branch("call", location(Section.PC, entry))
        self._callback_row(pushed)
        token, vals = mem("q", TMP, cb)
        self.op(("add", token, "i8"), *vals, 1)
        self.op(("test", "rax", "rax"))
        self.branch("jz", loop)
        for field in to_end:
            self.bind(field)
        self._callback_row(pushed)
        self._load("rax", TMP, cb)
        self.op(("add", "rsp", "i8"), _LOCAL_PAD)
        for reg in reversed(_LOCAL_SAVED):
            self.op(("pop", reg))
        to_after = [self.forward("jmp")]
        for field, value in to_errors:  # the helper fails at once, as the kernel's does
            self.bind(field)
            self.load_const(0, value & MASK64)
            to_after.append(self.forward("jmp"))
        return to_after

    def emit_may_goto(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        self._has_may_goto = True  # the prologue sets the run's allowance
        token, vals = mem("q", FRAME, self.lay.frame_may_goto)
        self.op(("cmp", token, "i8"), *vals, 0)
        self.branch("je", self.retarget.get(pc) or location(Section.PC, self.flow.targets[pc]))
        self.op(("sub", token, "i8"), *vals, 1)

    def _written_by(self, entry: int) -> int:
        """Mask of the registers the function at ``entry`` may write with its own instructions."""
        if self._fn_writes is None:
            program = self.flow.program
            self._fn_writes = {}
            for fn in self.flow.functions:
                mask = 0
                for pc in range(fn.entry, fn.end):
                    insn, info = program.slots[pc], program.infos[pc]
                    if insn is not None and info is not None and info.kind is not Kind.CALL_LOCAL:
                        mask |= register_writes(insn, info)
                self._fn_writes[fn.entry] = mask
        return self._fn_writes.get(entry, -1)

    def emit_exit(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        if pc >= self._main_end:
            self.op(("ret",))
        elif self._main_called:
            # The main function is also called locally: only the outermost frame leaves the run.
            self.op(("cmp", "rsp", FRAME))
            self.branch_named("je", "exit")
            self.op(("ret",))
        else:  # the "exit" routine itself, inline: one jump less per run
            self.op(("lea", "rsp", "[r12+d32]"), self.lay.frame_size)
            self.op(("ret",))

    def emit_kfunc(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        self.branch("jmp", self.stub(pc, "abort_kfunc", "kernel function call", pc))

    # -- runtime routines -------------------------------------------------------------------------

    def emit_runtime(self) -> None:
        self.replayed(("runtime", frozenset(self._limits_used), self._needs_end), self._emit_runtime)

    def _emit_runtime(self) -> None:
        L = self.lay
        self.define("exit")  # rax = r0, back to the entry that called "run"
        self.cop(("lea", "rsp", "[r12+d32]"), L.frame_size)
        self.cop(("ret",))
        self.define("packet_exit")
        self.cop(("xor", "eax", "eax"))
        self.branch_named("jmp", "exit", Section.COLD)
        for status in Status:
            if status is not Status.OK:
                self.define(f"abort_{status.name.lower()}")
                self.cop(("mov", "eax", "i32"), status)
                self.branch_named("jmp", "abort", Section.COLD)
        self.define("abort")  # eax = status, r11 = info, r10 = address
        token, vals = mem("q", FRAME, L.frame_ctx)
        self.cop(("mov", "rdx", token), *vals)
        for field, reg in ((L.ctx_status, "rax"), (L.ctx_err_info, TMP), (L.ctx_err_addr, ADDR),
                           (L.ctx_budget_left, BUDGET)):
            token, vals = mem("q", "rdx", field)
            self.cop(("mov", token, reg), *vals)
        self.cop(("mov", "rax", "i64"), ERROR_RESULT)
        self.branch_named("jmp", "exit", Section.COLD)
        self._emit_limits()
        self.define("zero")  # clear STACK_SIZE bytes at r11
        self.cop(("pxor", "xmm0", "xmm0"))
        for offset in range(0, STACK_SIZE, _ZERO_STORE):
            token, vals = mem("o", TMP, offset)
            self.cop(("movups", token, "xmm0"), *vals)
        self.cop(("ret",))
        self._emit_walker()

    def _emit_limits(self) -> None:
        """The frame's mem limits, for the access sizes the inline checks use: valid mem offsets
        for an access of k bytes are those below size - k + 1 (none when the region is smaller);
        stores see none when mem is read-only, so they take the slow path; then mem's ends for
        versioned loops. rax = mem base, rdx = mem size, rcx = writable."""
        L = self.lay
        self.define("limits")
        self.cop(("xor", "r11d", "r11d"))
        for is_load, k in sorted(self._limits_used):
            self.cop(("mov", ADDR, "rdx"))
            if k > 1:
                self.cop(("sub", ADDR, "i8"), k - 1)
                self.cop(("cmovb", ADDR, TMP))
            index = 8 * _SIZE_INDEX[k]
            if is_load:
                token, vals = mem("q", FRAME, L.frame_lim_load + index)
            else:
                self.cop(("test", "rcx", "rcx"))
                self.cop(("cmovz", ADDR, TMP))
                token, vals = mem("q", FRAME, L.frame_lim_store + index)
            self.cop(("mov", token, ADDR), *vals)
        if self._needs_end:
            self.cop(("lea", ADDR, "[rax+rdx*1]"))
            token, vals = mem("q", FRAME, L.frame_mem_end)
            self.cop(("mov", token, ADDR), *vals)
            self.cop(("test", "rcx", "rcx"))
            self.cop(("cmovz", ADDR, "rax"))
            token, vals = mem("q", FRAME, L.frame_mem_wend)
            self.cop(("mov", token, ADDR), *vals)
        self.cop(("ret",))

    def _emit_walker(self) -> None:
        """Find the region holding [r10, r10 + size) like MemoryMap.find: mem, the stack area,
        then ctx->extra, in order. r11 = access info. Returns r11 = 0 if the access may proceed,
        1 for a compare-exchange on a read-only region; otherwise aborts with the interpreter's
        error."""
        L = self.lay
        cold = Section.COLD
        self.define("walk")
        for reg in ("rax", "rcx", "rdx", "rsi"):
            self.cop(("push", reg))
        self.cop(("mov", "ecx", "r11d"))
        self.cop(("and", "ecx", "i8"), 15)
        token, vals = mem("", FRAME, L.frame_regions)
        self.cop(("lea", "rsi", token), *vals)
        self.cop(("mov", "edx", "i32"), 2)
        found: list[int] = []
        for table in range(2):
            if table:
                token, vals = mem("q", FRAME, L.frame_nextra)
                self.cop(("mov", "rdx", token), *vals)
                token, vals = mem("q", FRAME, L.frame_extra)
                self.cop(("mov", "rsi", token), *vals)
            loop = self.here(cold)
            self.cop(("test", "rdx", "rdx"))
            to_end = self.forward("jz", cold)
            self.cop(("mov", "rax", ADDR))
            token, vals = mem("q", "rsi", L.region_base)
            self.cop(("sub", "rax", token), *vals)
            next_fields = [self.forward("jb", cold)]  # below the region
            self.cop(("add", "rax", "rcx"))
            next_fields.append(self.forward("jc", cold))  # the access wraps around
            token, vals = mem("q", "rsi", L.region_len)
            self.cop(("cmp", "rax", token), *vals)
            next_fields.append(self.forward("ja", cold))  # past the end
            found.append(self.forward("jmp", cold))
            for field in next_fields:
                self.bind(field, cold)
            self.cop(("add", "rsi", "i8"), L.region_size)
            self.cop(("dec", "rdx"))
            self.branch("jmp", loop, cold)
            self.bind(to_end, cold)
        # Nowhere: a probe load (it gives 0), a load (atomics load first) or a store out of bounds.
        self.cop(("mov", "eax", "r11d"))
        self.cop(("shr", "eax", "i8"), 4)
        self.cop(("and", "eax", "i8"), 15)
        self.cop(("cmp", "eax", "i8"), AccessKind.PROBE)
        missed = self.forward("je", cold)
        self.cop(("cmp", "eax", "i8"), AccessKind.STORE)
        self.branch_named("je", "abort_oob_store", cold)
        self.branch_named("jmp", "abort_oob_load", cold)
        for field in found:
            self.bind(field, cold)
        token, vals = mem("q", "rsi", L.region_writable)
        self.cop(("cmp", token, "i8"), *vals, 0)
        to_ok = self.forward("jne", cold)
        self.cop(("mov", "eax", "r11d"))
        self.cop(("shr", "eax", "i8"), 4)
        self.cop(("and", "eax", "i8"), 15)
        self.cop(("cmp", "eax", "i8"), AccessKind.LOAD)
        to_ok_load = self.forward("je", cold)
        self.cop(("cmp", "eax", "i8"), AccessKind.PROBE)
        to_ok_probe = self.forward("je", cold)
        self.cop(("cmp", "eax", "i8"), AccessKind.CMPXCHG)
        self.branch_named("jne", "abort_ro_store", cold)
        for reg in ("rsi", "rdx", "rcx", "rax"):
            self.cop(("pop", reg))
        self.cop(("mov", "r11d", "i32"), 1)
        self.cop(("ret",))
        self.bind(missed, cold)
        for reg in ("rsi", "rdx", "rcx", "rax"):
            self.cop(("pop", reg))
        self.cop(("mov", "r11d", "i32"), 2)
        self.cop(("ret",))
        self.bind(to_ok, cold)
        self.bind(to_ok_load, cold)
        self.bind(to_ok_probe, cold)
        for reg in ("rsi", "rdx", "rcx", "rax"):
            self.cop(("pop", reg))
        self.cop(("xor", "r11d", "r11d"))
        self.cop(("ret",))

    # -- small helpers for the prologue ----------------------------------------------------------

    def _load(self, reg: str, base: str, disp: int) -> None:
        token, vals = mem("q", base, disp)
        self.op(("mov", reg, token), *vals)

    def _store(self, base: str, disp: int, reg: str) -> None:
        token, vals = mem("q", base, disp)
        self.op(("mov", token, reg), *vals)

    def _cmp_field(self, reg: str, base: str, disp: int) -> None:
        token, vals = mem("q", base, disp)
        self.op(("cmp", reg, token), *vals)

    def _store_imm(self, base: str, disp: int, value: int) -> None:
        token, vals = mem("q", base, disp)
        self.op(("mov", token, "i32"), *vals, value)

