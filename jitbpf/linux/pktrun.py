"""Program-type runs in native code: the run memory that C builds for both engines
(``jitbpf/_native/pkt.c``), and JIT runs of typed programs as one native call per packet or
per batch, through a per-thread binding of the program to its arena and run context."""

from __future__ import annotations

import array
import functools
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from jitbpf._ffi import ffi
from jitbpf._native import Native, native
from jitbpf.errors import BpfError, ExecutionError
from jitbpf.jit.runtime import ERROR_RESULT

if TYPE_CHECKING:
    from jitbpf.jit import JitProgram
    from jitbpf.linux.programs import ProgramState
    from jitbpf.sandbox import Pages
    from jitbpf.vm import VM

NO_FIELD = -1  # a field the context does not have


@dataclass(frozen=True)
class FrameLayout:
    """What the C frame builder needs to know of a program type (``struct jb_pkt_prog``)."""

    ctx_size: int  # bytes of the context, copied from the template at offset 0 of the arena
    frame_off: int  # where the frame (headroom, packet, tailroom) starts in the arena
    data: int  # context offsets of the packet pointers (NO_FIELD: not in the context)
    data_end: int
    data_meta: int
    ptr_size: int  # their width: 4, or 8 (sk_msg_md)
    length: int  # offset of __sk_buff.len (kept equal to data_end - data)
    protocol: int  # offsets of fields derived from each packet when asked (see jb_derive)
    wire_len: int
    pkt_type: int
    sk: int  # offset of __sk_buff.sk, and where in the arena the packet's own socket goes (JB_DERIVE_SOCKET)
    sock_off: int
    flow_keys: int  # offset of __sk_buff.flow_keys, and where the keys go (JB_DERIVE_FLOW_KEYS)
    keys_off: int
    headroom: int  # bytes before the packet that helpers may claim
    tailroom: int  # bytes after it
    xdp: bool  # bpf_redirect returns XDP verdicts (else tc's)

    def grow(self) -> int:
        """How much longer than the input a packet may come out."""
        return self.headroom + self.tailroom


def new_frame(layout: FrameLayout, arena: Pages) -> Any:
    """A ``struct jb_pkt_prog`` for one run over ``arena`` (native memory, outside the sandbox)."""
    nat = native()
    p = nat.ffi.new("struct jb_pkt_prog *")
    pkt = p.pkt
    pkt.off_data, pkt.off_data_end, pkt.off_data_meta = layout.data, layout.data_end, layout.data_meta
    pkt.off_len, pkt.ptr_size, pkt.ctx_size, pkt.xdp = layout.length, layout.ptr_size, layout.ctx_size, layout.xdp
    p.arena, p.arena_size, p.frame_off = arena.address, arena.size, layout.frame_off
    p.headroom, p.tailroom = layout.headroom, layout.tailroom
    p.off_protocol, p.off_wire_len, p.off_pkt_type = layout.protocol, layout.wire_len, layout.pkt_type
    p.off_sk, p.sock_off = layout.sk, layout.sock_off
    p.off_flow_keys, p.keys_off = layout.flow_keys, layout.keys_off
    pkt.off_protocol = layout.protocol  # helpers that change skb->protocol keep the field in step
    return p


def build_frame(frame: Any, template: bytes, packet: bytes, derive: int) -> None:
    """Lay out a run in the frame's arena: the context from ``template`` (with the fields
    ``derive`` names taken from the packet, and the packet pointers), the packet after the
    zeroed headroom."""
    nat = native()
    pin = nat.ffi.from_buffer(template)
    frame.tmpl, frame.derive = int(nat.ffi.cast("uintptr_t", pin)), derive
    failed = nat.lib.jb_pkt_frame(frame, packet, len(packet))
    frame.tmpl = 0  # the pin goes now
    if failed:
        raise ExecutionError(f"a packet of {len(packet)} bytes does not fit the run's memory")


@functools.cache
def _runner_lib() -> Native | None:
    """The native library with the packet runners told where the run context keeps its inputs
    (None when there is no native library: typed runs then take the Python path)."""
    from jitbpf.jit.program import runner_lib

    nat: Native | None = runner_lib()
    if nat is None:
        return None
    nat.lib.jb_pkt_init(ERROR_RESULT)
    return nat


