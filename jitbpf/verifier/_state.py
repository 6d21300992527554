"""Abstract machine states: frames of registers and stack slots, and how two states compare and merge."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterator, Sequence

from jitbpf.isa import STACK_SIZE
from jitbpf.verifier import _scalar as sc
from jitbpf.verifier._types import NOT_INIT, Reg, RegType

INVALID = -1  # stack byte never written: reading it is an error
MISC = -2  # stack byte written with something unknown
SLOTS = STACK_SIZE // 8
ALL_SLOTS = (1 << SLOTS) - 1
NREGS = 11  # r0-r10
# The registers of each mask of r0-r10, lowest first: prune points walk masks of registers.
MASK_REGS: tuple[tuple[int, ...], ...] = tuple(
    tuple(r for r in range(NREGS) if mask >> r & 1) for mask in range(1 << NREGS))

# A stack slot (8 bytes at an 8-aligned offset) is None when no byte was written, a Reg when a
# whole register was spilled there by an aligned 8-byte store (or, for a scalar whose ``range``
# is 1, 2 or 4, by a store of that many bytes at the slot's start: the rest of the slot holds
# unknown bytes, or never-written ones when its ``aux`` is 1), or else a tuple of 8 byte states
# (INVALID, MISC, or the known byte value 0-255).
Slot = Reg | tuple[int, ...] | None
EMPTY_BYTES = (INVALID,) * 8
MISC_BYTES = (MISC,) * 8


def slot_bytes(slot: Slot) -> tuple[int, ...]:
    """The byte states of a slot (a spilled constant reads as its bytes, anything else as MISC)."""
    if slot is None:
        return EMPTY_BYTES
    if isinstance(slot, Reg):
        if slot.type is RegType.SCALAR:
            n = slot.range or 8  # a narrow spill: its low bytes, then unknown ones
            low = sc.project(slot.var, 8 * n) if n < 8 else slot.var
            rest = (INVALID if slot.aux else MISC,) * (8 - n)
            if low.mask == 0:
                return tuple(low.value.to_bytes(n, "little")) + rest
            return (MISC,) * n + rest
        return MISC_BYTES
    return slot


class Frame:
    """One function activation: registers r0-r10 and the 512-byte stack below its r10."""

    __slots__ = ("callsite", "entry", "regs", "round", "stack")

    def __init__(self, regs: list[Reg], stack: list[Slot], callsite: int, entry: int = 0, round_: int = 0) -> None:
        self.regs = regs  # r0..r10
        self.stack = stack  # SLOTS slots; slot i covers [r10 - 512 + 8i, r10 - 512 + 8i + 8)
        self.callsite = callsite  # slot of the call that created the frame (-1 for the main program)
        self.entry = entry  # first slot of the frame's function
        self.round = round_  # a callback's frame: which round of its helper's calls (0 for others)

    def copy(self) -> Frame:
        return Frame(self.regs.copy(), self.stack.copy(), self.callsite, self.entry, self.round)

    # -- stack ---------------------------------------------------------------------------------

    def write_bytes(self, start: int, data: Sequence[int]) -> None:
        """Overwrite stack bytes from ``start`` (an index into the 512 bytes) with byte states."""
        stack = self.stack
        i = 0
        n = len(data)
        while i < n:
            pos = start + i
            idx, within = divmod(pos, 8)
            take = min(8 - within, n - i)
            cur = list(slot_bytes(stack[idx]))
            cur[within : within + take] = data[i : i + take]
            t = tuple(cur)
            stack[idx] = None if t == EMPTY_BYTES else t
            i += take

    def read_bytes(self, start: int, n: int) -> list[int]:
        out: list[int] = []
        stack = self.stack
        i = 0
        while i < n:
            pos = start + i
            idx, within = divmod(pos, 8)
            take = min(8 - within, n - i)
            out.extend(slot_bytes(stack[idx])[within : within + take])
            i += take
        return out

    def smudge(self, start: int, n: int) -> None:
        """Bytes that may have been written with unknown data: spills there are lost, written
        bytes become MISC, never-written bytes stay unreadable (they may not have been written)."""
        cur = self.read_bytes(start, n)
        self.write_bytes(start, [MISC if b != INVALID else INVALID for b in cur])

    def fill(self, start: int, n: int) -> None:
        """Bytes certainly written with unknown data (by a helper)."""
        self.write_bytes(start, [MISC] * n)

    def pointer_spills(self, start: int, n: int) -> Iterator[int]:
        """Slots overlapping [start, start + n) that hold a spilled pointer."""
        for idx in range(max(start, 0) // 8, min((start + n + 7) // 8, SLOTS)):
            slot = self.stack[idx]
            if type(slot) is Reg and slot.type is not RegType.SCALAR:
                yield idx


# The instructions a path executed, newest first, shared between the paths of a branch: (slot,
# stack location it accessed at a fixed offset as ``frame << 16 | byte`` or -1, older entries).
History = tuple[int, int, "History"] | None


class State:
    """The abstract state of one path: the call stack of frames, and the path so far."""

    __slots__ = ("checkpoint", "depth", "frames", "hist", "loop", "precise", "refs")

    def __init__(self, frames: list[Frame], depth: int = 0, checkpoint: int = 0, hist: History = None,
                 loop: int = -1, refs: tuple[tuple[int, int], ...] = (), precise: int = 0) -> None:
        self.frames = frames  # outermost first
        self.depth = depth  # instructions executed along this path
        self.checkpoint = checkpoint  # ``depth`` when the path last remembered its state in a loop
        self.hist = hist  # what the path executed, for precision backtracking
        self.loop = loop  # slot of the last jump back to a loop's start on this path, or -1
        self.refs = refs  # references held: (id, slot of the call that acquired it), oldest first
        # Registers of the innermost frame whose sources were already backtracked and marked in
        # every visit of the path (since its latest visit): asking for them again finds nothing new.
        self.precise = precise

    def copy(self) -> State:
        return State([f.copy() for f in self.frames], self.depth, self.checkpoint, self.hist, self.loop, self.refs,
                     self.precise)

    def all_regs(self) -> Iterator[tuple[Frame, int, Reg]]:
        """Every register and spilled register of every frame, with where it lives (index < 0:
        stack slot -index - 1)."""
        for frame in self.frames:
            for i, r in enumerate(frame.regs):
                yield frame, i, r
            for i, s in enumerate(frame.stack):
                if type(s) is Reg:
                    yield frame, -i - 1, s

    def widen_range(self, rid: int, kind: RegType, at_least: int) -> None:
        """Every register and spill of type ``kind`` whose id is ``rid`` covers ``at_least``
        bytes from its offset (a packet bounds check proved them)."""
        for frame in self.frames:
            regs = frame.regs
            for i, r in enumerate(regs):
                if r.id == rid and r.type is kind and r.range < at_least:
                    regs[i] = Reg(kind, r.var, r.off, rid, at_least, r.aux, r.ref)
            stack = frame.stack
            for i in itertools.compress(range(SLOTS), stack):
                s = stack[i]
                if type(s) is Reg and s.id == rid and s.type is kind and s.range < at_least:
                    stack[i] = Reg(kind, s.var, s.off, rid, at_least, s.aux, s.ref)

    def replace_linked(self, rid: int, types: tuple[RegType, ...], fn: Callable[[Reg], Reg]) -> None:
        """Apply ``fn`` to every register and spill of one of ``types`` whose id is ``rid``."""
        for frame in self.frames:
            regs = frame.regs
            for i, r in enumerate(regs):
                if r.id == rid and r.type in types:
                    regs[i] = fn(r)
            stack = frame.stack
            for i in itertools.compress(range(SLOTS), stack):  # the slots written at all
                s = stack[i]
                if type(s) is Reg and s.id == rid and s.type in types:
                    stack[i] = fn(s)


LOCK_IDS = 1 << 40  # lock_id of the locks of values no lookup gave an id (one per map)


def lock_id(aux: int, value_id: int) -> int:
    """Which bpf_spin_lock a map value's pointer names: its value's id (each lookup gives one),
    or its map's for values of no lookup. A path holding a lock has the reference -1 - lock_id."""
    return value_id if value_id else LOCK_IDS + aux


