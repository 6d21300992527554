"""BPF iterators ("iter/task", "iter/bpf_map_elem", ...): reading an iterator's file runs its
program once per object and once more with NULL at the end, and what the program writes with
bpf_seq_write and bpf_seq_printf is what the read gives."""

from __future__ import annotations

import errno
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jitbpf.errors import ExecutionError
from jitbpf.helpers import Helper
from jitbpf.isa import MASK32, MASK64
from jitbpf.linux.helperids import HelperId
from jitbpf.linux.stdhelpers import format_bprintf

if TYPE_CHECKING:
    from jitbpf.linux.btfctx import AttachTarget, BtfTypes
    from jitbpf.memory import MemoryMap

# The kernel's bpf_seq_read buffer (8 pages): an object whose output does not fit in it alone
# ends the read with -E2BIG; smaller outputs are flushed and the object shown again, so that each
# object's output may use the whole buffer.
SEQ_BUFFER = 8 * 4096
ITERATOR_FLAVOURS = frozenset({"iter", "iter.s"})


@dataclass(frozen=True)
class IterRead:
    """What reading an iterator's file to its end gives."""

    output: bytes  # the bytes read: each run's bpf_seq_write / bpf_seq_printf output, in order
    # 0, or the negative errno the read failed with after ``output``: -EAGAIN when the program
    # returned 1 for an object (the kernel's "show it again", which a read that gets nothing
    # else fails with), -E2BIG when one run's output overflowed the buffer
    error: int
    shown: int  # objects the program was run on and accepted (the final NULL run not counted)


class SeqFile:
    """The seq_file of the iterator read each thread is doing on one VM: what its runs wrote."""

    def __init__(self) -> None:
        self.sessions = itertools.count(1)  # meta->session_id: one per read of the file
        self._local = threading.local()

    def begin(self) -> None:
        """A run begins: its output starts empty."""
        self._local.buf = bytearray()
        self._local.overflow = False

    def end(self) -> tuple[bytes, bool]:
        """A run ended: what it wrote, and whether it overflowed the buffer."""
        buf: bytearray | None = getattr(self._local, "buf", None)
        overflow: bool = getattr(self._local, "overflow", False)
        self._local.buf = None
        return bytes(buf or b""), overflow

    def write(self, data: bytes, helper: str) -> int:
        """Append ``data`` as the kernel's seq_write does: all of it, or nothing and the buffer
        marked full (0 or -EOVERFLOW)."""
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None:
            raise ExecutionError(f"{helper} called outside run_iter, which reads an iterator's output")
        if self._local.overflow or len(buf) + len(data) >= SEQ_BUFFER:
            self._local.overflow = True
            return -errno.EOVERFLOW & MASK64
        buf += data
        return 0


def iterator_helpers(memory: Callable[[], MemoryMap], seq: SeqFile) -> list[Helper]:
    """bpf_seq_write and bpf_seq_printf, writing to ``seq`` (the seq_file argument only names it)."""

    def seq_write(_m: int, data: int, size: int, _r4: int, _r5: int) -> int:
        size &= MASK32
        return seq.write(memory().read(data, size) if size else b"", "bpf_seq_write")

    def seq_printf(_m: int, fmt: int, fmt_size: int, data: int, data_len: int) -> int:
        text = format_bprintf(memory(), fmt, fmt_size, data, data_len)
        if text is None:
            return -errno.EINVAL & MASK64
        return seq.write(text.encode(), "bpf_seq_printf")

    return [
        Helper(HelperId.SEQ_WRITE, "bpf_seq_write", seq_write, ("btf_object", "mem", "size_or_zero")),
        Helper(HelperId.SEQ_PRINTF, "bpf_seq_printf", seq_printf,
               ("btf_object", "mem", "size", "mem_or_null", "size_or_zero")),
    ]


RunOne = Callable[[list[Any]], int]  # one run of the program on these context slots: r0


def read_iterator(attach: AttachTarget, types: BtfTypes | None, seq: SeqFile, objects: Iterable[Any],
                  run: RunOne) -> IterRead:
    """Read the iterator's file over ``objects``: each is the value of the context's slot after
    ``meta`` (or a tuple of the slots after it, for contexts of several: a map element's map, key
    and value), given as ``run_tracing`` takes pointer arguments (bytes, a dict by field name,
    a ctypes value, an address, None)."""
    slots = len(attach.args) - 1
    session = next(seq.sessions)
    fields = _meta_fields(types)
    seq_file = bytes(_struct_size(types, "seq_file")) if "seq" in fields else 0
    out = bytearray()
    shown = 0

    def show(values: list[Any]) -> tuple[int, bytes, bool]:
        meta = {k: v for k, v in (("seq", seq_file), ("session_id", session), ("seq_num", shown)) if k in fields}
        seq.begin()
        try:
            r0 = run([meta, *values])
        finally:
            written, overflow = seq.end()
        return r0, written, overflow

    for item in objects:
        values = list(item) if isinstance(item, tuple) else [item]
        if len(values) != slots:
            raise ValueError(f"{attach.section}: each object gives {slots} slot(s) after meta "
                             f"({', '.join(attach.names[1:])}), not {len(values)}")
        r0, written, overflow = show(values)
        if overflow:
            return IterRead(bytes(out), -errno.E2BIG, shown)
        if r0 & MASK32:
            return IterRead(bytes(out), -errno.EAGAIN, shown)
        out += written
        shown += 1
    _r0, written, overflow = show([None] * slots)  # the end: every object slot NULL
    if overflow:
        return IterRead(bytes(out), -errno.E2BIG, shown)
    return IterRead(bytes(out + written), 0, shown)


def _struct_size(types: BtfTypes | None, name: str) -> int:
    from jitbpf.linux.elf import BtfKind

    tid = types.lookup(BtfKind.STRUCT, name) if types is not None else None
    return types.btf.size_of(tid) if types is not None and tid is not None else 8


def _meta_fields(types: BtfTypes | None) -> frozenset[str]:
    """The fields of the target's struct bpf_iter_meta that a read fills in: seq (when it is a
    pointer, to a seq_file), session_id and seq_num."""
    from jitbpf.linux.elf import BtfKind

    tid = types.lookup(BtfKind.STRUCT, "bpf_iter_meta") if types is not None else None
    if types is None or tid is None:
        return frozenset()
    names = set(types.field_names(tid)) & {"seq", "session_id", "seq_num"}
    seq = types.member(tid, "seq")
    if seq is not None and types.btf.resolve(seq.type_id)[1].kind is not BtfKind.PTR:
        names.discard("seq")
    return frozenset(names)
