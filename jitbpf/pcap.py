"""Running a packet program over a pcap capture: verdict counts, a progress bar and a report with the maps."""

from __future__ import annotations

import array
import contextlib
import enum
import mmap
import os
import struct
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import dpkt

from jitbpf._native import native
from jitbpf.errors import BpfError, ExecutionError
from jitbpf.jit.runtime import ERROR_RESULT
from jitbpf.linux.pktrun import Batch, BatchOutcome
from jitbpf.linux.programs import PROGRAM_TYPES, ProgType, SkAction, TcAction, XdpAction

if TYPE_CHECKING:
    from jitbpf.linux.elf import ElfProgram
    from jitbpf.vm import VM

PACKET_TYPES = (ProgType.XDP, ProgType.SOCKET_FILTER, ProgType.SCHED_CLS, ProgType.SCHED_ACT, ProgType.CGROUP_SKB,
                ProgType.SK_SKB, ProgType.SK_MSG)  # the program types run_pcap can feed
MAP_ENTRIES_SHOWN = 16  # entries of each map printed in the report
_ETH_IPV4 = b"\x00" * 12 + b"\x08\x00"  # synthetic Ethernet header for captures without one
_ETH_IPV6 = b"\x00" * 12 + b"\x86\xdd"


class PcapError(BpfError):
    """A capture that cannot be read (not pcap/pcapng, unsupported link type, corrupt)."""


@dataclass
class Summary:
    """What a run over a capture produced: packets, verdicts, errors, timing and the maps after it."""

    program: str  # program name
    prog_type: str  # program type name
    capture: str  # capture path
    engine: str  # "interp" or "jit"
    packets: int = 0  # packets run
    bytes: int = 0  # their total length
    verdicts: Counter[str] = field(default_factory=Counter)  # verdict name -> packets
    errors: int = 0  # packets whose run failed (counted under verdict "error")
    first_error: str = ""  # the first failure's message
    elapsed: float = 0.0  # seconds spent running
    maps: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)  # map name -> entries after the run
    map_info: dict[str, str] = field(default_factory=dict)  # map name -> "HASH, 2/1024 entries"
    warnings: list[str] = field(default_factory=list)  # problems with the capture (a cut-off last packet)

    def report(self) -> str:
        """A printable report: counts and shares of each verdict, rate, and the maps' contents."""
        rate = self.packets / self.elapsed if self.elapsed > 0 else 0.0
        lines = [f"{self.program} ({self.prog_type}) over {self.capture} [{self.engine}]",
                 f"  packets: {self.packets} ({self.bytes} bytes) in {self.elapsed:.3f} s ({rate:,.0f} packets/s)"]
        lines.append("  verdicts:")
        width = max((len(v) for v in self.verdicts), default=0)
        for verdict, count in self.verdicts.most_common():
            share = 100.0 * count / self.packets if self.packets else 0.0
            lines.append(f"    {verdict:<{width}}  {count:>8}  {share:5.1f}%")
        if not self.verdicts:
            lines.append("    (no packets)")
        if self.errors:
            lines.append(f"  errors: {self.errors} (first: {self.first_error})")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        if self.maps:
            lines.append("  maps:")
            for name, entries in self.maps.items():
                lines.append(f"    {name} ({self.map_info.get(name, '')})")
                for key, value in entries[:MAP_ENTRIES_SHOWN]:
                    lines.append(f"      {_show(key)} -> {_show(value)}")
                if len(entries) > MAP_ENTRIES_SHOWN:
                    lines.append(f"      ... {len(entries) - MAP_ENTRIES_SHOWN} more")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready data (bytes as hex strings)."""
        return {"program": self.program, "prog_type": self.prog_type, "capture": self.capture, "engine": self.engine,
                "packets": self.packets, "bytes": self.bytes, "verdicts": dict(self.verdicts.most_common()),
                "errors": self.errors, "first_error": self.first_error or None, "warnings": self.warnings,
                "elapsed": round(self.elapsed, 6),
                "maps": {name: {"info": self.map_info.get(name, ""),
                                "entries": [[_plain(k), _plain(v)] for k, v in entries]}
                         for name, entries in self.maps.items()}}


def _plain(value: Any) -> Any:
    """A map key or value as JSON: numbers stay numbers, bytes become hex."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return repr(value)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value} ({value:#x})" if value > 9 else str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex() or "''"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


