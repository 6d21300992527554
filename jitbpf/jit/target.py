"""The architecture-independent half of the JIT: walks the blocks of a program, hands each
instruction to the target's emitter, keeps labels and branch fixups, links, and lists the code."""

from __future__ import annotations

import abc
import bisect
import enum
import itertools
import struct
from collections.abc import Callable, Hashable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import ClassVar, cast

from jitbpf.cfg import Block, ControlFlow
from jitbpf.contract import CallbackKind
from jitbpf.errors import InternalError, JitError
from jitbpf.isa import Instruction, Kind, OpInfo
from jitbpf.jit.encoding import Assembler
from jitbpf.jit.loops import LoopPlan, plan_loops
from jitbpf.jit.stencils import UNSEEN as _UNSEEN
from jitbpf.jit.stencils import Stencil, StencilKey, derive, key_probes

_REL32 = struct.Struct("<i")
# The emitter method of each instruction kind.
_EMITTERS = (
    (Kind.ALU, "emit_alu"), (Kind.JCOND, "emit_jcond"), (Kind.LDX, "emit_load"), (Kind.LDXSX, "emit_load"),
    (Kind.ST, "emit_store"), (Kind.STX, "emit_store"), (Kind.JA, "emit_ja"), (Kind.LDDW, "emit_lddw"),
    (Kind.NEG, "emit_neg"), (Kind.MOVSX, "emit_movsx"), (Kind.END, "emit_endian"), (Kind.BSWAP, "emit_endian"),
    (Kind.ATOMIC, "emit_atomic"), (Kind.CALL, "emit_call"), (Kind.CALLX, "emit_call"),
    (Kind.CALL_LOCAL, "emit_call_local"), (Kind.EXIT, "emit_exit"), (Kind.LD_ABS, "emit_packet_load"),
    (Kind.LD_IND, "emit_packet_load"), (Kind.CALL_KFUNC, "emit_kfunc"), (Kind.MAY_GOTO, "emit_may_goto"),
)
_MAX_STENCILS = 1 << 16  # stencil classes kept per context
_MAX_WORDS = 1 << 17  # instruction encodings whose code is kept per context (at most this plus one program's)
_TAG = 40  # bits of a section offset; the section (or label kind) sits above them
_OFFSET_MASK = (1 << _TAG) - 1


class Section(enum.IntEnum):
    """Where a position or label lives; encoded above the offset bits of a location."""

    HOT = 0  # straight-line code of the blocks, in program order
    COLD = 1  # out-of-line stubs and the shared runtime routines, after the hot code
    PC = 2  # not a section: the code of the eBPF instruction at this slot (a jump target)


_PC_BASE = Section.PC << _TAG  # the location of slot 0's code (a branch target)
BLOCK_ALIGN = 32  # where the blocks start in the code, and what a target may align loops to there


def location(section: Section, offset: int) -> int:
    """Encode a position as one int (section above bit 40), cheap to store in fixup lists."""
    return section << _TAG | offset


@dataclass(frozen=True, slots=True)
class HelperTable:
    """Where generated code finds helpers at run time (memory owned by the JitProgram)."""

    address: int  # host address of the uint64 table: helper id -> function address
    capacity: int  # ids below this are in the table; others go to the dispatcher
    dispatcher: int  # address of the Python dispatcher callback (6th argument = helper id)


@dataclass(frozen=True, slots=True)
class CompiledCode:
    """The linked machine code of a program and what its listing needs."""

    code: bytes  # position-independent machine code
    entries: dict[str, int]  # entry point name -> offset
    # Per slot, the offset of its instruction's code from ``blocks`` (-1: none), as the compile
    # loop recorded them: ``pcs`` pairs them up only when asked (listings, faults).
    slot_offsets: tuple[int, ...]
    blocks: int  # offset of the blocks' code (slot 0's), after the entry points
    # The marks as the target recorded them (locations), and where link put each section: only
    # listings read them, so they become offsets when asked (see marks).
    recorded_marks: tuple[tuple[int, str, int], ...]
    layout: tuple[int, int, int]  # (where the blocks start, blocks' length, hot code's length)

    @property
    def marks(self) -> tuple[tuple[int, str, int], ...]:
        """(offset, label, pc or -1) of prologue, stubs and routines, ascending."""
        head, body, hot_len = self.layout
        cold = location(Section.COLD, 0)  # marks are in the hot code (head or blocks) or the cold
        return tuple(sorted([(loc + head if loc < body else loc + head - hot_len if loc < cold
                              else loc - cold + head + body, text, pc) for loc, text, pc in self.recorded_marks]))

    @property
    def pcs(self) -> tuple[tuple[int, int], ...]:
        """(offset, eBPF pc) for every instruction, ascending."""
        base = self.blocks
        return tuple([(off + base, pc) for pc, off in enumerate(self.slot_offsets) if off >= 0])


