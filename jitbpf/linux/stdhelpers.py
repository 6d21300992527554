"""The standard Linux helpers by kernel id, over jitbpf's maps: Python functions plus C twins."""

from __future__ import annotations

import errno
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from jitbpf._native import native
from jitbpf.contract import CallbackKind
from jitbpf.errors import ExecutionError, MapError
from jitbpf.helpers import Helper
from jitbpf.isa import MASK32, MASK64
from jitbpf.linux.clock import Clock
from jitbpf.linux.dynptrs import dynptr_helpers
from jitbpf.linux.helperids import HelperId
from jitbpf.linux.host import Host, host_helpers
from jitbpf.linux.maps import (
    BPF_F_USER_STACK,
    CGROUP_STORAGE_TYPES,
    SOCKET_MAP_TYPES,
    TYPES_OF_HELPER,
    BpfMap,
    CgroupArray,
    CgroupStorage,
    DevMap,
    DevMapHash,
    MapType,
    RingBuf,
    SkStorage,
    SockHash,
    SockMap,
    StackTraceMap,
    copy_stack,
)
from jitbpf.linux.sockets import PACKET_SOCKET, SocketTable, find_socket, socket_helpers
from jitbpf.linux.timers import Timers

if TYPE_CHECKING:
    from jitbpf.memory import MemoryMap

__all__ = ["HelperHost", "HelperId", "Redirect", "StdContext", "bprintf_args", "format_bprintf", "format_printk",
           "printk_memory", "standard_helpers"]


XDP_ABORTED, XDP_REDIRECT = 0, 4  # XDP verdicts redirect_map returns
SK_DROP, SK_PASS = 0, 1  # socket verdicts of the sk/msg redirect helpers
BPF_F_INGRESS = 1  # redirect into the target socket's receive path
_XDP_ACTION_BITS = 0x3  # the low bits of bpf_redirect_map's flags: the action when the key is missing
BPF_F_BROADCAST, BPF_F_EXCLUDE_INGRESS = 0x8, 0x10  # device maps only: every device of the map


@dataclass(frozen=True)
class Redirect:
    """Where the latest redirect helper of a run sent its packet or message."""

    helper: str  # the helper's kernel name
    map: BpfMap  # the map it looked up
    key: int | bytes  # the index in that map (a SOCKHASH's: the key's bytes)
    # an interface index (DEVMAP, DEVMAP_HASH; with BPF_F_BROADCAST, the list of every one), a queue
    # size (CPUMAP) or the socket object (SOCKMAP, XSKMAP, ...)
    target: Any
    flags: int  # the helper's flags argument


class _ThreadState(threading.local):
    """One thread's redirect and context socket, with their defaults in each new thread (a
    missing attribute of a plain threading.local costs an exception on every read)."""

    def __init__(self) -> None:
        self.redirect: Redirect | None = None
        self.socket: object | None = PACKET_SOCKET


class StdContext:
    """The standard helpers' state for one VM: the trace log, and per-thread run effects.

    ``redirect`` is the calling thread's latest redirect (reset with ``clear_redirect``);
    ``socket`` is the socket of the thread's contexts (``__sk_buff->sk``, ``bpf_sock_ops->sk``,
    ...; see ``jitbpf.linux.sockets``), which ``bpf_sock_map_update`` inserts: set it before
    running. ``sockets`` holds the memory sockets are given to programs in.
    """

    def __init__(self, trace_stream: TextIO | None = None) -> None:
        self.trace_log: list[str] = []  # bpf_trace_printk output, in order
        self.trace_stream = trace_stream  # also written here (e.g. sys.stderr) when set
        self.host = Host()  # what the helpers that ask the host answer (jitbpf.linux.host)
        self.sockets = SocketTable()
        self.clock = Clock()  # what bpf_ktime_get_ns reads and timers expire by (jitbpf.linux.clock)
        self.timers = Timers(self.clock)  # the maps' bpf_timers (jitbpf.linux.timers)
        self._lock = threading.Lock()
        self._local = _ThreadState()
        # False while every thread's socket is still the default: the per-packet paths check
        # this plain attribute instead of the thread-local one (a fifth of a tc run).
        self.socket_set = False

    def emit(self, text: str) -> None:
        with self._lock:
            self.trace_log.append(text)
            if self.trace_stream is not None:
                self.trace_stream.write(text)

    @property
    def redirect(self) -> Redirect | None:
        return self._local.redirect

    @redirect.setter
    def redirect(self, value: Redirect | None) -> None:
        self._local.redirect = value

    def clear_redirect(self) -> None:
        self._local.redirect = None

    @property
    def socket(self) -> object | None:
        return self._local.socket if self.socket_set else PACKET_SOCKET

    @socket.setter
    def socket(self, sock: object | None) -> None:
        self.socket_set = True
        self._local.socket = sock


# ---------------------------------------------------------------------------------------------
# trace_printk formatting

_SPEC = re.compile(r"%([-+ #0]*)(\d*)(?:\.(\d+))?(hh|h|ll|l|z)?([diuxXcs%]|p(?:[iI][46]|[KxsSB])?)")
_MAX_PRINTK_ARGS = 3  # as the kernel
MAX_BPRINTF_VARARGS = 12  # arguments of bpf_snprintf and bpf_trace_vprintk (8 bytes each)
STRTOX_BUF = 64  # bytes bpf_strtol/strtoul look at (the kernel's copy buffer, with its terminator)