class Binding:
    """One thread's native runner for one typed program: its frame (arena, entry, run context,
    region table). ``frame`` is None when the program needs the Python path (a Python helper, a
    tail call); then ``capacity`` is -1, so no packet takes the fast path.

    Bindings live in a ``threading.local`` that the VM replaces whenever its helpers, maps or
    code change, so a binding found there is always good for the VM as it is. The native
    single-run table knows each frame under its program state's token, which changes with it.
    """

    __slots__ = ("arena", "capacity", "frame", "jit", "table", "template_pin", "view")

    def __init__(self, jit: JitProgram | None) -> None:
        self.jit = jit
        self.frame: Any = None
        self.capacity = -1  # longest packet the arena takes
        self.arena: Pages | None = None
        self.table: Any = None  # the region table the frame points at (kept alive here)
        self.template_pin: Any = None  # the context of a batch's runs, pinned while it runs
        # The arena's bytes: a view of the binding's own, so that the memory stays while the
        # binding does, even once the thread's arena is replaced by a larger one.
        self.view = _NO_BYTES

    def use(self, template: bytes, derive: int) -> None:
        """Make ``template`` (with ``derive``) the context of the following batch runs."""
        nffi = native().ffi
        self.template_pin = nffi.from_buffer(template)
        self.frame.tmpl, self.frame.derive = int(nffi.cast("uintptr_t", self.template_pin)), derive


_NO_BYTES = memoryview(b"")


# fast.c's pkt_run: (token, template, derive, packet[, names]) -> (r0, packet after[, binding]) or None
SingleRun = Callable[..., tuple[Any, ...] | None]


def not_bound(_token: int, _template: bytes, _derive: int, _packet: Any, _names: tuple[Any, ...] = ()
              ) -> tuple[Any, ...] | None:
    """What ``ProgramState.pkt_run`` is before the first binding: no run (take the Python path)."""
    return None


def binding(vm: VM, state: ProgramState, size: int) -> Binding:
    """This thread's binding of ``vm``'s program (``state`` its program type's), made now if
    there is none yet or its arena is too small for packets of ``size`` bytes."""
    b: Binding | None = getattr(state.native, "binding", None)
    if b is None or (b.frame is not None and size > b.capacity):
        return bind(vm, state, size)
    return b


def register(state: ProgramState, b: Binding) -> None:
    """Put ``b`` (this thread's binding, with a frame) in the native single-run table under
    ``state.token``: again after another program took its entry."""
    nat = native()
    nat.lib.jb_pkt_bind(state.token, b.frame, nat.ffi.cast("void *", id(b)), _releases(b))  # id(): its address


def _releases(b: Binding) -> bool:
    """Whether single runs hand the GIL over: those of programs that may loop can be long;
    others are over sooner than the hand-over."""
    return b.jit is None or b.jit.counts_budget


def bind(vm: VM, state: ProgramState, size: int) -> Binding:
    """This thread's binding of ``vm``'s program (compiled here if need be), with an arena for
    packets of ``size`` bytes, kept in ``state.native.binding`` and in the native single-run
    table (under ``state.token``)."""
    nat = _runner_lib()
    if nat is not None:
        if not state.token:
            state.token = int(nat.lib.jb_pkt_token())
        nat.lib.jb_pkt_bind(state.token, nat.ffi.NULL, nat.ffi.NULL, False)  # the old frame goes now
    vm.jit_compile()
    jit = vm._jit
    found = None if nat is None or jit is None else jit.regions_binding()
    b = Binding(jit)
    state.native.binding = b
    if nat is None or jit is None or found is None:
        return b
    entry, rc, gate = found
    layout = state.layout
    arena, _ctx, frame_region = state.arena(layout.frame_off + layout.grow() + size)
    from jitbpf.jit.program import _region_key, _region_table

    key = _region_key([frame_region, *vm.map_regions()])
    b.table = _region_table(key)
    frame = new_frame(layout, arena)
    frame.entry = entry
    frame.jctx = int(ffi.cast("uintptr_t", rc.ctx))
    frame.gate, frame.gate_token = gate, jit.token
    frame.extra, frame.nextra = int(ffi.cast("uintptr_t", b.table)), len(key)
    b.arena, b.view = arena, arena.view[0:]
    b.capacity = arena.size - layout.frame_off - layout.grow()
    b.frame = frame
    register(state, b)
    state.pkt_run = nat.fast.pkt_run
    return b


def run_fast(state: ProgramState, template: bytes, packet: bytes, derive: int) -> tuple[int, bytes] | None:
    """One run through this thread's frame in the native single-run table: r0 (a failed run
    raises its error) and the packet after it (``packet`` itself when the run left it as it
    was); None when the thread has no frame fit for it there, or the program needs the Python
    path."""
    done: tuple[Any, ...] | None = state.pkt_run(state.token, template, derive, packet)
    if done is not None and len(done) > 2:  # stopped early: (r0, packet, the binding it ran on)
        return finish(done[2], ERROR_RESULT), done[1]
    return done  # type: ignore[return-value]  # (r0, packet after): no cast() call on this path


def finish(b: Binding, result: int) -> int:
    """What a run that returned ``ERROR_RESULT`` comes to (its error raised)."""
    assert b.jit is not None
    return b.jit.finish(result)