@dataclass(slots=True)
class CompileOptions:
    """Everything the target needs to know besides the program itself."""

    resolve_lddw: Callable[[int, Instruction], int]  # value an lddw loads
    proven: frozenset[int]  # slots whose memory access the verifier proved in bounds
    helpers: HelperTable  # the helper table
    count_budget: bool = True  # charge blocks to the budget (off only when it cannot run out)
    # The verifier accepted the program: it never reads a register or stack byte it did not
    # write, so the code need not clear them (unverified programs see zeros, as in the interpreter).
    verified: bool = False
    python_calls: frozenset[int] = frozenset()  # helper calls to make through Python (unproven pointers)
    # Proven accesses are confined to the sandbox by construction (jitbpf/_native/sandbox.c),
    # so that a wrong proof cannot reach host memory. Without it, ``proven`` is empty (except
    # when measuring what confinement costs).
    contained: bool = False
    # Calls of helpers that call back into the program (slot -> how), and the native step of
    # bpf_for_each_map_elem's iteration (jb_for_each_step) when one of them is that helper.
    callbacks: Mapping[int, CallbackKind] = field(default_factory=dict)
    for_each_step: int = 0
    probe_loads: frozenset[int] = frozenset()  # loads whose failure gives 0 (through BTF-typed pointers)
    user_ringbuf_step: int = 0  # bpf_user_ringbuf_drain's (jb_user_ringbuf_step), likewise
    # The functions a run may enter instead of the program (timer callbacks: jitbpf_ctx.callback).
    async_entries: tuple[int, ...] = ()
    # The program calls helpers: only they reserve ring buffer records, which a batch drops
    # after each run that left some (without calls, the batch loop need not look).
    helper_calls: bool = True


def _moved(loc: int, hot: int, cold: int) -> int:
    """``loc`` shifted by the given section bases (pc locations stay)."""
    section = loc >> _TAG
    if section == Section.HOT:
        return loc + hot
    return loc + cold if section == Section.COLD else loc


@dataclass(frozen=True, slots=True)
class _Recording:
    """What one run of an emitter added to a Target, with locations relative to where it started."""

    hot: bytes
    cold: bytes
    fixups: tuple[tuple[int, int], ...]
    named: tuple[tuple[int, str], ...]
    marks: tuple[tuple[int, str, int], ...]
    labels: tuple[tuple[str, int], ...]
    entries: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, t: Target, hot0: int, cold0: int,
           before: tuple[int, int, int, dict[str, int], dict[str, int]]) -> _Recording:
        nfix, nnamed, nmarks, labels, entries = before
        back = (-hot0, -cold0)
        code = (bytearray(t.hot[hot0:]), bytearray(t.cold[cold0:]))
        own = {k: _moved(v, *back) for k, v in t.labels.items() if labels.get(k) != v}

        def kept(field: int, target: int | None) -> bool:
            """Whether a branch stays for link: one within a section of the recording keeps its
            displacement wherever it is replayed, so it is patched into the recording once (labels
            are bound once, so a name the recording binds is the one link would find)."""
            section = field >> _TAG
            if target is None or target >> _TAG != section or section > Section.COLD:
                return True
            t.patch_branch(code[section], field & _OFFSET_MASK, target - field - 4)
            return False

        moved = ((_moved(f, *back), _moved(g, *back)) for f, g in t.fixups[nfix:])
        fixups = tuple((f, g) for f, g in moved if kept(f, g))
        named = tuple((f, name) for f, name in ((_moved(f, *back), name) for f, name in t.named_fixups[nnamed:])
                      if kept(f, own.get(name)))
        return cls(bytes(code[0]), bytes(code[1]), fixups, named,  # (the code patched by kept)
                   tuple((_moved(loc, *back), text, pc) for loc, text, pc in t.marks[nmarks:]),
                   tuple(own.items()),
                   tuple((k, v - hot0) for k, v in t.entries.items() if entries.get(k) != v))

    def replay(self, t: Target, hot0: int, cold0: int) -> None:
        t.hot += self.hot
        t.cold += self.cold
        base = (hot0, cold0, 0)  # what a location moves by, per section (pc locations stay)
        t.fixups += [(f + base[f >> _TAG], g + base[g >> _TAG]) for f, g in self.fixups]
        t.named_fixups += [(f + base[f >> _TAG], name) for f, name in self.named]
        t.marks += [(loc + base[loc >> _TAG], text, pc) for loc, text, pc in self.marks]
        t.labels.update([(k, v + base[v >> _TAG]) for k, v in self.labels])
        t.entries.update([(k, v + hot0) for k, v in self.entries])