def format_printk(fmt: str, args: Sequence[int], read_string: Callable[[int], str],
                  max_args: int = _MAX_PRINTK_ARGS,
                  read_bytes: Callable[[int, int], bytes] | None = None) -> str | None:
    """``fmt`` with the kernel's printk conversions (%d %i %u %x %X %c %s %p %%, with l/ll/h/hh,
    flags, width and precision; %pI4 %pi4 %pI6 %pi6 for the address a pointer argument points
    to, read with ``read_bytes``) applied to ``args``; None if the format is invalid."""
    out: list[str] = []
    pos, used = 0, 0
    while True:
        pct = fmt.find("%", pos)
        if pct < 0:
            out.append(fmt[pos:])
            return "".join(out)
        out.append(fmt[pos:pct])
        m = _SPEC.match(fmt, pct)
        if m is None:
            return None
        pos = m.end()
        flags, width, precision, length, conv = m.groups()
        if conv == "%":
            out.append("%")
            continue
        if used >= min(len(args), max_args):
            return None
        raw = args[used] & MASK64
        used += 1
        bits = {"hh": 8, "h": 16, "l": 64, "ll": 64, "z": 64}.get(length or "", 32)
        spec = "%" + flags + width + (f".{precision}" if precision is not None else "")
        value: Any
        if conv in "di":
            value = raw & ((1 << bits) - 1)
            value -= (value >> (bits - 1)) << bits
            out.append((spec + "d") % value)
        elif conv in "uxX":
            out.append((spec + ("d" if conv == "u" else conv)) % (raw & ((1 << bits) - 1)))
        elif conv == "c":
            out.append((spec + "c") % chr(raw & 0xFF))
        elif conv == "s":
            out.append((spec + "s") % read_string(raw))
        elif conv[1:2] in ("i", "I"):
            if read_bytes is None:
                return None
            out.append((spec + "s") % _format_address(read_bytes(raw, 4 if conv[2] == "4" else 16), conv[1] == "I"))
        elif conv == "px":
            out.append((spec + "s") % f"{raw:016x}")
        else:
            out.append((spec + "s") % f"{raw:#x}")


def _format_address(raw: bytes, dotted: bool) -> str:
    """%pI4 (1.2.3.4), %pi4 (001.002.003.004), %pI6 (2001:0db8:...: eight groups, none left
    out) and %pi6 (32 hex digits), as the kernel's printk prints them."""
    if len(raw) == 4:
        return ".".join(str(b) if dotted else f"{b:03d}" for b in raw)
    groups = [raw[i : i + 2].hex() for i in range(0, 16, 2)]
    return ":".join(groups) if dotted else "".join(groups)


def printk_memory(mm: MemoryMap) -> tuple[Callable[[int], str], Callable[[int, int], bytes]]:
    """How printk conversions read what pointer arguments point to in ``mm``: as the kernel, an
    unreadable string prints empty and an unreadable address as zeros."""

    def read_string(addr: int) -> str:
        try:
            return mm.read_cstring(addr).decode("utf-8", "replace")
        except ExecutionError:
            return ""

    def read_bytes(addr: int, size: int) -> bytes:
        return mm.read(addr, size) if mm.find(addr, size) is not None else bytes(size)

    return read_string, read_bytes


def bprintf_args(mm: MemoryMap, data: int, data_len: int) -> list[int] | None:
    """The u64 arguments of bpf_snprintf, bpf_trace_vprintk and bpf_seq_printf (``data_len``
    bytes at ``data``); None when the length is not a multiple of 8 or too long (-EINVAL)."""
    data_len &= MASK32
    if data_len % 8 or data_len // 8 > MAX_BPRINTF_VARARGS:
        return None
    raw = mm.read(data, data_len) if data_len else b""
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, data_len, 8)]


def format_bprintf(mm: MemoryMap, fmt: int, fmt_size: int, data: int, data_len: int) -> str | None:
    """The text of bpf_trace_vprintk and bpf_seq_printf: the format of ``fmt_size`` bytes at
    ``fmt`` (ending with a NUL within them) applied to the u64 arguments at ``data``; None when
    the format or the arguments are invalid (-EINVAL)."""
    fmt_size &= MASK32
    raw = mm.read(fmt, fmt_size) if fmt_size else b""
    nul = raw.find(b"\0")
    args = bprintf_args(mm, data, data_len)
    if nul < 0 or args is None:
        return None
    read_string, read_bytes = printk_memory(mm)
    return format_printk(raw[:nul].decode("utf-8", "replace"), args, read_string, MAX_BPRINTF_VARARGS, read_bytes)


