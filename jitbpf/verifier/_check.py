"""The data-flow analysis: abstract interpretation of every path, kernel style, with state pruning."""

from __future__ import annotations

import enum
import functools
import gc
from collections.abc import Callable, Mapping
from typing import NoReturn

from jitbpf.cfg import ControlFlow
from jitbpf.contract import ARG_REGS, CALLEE_SAVED, CallbackKind, scratch_args
from jitbpf.errors import InternalError
from jitbpf.helpers import MAX_ERRNO, Helper
from jitbpf.isa import (
    CORE_POISON,
    FP,
    LDDW_OPCODE,
    MASK32,
    STACK_SIZE,
    AluOp,
    AtomicOp,
    Instruction,
    JmpOp,
    Kind,
    OpInfo,
    PseudoSrc,
    alu_function,
    jump_function,
    opcode_mask,
)
from jitbpf.linux.dynptrs import DYNPTR_SIZE, DynptrKind
from jitbpf.linux.maps import (
    BPF_F_RDONLY_PROG,
    BPF_F_WRONLY_PROG,
    HELPERS_OF_TYPE,
    MAP_OF_MAPS_TYPES,
    MAP_WRITE_HELPERS,
    SOCKET_MAP_TYPES,
    MapType,
)
from jitbpf.verifier import _scalar as sc
from jitbpf.verifier._control import Control, analyze_control
from jitbpf.verifier._dynptr import (
    DYNPTR_SLOTS,
    destroy,
    dynptr_slots,
    first_dynptr_byte,
    initialised_at,
    referenced_among,
)
from jitbpf.verifier._progress import CHECK_EVERY, Progress
from jitbpf.verifier._sock import sock_load_ok, tcp_sock_load_ok
from jitbpf.verifier._state import (
    INVALID,
    MASK_REGS,
    MISC,
    NREGS,
    SLOTS,
    Frame,
    History,
    Slot,
    State,
    join_key,
    join_states,
    kinds_key,
    known_numbers,
    lock_id,
    shared_ids,
    state_within,
    widen,
)
from jitbpf.verifier._types import (
    NOT_INIT,
    UNKNOWN_SCALAR,
    ArgType,
    BtfArg,
    ContextSpec,
    GlobalFunc,
    MapLike,
    ParamKind,
    Reg,
    RegType,
    RetType,
    VerifyResult,
    inner_handle,
)

COMPLEXITY_LIMIT = 1_000_000  # instructions processed before a program is "too complex" (the kernel's)
MAX_VISITS = 32  # states remembered per prune point (the oldest are forgotten first)
CHECKPOINT_GAP = 8  # instructions along a path between two states remembered inside a loop
MERGE_AFTER = 4  # remembered states at a join point outside loops before new arrivals are merged
MAX_LINK_OFFSET = (1 << 31) - 1  # largest constant an add may put between linked scalars (the kernel's)
MAX_OFFSET = 1 << 29  # bound on pointer offsets and helper sizes (the kernel's BPF_MAX_VAR_OFF)
MAX_PACKET_OFF = 0xFFFF  # bound on packet offsets
# Helper arguments that take memory (which a packet pointer could give), and those pointers.
ARRAY_LOOKUP = 1  # bpf_map_lookup_elem, whose array values at a known index are never NULL
MEMORY_ARGS = frozenset({ArgType.KEY, ArgType.VALUE, ArgType.VALUE_OR_NULL, ArgType.UNINIT_VALUE, ArgType.MEM,
                         ArgType.MEM_OR_NULL, ArgType.UNINIT_MEM, ArgType.UNINIT_LONG, ArgType.VALUE_MEM})
# The special structs of a map value that only helpers may touch: (the map's attribute giving
# their offset, the kernel's name, their size).
SPECIAL_FIELDS = (("spin_lock_off", "bpf_spin_lock", 4), ("timer_off", "bpf_timer", 16))
# The dynptr a helper initialises, by argument kind.
NEW_DYNPTRS = {ArgType.NEW_LOCAL_DYNPTR: DynptrKind.LOCAL, ArgType.NEW_RINGBUF_DYNPTR: DynptrKind.RINGBUF}
PACKET_POINTERS = frozenset({RegType.PTR_TO_PACKET, RegType.PTR_TO_PACKET_META})
# The kernel's names of the ALU operators (bpf_alu_string), for its messages.
ALU_SYMBOLS = {AluOp.ADD: "+=", AluOp.SUB: "-=", AluOp.MUL: "*=", AluOp.DIV: "/=", AluOp.OR: "|=", AluOp.AND: "&=",
               AluOp.LSH: "<<=", AluOp.RSH: ">>=", AluOp.NEG: "neg", AluOp.MOD: "%=", AluOp.XOR: "^=",
               AluOp.MOV: "=", AluOp.ARSH: "s>>="}
DIVISIONS = (AluOp.DIV, AluOp.MOD)  # (a constant: the ALU rule asks per instruction)
SHIFTS = (AluOp.LSH, AluOp.RSH, AluOp.ARSH)  # whose constant amount must lie within the width
# An unsigned comparison with its operands swapped (b < a for a > b).
MIRRORED: dict[int, int] = {JmpOp.JGT: JmpOp.JLT, JmpOp.JGE: JmpOp.JLE, JmpOp.JLT: JmpOp.JGT, JmpOp.JLE: JmpOp.JGE}
FLOW_KEYS_SIZE = 56  # sizeof(struct bpf_flow_keys)
NET_IP_ALIGN = 2  # packet data starts this far past an aligned address (the kernel's assumption)
LOG_LINES = 400  # lines of path kept for the error log
# The aux of a PTR_TO_BUF a global function got as an argument: the memory may be a plain
# program's buffer, outside the sandbox, so accesses through it keep their runtime check.
ARG_MEMORY = 1

Pt = RegType


SLICES = frozenset({Pt.PTR_TO_BUF, Pt.PTR_TO_BUF_OR_NULL})  # a dynptr's memory, as bpf_dynptr_data gives it


def _after_callbacks(regs: list[Reg]) -> None:
    """The caller's registers once a helper's calls of its callback are over: r0 the helper's
    result, r1-r5 unreadable."""
    regs[0] = UNKNOWN_SCALAR
    for i in range(1, 6):
        regs[i] = NOT_INIT


_LDDW_OPCODES = opcode_mask((LDDW_OPCODE,))
# What the kernel's refusal to store a pointer outside the stack calls each kind of memory.
_LEAK_TARGETS = {Pt.PTR_TO_MAP_VALUE: "map", Pt.PTR_TO_CTX: "ctx", Pt.PTR_TO_PACKET: "packet",
                 Pt.PTR_TO_PACKET_META: "packet", Pt.PTR_TO_FLOW_KEYS: "flow keys"}
# What a helper's memory argument may point to (the kernel's mem_types).
_MEMORY_POINTERS = frozenset({Pt.PTR_TO_STACK, Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_META, Pt.PTR_TO_MAP_KEY,
                              Pt.PTR_TO_MAP_VALUE, Pt.PTR_TO_MEM, Pt.PTR_TO_BUF, Pt.PTR_TO_BTF_ID})
_MEMORY_KINDS = "fp, pkt, pkt_meta, map_key, map_value, mem, ringbuf_mem, buf, trusted_ptr_"  # (the kernel's words)
# Pointers that a helper's memory argument of zero bytes must still keep within their object.
_ZERO_SIZE_BOUNDED = frozenset({Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_META, Pt.PTR_TO_MAP_VALUE})
# What a pointer that may be null becomes once compared against 0.
NON_NULL = {Pt.PTR_TO_MAP_VALUE_OR_NULL: Pt.PTR_TO_MAP_VALUE, Pt.PTR_TO_BUF_OR_NULL: Pt.PTR_TO_BUF,
            Pt.CONST_PTR_TO_MAP_OR_NULL: Pt.CONST_PTR_TO_MAP, Pt.PTR_TO_BTF_ID_OR_NULL: Pt.PTR_TO_BTF_ID,
            Pt.PTR_TO_MEM_OR_NULL: Pt.PTR_TO_MEM, Pt.PTR_TO_SOCK_COMMON_OR_NULL: Pt.PTR_TO_SOCK_COMMON,
            Pt.PTR_TO_SOCKET_OR_NULL: Pt.PTR_TO_SOCKET, Pt.PTR_TO_TCP_SOCK_OR_NULL: Pt.PTR_TO_TCP_SOCK}
POINTER_OR_NULL = tuple(NON_NULL)
# Pointers whose constant offset moves by what is added to them, with no other effect.
OFFSET_POINTERS = frozenset({Pt.PTR_TO_STACK, Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_META, Pt.PTR_TO_MAP_VALUE})
# What an acquiring helper returns, by its return type.
ACQUIRED = {RetType.ACQUIRED_MEM_OR_NULL: Pt.PTR_TO_BUF_OR_NULL,
            RetType.ACQUIRED_SOCKET_OR_NULL: Pt.PTR_TO_SOCKET_OR_NULL,
            RetType.ACQUIRED_SOCK_COMMON_OR_NULL: Pt.PTR_TO_SOCK_COMMON_OR_NULL}
PACKET_KINDS = (Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_END, Pt.PTR_TO_PACKET_META)
# Pointers of one type and aux that need not share a base: two lookups in one map give two
# values anywhere in memory, and memory of unknown size may be any buffer.
# Compared with 0, the branch is known.
SOCKETS = (Pt.PTR_TO_SOCK_COMMON, Pt.PTR_TO_SOCKET, Pt.PTR_TO_TCP_SOCK)  # what a socket argument takes
# (A function's or a callback's dynptr address may be moved, as in the kernel: a helper then
# refuses it as a modified pointer.)
NO_ARITHMETIC = (*POINTER_OR_NULL, Pt.PTR_TO_PACKET_END, Pt.CONST_PTR_TO_MAP, *SOCKETS)
NEVER_NULL = (Pt.PTR_TO_MAP_VALUE, Pt.CONST_PTR_TO_MAP, Pt.PTR_TO_BUF, Pt.PTR_TO_FUNC, Pt.PTR_TO_MAP_KEY, *SOCKETS)
UNRELATED_BASES = (Pt.PTR_TO_MAP_VALUE, Pt.PTR_TO_MAP_VALUE_OR_NULL, Pt.PTR_TO_MEM, Pt.PTR_TO_BUF,
                   Pt.PTR_TO_BUF_OR_NULL)
FIELD_KINDS = {"packet": Pt.PTR_TO_PACKET, "packet_end": Pt.PTR_TO_PACKET_END, "packet_meta": Pt.PTR_TO_PACKET_META,
               "sock_common_or_null": Pt.PTR_TO_SOCK_COMMON_OR_NULL, "socket": Pt.PTR_TO_SOCKET,
               "socket_or_null": Pt.PTR_TO_SOCKET_OR_NULL, "flow_keys": Pt.PTR_TO_FLOW_KEYS}
STACK_BOTTOM = -STACK_SIZE
ALL_REGS = (1 << 11) - 1
ALL_SLOTS = (1 << SLOTS) - 1
RET_REGS = 0b111111  # r0-r5: what a callee hands back in this VM
CALLBACK_ROUNDS = 32  # times a callback is verified again for one call site before its states must agree
WIDEN_AFTER = 4  # rounds of a callback after which the numbers it changes become unknown
MAY_GOTO_WIDEN_AFTER = 2  # the same for rounds through a may_goto (loops forget old states soon)


def _slot_mask(start: int, size: int) -> int:
    """Stack slots overlapping bytes [start, start + size) of a frame (bytes counted from r10-512)."""
    first, last = start // 8, (start + size - 1) // 8
    return ((1 << (last - first + 1)) - 1) << first


# How ``State.precise`` changes across one instruction, fixed per instruction: (need, keep,
# add, keep_else, add_else, branch). When ``precise`` holds every register of ``need`` it becomes
# ``precise & keep | add``, else ``precise & keep_else | add_else``, or 0 for a ``branch`` that
# narrowed linked copies.
PreciseRule = tuple[int, int, int, int, int, bool]


def _precise_rule(insn: Instruction, info: OpInfo) -> PreciseRule:
    """``State.precise`` after ``insn``: the forward reading of ``Checker._backtrack``'s rules. A
    register stays followed back when its new value comes only from followed registers and
    constants; everything else it is cleared."""
    d, s = 1 << insn.dst, 1 << insn.src
    same: PreciseRule = (0, -1, 0, -1, 0, False)
    match info.kind:
        case Kind.ALU:
            if info.op == AluOp.MOV:
                if not info.reg_src:
                    return (0, -1, d, -1, 0, False)  # a constant has no past
                return (s, -1, d, ~d, 0, False)
            if info.reg_src:
                return (s, -1, 0, ~d, 0, False)
            return same
        case Kind.MOVSX:
            return (s, -1, d, ~d, 0, False)
        case Kind.LDDW:
            return (0, -1, d, -1, 0, False)
        case Kind.NEG | Kind.END | Kind.BSWAP | Kind.JA | Kind.ST | Kind.STX:
            return same
        case Kind.JCOND:
            # A branch ties its operands to each other (and, when linked, to their copies).
            ops = d | (s if info.reg_src else 0)
            return (ops, -1, 0, ~ops, 0, True)
        case Kind.LDX | Kind.LDXSX | Kind.ATOMIC:
            return (0, ~d & ~s & ~1, 0, -1, 0, False)  # loaded from memory: its past is the stack's
        case Kind.CALL | Kind.CALLX | Kind.LD_ABS | Kind.LD_IND:
            return (0, ~RET_REGS, 0, -1, 0, False)
        case _:
            return (0, 0, 0, -1, 0, False)  # a change of frame (local call, return) or anything unusual: start over


def _precise_after(rule: PreciseRule, aux: int, precise: int) -> int:
    need, keep, add, keep_else, add_else, branch = rule
    if precise & need == need:
        return precise & keep | add
    if branch and aux > 0:
        return 0
    return precise & keep_else | add_else


# How backtracking follows the registers it wants through an instruction that touches no
# memory, frame or link, fixed per instruction: (dst, clear, add): when the wanted registers
# hold ``dst`` they become ``wanted & ~clear | add``. Other instructions have None and their
# own case in ``Checker._backtrack``.
BackRule = tuple[int, int, int]


def _back_rule(insn: Instruction, info: OpInfo) -> BackRule | None:
    """``Checker._backtrack``'s rule for an instruction of registers only (see ``BackRule``)."""
    d, s = 1 << insn.dst, 1 << insn.src
    match info.kind:
        case Kind.ALU:
            if info.op == AluOp.MOV:
                return (d, d, s if info.reg_src else 0)  # the value came from src, or is a constant
            return (d, 0, s) if info.reg_src else (0, 0, 0)  # both operands made the result
        case Kind.MOVSX:
            return (d, d, s)
        case Kind.LDDW:
            return (d, d, 0)
        case Kind.NEG | Kind.END | Kind.BSWAP | Kind.JA | Kind.MAY_GOTO | Kind.CALL_KFUNC:
            return (0, 0, 0)
        case _:
            return None


def _alu_symbol(op: int) -> str:
    """The kernel's name of an ALU operator, for a message."""
    return ALU_SYMBOLS.get(AluOp(op), AluOp(op).name.lower())


# Map types by the kernel struct that holds them (bpf_array, bpf_htab).
_ARRAY_MAPS = frozenset({MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.PROG_ARRAY, MapType.PERF_EVENT_ARRAY,
                         MapType.CGROUP_ARRAY, MapType.ARRAY_OF_MAPS})
_HASH_MAPS = frozenset({MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH,
                        MapType.HASH_OF_MAPS})


def _map_struct(maps: Mapping[int, MapLike] | None, handle: int) -> str:
    """The kernel's struct behind a map pointer of this map's type (its BTF name in messages)."""
    m = maps.get(handle) if maps is not None else None
    kind = getattr(m, "map_type", None)
    if kind in _ARRAY_MAPS:
        return "bpf_array"
    return "bpf_htab" if kind in _HASH_MAPS else "bpf_map"


class Access(enum.Enum):
    """How an instruction touches memory."""

    READ = "read"  # load
    WRITE = "write"  # store
    ATOMIC = "atomic"  # read-modify-write


# How the kernel's stack bounds messages name an access (None: a helper's).
_STACK_VERBS = {Access.READ: "read from", Access.WRITE: "write to", Access.ATOMIC: "atomic access to",
                None: "indirect access to"}


class Rejected(Exception):  # an internal signal, turned into a VerifierError by the caller
    """A program fault found at ``pc``."""

    def __init__(self, pc: int, message: str) -> None:
        super().__init__(message)
        self.pc = pc
        self.message = message


class _Visit:
    """A state remembered at a prune point, linked to the previous one on its path.

    ``branches`` counts the paths through it still being explored; at zero every continuation
    was verified, and any later state within it can be pruned.
    """

    __slots__ = ("branches", "hist", "hits", "join_key", "kinds", "known", "misses", "parent", "precise",
                 "precise_slots", "reads", "shared", "state")

    def __init__(self, state: State | None, parent: _Visit | None, shared: frozenset[int]) -> None:
        self.state = state  # registers not live here are cleared
        self.parent = parent  # previous visit on the same path
        self.branches = 1  # unfinished paths through this visit
        self.shared = shared  # ids linking two or more values in ``state``
        self.hits = 0  # later states pruned by this one
        self.misses = 0  # later states compared in vain (inside loops)
        self.join_key: tuple[tuple[int, ...], tuple[object, ...]] | None = None  # (live masks, join_key of state)
        self.kinds: tuple[tuple[int, ...], tuple[object, ...]] | None = None  # kinds_key(state), once asked
        self.known: tuple[tuple[int, int], ...] | None = None  # known_numbers(state), once asked
        # Per frame, a bit per stack slot that some continuation read: the other slots' contents
        # never mattered, so they are ignored when later states are compared with this one.
        nframes = len(state.frames) if state is not None else 0
        self.reads = [0] * nframes
        # Per frame, the registers and spilled scalars whose exact value some check after this
        # point depended on (found by backtracking from the check): only those must match.
        self.precise = [0] * nframes
        self.precise_slots = [0] * nframes
        self.hist: History = state.hist if state is not None else None  # where the path was


LogNode = tuple[str, "LogNode"] | None  # the path's log, newest line first, shared between branches
Rule = Callable[[State, list[Reg], Instruction, OpInfo], None]  # an instruction's rule (registers: the innermost)
# A conditional jump's rule: the states that take it and that fall through (None: no such path).
Branch = Callable[[State, list[Reg], Instruction, OpInfo], tuple[State | None, State | None]]
# What the walk looks up per slot (see ``Checker._steps``).
Step = tuple[Instruction, OpInfo, Rule | None, "PreciseRule", "BackRule | None", int, Branch | None]
_new_reg = tuple.__new__  # Reg(...) without NamedTuple's __new__, for the registers made per instruction


def _parse_helper(helper: Helper) -> tuple[tuple[ArgType, ...], RetType]:
    return helper.signature


