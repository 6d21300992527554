"""The architecture-independent half of the JIT: walks the blocks of a program, hands each
instruction to the target's emitter, keeps labels and branch fixups, links, and lists the code."""

from __future__ import annotations

import abc
import enum
import struct
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from jitbpf.cfg import Block, ControlFlow
from jitbpf.isa import Instruction, Kind, OpInfo
from jitbpf.jit.encoding import Assembler
from jitbpf.jit.loops import LoopPlan, plan_loops

_REL32 = struct.Struct("<i")
# Kinds whose code may depend only on the instruction and on whether its access is proven (not
# on its pc): candidates for the compile loop's memo.
_LOCAL = frozenset({Kind.ALU, Kind.NEG, Kind.MOVSX, Kind.END, Kind.BSWAP, Kind.LDX, Kind.LDXSX, Kind.ST, Kind.STX})
_TAG = 40  # bits of a section offset; the section (or label kind) sits above them
_OFFSET_MASK = (1 << _TAG) - 1


class Section(enum.IntEnum):
    """Where a position or label lives; encoded above the offset bits of a location."""

    HOT = 0  # straight-line code of the blocks, in program order
    COLD = 1  # out-of-line stubs and the shared runtime routines, after the hot code
    PC = 2  # not a section: the code of the eBPF instruction at this slot (a jump target)


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
    pcs: tuple[tuple[int, int], ...]  # (offset, eBPF pc) for every instruction, ascending
    marks: tuple[tuple[int, str, int], ...]  # (offset, label, pc or -1) of prologue, stubs, routines


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
    probe_loads: frozenset[int] = frozenset()  # loads whose failure gives 0 (through BTF-typed pointers)


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
        return cls(bytes(t.hot[hot0:]), bytes(t.cold[cold0:]),
                   tuple((_moved(f, *back), _moved(g, *back)) for f, g in t.fixups[nfix:]),
                   tuple((_moved(f, *back), name) for f, name in t.named_fixups[nnamed:]),
                   tuple((_moved(loc, *back), text, pc) for loc, text, pc in t.marks[nmarks:]),
                   tuple((k, _moved(v, *back)) for k, v in t.labels.items() if labels.get(k) != v),
                   tuple((k, v - hot0) for k, v in t.entries.items() if entries.get(k) != v))

    def replay(self, t: Target, hot0: int, cold0: int) -> None:
        t.hot += self.hot
        t.cold += self.cold
        if hot0 == cold0 == 0:  # the first code of a program (its entry points): nothing moves
            t.fixups.extend(self.fixups)
            t.named_fixups.extend(self.named)
            t.marks.extend(self.marks)
            t.labels.update(self.labels)
            t.entries.update(self.entries)
            return
        t.fixups.extend((_moved(f, hot0, cold0), _moved(g, hot0, cold0)) for f, g in self.fixups)
        t.named_fixups.extend((_moved(f, hot0, cold0), name) for f, name in self.named)
        t.marks.extend((_moved(loc, hot0, cold0), text, pc) for loc, text, pc in self.marks)
        t.labels.update((k, _moved(v, hot0, cold0)) for k, v in self.labels)
        t.entries.update((k, v + hot0) for k, v in self.entries)