def parse_strtox(text: bytes, base: int) -> tuple[int, bool, int] | int:
    """The kernel's ``__bpf_strtoull``: (value, negative, bytes consumed) or a negative errno.

    Leading white space and one '-' are skipped; base 0 guesses 16 ("0x"), 8 ("0") or 10; base
    16 skips a "0x" prefix (even with no digit after it); a value that does not fit 64 bits is
    -ERANGE, no digit -EINVAL."""
    if not text or base not in (0, 8, 10, 16):
        return -errno.EINVAL
    text = text[: STRTOX_BUF - 1].split(b"\0", 1)[0]
    pos = len(text) - len(text.lstrip(b" \t\n\v\f\r"))
    negative = text[pos : pos + 1] == b"-"
    pos += negative
    if pos >= len(text):
        return -errno.EINVAL
    rest = text[pos:]
    hex_prefix = rest[:2].lower() == b"0x"
    if base == 0:  # "0x" means hexadecimal only when a hex digit follows
        base = 16 if hex_prefix and rest[2:3] and rest[2:3] in b"0123456789abcdefABCDEF" else (
            8 if rest[:1] == b"0" else 10)
    if base == 16 and hex_prefix:
        pos += 2
    value, digits = 0, 0
    for ch in text[pos:]:
        digit = int(chr(ch), 36) if chr(ch).isascii() and chr(ch).isalnum() else 99
        if digit >= base:
            break
        value = value * base + digit
        digits += 1
        if value >> 64:
            return -errno.ERANGE
    if digits == 0:
        return -errno.EINVAL
    return value, negative, pos + digits


# ---------------------------------------------------------------------------------------------
# The helper set


def engine_only(name: str) -> Callable[[int, int, int, int, int], int]:
    """The Python side of a helper the engines run themselves (it calls back into the program):
    reached only if an engine did not, which is an error of the caller's making."""

    def fail(*_args: int) -> int:
        raise ExecutionError(f"{name} calls back into the program: only the engines running it can call it")

    return fail


class HelperHost(Protocol):
    """What the standard helpers use of the VM that calls them, and nothing more: the memory of
    the running program, its maps (by handle, and all it reaches), its tail calls, and a place for
    their own state."""

    std: Any  # set to the helpers' StdContext

    @property
    def memory(self) -> MemoryMap: ...

    @property
    def maps(self) -> Mapping[int, BpfMap]: ...

    def request_tail_call(self, prog_array: BpfMap, index: int) -> int: ...

    def reachable_maps(self) -> list[Any]: ...  # its maps and the inner maps of its outer maps