class Checker:
    """One verification run over a program (holds all of the run's mutable state)."""

    def __init__(self, flow: ControlFlow, *, helpers: Mapping[int, Helper], maps: Mapping[int, MapLike] | None,
                 context: ContextSpec, allow_loops: bool, budget: int, log: bool, max_call_depth: int,
                 stack_limit: int, privileged: bool = True, prune: bool = True,
                 progress: Progress | None = None, strict_alignment: bool = False,
                 functions: Mapping[int, GlobalFunc] | None = None,
                 refused_helpers: Mapping[int, str] | None = None) -> None:
        self.flow = flow
        # Helpers the program type may not call, with the refusal: as calls to helpers that do
        # not exist, refused where a path reaches them (the kernel's rule: dead code may call
        # anything, as CO-RE-guarded code of newer kernels does).
        self.refused = refused_helpers or {}
        # Off, no state is remembered: every path is walked to its end (exponential, and loops
        # never stop), the reference that pruning must agree with.
        self.prune = prune
        self.slots = flow.program.slots
        self.infos = flow.program.infos
        self.targets = flow.targets
        # The maps by handle, and the inner map template of each outer map by inner_handle().
        self.maps: Mapping[int, MapLike] | None = None if maps is None else {
            **maps, **{inner_handle(h): m.inner for h, m in maps.items()  # type: ignore[attr-defined]
                       if m.map_type in MAP_OF_MAPS_TYPES}}
        self.helper_names = {hid: h.name for hid, h in helpers.items()}
        self.map_types = {hid: h.map_types for hid, h in helpers.items() if h.map_types}
        self.context = context
        self.allow_loops = allow_loops
        # A privileged loader's relaxations (the kernel's with CAP_BPF/CAP_PERFMON): pointers may
        # become scalars (leak), never-written stack may be read (it reads as zero: both engines
        # clear the frames of such a program).
        self.privileged = privileged
        self.reads_uninit_stack = False
        self.uses_addresses = False  # see _address_use
        self.strict_alignment = strict_alignment  # every access aligned, not only the stack's
        self.budget = budget
        self.log = log
        self.max_call_depth = max_call_depth
        self.stack_limit = stack_limit
        self.signatures = {hid: _parse_helper(h) for hid, h in helpers.items()}
        self.limit = max(budget, COMPLEXITY_LIMIT)
        self.next_id = 0
        self.processed = 0
        self.progress = progress if progress is not None and progress.active else None
        # Instructions processed before ``_milestone`` looks at the limit and the clock again.
        self.watch = min(self.limit, CHECK_EVERY) if self.progress is not None else self.limit
        self.pruned = 0
        self.visits: dict[int, list[_Visit]] = {}
        self.stack_depth: dict[int, int] = {}  # function entry -> bytes of stack it uses
        self.unchecked_calls: set[int] = set()  # helper calls given memory of unproven extent
        self.mem_insns: set[int] = set()
        self.unproven: set[int] = set()
        self.probe_loads: set[int] = set()  # loads through BTF-typed pointers
        self.work: list[tuple[int, State, _Visit, LogNode]] = []
        self.pc = 0
        self.path_log: LogNode = None
        self.disasm_cache: dict[int, str] = {}
        self.constants: dict[int, Reg] = {}  # immediate operands as registers, by value (a few)
        self.loaded: dict[tuple[int, bool], Reg] = {}  # what loads of unknown bytes give, by (size, signed)
        self.control: Control | None = None
        self.visit: _Visit | None = None  # the current path's latest visit
        self.st: State | None = None  # the current path's state
        self.aux = -1  # stack location the current instruction accessed at a fixed offset, or -1
        # Per call of a helper that calls back: the callers' states each round of its callback
        # began with (a round that begins within one of them needs no verifying).
        self.callback_rounds: dict[int, list[State]] = {}
        self.callbacks = {hid: h.callback for hid, h in helpers.items() if h.callback is not None}
        # helpers that keep a function to call later (bpf_timer_set_callback): verified apart
        self.async_callers = frozenset(hid for hid, (args, _ret) in self.signatures.items()
                                       if ArgType.ASYNC_CALLBACK in args)
        self.tail_calls = HELPERS_OF_TYPE.get(MapType.PROG_ARRAY, frozenset())  # the tail-call helper
        # Functions by entry: their kernel numbers (func#N, the main program is 0), and those of
        # them verified on their own (global), with the calls' order of verification.
        self.func_numbers = {f.entry: i for i, f in enumerate(sorted(flow.functions, key=lambda f: f.entry))}
        self.globals = {entry: fn for entry, fn in (functions or {}).items() if entry and entry in self.func_numbers}
        self.called_globals: list[int] = []
        # Per slot, what the walk needs of its instruction, looked up once: (insn, info, the rule
        # of an instruction that only changes the state, how it changes ``State.precise``, how
        # backtracking follows registers through it, next slot).
        self.steps = self._steps()

    def _steps(self) -> list[Step | None]:
        # The rules depend on the opcode-table row and the registers only: identical
        # instructions (most of a long program's) share one lookup.
        rules: dict[tuple[int, str, int, int, int], tuple[Rule | None, PreciseRule, BackRule | None, Branch | None]]
        rules = {}
        steps: list[Step | None] = []
        append = steps.append
        lddw, jcond = Kind.LDDW, Kind.JCOND
        for pc, (insn, info) in enumerate(zip(self.slots, self.infos, strict=True)):
            if insn is None or info is None:
                append(None)
                continue
            key = (info.opcode, info.variant_field, info.variant, insn.dst, insn.src)
            got = rules.get(key)
            if got is None:
                branch = None if info.kind is not jcond else self._known_branch(info) if info.width == 64 \
                    else self._branch
                got = rules[key] = (self._plain_rule(insn, info), _precise_rule(insn, info), _back_rule(insn, info),
                                    branch)
            plain, precise, back, branch = got
            append((insn, info, plain, precise, back, pc + 2 if info.kind is lddw else pc + 1, branch))
        return steps

    def _plain_rule(self, insn: Instruction, info: OpInfo) -> Rule | None:
        """The rule of an instruction that neither jumps nor calls: it changes the state in place."""
        match info.kind:
            case Kind.ALU:
                if info.width == 64 and insn.dst != FP and info.op not in DIVISIONS and info.op not in SHIFTS:
                    return self._known_alu(info)
                return self._alu
            case Kind.NEG:
                return self._neg
            case Kind.MOVSX:
                return self._movsx
            case Kind.END | Kind.BSWAP:
                return self._endian
            case Kind.LDDW:
                return self._lddw
            case Kind.LDX | Kind.LDXSX:
                return self._load
            case Kind.ST | Kind.STX:
                return self._store
            case Kind.ATOMIC:
                return self._atomic
            case _:
                return None

    def _known_alu(self, info: OpInfo) -> Rule:
        """A 64-bit move, or an operation other than a division or shift, on numbers: when both
        operands are known (a loop counter, an address being built) the result is folded here,
        as ``_alu`` would, without its checks; anything else goes to ``_alu``."""
        general, constants, constant = self._alu, self.constants, self._constant
        scalar = Pt.SCALAR
        if info.op == AluOp.MOV:
            if info.reg_src:
                return general

            def move(_st: State, regs: list[Reg], insn: Instruction, _info: OpInfo) -> None:
                regs[insn.dst] = constants.get(insn.imm) or constant(insn.imm)

            return move
        fold = alu_function(info.op, 64)
        const = sc.const
        reg_src = info.reg_src
        # A pointer plus an immediate only moves its fixed offset (``_pointer_add``'s constant
        # case), for the pointers without a rule of their own there.
        # (Not stack or map value pointers for an unprivileged loader: each step is bounds checked.)
        moves = frozenset() if info.op != AluOp.ADD or reg_src \
            else OFFSET_POINTERS if self.privileged else OFFSET_POINTERS - {Pt.PTR_TO_STACK, Pt.PTR_TO_MAP_VALUE}

        def rule(st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
            a = regs[insn.dst]
            b = regs[insn.src] if reg_src else constants.get(insn.imm) or constant(insn.imm)
            t = a.type
            if t is scalar and b.type is scalar:
                av, bv = a.var, b.var
                if not av.mask and not bv.mask:
                    regs[insn.dst] = _new_reg(Reg, (scalar, const(fold(av.value, bv.value)), 0, 0, 0, 0, 0))
                    return
            elif t in moves:
                off = a.off + insn.imm
                if -MAX_OFFSET < insn.imm < MAX_OFFSET and -MAX_OFFSET < off < MAX_OFFSET:
                    regs[insn.dst] = _new_reg(Reg, (t, a.var, off, a.id, a.range, a.aux, a.ref))
                    return
            general(st, regs, insn, info)

        return rule

    def _known_branch(self, info: OpInfo) -> Branch:
        """A 64-bit conditional jump: when both operands are known numbers, linked to no copy (a
        loop counter against its bound), the outcome is decided here, as ``_branch`` would, with
        nothing to narrow; anything else goes to ``_branch``."""
        general, constants, constant = self._branch, self.constants, self._constant
        decide = jump_function(info.op, 64)
        scalar = Pt.SCALAR
        reg_src = info.reg_src

        def branch(st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> tuple[State | None, State | None]:
            a = regs[insn.dst]
            if a.type is not scalar or a.id or a.var.mask:
                return general(st, regs, insn, info)
            if reg_src:
                b = regs[insn.src]
                if b.type is not scalar or b.id or b.var.mask:
                    return general(st, regs, insn, info)
                taken = decide(a.var.value, b.var.value)
                self._precise(insn.dst, insn.src)
            else:
                taken = decide(a.var.value, (constants.get(insn.imm) or constant(insn.imm)).var.value)
                if ~st.precise >> insn.dst & 1:  # (else followed back already: _precise would find nothing)
                    self._precise(insn.dst)
            return (st, None) if taken else (None, st)

        return branch

    # -- driver --------------------------------------------------------------------------------

    def run(self) -> VerifyResult:
        arg_masks = {hid: sum(1 << (i + 1) for i, a in enumerate(args) if a not in (ArgType.ANYTHING, ArgType.IGNORED))
                     for hid, (args, _ret) in self.signatures.items()}
        self.control = analyze_control(self.flow, arg_masks=arg_masks,
                                       allow_loops=self.allow_loops, max_call_depth=self.max_call_depth,
                                       reject=Rejected)
        self._check_lddws()
        self.work.append((0, self._initial_state(), _Visit(None, None, frozenset()), None))
        # The walk makes millions of small objects that reference counting frees, and keeps a
        # growing history alive: the cycle collector finds nothing in them, yet its passes over
        # the history grow with it (80,000 loop iterations took 1.8x as long with it on).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._drain()
            # Then each global function called on the way (and by those), as the kernel does.
            done = 0
            while done < len(self.called_globals):
                entry = self.called_globals[done]
                done += 1
                self._verify_global(entry)
        finally:
            # Freed now, by reference counting: with the collector back on, its first pass would
            # walk every remembered state and the history they hold.
            self.visits.clear()
            self.callback_rounds.clear()
            self.work.clear()
            self.st = self.visit = None
            if collecting:
                gc.enable()
        depth = self._check_stack_depth()
        return VerifyResult(frozenset(self.mem_insns - self.unproven), self.processed, self.pruned, depth,
                            frozenset(self.unchecked_calls), self.reads_uninit_stack, frozenset(self.probe_loads),
                            self.uses_addresses)

    def _drain(self) -> None:
        """Walk every path waiting in the work list."""
        while self.work:
            pc, st, parent, lognode = self.work.pop()
            self.path_log = lognode
            if self.log:
                self._log_line(f"from a branch to {pc}: {self._describe(st)}")
            self._walk(pc, st, parent)

    def _verify_global(self, entry: int) -> None:
        """Walk a global function from its entry, once, for any arguments of its prototype: a
        scalar is any number, a pointer to memory reaches its type's size (or is NULL unless
        tagged arg:nonnull), a context pointer is the program's context."""
        fn, n = self.globals[entry], self.func_numbers[entry]
        regs = [NOT_INIT] * 11
        regs[FP] = Reg(Pt.PTR_TO_STACK)
        for i, param in enumerate(fn.params):
            if param.kind is ParamKind.SCALAR:
                regs[i + 1] = UNKNOWN_SCALAR
            elif param.kind is ParamKind.CTX:
                regs[i + 1] = self._initial_state().frames[0].regs[1]
            elif param.nullable:
                regs[i + 1] = Reg(Pt.PTR_TO_BUF_OR_NULL, range=param.size, aux=ARG_MEMORY, id=self.fresh_id())
            else:
                regs[i + 1] = Reg(Pt.PTR_TO_BUF, range=param.size, aux=ARG_MEMORY)
        if self.log:
            self._log_line(f"Validating {fn.name}() func#{n}...")
        self.work.append((entry, State([Frame(regs, [None] * SLOTS, -1, entry)]), _Visit(None, None, frozenset()),
                          None))
        try:
            self._drain()
        except Rejected as exc:
            raise Rejected(exc.pc, f"{exc.message} (Validating {fn.name}() func#{n}...: a global function is "
                                   "verified on its own, for any arguments that match its prototype)") from None
        if self.log:
            self._log_line(f"Func#{n} ('{fn.name}') is safe for any args that match its prototype")

    def _milestone(self) -> None:
        """Every so many instructions: the complexity limit, and progress for whoever listens."""
        if self.processed > self.limit:
            if self.control is not None and self.control.back_edges:
                self.reject(f"BPF program is too large. Processed {self.processed} insn: loop may not "
                            f"terminate within the budget (limit {self.limit})")
            self.reject(f"program is too complex: processed {self.processed} instructions (limit {self.limit})")
        self.watch = min(self.limit, self.processed + CHECK_EVERY)
        if self.progress is not None:
            self.progress.tick(self.processed)

    def _initial_state(self) -> State:
        regs = [NOT_INIT] * 11
        regs[FP] = Reg(Pt.PTR_TO_STACK)
        if self.context.size is None:
            regs[1] = Reg(Pt.PTR_TO_MEM)
            regs[2] = UNKNOWN_SCALAR
        else:
            regs[1] = Reg(Pt.PTR_TO_CTX)
        return State([Frame(regs, [None] * SLOTS, -1)])

    def fresh_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def reject(self, message: str) -> NoReturn:
        raise Rejected(self.pc, message)

    def _finish(self, visit: _Visit | None) -> None:
        """A path ended: the visits it went through have one unfinished path less."""
        while visit is not None:
            visit.branches -= 1
            if visit.branches > 0:
                return
            visit = visit.parent

    # -- the walk along one path ---------------------------------------------------------------

    def _walk(self, pc: int, st: State, parent: _Visit) -> None:
        control = self.control
        assert control is not None
        prune_points = control.prune_points if self.prune else frozenset()
        back_edges = control.back_edges
        targets = self.targets
        steps = self.steps
        logging = self.log
        # Without loops a path cannot outgrow the budget: only the complexity limit applies.
        depth_limit = self.budget if back_edges else 1 << 62
        before: list[Reg] | None = None  # the registers before the instruction, for the log
        nframes = 0
        jcond, may_goto = Kind.JCOND, Kind.MAY_GOTO  # (locals: looked up per instruction)
        # The rules find the path's state and latest visit here: set whenever those change.
        self.visit = parent
        self.st = st
        while True:
            self.pc = pc
            if pc in prune_points:
                got = self._prune_point(pc, st, parent)
                if got is None:
                    self._finish(parent)
                    return
                st, parent = got
                self.visit = parent
                self.st = st
            self.aux = -1
            step = steps[pc]
            assert step is not None
            insn, info, plain, rule, _back, nxt, branch = step
            self.processed += 1
            st.depth += 1
            if self.processed > self.watch:
                self._milestone()
            if st.depth > depth_limit:
                if st.loop >= 0:
                    self.pc = st.loop
                self.reject(f"loop may not terminate within the budget of {self.budget} instructions")
            frames = st.frames
            regs = frames[-1].regs
            if logging:
                before = list(regs)
                nframes = len(frames)
            kind = info.kind
            if kind is jcond:  # (first: the kind of most instructions that are not plain)
                assert branch is not None
                taken, fall = branch(st, regs, insn, info)
                target = targets[pc]
                node = (pc, self.aux, st.hist)
                for out in (taken, fall):
                    if out is not None:
                        out.hist = node
                        if out.precise:
                            out.precise = _precise_after(rule, self.aux, out.precise)
                if taken is not None and (pc, target) in back_edges:
                    taken.loop = pc
                if taken is not None and fall is not None:
                    if logging:
                        self._log_step(pc, st, before, nframes)
                        before = None
                    parent.branches += 1
                    self.work.append((target, taken, parent, self.path_log))
                    st = fall
                elif taken is not None:
                    st, nxt = taken, target
                elif fall is not None:
                    st = fall
                else:
                    self._finish(parent)
                    return
                self.st = st
            else:
                if plain is not None:
                    plain(st, regs, insn, info)
                else:
                    match kind:
                        case Kind.LD_ABS | Kind.LD_IND:
                            if self._lock_held(st) is not None:
                                self.reject("BPF_LD_[ABS|IND] cannot be used inside bpf_spin_lock-ed region")
                            held = next((at for ref, at in st.refs if ref >= 0), None)
                            if held is not None:  # (it may end the program, as a call to a helper would)
                                self.reject("BPF_LD_[ABS|IND] would lead to reference leak: BPF_LD_[ABS|IND] cannot "
                                            f"be mixed with socket references (one acquired at insn {held} is held)")
                            self._legacy_load(regs, insn, info)
                        case Kind.JA:
                            nxt = targets[pc]
                            if (pc, nxt) in back_edges:
                                st.loop = pc
                        case Kind.CALL:
                            if insn.imm == CORE_POISON:  # checked only where it can run, as the kernel does
                                self.reject("reachable instruction of a CO-RE relocation that failed to resolve")
                            if (refusal := self.refused.get(insn.imm)) is not None:
                                self.reject(refusal)
                            if insn.imm not in self.signatures:
                                self.reject(f"call to nonexistent function {insn.imm}")
                            self._call_helper(st, regs, insn.imm)
                            if insn.imm in self.callbacks:
                                nxt = self._call_back(st, pc, insn.imm)
                        case Kind.MAY_GOTO:
                            # Both ways: the run's allowance may be spent or not, whatever came before.
                            # The allowance bounds the path, not the budget: it need not end within that.
                            st.depth = st.checkpoint = 0
                            taken = st.copy()
                            taken.hist = st.hist = (pc, -1, st.hist)
                            if (pc, targets[pc]) in back_edges:
                                taken.loop = pc
                            parent.branches += 1
                            self.work.append((targets[pc], taken, parent, self.path_log))
                        case Kind.CALLX:
                            target_reg = self._read(regs, insn.dst)
                            if target_reg.type is not Pt.SCALAR or not target_reg.var.is_const:
                                self.reject(f"callx through r{insn.dst}, which does not hold a known helper id")
                            hid = target_reg.var.value
                            self._precise(insn.dst)
                            if hid not in self.signatures:
                                self.reject(f"call to nonexistent function {hid}")
                            self._call_helper(st, regs, hid)
                        case Kind.CALL_LOCAL:
                            if targets[pc] in self.globals:
                                self._call_global(st, regs, targets[pc])
                            else:
                                self._call_local(st, pc)
                                nxt = targets[pc]
                        case Kind.EXIT:
                            if len(st.frames) == 1:
                                if st.frames[0].entry:
                                    self._exit_global(st, regs)
                                else:
                                    self._exit_main(st, regs)
                                if logging:
                                    self._log_line(f"{pc}: {self._disasm(pc)}")
                                self._finish(parent)
                                return
                            callsite = st.frames[-1].callsite
                            caller_info = self.infos[callsite]
                            if caller_info is not None and caller_info.kind is Kind.CALL:  # a helper called back
                                if self.slots[callsite].imm in self.async_callers:  # type: ignore[union-attr]
                                    self._async_return(st)  # its path ends here
                                    self._finish(parent)
                                    return
                                nxt = self._callback_return(st, parent)
                            else:
                                nxt = self._return(st)
                        case Kind.CALL_KFUNC:
                            self.reject("kernel function calls are not supported")
                        case _:
                            raise InternalError(f"no rule for {info.kind}")
                if kind is not may_goto:
                    st.hist = (pc, self.aux, st.hist)
                    precise = st.precise
                    if precise:
                        # (_precise_after's first case, without the call: the common one)
                        need = rule[0]
                        st.precise = (precise & rule[1] | rule[2] if precise & need == need
                                      else _precise_after(rule, self.aux, precise))
            if logging:
                self._log_step(pc, st, before, nframes)
            pc = nxt

    # -- pruning -------------------------------------------------------------------------------

    def _live_masks(self, st: State, pc: int) -> list[int]:
        control = self.control
        assert control is not None
        live = control.live_in
        infos = self.infos
        # A caller waiting for a callback also keeps the helper's arguments: each round gets them.
        masks = [live[f.callsite + 1] & CALLEE_SAVED
                 | (ARG_REGS if (i := infos[f.callsite]) is not None and i.kind is Kind.CALL else 0)
                 for f in st.frames[1:]]
        masks.append(live[pc])
        return masks

    def _snapshot(self, st: State, masks: list[int]) -> State:
        frames = []
        for f, mask in zip(st.frames, masks, strict=True):
            regs = [NOT_INIT] * NREGS
            fregs = f.regs
            for i in MASK_REGS[mask]:
                regs[i] = fregs[i]
            frames.append(Frame(regs, f.stack.copy(), f.callsite, f.entry, f.round))
        return State(frames, st.depth, st.checkpoint, st.hist, st.loop, st.refs)

    def _same_state(self, visit: _Visit, st: State, pc: int) -> bool:
        """Whether ``st`` holds what ``visit`` held, no more and no less (registers not live ignored)."""
        assert visit.state is not None
        snap = self._snapshot(st, self._live_masks(st, pc))
        return state_within(snap, shared_ids(snap), visit.state)

    def _prune_point(self, pc: int, st: State, parent: _Visit) -> tuple[State, _Visit] | None:
        control = self.control
        assert control is not None
        visits = self.visits.get(pc)
        if visits is None:
            visits = self.visits[pc] = []
        in_loop = pc not in control.merge_points
        info = self.infos[pc]
        may_goto = info is not None and info.kind is Kind.MAY_GOTO
        complete = 0
        i = 0
        nframes = len(st.frames)
        kinds: dict[tuple[int, ...], tuple[object, ...]] = {}  # st's kinds_key, by the visits' masks
        scalar = Pt.SCALAR
        while i < len(visits):
            v = visits[i]
            assert v.state is not None
            done = v.branches == 0
            if done:
                # Kinds first: comparing them rules out most states cheaply. An unfinished visit
                # (an ancestor: in a loop, usually of the same kinds) is compared exactly at once,
                # registers first, which rules out the same states (see ``kinds_key``).
                if v.kinds is None:
                    v.kinds = kinds_key(v.state)
                chosen, old_kinds = v.kinds
                new_kinds = kinds.get(chosen) if len(chosen) == nframes else None
                if new_kinds is None and len(chosen) == nframes:
                    new_kinds = kinds[chosen] = kinds_key(st, chosen)[1]
                within = new_kinds == old_kinds and state_within(v.state, v.shared, st, v.reads, v.precise,
                                                                 v.precise_slots)
            else:
                # An ancestor in a loop usually differs in a counter: a known number of its
                # innermost frame that ``st`` lacks rules the exact comparison out at once.
                known = v.known
                if known is None:
                    known = v.known = known_numbers(v.state)
                nregs = st.frames[-1].regs
                for r, value in known:
                    x = nregs[r]
                    if x.type is not scalar or x.var.mask or x.var.value != value:
                        within = False
                        break
                else:
                    within = state_within(v.state, v.shared, st)
            if within:
                if done:
                    self.pruned += 1
                    v.hits += 1
                    # What the verified continuation read, and the values its checks depended
                    # on, this path's past must provide too.
                    for fi, mask in enumerate(v.reads):
                        if mask:
                            self._mark_read(parent, fi, mask)
                    self._backtrack(st.hist, parent, list(v.precise), list(v.precise_slots))
                    return None
                # An unfinished visit at the same place is an ancestor on this very path.
                if may_goto or v.state.frames[-1].round != st.frames[-1].round:
                    # A may_goto bounds the loop, or it is the next round of a callback, which its
                    # helper bounds: what follows that state is being verified.
                    self.pruned += 1
                    return None
                # Back in exactly the state it was in, the path goes round forever; in a narrower
                # one it may still end (a value halved each time reaches zero): walk on.
                if self._same_state(v, st, pc):
                    self.reject(f"loop may not terminate within the budget: infinite loop detected at insn {pc}")
            if done:
                complete += 1
            if in_loop:
                # Inside a loop most remembered states are earlier iterations that will never
                # match again: forget the ones that keep missing (as the kernel does).
                v.misses += 1
                if v.misses > 3 * v.hits + 3:
                    del visits[i]
                    v.state = None  # only the path bookkeeping still needs the visit
                    continue
            i += 1
        if in_loop and st.depth - st.checkpoint < CHECKPOINT_GAP and not may_goto:
            return st, parent  # a tight loop: remember a state only every few instructions
        masks = self._live_masks(st, pc)
        if may_goto:
            # Each time round a loop that a may_goto bounds, numbers it changes become unknown
            # after a few rounds, so that the rounds converge (the kernel's budget ends the loop).
            ancestors = [v for v in visits if v.branches and v.state is not None]
            if len(ancestors) >= MAY_GOTO_WIDEN_AFTER:
                assert ancestors[-1].state is not None
                wide = widen(ancestors[-1].state, st, masks)
                if wide is not None:
                    wide.hist, wide.loop, wide.depth, wide.checkpoint = st.hist, st.loop, st.depth, st.checkpoint
                    st = wide
        if complete >= MERGE_AFTER and not in_loop:
            # Too many different states meet here: continue with one covering all of them (those
            # this domain can merge), which later arrivals will most likely fall within.
            kept: list[_Visit] = []
            live = tuple(masks)
            key = join_key(st, masks)  # merging leaves it as it is
            for v in visits:
                merged = None
                if not v.branches:
                    assert v.state is not None
                    if v.join_key is None or v.join_key[0] != live:
                        v.join_key = live, join_key(v.state, masks)
                    if v.join_key[1] == key:
                        merged = join_states(st, v.state, masks)
                if merged is None:
                    kept.append(v)
                else:
                    st = merged
                    v.state = None
                    # Checks after the merge may need values from v's path that were never
                    # marked precise there: be safe and treat all of them as precise.
                    self._mark_all(v)
            visits[:] = kept
        snap = self._snapshot(st, masks)
        visit = _Visit(snap, parent, shared_ids(snap))
        if len(visits) >= MAX_VISITS:
            visits.pop(0).state = None
        visits.append(visit)
        st.checkpoint = st.depth
        st.precise = 0  # the new visit has nothing marked yet
        return st, visit

    # -- precision: which scalars' exact values a check depended on ------------------------------

    def _precise(self, *regs: int) -> None:
        """The check at the current instruction depends on the exact values of scalar ``regs``:
        find, walking the path backwards, which earlier registers and spilled values they came
        from, and mark those precise in the visits passed on the way."""
        st = self.st
        assert st is not None
        wanted = 0
        for r in regs:
            wanted |= 1 << r
        if not wanted & ~st.precise:
            return  # followed back already, since the latest visit: nothing new to mark
        n = len(st.frames)
        masks = [0] * n
        masks[-1] = wanted & ~st.precise
        self._backtrack(st.hist, self.visit, masks, [0] * n)
        st.precise |= wanted

    @staticmethod
    def _mark_all(visit: _Visit | None) -> None:
        """Fallback when data flow cannot be followed: everything before is precise."""
        while visit is not None:
            if all(p == ALL_REGS for p in visit.precise) and all(p == ALL_SLOTS for p in visit.precise_slots):
                return
            visit.precise = [ALL_REGS] * len(visit.precise)
            visit.precise_slots = [ALL_SLOTS] * len(visit.precise_slots)
            visit = visit.parent

    @staticmethod
    def _mark_visit(visit: _Visit, regs: list[int], slots: list[int]) -> bool:
        """Mark ``regs``/``slots`` precise at ``visit``; what was marked already was followed
        further back before, so it is dropped. Return whether anything is left to follow."""
        left = 0
        vp, vs = visit.precise, visit.precise_slots
        for f in range(min(len(vp), len(regs))):
            r = regs[f] & ~vp[f]
            vp[f] |= r
            regs[f] = r
            m = slots[f] & ~vs[f]
            vs[f] |= m
            slots[f] = m
            left |= r | m
        return bool(left)

    def _backtrack(self, node: History, visit: _Visit | None, regs: list[int], slots: list[int]) -> None:
        """Follow ``regs``/``slots`` (per frame; what is needed after the newest entry of
        ``node``) back through the path's history, marking the visits of ``visit``'s chain."""
        if not any(regs) and not any(slots):
            return
        steps = self.steps
        d = len(regs) - 1
        while True:
            while visit is not None and visit.hist is node:
                if not self._mark_visit(visit, regs, slots):
                    return
                visit = visit.parent
            if node is None or visit is None:
                return
            pc, aux, node = node
            step = steps[pc]
            assert step is not None
            live = regs[d]
            back = step[4]
            if back is not None:  # registers only: the common case, without the match below
                if live & back[0]:
                    live = live & ~back[1] | back[2]
                regs[d] = live
                if not live and not any(regs) and not any(slots):
                    return  # every value followed ends in a constant: the older past never mattered
                continue
            insn, info = step[0], step[1]
            dbit, sbit = 1 << insn.dst, 1 << insn.src
            match info.kind:
                case Kind.JCOND:
                    # The branch narrowed its operands (and, through links, their copies) using
                    # each other's ranges.
                    if live & (dbit | sbit) or (aux > 0 and (live or any(slots))):
                        live |= dbit | (sbit if info.reg_src else 0)
                case Kind.LDX | Kind.LDXSX:
                    if live & dbit:
                        live &= ~dbit
                        if aux >= 0:
                            slots[aux >> 16] |= _slot_mask(aux & 0xFFFF, info.size)
                case Kind.ST | Kind.STX:
                    if aux >= 0:
                        f, start = aux >> 16, aux & 0xFFFF
                        m = _slot_mask(start, info.size)
                        if slots[f] & m:
                            if info.size == 8 and start % 8 == 0:
                                slots[f] &= ~m  # the whole slot was written here
                            if info.kind is Kind.STX:
                                live |= sbit
                case Kind.ATOMIC:
                    live &= ~(1 if info.op == AtomicOp.CMPXCHG else sbit if info.op & 1 else 0)
                case Kind.CALL if insn.imm in self.callbacks:
                    # Rounds of a callback are not followed one by one: all before is precise.
                    self._mark_all(visit)
                    return
                case Kind.CALL | Kind.CALLX | Kind.LD_ABS | Kind.LD_IND:
                    live &= ~1
                case Kind.CALL_LOCAL if self.targets[pc] in self.globals:
                    live &= ~1  # a global function's result is any number: nothing to follow into it
                case Kind.CALL_LOCAL:
                    # Going back out of the callee: its r1-r5 were the caller's.
                    regs.pop()
                    slots.pop()
                    d -= 1
                    regs[d] |= live & ARG_REGS
                    continue
                case Kind.EXIT:
                    # Going back into a callee that returned here: r0-r5 were its registers.
                    regs[d] = live & ~RET_REGS
                    regs.append(live & RET_REGS)
                    slots.append(0)
                    d += 1
                    continue
                case _:
                    raise InternalError(f"no rule for {info.kind}")
            regs[d] = live
            if not live and not any(regs) and not any(slots):
                return  # every value followed ends in a constant: the older past never mattered

    @staticmethod
    def _mark_read(visit: _Visit | None, frame: int, mask: int) -> None:
        """Record that stack slots ``mask`` of ``frame`` are read after ``visit`` and its ancestors
        (up to where that frame did not exist yet, or the slots were already marked)."""
        while visit is not None:
            reads = visit.reads
            if frame >= len(reads):
                return
            old = reads[frame]
            if old & mask == mask:
                return
            reads[frame] = old | mask
            visit = visit.parent

    def _stack_read(self, frame: int, start: int, n: int) -> None:
        if n > 0:
            self._mark_read(self.visit, frame, _slot_mask(start, n))

    # -- registers -----------------------------------------------------------------------------

    def _read(self, regs: list[Reg], r: int) -> Reg:
        reg = regs[r]
        if reg.type is Pt.NOT_INIT:
            self.reject(f"r{r} !read_ok: read of uninitialised register r{r}")
        return reg

    def _dst(self, r: int) -> None:
        if r == FP:
            self.reject("frame pointer is read only (r10)")

    def _scalar_arg(self, regs: list[Reg], r: int, what: str) -> Reg:
        reg = self._read(regs, r)
        if reg.type is not Pt.SCALAR:
            self._address_use(f"r{r} leaks addr into helper function: it holds a pointer ({reg}) where {what} "
                              "must be a scalar")
            return Reg(Pt.SCALAR, sc.UNKNOWN)  # its address, as a number
        return reg

    def _constant(self, value: int) -> Reg:
        """The scalar register holding ``value`` (one object per value: identical registers
        compare at once)."""
        reg = self.constants.get(value)
        if reg is None:
            reg = self.constants[value] = Reg(Pt.SCALAR, sc.const(value))
        return reg

    def _alu(self, _st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        d = insn.dst
        if d == FP:
            self._dst(d)
        op = info.op
        if info.reg_src:
            src = regs[insn.src]
            if src.type is Pt.NOT_INIT:
                self._read(regs, insn.src)  # (rejects: read inline, without the call, most of the time)
        else:
            if insn.imm == 0 and op in DIVISIONS:
                self.reject("div by zero")  # as the kernel: a constant divisor of 0 is refused at load
            if op in SHIFTS and not 0 <= insn.imm < info.width:
                self.reject(f"invalid shift {insn.imm}")  # so is a constant shift beyond the width
            imm = insn.imm if info.width == 64 else insn.imm & MASK32
            src = self.constants.get(imm) or self._constant(imm)
        if op == AluOp.MOV:
            if info.width == 64:
                if info.reg_src and src.type is Pt.SCALAR and not src.var.is_const and not src.id:
                    # Link the copies: what a branch learns about one holds for the other.
                    src = src._replace(id=self.fresh_id())
                    regs[insn.src] = src
                regs[d] = src
            elif src.type is Pt.SCALAR and info.reg_src and src.var.umax <= MASK32 and not src.var.is_const:
                # The upper half is known zero: the copy is the same value, linked as a 64-bit move.
                if not src.id:
                    src = src._replace(id=self.fresh_id())
                    regs[insn.src] = src
                regs[d] = src
            elif src.type is Pt.SCALAR:
                regs[d] = Reg(Pt.SCALAR, sc.zero_extend(sc.project(src.var, 32)))
            else:
                self._address_use(f"r{insn.src} partial copy of pointer")
                regs[d] = Reg(Pt.SCALAR, sc.urange(0, MASK32))  # the low half of an address
            return
        dst = regs[d]
        if dst.type is Pt.NOT_INIT:
            self._read(regs, d)  # (rejects)
        if dst.type is Pt.SCALAR and src.type is Pt.SCALAR:
            a, b = dst.var, src.var
            if op in DIVISIONS:
                # The kernel computes no range for a quotient or a remainder, of constants neither:
                # all 64 bits are unknown, even after a 32-bit operation.
                regs[d] = UNKNOWN_SCALAR
                return
            # Constants fold (loop counters), but for shifts by the width or more: those give unknowns.
            if not a.mask and not b.mask and info.width == 64 and (b.value < 64 or op not in sc.SHIFTS):
                # (The opcode table's own expression, as sc.exact gives it: never a division here,
                # the one kind of operation whose signedness matters.)
                regs[d] = Reg(Pt.SCALAR, sc.const(alu_function(op, 64)(a.value, b.value)))
                return
            result = sc.alu_width(op, a, b, info.width, info.signed)
            if dst.id and not dst.off and op == AluOp.ADD and info.width == 64 and not b.mask \
                    and b.value <= MAX_LINK_OFFSET:
                # Still linked to its copies, at a known distance: what a branch learns of one
                # holds for the others, shifted by it (the kernel's linked registers with offset).
                regs[d] = Reg(Pt.SCALAR, result, off=b.value, id=dst.id)
                return
            regs[d] = Reg(Pt.SCALAR, result)
            return
        regs[d] = self._pointer_alu(insn, info, dst, src)

    def _pointer_alu(self, insn: Instruction, info: OpInfo, dst: Reg, src: Reg) -> Reg:
        """Arithmetic involving a pointer: only pointer +/- scalar (and pointer - pointer). Refusals
        in the kernel's order and words: two pointers, 32 bits, the pointer's type, the operator."""
        op = info.op
        d = insn.dst
        if info.width != 64:
            message = f"r{d} 32-bit pointer arithmetic prohibited ({AluOp(op).name.lower()}32 on a pointer)"
            if op == AluOp.SUB:
                self._address_use(message)
                return Reg(Pt.SCALAR, sc.alu_width(AluOp.MOV, sc.UNKNOWN, sc.UNKNOWN, 32, False))
            self.reject(message)
        dst_pointer, src_pointer = dst.is_pointer, src.is_pointer  # (asked once: a property)
        if op == AluOp.SUB and dst_pointer and src_pointer:
            if not self.privileged:  # (even of one object: the kernel gives only privileged loaders any)
                self.reject(f"r{d} pointer -= pointer prohibited")
            return self._pointer_difference(dst, src)
        if dst_pointer and src_pointer:
            self.reject(f"r{d} pointer {_alu_symbol(op)} pointer prohibited (an unknown pointer)")
        if op == AluOp.ADD and src_pointer:
            if not self.privileged:
                self._unprivileged_offset(src, insn.src, dst.var, True)
            if src.type is not Pt.PTR_TO_MEM:
                self._precise(insn.dst)  # the pointer's offset depends on the exact value
            return self._unprivileged_result(self._pointer_add(src, dst.var, False, insn.src), d)
        if op == AluOp.SUB and dst.type is Pt.PTR_TO_STACK and not src_pointer:
            self.reject(f"r{d} subtraction from stack pointer prohibited")  # the kernel's rule
        if op in (AluOp.ADD, AluOp.SUB) and dst_pointer:
            if info.reg_src and not self.privileged:
                self._unprivileged_offset(dst, d, src.var, op == AluOp.ADD)
            if info.reg_src and dst.type is not Pt.PTR_TO_MEM:
                self._precise(insn.src)
            return self._unprivileged_result(self._pointer_add(dst, src.var, op == AluOp.SUB, insn.dst), d)
        ptr = dst if dst_pointer else src
        if op == AluOp.SUB and not self.privileged:
            self._unprivileged_offset(src, insn.src, dst.var, False)  # (scalar - pointer: checked as the kernel)
        self._arithmetic_allowed(ptr, d)
        if op == AluOp.SUB:
            self.reject(f"r{d} tried to subtract pointer from scalar: r{insn.src} is a pointer, the result an "
                        "unknown pointer")
        if op in (AluOp.AND, AluOp.OR, AluOp.XOR):
            self.reject(f"r{d} bitwise operator {_alu_symbol(op)} on pointer prohibited ({ptr})")
        self.reject(f"r{d} pointer arithmetic with {_alu_symbol(op)} operator prohibited ({ptr}): the result is "
                    "no pointer")

    def _unprivileged_offset(self, ptr: Reg, r: int, offset: sc.Scalar, add: bool) -> None:
        """Without a privileged loader a register may move only a stack or map value pointer:
        the kernel bounds speculation on those alone (other pointers take constants)."""
        if not (ptr.type is Pt.CONST_PTR_TO_MAP and add and offset == sc.ZERO):
            self._arithmetic_allowed(ptr, r)  # (the kernel's refusals of the type and the offset come first)
            self._bounded_min(ptr.type, offset, r)
        if ptr.type not in (Pt.PTR_TO_STACK, Pt.PTR_TO_MAP_VALUE):
            self.reject(f"r{r} has pointer with unsupported alu operation, pointer arithmetic with it prohibited "
                        "for !root")

    def _unprivileged_result(self, result: Reg, r: int) -> Reg:
        """Without a privileged loader, stack and map value pointers stay inside their object
        after each step of arithmetic, not only where they are dereferenced (so that no
        speculated access strays): the stack's at a known offset."""
        if self.privileged:
            return result
        if result.type is Pt.PTR_TO_STACK:
            if not result.var.is_const:
                self.reject(f"r{r} variable stack access prohibited for !root, var_off={_tnum(result.var)} "
                            f"off={result.off}")
            at = result.off + sc.to_signed(result.var.value)
            if not STACK_BOTTOM <= at < 0:
                self.reject(f"r{r} stack pointer arithmetic goes out of range, prohibited for !root; off={at}")
        elif result.type is Pt.PTR_TO_MAP_VALUE:
            m = self.maps.get(result.aux) if self.maps is not None else None
            lo, hi = result.off + result.var.smin, result.off + result.var.umax + 1
            if m is not None and (lo < 0 or hi > m.value_size):
                end, at = ("min", lo) if lo < 0 or lo >= m.value_size else ("max", hi - 1)
                self.reject(f"invalid access to map value, value_size={m.value_size} off={at} size=1: r{r} {end} value "
                            f"is outside of the allowed memory range; r{r} pointer arithmetic of map value goes out "
                            "of range, prohibited for !root")
        return result

    def _arithmetic_allowed(self, ptr: Reg, r: int) -> None:
        """The kernel's pointer types that take no arithmetic at all."""
        t = ptr.type
        if t in NO_ARITHMETIC:
            hint = ", null-check it first" if t in POINTER_OR_NULL else ""
            # An acquired buffer is a ring buffer's record (bpf_ringbuf_reserve), as the kernel names it.
            name = "ringbuf_mem_or_null" if t is Pt.PTR_TO_BUF_OR_NULL and ptr.ref else t.value
            self.reject(f"r{r} pointer arithmetic on {name} prohibited{hint}")

    def _pointer_difference(self, dst: Reg, src: Reg) -> Reg:
        """``dst - src`` of two pointers into the same object: a scalar (the kernel allows it to
        privileged programs). The packet's start, end and metadata pointers count as one object,
        so ``data_end - data`` gives the packet's length."""
        if dst.type in PACKET_KINDS and src.type in PACKET_KINDS:
            if dst.type is not src.type:
                return UNKNOWN_SCALAR  # the packet's length (or the metadata's) is not known here
        elif dst.type is not src.type or dst.aux != src.aux:
            self._address_use(f"subtraction of pointers of different kinds ({dst} - {src}) is prohibited")
            return UNKNOWN_SCALAR
        if dst.type in UNRELATED_BASES:
            self.uses_addresses = True  # two objects of one kind: how far apart they lie is the layout's
            return UNKNOWN_SCALAR
        # Same base: the difference of the offsets, exact as the offsets are.
        var = sc.alu(AluOp.SUB, dst.var, src.var, 64)
        return Reg(Pt.SCALAR, sc.alu(AluOp.ADD, var, sc.const(dst.off - src.off), 64))

    def _pointer_add(self, ptr: Reg, s: sc.Scalar, sub: bool, r: int) -> Reg:
        t = ptr.type
        if t is Pt.CONST_PTR_TO_MAP and not sub and s == sc.ZERO:
            return ptr  # adding a known 0 leaves the map pointer usable, as in the kernel
        self._arithmetic_allowed(ptr, r)
        if t is Pt.PTR_TO_MEM:
            return ptr  # memory of unknown size: every access keeps its runtime check anyway
        if t is Pt.PTR_TO_FLOW_KEYS and not s.is_const:
            self.reject(f"r{r} pointer arithmetic on {t.value} prohibited (a variable offset)")
        # The kernel's sanity rules (check_reg_sane_offset): a constant, the fixed offset and the
        # variable part's lower end within +-2**29; a large upper end is refused only where the
        # pointer is dereferenced.
        if s.is_const:
            val = sc.to_signed(s.value)
            if not -MAX_OFFSET < val < MAX_OFFSET:
                self.reject(f"math between {t.value} pointer and {val} is not allowed (r{r})")
            off = ptr.off + (-val if sub else val)
            if not -MAX_OFFSET < off < MAX_OFFSET:
                self.reject(f"{t.value} pointer offset {off} is not allowed (r{r})")
            return Reg(t, ptr.var, off, ptr.id, ptr.range, ptr.aux, ptr.ref)  # (what _replace makes, sooner)
        self._bounded_min(t, s, r)
        if not -MAX_OFFSET < s.smin < MAX_OFFSET:
            self.reject(f"value {s.smin} makes {t.value} pointer be out of bounds (r{r})")
        if t in (Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_META) and sub:
            self.reject(f"subtracting a variable from a packet pointer (r{r}) is prohibited")
        var = sc.alu(AluOp.SUB if sub else AluOp.ADD, ptr.var, s, 64)
        if not -MAX_OFFSET < var.smin < MAX_OFFSET:
            self.reject(f"value {var.smin} makes {t.value} pointer be out of bounds (r{r})")
        if t in (Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_META):
            # A new variable part: nothing is known yet about how far it is from the packet end.
            return ptr._replace(var=var, id=self.fresh_id(), range=0)
        return ptr._replace(var=var)

    def _bounded_min(self, t: RegType, s: sc.Scalar, r: int) -> None:
        if s.smin == sc.UNKNOWN.smin:
            self.reject(f"math between {t.value} pointer and register with unbounded min value is not allowed "
                        f"(r{r} is {t.value}, the other {s})")

    def _address_use(self, why: str) -> None:
        """Something that follows where memory lies (an address made a number, stored, compared
        with another object's): refused with an unprivileged loader; for a privileged one, the
        result says that runs may differ wherever memory is laid out otherwise."""
        if not self.privileged:
            self.reject(why)
        self.uses_addresses = True

    def _uninit_stack(self, why: str) -> None:
        """A read of never-written stack: rejected, unless the loader is privileged."""
        if not self.privileged:
            self.reject(why)
        self.reads_uninit_stack = True

    def _neg(self, _st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        self._dst(insn.dst)
        dst = self._read(regs, insn.dst)
        if dst.is_pointer:
            self._address_use(f"r{insn.dst} pointer arithmetic prohibited: negation of pointer r{insn.dst}")
            regs[insn.dst] = UNKNOWN_SCALAR
            return
        regs[insn.dst] = Reg(Pt.SCALAR, sc.alu_width(AluOp.NEG, dst.var, dst.var, info.width))

    def _movsx(self, _st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        self._dst(insn.dst)
        src = self._read(regs, insn.src)
        value = sc.UNKNOWN if src.is_pointer else sc.sign_extend(sc.project(src.var, info.op), info.op)
        if info.width == 32:
            value = sc.zero_extend(sc.project(value, 32))
        regs[insn.dst] = Reg(Pt.SCALAR, value)

    def _endian(self, _st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        self._dst(insn.dst)
        dst = self._read(regs, insn.dst)
        if dst.is_pointer:
            self._address_use(f"byte swap of pointer r{insn.dst} is prohibited")
            regs[insn.dst] = UNKNOWN_SCALAR
            return
        bits = info.op
        if info.kind is Kind.END and not info.reg_src:  # to little-endian: a truncation on this host
            value = dst.var if bits == 64 else sc.zero_extend(sc.project(dst.var, bits))
        else:
            value = sc.swap_bytes(sc.project(dst.var, bits), bits)
        regs[insn.dst] = Reg(Pt.SCALAR, value)

    def _legacy_load(self, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        """LD_ABS/LD_IND: only for the program types the kernel allows them to, with r6 holding the
        context; like a helper call they leave r1-r5 unreadable."""
        ctx = self.context
        if not ctx.ld_abs:
            self.reject("BPF_LD_[ABS|IND] instructions not allowed for this program type")
        typed = ctx.size is not None
        if typed:
            r6 = self._read(regs, 6)
            if r6.type is not Pt.PTR_TO_CTX or r6.off or r6.var != sc.ZERO:
                self.reject("at the time of BPF_LD_ABS|IND R6 != pointer to skb")
        if info.kind is Kind.LD_IND:
            self._scalar_arg(regs, insn.src, "legacy packet load offset")
        if scratch_args(typed):
            for r in range(1, 6):
                regs[r] = NOT_INIT
        regs[0] = Reg(Pt.SCALAR, sc.urange(0, (1 << (8 * info.size)) - 1))

    def _lddw(self, _st: State, regs: list[Reg], insn: Instruction, _info: OpInfo) -> None:
        self._dst(insn.dst)
        src = insn.src
        if src == PseudoSrc.IMM64:
            regs[insn.dst] = Reg(Pt.SCALAR, sc.const(insn.imm64))
            return
        # (Each lddw's form was checked before the walk: see _check_lddws.)
        if src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX):
            regs[insn.dst] = Reg(Pt.CONST_PTR_TO_MAP, aux=insn.imm)
        elif src in (PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX_VALUE):
            regs[insn.dst] = Reg(Pt.PTR_TO_MAP_VALUE, off=insn.next_imm, aux=insn.imm)
        else:
            regs[insn.dst] = Reg(Pt.PTR_TO_FUNC, aux=self.flow.callbacks[self.pc])

    def _check_lddws(self) -> None:
        """Every lddw's pseudo source, map and value offset, reachable or not: the kernel resolves
        them all before it verifies anything."""
        slots = self.slots
        for pc in self.flow.program.find_slots(_LDDW_OPCODES):
            insn = slots[pc]
            assert insn is not None
            self.pc = pc
            src = insn.src
            if src in (PseudoSrc.IMM64, PseudoSrc.FUNC):
                continue
            if src not in (PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX, PseudoSrc.MAP_VALUE, PseudoSrc.MAP_IDX_VALUE):
                self.reject(f"lddw with pseudo source {src} is not supported")
            if self.maps is not None and (insn.imm not in self.maps or insn.imm < 0):
                self.reject(f"lddw refers to map {insn.imm}, which does not exist")
            if src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX):
                if insn.next_imm:  # the second half is a value offset only for the value sources
                    self.reject("unrecognized bpf_ld_imm64 insn: a map reference takes no second immediate")
                continue
            m = self.maps.get(insn.imm) if self.maps is not None else None
            if m is not None and not 0 <= insn.next_imm < m.value_size:
                self.reject(f"lddw map value offset {insn.next_imm} is outside the value (size {m.value_size})")

    # -- memory --------------------------------------------------------------------------------

    @staticmethod
    def _frame_entry(st: State, index: int) -> int:
        return st.frames[index].entry

    def _load(self, st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        self._dst(insn.dst)
        base = self._read(regs, insn.src)
        value = self._access(st, base, insn.src, insn.off, info.size, Access.READ, None,
                             info.kind is Kind.LDXSX)
        assert value is not None
        regs[insn.dst] = value

    def _store(self, st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        base = self._read(regs, insn.dst)
        value = self._read(regs, insn.src) if info.kind is Kind.STX else Reg(Pt.SCALAR, sc.const(insn.imm))
        if value.type is Pt.SCALAR and not value.id and base.type is Pt.PTR_TO_STACK and self.privileged \
                and base.var.is_const and not (base.off + base.var.value + insn.off) % 8 \
                and not value.var.is_const and value.var.umax.bit_length() <= 8 * info.size:
            # A spill links the stack slot to its register, as a move does (the kernel's
            # assign_scalar_id_before_mov): a branch on one, or on a fill of it, narrows both.
            value = regs[insn.src] = value._replace(id=self.fresh_id())
        if value.is_pointer and base.type not in (Pt.PTR_TO_STACK, Pt.CONST_PTR_TO_MAP):
            # Only the stack may hold a pointer (a spill): anywhere else its bytes could be read back as a number.
            self._address_use(f"r{insn.src} leaks addr into {_LEAK_TARGETS.get(base.type, 'mem')}")
        self._access(st, base, insn.dst, insn.off, info.size, Access.WRITE, value, False)

    def _atomic(self, st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> None:
        base = self._read(regs, insn.dst)
        fetched = 0 if info.op == AtomicOp.CMPXCHG else insn.src if info.op & 1 else -1
        if fetched == insn.dst:
            # The kernel loads the old value into that register before it checks the store, which
            # then goes through a number: it refuses the instruction (as a misaligned access).
            self.reject(f"misaligned access: r{insn.dst} is both the address of the atomic operation and the "
                        "register its old value is fetched into")
        if self._read(regs, insn.src).is_pointer:
            self._address_use(f"r{insn.src} leaks addr into mem")
        if info.op == AtomicOp.CMPXCHG:
            self._read(regs, 0)
        self._access(st, base, insn.dst, insn.off, info.size, Access.ATOMIC, None, False)
        old = Reg(Pt.SCALAR, sc.urange(0, (1 << (8 * info.size)) - 1))
        if info.op == AtomicOp.CMPXCHG:
            regs[0] = old
        elif info.op & 1:  # fetch variants and xchg return the old value in src
            self._dst(insn.src)
            regs[insn.src] = old

    def _note(self, proven: bool) -> None:
        self.mem_insns.add(self.pc)
        if not proven:
            self.unproven.add(self.pc)

    def _loaded(self, size: int, signed: bool) -> Reg:
        """Any number a load of ``size`` bytes gives (one object per kind of load)."""
        reg = self.loaded.get((size, signed))
        if reg is None:
            bits = 8 * size
            var = sc.srange(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else sc.urange(0, (1 << bits) - 1)
            reg = self.loaded[size, signed] = Reg(Pt.SCALAR, var)
        return reg

    def _access(self, st: State, ptr: Reg, r: int, off: int, size: int, mode: Access, value: Reg | None,
                signed: bool) -> Reg | None:
        """Check one memory access through register ``r``; return the loaded value for reads."""
        t = ptr.type
        if (self.strict_alignment or mode is Access.ATOMIC) and t is not Pt.PTR_TO_STACK and ptr.is_pointer:
            # Atomics are aligned whatever the loader's flags, as in the kernel (packets refuse them).
            self._strict_alignment(ptr, r, off, size, force=mode is Access.ATOMIC and t not in PACKET_KINDS)
        match t:
            case Pt.PTR_TO_STACK:
                return self._stack_access(st, ptr, r, off, size, mode, value, signed)
            case Pt.PTR_TO_CTX:
                return self._ctx_access(ptr, r, off, size, mode, signed)
            case Pt.PTR_TO_PACKET | Pt.PTR_TO_PACKET_META:
                if mode is Access.ATOMIC:
                    self.reject(f"BPF_ATOMIC stores into r{r} pkt is not allowed")
                if mode is Access.WRITE and not self.context.packet_writable:
                    self.reject("cannot write into packet")
                self._packet_bounds(ptr, r, ptr.off + off, size)
                self._note(True)
            case Pt.PTR_TO_MAP_VALUE:
                m = self.maps.get(ptr.aux) if self.maps is not None else None
                if m is not None and not 0 <= ptr.off + off + ptr.var.smin <= m.value_size - size:
                    # The kernel checks the offset's low end against the value before its range.
                    self._map_value_bounds(ptr, r, off, size, m.value_size)
                lo, hi = self._var_bounds(ptr, r, off, size)
                for attr, name, width in SPECIAL_FIELDS:
                    field_off = getattr(m, attr, None)
                    if field_off is not None and lo < field_off + width and field_off < hi:
                        self.reject(f"{name} cannot be accessed directly by load/store")
                if m is not None:
                    self._map_access_type(m, lo, size, read=mode is not Access.WRITE, write=mode is not Access.READ)
                if m is not None and (lo < 0 or hi > m.value_size):
                    self._map_value_bounds(ptr, r, off, size, m.value_size)
                self._note(m is not None)
                if m is not None and mode is Access.READ and ptr.var.is_const and getattr(m, "frozen", False) \
                        and m.flags & BPF_F_RDONLY_PROG and m.max_entries == 1:
                    # A frozen read-only value is a constant, as the kernel reads it (bpf_map_direct_read).
                    v = int.from_bytes(bytes(m.view(0)[lo : lo + size]), "little")  # type: ignore[attr-defined]
                    return Reg(Pt.SCALAR, sc.const(sc.to_signed(v, 8 * size) if signed else v))
            case Pt.PTR_TO_MAP_KEY:
                self._map_key_bounds(ptr, r, off, size, mode is not Access.READ)
                self._note(self.maps is not None)
            case Pt.PTR_TO_MEM:
                self._note(False)  # size unknown here: the runtime check stays
            case Pt.PTR_TO_BUF:
                self._buf_bounds(ptr, r, off, size)
                self._note(ptr.aux != ARG_MEMORY)
            case Pt.PTR_TO_BTF_ID:
                return self._btf_access(ptr, r, off, size, mode, signed)
            case Pt.PTR_TO_SOCK_COMMON | Pt.PTR_TO_SOCKET | Pt.PTR_TO_TCP_SOCK:
                self._sock_access(ptr, r, off, size, mode)
            case Pt.PTR_TO_FLOW_KEYS:
                lo = ptr.off + off
                if lo < 0 or lo + size > FLOW_KEYS_SIZE:
                    self.reject(f"invalid access to flow keys off={lo} size={size}")
                self._note(True)
            case (Pt.PTR_TO_MAP_VALUE_OR_NULL | Pt.PTR_TO_BUF_OR_NULL | Pt.CONST_PTR_TO_MAP_OR_NULL
                  | Pt.PTR_TO_BTF_ID_OR_NULL | Pt.PTR_TO_MEM_OR_NULL | Pt.PTR_TO_SOCK_COMMON_OR_NULL
                  | Pt.PTR_TO_SOCKET_OR_NULL | Pt.PTR_TO_TCP_SOCK_OR_NULL):
                self.reject(f"r{r} invalid mem access '{t.value}': possible null pointer dereference "
                            f"(compare it against 0 first)")
            case Pt.PTR_TO_PACKET_END:
                self.reject(f"r{r} invalid mem access '{t.value}': cannot access memory through the packet end")
            case Pt.CONST_PTR_TO_MAP:
                if not self.privileged:  # (the kernel's words, whatever the field)
                    self.reject(f"r{r} invalid mem access '{t.value}': 'struct bpf_map' access is allowed only to "
                                "CAP_PERFMON and CAP_SYS_ADMIN")
                if mode is not Access.READ:  # (the kernel's words: its struct for the map's type)
                    self.reject(f"only read from {_map_struct(self.maps, ptr.aux)} is supported: r{r} points to a "
                                "map")
                self.reject(f"r{r} invalid mem access '{t.value}': cannot access memory through a map pointer")
            case Pt.CONST_PTR_TO_DYNPTR:
                self.reject(f"r{r} invalid mem access '{t.value}': a struct bpf_dynptr is read by helpers only")
            case Pt.PTR_TO_FUNC:
                self.reject(f"r{r} invalid mem access '{t.value}': cannot access memory through the address "
                            f"of a function")
            case Pt.SCALAR:
                self.reject(f"r{r} invalid mem access 'scalar': it holds a number, not a pointer")
            case Pt.NOT_INIT:
                self.reject(f"r{r} !read_ok: read of uninitialised register r{r}")
            case _:
                raise InternalError(f"no rule for {t}")
        if mode is Access.READ:
            return self._loaded(size, signed)
        return None

    def _sock_access(self, ptr: Reg, r: int, off: int, size: int, mode: Access) -> None:
        """A load of a socket's field: read-only, within the fields its kind has (the layouts the
        kernel exposes), at the register's unchanged address (arithmetic on it is refused)."""
        t = ptr.type
        if mode is not Access.READ:
            self.reject(f"r{r} cannot write into {t.value}")
        lo = ptr.off + off
        ok = tcp_sock_load_ok(lo, size) if t is Pt.PTR_TO_TCP_SOCK else sock_load_ok(
            lo, size, full=t is Pt.PTR_TO_SOCKET)
        if not ok:
            self.reject(f"r{r} invalid {t.value} access off={lo} size={size}")
        self._note(True)

    def _packet_bounds(self, ptr: Reg, r: int, lo: int, size: int) -> None:
        """The kernel's packet rule: ``range`` bytes are proven from the pointer's variable base
        (packet start + var), whatever value var takes, so the fixed offset must lie in [0, range)
        (and var may not be negative: the base would lie before the packet)."""
        if ptr.var.smin < 0:
            self.reject(f"r{r} min value is negative, either use unsigned index or do a if (index >=0) check.")
        if lo < 0 or lo + size > ptr.range:
            hint = " (compare it against the packet end first)" if lo >= 0 else ""
            self.reject(f"invalid access to packet, off={lo} size={size}, r{r}(id={ptr.id},off={lo},r={ptr.range}): "
                        f"r{r} min value is outside of the allowed memory range; r{r} offset is outside of "
                        f"the packet{hint}")

    @staticmethod
    def _misaligned(ptr: Reg, off: int, size: int, base: int = 0) -> bool:
        """Whether ``base`` + the pointer's offset + ``off`` may not be a multiple of ``size``."""
        if not ptr.var.mask:  # a fixed offset (a stack slot): its low bits, as the sum below gives them
            return bool((ptr.var.value + base + ptr.off + off) & (size - 1))
        at = sc.alu(AluOp.ADD, ptr.var, sc.const(base + ptr.off + off), 64)
        return bool((at.value | at.mask) & (size - 1))

    def _strict_alignment(self, ptr: Reg, r: int, off: int, size: int, force: bool = False) -> None:
        """With strict alignment (the kernel's BPF_F_STRICT_ALIGNMENT, or ``force``), accesses
        other than the stack's must be aligned too; packet data counts from 2 bytes past an
        aligned address, as the kernel assumes (NET_IP_ALIGN)."""
        if not self.strict_alignment and not force:
            return
        t = ptr.type
        if t in (Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_META):
            if self._misaligned(ptr, off, size, NET_IP_ALIGN):
                self.reject(f"misaligned packet access off {NET_IP_ALIGN}+{_tnum_bits(ptr.var)}+{ptr.off}+{off} "
                            f"size {size} through r{r}")
        elif self._misaligned(ptr, off, size):
            what = {Pt.PTR_TO_MAP_VALUE: "value ", Pt.PTR_TO_CTX: "context "}.get(t, "")
            self.reject(f"misaligned {what}access off {_tnum(ptr.var)}+{ptr.off}+{off} size {size} through r{r}")

    def _buf_bounds(self, ptr: Reg, r: int, off: int, size: int) -> None:
        lo, hi = self._var_bounds(ptr, r, off, size)
        if lo < 0 or hi > ptr.range:
            # The kernel's two lines: the access at the offset's low end, or its high end, and which.
            at, end = (lo, "min") if lo < 0 or lo + size > ptr.range else (hi - size, "max")
            self.reject(f"invalid access to memory, mem_size={ptr.range} off={at} size={size} through r{r}: "
                        f"r{r} {end} value is outside of the allowed memory range")
    def _map_key_bounds(self, ptr: Reg, r: int, off: int, size: int, write: bool) -> None:
        """A map key a callback was given: read-only, ``key_size`` bytes."""
        if write:
            self.reject(f"cannot write into the map key r{r} points to (it is read-only)")
        lo, hi = self._var_bounds(ptr, r, off, size)
        m = self.maps.get(ptr.aux) if self.maps is not None else None
        if m is not None and (lo < 0 or hi > m.key_size):
            self.reject(f"invalid access to map key, key_size={m.key_size} off={lo} size={hi - lo}")

    def _map_access_type(self, m: MapLike, lo: int, size: int, *, read: bool, write: bool) -> None:
        """The map's BPF_F_RDONLY_PROG / BPF_F_WRONLY_PROG: what programs may not do to its values."""
        if write and m.flags & BPF_F_RDONLY_PROG:
            self.reject(f"write into map forbidden, value_size={m.value_size} off={lo} size={size}")
        if read and m.flags & BPF_F_WRONLY_PROG:
            self.reject(f"read from map forbidden, value_size={m.value_size} off={lo} size={size}")

    def _map_value_bounds(self, ptr: Reg, r: int, off: int, size: int, value_size: int) -> NoReturn:
        """Reject an access outside a map value as the kernel words it: the end of the offset's
        range that leaves the value, each end with the access it makes."""
        off += ptr.off
        if ptr.var.smin < 0 and ptr.var.smin + off < 0:
            self.reject(f"r{r} min value is negative, either use unsigned index or do a if (index >=0) check.")
        if ptr.var.smin + off < 0 or ptr.var.smin + off + size > value_size:
            self.reject(f"invalid access to map value, value_size={value_size} off={ptr.var.smin + off} size={size}: "
                        f"r{r} min value is outside of the allowed memory range")
        self.reject(f"invalid access to map value, value_size={value_size} off={ptr.var.umax + off} size={size}: "
                    f"r{r} max value is outside of the allowed memory range")

    def _stack_bounds(self, ptr: Reg, r: int, off: int, size: int, mode: Access | None,
                      why: str) -> tuple[int, int]:
        """Where an access of ``size`` bytes at ``ptr + off`` (by the program, or by a helper:
        ``mode`` None) lies in the stack, refused as the kernel's check_stack_access_within_bounds
        words it when it may leave the stack."""
        var = ptr.var
        if var.mask == 0:  # (the common case: a known offset)
            lo = ptr.off + off + var.smin
            hi = lo + size
            if lo >= STACK_BOTTOM and hi <= 0:
                return lo, hi
        what = _STACK_VERBS[mode]
        if var.mask and (var.smin <= -MAX_OFFSET or var.smax >= MAX_OFFSET):
            self.reject(f"invalid unbounded variable-offset {what} stack r{r} ({why}: a variable offset {var})")
        lo, hi = self._var_bounds(ptr, r, off, size)
        if lo < STACK_BOTTOM or hi > 0:
            if var.is_const:
                self.reject(f"invalid {what} stack r{r} off={lo} size={hi - lo} ({why})")
            self.reject(f"invalid variable-offset {what} stack r{r} var_off={_tnum_bits(var)} off={ptr.off + off} "
                        f"size={size} (from off={lo}: {why})")
        return lo, hi

    def _var_bounds(self, ptr: Reg, r: int, off: int, size: int) -> tuple[int, int]:
        var = ptr.var
        if var.smin <= -MAX_OFFSET or var.smax >= MAX_OFFSET:
            self.reject(f"r{r} unbounded memory access, make sure to bounds check any such access "
                        f"(a variable offset {var})")
        return ptr.off + off + var.smin, ptr.off + off + var.smax + size

    def _stack_access(self, st: State, ptr: Reg, r: int, off: int, size: int, mode: Access, value: Reg | None,
                      signed: bool) -> Reg | None:
        if self._misaligned(ptr, off, size):
            # Always, whatever the loader's flags (as the kernel: its spill tracking needs it).
            self.reject(f"misaligned stack access off {_tnum(ptr.var)}+{ptr.off}+{off} size {size} through r{r}")
        lo, hi = self._stack_bounds(ptr, r, off, size, mode, "invalid stack access, outside [r10-512, r10)")
        self._note(True)
        entry = self._frame_entry(st, ptr.aux)
        if -lo > self.stack_depth.get(entry, 0):
            self.stack_depth[entry] = -lo
        frame = st.frames[ptr.aux]
        start = lo - STACK_BOTTOM
        n = hi - lo
        # (Within one slot, which holds no dynptr, the common case: nothing to look for.)
        if start % 8 + n > 8 or (type(one := frame.stack[start // 8]) is Reg and one.type is Pt.DYNPTR):
            self._dynptr_access(st, frame, r, start, n, mode)
        if ptr.var.is_const:
            self.aux = ptr.aux << 16 | start
        if not ptr.var.is_const:
            if mode is Access.WRITE and value is not None and value.is_pointer and size != 8 and not self.privileged:
                # (A privileged loader may: the kernel makes the bytes written unknown data, as here.)
                self.reject(f"invalid size of register spill: {size} bytes of a pointer through r{r}")
            if mode is not Access.WRITE:
                self._stack_read(ptr.aux, start, n)
                if INVALID in frame.read_bytes(start, n):
                    self._uninit_stack(f"invalid read from stack off={lo}..{hi} through r{r}: uninitialised bytes")
                if mode is Access.ATOMIC and any(frame.pointer_spills(start, n)):
                    self._address_use(f"atomic operation on a spilled pointer through r{r}")
            if mode is not Access.READ:
                frame.smudge(start, n)
            return self._loaded(size, signed) if mode is Access.READ else None
        if mode is Access.WRITE:
            assert value is not None
            if size != 8 and any(frame.pointer_spills(start, size)):
                # (Part of an address overwritten: what a fill then gives would be part number.)
                self._address_use(f"attempt to corrupt spilled pointer on stack (a {size}-byte store through r{r})")
            if value.type is not Pt.SCALAR:  # a pointer's spill, as the kernel allows it
                if size != 8:
                    self.reject(f"invalid size of register spill: {size} bytes of a pointer through r{r}")
                if value.type is Pt.PTR_TO_STACK and ptr.aux != len(st.frames) - 1:
                    self.reject("cannot spill pointers to stack into stack frame of the caller")
            if size == 8 and start % 8 == 0:
                frame.stack[start // 8] = value  # spill: the register's full state is kept
            elif value.type is Pt.SCALAR and value.var.is_const and (start % 8 == 0 or value.var.value == 0):
                # As the kernel: a constant is remembered where it is a spill (at a slot's start) or
                # zeros; other bytes written are just initialised (a fill reads them as unknown).
                frame.write_bytes(start, tuple((value.var.value >> (8 * i)) & 0xFF for i in range(size)))
            elif value.type is Pt.SCALAR and start % 8 == 0 and value.var != sc.UNKNOWN \
                    and (rest := self._narrow_spill_rest(frame, start, size)) is not None:
                # A narrow spill keeps the value for fills as narrow (the kernel's).
                frame.stack[start // 8] = value._replace(range=size, aux=rest)
            else:
                frame.write_bytes(start, (MISC,) * size)
            return None
        slot: Slot = frame.stack[start // 8]
        if size == 8 and not start % 8 and type(slot) is Reg and mode is Access.READ \
                and not (slot.type is Pt.SCALAR and 0 < slot.range < 8):
            # A whole register spilled there (a scalar's range is the width of a narrow spill; a
            # pointer's is what it may reach, a packet's proven bytes): every byte was written,
            # and the fill gives back what was spilled.
            self._stack_read(ptr.aux, start, size)
            return slot
        self._stack_read(ptr.aux, start, size)
        data = frame.read_bytes(start, size)
        if INVALID in data:
            self._uninit_stack(f"invalid read from stack off {lo}+{data.index(INVALID)} size {size} through r{r}: "
                               "uninitialised bytes")
            frame.fill(start, size)  # it reads as zero at run time, as some unknown value to the proof
            data = frame.read_bytes(start, size)
        slot = frame.stack[start // 8]
        if mode is Access.ATOMIC:
            if any(frame.pointer_spills(start, size)):
                self._address_use(f"atomic operation on a spilled pointer through r{r}")
            frame.smudge(start, size)
            return None
        if (size != 8 or start % 8) and any(frame.pointer_spills(start, size)):
            self.reject(f"invalid size of register fill: {size} bytes of a spilled pointer through r{r}")
        spilled = slot.range if type(slot) is Reg and slot.type is Pt.SCALAR and slot.range else 8  # (its width)
        if start % 8 == 0 and type(slot) is Reg and size <= spilled:
            if size == 8:
                return slot
            if slot.type is Pt.SCALAR:  # the low bytes of a spilled scalar
                if slot.var.umax.bit_length() <= 8 * size - signed:
                    # The value fits: the fill is the spilled register, still linked to its copies.
                    return Reg(Pt.SCALAR, slot.var, slot.off, slot.id)
                low = sc.project(slot.var, 8 * size)
                return Reg(Pt.SCALAR, sc.sign_extend(low, 8 * size) if signed else sc.zero_extend(low))
        if all(b >= 0 for b in data):
            v = int.from_bytes(bytes(data), "little")
            return Reg(Pt.SCALAR, sc.const(sc.to_signed(v, 8 * size) if signed else v))
        return self._loaded(size, signed)

    def _dynptr_access(self, st: State, frame: Frame, r: int, start: int, n: int, mode: Access) -> None:
        """The program's own loads and stores may not touch a dynptr: a load is refused; a store
        destroys an unreferenced one (both slots, and its slices) and is refused over a referenced
        one, as in the kernel."""
        at = first_dynptr_byte(frame, start, n)
        if at is None:
            return
        if mode is not Access.WRITE:
            self.reject(f"invalid read from stack off {start + STACK_BOTTOM}+{at - start} size {n}: r{r} reads "
                        "a struct bpf_dynptr, which only helpers may")
        if referenced_among(frame, start, n):
            self.reject("cannot overwrite referenced dynptr")
        destroy(st, frame, start, n)

    @staticmethod
    def _narrow_spill_rest(frame: Frame, start: int, size: int) -> int | None:
        """Whether a store of ``size`` < 8 bytes at the start of a slot may spill a scalar there:
        when the rest of the slot is all written bytes (unknown from now on: 0) or all
        never-written ones (which stay so: 1); else None."""
        rest = frame.read_bytes(start + size, 8 - size)
        if all(b == INVALID for b in rest):
            return 1
        return None if INVALID in rest else 0

    def _btf_value(self, arg: BtfArg) -> Reg:
        """The register a BTF-typed slot or field loads into: a bounded scalar, or a pointer."""
        if arg.memory:
            return Reg(Pt.PTR_TO_MEM_OR_NULL, id=self.fresh_id()) if arg.nullable else Reg(Pt.PTR_TO_MEM)
        if not arg.type_id:
            if arg.size >= 8:
                return UNKNOWN_SCALAR
            return self._loaded(arg.size, arg.signed)
        if arg.nullable:
            return Reg(Pt.PTR_TO_BTF_ID_OR_NULL, aux=arg.type_id, id=self.fresh_id())
        return Reg(Pt.PTR_TO_BTF_ID, aux=arg.type_id)

    def _btf_args_access(self, args: tuple[BtfArg, ...], r: int, lo: int, size: int, mode: Access) -> Reg:
        """A tracing program's context: ``u64 args[]``, read-only, one whole slot at a time."""
        if mode is not Access.READ:
            self.reject(f"cannot write into the context through r{r}: the arguments of a tracing program are "
                        "read-only")
        if lo < 0 or lo % 8 or size != 8:
            self.reject(f"invalid bpf_context access off={lo} size={size}: the arguments are 8-byte slots")
        if lo // 8 >= len(args):
            self.reject(f"invalid bpf_context access off={lo} size={size}: the attach target has "
                        f"{len(args)} argument slot(s), this reads slot {lo // 8}")
        self._note(True)
        return self._btf_value(args[lo // 8])

    def _btf_access(self, ptr: Reg, r: int, off: int, size: int, mode: Access, signed: bool) -> Reg | None:
        """A load of a kernel object's field (``PTR_TO_BTF_ID``): checked against the struct's BTF
        layout, and run as a probe load (memory the run does not hold reads as 0)."""
        btf = self.context.btf
        assert btf is not None  # such a pointer only comes from a BTF-typed context
        what = btf.type_name(ptr.aux)
        if mode is not Access.READ:
            self.reject(f"cannot write to r{r} ({what}): only read is supported through BTF-typed pointers")
        if ptr.var != sc.ZERO:
            self.reject(f"r{r} is ptr_{what} invalid variable offset: off={ptr.off}, var_off={ptr.var}")
        lo = ptr.off + off
        try:
            field = btf.field(ptr.aux, lo, size)
        except LookupError as exc:
            self.reject(f"invalid access to {what} through r{r}: off={lo} size={size}: {exc.args[0]}")
        self.probe_loads.add(self.pc)
        self._note(False)  # a checked load, whose failure gives 0
        if field.type_id or not signed:
            return self._btf_value(field)
        return self._loaded(size, True)

    def _ctx_access(self, ptr: Reg, r: int, off: int, size: int, mode: Access, signed: bool) -> Reg | None:
        ctx = self.context
        self._unmodified(ptr, r, "ctx")  # the kernel rewrites context accesses by the instruction's offset alone
        lo = ptr.off + off
        hi = lo + size
        assert ctx.size is not None
        if mode is Access.ATOMIC:
            self.reject(f"BPF_ATOMIC stores into r{r} ctx is not allowed")
        if ctx.args is not None:
            return self._btf_args_access(ctx.args, r, lo, size, mode)
        ranges = ctx.writable if mode is Access.WRITE else (ctx.readable or ((0, ctx.size),))
        if not any(o <= lo and hi <= o + s for o, s in ranges) or lo < 0 or hi > ctx.size:
            what = "write to" if mode is Access.WRITE else "read from"
            self.reject(f"invalid bpf_context access off={lo} size={size}: {what} the context")
        for foff, kind in ctx.fields.items():
            width = ctx.field_size(foff)
            if lo < foff + width and foff < hi:
                if mode is Access.WRITE:
                    self.reject(f"cannot write to context field at off={foff}: it holds a {kind} pointer")
                # Only a load of the whole field gives the whole address (as in the kernel,
                # whose *_is_valid_access wants exactly the field's declared size).
                if lo != foff or size != width or signed:
                    self.reject(f"invalid bpf_context access off={lo} size={size}: a narrow, wide or misaligned "
                                f"load of the {kind} pointer at context off={foff}, which is {width} bytes")
                self._note(True)
                t = FIELD_KINDS[kind]
                return Reg(t, id=self.fresh_id()) if t in NON_NULL else Reg(t)
        if mode is Access.READ and ctx.whole_loads and (lo, size) not in ctx.readable:
            self.reject(f"invalid bpf_context access off={lo} size={size}: a narrow or misaligned load (this "
                        "context's fields are read whole)")
        if ctx.word:
            self._word_access(ctx, lo, size, mode)
        self._note(True)
        if mode is Access.READ:
            return self._loaded(size, signed)
        return None

    def _word_access(self, ctx: ContextSpec, lo: int, size: int, mode: Access) -> None:
        """The kernel's rules for a context of ``ctx.word``-byte fields (see ContextSpec.word)."""
        why = ""
        if lo % size:
            why = "misaligned"
        elif any(lo < foff + width and foff < lo + size and (lo, size) != (foff, width)
                 for foff, width in ctx.whole.items()):
            why = "the field is accessed whole only"
        elif (lo, size) in ctx.whole.items() or any(o <= lo and lo + size <= o + n for o, n in ctx.any_width):
            return
        elif mode is Access.WRITE and size != ctx.word:
            why = f"fields are written {ctx.word} bytes at a time"
        elif size > ctx.word:
            why = f"fields are at most {ctx.word} bytes"
        if why:
            self.reject(f"invalid bpf_context access off={lo} size={size} ({why})")

    # -- branches ------------------------------------------------------------------------------

    def _branch(self, st: State, regs: list[Reg], insn: Instruction, info: OpInfo) -> tuple[State | None, State | None]:
        a = regs[insn.dst]
        if a.type is Pt.NOT_INIT:
            self._read(regs, insn.dst)  # (rejects)
        if info.reg_src:
            b = self._read(regs, insn.src)
        else:
            imm = insn.imm if info.width == 64 else insn.imm & MASK32
            b = self.constants.get(imm) or self._constant(imm)
        op = info.op
        if a.is_pointer or b.is_pointer:
            self._pointer_comparison(insn, info, a, b)
        if a.type is Pt.SCALAR and b.type is Pt.SCALAR:
            taken, fall = (sc.refine if info.width == 64 else sc.refine32)(op, a.var, b.var)
            if a.id or b.id:
                self.aux = 1  # linked copies are narrowed too: backtracking must know
            if (taken is None) != (fall is None):
                # Decided by the operands' ranges: a state where they differ may go the other way.
                if info.reg_src:
                    self._precise(insn.dst, insn.src)
                elif ~st.precise >> insn.dst & 1:  # (else followed back already: _precise would find nothing)
                    self._precise(insn.dst)
            if taken is not None and fall is not None:
                other = st.copy()
                self._refine_scalars(other, insn, info, a, b, taken)
                self._refine_scalars(st, insn, info, a, b, fall)
                return other, st
            if taken is not None:
                self._refine_scalars(st, insn, info, a, b, taken)
                return st, None
            if fall is not None:
                self._refine_scalars(st, insn, info, a, b, fall)
                return None, st
            return None, None
        if info.width == 64:
            special = self._pointer_branch(st, insn, op, a, b, info.reg_src)
            if special is not None:
                return special
        return st.copy(), st

    def _pointer_comparison(self, insn: Instruction, info: OpInfo, a: Reg, b: Reg) -> None:
        """A branch may depend on a pointer, without telling where memory lies, as the kernel
        lets an unprivileged loader's: packet pointers against each other, a possibly-null
        pointer against 0, or a valid one against 0 (whose branch is known)."""
        if info.reg_src and b.is_pointer and not (a.type in PACKET_KINDS and b.type in PACKET_KINDS):
            self._address_use(f"r{insn.src} pointer comparison prohibited")
            return
        if not a.is_pointer or info.width != 64:
            if a.is_pointer:
                self._address_use(f"r{insn.dst} pointer comparison prohibited")
            return
        op = info.op
        if op in (JmpOp.JEQ, JmpOp.JNE):
            if not info.reg_src and insn.imm == 0 and a.type in POINTER_OR_NULL:
                return  # a null check
            if a.type in NEVER_NULL and ((not info.reg_src and insn.imm == 0)
                                         or (b.type is Pt.SCALAR and b.var == sc.ZERO)):
                return  # known: a valid pointer is never 0
        elif op in (JmpOp.JGT, JmpOp.JGE, JmpOp.JLT, JmpOp.JLE) and info.reg_src:
            pair = (a.type, b.type)
            if pair in ((Pt.PTR_TO_PACKET, Pt.PTR_TO_PACKET_END), (Pt.PTR_TO_PACKET_END, Pt.PTR_TO_PACKET)) \
                    or (a.type is Pt.PTR_TO_PACKET_META and self._is_packet_start(b)) \
                    or (b.type is Pt.PTR_TO_PACKET_META and self._is_packet_start(a)):
                return  # a packet bounds check
        self._address_use(f"r{insn.dst} pointer comparison prohibited")

    def _set_scalar(self, st: State, r: int, old: Reg, value: sc.Scalar) -> None:
        if value == old.var:
            return
        # (Built field by field: NamedTuple's _replace costs more than the rest of a refinement.)
        st.frames[-1].regs[r] = Reg(old.type, value, old.off, old.id, old.range, old.aux, old.ref)
        if old.id:
            def shifted(reg: Reg) -> Reg:  # a copy at another distance from the same value
                var = value if reg.off == old.off else sc.alu(AluOp.ADD, value, sc.const(reg.off - old.off), 64)
                return Reg(reg.type, var, reg.off, reg.id, reg.range, reg.aux, reg.ref)

            st.replace_linked(old.id, (Pt.SCALAR,), shifted)

    def _refine_scalars(self, st: State, insn: Instruction, info: OpInfo, a: Reg, b: Reg,
                        pair: tuple[sc.Scalar, sc.Scalar]) -> None:
        self._set_scalar(st, insn.dst, a, pair[0])
        if info.reg_src and insn.src != insn.dst:
            self._set_scalar(st, insn.src, b, pair[1])

    def _pointer_branch(self, st: State, insn: Instruction, op: int, a: Reg, b: Reg, reg_src: bool
                        ) -> tuple[State | None, State | None] | None:
        """Null checks of map values and packet bounds checks; None when neither applies."""
        # Null check: `if rX == 0` / `if rX != 0` on a possibly-null pointer. As in the kernel, only
        # against the immediate 0: a register holding 0, on either side, narrows nothing.
        if op in (JmpOp.JEQ, JmpOp.JNE):
            for p, z in ((a, b), (b, a)):
                if p is a and not reg_src and p.type in POINTER_OR_NULL and z.var == sc.ZERO:
                    null, nonnull = st.copy(), st
                    self._mark_null(null, p, True)
                    self._mark_null(nonnull, p, False)
                    return (null, nonnull) if op == JmpOp.JEQ else (nonnull, null)
                if p.type in NEVER_NULL and z.type is Pt.SCALAR and z.var == sc.ZERO:
                    if z is a:
                        self._precise(insn.dst)
                    elif reg_src:
                        self._precise(insn.src)
                    return (None, st) if op == JmpOp.JEQ else (st, None)  # decided, as the kernel does
            # Two pointers, one possibly null: where they are equal, that one is not null either
            # (the kernel's rule, for the register compared only).
            nullable = (a.type in POINTER_OR_NULL, b.type in POINTER_OR_NULL)
            if reg_src and a.is_pointer and b.is_pointer and nullable[0] != nullable[1] \
                    and not {a.type, b.type} & {Pt.PTR_TO_BTF_ID, Pt.PTR_TO_BTF_ID_OR_NULL}:
                other = st.copy()
                equal = other if op == JmpOp.JEQ else st
                r = insn.dst if nullable[0] else insn.src
                equal.frames[-1].regs[r] = self._non_null(equal.frames[-1].regs[r])
                return other, st
        if op not in (JmpOp.JGT, JmpOp.JGE, JmpOp.JLT, JmpOp.JLE):
            return None
        # Packet bounds: a packet pointer compared with the packet end (or metadata with the
        # start of the packet) proves, on one edge, how many bytes past it are inside.
        pkt: Reg | None = None
        swapped = False
        if a.type is Pt.PTR_TO_PACKET and b.type is Pt.PTR_TO_PACKET_END:
            pkt = a
        elif b.type is Pt.PTR_TO_PACKET and a.type is Pt.PTR_TO_PACKET_END:
            pkt, swapped = b, True
        elif a.type is Pt.PTR_TO_PACKET_META and self._is_packet_start(b):
            pkt = a
        elif b.type is Pt.PTR_TO_PACKET_META and self._is_packet_start(a):
            pkt, swapped = b, True
        if pkt is None or pkt.off < 0 or pkt.off + pkt.var.umax > MAX_PACKET_OFF:
            return None  # as the kernel: a pointer that far proves nothing about the packet
        # For `pkt OP end`: which edge proves pkt + off <= end (closed) or < end (open).
        if swapped:
            op = MIRRORED[op]
        k = pkt.off
        proof: dict[int, tuple[bool, int]] = {JmpOp.JGT: (False, k), JmpOp.JGE: (False, k + 1),
                                              JmpOp.JLT: (True, k + 1), JmpOp.JLE: (True, k)}
        on_taken, new_range = proof[op]  # (JmpOp members are their ints: no conversion needed)
        new_range = min(new_range, MAX_PACKET_OFF)
        other = st.copy()
        proven = other if on_taken else st
        proven.widen_range(pkt.id, pkt.type, new_range)
        return other, st

    @staticmethod
    def _is_packet_start(r: Reg) -> bool:
        return r.type is Pt.PTR_TO_PACKET and r.off == 0 and r.var == sc.ZERO

    def _mark_null(self, st: State, p: Reg, null: bool) -> None:
        assert p.id
        zero = Reg(Pt.SCALAR, sc.ZERO)
        if null and p.ref and p.ref == p.id:  # nothing was acquired: there is nothing to release
            st.refs = tuple(r for r in st.refs if r[0] != p.ref)
        st.replace_linked(p.id, POINTER_OR_NULL, (lambda _reg: zero) if null else self._non_null)

    def _map_value(self, handle: int) -> Reg:
        """A helper's map value that is never NULL: with an id of its own when the value holds a
        bpf_spin_lock (each such result may be another element's lock, as in the kernel)."""
        m = self.maps.get(handle) if self.maps is not None else None
        locked = getattr(m, "spin_lock_off", None) is not None
        return Reg(Pt.PTR_TO_MAP_VALUE, aux=handle, id=self.fresh_id() if locked else 0)

    def _non_null(self, reg: Reg) -> Reg:
        # A value of a map with a bpf_spin_lock keeps its id: the id tells which element's lock
        # the program takes (two lookups give two locks), as in the kernel.
        keep = reg.type is Pt.PTR_TO_MAP_VALUE_OR_NULL and self.maps is not None and getattr(
            self.maps.get(reg.aux), "spin_lock_off", None) is not None
        return reg._replace(type=NON_NULL[reg.type], id=reg.id if keep else 0)

    # -- calls and exits -----------------------------------------------------------------------

    def _mem_arg(self, st: State, regs: list[Reg], r: int, lo_size: int, hi_size: int, kind: ArgType) -> None:
        """Check a helper's pointer argument ``r`` to ``lo_size``..``hi_size`` bytes."""
        ptr = self._read(regs, r)
        write = kind in (ArgType.UNINIT_MEM, ArgType.UNINIT_VALUE)
        if ptr.type is Pt.SCALAR and not (kind is ArgType.MEM_OR_NULL and ptr.var == sc.ZERO and hi_size == 0):
            # A size of zero needs no memory, but still a pointer (NULL only where the helper takes it).
            self.reject(f"r{r} type=scalar expected={_MEMORY_KINDS} ({kind.value} argument)")
        if ptr.type is not Pt.SCALAR and ptr.type not in _MEMORY_POINTERS:
            # (Zero bytes or not: the kernel checks the kind first. A context is no helper's memory.)
            self.reject(f"r{r} type={ptr.type.value} expected={_MEMORY_KINDS} ({kind.value} argument)")
        if hi_size == 0:
            if ptr.type is Pt.PTR_TO_STACK:  # no bytes, but still a place inside the stack (the kernel's)
                lo, hi = self._var_bounds(ptr, r, 0, 0)
                if lo < STACK_BOTTOM or hi > -1:
                    self.reject(f"invalid {'write to' if write else 'read from'} stack R{r} off={lo} size=0")
            # Packet and map value pointers must still lie within (or just past) what they point to.
            if ptr.type not in _ZERO_SIZE_BOUNDED:
                return
        t = ptr.type
        match t:
            case Pt.PTR_TO_STACK:
                # (The kernel's words for any helper's access, of a constant or a variable size.)
                lo, hi = self._stack_bounds(ptr, r, 0, hi_size, None,
                                            f"{kind.value} argument outside the stack")
                entry = self._frame_entry(st, ptr.aux)
                self.stack_depth[entry] = max(self.stack_depth.get(entry, 0), -lo)
                frame = st.frames[ptr.aux]
                start = lo - STACK_BOTTOM
                if (at := first_dynptr_byte(frame, start, hi - lo)) is not None:
                    if write:
                        self.reject(f"potential write to dynptr at off={at + STACK_BOTTOM} disallowed")
                    self.reject(f"invalid read from stack R{r} off {lo}+{at - start} size {hi - lo}: a "
                                "struct bpf_dynptr is no helper's memory")
                if write:
                    if INVALID in frame.read_bytes(start, hi - lo):
                        # A helper that fails may leave never-written bytes so, and they are read
                        # later as if written: each run's frames must start cleared, in every engine.
                        self.reads_uninit_stack = True
                    if ptr.var.is_const:
                        frame.fill(start, lo_size)
                    frame.smudge(start, hi - lo)
                    return
                self._stack_read(ptr.aux, start, hi - lo)
                if (spill := next(frame.pointer_spills(start, hi - lo), None)) is not None:
                    at = max(spill * 8 - start, 0)  # (a pointer's bytes would reach the helper as data)
                    self._address_use(f"invalid read from stack r{r} off {lo}+{at} size {hi - lo} ({kind.value} "
                                      "argument: a spilled pointer)")
                if INVALID in (got := frame.read_bytes(start, hi - lo)):
                    self._uninit_stack(f"invalid read from stack r{r} off {lo}+{got.index(INVALID)} size {hi - lo} "
                                       f"({kind.value} argument: uninitialised stack)")
                if kind is ArgType.MEM or kind is ArgType.MEM_OR_NULL:
                    frame.smudge(start, hi - lo)  # helpers may write what they are given; spills are gone
            case Pt.PTR_TO_MAP_VALUE:
                m = self.maps.get(ptr.aux) if self.maps is not None else None
                lo, hi = self._var_bounds(ptr, r, 0, hi_size)
                if m is None:
                    self.unchecked_calls.add(self.pc)  # the value's size is unknown here
                    return
                self._map_access_type(m, lo, hi - lo, read=not write, write=write)
                if lo < 0 or hi > m.value_size:
                    self._map_value_bounds(ptr, r, 0, hi_size, m.value_size)
            case Pt.PTR_TO_PACKET | Pt.PTR_TO_PACKET_META:
                if write and not self.context.packet_writable:
                    self.reject(f"r{r} ({kind.value} argument): cannot write into packet")
                if ptr.var.smin < 0:
                    self.reject(f"r{r} min value is negative, either use unsigned index or do a if (index >=0) "
                                f"check. ({kind.value} argument)")
                if ptr.off < 0 or ptr.off + hi_size > ptr.range:
                    self.reject(f"invalid access to packet: r{r} ({kind.value} argument) exceeds the proven "
                                f"packet range {ptr.range}: "
                                f"off={ptr.off} size={hi_size}: r{r} offset is outside of the packet")
            case Pt.PTR_TO_BUF:
                self._buf_bounds(ptr, r, 0, hi_size)
                if ptr.aux == ARG_MEMORY:
                    self.unchecked_calls.add(self.pc)  # perhaps a plain program's buffer
            case Pt.PTR_TO_MAP_KEY:
                self._map_key_bounds(ptr, r, 0, hi_size, write)
                if self.maps is None:
                    self.unchecked_calls.add(self.pc)  # the key's size is unknown here
            case Pt.PTR_TO_MEM:
                # Unknown size: only a helper that checks at run time (through the memory map)
                # may be given it; the JIT calls such call sites' helpers through Python.
                self.unchecked_calls.add(self.pc)
            case _:
                self.reject(f"r{r} ({kind.value} argument) must point to memory, not {ptr}")

    @staticmethod
    def _lock_held(st: State) -> int | None:
        """The lock the path holds (see ``lock_id``), or None."""
        return next((-ref - 1 for ref, _at in st.refs if ref < 0), None)

    def _unmodified(self, reg: Reg, r: int, kind: str) -> None:
        """A pointer that must be exactly where it was given (a context, a function's address),
        checked in the kernel's order and words (__check_ptr_off_reg)."""
        if reg.off < 0:
            self.reject(f"negative offset {kind} ptr r{r} off={reg.off} disallowed")
        if reg.off:
            self.reject(f"dereference of modified {kind} ptr r{r} off={reg.off} disallowed")
        if reg.var != sc.ZERO:
            self.reject(f"variable {kind} access var_off={_tnum_bits(reg.var)} disallowed (r{r}: {reg.var})")

    def _spin_lock_arg(self, st: State, regs: list[Reg], r: int, kind: ArgType) -> None:
        """bpf_spin_lock/unlock's argument: the lock field of a map value, exactly; the path
        then holds the lock (a reference of id -1 - lock_id, compared with the others) or gives
        it back."""
        reg = self._special_field_arg(regs, r, "spin_lock_off", "bpf_spin_lock")
        lock = lock_id(reg.aux, reg.id)
        held = self._lock_held(st)
        if kind is ArgType.SPIN_LOCK:
            if held is not None:
                self.reject("Locking two bpf_spin_locks are not allowed")
            st.refs = (*st.refs, (-lock - 1, self.pc))
            return
        if held is None:
            self.reject("bpf_spin_unlock without taking a lock")
        if held != lock:
            self.reject("bpf_spin_unlock of different lock")
        st.refs = tuple(x for x in st.refs if x[0] >= 0)

    def _special_field_arg(self, regs: list[Reg], r: int, attr: str, struct: str) -> Reg:
        """A helper's pointer to a special struct of a map value (``struct bpf_spin_lock``,
        ``struct bpf_timer``): exactly where the map's value type holds it."""
        reg = self._read(regs, r)
        if reg.type is not Pt.PTR_TO_MAP_VALUE:
            self.reject(f"r{r} doesn't have constant offset. {struct} has to be at the constant offset "
                        f"of a map value, not {reg}")
        if not reg.var.is_const:
            self.reject(f"r{r} doesn't have constant offset. {struct} has to be at the constant offset")
        m = self.maps.get(reg.aux) if self.maps is not None else None
        field_off = getattr(m, attr, None)
        if m is None or field_off is None:
            name = getattr(m, "name", "") or reg.aux
            self.reject(f"map '{name}' has no valid {struct}")
        off = reg.off + reg.var.value
        if off != field_off:
            self.reject(f"off {off} doesn't point to 'struct {struct}' that is at {field_off}")
        return reg

    def _push_async_callback(self, st: State, fn: Reg, timer: Reg) -> None:
        """A function a helper keeps to call later (a timer's callback): verified as a path of its
        own from here, in a new frame with the timer's map, key and value, holding nothing."""
        if len(st.frames) >= self.max_call_depth:
            self.reject(f"call stack is too deep: {len(st.frames) + 1} frames (max {self.max_call_depth})")
        regs = [NOT_INIT] * 11
        regs[1] = Reg(Pt.CONST_PTR_TO_MAP, aux=timer.aux)
        regs[2] = Reg(Pt.PTR_TO_MAP_KEY, aux=timer.aux)
        regs[3] = Reg(Pt.PTR_TO_MAP_VALUE, aux=timer.aux)
        regs[FP] = Reg(Pt.PTR_TO_STACK, aux=len(st.frames))
        later = st.copy()
        later.refs = ()
        later.frames.append(Frame(regs, [None] * SLOTS, self.pc, fn.aux, self.fresh_id()))
        visit = self.visit
        assert visit is not None
        visit.branches += 1
        self.work.append((fn.aux, later, visit, self.path_log))

    def _async_return(self, st: State) -> None:
        """The exit of a function a helper calls later: it holds nothing and returns 0."""
        if st.refs:
            ref, at = st.refs[0]
            self.reject(f"Unreleased reference id={ref} alloc_insn={at}: a callback called later must release "
                        "what it acquires")
        r0 = st.frames[-1].regs[0]
        if r0.type is not Pt.SCALAR:
            self.reject(f"a callback called later must return 0, not {r0}")
        self._precise(0)
        if r0.var != sc.ZERO:
            self.reject(f"At async callback return the register R0 has {r0.var}, should have been in [0, 0]")

    def _constant_key(self, st: State, ptr: Reg, size: int) -> int | None:
        """The key of ``size`` bytes a stack pointer points at, when the stack holds a known
        number there: zeros, or a constant spilled by a store of exactly that size at a slot's
        start (the kernel's two cases). The bytes are then marked precise, so that no state
        holding another key is pruned by this one."""
        if ptr.type is not Pt.PTR_TO_STACK or not ptr.var.is_const:
            return None
        start = ptr.off + ptr.var.value - STACK_BOTTOM
        frame = st.frames[ptr.aux]
        slot = frame.stack[start // 8]
        if type(slot) is Reg:  # a spill: of exactly the key's size, at the slot's start
            if start % 8 or slot.type is not Pt.SCALAR or not slot.var.is_const or (slot.range or 8) != size:
                return None
            key = slot.var.value
        else:  # known bytes: zeros anywhere, or what one constant store left at a slot's start
            data = frame.read_bytes(start, size)
            if min(data) < 0 or (start % 8 and any(data)):
                return None
            key = int.from_bytes(bytes(data), "little")
        slots = [0] * len(st.frames)
        slots[ptr.aux] = _slot_mask(start, size)
        self._backtrack(st.hist, self.visit, [0] * len(st.frames), slots)
        return key

    def _call_helper(self, st: State, regs: list[Reg], hid: int) -> None:
        args, ret = self.signatures[hid]
        if ArgType.SPIN_UNLOCK not in args and self._lock_held(st) is not None:
            self.reject("function calls are not allowed while holding a lock")
        map_reg: Reg | None = None
        timer_reg: Reg | None = None
        dynptr: Reg | None = None  # the initialised dynptr a helper reads
        pending: tuple[int, ArgType] | None = None  # a MEM/UNINIT_MEM waiting for its size
        released = 0
        cast_ref = 0  # the reference of the socket a pointer cast is given
        alloc_size = 0
        const_key: int | None = None  # an array lookup's key, when the stack holds a known one
        size_max = MAX_OFFSET  # the largest value of the size argument
        packet_ok = self.context.packet_helpers is None or hid in self.context.packet_helpers
        for i, kind in enumerate(args):
            r = i + 1
            nxt = args[i + 1] if i + 1 < len(args) else None
            if not packet_ok and kind in MEMORY_ARGS and self._read(regs, r).type in PACKET_POINTERS:
                self.reject(f"helper access to the packet is not allowed: r{r} points into the packet, "
                            f"which {self.helper_names.get(hid, hid)} may not read or write")
            match kind:
                case ArgType.ANYTHING | ArgType.IGNORED:
                    pass
                case ArgType.SCALAR:
                    self._scalar_arg(regs, r, f"argument {r} of helper {hid}")
                case ArgType.MAP:
                    reg = self._read(regs, r)
                    if reg.type is not Pt.CONST_PTR_TO_MAP:
                        # (The kernel's name of a map of maps' lookup result: a map value or NULL.)
                        got = "map_value_or_null" if reg.type is Pt.CONST_PTR_TO_MAP_OR_NULL else reg.type.value
                        self.reject(f"r{r} type={got} expected=map_ptr: argument {r} of helper {hid} "
                                    f"is a map, not {reg}")
                    map_reg = reg
                    self._map_for_helper(reg.aux, hid)
                    if timer_reg is not None and timer_reg.aux != reg.aux:
                        self.reject(f"timer pointer in r1 map_uid={timer_reg.aux} doesn't match map pointer in "
                                    f"r{r} map_uid={reg.aux}")
                case ArgType.ZERO:
                    reg = self._scalar_arg(regs, r, f"argument {r} of helper {hid}")
                    self._precise(r)
                    if reg.var != sc.ZERO:
                        self.reject(f"{self.helper_names.get(hid, hid)}() doesn't support non-zero flags "
                                    f"(r{r} is {reg})")
                case ArgType.VALUE_OR_NULL if self._read(regs, r).type is Pt.SCALAR:
                    if self._read(regs, r).var != sc.ZERO:
                        self.reject(f"r{r} type=scalar expected=fp, pkt, pkt_meta, map_key, map_value, mem: "
                                    f"argument {r} of helper {hid} is a map value or NULL")
                    self._precise(r)
                case ArgType.KEY | ArgType.VALUE | ArgType.VALUE_OR_NULL | ArgType.UNINIT_VALUE:
                    if map_reg is None:
                        self.reject(f"helper {hid} takes a map {kind.value} without a map argument before it")
                    m = self.maps.get(map_reg.aux) if self.maps is not None else None
                    if kind is ArgType.VALUE and m is not None and m.map_type in SOCKET_MAP_TYPES:
                        # A socket map's value is a socket (the kernel's resolve_map_arg_type),
                        # which only the Python helper finds.
                        self._sock_arg(regs, r, ArgType.BTF_SOCK_COMMON)
                        self.unchecked_calls.add(self.pc)
                        continue
                    size = 1 if m is None else m.key_size if kind is ArgType.KEY else m.value_size
                    self._mem_arg(st, regs, r, size, size, ArgType.VALUE if kind is ArgType.VALUE_OR_NULL else kind)
                    if kind is ArgType.KEY and hid == ARRAY_LOOKUP and m is not None and map_reg.aux >= 0 \
                            and m.map_type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
                        const_key = self._constant_key(st, self._read(regs, r), size)
                case ArgType.UNINIT_LONG:
                    self._mem_arg(st, regs, r, 8, 8, ArgType.UNINIT_MEM)
                    self._aligned_arg(regs, r, 8)
                case ArgType.ALLOC_SIZE:
                    size_reg = self._read(regs, r)
                    if size_reg.type is not Pt.SCALAR or not size_reg.var.is_const:
                        self.reject(f"r{r} is not a known constant (the size helper {hid} allocates): {size_reg}")
                    self._precise(r)
                    # The kernel keeps the low 32 bits (a u32 mem_size); so large a request fails at
                    # run time (NULL), and what an access may reach is bounded anyway.
                    alloc_size = min(size_reg.var.value & MASK32, MAX_OFFSET)
                case ArgType.MEM | ArgType.MEM_OR_NULL | ArgType.UNINIT_MEM | ArgType.VALUE_MEM:
                    mem_kind = kind
                    if kind is ArgType.VALUE_MEM:
                        got = self._read(regs, r)
                        if got.type is not Pt.PTR_TO_MAP_VALUE:
                            self.reject(f"Unsupported reg type {got.type.value} for "
                                        f"{self.helper_names.get(hid, hid)} data")
                        mem_kind = ArgType.UNINIT_MEM
                    if nxt in (ArgType.SIZE, ArgType.SIZE_OR_ZERO):
                        pending = (r, mem_kind)
                    else:
                        self._mem_arg(st, regs, r, 1, 1, mem_kind)
                case ArgType.SIZE | ArgType.SIZE_OR_ZERO:
                    length = self._scalar_arg(regs, r, f"size argument {r} of helper {hid}").var
                    self._precise(r)
                    if length.umax >= MAX_OFFSET:
                        rule = ("min value is negative, either use unsigned or 'var &= const'" if length.smin < 0
                                else "unbounded memory access, use 'var &= const' or 'if (var < const)'")
                        self.reject(f"r{r} {rule} (an unbounded size {length} of helper {hid})")
                    if kind is ArgType.SIZE and length.umin == 0:
                        self.reject(f"r{r} invalid zero-sized read: u64=[{length.umin},{length.umax}] "
                                    f"(size argument of helper {hid})")
                    size_max = length.umax
                    if pending is not None:
                        self._mem_arg(st, regs, pending[0], length.umin, length.umax, pending[1])
                        pending = None
                case ArgType.CTX | ArgType.CTX_READ | ArgType.CTX_OR_NULL:
                    self._ctx_arg(regs, r, kind)
                case ArgType.STACK_OR_NULL:
                    reg = self._read(regs, r)
                    if reg.type is not Pt.PTR_TO_STACK and not (reg.type is Pt.SCALAR and reg.var == sc.ZERO):
                        self.reject(f"r{r} type={reg.type.value} expected=fp (argument {r} of helper {hid}, the "
                                    "context handed to its callback, is on the stack or NULL)")
                case ArgType.CALLBACK:
                    reg = self._read(regs, r)
                    if reg.type is not Pt.PTR_TO_FUNC:
                        self.reject(f"r{r} (argument {r} of helper {hid}) must be the address of a function "
                                    f"(lddw r{r}, func:F) to call back, not {reg}")
                    self._unmodified(reg, r, "func")
                case ArgType.SPIN_LOCK | ArgType.SPIN_UNLOCK:
                    self._spin_lock_arg(st, regs, r, kind)
                case ArgType.TIMER:
                    timer_reg = self._special_field_arg(regs, r, "timer_off", "bpf_timer")
                case ArgType.ASYNC_CALLBACK:
                    reg = self._read(regs, r)
                    if reg.type is not Pt.PTR_TO_FUNC:
                        self.reject(f"r{r} (argument {r} of helper {hid}) must be the address of a function "
                                    f"(lddw r{r}, func:F) to call later, not {reg}")
                    self._unmodified(reg, r, "func")
                    if timer_reg is None:
                        self.reject(f"helper {hid} takes a callback without a timer argument before it")
                    self._push_async_callback(st, reg, timer_reg)
                case ArgType.BTF_OBJECT:
                    reg = self._read(regs, r)
                    if reg.type is not Pt.PTR_TO_BTF_ID:
                        self.reject(f"r{r} type={reg.type.value} expected=ptr_ (argument {r} of helper {hid} "
                                    f"is a kernel object)")
                case ArgType.NEW_LOCAL_DYNPTR | ArgType.NEW_RINGBUF_DYNPTR:
                    self._new_dynptr(st, regs, r, NEW_DYNPTRS[kind])
                case ArgType.DYNPTR | ArgType.RELEASED_DYNPTR:
                    dynptr = self._dynptr_arg(st, regs, r, kind)
                    if kind is ArgType.RELEASED_DYNPTR:
                        released = dynptr.ref
                case ArgType.RELEASED:
                    reg = self._read(regs, r)
                    # (a dynptr's slice holds the dynptr's reference, which only the dynptr gives back)
                    if not reg.ref or reg.type is not Pt.PTR_TO_BUF or reg.aux < 0:
                        self.reject(f"r{r} (argument {r} of helper {hid}) must be a reference acquired earlier "
                                    f"and checked against NULL, not {reg}")
                    if reg.off or reg.var != sc.ZERO:
                        self.reject(f"r{r} must have zero offset when passed to release func (helper {hid})")
                    released = reg.ref
                case (ArgType.SOCK_COMMON | ArgType.BTF_SOCK_COMMON | ArgType.BTF_SOCK_COMMON_OR_NULL
                      | ArgType.RELEASED_SOCK | ArgType.SOCKET_OR_NULL):
                    reg = self._sock_arg(regs, r, kind)
                    cast_ref = cast_ref or reg.ref
                    if kind is ArgType.RELEASED_SOCK:
                        released = reg.ref
                case _:
                    raise InternalError(f"no rule for {kind}")
        if map_reg is not None and hid in self.tail_calls \
                and any(ref > 0 for ref, _at in st.refs):
            self.reject("tail_call would lead to reference leak: a reference acquired earlier is still held")
        match ret:
            case RetType.SCALAR:
                regs[0] = UNKNOWN_SCALAR
            case RetType.VOID:
                regs[0] = NOT_INIT
            case RetType.LENGTH_OR_ERRNO:
                regs[0] = Reg(Pt.SCALAR, sc.srange(-MAX_ERRNO, size_max))
            case RetType.MAP_VALUE_OR_NULL:
                if map_reg is None:
                    self.reject(f"helper {hid} returns a map value but takes no map argument")
                outer = self.maps.get(map_reg.aux) if self.maps is not None else None
                if outer is not None and outer.map_type in MAP_OF_MAPS_TYPES:
                    # An outer map's value is an inner map: a map pointer once checked against 0.
                    regs[0] = Reg(Pt.CONST_PTR_TO_MAP_OR_NULL, aux=inner_handle(map_reg.aux), id=self.fresh_id())
                elif outer is not None and outer.map_type in SOCKET_MAP_TYPES:
                    # A socket map's value is a socket, acquired as a lookup's (the kernel's rule);
                    # only the Python helper knows where sockets are laid out.
                    ref = self.fresh_id()
                    regs[0] = Reg(Pt.PTR_TO_SOCKET_OR_NULL, id=ref, ref=ref)
                    st.refs = (*st.refs, (ref, self.pc))
                    self.unchecked_calls.add(self.pc)
                elif const_key is not None and outer is not None and const_key < outer.max_entries:
                    # An array's value at a known index in range is never NULL (the kernel's, since 6.14).
                    regs[0] = self._map_value(map_reg.aux)
                else:
                    regs[0] = Reg(Pt.PTR_TO_MAP_VALUE_OR_NULL, aux=map_reg.aux, id=self.fresh_id())
            case RetType.MAP_VALUE:
                if map_reg is None:
                    self.reject(f"helper {hid} returns a map value but takes no map argument")
                regs[0] = self._map_value(map_reg.aux)
            case RetType.ACQUIRED_MEM_OR_NULL | RetType.ACQUIRED_SOCKET_OR_NULL | RetType.ACQUIRED_SOCK_COMMON_OR_NULL:
                ref = self.fresh_id()
                regs[0] = Reg(ACQUIRED[ret], range=alloc_size, id=ref, ref=ref)
                st.refs = (*st.refs, (ref, self.pc))
            case RetType.SOCKET_OR_NULL:
                regs[0] = Reg(Pt.PTR_TO_SOCKET_OR_NULL, id=self.fresh_id())
            case RetType.DYNPTR_MEM_OR_NULL:
                if dynptr is None:
                    self.reject(f"helper {hid} returns a dynptr's memory but takes no dynptr")
                # A slice names its dynptr (aux), and holds its reference (a ring buffer record's).
                regs[0] = Reg(Pt.PTR_TO_BUF_OR_NULL, range=alloc_size, id=self.fresh_id(), aux=-dynptr.id,
                              ref=dynptr.ref)
            case RetType.CAST_SOCKET_OR_NULL | RetType.CAST_TCP_SOCK_OR_NULL:
                # The same object seen as another type: it holds the argument's reference.
                cast = Pt.PTR_TO_SOCKET_OR_NULL if ret is RetType.CAST_SOCKET_OR_NULL else Pt.PTR_TO_TCP_SOCK_OR_NULL
                regs[0] = Reg(cast, id=self.fresh_id(), ref=cast_ref)
            case _:
                raise InternalError(f"no rule for {ret}")
        if released:
            self._release(st, released)
        if ArgType.CTX in args or hid in self.tail_calls:
            # Helpers given the context may move the packet (adjust_head, store_bytes...), and a
            # tail call that fails may come back after its target did: as in the kernel, packet
            # pointers must be loaded and checked again afterwards.
            self._forget_packet(st)
        # Callers' r1-r5 are scratch after the call; a helper that calls back still needs them to
        # enter its callback, and makes them unreadable when the callback returns.
        if scratch_args(self.context.size is not None) and hid not in self.callbacks:
            for r in range(1, 6):
                regs[r] = NOT_INIT

    def _dynptr_place(self, st: State, regs: list[Reg], r: int, then: str) -> tuple[Frame, int]:
        """Where a helper's dynptr argument is: its frame and first slot (16 bytes of the stack at
        an 8-aligned constant offset, as the kernel requires; ``then``: the kernel's conclusion)."""
        ptr = self._read(regs, r)
        if ptr.type is not Pt.PTR_TO_STACK:
            self.reject(f"arg#{r - 1} expected pointer to stack or const struct bpf_dynptr")
        if not ptr.var.is_const:
            self.reject("dynptr has to be at a constant offset")
        lo, _hi = self._var_bounds(ptr, r, 0, DYNPTR_SIZE)
        if lo % 8 or lo > -DYNPTR_SIZE or lo < STACK_BOTTOM:
            self.reject(f"cannot pass in dynptr at an offset={lo}: {then}")
        entry = self._frame_entry(st, ptr.aux)
        self.stack_depth[entry] = max(self.stack_depth.get(entry, 0), -lo)
        self._stack_read(ptr.aux, lo - STACK_BOTTOM, DYNPTR_SIZE)
        return st.frames[ptr.aux], (lo - STACK_BOTTOM) // 8

    def _new_dynptr(self, st: State, regs: list[Reg], r: int, kind: DynptrKind) -> None:
        """A dynptr the helper initialises: it replaces what was there (an unreferenced dynptr
        included, never a referenced one); a ring buffer one is a reference from now on, even if
        the reservation fails (the program must still discard it)."""
        if self._read(regs, r).type is Pt.CONST_PTR_TO_DYNPTR:
            self.reject("Dynptr has to be an uninitialized dynptr: a helper's dynptr is not the program's to set")
        frame, first = self._dynptr_place(st, regs, r, "Dynptr has to be an uninitialized dynptr")
        start = 8 * first
        if referenced_among(frame, start, DYNPTR_SIZE):
            self.reject("cannot overwrite referenced dynptr")
        destroy(st, frame, start, DYNPTR_SIZE)
        ref = 0
        if kind is DynptrKind.RINGBUF:
            ref = self.fresh_id()
            st.refs = (*st.refs, (ref, self.pc))
        frame.stack[first : first + DYNPTR_SLOTS] = dynptr_slots(kind, self.fresh_id(), ref)

    def _dynptr_arg(self, st: State, regs: list[Reg], r: int, kind: ArgType) -> Reg:
        """An initialised dynptr the helper reads, or (RELEASED_DYNPTR) a ring buffer one it
        gives back; the kernel's checks in its order."""
        reg = self._read(regs, r)
        if reg.type is Pt.CONST_PTR_TO_DYNPTR:
            if kind is ArgType.RELEASED_DYNPTR:
                self.reject("cannot release unowned const bpf_dynptr")
            if reg.off or reg.var != sc.ZERO:
                self.reject(f"dereference of modified dynptr_ptr ptr R{r} off={reg.off} disallowed")
            return Reg(Pt.DYNPTR, aux=DynptrKind.LOCAL, range=1, id=reg.id)  # (its slices: the round's)
        expected = f"Expected an initialized dynptr as arg #{r - 1}"
        frame, first = self._dynptr_place(st, regs, r, expected)
        if kind is ArgType.RELEASED_DYNPTR and not referenced_among(frame, 8 * first, DYNPTR_SIZE):
            self.reject(f"arg {r} is an unacquired reference")
        found = initialised_at(frame, first)
        if found is None:
            self.reject(expected)
        if kind is ArgType.RELEASED_DYNPTR and found.aux != DynptrKind.RINGBUF:
            self.reject(f"Expected a dynptr of type ringbuf as arg #{r - 1}")
        return found

    def _sock_arg(self, regs: list[Reg], r: int, kind: ArgType) -> Reg:
        """A socket argument: a socket pointer checked against NULL (any of the kinds, or a full
        socket only); a BTF kernel object too where the kernel takes one; the context where it is
        a socket. A released one must be a reference a lookup acquired."""
        reg = self._read(regs, r)
        nullable = kind in (ArgType.BTF_SOCK_COMMON_OR_NULL, ArgType.SOCKET_OR_NULL)
        if nullable and reg.type is Pt.SCALAR and reg.var == sc.ZERO:
            self._precise(r)
            return reg
        if kind is ArgType.SOCKET_OR_NULL:
            if reg.type is not Pt.PTR_TO_SOCKET:
                self.reject(f"r{r} type={reg.type.value} expected=sock")
            return reg
        btf = kind is not ArgType.SOCK_COMMON
        if btf and self.context.socket_context and reg.type is Pt.PTR_TO_CTX:
            self._ctx_arg(regs, r, ArgType.CTX_READ)
            return reg
        if reg.type not in SOCKETS and not (btf and reg.type is Pt.PTR_TO_BTF_ID):
            expected = "sock_common, sock, tcp_sock, xdp_sock" + (", ptr_, trusted_ptr_" if btf else "")
            self.reject(f"r{r} type={reg.type.value} expected={expected}")
        if kind is ArgType.RELEASED_SOCK and not reg.ref:
            self.reject(f"r{r} must be referenced when passed to release function")
        return reg

    def _ctx_arg(self, regs: list[Reg], r: int, kind: ArgType) -> None:
        """A context argument: the unmodified context pointer (or 0, for CTX_OR_NULL). Programs
        without a context type may give the helpers that only read it anything."""
        reg = self._read(regs, r)
        if kind is ArgType.CTX_OR_NULL and reg.type is Pt.SCALAR and reg.var == sc.ZERO:
            self._precise(r)
            return
        if kind is not ArgType.CTX and self.context.size is None:
            return
        if reg.type is not Pt.PTR_TO_CTX:
            self.reject(f"r{r} type={reg.type.value} expected=ctx: the helper takes the unmodified context pointer")
        self._unmodified(reg, r, "ctx")

    def _aligned_arg(self, regs: list[Reg], r: int, size: int) -> None:
        """A pointer to an integer a helper writes must be aligned to its size, as the kernel
        checks strictly for these arguments (stack and map values, whose bases are aligned)."""
        ptr = self._read(regs, r)
        desc = {Pt.PTR_TO_STACK: "stack ", Pt.PTR_TO_MAP_VALUE: "value "}.get(ptr.type)
        if desc is not None and ptr.var.is_const and (ptr.off + ptr.var.value) % size:
            self.reject(f"misaligned {desc}access off {ptr.var.value}+{ptr.off}+0 size {size}: r{r} "
                        f"(an {size}-byte result of a helper) must be aligned")

    def _map_for_helper(self, handle: int, hid: int) -> None:
        """The kernel's map-to-helper compatibility: some map types go to some helpers only, and
        some helpers take some map types only."""
        m = self.maps.get(handle) if self.maps is not None else None
        if m is None:
            return
        if hid in self.tail_calls and m.map_type != MapType.PROG_ARRAY:
            self.reject("expected prog array map for tail call")  # the kernel checks this one first
        only = HELPERS_OF_TYPE.get(m.map_type)  # type: ignore[call-overload]
        wanted = self.map_types.get(hid, ())
        if (only is not None and hid not in only) or (wanted and m.map_type not in wanted):
            self.reject(f"cannot pass map_type {int(m.map_type)} into func {self.helper_names.get(hid, hid)}#{hid}")
        if m.map_type in SOCKET_MAP_TYPES and hid in MAP_WRITE_HELPERS and hid not in self.context.sockmap_writers:
            self.reject(f"cannot update sockmap in this context (func {self.helper_names.get(hid, hid)}#{hid})")

    def _is_may_goto(self, pc: int) -> bool:
        info = self.infos[pc]
        return info is not None and info.kind is Kind.MAY_GOTO

    def _call_back(self, st: State, pc: int, hid: int) -> int:
        """A helper that calls back (its arguments checked): verify the flags and the count, then
        enter the callback's first round in a new frame. Returns the callback's entry (or the
        next slot, for a loop of no iterations)."""
        regs = st.frames[-1].regs
        flags = regs[4]
        if self.callbacks[hid] is not CallbackKind.USER_RINGBUF:  # (the drain's are its scalar argument)
            # Any value, as the kernel's ARG_ANYTHING: flags other than 0 fail the call at run time
            # (-EINVAL, no invocation), and r0 after it is an unknown number either way.
            flags = self._read(regs, 4)
            if flags.type is not Pt.SCALAR:
                self._address_use(f"r4 leaks addr into helper function: the flags (r4) of helper {hid} are {flags}")
        if self.callbacks[hid] is CallbackKind.LOOP:
            # A count past the limit fails the call at run time (-E2BIG), as in the kernel, which
            # verifies the callback all the same.
            nr = regs[1].var
            self._precise(1)
            if nr.umax == 0:  # never called, so never verified (the kernel's rule too)
                _after_callbacks(regs)
                return pc + 1
        # The helper may call the callback no times at all (a count of 0 or past the limit,
        # flags other than 0, an empty map, no samples): the code after the call is verified
        # from the state before it as well, as the kernel does, not only after a round.
        skip = st.copy()
        _after_callbacks(skip.frames[-1].regs)
        skip.hist = (pc, self.aux, st.hist)
        if skip.precise:
            step = self.steps[pc]
            assert step is not None
            skip.precise = _precise_after(step[3], self.aux, skip.precise)
        visit = self.visit
        assert visit is not None  # (set by the walk)
        visit.branches += 1
        self.work.append((pc + 1, skip, visit, self.path_log))
        self.callback_rounds.setdefault(pc, []).append(self._caller_snapshot(st, pc))
        self._enter_callback(st, pc, hid)
        return st.frames[-1].entry

    def _caller_masks(self, st: State, callsite: int) -> list[int]:
        """Per frame of the callers of a callback called from ``callsite``: the registers later
        code may read (the helper's arguments included, for the next round)."""
        probe = State([*st.frames, Frame([NOT_INIT] * 11, [None] * SLOTS, callsite, 0)])
        return self._live_masks(probe, callsite)[:-1]

    def _caller_snapshot(self, st: State, callsite: int) -> State:
        """The callers' frames as a callback round begins, with what later code may still read."""
        caller = State([f.copy() for f in st.frames], refs=st.refs)
        return self._snapshot(caller, self._caller_masks(st, callsite))

    def _enter_callback(self, st: State, pc: int, hid: int) -> None:
        """Push the callback's frame, its arguments typed as the helper passes them."""
        if len(st.frames) >= self.max_call_depth:
            self.reject(f"call stack is too deep: {len(st.frames) + 1} frames (max {self.max_call_depth})")
        caller = st.frames[-1].regs
        entry = caller[2].aux
        regs = [NOT_INIT] * 11
        round_id = self.fresh_id()
        if self.callbacks[hid] is CallbackKind.LOOP:
            regs[1] = UNKNOWN_SCALAR  # the iteration: any number to the kernel too, whatever the count
            regs[2] = caller[3]  # the context, as passed
        elif self.callbacks[hid] is CallbackKind.USER_RINGBUF:
            # The sample (kept at the bottom of the callback's frame), named by the round: its
            # slices are the round's, and go when it returns (the drain consumes the sample).
            regs[1] = Reg(Pt.CONST_PTR_TO_DYNPTR, id=round_id)
            regs[2] = caller[3]
        else:
            handle = caller[1].aux
            regs[1] = caller[1]  # the map
            regs[2] = Reg(Pt.PTR_TO_MAP_KEY, aux=handle)  # (kept at the bottom of the callback's frame)
            regs[3] = Reg(Pt.PTR_TO_MAP_VALUE, aux=handle)
            regs[4] = caller[3]
        regs[FP] = Reg(Pt.PTR_TO_STACK, aux=len(st.frames))
        st.frames.append(Frame(regs, [None] * SLOTS, pc, entry, round_id))

    def _callback_return(self, st: State, parent: _Visit) -> int:
        """A callback's exit: r0 must say stop (1) or go on (0). Another round is verified from the
        callers' state now unless an earlier round began with one covering it; this path goes
        on after the call with r0 the count and r1-r5 unreadable."""
        r0 = st.frames[-1].regs[0]
        if r0.type is not Pt.SCALAR:
            self.reject(f"At callback return the register r0 is not a known value ({r0.type.value}): a callback "
                        f"returns 0 or 1, not {r0}")
        self._precise(0)
        if r0.var.smin < 0 or r0.var.smax > 1:
            self.reject(_invalid_scalar("At callback return", r0.var, 0, 1))
        callsite = st.frames[-1].callsite
        round_id = st.frames[-1].round
        self._pop_frame(st)
        self._forget_slices(st, round_id)
        hid = self.slots[callsite].imm  # type: ignore[union-attr]
        rounds = self.callback_rounds.setdefault(callsite, [])
        snap = self._caller_snapshot(st, callsite)
        if not any(state_within(old, shared_ids(old), snap) for old in rounds):
            if len(rounds) >= CALLBACK_ROUNDS:
                self.pc = callsite
                self.reject(f"the callback of helper {hid} does not reach a state that covers each of its "
                            f"rounds within {CALLBACK_ROUNDS} rounds")
            again = st.copy()
            if len(rounds) >= WIDEN_AFTER:
                wide = widen(rounds[-1], again, self._caller_masks(again, callsite))
                if wide is not None:
                    wide.hist, wide.depth = again.hist, again.depth
                    again = wide
            rounds.append(self._caller_snapshot(again, callsite))
            self._enter_callback(again, callsite, hid)
            parent.branches += 1
            self.work.append((again.frames[-1].entry, again, parent, self.path_log))
        _after_callbacks(st.frames[-1].regs)
        return callsite + 1

    @staticmethod
    def _forget_slices(st: State, dynptr: int) -> None:
        """Slices of the dynptr ``dynptr`` (a user ring buffer sample, consumed as its callback
        returns), in registers or spilled, become unusable: its memory is the producer's again."""
        for frame in st.frames:
            for i, reg in enumerate(frame.regs):
                if reg.type in SLICES and reg.aux == -dynptr:
                    frame.regs[i] = NOT_INIT
            for i, slot in enumerate(frame.stack):
                if type(slot) is Reg and slot.type in SLICES and slot.aux == -dynptr:
                    frame.stack[i] = (MISC,) * 8

    @staticmethod
    def _pop_frame(st: State) -> None:
        """Drop the innermost frame: pointers into it, in registers or spilled, become unusable."""
        gone = len(st.frames) - 1
        st.frames.pop()
        for frame in st.frames:
            for i, reg in enumerate(frame.regs):
                if reg.type is Pt.PTR_TO_STACK and reg.aux >= gone:
                    frame.regs[i] = NOT_INIT
            for i, slot in enumerate(frame.stack):
                if type(slot) is Reg and slot.type is Pt.PTR_TO_STACK and slot.aux >= gone:
                    frame.stack[i] = (MISC,) * 8

    @staticmethod
    def _release(st: State, ref: int) -> None:
        """The reference ``ref`` is given back: every copy of its pointer becomes an unknown number
        (as in the kernel for privileged programs), which no access or release accepts."""
        st.refs = tuple(r for r in st.refs if r[0] != ref)
        for frame, i, reg in list(st.all_regs()):
            if reg.ref == ref:
                if i >= 0:
                    frame.regs[i] = UNKNOWN_SCALAR
                else:  # (a released dynptr's slots are never-written stack again, as in the kernel)
                    frame.stack[-i - 1] = None if reg.type is Pt.DYNPTR else (MISC,) * 8

    @staticmethod
    def _forget_packet(st: State) -> None:
        """Packet pointers anywhere in the state become unknown numbers (the packet moved)."""
        for frame, i, reg in list(st.all_regs()):
            if reg.type in PACKET_KINDS:
                if i >= 0:
                    frame.regs[i] = UNKNOWN_SCALAR
                else:
                    frame.stack[-i - 1] = (MISC,) * 8

    @functools.cached_property
    def moves_packet(self) -> frozenset[int]:
        """The functions (by entry) that may move the packet: they call a helper given the
        context or a tail call, or a function that does (the kernel's changes_pkt_data). Found
        when a function first returns or a global one is called: most programs never ask."""
        moves: set[int] = set()
        calls: dict[int, set[int]] = {}
        for fn in self.flow.functions:
            for pc in range(fn.entry, fn.end):
                insn, info = self.slots[pc], self.infos[pc]
                if insn is None or info is None:
                    continue
                if info.kind is Kind.CALL and insn.imm in self.signatures:
                    if ArgType.CTX in self.signatures[insn.imm][0] or insn.imm in self.tail_calls:
                        moves.add(fn.entry)
                elif info.kind is Kind.CALL_LOCAL:
                    calls.setdefault(fn.entry, set()).add(self.targets[pc])
        # A callback runs inside the helper call of the function whose lddw loads its address:
        # a callback that moves the packet moves it for that function too.
        for pc, callback in self.flow.callbacks.items():
            for fn in self.flow.functions:
                if fn.entry <= pc < fn.end:
                    calls.setdefault(fn.entry, set()).add(callback)
        grown = True
        while grown:
            grown = False
            for entry, callees in calls.items():
                if entry not in moves and callees & moves:
                    moves.add(entry)
                    grown = True
        return frozenset(moves)

    def _call_local(self, st: State, pc: int) -> None:
        if len(st.frames) >= self.max_call_depth:
            self.reject(f"call stack is too deep: {len(st.frames) + 1} frames (max {self.max_call_depth})")
        caller = st.frames[-1].regs
        regs = [NOT_INIT] * 11
        regs[1:6] = caller[1:6]
        regs[FP] = Reg(Pt.PTR_TO_STACK, aux=len(st.frames))
        st.frames.append(Frame(regs, [None] * SLOTS, pc, self.targets[pc]))

    def _return(self, st: State) -> int:
        callee = st.frames.pop()
        gone = len(st.frames)
        caller = st.frames[-1].regs
        r0 = callee.regs[0]
        if r0.type is Pt.PTR_TO_STACK:  # (a caller's would still be valid: the kernel refuses both)
            self.reject("cannot return stack pointer to the caller"
                        + (": it points to the callee's stack" if r0.aux >= gone else ""))

        def dangling(reg: Reg) -> bool:
            return reg.type is Pt.PTR_TO_STACK and reg.aux >= gone

        # r0 comes back from the callee, and r1-r5 unless they are scratch (then unreadable);
        # r6-r9 are the caller's own.
        scratch = scratch_args(self.context.size is not None)
        for i in range(6):
            reg = callee.regs[i]
            caller[i] = NOT_INIT if dangling(reg) or (i and scratch) else reg
        for frame in st.frames:
            for i, slot in enumerate(frame.stack):
                if type(slot) is Reg and dangling(slot):
                    frame.stack[i] = (MISC,) * 8
        if callee.entry in self.moves_packet:  # the callee may have moved the packet
            self._forget_packet(st)
        return callee.callsite + 1

    def _call_global(self, st: State, regs: list[Reg], entry: int) -> None:
        """A call of a global function: its arguments must match its prototype; the function is
        verified later, on its own, and the call returns an unknown number."""
        fn, n = self.globals[entry], self.func_numbers[entry]
        invalid = f"Caller passes invalid args into func#{n} ('{fn.name}')"
        if self._lock_held(st) is not None:
            self.reject("global function calls are not allowed while holding a lock, use static function instead")
        if fn.error:
            self.reject(f"{fn.error}; {invalid}")
        try:
            for i, param in enumerate(fn.params):
                self._global_arg(st, regs, i + 1, param.kind, param.size)
        except Rejected as exc:
            raise Rejected(exc.pc, f"{exc.message}; {invalid}") from None
        self.unchecked_calls.discard(self.pc)  # (set by a memory argument: it concerns helpers only)
        if self.log:
            self._log_line(f"Func#{n} ('{fn.name}') is global and assumed valid.")
        if entry not in self.called_globals:
            self.called_globals.append(entry)
        regs[0] = UNKNOWN_SCALAR
        for r in range(1, 6):
            regs[r] = NOT_INIT
        if entry in self.moves_packet:
            self._forget_packet(st)

    def _global_arg(self, st: State, regs: list[Reg], r: int, kind: ParamKind, size: int) -> None:
        """Check argument ``r`` of a call to a global function against its parameter's kind."""
        reg = self._read(regs, r)
        if kind is ParamKind.SCALAR:
            if reg.type is not Pt.SCALAR:
                self.reject(f"r{r} is not a scalar ({reg})")
        elif kind is ParamKind.CTX:
            if reg.type is not Pt.PTR_TO_CTX or reg.off or reg.var != sc.ZERO:
                self.reject(f"arg#{r - 1} expects pointer to ctx, not {reg}")
        elif reg.type is Pt.SCALAR and reg.var == sc.ZERO:
            pass  # NULL, which the function must expect (the kernel lets it through even for arg:nonnull)
        elif reg.type is Pt.SCALAR or reg.type in (Pt.PTR_TO_CTX, Pt.PTR_TO_PACKET_END, Pt.CONST_PTR_TO_MAP,
                                                    Pt.PTR_TO_FUNC):
            self.reject(f"r{r} type={reg.type.value} expected=fp")
        else:
            # A pointer that may be NULL is checked as if it were not: NULL is the function's to check.
            probe = list(regs)
            probe[r] = reg._replace(type=NON_NULL.get(reg.type, reg.type))
            self._mem_arg(st, probe, r, size, size, ArgType.MEM)  # the function may read it...
            self._mem_arg(st, probe, r, size, size, ArgType.UNINIT_MEM)  # ... and write it

    def _exit_holding_nothing(self, st: State, regs: list[Reg], who: str, leak: str) -> Reg:
        """The checks of every final exit: no lock or reference held, r0 set; r0 is returned."""
        if self._lock_held(st) is not None:
            self.reject(f"bpf_spin_unlock is missing: the {who} exits holding a bpf_spin_lock")
        if st.refs:
            ref, at = st.refs[0]
            self.reject(f"Unreleased reference id={ref} alloc_insn={at}: {leak}")
        r0 = regs[0]
        if r0.type is Pt.NOT_INIT:
            self.reject(f"r0 !read_ok: r0 is not initialised at the {who}'s exit")
        return r0

    def _exit_global(self, st: State, regs: list[Reg]) -> None:
        """The exit of a global function verified on its own: it returns a number, holding nothing."""
        r0 = self._exit_holding_nothing(st, regs, "function", "a global function must release what it acquires")
        if r0.type is not Pt.SCALAR:
            self.reject(f"At subprogram exit the register R0 is not a scalar value ({r0.type.value})")

    def _exit_main(self, st: State, regs: list[Reg]) -> None:
        r0 = self._exit_holding_nothing(st, regs, "program", "BPF_EXIT instruction in main prog would lead to "
                                        "reference leak (what was acquired there is not released on this path)")
        ctx = self.context
        if r0.is_pointer and not ctx.ret_pointer_ok and not (self.privileged and ctx.ret_range is None):
            if ctx.ret_range is None:
                self.reject(f"r0 leaks addr as return value: returning a pointer ({r0}) is not allowed here")
            self.reject(f"At program exit the register r0 is not a known value ({r0.type.value}): returning a "
                        f"pointer ({r0}) is not allowed for this program type")
        if r0.is_pointer and not ctx.ret_pointer_ok:
            self.uses_addresses = True  # a privileged program's address as its result
        if ctx.ret_range is not None and not r0.is_pointer:
            self._precise(0)
            lo, hi = ctx.ret_range
            var = sc.project(r0.var, 32) if ctx.ret_32bit else r0.var
            if var.smin < lo or var.smax > hi:
                self.reject(_invalid_scalar("At program exit", r0.var, lo, hi))

    def _check_stack_depth(self) -> int:
        """Reject call chains whose frames together use more than ``stack_limit`` bytes."""
        control = self.control
        assert control is not None
        best: dict[int, int] = {}

        def deepest(fn: int) -> int:
            if fn in best:
                return best[fn]
            own = (self.stack_depth.get(fn, 0) + 7) // 8 * 8
            total = own
            for pc, callee in control.calls.get(fn, ()):
                sub = own + deepest(callee)
                if sub > self.stack_limit:
                    self.pc = pc
                    self.reject(f"combined stack size of the call chain through insn {pc} is {sub} bytes "
                                f"(max {self.stack_limit})")
                total = max(total, sub)
            best[fn] = total
            return total

        total = deepest(0)
        if total > self.stack_limit:
            self.pc = 0
            self.reject(f"stack size {total} bytes exceeds the limit of {self.stack_limit}")
        return total

    # -- log -----------------------------------------------------------------------------------

    def _disasm(self, pc: int) -> str:
        text = self.disasm_cache.get(pc)
        if text is None:
            text = describe_instruction(self.flow, pc)
            self.disasm_cache[pc] = text
        return text

    def _log_line(self, line: str) -> None:
        self.path_log = (line, self.path_log)

    @staticmethod
    def _describe(st: State) -> str:
        parts = []
        for depth, frame in enumerate(st.frames):
            prefix = f"frame{depth}:" if len(st.frames) > 1 else ""
            regs = " ".join(f"r{i}={r}" for i, r in enumerate(frame.regs) if r.type is not Pt.NOT_INIT)
            stack = " ".join(f"fp{i * 8 - STACK_SIZE}={s if type(s) is Reg else 'bytes'}"
                             for i, s in enumerate(frame.stack) if s is not None)
            parts.append(prefix + regs + (" " + stack if stack else ""))
        return " | ".join(parts)

    def _log_step(self, pc: int, st: State, before: list[Reg] | None, nframes: int) -> None:
        if before is None:
            return
        if len(st.frames) != nframes:
            self._log_line(f"{pc}: {self._disasm(pc)} ; {self._describe(st)}")
            return
        regs = st.frames[-1].regs
        changed = " ".join(f"r{i}={r}" for i, (r, b) in enumerate(zip(regs, before, strict=True)) if r is not b)
        self._log_line(f"{pc}: {self._disasm(pc)}" + (f" ; {changed}" if changed else ""))

    def log_text(self) -> str:
        lines: list[str] = []
        node = self.path_log
        while node is not None and len(lines) < LOG_LINES:
            lines.append(node[0])
            node = node[1]
        if node is not None:
            lines.append("...")
        return "\n".join(reversed(lines))


def _invalid_scalar(where: str, var: sc.Scalar, lo: int, hi: int) -> str:
    """The kernel's words for a return value out of its range: the bounds it knows of r0."""
    bounds = (("smin", var.smin, sc.UNKNOWN.smin), ("smax", var.smax, sc.UNKNOWN.smax))
    known = "".join(f" {name}={v}" for name, v, edge in bounds if v != edge)
    return (f"{where} the register r0 has{known or ' unknown scalar value'} should have been in [{lo}, {hi}] "
            f"(r0 has value {_tnum_bits(var)})")


def _tnum(var: sc.Scalar) -> str:
    """Known bits as the kernel's log writes a stack offset: a constant in decimal, else (value; mask)."""
    return str(sc.to_signed(var.value)) if var.is_const else _tnum_bits(var)


def _tnum_bits(var: sc.Scalar) -> str:
    """Known bits as the kernel's tnum_strn writes them: (value; mask), constants too."""
    return f"({var.value:#x}; {var.mask:#x})"


def describe_instruction(flow: ControlFlow, pc: int) -> str:
    """The instruction at ``pc`` as assembler text (or its fields, without a disassembler)."""
    insn = flow.program.slots[pc] if 0 <= pc < len(flow.program) else None
    if insn is None:
        return ""
    try:
        from jitbpf.disasm import format_instruction  # optional: the disassembler may be absent

        return format_instruction(insn, pc)
    except Exception:  # a listing problem must not hide the verifier's message
        pass
    info = flow.program.infos[pc]
    name = info.mnemonic if info is not None else f"op {insn.opcode:#04x}"
    return f"{name} dst=r{insn.dst} src=r{insn.src} off={insn.off} imm={insn.imm}"