@dataclass
class Batch:
    """Packets to run, in one buffer: packet i is ``data[offsets[i] : offsets[i] + lens[i]]``."""

    data: Any  # a bytes-like object (bytes, bytearray, mmap, ...)
    offsets: Sequence[int]  # array("Q") is read in place
    lens: Sequence[int]
    longest: int = -1  # the longest packet's length, when known (-1: found from lens)
    checked: bool = False  # every packet known to lie within data (see check)

    def check(self) -> None:
        """ValueError unless there is a length per offset and every packet lies within ``data``:
        the native loops copy each packet from where the batch says it is."""
        if self.checked:
            return
        n = len(self.offsets)
        if len(self.lens) != n:
            raise ValueError(f"a batch of {n} offsets has {len(self.lens)} lengths")
        with memoryview(self.data) as view:
            size = view.nbytes
        nat = _runner_lib()
        if nat is not None and n:
            nffi = nat.ffi
            outside = int(nat.lib.jb_batch_outside(size, _uint64s(nffi, self.offsets, 0, n),
                                                   _uint64s(nffi, self.lens, 0, n), n))
        else:
            outside = next((i for i, (o, ln) in enumerate(zip(self.offsets, self.lens, strict=True))
                            if not 0 <= o <= size or not 0 <= ln <= size - o), -1)
        if outside >= 0:
            raise ValueError(f"packet {outside} of the batch ({self.lens[outside]} bytes at offset "
                             f"{self.offsets[outside]}) is not within its {size}-byte buffer")
        self.checked = True

    @classmethod
    def of(cls, packets: Sequence[bytes | bytearray | memoryview]) -> Batch:
        """Packets from a list, packed back to back (one copy)."""
        # (Sizes in bytes, as join packs them; checked before a run, as a caller's batch: a buffer
        # another thread resizes between the two may not match.)
        lens = array.array("Q", [len(p) if type(p) is bytes else memoryview(p).nbytes for p in packets])
        offsets = array.array("Q", itertools.accumulate(lens, initial=0))
        return cls(b"".join(packets), offsets[:-1], lens)  # (arrays: read in place by the native loops)


@dataclass
class BatchOutcome:
    """What a batch run produced: r0 of every packet, and where asked, the packets after each
    run and the errors of failed runs (by index; their r0 is ERROR_RESULT)."""

    results: array.array[int]
    packets: list[bytes] | None = None
    errors: dict[int, ExecutionError] | None = None


def in_place(packets: Batch | Sequence[bytes | bytearray | memoryview]) -> tuple[tuple[bytes, ...] | None, int]:
    """``packets`` as the native batch loop reads them where they are (a tuple of bytes
    objects), with the longest one's length; (None, -1) when they are not bytes objects."""
    if isinstance(packets, Batch) or _runner_lib() is None:
        return None, -1
    items = tuple(packets)  # a snapshot: the caller's list may change while the GIL is away
    longest = int(native().fast.pkt_longest(items))  # -1 unless all are bytes
    return (cast("tuple[bytes, ...]", items), longest) if longest >= 0 else (None, -1)


def run_items(state: ProgramState, b: Binding, template: bytes, derive: int, items: tuple[bytes, ...], lo: int,
              hi: int, outcome: BatchOutcome) -> array.array[int]:
    """Packets ``lo`` to ``hi`` of ``items`` (from ``in_place``) through ``b``, this thread's
    binding, read in place: one native call per stretch of runs that end normally; a run that
    fails is handled as ``run_slice`` handles it."""
    assert b.jit is not None and b.frame is not None
    results = array.array("Q", [0]) * (hi - lo)
    batch = native().fast.pkt_batch
    start = lo
    while start < hi:
        done = batch(state.token, template, derive, items, start, hi, memoryview(results)[start - lo:])
        if done is None:  # another program took the binding's native table entry
            register(state, b)
            continue
        if done < 0:
            raise ExecutionError("the VM is closed")  # a run of either engine, refused
        start = done
        if start < hi:
            _finish_input(b, results, start - lo, start, outcome)
            start += 1
    return results


def _finish_input(b: Binding, results: Any, at: int, index: int, outcome: BatchOutcome) -> None:
    """``results[at]``, the r0 of packet ``index`` whose run stopped early, as it comes to: its
    error raised noted with the index, or recorded in ``outcome.errors`` when that is a dict."""
    try:
        results[at] = finish(b, results[at])
    except ExecutionError as err:
        if outcome.errors is None:
            err.add_note(f"in packet {index} of the batch")
            raise
        outcome.errors[index] = err
    except BpfError as err:
        err.add_note(f"in packet {index} of the batch")
        raise


