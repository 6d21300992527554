"""Dynptrs on the verifier's stack: the two slots of an initialised ``struct bpf_dynptr`` (the
kernel's STACK_DYNPTR), what a store over them destroys, and the slices that go with them."""

from __future__ import annotations

from jitbpf.verifier._state import MISC, Frame, State
from jitbpf.verifier._types import UNKNOWN_SCALAR, Reg, RegType

DYNPTR_SLOTS = 2  # a struct bpf_dynptr is 16 bytes: two stack slots
SLICE_TYPES = (RegType.PTR_TO_BUF, RegType.PTR_TO_BUF_OR_NULL)  # what bpf_dynptr_data's result is


def dynptr_slots(kind: int, dynptr_id: int, ref: int) -> tuple[Reg, Reg]:
    """What the first (lower) and the second slot of a new dynptr hold."""
    second = Reg(RegType.DYNPTR, id=dynptr_id, aux=kind, ref=ref)
    return second._replace(range=1), second


def dynptr_at(frame: Frame, idx: int) -> Reg | None:
    """The dynptr stack slot ``idx`` is part of (either slot), or None."""
    slot = frame.stack[idx]
    return slot if type(slot) is Reg and slot.type is RegType.DYNPTR else None


def initialised_at(frame: Frame, idx: int) -> Reg | None:
    """The dynptr whose first slot is ``idx``, or None when no whole dynptr starts there."""
    first = dynptr_at(frame, idx)
    if first is None or first.range != 1 or idx + 1 >= len(frame.stack):
        return None
    return first if frame.stack[idx + 1] == first._replace(range=0) else None


def first_dynptr_byte(frame: Frame, start: int, n: int) -> int | None:
    """The first byte of [start, start + n) (indices into the frame's 512) that a dynptr holds."""
    for idx in range(start // 8, (start + n + 7) // 8):
        if dynptr_at(frame, idx) is not None:
            return max(start, 8 * idx)
    return None


def referenced_among(frame: Frame, start: int, n: int) -> bool:
    """Whether a dynptr holding a reference (a ring buffer record's) has a byte in [start, start + n)."""
    return any((d := dynptr_at(frame, idx)) is not None and d.ref for idx in range(start // 8, (start + n + 7) // 8))


def destroy(st: State, frame: Frame, start: int, n: int) -> None:
    """Forget the unreferenced dynptrs with a byte in [start, start + n), both of their slots
    (never written from now on), and their slices (unknown numbers), as the kernel does when
    a store or a new dynptr overwrites one (``referenced_among`` is checked first)."""
    for idx in range(start // 8, (start + n + 7) // 8):
        found = dynptr_at(frame, idx)
        if found is None:
            continue
        first = idx if found.range == 1 else idx - 1
        frame.stack[first] = frame.stack[first + 1] = None
        drop_slices(st, found.id)


def drop_slices(st: State, dynptr_id: int) -> None:
    """The slices of one dynptr (``aux`` = -its id) become unknown numbers."""
    for f, i, reg in list(st.all_regs()):
        if reg.type in SLICE_TYPES and reg.aux == -dynptr_id:
            if i >= 0:
                f.regs[i] = UNKNOWN_SCALAR
            else:
                f.stack[-i - 1] = (MISC,) * 8