# -- reading captures ----------------------------------------------------------------------------


def read_packets(path: str | os.PathLike[str], *, frames: bool = True,
                 warn: Callable[[str], None] | None = None) -> Iterator[tuple[bytes, float]]:
    """The packets of a pcap or pcapng file as ``(bytes, fraction of the file read)``.

    With ``frames`` every packet is an Ethernet frame: captures of raw IP, Linux cooked (SLL) or
    loopback get a synthetic Ethernet header in front of the IP packet. A capture cut short in
    the middle of a packet (tcpdump killed) gives the packets before it, and ``warn`` (default:
    ``warnings.warn``) hears about the one left out.
    """
    name = os.fspath(path)
    try:
        f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in the finally below, after iteration
    except OSError as exc:
        raise PcapError(f"{name}: {exc.strerror or exc}") from exc
    try:
        size = max(os.fstat(f.fileno()).st_size, 1)
        magic = f.read(4)
        f.seek(0)
        if magic == _PCAPNG_SHB:
            _check_pcapng_blocks(f, name, size)
        try:
            reader: Any = dpkt.pcapng.Reader(f) if magic == _PCAPNG_SHB else dpkt.pcap.Reader(f)
        except _DPKT_ERRORS as exc:
            what = "corrupt capture" if magic == _PCAPNG_SHB else "not a pcap or pcapng capture"
            raise PcapError(f"{name}: {what} ({str(exc) or type(exc).__name__})") from exc
        convert = _link_converter(int(reader.datalink()), frames, name)
        endian = _CLASSIC_MAGICS.get(magic)
        # dpkt hands out a cut-off last packet as if it were whole: classic captures are read here.
        packets = _classic_packets(f, endian, name, warn) if endian else (
            (bytes(buf), f.tell()) for _ts, buf in reader)
        count = 0
        try:
            for buf, end in packets:
                yield convert(buf), min(end / size, 1.0)
                count += 1
        except dpkt.dpkt.NeedData:  # pcapng cut short: keep what came before, as for classic pcap
            _warn(warn, f"{name}: the capture ends in the middle of a block, after {count} packets; the rest was"
                        " left out")
        except (*_DPKT_ERRORS, EOFError) as exc:
            raise PcapError(f"{name}: corrupt capture ({str(exc) or type(exc).__name__})") from exc
    finally:
        f.close()


# What dpkt raises on malformed input: its own errors, and those of the parsing it leaves to
# the struct module and to slicing (an option shorter than its field, say).
_DPKT_ERRORS = (ValueError, struct.error, IndexError, dpkt.dpkt.Error)
# Byte order of classic pcap files by magic (micro- and nanosecond timestamps).
_CLASSIC_MAGICS = {bytes.fromhex("d4c3b2a1"): "<", bytes.fromhex("4d3cb2a1"): "<", bytes.fromhex("a1b2c3d4"): ">",
                   bytes.fromhex("a1b23c4d"): ">"}
_MAX_PACKET = 1 << 24  # a larger record length means a corrupt capture
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"  # section header block type: the same in both byte orders
_PCAPNG_BYTE_ORDERS = {bytes.fromhex("4d3c2b1a"): "<", bytes.fromhex("1a2b3c4d"): ">"}
_MAX_BLOCK = _MAX_PACKET + (1 << 16)  # a packet, its block header and room for options