def run_slice(b: Binding, template: bytes, derive: int, batch: Batch, lo: int, hi: int, outcome: BatchOutcome,
              packets_out: list[bytes] | None) -> array.array[int]:
    """Packets ``lo`` to ``hi`` of ``batch`` through ``b`` (on this thread): one native call
    per stretch of runs that end normally. A run that fails raises its error noted with the
    packet's index, or is recorded in ``outcome.errors`` when that is a dict."""
    nat = native()
    nffi, lib = nat.ffi, nat.lib
    assert b.jit is not None and b.frame is not None
    n = hi - lo
    grow = b.frame.headroom + b.frame.tailroom
    offsets = _uint64s(nffi, batch.offsets, lo, hi)
    lens_list = batch.lens[lo:hi]
    lens = _uint64s(nffi, batch.lens, lo, hi)
    results = array.array("Q", [0]) * n
    res = nffi.cast("uint64_t *", nffi.from_buffer(results, require_writable=True))
    base = nffi.from_buffer(batch.data)
    out: Any = nffi.NULL
    out_lens: Any = nffi.NULL
    slots: list[int] = []
    if packets_out is not None:
        slots = list(itertools.accumulate((ln + grow for ln in lens_list), initial=0))
        out = nffi.new("uint8_t[]", max(1, slots[-1]))
        out_lens = nffi.new("uint64_t[]", max(1, n))
    start = 0
    b.use(template, derive)
    while start < n:
        done = int(lib.jb_pkt_batch(b.frame, base, offsets + start, lens + start, n - start, res + start,
                                    out + slots[start] if slots else out, out_lens + start if slots else out_lens))
        if done > n:  # another thread closed the program before this loop began
            raise ExecutionError("the VM is closed")  # as run_items says it
        start += done
        if start < n:
            _finish_input(b, results, start, lo + start, outcome)
            start += 1
    if packets_out is not None:
        buf = nffi.buffer(out)
        for i in range(n):
            packets_out[lo + i] = buf[slots[i] : slots[i] + out_lens[i]] if outcome.errors is None or (
                lo + i) not in outcome.errors else b""
    del base, res
    return results


def _uint64s(nffi: Any, values: Sequence[int], lo: int, hi: int) -> Any:
    """``values[lo:hi]`` as native ``uint64_t``: in place for an ``array("Q")`` (which cannot be
    resized while this holds it), else copied."""
    if isinstance(values, array.array) and values.typecode == "Q" and hi > lo:
        return nffi.from_buffer("uint64_t[]", memoryview(values)[lo:hi])
    return nffi.new("uint64_t[]", values[lo:hi])


class Workers:
    """The threads a VM splits its batches over, kept from one batch to the next: each thread's
    bindings (arena, run context, stack) are made on its first slice, not on every batch. A
    process forked from one with workers starts without them (the child has none of the
    parent's threads) and makes its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0  # its threads
        self._owner = 0  # the pid that made it
        self._local = threading.local()  # marks the pool's own threads

    def _executor(self, threads: int) -> ThreadPoolExecutor | None:
        """A pool of at least ``threads`` workers; None on one of them (a helper splitting a batch
        of the same VM from inside a slice would wait for itself)."""
        if getattr(self._local, "worker", False):
            return None
        with self._lock:
            pool = self._pool
            if pool is None or self._owner != os.getpid() or self._size < threads:
                if pool is not None and self._owner == os.getpid():
                    pool.shutdown(wait=False)
                pool = self._pool = ThreadPoolExecutor(threads, "jitbpf-batch", self._mark)
                self._size, self._owner = threads, os.getpid()
            return pool

    def _mark(self) -> None:
        self._local.worker = True

    def split(self, n: int, threads: int, run: Callable[[int, int], array.array[int]]) -> array.array[int]:
        """``run(lo, hi)`` over [0, n) in ``threads`` contiguous slices, one thread each (slice i
        takes CPU id i modulo the CPU count, so per-CPU map values do not collide), concatenated."""
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        threads = min(threads, max(n, 1))
        if threads == 1:
            return run(0, n)
        from jitbpf.linux.maps import num_cpus, set_current_cpu

        bounds = [n * i // threads for i in range(threads + 1)]

        def slice_of(i: int) -> array.array[int]:
            set_current_cpu(i % num_cpus())
            try:
                return run(bounds[i], bounds[i + 1])
            finally:
                set_current_cpu(None)

        pool = self._executor(threads)
        if pool is None:
            with ThreadPoolExecutor(threads) as nested:
                parts = list(nested.map(slice_of, range(threads)))
        else:
            parts = list(pool.map(slice_of, range(threads)))
        out = array.array("Q")
        for part in parts:
            out.extend(part)
        return out

    def close(self) -> None:
        """Let the workers end (after any slice in progress)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._owner == os.getpid():
            pool.shutdown(wait=False)