def standard_helpers(vm: HelperHost, *, trace_stream: TextIO | None = None) -> list[Helper]:
    """The standard helpers for ``vm`` (which they read maps and memory from).

    Sets ``vm.std`` to their ``StdContext``. Helpers with a C twin carry its address in
    ``Helper.native`` (the JIT calls it without entering Python); their Python function checks
    the map and pointer arguments, then calls the same C code, so both engines agree. Pointers
    the C helpers take are trusted: the verifier proves them, as in the kernel.
    """
    nat = native()
    lib = nat.lib
    ctx = StdContext(trace_stream)
    vm.std = ctx
    keep = (nat.ffi, lib)

    def memory() -> MemoryMap:
        return vm.memory

    def map_at(addr: int, helper: str, *types: MapType) -> BpfMap:
        for m in vm.reachable_maps():
            if m.address == addr:
                if types and m.map_type not in types:
                    names = "/".join(t.name for t in types)
                    raise ExecutionError(f"{helper}: map {m.name!r} is a {m.map_type.name}, not {names}")
                return m  # type: ignore[no-any-return]
        raise ExecutionError(f"{helper}: {addr:#x} is not a map of this program", address=addr)

    def need(addr: int, size: int, helper: str, what: str, *, write: bool = False) -> None:
        if size == 0:
            return
        region = memory().find(addr, size)
        if region is None or (write and not region.writable):
            kind = "read-only" if region is not None else "out of bounds"
            raise ExecutionError(f"{helper}: {what} at {addr:#x} ({size} bytes) is {kind} memory", address=addr)

    def native_helper(hid: HelperId, name: str, cname: str, fn: Callable[[int, int, int, int, int], int],
                      args: tuple[str, ...] = (), ret: str = "scalar") -> Helper:
        return Helper(int(hid), name, fn, args, ret, nat.address(cname), keep)

    # -- maps ----------------------------------------------------------------------------------

    def map_lookup_elem(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_map_lookup_elem")
        need(r2, m.key_size, "bpf_map_lookup_elem", "key")
        if m.map_type in SOCKET_MAP_TYPES:  # the socket stored there, laid out for the program
            assert isinstance(m, SockMap | SockHash)
            key = memory().read(r2, m.key_size)
            sock = m.socket_for(key) if isinstance(m, SockHash) else m.get(int.from_bytes(key, "little"))
            return ctx.sockets.address(sock) if sock is not None else 0
        return int(lib.jb_direct_map_lookup_elem(r1, r2))

    def map_lookup_percpu_elem(r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_map_lookup_percpu_elem")
        need(r2, m.key_size, "bpf_map_lookup_percpu_elem", "key")
        return int(lib.jb_direct_map_lookup_percpu_elem(r1, r2, r3))

    def spin_lock(direct: Callable[[int], int], helper: str) -> Callable[[int, int, int, int, int], int]:
        def call(r1: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
            if r1 & 3:
                return -errno.EINVAL & MASK64
            need(r1, 4, helper, "lock", write=True)
            return int(direct(r1))  # a cffi call: the GIL is handed over while it waits

        return call

    def map_update_elem(r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_map_update_elem")
        need(r2, m.key_size, "bpf_map_update_elem", "key")
        if m.map_type in SOCKET_MAP_TYPES:  # a program stores a socket given to it
            found = find_socket(ctx.sockets, memory(), r3)
            if found is None:
                raise ExecutionError(f"bpf_map_update_elem: {r3:#x} is no socket given to the program")
            key = memory().read(r2, m.key_size)
            try:
                if isinstance(m, SockMap):
                    m.insert(int.from_bytes(key, "little"), found[0], r4)
                else:
                    assert isinstance(m, SockHash)
                    m.insert(key, found[0], r4)
            except MapError as exc:
                return -exc.errno & MASK64
            return 0
        need(r3, m.value_size, "bpf_map_update_elem", "value")
        return int(lib.jb_direct_map_update_elem(r1, r2, r3, r4))

    def map_delete_elem(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_map_delete_elem")
        need(r2, m.key_size, "bpf_map_delete_elem", "key")
        return int(lib.jb_direct_map_delete_elem(r1, r2))

    def map_push_elem(r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_map_push_elem")
        need(r2, m.value_size, "bpf_map_push_elem", "value")
        return int(lib.jb_direct_map_push_elem(r1, r2, r3))

    def map_pop_elem(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_map_pop_elem")
        need(r2, m.value_size, "bpf_map_pop_elem", "value", write=True)
        return int(lib.jb_direct_map_take_elem(r1, r2, 1))

    def map_peek_elem(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_map_peek_elem")
        need(r2, m.value_size, "bpf_map_peek_elem", "value", write=True)
        return int(lib.jb_direct_map_take_elem(r1, r2, 0))

    # -- events --------------------------------------------------------------------------------

    def perf_event_output(r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        map_at(r2, "bpf_perf_event_output", MapType.PERF_EVENT_ARRAY)
        need(r4, r5, "bpf_perf_event_output", "data")
        return int(lib.jb_direct_perf_event_output(r1, r2, r3, r4, r5))

    def ringbuf_output(r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        map_at(r1, "bpf_ringbuf_output", MapType.RINGBUF)
        need(r2, r3, "bpf_ringbuf_output", "data")
        return int(lib.jb_direct_ringbuf_output(r1, r2, r3, r4))

    def ringbuf_reserve(r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        map_at(r1, "bpf_ringbuf_reserve", MapType.RINGBUF)
        return int(lib.jb_helper_ringbuf_reserve(r1, r2, r3, 0, 0))

    def reserved_record(addr: int, helper: str) -> None:
        for m in vm.reachable_maps():
            if isinstance(m, RingBuf) and m.is_reserved(addr):
                return
        raise ExecutionError(f"{helper}: {addr:#x} is not a reserved ring buffer record", address=addr)

    def ringbuf_submit(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        reserved_record(r1, "bpf_ringbuf_submit")
        return int(lib.jb_helper_ringbuf_submit(r1, r2, 0, 0, 0))

    def ringbuf_discard(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        reserved_record(r1, "bpf_ringbuf_discard")
        return int(lib.jb_helper_ringbuf_discard(r1, r2, 0, 0, 0))

    def reserve_record(map_address: int, size: int) -> int:
        map_at(map_address, "bpf_ringbuf_reserve_dynptr", MapType.RINGBUF)
        return int(lib.jb_helper_ringbuf_reserve(map_address, size, 0, 0, 0))

    def commit_record(record: int, flags: int, discard: bool) -> None:
        reserved_record(record, f"bpf_ringbuf_{'discard' if discard else 'submit'}_dynptr")
        (lib.jb_helper_ringbuf_discard if discard else lib.jb_helper_ringbuf_submit)(record, flags, 0, 0, 0)

    def ringbuf_query(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        map_at(r1, "bpf_ringbuf_query", MapType.RINGBUF)
        return int(lib.jb_helper_ringbuf_query(r1, r2, 0, 0, 0))

    # -- memory, tracing, identity -------------------------------------------------------------

    def probe_read(r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        size = r2 & MASK32
        need(r1, size, "bpf_probe_read", "destination", write=True)
        mm = memory()
        if size and mm.find(r3, size) is None:
            mm.write(r1, bytes(size))  # the kernel zeroes the destination on a fault
            return -errno.EFAULT
        mm.write(r1, mm.read(r3, size))
        return 0

    def trace_printk(r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        if r2 == 0:
            return -errno.EINVAL
        mm = memory()
        raw = mm.read(r1, r2)
        nul = raw.find(b"\0")
        if nul < 0:
            return -errno.EINVAL
        read_string, read_bytes = printk_memory(mm)
        text = format_printk(raw[:nul].decode("utf-8", "replace"), (r3, r4, r5), read_string,
                             read_bytes=read_bytes)
        if text is None:
            return -errno.EINVAL
        ctx.emit(text)
        return len(text.encode())

    def get_current_comm(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        need(r1, r2, "bpf_get_current_comm", "buffer", write=True)
        return int(lib.jb_direct_get_current_comm(r1, r2))

    def no_args(cname: str) -> Callable[[int, int, int, int, int], int]:
        call = getattr(lib, cname)

        def fn(_r1: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
            return int(call(0, 0, 0, 0, 0))

        fn.__name__ = cname
        return fn

    # -- tail calls and redirects --------------------------------------------------------------

    def tail_call(_r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r2, "bpf_tail_call", MapType.PROG_ARRAY)
        return vm.request_tail_call(m, r3 & MASK32)

    def redirect_map(r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_redirect_map", MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP, MapType.XSKMAP)
        devices = m.map_type in (MapType.DEVMAP, MapType.DEVMAP_HASH)
        allowed = _XDP_ACTION_BITS | (BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS if devices else 0)
        if r3 & ~allowed:
            return XDP_ABORTED
        assert isinstance(m, DevMap | DevMapHash | SockMap)
        if r3 & BPF_F_BROADCAST:  # the key is not looked up: the target is every device of the map
            assert isinstance(m, DevMap | DevMapHash)
            # (Each read again: an entry another thread deletes meanwhile is left out, as the
            # kernel's walk of the map would.)
            found = (m.get(k) for k in (m.indices() if isinstance(m, DevMap) else list(m)))
            target: Any = [device for device in found if device is not None]
        else:
            target = m.get(r2 & MASK32)
            if target is None:
                return r3 & _XDP_ACTION_BITS  # the action the caller chose for a missing entry
        ctx.redirect = Redirect("bpf_redirect_map", m, r2 & MASK32, target, r3)
        return XDP_REDIRECT

    def under_cgroup(name: str, r_map: int, r_index: int, *, socket: bool) -> int:
        m = map_at(r_map, name, MapType.CGROUP_ARRAY)
        assert isinstance(m, CgroupArray)
        index = r_index & MASK32
        if socket and not ctx.host.packet_socket:
            return -errno.ENOENT & MASK64  # checked first, as the kernel
        if index >= m.max_entries:
            return -errno.E2BIG & MASK64
        cgroup_id = m.get(index)
        if cgroup_id is None:
            return -errno.EAGAIN & MASK64
        return ctx.host.under_cgroup(cgroup_id, socket=socket) & MASK64

    def current_task_under_cgroup(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
        return under_cgroup("bpf_current_task_under_cgroup", r1, r2, socket=False)

    def skb_under_cgroup(_r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        return under_cgroup("bpf_skb_under_cgroup", r2, r3, socket=True)

    def get_stackid(_r1: int, r2: int, r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r2, "bpf_get_stackid", MapType.STACK_TRACE)
        assert isinstance(m, StackTraceMap)
        host = ctx.host
        return m.record(host.user_stack if r3 & BPF_F_USER_STACK else host.kernel_stack, r3) & MASK64

    def stack_into(helper: str, buf: int, size: int, flags: int) -> int:
        size &= MASK32
        need(buf, size, helper, "buffer", write=True)
        host = ctx.host
        result, data = copy_stack(host.user_stack if flags & BPF_F_USER_STACK else host.kernel_stack, flags, size)
        if size:
            memory().write(buf, data)
        return result & MASK64

    def get_stack(_r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        return stack_into("bpf_get_stack", r2, r3, r4)

    def get_task_stack(_r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        # Any task's stack is the host's call stack: one task runs here (Host.task).
        return stack_into("bpf_get_task_stack", r2, r3, r4)

    # A task or inode argument is its address, which TaskStorage and InodeStorage key by; a
    # socket argument is a socket given to the program (its owner keys), or the context when the
    # context is a socket or a kernel object (cgroup/sock, tracing), which stands for the
    # context's socket (StdContext.socket) or, without one, for its own address.
    def storage_owner(mtype: MapType, addr: int) -> object | None:
        if mtype is not MapType.SK_STORAGE or addr == 0:
            return addr or None
        found = find_socket(ctx.sockets, memory(), addr)
        if found is not None:
            return found[0]
        sock = ctx.socket
        return addr if sock is None or sock is PACKET_SOCKET else sock

    def storage_get(kind: str, mtype: MapType) -> Callable[[int, int, int, int, int], int]:
        name = f"bpf_{kind}_storage_get"

        def get(r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
            m = map_at(r1, name, mtype)
            assert isinstance(m, SkStorage)
            owner = storage_owner(mtype, r2)
            if owner is None:
                return 0
            need(r3, m.value_size if r3 else 0, name, "value")
            return m.program_get(owner, r3, r4)

        return get

    def storage_delete(kind: str, mtype: MapType) -> Callable[[int, int, int, int, int], int]:
        name = f"bpf_{kind}_storage_delete"

        def delete(r1: int, r2: int, _r3: int, _r4: int, _r5: int) -> int:
            m = map_at(r1, name, mtype)
            assert isinstance(m, SkStorage)
            if r2 == 0:
                return -errno.EINVAL & MASK64
            try:
                del m[storage_owner(mtype, r2)]
            except MapError as exc:
                return -exc.errno & MASK64
            return 0

        return delete

    def get_local_storage(r1: int, _r2: int, _r3: int, _r4: int, _r5: int) -> int:
        m = map_at(r1, "bpf_get_local_storage", *CGROUP_STORAGE_TYPES)
        assert isinstance(m, CgroupStorage)
        host = ctx.host
        try:
            return m.program_get(m.key_bytes(host.attach_cgroup, host.attach_type))
        except MapError as exc:
            raise ExecutionError(f"bpf_get_local_storage: {exc.message}") from None

    def sock_redirect(name: str, r2: int, r3: int, r4: int, hashed: bool = False) -> int:
        """The socket redirects: a SOCKMAP's index ``r3``, or a SOCKHASH's key at ``r3``."""
        m = map_at(r2, name, MapType.SOCKHASH if hashed else MapType.SOCKMAP)
        key: int | bytes
        if hashed:
            assert isinstance(m, SockHash)
            need(r3, m.key_size, name, "key")
            key = memory().read(r3, m.key_size)
            sock = m.socket_for(key)
        else:
            assert isinstance(m, SockMap)
            key = r3 & MASK32
            sock = m.get(key)
        if r4 & ~BPF_F_INGRESS or sock is None:
            return SK_DROP
        ctx.redirect = Redirect(name, m, key, sock, r4)
        return SK_PASS

    def sk_redirect_map(_r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        return sock_redirect("bpf_sk_redirect_map", r2, r3, r4)

    def msg_redirect_map(_r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        return sock_redirect("bpf_msg_redirect_map", r2, r3, r4)

    def sk_redirect_hash(_r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        return sock_redirect("bpf_sk_redirect_hash", r2, r3, r4, hashed=True)

    def msg_redirect_hash(_r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
        return sock_redirect("bpf_msg_redirect_hash", r2, r3, r4, hashed=True)

    def sock_update(name: str, mtype: MapType) -> Callable[[int, int, int, int, int], int]:
        """bpf_sock_map_update / bpf_sock_hash_update: the context's socket in the map."""

        def fn(_r1: int, r2: int, r3: int, r4: int, _r5: int) -> int:
            m = map_at(r2, name, mtype)
            need(r3, m.key_size, name, "key")
            sock = ctx.socket
            if sock is None or sock is PACKET_SOCKET:
                return -errno.EOPNOTSUPP  # the context stands for no socket: set StdContext.socket
            key = memory().read(r3, m.key_size)
            try:
                if isinstance(m, SockMap):
                    m.insert(int.from_bytes(key, "little"), sock, r4)
                else:
                    assert isinstance(m, SockHash)
                    m.insert(key, sock, r4)
            except MapError as exc:
                return -exc.errno
            return 0

        fn.__name__ = name
        return fn

    # -- strings --------------------------------------------------------------------------------

    def strtox(signed: bool) -> Callable[[int, int, int, int, int], int]:
        name = "bpf_strtol" if signed else "bpf_strtoul"

        def fn(buf: int, buf_len: int, flags: int, res: int, _r5: int) -> int:
            buf_len &= MASK32
            need(res, 8, name, "result", write=True)
            if flags & ~0x1F or buf_len == 0:
                return -errno.EINVAL & MASK64
            mm = memory()
            parsed = parse_strtox(mm.read(buf, min(buf_len, STRTOX_BUF - 1)), flags & 0x1F)
            if isinstance(parsed, int):
                return parsed & MASK64
            value, negative, consumed = parsed
            if signed:
                if value > (1 << 63) - (0 if negative else 1):
                    return -errno.ERANGE & MASK64
                value = -value if negative else value
            elif negative:
                return -errno.EINVAL & MASK64
            mm.write(res, (value & MASK64).to_bytes(8, "little"))
            return consumed

        fn.__name__ = name
        return fn

    def snprintf(out: int, size: int, fmt: int, data: int, data_len: int) -> int:
        size &= MASK32
        need(out, size, "bpf_snprintf", "buffer", write=True)
        args = bprintf_args(memory(), data, data_len)
        try:
            spec = memory().read_cstring(fmt).decode("utf-8", "replace")
        except ExecutionError:
            return -errno.EINVAL & MASK64
        read_string, read_bytes = printk_memory(memory())
        text = format_printk(spec, args, read_string, MAX_BPRINTF_VARARGS, read_bytes) if args is not None else None
        if text is None:
            return -errno.EINVAL & MASK64
        raw = text.encode()
        if size:
            kept = raw[: size - 1]
            memory().write(out, kept + b"\0")
        return len(raw) + 1

    def strncmp(s1: int, size: int, s2: int, _r4: int, _r5: int) -> int:
        # The kernel's strncmp: the first differing byte decides, -1 or 1; a NUL in both ends it.
        size &= MASK32
        mm = memory()
        left = mm.read(s1, size)
        right = mm.read_cstring(s2) + b"\0"
        for a, b in zip(left, right, strict=False):  # right's NUL ends the loop at the latest
            if a != b:
                return 1 if a > b else MASK64
            if not a:
                break
        return 0

    def trace_vprintk(fmt: int, fmt_size: int, data: int, data_len: int, _r5: int) -> int:
        text = format_bprintf(memory(), fmt, fmt_size, data, data_len)
        if text is None:
            return -errno.EINVAL & MASK64
        ctx.emit(text)
        return len(text.encode())

    h = HelperId
    probe_args = ("uninit_mem", "size_or_zero", "anything")
    # These helpers never read their ctx argument, so it is "ignored": programs in the raw-memory
    # mode (r1 = plain memory, no context type) may call them too, and their C twins need not
    # distrust it.
    ctx_arg = "ignored"
    own = [
        native_helper(h.MAP_LOOKUP_ELEM, "bpf_map_lookup_elem", "jb_helper_map_lookup_elem", map_lookup_elem,
                      ("map", "key"), "map_value_or_null"),
        Helper(h.MAP_LOOKUP_PERCPU_ELEM, "bpf_map_lookup_percpu_elem", map_lookup_percpu_elem,
               ("map", "key", "scalar"), "map_value_or_null", nat.address("jb_helper_map_lookup_percpu_elem"), keep,
               map_types=(MapType.PERCPU_ARRAY, MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH)),
        native_helper(h.MAP_UPDATE_ELEM, "bpf_map_update_elem", "jb_helper_map_update_elem", map_update_elem,
                      ("map", "key", "value", "scalar")),
        native_helper(h.MAP_DELETE_ELEM, "bpf_map_delete_elem", "jb_helper_map_delete_elem", map_delete_elem,
                      ("map", "key")),
        Helper(h.PROBE_READ, "bpf_probe_read", probe_read, probe_args),
        native_helper(h.KTIME_GET_NS, "bpf_ktime_get_ns", "jb_helper_ktime_get_ns", no_args("jb_helper_ktime_get_ns")),
        Helper(h.TRACE_PRINTK, "bpf_trace_printk", trace_printk, ("mem", "size", "anything", "anything", "anything")),
        native_helper(h.GET_PRANDOM_U32, "bpf_get_prandom_u32", "jb_helper_get_prandom_u32",
                      no_args("jb_helper_get_prandom_u32")),
        native_helper(h.GET_SMP_PROCESSOR_ID, "bpf_get_smp_processor_id", "jb_helper_get_smp_processor_id",
                      no_args("jb_helper_get_smp_processor_id")),
        Helper(h.TAIL_CALL, "bpf_tail_call", tail_call, (ctx_arg, "map", "scalar")),
        native_helper(h.GET_CURRENT_PID_TGID, "bpf_get_current_pid_tgid", "jb_helper_get_current_pid_tgid",
                      no_args("jb_helper_get_current_pid_tgid")),
        native_helper(h.GET_CURRENT_UID_GID, "bpf_get_current_uid_gid", "jb_helper_get_current_uid_gid",
                      no_args("jb_helper_get_current_uid_gid")),
        native_helper(h.GET_CURRENT_COMM, "bpf_get_current_comm", "jb_helper_get_current_comm", get_current_comm,
                      ("uninit_mem", "size")),
        native_helper(h.PERF_EVENT_OUTPUT, "bpf_perf_event_output", "jb_helper_perf_event_output",
                      perf_event_output, (ctx_arg, "map", "scalar", "mem", "size_or_zero")),
        Helper(h.REDIRECT_MAP, "bpf_redirect_map", redirect_map, ("map", "scalar", "scalar")),
        Helper(h.SK_REDIRECT_MAP, "bpf_sk_redirect_map", sk_redirect_map, (ctx_arg, "map", "scalar", "scalar")),
        Helper(h.SOCK_MAP_UPDATE, "bpf_sock_map_update", sock_update("bpf_sock_map_update", MapType.SOCKMAP),
               (ctx_arg, "map", "key", "scalar")),
        Helper(h.SOCK_HASH_UPDATE, "bpf_sock_hash_update", sock_update("bpf_sock_hash_update", MapType.SOCKHASH),
               (ctx_arg, "map", "key", "scalar")),
        Helper(h.MSG_REDIRECT_MAP, "bpf_msg_redirect_map", msg_redirect_map, (ctx_arg, "map", "scalar", "scalar")),
        Helper(h.SK_REDIRECT_HASH, "bpf_sk_redirect_hash", sk_redirect_hash, (ctx_arg, "map", "key", "scalar")),
        Helper(h.MSG_REDIRECT_HASH, "bpf_msg_redirect_hash", msg_redirect_hash, (ctx_arg, "map", "key", "scalar")),
        native_helper(h.MAP_PUSH_ELEM, "bpf_map_push_elem", "jb_helper_map_push_elem", map_push_elem,
                      ("map", "value", "scalar")),
        # pop/peek write the element into their buffer: to the verifier it is filled, not read.
        native_helper(h.MAP_POP_ELEM, "bpf_map_pop_elem", "jb_helper_map_pop_elem", map_pop_elem,
                      ("map", "uninit_value")),
        native_helper(h.MAP_PEEK_ELEM, "bpf_map_peek_elem", "jb_helper_map_peek_elem", map_peek_elem,
                      ("map", "uninit_value")),
        Helper(h.PROBE_READ_USER, "bpf_probe_read_user", probe_read, probe_args),
        Helper(h.PROBE_READ_KERNEL, "bpf_probe_read_kernel", probe_read, probe_args),
        native_helper(h.JIFFIES64, "bpf_jiffies64", "jb_helper_jiffies64", no_args("jb_helper_jiffies64")),
        native_helper(h.KTIME_GET_BOOT_NS, "bpf_ktime_get_boot_ns", "jb_helper_ktime_get_boot_ns",
                      no_args("jb_helper_ktime_get_boot_ns")),
        native_helper(h.KTIME_GET_TAI_NS, "bpf_ktime_get_tai_ns", "jb_helper_ktime_get_tai_ns",
                      no_args("jb_helper_ktime_get_tai_ns")),
        native_helper(h.SPIN_LOCK, "bpf_spin_lock", "jb_helper_spin_lock",
                      spin_lock(lib.jb_direct_spin_lock, "bpf_spin_lock"), ("spin_lock",), "void"),
        native_helper(h.SPIN_UNLOCK, "bpf_spin_unlock", "jb_helper_spin_unlock",
                      spin_lock(lib.jb_direct_spin_unlock, "bpf_spin_unlock"), ("spin_unlock",), "void"),
        native_helper(h.KTIME_GET_COARSE_NS, "bpf_ktime_get_coarse_ns", "jb_helper_ktime_get_coarse_ns",
                      no_args("jb_helper_ktime_get_coarse_ns")),
        native_helper(h.RINGBUF_OUTPUT, "bpf_ringbuf_output", "jb_helper_ringbuf_output", ringbuf_output,
                      ("map", "mem", "size_or_zero", "scalar")),
        native_helper(h.RINGBUF_RESERVE, "bpf_ringbuf_reserve", "jb_helper_ringbuf_reserve", ringbuf_reserve,
                      ("map", "alloc_size", "scalar"), "acquired_mem_or_null"),
        native_helper(h.RINGBUF_SUBMIT, "bpf_ringbuf_submit", "jb_helper_ringbuf_submit", ringbuf_submit,
                      ("released", "scalar"), "void"),
        native_helper(h.RINGBUF_DISCARD, "bpf_ringbuf_discard", "jb_helper_ringbuf_discard", ringbuf_discard,
                      ("released", "scalar"), "void"),
        native_helper(h.RINGBUF_QUERY, "bpf_ringbuf_query", "jb_helper_ringbuf_query", ringbuf_query,
                      ("map", "scalar")),
        Helper(h.CURRENT_TASK_UNDER_CGROUP, "bpf_current_task_under_cgroup", current_task_under_cgroup,
               ("map", "scalar")),
        Helper(h.SKB_UNDER_CGROUP, "bpf_skb_under_cgroup", skb_under_cgroup, (ctx_arg, "map", "scalar")),
        Helper(h.GET_STACKID, "bpf_get_stackid", get_stackid, (ctx_arg, "map", "scalar")),
        Helper(h.GET_STACK, "bpf_get_stack", get_stack, (ctx_arg, "uninit_mem", "size_or_zero", "scalar"),
               "length_or_errno"),
        Helper(h.GET_TASK_STACK, "bpf_get_task_stack", get_task_stack,
               ("anything", "uninit_mem", "size_or_zero", "scalar"), "length_or_errno"),
        *(Helper(get_id, f"bpf_{kind}_storage_get", storage_get(kind, mtype), ("map", owner, "value_or_null", "scalar"),
                 "map_value_or_null")
          for kind, mtype, get_id, owner in (
              ("sk", MapType.SK_STORAGE, h.SK_STORAGE_GET, "btf_sock_common_or_null"),
              ("inode", MapType.INODE_STORAGE, h.INODE_STORAGE_GET, "anything"),
              ("task", MapType.TASK_STORAGE, h.TASK_STORAGE_GET, "anything"))),
        *(Helper(delete_id, f"bpf_{kind}_storage_delete", storage_delete(kind, mtype), ("map", owner))
          for kind, mtype, delete_id, owner in (
              ("sk", MapType.SK_STORAGE, h.SK_STORAGE_DELETE, "btf_sock_common_or_null"),
              ("inode", MapType.INODE_STORAGE, h.INODE_STORAGE_DELETE, "anything"),
              ("task", MapType.TASK_STORAGE, h.TASK_STORAGE_DELETE, "anything"))),
        Helper(h.GET_LOCAL_STORAGE, "bpf_get_local_storage", get_local_storage, ("map", "zero"), "map_value",
               map_types=tuple(CGROUP_STORAGE_TYPES)),
        Helper(h.STRTOL, "bpf_strtol", strtox(True), ("mem", "size", "scalar", "uninit_long")),
        Helper(h.STRTOUL, "bpf_strtoul", strtox(False), ("mem", "size", "scalar", "uninit_long")),
        Helper(h.SNPRINTF, "bpf_snprintf", snprintf,
               ("uninit_mem", "size_or_zero", "anything", "mem_or_null", "size_or_zero")),
        # The kernel wants s2 a constant string of a read-only map; here any readable string.
        Helper(h.STRNCMP, "bpf_strncmp", strncmp, ("mem", "size", "anything")),
        Helper(h.TRACE_VPRINTK, "bpf_trace_vprintk", trace_vprintk, ("mem", "size", "mem_or_null", "size_or_zero")),
        # The engines run these three: they enter the callback as a local call (see contract.CallbackKind).
        Helper(h.FOR_EACH_MAP_ELEM, "bpf_for_each_map_elem", engine_only("bpf_for_each_map_elem"),
               ("map", "callback", "stack_or_null", "scalar"), callback=CallbackKind.FOR_EACH),
        Helper(h.LOOP, "bpf_loop", engine_only("bpf_loop"), ("scalar", "callback", "stack_or_null", "scalar"),
               callback=CallbackKind.LOOP),
        Helper(h.USER_RINGBUF_DRAIN, "bpf_user_ringbuf_drain", engine_only("bpf_user_ringbuf_drain"),
               ("map", "callback", "stack_or_null", "scalar"), callback=CallbackKind.USER_RINGBUF),
        *dynptr_helpers(memory, reserve_record, commit_record),
    ]
    # The kernel's helper-to-map compatibility, declared where the helper does not narrow it.
    own = [replace(x, map_types=tuple(sorted(TYPES_OF_HELPER[x.id]))) if x.id in TYPES_OF_HELPER else x
           for x in own]
    own += socket_helpers(memory, lambda: ctx.sockets, lambda: ctx.host)
    own += ctx.timers.helpers()
    defined = {x.id for x in own}  # the host answers the rest
    return own + [x for x in host_helpers(memory, lambda: ctx.host) if x.id not in defined]