def _check_pcapng_blocks(f: BinaryIO, name: str, size: int) -> None:
    """Walk the block lengths of a pcapng file before dpkt reads it, which would allocate whatever
    a length claims: a length smaller than a block header, not a multiple of 4, implausibly large
    or not repeated at the block's end is a corrupt capture, reported with the block's offset. A
    plausible length past the end of the file is a capture cut short, which the reader reports."""
    offset, endian = 0, "<"
    while offset + 8 <= size:
        f.seek(offset)
        head = f.read(12)
        if head[:4] == _PCAPNG_SHB:  # each section header gives the byte order of its section
            order = _PCAPNG_BYTE_ORDERS.get(head[8:12])
            if order is None:
                if len(head) < 12:
                    break
                raise PcapError(f"{name}: section header at offset {offset:#x} has no byte-order magic"
                                " (corrupt capture)")
            endian = order
        length = struct.unpack(endian + "I", head[4:8])[0]
        if length < 12 or length % 4 or length > _MAX_BLOCK:
            why = "not a multiple of 4" if 12 <= length <= _MAX_BLOCK else "corrupt capture"
            raise PcapError(f"{name}: block at offset {offset:#x} claims {length} bytes ({why})")
        if offset + length > size:
            break
        f.seek(offset + length - 4)
        if f.read(4) != head[4:8]:
            raise PcapError(f"{name}: block at offset {offset:#x} ends with a length other than its {length} bytes"
                            " (corrupt capture)")
        offset += length
    f.seek(0)


def _warn(warn: Callable[[str], None] | None, message: str) -> None:
    if warn is None:
        warnings.warn(message, stacklevel=3)
    else:
        warn(message)


def _classic_packets(f: BinaryIO, endian: str, name: str, warn: Callable[[str], None] | None
                     ) -> Iterator[tuple[bytes, int]]:
    """The packet records of a classic pcap file, positioned after its 24-byte file header, each
    with the offset where it ends."""
    record = struct.Struct(endian + "IIII")  # seconds, fraction, captured length, original length
    offset = 24
    f.seek(offset)
    index = 0
    while header := f.read(record.size):
        caplen = record.unpack(header)[2] if len(header) == record.size else -1
        if caplen > _MAX_PACKET:
            raise PcapError(f"{name}: packet {index} at offset {offset:#x} claims {caplen} bytes (corrupt capture)")
        buf = f.read(caplen) if caplen >= 0 else b""
        if len(buf) < caplen or caplen < 0:
            got = f"{len(buf)} of its {caplen} bytes" if caplen >= 0 else "part of its header"
            _warn(warn, f"{name}: the capture ends in the middle of packet {index} ({got}); it was left out")
            return
        offset += record.size + caplen
        yield buf, offset
        index += 1


def _link_converter(link: int, frames: bool, path: str) -> Callable[[bytes], bytes]:
    def ethernet(buf: bytes) -> bytes:
        return buf

    def raw_ip(buf: bytes) -> bytes:
        return (_ETH_IPV6 if buf[:1] and buf[0] >> 4 == 6 else _ETH_IPV4) + buf

    def sll(buf: bytes) -> bytes:  # Linux cooked capture: 16-byte header, protocol at 14
        return b"\x00" * 12 + buf[14:16] + buf[16:]

    def loopback(buf: bytes) -> bytes:  # BSD loopback: 4-byte address family
        return raw_ip(buf[4:])

    if not frames:
        return ethernet
    table: dict[int, Callable[[bytes], bytes]] = {1: ethernet, 101: raw_ip, 12: raw_ip, 14: raw_ip, 228: raw_ip,
                                                  229: raw_ip, 113: sll, 0: loopback, 108: loopback}
    if link not in table:
        raise PcapError(f"{path}: unsupported link type {link} (Ethernet, raw IP, Linux SLL and loopback are)")
    return table[link]


# -- running ---------------------------------------------------------------------------------------


_VERDICTS: dict[ProgType, tuple[type[enum.IntEnum], str]] = {
    ProgType.XDP: (XdpAction, "XDP_"), ProgType.SCHED_CLS: (TcAction, "TC_ACT_"),
    ProgType.SCHED_ACT: (TcAction, "TC_ACT_"), ProgType.SK_SKB: (SkAction, "SK_"), ProgType.SK_MSG: (SkAction, "SK_"),
}  # the kernel's names of each program type's return values