def _locked_ids(state: State) -> list[int]:
    return [-ref - 1 for ref, _at in state.refs if ref < 0 and -ref - 1 < LOCK_IDS]


def shared_ids(state: State) -> frozenset[int]:
    """Ids held by at least two registers or spills (a held lock counts as one holder of its
    value's id): only those links carry information."""
    ids = [r.id for f in state.frames for r in f.regs if r.id]
    ids.extend(s.id for f in state.frames for s in filter(None, f.stack) if type(s) is Reg and s.id)
    if state.refs:
        ids.extend(_locked_ids(state))
    if len(ids) < 2:
        return frozenset()
    seen: set[int] = set()
    shared: set[int] = set()
    for i in ids:
        if i in seen:
            shared.add(i)
        seen.add(i)
    return frozenset(shared)


class _IdMap:
    """A consistent renaming of the old state's ids to the new state's (both ways one-to-one)."""

    __slots__ = ("back", "fwd", "shared")

    def __init__(self, shared: frozenset[int]) -> None:
        self.shared = shared
        self.fwd: dict[int, int] = {}
        self.back: dict[int, int] = {}

    def ok(self, old: int, new: int) -> bool:
        if old not in self.shared:
            return True
        if not new:
            return False
        got = self.fwd.get(old)
        if got is None:
            if new in self.back:
                return False
            self.fwd[old] = new
            self.back[new] = old
            return True
        return got == new