class Target(abc.ABC):
    """Drives code generation for one program. A subclass supplies the machine: the ``emit_*``
    methods for each instruction kind, block entry (budget), entry/runtime code and the branch
    encodings; everything else (iteration, labels, fixups, linking, listing) lives here."""

    name: ClassVar[str] = "generic"  # architecture name, for messages
    versions_loops: ClassVar[bool] = False  # emit_loop makes an unchecked copy behind a range check
    filler: ClassVar[bytes] = b"\x00"  # the byte that pads code no run reaches
    loop_reach: ClassVar[int] = 0  # largest offset emit_loop's range check adds to an address exactly
    capstone_arch: ClassVar[tuple[int, int]] = (0, 0)  # capstone (arch, mode) of the listing
    # Runtime routines whose offsets CompiledCode.entries also gives ("fault": where a run whose
    # code faulted continues, faulting address in hand).
    exported: ClassVar[tuple[str, ...]] = ()

    def __init__(self, asm: Assembler, flow: ControlFlow, options: CompileOptions) -> None:
        self.asm = asm  # the template cache
        self.flow = flow  # the program's structure
        self.options = options
        self.hot = bytearray()  # code of the blocks
        self.cold = bytearray()  # stubs and runtime routines
        self.pc_off = [-1] * len(flow.program)  # hot offset of each instruction (block entry included)
        self.fixups: list[tuple[int, int]] = []  # (location of a rel32 field, target location)
        self.named_fixups: list[tuple[int, str]] = []  # (location of a rel32 field, label name)
        self.labels: dict[str, int] = {}  # named label -> location
        self.marks: list[tuple[int, str, int]] = []  # (location, listing label, pc or -1)
        self.entries: dict[str, int] = {}  # entry point name -> hot offset
        self._head_at = 0  # where the code that link() puts in front of the blocks starts (prepend)
        self.unchecked: frozenset[int] = frozenset()  # accesses proven by the loop being emitted
        self.retarget: dict[int, int] = {}  # slot of a jump -> location it goes to instead (loop copies)
        # The emitter of each instruction kind, looked up once per instruction.
        self._emitters: dict[Kind, Callable[[int, Instruction, OpInfo], None]] = {
            kind: getattr(self, name) for kind, name in _EMITTERS}
        # Stencils of the instruction classes met so far, shared by every program compiled with
        # the same template cache and context (see jitbpf.jit.stencils); None for a class whose
        # emissions made none (it is emitted each time). Set when compiling starts: the target's
        # context is known only once its own constructor has run.
        self._classes: dict[Kind, Callable[[int, Instruction, OpInfo], StencilKey | None]] = {}
        self._stencils: dict[Hashable, Stencil | None] = {}
        # The code of instructions by their 64-bit encoding, where their class is a function of
        # the encoding alone (most instructions of most programs): a lookup instead of classifying
        # and patching, and runs of such instructions copied at once. Their branch field's offset
        # by encoding too (for those with one).
        self._code_by_word: dict[int, bytes] = {}
        self._branch_by_word: dict[int, int] = {}
        # Set by a classifier whose class depends on more than the instruction's own encoding
        # (its neighbours): such an instruction's code is never kept by its encoding.
        self.looked_around = False
        # Slots whose code depends on more than their encoding and the context (proofs; while a
        # versioned loop is emitted, its facts and redirected jumps too): never found by encoding.
        self._local: Set[int] = options.proven | options.probe_loads

    # -- hooks a target implements ---------------------------------------------------------------

    @abc.abstractmethod
    def emit_entries(self) -> None:
        """Entry points and the prologue that sets up registers; falls through to slot 0. Emitted
        after the program's code (and put before it), so it may depend on what that code uses."""

    @abc.abstractmethod
    def emit_block_entry(self, block: Block) -> None:
        """Code run on entry to every block (the budget charge)."""

    @abc.abstractmethod
    def emit_runtime(self) -> None:
        """The shared routines stubs jump to (exit, aborts, bounds walker, frame zeroing)."""

    def patch_branch(self, buf: bytearray, pos: int, displacement: int) -> None:
        """Store a branch displacement, relative to the end of the 4-byte field at ``pos``."""
        _REL32.pack_into(buf, pos, displacement)

    # -- driver ----------------------------------------------------------------------------------

    def stencil_classes(self) -> dict[Kind, Callable[[int, Instruction, OpInfo], StencilKey | None]]:
        """Per instruction kind, the function that sorts an instruction into its stencil class
        (None: emit it each time); kinds not given are always emitted."""
        return {}

    def stencil_context(self) -> Hashable:
        """What, besides an instruction and its class, the emitters' code for it depends on in
        this program (stencils are shared by the programs of one context)."""
        return ()

    def compile(self) -> CompiledCode:
        self._classes = self.stencil_classes()
        context = self.stencil_context()
        self._stencils = self.asm.derived.setdefault(("stencils", type(self).__name__, context), {})
        # No bound on encodings: a full cache starts over when a compile starts, as a new pair of
        # dicts, so that compiles under way on other threads keep theirs. Entries are only ever
        # added (a branch's offset before its code), so a code found always has its branch.
        words_key = ("words", type(self).__name__, context)
        by_word = self.asm.derived.get(words_key)
        if by_word is None or len(by_word[0]) >= _MAX_WORDS:
            by_word = self.asm.derived[words_key] = ({}, {})
        self._code_by_word, self._branch_by_word = by_word
        flow = self.flow
        loops = plan_loops(flow, self.loop_reach) if self.versions_loops and flow.has_back_edges else {}
        self._emit_blocks(flow.blocks, loops, record=True)
        self.emit_runtime()
        self.emit_async_entry()
        self.prepend(self.emit_entries)
        return self.link()

    def emit_async_entry(self) -> None:
        """The entry into the program's asynchronous callbacks (none unless the target has one)."""
        return None

    def quiet_block_entry(self) -> bool:
        """Whether ``emit_block_entry`` emits nothing in this program (then runs of blocks whose
        instructions are all known by encoding are copied at once)."""
        return False

    def _emit_blocks(self, blocks: Sequence[Block], loops: Mapping[int, LoopPlan], *, record: bool) -> None:
        """Each block's budget charge and instructions, or its versioned loop (``loops``, by first
        slot): the compile loop. An instruction's code is the code of its encoding met before,
        or a copy of its class's stencil, patched, where there is one; else (and for the first of
        a class, which learns it) its emitter's.

        With ``record``, the pcs map to this copy: a block's first slot to where the block starts
        (unless it was placed before: a loop's range check), the others to their own code."""
        if not blocks:
            return
        program, targets, retarget = self.flow.program, self.flow.targets, self.retarget
        slots, infos, words = program.slots, program.infos, program.words
        hot, fixups, pc_off = self.hot, self.fixups, self.pc_off
        classes, stencils, emitters = self._classes, self._stencils, self._emitters
        code_by_word, branch_by_word = self._code_by_word, self._branch_by_word
        block_entry, learn, pc_base = self.emit_block_entry, self._learn, _PC_BASE
        local = self._local | self.unchecked | retarget.keys() if self.unchecked or retarget else self._local
        offsets: list[int] | dict[int, int] = pc_off if record else {}  # a copy that is not recorded
        # Runs of whole blocks whose every slot is known by encoding (none local, no loop) are
        # copied with one join, their offsets summed up in C: when block entries emit nothing.
        lo, hi = blocks[0].start, blocks[-1].end
        runs = record and not retarget and self.quiet_block_entry()
        if runs:
            known: list[bytes | None] = [*map(code_by_word.get, words[lo:hi]), None]  # None ends each run
            for pc in itertools.chain(local, loops):
                if lo <= pc < hi:
                    known[pc - lo] = None
            starts = [b.start for b in blocks]
        nblocks, index = len(blocks), 0
        while index < nblocks:
            block = blocks[index]
            first = block.start
            if runs and known[first - lo] is not None:
                stop = known.index(None, first - lo) + lo
                after = nblocks if stop >= hi else bisect.bisect_right(starts, stop, index) - 1
                if after > index:
                    end = blocks[after - 1].end
                    run = cast("list[bytes]", known[first - lo:end - lo])
                    start = len(hot)
                    pc_off[first:end] = itertools.accumulate(map(len, run[:-1]), initial=start)
                    hot += b"".join(run)
                    fixups += [(pc_off[pc] + branch_by_word[words[pc]], pc_base | targets[pc])
                               for pc in itertools.compress(range(first, end),
                                                            map(branch_by_word.__contains__, words[first:end]))]
                    index = after
                    continue
            index += 1
            if record and pc_off[first] < 0:
                pc_off[first] = len(hot)
            if loops and (plan := loops.get(first)) is not None:
                self.emit_loop(plan)
                continue
            placed = pc_off[first]
            # A jump the loop copies send elsewhere is emitted: its stencil holds the usual target.
            redirected = block.last if retarget and block.last in retarget else -1
            block_entry(block)
            for pc in range(first, block.end):
                start = len(hot)
                word = words[pc]
                code = code_by_word.get(word)
                if code is not None and pc not in local and pc != redirected:
                    offsets[pc] = start
                    if word in branch_by_word:
                        fixups.append((start + branch_by_word[word], pc_base | targets[pc]))
                    hot += code
                    continue
                insn, info = slots[pc], infos[pc]
                if insn is None or info is None:
                    continue  # the second slot of an lddw
                offsets[pc] = start
                kind = info.kind
                classify = classes.get(kind)
                self.looked_around = False
                key = classify(pc, insn, info) if classify is not None and pc != redirected else None
                if key is None or (st := stencils.get(key, _UNSEEN)) is None:
                    emitters[kind](pc, insn, info)
                    continue
                if st is _UNSEEN:
                    learn(key, pc, insn, info)
                    if (st := stencils[key]) is None:
                        continue
                else:
                    hot += st.code
                    if st.imm_at >= 0:
                        st.imm_pack.pack_into(hot, start + st.imm_at, insn.imm & st.imm_mask)
                    if st.off_at >= 0:
                        st.off_pack.pack_into(hot, start + st.off_at, insn.off & st.off_mask)
                    if st.branch >= 0:
                        fixups.append((start + st.branch, pc_base | targets[pc]))
                if not self.looked_around and pc not in local:
                    if st.branch >= 0:
                        branch_by_word[word] = st.branch
                    code_by_word[word] = bytes(hot[start:])
            pc_off[first] = placed  # the first instruction's entry above is the block's

    def _learn(self, key: StencilKey, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Emit the first instruction of a class, then its probes (removed again), and keep the
        class's stencil, or None when the emissions do not make one."""
        try:
            imm, off = key_probes(key, insn, info)
        except ValueError as exc:
            raise JitError(f"{self.name}: {exc}", pc=pc) from None
        emit = self._emitters[info.kind]
        real = self._emission(emit, pc, insn, info, keep=True)
        stencil = None
        if real is not None:
            a, b = (self._emission(emit, pc, replace(insn, imm=imm_value, off=off_value), info, keep=False)
                    for imm_value, off_value in ((imm.a if imm else insn.imm, off.a if off else insn.off),
                                                 (imm.b if imm else insn.imm, off.b if off else insn.off)))
            if a is not None and b is not None:
                stencil = derive(real[0], a[0], b[0], (real[1], a[1], b[1]), imm, off, (insn.imm, insn.off))
        if len(self._stencils) >= _MAX_STENCILS:  # classes with exact values have no bound: start over
            self._stencils.clear()
        self._stencils[key] = stencil

    def _emission(self, emit: Callable[[int, Instruction, OpInfo], None], pc: int, insn: Instruction,
                  info: OpInfo, *, keep: bool) -> tuple[bytes, int] | None:
        """Run ``emit`` for one instruction: its hot bytes and the offset in them of its one branch
        field (-1 without one), or None when it wrote anything else (cold code, marks, other
        fixups). Unless ``keep``, everything it wrote is removed again."""
        hot, cold, fixups, named, marks = self.hot, self.cold, self.fixups, self.named_fixups, self.marks
        counts = (len(hot), len(cold), len(fixups), len(named), len(marks))
        emit(pc, insn, info)
        start, nfix = counts[0], counts[2]
        code = bytes(hot[start:])
        new = fixups[nfix:]
        result: tuple[bytes, int] | None = None
        if (counts[1], counts[3], counts[4]) == (len(cold), len(named), len(marks)):
            if not new:
                result = code, -1
            elif (len(new) == 1 and new[0][0] >> _TAG == Section.HOT and new[0][0] >= start
                  and new[0][1] == location(Section.PC, self.flow.targets.get(pc, -1))):
                result = code, new[0][0] - start
        if not keep:
            del hot[start:], cold[counts[1]:], fixups[nfix:], named[counts[3]:], marks[counts[4]:]
        return result

    def prepend(self, emit: Callable[[], None]) -> None:
        """Run ``emit`` for code that goes in front of all the hot code emitted so far: the entry
        points go first (they fall through to slot 0) but are emitted last, once the program has
        shown what they need to set up. The code is emitted after the blocks and ``link`` rotates
        it to the front, so nothing recorded so far needs moving."""
        self._head_at = len(self.hot)
        emit()

    def emit_block(self, block: Block, *, record: bool) -> None:
        """A block's budget charge and instructions (the compile loop's work, for one block that
        a target emits more than once); ``record``: this copy is the one the pcs map to (its
        first slot stays where the caller placed it)."""
        self._emit_blocks((block,), {}, record=record)

    def emit_loop(self, plan: LoopPlan) -> None:
        """A versioned loop (see jitbpf.jit.loops); the slot of its block start is already placed.
        Targets that do not version loops emit the block once."""
        self.emit_block(plan.block, record=True)

    def emit(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Emit one instruction (the dispatch ``compile`` does through its table)."""
        emitter = self._emitters.get(info.kind)
        if emitter is None:
            raise InternalError(f"{self.name}: no code for {info.kind}")
        emitter(pc, insn, info)

    @abc.abstractmethod
    def emit_alu(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Binary ALU operations, mov included."""

    @abc.abstractmethod
    def emit_jcond(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Conditional jumps."""

    @abc.abstractmethod
    def emit_load(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Loads (zero- and sign-extending)."""

    @abc.abstractmethod
    def emit_store(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Stores of a register or an immediate."""

    @abc.abstractmethod
    def emit_ja(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Unconditional jumps."""

    @abc.abstractmethod
    def emit_lddw(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """64-bit constants and map references."""

    @abc.abstractmethod
    def emit_neg(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Negation."""

    @abc.abstractmethod
    def emit_movsx(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Sign-extending moves."""

    @abc.abstractmethod
    def emit_endian(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Byte swaps (le/be/bswap)."""

    @abc.abstractmethod
    def emit_atomic(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Atomic read-modify-writes."""

    @abc.abstractmethod
    def emit_call(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Helper calls (by id, or callx)."""

    @abc.abstractmethod
    def emit_call_local(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """bpf-to-bpf calls."""

    @abc.abstractmethod
    def emit_exit(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Returns from a function or the program."""

    @abc.abstractmethod
    def emit_packet_load(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Legacy LD_ABS/LD_IND packet loads."""

    @abc.abstractmethod
    def emit_may_goto(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """may_goto: jump once the run's allowance is spent, else use one of it."""

    @abc.abstractmethod
    def emit_kfunc(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Kernel function calls."""

    # -- replayed emission ------------------------------------------------------------------------

    def replayed(self, key: Hashable, emit: Callable[[], None]) -> None:
        """Run ``emit``, or replay what it emitted the last time it ran with the same ``key`` in
        any program: the bytes of both sections, fixups, labels, marks and entries, moved to the
        current ends of the sections. For code that depends on ``key`` alone (entry points,
        runtime routines), whose emission would otherwise cost every compile the same time."""
        cache: dict[Hashable, _Recording] = self.asm.derived.setdefault(("replayed", type(self).__name__), {})
        hot0, cold0 = len(self.hot), len(self.cold)
        recording = cache.get(key)
        if recording is None:
            before = (len(self.fixups), len(self.named_fixups), len(self.marks), dict(self.labels), dict(self.entries))
            emit()
            cache[key] = _Recording.of(self, hot0, cold0, before)
            return
        recording.replay(self, hot0, cold0)

    # -- labels, fixups, linking -----------------------------------------------------------------

    def here(self, section: Section = Section.HOT) -> int:
        """Location of the next byte emitted into ``section``."""
        return location(section, len(self.hot if section is Section.HOT else self.cold))

    def define(self, name: str, section: Section = Section.COLD) -> None:
        """Bind the named label to the current end of ``section`` (and mark it in the listing)."""
        loc = self.here(section)
        self.labels[name] = loc
        self.marks.append((loc, name, -1))

    def mark(self, text: str, section: Section = Section.COLD) -> None:
        self.marks.append((self.here(section), text, -1))

    def refer(self, field_loc: int, target: int) -> None:
        """The rel32 field at ``field_loc`` must reach ``target`` (a location or PC location)."""
        self.fixups.append((field_loc, target))

    def refer_named(self, field_loc: int, name: str) -> None:
        self.named_fixups.append((field_loc, name))

    def section_base(self, section: int) -> int:
        return len(self.hot) if section == Section.COLD else 0

    def link(self) -> CompiledCode:
        hot, body = self.hot, self._head_at  # the blocks' code is hot[:body], the head the rest
        hot_len = len(hot)
        # The head goes first, padded in front so that the blocks start BLOCK_ALIGN-aligned (in
        # code whose base is page-aligned): the alignment a target gives loops in them holds.
        pad = -(hot_len - body) % BLOCK_ALIGN
        head = pad + hot_len - body  # where the blocks start
        code = bytearray(self.filler * pad) + hot[body:] + hot[:body] + self.cold
        pc_off = self.pc_off
        pc_tag = Section.PC

        def absolute(loc: int) -> int:
            section, offset = loc >> _TAG, loc & _OFFSET_MASK
            if section == pc_tag:
                target = pc_off[offset]
                if target < 0:
                    raise AssertionError(f"branch to pc {offset}, which has no code")
                return target + head
            if section == Section.COLD:
                return offset + head + body
            return offset + head if offset < body else offset + head - hot_len

        # The hook's own packer when no target replaced it: one call per branch fewer.
        patch = _REL32.pack_into if type(self).patch_branch is Target.patch_branch else self.patch_branch
        for field_loc, target in self.fixups:
            # Most fixups are branches in the blocks to an instruction: those skip absolute().
            pos = field_loc + head if field_loc < body else absolute(field_loc)
            if target >> _TAG == pc_tag and pc_off[target & _OFFSET_MASK] >= 0:
                patch(code, pos, pc_off[target & _OFFSET_MASK] + head - (pos + 4))
            else:
                patch(code, pos, absolute(target) - (pos + 4))
        for field_loc, name in self.named_fixups:
            pos = absolute(field_loc)
            patch(code, pos, absolute(self.labels[name]) - (pos + 4))
        entries = {name: absolute(off) for name, off in self.entries.items()}
        entries["cold"] = head + body  # the blocks end here (stubs and runtime routines follow)
        for name in self.exported:
            entries[name] = absolute(self.labels[name])
        return CompiledCode(bytes(code), entries, tuple(pc_off), head, tuple(self.marks), (head, body, hot_len))