def verdict_name(prog_type: ProgType | None, r0: int) -> str | None:
    """The kernel's name of a packet program's result (XDP_PASS, TC_ACT_SHOT, SK_DROP, keep, allow),
    None for other program types and for values without a name."""
    value = ((r0 & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000  # the kernel reads r0 as a 32-bit int
    if prog_type is ProgType.SOCKET_FILTER:
        return "keep" if value else "drop"
    if prog_type is ProgType.CGROUP_SKB:
        return {0: "deny", 1: "allow"}.get(value)
    kind, prefix = _VERDICTS.get(prog_type, (None, "")) if prog_type is not None else (None, "")
    if kind is None or value not in kind._value2member_map_:
        return None
    return prefix + kind(value).name


def _l4_payload(frame: bytes) -> bytes:
    """The TCP or UDP payload of an Ethernet frame (sk_skb and sk_msg see stream data), else the frame."""
    try:
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) and isinstance(ip.data, dpkt.tcp.TCP | dpkt.udp.UDP):
            return bytes(ip.data.data)
    except (dpkt.dpkt.Error, ValueError, IndexError):
        pass
    return frame


def _u32(r0: int) -> int:
    return r0 & 0xFFFF_FFFF


def _s32(r0: int) -> int:
    return ((r0 & 0xFFFF_FFFF) ^ 0x8000_0000) - 0x8000_0000


def _ip_packet(frame: bytes) -> bytes:
    return frame[14:]  # cgroup_skb sees the packet from its network header


def _frame(frame: bytes) -> bytes:
    return frame


# Program types whose JIT runs go in batches (run_batch): what each takes of a captured frame,
# and its r0 as the type's single runner (_runner) returns it.
_BATCHED: dict[ProgType, tuple[Callable[[bytes], bytes], Callable[[int], int]]] = {
    ProgType.XDP: (_frame, _u32),
    ProgType.SOCKET_FILTER: (_frame, _u32),
    ProgType.SCHED_CLS: (_frame, _s32),
    ProgType.SCHED_ACT: (_frame, _s32),
    ProgType.CGROUP_SKB: (_ip_packet, _u32),
    ProgType.SK_SKB: (_l4_payload, _u32),
}
BATCH_PACKETS = 4096  # packets read ahead for one batch
# What the batched types take of a frame, as the bytes it starts with that a view of a classic
# capture's record leaves out
_RECORD_VIEWS: dict[Callable[[bytes], bytes], int] = {_frame: 0, _ip_packet: 14}
_DISTINCT = 64  # r0 values a batch's count keeps natively (more: counted in Python)


def _counted(results: array.array[int]) -> dict[int, int]:
    """How many times each r0 comes in ``results``, in order of first appearance."""
    nat = native()
    distinct, counts = nat.ffi.new("uint64_t[]", _DISTINCT), nat.ffi.new("uint64_t[]", _DISTINCT)
    found = int(nat.lib.jb_count_values(nat.ffi.from_buffer("uint64_t[]", results), len(results), distinct, counts,
                                        _DISTINCT)) if results else 0
    if found < 0:
        return dict(Counter(results))
    return {int(distinct[i]): int(counts[i]) for i in range(found)}


def _classic_records(path: str | os.PathLike[str], skip: int, limit: int | None, warn: Callable[[str], None]
                     ) -> Iterator[tuple[Batch, int, float, int]] | None:
    """A classic pcap capture of Ethernet frames as batches of packets found natively in the
    mapped file: ``(batch, index of its first packet, fraction read, bytes captured)``, each
    packet less its first ``skip`` bytes; None for other captures and files that cannot be
    mapped (read_packets reads them). A capture cut short, or a corrupt record length, is
    reported as read_packets reports it."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            header = f.read(24)
            endian = _CLASSIC_MAGICS.get(header[:4])
            if endian is None or len(header) < 24 or struct.unpack(endian + "I", header[20:24])[0] != 1:
                return None
            # Mapped, not read (the runs copy each packet into their own memory anyway), its
            # pages mapped at once where the system can: a fault per page costs as much as the runs.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            data = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    except OSError as exc:
        raise PcapError(f"{name}: {exc.strerror or exc}") from exc
    except ValueError:  # not mappable (empty past its header, say)
        return None
    return _record_batches(data, name, endian == ">", skip, limit, warn)


def _record_batches(data: mmap.mmap, name: str, big_endian: bool, skip: int, limit: int | None,
                    warn: Callable[[str], None]) -> Iterator[tuple[Batch, int, float, int]]:
    nat = native()
    nffi, lib = nat.ffi, nat.lib
    size = len(data)
    offsets, lens = array.array("Q", bytes(8 * BATCH_PACKETS)), array.array("Q", bytes(8 * BATCH_PACKETS))
    native_offsets, native_lens = nffi.from_buffer("uint64_t[]", offsets), nffi.from_buffer("uint64_t[]", lens)
    stats, corrupt = nffi.new("uint64_t[3]"), nffi.new("int *")
    view = memoryview(data)
    base = nffi.from_buffer(view)
    at, index = 24, 0  # where the next record starts, packets so far
    try:
        while limit is None or index < limit:
            room = BATCH_PACKETS if limit is None else min(BATCH_PACKETS, limit - index)
            n = int(lib.jb_pcap_records(base + at, size - at, big_endian, _MAX_PACKET, skip, native_offsets,
                                        native_lens, room, stats, corrupt))
            if n:
                batch = Batch(view[at:], offsets[:n], lens[:n], int(stats[1]), checked=True)  # (found in it)
                yield batch, index, min((at + stats[0]) / size, 1.0), int(stats[2])
                index += n
                at += int(stats[0])
            if corrupt[0] and (limit is None or index < limit):
                caplen = struct.unpack_from(">I" if big_endian else "<I", data, at + 8)[0]
                raise PcapError(f"{name}: packet {index} at offset {at:#x} claims {caplen} bytes (corrupt capture)")
            if n < room:
                break  # the end, or a record cut short
        left = size - at
        if left and (limit is None or index < limit):
            caplen = struct.unpack_from(">I" if big_endian else "<I", data, at + 8)[0] if left >= 16 else -1
            got = f"{left - 16} of its {caplen} bytes" if caplen >= 0 else "part of its header"
            warn(f"{name}: the capture ends in the middle of packet {index} ({got}); it was left out")
    finally:
        del base, native_offsets, native_lens
        # The last batch may still be in the caller's hands (its view of the mapping): then the
        # mapping goes when that does.
        with contextlib.suppress(BufferError):
            view.release()
            data.close()


def _runner(vm: VM, prog_type: ProgType, engine: str) -> Callable[[bytes], int]:
    if prog_type is ProgType.XDP:
        return lambda pkt: int(vm.run_xdp(pkt, engine=engine)[0])
    if prog_type is ProgType.SOCKET_FILTER:
        return lambda pkt: vm.run_socket_filter(pkt, engine=engine)
    if prog_type in (ProgType.SCHED_CLS, ProgType.SCHED_ACT):
        return lambda pkt: int(vm.run_tc(pkt, engine=engine)[0])
    if prog_type is ProgType.CGROUP_SKB:
        return lambda pkt: vm.run_cgroup_skb(_ip_packet(pkt), engine=engine)
    if prog_type is ProgType.SK_SKB:
        return lambda pkt: int(vm.run_sk_skb(_l4_payload(pkt), engine=engine)[0])
    if prog_type is ProgType.SK_MSG:
        return lambda pkt: int(vm.run_sk_msg(_l4_payload(pkt), engine=engine))
    info = PROGRAM_TYPES.get(prog_type)
    raise BpfError(f"{info.name if info else prog_type.name} programs do not take packets: run_pcap needs one of "
                   + ", ".join(PROGRAM_TYPES[t].name for t in PACKET_TYPES))


class _Progress:
    """A one-line progress bar on a terminal (stderr), redrawn at most ten times a second."""

    def __init__(self, stream: IO[str] | None, label: str) -> None:
        self.stream = stream
        self.label = label
        self.last = 0.0

    def update(self, fraction: float, packets: int, started: float, *, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        done = int(fraction * 30)
        rate = packets / (now - started) if now > started else 0.0
        self.stream.write(f"\r{self.label} [{'#' * done}{'.' * (30 - done)}] {fraction * 100:5.1f}% "
                          f"{packets} packets {rate:,.0f}/s\x1b[K")
        self.stream.flush()

    def close(self, fraction: float, packets: int, started: float) -> None:
        """Draw the bar once more as the run ended (the last redraw may be 0.1 s old) and leave it."""
        if self.stream is not None:
            self.update(fraction, packets, started, force=True)
            self.stream.write("\n")
            self.stream.flush()


def _snapshot(m: Any) -> tuple[list[tuple[Any, Any]], str]:
    """The entries of a map for the report (non-zero values only for arrays) and a description."""
    from jitbpf.linux.maps import Array, HashMap, LpmTrie

    kind = getattr(getattr(m, "map_type", None), "name", type(m).__name__)
    entries: list[tuple[Any, Any]] = []
    if isinstance(m, Array):
        for i in range(m.max_entries):
            value = m[i]
            if any(m.view(i)) if m.num_cpus == 1 else any(value):
                entries.append((i, value))
        return entries, f"{kind}, {len(entries)}/{m.max_entries} non-zero"
    if isinstance(m, HashMap | LpmTrie):
        entries = [(k, m[k]) for k in m]
        return entries, f"{kind}, {len(entries)}/{m.max_entries} entries"
    return entries, kind


def run_pcap(
    program: ElfProgram | VM,
    pcap_path: str | os.PathLike[str],
    *,
    engine: str = "interp",
    progress: bool = True,
    limit: int | None = None,
    stream: IO[str] | None = None,
    on_packet: Callable[[int, bytes, int], None] | None = None,
    name: str | None = None,
    threads: int = 1,
) -> Summary:
    """Run a packet program (XDP, socket filter, tc, cgroup_skb, sk_skb, sk_msg) on every packet of
    a pcap/pcapng capture and count its verdicts.

    ``program`` is an ELF program (``obj.programs[...]``: a fresh VM sharing the object's maps) or
    a VM made with a ``prog_type``. A progress bar goes to ``stream`` (stderr by default) when
    ``progress`` is on and the stream is a terminal. A packet whose run fails counts as verdict
    "error". ``on_packet(index, packet, verdict)`` is called after each run. ``name`` names the
    program in the report (default: the ELF program's name, "program" for a VM).

    With the JIT, packet types that ``run_batch`` takes run in batches of ``BATCH_PACKETS``
    read ahead, over ``threads`` threads (each with its own CPU id for per-CPU maps), unless
    ``on_packet`` is given: then each packet runs alone, so that the callback sees its effects.
    """
    from jitbpf.vm import VM

    if isinstance(program, VM):
        vm, default_name = program, "program"
        maps = {getattr(m, "name", "") or f"map {h}": m for h, m in program.maps.items()}
    else:
        vm, default_name = program.vm(), program.name
        maps = dict(program.obj.maps)
    name = name or default_name
    prog_type = vm.prog_type if vm.prog_type is not None else ProgType.UNSPEC
    run_one = _runner(vm, prog_type, engine)
    if engine == "jit":
        vm.jit_compile()
    else:
        vm.check()
    info = PROGRAM_TYPES[prog_type]
    summary = Summary(name, info.name, os.fspath(pcap_path), engine)
    out = stream if stream is not None else sys.stderr
    bar = _Progress(out if progress and out.isatty() else None, name)
    started = time.monotonic()
    read = 0.0  # fraction of the capture read
    batched = _BATCHED.get(prog_type) if engine == "jit" and on_packet is None else None
    pending: list[bytes] = []  # inputs of the next batch

    def run_pending() -> None:
        count_outcome(vm.run_batch(pending, engine="jit", threads=threads, keep_errors=True),
                      summary.packets - len(pending))
        pending.clear()

    def count_outcome(outcome: BatchOutcome, first: int) -> None:
        """The verdicts of a batch whose first packet is packet ``first`` of the capture."""
        assert batched is not None
        errors = outcome.errors or {}
        for i in sorted(errors):
            count_error(first + i, errors[i])
        # Each distinct r0 is named once: a batch has few of them (ERROR_RESULT stands for the
        # failed runs, counted above).
        for r0, times in _counted(outcome.results).items():
            times -= len(errors) if r0 == ERROR_RESULT else 0
            if times:
                count(batched[1](r0), times)

    def count_error(index: int, exc: ExecutionError) -> None:
        summary.errors += 1
        summary.first_error = summary.first_error or f"packet {index}: {exc}"
        summary.verdicts["error"] += 1

    def count(value: int, times: int = 1) -> None:
        summary.verdicts[verdict_name(prog_type, value) or f"r0={value}"] += times

    def run_each(packets: Iterator[tuple[bytes, float]]) -> float:
        """Every packet of the capture as read in Python; returns the fraction read."""
        read = 0.0
        for index, (packet, fraction) in enumerate(packets):
            if limit is not None and index >= limit:
                return read
            read = fraction
            summary.packets += 1
            summary.bytes += len(packet)
            bar.update(fraction, summary.packets, started)
            if batched is not None:
                pending.append(batched[0](packet))
                if len(pending) >= BATCH_PACKETS:
                    run_pending()
                continue
            try:
                value = run_one(packet)
            except ExecutionError as exc:
                count_error(index, exc)
                continue
            count(value)
            if on_packet is not None:
                on_packet(index, packet, value)
        return 1.0

    try:
        skip = _RECORD_VIEWS.get(batched[0]) if batched is not None else None
        records = _classic_records(pcap_path, skip, limit, summary.warnings.append) if skip is not None else None
        if records is not None:  # a classic Ethernet capture: read and run in native loops
            for batch, first, fraction, nbytes in records:
                summary.packets += len(batch.lens)
                summary.bytes += nbytes
                count_outcome(vm.run_batch(batch, engine="jit", threads=threads, keep_errors=True), first)
                read = fraction
                bar.update(fraction, summary.packets, started)
            read = 1.0
        else:
            read = run_each(read_packets(pcap_path, warn=summary.warnings.append))
        if pending:
            run_pending()
    finally:
        summary.elapsed = time.monotonic() - started
        bar.close(read, summary.packets, started)
    for map_name, m in maps.items():
        summary.maps[map_name], summary.map_info[map_name] = _snapshot(m)
    return summary


def cli_run_pcap(
    object_path: str,
    pcap_path: str,
    *,
    section: str | None = None,
    engine: str = "interp",
    progress: bool = True,
    limit: int | None = None,
    map_values: Sequence[tuple[str, Any, Any]] = (),
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """``jitbpf run OBJ --section SEC --pcap FILE [--jit|--interp]``: load, run, print the report.

    ``section`` is a section or function name (optional when the object has one program);
    ``map_values`` are ``(map, key, value)`` to store before the run. Returns the exit status:
    0 done, 1 some packet failed at run time, 2 the object, program or capture could not be used.
    """
    from jitbpf.linux.elf import load_elf

    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    try:
        obj = load_elf(object_path)
        if section is None:
            if len(obj.programs) != 1:
                names = ", ".join(f"{p.name} ({p.section})" for p in obj.programs.values())
                raise BpfError(f"{object_path}: choose a program with --section: {names or 'none'}")
            program = next(iter(obj.programs.values()))
        else:
            program = obj.program(section)
        for map_name, key, value in map_values:
            if map_name not in obj.maps:
                raise BpfError(f"{object_path}: no map named {map_name!r} (maps: {', '.join(obj.maps) or 'none'})")
            obj.maps[map_name][key] = value
        summary = run_pcap(program, pcap_path, engine=engine, progress=progress, limit=limit, stream=stderr)
    except BpfError as exc:
        stderr.write(f"jitbpf: {exc}\n")
        return 2
    stdout.write(summary.report() + "\n")
    return 1 if summary.errors else 0