def reg_within(old: Reg, new: Reg, ids: _IdMap | None, precise: bool = True) -> bool:
    """Whether every concrete value ``new`` may hold is one ``old`` was verified with.

    An imprecise scalar (one whose value no check after ``old`` depended on) matches any scalar.
    """
    t = old.type
    if t is RegType.NOT_INIT:
        return True
    if old is new:
        return not old.id or ids is None or ids.ok(old.id, new.id)
    if new.type is not t:
        return False
    if t is RegType.SCALAR:
        # An imprecise scalar's links do not matter either (the kernel's regsafe): what a branch
        # on a linked copy teaches it counts only where some check depends on it, and then
        # backtracking marks it and its copies precise.
        return (old.range == new.range and old.aux == new.aux  # a spill as wide (0 for registers, full spills)
                and (not precise or (sc.within(new.var, old.var)
                                     and (not old.id or ids is None
                                          or (ids.ok(old.id, new.id)
                                              and (old.off == new.off or old.id not in ids.shared))))))
    if old.off != new.off or old.aux != new.aux or new.range < old.range or old.ref != new.ref:
        return False
    if not sc.within(new.var, old.var):
        return False
    if t is RegType.PTR_TO_PACKET or t is RegType.PTR_TO_PACKET_META:
        return old.id == new.id == 0 or ids is None or ids.ok(old.id, new.id)
    return not old.id or ids is None or ids.ok(old.id, new.id)


def _slot_within(old: Slot, new: Slot, ids: _IdMap | None, precise: bool) -> bool:
    if old is None:
        return True
    if type(old) is Reg:
        if type(new) is Reg:
            return reg_within(old, new, ids, precise)
        if old.type is not RegType.SCALAR or (precise and ids is not None and old.id in ids.shared):
            return False
        nb = slot_bytes(new)
        if INVALID in nb:
            return False
        if not precise or old.var == sc.UNKNOWN:
            return True
        if old.range:  # a narrow spill whose value mattered: only an equal one is known to fit
            return False
        return all(b >= 0 for b in nb) and sc.within(sc.const(int.from_bytes(bytes(nb), "little")), old.var)
    assert isinstance(old, tuple)
    if type(new) is Reg and new.type is not RegType.SCALAR:
        return all(b == INVALID for b in old)  # a pointer is not interchangeable with bytes
    nb = slot_bytes(new)
    for o, n in zip(old, nb, strict=True):
        if o == INVALID:
            continue
        if o == MISC or not precise:
            if n == INVALID:
                return False
        elif o != n:
            return False
    return True


def kinds_key(st: State, masks: Sequence[int] | None = None) -> tuple[tuple[int, ...], tuple[object, ...]]:
    """The registers ``masks`` names (per frame, a bit per register; by default the initialised
    ones) and their kinds, a pointer's with its offset and identity: ``state_within(old, ..., new)``
    holds only if ``new`` has the same kinds where ``old`` has initialised registers, so that a
    prune point compares these keys before the states."""
    chosen: list[int] = []
    key: list[object] = []
    append = key.append
    scalar, not_init = RegType.SCALAR, RegType.NOT_INIT
    for fi, f in enumerate(st.frames):
        regs = f.regs
        if masks is None:
            mask = 0
            for r, x in enumerate(regs):
                t = x.type
                if t is not_init:
                    continue
                mask |= 1 << r
                append(t if t is scalar else (t, x.off, x.aux, x.ref))
        else:
            mask = masks[fi]
            for r in MASK_REGS[mask]:
                x = regs[r]
                t = x.type
                append(t if t is scalar or t is not_init else (t, x.off, x.aux, x.ref))
        chosen.append(mask)
    return tuple(chosen), tuple(key)