class Target(abc.ABC):
    """Drives code generation for one program. A subclass supplies the machine: the ``emit_*``
    methods for each instruction kind, block entry (budget), entry/runtime code and the branch
    encodings; everything else (iteration, labels, fixups, linking, listing) lives here."""

    name: ClassVar[str] = "generic"  # architecture name, for messages
    versions_loops: ClassVar[bool] = False  # emit_loop makes an unchecked copy behind a range check
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
        # Code of instructions seen before in this program: an instruction of a kind in _LOCAL
        # whose emission wrote nothing but hot bytes (no stub, branch or mark) is the same bytes
        # wherever it appears, so repeats are copied instead of emitted again.
        self._memo: dict[tuple[int, int, int, int, int, bool, bool], bytes] = {}
        self.unchecked: frozenset[int] = frozenset()  # accesses proven by the loop being emitted
        self.retarget: dict[int, int] = {}  # slot of a jump -> location it goes to instead (loop copies)
        # The emitter of each instruction kind, looked up once per instruction.
        self._emitters: dict[Kind, Callable[[int, Instruction, OpInfo], None]] = {
            Kind.ALU: self.emit_alu, Kind.JCOND: self.emit_jcond, Kind.LDX: self.emit_load,
            Kind.LDXSX: self.emit_load, Kind.ST: self.emit_store, Kind.STX: self.emit_store,
            Kind.JA: self.emit_ja, Kind.LDDW: self.emit_lddw, Kind.NEG: self.emit_neg,
            Kind.MOVSX: self.emit_movsx, Kind.END: self.emit_endian, Kind.BSWAP: self.emit_endian,
            Kind.ATOMIC: self.emit_atomic, Kind.CALL: self.emit_call, Kind.CALLX: self.emit_call,
            Kind.CALL_LOCAL: self.emit_call_local, Kind.EXIT: self.emit_exit,
            Kind.LD_ABS: self.emit_packet_load, Kind.LD_IND: self.emit_packet_load,
            Kind.CALL_KFUNC: self.emit_kfunc,
        }

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

    def compile(self) -> CompiledCode:
        flow = self.flow
        program = flow.program
        slots, infos = program.slots, program.infos
        block_at = flow.block_at
        pc_off = self.pc_off
        hot, cold, fixups, named, marks = self.hot, self.cold, self.fixups, self.named_fixups, self.marks
        emitters = self._emitters
        block_entry = self.emit_block_entry
        proven = self.options.proven
        memo = self._memo
        loops = plan_loops(flow, self.loop_reach) if self.versions_loops else {}
        after_loop = -1  # end of the versioned loop just emitted: its slots are done
        for pc, insn, info in zip(range(len(program)), slots, infos, strict=True):
            if insn is None or info is None or pc < after_loop:
                continue
            pc_off[pc] = len(hot)
            block = block_at.get(pc)
            if block is not None:
                plan = loops.get(pc)
                if plan is not None:
                    self.emit_loop(plan)
                    after_loop = block.end
                    continue
                block_entry(block)
            kind = info.kind
            if kind not in _LOCAL:
                emitters[kind](pc, insn, info)
                continue
            key = (insn.opcode, insn.dst, insn.src, insn.off, insn.imm, pc in proven, pc in self.options.probe_loads)
            code = memo.get(key)
            if code is not None:
                hot += code
                continue
            start, sizes = len(hot), (len(cold), len(fixups), len(named), len(marks))
            emitters[kind](pc, insn, info)
            if sizes == (len(cold), len(fixups), len(named), len(marks)):
                memo[key] = bytes(hot[start:])
        self.emit_runtime()
        self.prepend(self.emit_entries)
        return self.link()

    def prepend(self, emit: Callable[[], None]) -> None:
        """Run ``emit`` to put code in front of all the hot code emitted so far, moving what
        refers to that code: the entry points go first (they fall through to slot 0) but are
        emitted last, once the program has shown what they need to set up."""
        body, self.hot = self.hot, bytearray()
        counts = (len(self.fixups), len(self.named_fixups), len(self.marks))
        labels = dict(self.labels)
        emit()
        shift = len(self.hot)
        self.hot += body
        if not shift:
            return
        nfix, nnamed, nmarks = counts
        self.fixups[:nfix] = [(_moved(f, shift, 0), _moved(g, shift, 0)) for f, g in self.fixups[:nfix]]
        self.named_fixups[:nnamed] = [(_moved(f, shift, 0), name) for f, name in self.named_fixups[:nnamed]]
        self.marks[:nmarks] = [(_moved(loc, shift, 0), text, pc) for loc, text, pc in self.marks[:nmarks]]
        self.labels.update((k, _moved(v, shift, 0)) for k, v in labels.items())
        self.pc_off[:] = [off + shift if off >= 0 else off for off in self.pc_off]

    def emit_block(self, block: Block, *, record: bool) -> None:
        """A block's budget charge and instructions (the compile loop's work, for one block that
        a target emits more than once); ``record``: this copy is the one the pcs map to."""
        program = self.flow.program
        hot, cold, fixups, named, marks = self.hot, self.cold, self.fixups, self.named_fixups, self.marks
        proven, unchecked, memo = self.options.proven, self.unchecked, self._memo
        self.emit_block_entry(block)
        for pc in range(block.start, block.end):
            insn, info = program.slots[pc], program.infos[pc]
            if insn is None or info is None:
                continue
            if record and pc != block.start:
                self.pc_off[pc] = len(hot)
            if info.kind not in _LOCAL:
                self._emitters[info.kind](pc, insn, info)
                continue
            key = (insn.opcode, insn.dst, insn.src, insn.off, insn.imm, pc in proven or pc in unchecked,
                   pc in self.options.probe_loads)
            code = memo.get(key)
            if code is not None:
                hot += code
                continue
            start, sizes = len(hot), (len(cold), len(fixups), len(named), len(marks))
            self._emitters[info.kind](pc, insn, info)
            if sizes == (len(cold), len(fixups), len(named), len(marks)):
                memo[key] = bytes(hot[start:])

    def emit_loop(self, plan: LoopPlan) -> None:
        """A versioned loop (see jitbpf.jit.loops); the slot of its block start is already placed.
        Targets that do not version loops emit the block once."""
        self.emit_block(plan.block, record=True)

    def emit(self, pc: int, insn: Instruction, info: OpInfo) -> None:
        """Emit one instruction (the dispatch ``compile`` does through its table)."""
        emitter = self._emitters.get(info.kind)
        if emitter is None:
            raise NotImplementedError(f"{self.name}: no code for {info.kind}")
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
        hot_len = len(self.hot)
        code = self.hot + self.cold
        pc_off = self.pc_off

        def absolute(loc: int) -> int:
            section, offset = loc >> _TAG, loc & _OFFSET_MASK
            if section == Section.PC:
                target = pc_off[offset]
                if target < 0:
                    raise AssertionError(f"branch to pc {offset}, which has no code")
                return target
            return offset + hot_len if section == Section.COLD else offset

        fixups: Sequence[tuple[int, int]] = self.fixups
        for field_loc, target in fixups:
            pos = absolute(field_loc)
            self.patch_branch(code, pos, absolute(target) - (pos + 4))
        for field_loc, name in self.named_fixups:
            pos = absolute(field_loc)
            self.patch_branch(code, pos, absolute(self.labels[name]) - (pos + 4))
        pcs = tuple([(off, pc) for pc, off in enumerate(pc_off) if off >= 0])
        entries = dict(self.entries)
        entries["cold"] = hot_len  # the blocks end here (stubs and runtime routines follow)
        for name in self.exported:
            entries[name] = absolute(self.labels[name])
        marks = tuple(sorted((absolute(loc), text, pc) for loc, text, pc in self.marks))
        return CompiledCode(bytes(code), entries, pcs, marks)