def known_numbers(st: State) -> tuple[tuple[int, int], ...]:
    """The registers of the innermost frame that hold a known number, with it: a state within
    ``st`` exactly (``state_within`` without masks) holds the same numbers there."""
    scalar = RegType.SCALAR
    return tuple((r, x.var.value) for r, x in enumerate(st.frames[-1].regs) if x.type is scalar and not x.var.mask)


def state_within(old: State, shared: frozenset[int], new: State, reads: Sequence[int] | None = None,
                 precise: Sequence[int] | None = None, precise_slots: Sequence[int] | None = None) -> bool:
    """Whether ``new`` is covered by ``old``: same call stack, and each register and stack slot of
    ``new`` within the old one (with the same links between copies).

    The optional masks (per frame, a bit per register or stack slot) say what the continuations
    of ``old`` depended on: slots outside ``reads`` were never read, and scalars outside
    ``precise``/``precise_slots`` never decided anything, so only their kind is compared.
    Without them everything is compared exactly.
    """
    ofr, nfr = old.frames, new.frames
    if len(ofr) != len(nfr) or old.refs != new.refs:  # the same references held (by the same pointers)
        return False
    ids = _IdMap(shared) if shared else None
    if ids is not None:
        for held in _locked_ids(old):  # the same refs: the same lock, whose value is linked
            ids.ok(held, held)
    scalar, not_init = RegType.SCALAR, RegType.NOT_INIT
    # Registers first, innermost frame first: that is where states usually differ.
    for fi in range(len(ofr) - 1, -1, -1):
        of, nf = ofr[fi], nfr[fi]
        if of.callsite != nf.callsite or of.entry != nf.entry:
            return False
        oregs, nregs = of.regs, nf.regs
        if ids is None and oregs == nregs:
            continue
        pmask = -1 if precise is None else precise[fi]
        for r, (o, n) in enumerate(zip(oregs, nregs, strict=True)):
            if o is n:
                if ids is not None and o.id and not ids.ok(o.id, n.id):
                    return False
                continue
            t = o.type
            if t is not_init:
                continue
            if t is scalar and not o.id and n.type is scalar:
                # ``reg_within`` of two unlinked scalars, without the call (the common case).
                if o.range != n.range or o.aux != n.aux or (pmask >> r & 1 and not sc.within(n.var, o.var)):
                    return False
            elif not reg_within(o, n, ids, bool(pmask >> r & 1)):
                return False
    for fi, (of, nf) in enumerate(zip(ofr, nfr, strict=True)):
        ostack, nstack = of.stack, nf.stack
        if ids is None and ostack == nstack:
            continue
        read = -1 if reads is None else reads[fi]
        if not read:
            continue
        smask = -1 if precise_slots is None else precise_slots[fi]
        read &= ALL_SLOTS
        while read:
            low = read & -read
            i = low.bit_length() - 1
            read ^= low
            so, sn = ostack[i], nstack[i]
            if so is None or (so is sn and (type(so) is not Reg or not so.id)):
                continue
            if not _slot_within(so, sn, ids, bool(smask >> i & 1)):
                return False
    return True


# -- merging (widening at join points outside loops) ----------------------------------------------

def _join_reg(a: Reg, b: Reg) -> Reg | None:
    if a is b or a == b:
        return a
    if a.type is not b.type:
        return None
    if a.type is RegType.SCALAR:
        if a.range != b.range or a.aux != b.aux:
            return None  # spills of different widths: the slots merge as bytes
        return Reg(RegType.SCALAR, sc.join(a.var, b.var), range=a.range, aux=a.aux)
    if a.off != b.off or a.aux != b.aux or a.id != b.id or a.ref != b.ref:
        return None
    return a._replace(var=sc.join(a.var, b.var), range=min(a.range, b.range))


def _proofs_differ(a: Slot, b: Slot) -> bool:
    """Whether two packet pointers differ in the range a bounds check proved. Such states are
    not merged: the path without the proof usually holds what decides that the pointer is not
    used (a flag set beside the check, tested later), which a merge would lose."""
    return (type(a) is Reg and type(b) is Reg and a.range != b.range
            and a.type in (RegType.PTR_TO_PACKET, RegType.PTR_TO_PACKET_META))


def _spilled_pointer(s: Slot) -> bool:
    return type(s) is Reg and s.is_pointer


def _join_slot(a: Slot, b: Slot) -> Slot:
    if a is b or a == b:
        return a
    if type(a) is Reg and type(b) is Reg:
        r = _join_reg(a, b)
        if r is not None:
            return r
    if RegType.DYNPTR in (getattr(a, "type", None), getattr(b, "type", None)):
        return None  # a dynptr on one path only: no dynptr, and no data either
    ab, bb = slot_bytes(a), slot_bytes(b)
    out = tuple(x if x == y else INVALID if INVALID in (x, y) else MISC for x, y in zip(ab, bb, strict=True))
    return None if out == EMPTY_BYTES else out


def join_key(st: State, live: Sequence[int]) -> tuple[object, ...]:
    """What two states' live registers must have in common for ``join_states`` to merge them
    (their kinds, a pointer's offset and identity, a packet pointer's proven range): states
    whose keys differ never merge, so that a join point compares keys before trying."""
    key: list[object] = []
    for mask, f in zip(live, st.frames, strict=False):
        for r, x in enumerate(f.regs):
            if mask >> r & 1:
                if x.type is RegType.SCALAR:
                    key.append(RegType.SCALAR)
                elif x.type in (RegType.PTR_TO_PACKET, RegType.PTR_TO_PACKET_META):
                    key.append((x.type, x.off, x.aux, x.id, x.ref, x.range))
                else:
                    key.append((x.type, x.off, x.aux, x.id, x.ref))
        key.append(None)  # frames apart
    return tuple(key)


def join_states(a: State, b: State, live: Sequence[int]) -> State | None:
    """A state covering both ``a`` and ``b``, or None when they differ in a way this domain
    cannot merge without losing what later code needs (a live register of different types).

    ``live[i]`` is the bit mask of registers of frame i that may still be read.
    """
    if len(a.frames) != len(b.frames) or a.refs != b.refs:
        return None
    frames: list[Frame] = []
    for i, (fa, fb) in enumerate(zip(a.frames, b.frames, strict=True)):
        if fa.callsite != fb.callsite or fa.entry != fb.entry:
            return None
        regs: list[Reg] = []
        mask = live[i]
        for r, (x, y) in enumerate(zip(fa.regs, fb.regs, strict=True)):
            if not mask >> r & 1:
                regs.append(NOT_INIT)
                continue
            if x is y or x == y:  # the common case, and what _join_reg gives for it
                regs.append(x)
                continue
            j = _join_reg(x, y)
            if j is None or _proofs_differ(x, y):
                return None
            regs.append(j)
        # Most slots are the same object in both (states share what they did not change): only
        # the others are joined, and a failure found by the cheap checks first.
        stack = list(fa.stack)
        for k in itertools.compress(range(len(stack)), map(operator.ne, fa.stack, fb.stack)):
            sx, sy = stack[k], fb.stack[k]
            if _proofs_differ(sx, sy):
                return None
            js = _join_slot(sx, sy)
            if type(js) is not Reg and (_spilled_pointer(sx) or _spilled_pointer(sy)):
                return None  # a spilled pointer would be lost (read back as a number)
            stack[k] = js
        frames.append(Frame(regs, stack, fa.callsite, fa.entry, fa.round))
    return State(frames, max(a.depth, b.depth), a.checkpoint, a.hist, a.loop, a.refs)


def widen(old: State, new: State, live: Sequence[int]) -> State | None:
    """A state covering both, in which every scalar that differs between them is unknown: where a
    loop the kernel bounds at run time (may_goto, a callback's iterations) changes a number each
    time round, the next round then falls within it. None when they cannot be merged."""
    joined = join_states(old, new, live)
    if joined is None:
        return None
    unknown = Reg(RegType.SCALAR, sc.UNKNOWN)
    for fo, fj in zip(old.frames, joined.frames, strict=True):
        for i, (o, j) in enumerate(zip(fo.regs, fj.regs, strict=True)):
            if j.type is RegType.SCALAR and o != j:
                fj.regs[i] = unknown
        for i, (so, sj) in enumerate(zip(fo.stack, fj.stack, strict=True)):
            if type(sj) is Reg and sj.type is RegType.SCALAR and so != sj:
                fj.stack[i] = unknown
    return joined
