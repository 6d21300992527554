"""The running kernel's verifier as an oracle: the same bytecode loaded with BPF_PROG_LOAD (root only).

Maps are created for real (BPF_MAP_CREATE) and closed afterwards; lddw map references of the
program (by jitbpf handle) are rewritten to the kernel's file descriptors.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from jitbpf.isa import LDDW_OPCODE, Instruction, PseudoSrc, decode, encode

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
BPF_PROG_LOAD = 5
LOG_SIZE = 1 << 20


@dataclass(frozen=True)
class KernelMap:
    """A map to create for the kernel's run: its kernel type number, sizes and flags."""

    map_type: int  # enum bpf_map_type (1 hash, 2 array, 22 queue, 23 stack, 27 ringbuf)
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    inner: KernelMap | None = None  # maps of maps: the inner map template (created first, then closed)


@dataclass(frozen=True)
class Verdict:
    """What the kernel's verifier said."""

    accepted: bool
    log: str  # the verifier log (the reason when rejected)
    errno: int = 0


class _MapAttr(ctypes.Structure):
    _fields_ = (("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("pad", ctypes.c_uint8 * 104))


class _ProgAttr(ctypes.Structure):
    _fields_ = (("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("func_info_cnt", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 44))


class _BtfAttr(ctypes.Structure):
    _fields_ = (("btf", ctypes.c_uint64), ("btf_log_buf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32),
                ("btf_log_size", ctypes.c_uint32), ("btf_log_level", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 100))


BPF_BTF_LOAD = 18
BTF_KIND_INT, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO = 1, 12, 13


def func_btf(entries: Sequence[int]) -> tuple[bytes, bytes]:
    """A BTF blob naming one static function ``int f<i>(void)`` per entry slot, and the func_info
    records that place them: what the kernel asks of any program whose code takes a function's
    address (a callback), and what a compiler would have emitted."""
    strings = b"\0int\0" + b"".join(f"f{i}".encode() + b"\0" for i in range(len(entries)))
    types = struct.pack("<IIII", 1, BTF_KIND_INT << 24, 4, (1 << 24) | 32)  # [1] int: signed, 32 bits
    types += struct.pack("<III", 0, BTF_KIND_FUNC_PROTO << 24, 1)  # [2] int (void)
    name = 5
    for i in range(len(entries)):  # [3 + i] static f<i> of type [2]
        types += struct.pack("<III", name, BTF_KIND_FUNC << 24, 2)
        name += len(f"f{i}") + 1
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    records = b"".join(struct.pack("<II", entry, 3 + i) for i, entry in enumerate(entries))
    return header + types + strings, records


def _load_btf(blob: bytes) -> int:
    data = ctypes.create_string_buffer(blob, len(blob))
    fd, err = _bpf(BPF_BTF_LOAD, _BtfAttr(btf=ctypes.addressof(data), btf_size=len(blob)))
    if fd < 0:
        raise OSError(err, f"BPF_BTF_LOAD: {os.strerror(err)}")
    return fd


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Structure) -> tuple[int, int]:
    assert SYS_BPF is not None
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = int(libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), ctypes.byref(attr),
                           ctypes.c_uint(ctypes.sizeof(attr))))
    return ret, ctypes.get_errno() if ret < 0 else 0


def available() -> bool:
    """Whether this process may load programs into the kernel (root, a known architecture)."""
    if SYS_BPF is None or os.geteuid() != 0:
        return False
    fd, _err = _bpf(BPF_MAP_CREATE, _MapAttr(2, 4, 8, 1, 0))
    if fd < 0:
        return False
    os.close(fd)
    return True


def create(m: KernelMap) -> int:
    """A new kernel map's file descriptor (the caller closes it); OSError when the kernel refuses."""
    inner_fd = create(m.inner) if m.inner is not None else 0
    try:
        fd, err = _bpf(BPF_MAP_CREATE, _MapAttr(m.map_type, m.key_size, m.value_size, m.max_entries, m.flags,
                                                inner_fd))
    finally:
        if m.inner is not None:
            os.close(inner_fd)
    if fd < 0:
        raise OSError(err, f"BPF_MAP_CREATE {m}: {os.strerror(err)}")
    return fd


@contextlib.contextmanager
def _maps(specs: Mapping[int, KernelMap]) -> Iterator[dict[int, int]]:
    fds: dict[int, int] = {}
    try:
        for handle, m in specs.items():
            fds[handle] = create(m)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


class _ElemAttr(ctypes.Structure):
    _fields_ = (("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64))


class KernelMapFd:
    """One kernel map for element-level comparisons: each operation returns the kernel's errno (0: done)."""

    def __init__(self, fd: int, spec: KernelMap) -> None:
        self.fd, self.spec = fd, spec

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int = 0) -> int:
        kbuf = ctypes.create_string_buffer(key, len(key))
        kaddr = ctypes.addressof(kbuf) if key else 0  # keyless maps (bloom filters) take a NULL key
        attr = _ElemAttr(self.fd, 0, kaddr, 0 if value is None else ctypes.addressof(value), flags)
        return _bpf(cmd, attr)[1]

    def update(self, key: bytes, value: bytes, flags: int = 0) -> int:
        return self._elem(BPF_MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), flags)

    def lookup(self, key: bytes, size: int, initial: bytes = b"") -> tuple[int, bytes]:
        """``initial``: the value buffer's contents before the call (what a bloom filter tests)."""
        out = ctypes.create_string_buffer(initial.ljust(max(size, 8), b"\0"), max(size, 8))
        err = self._elem(BPF_MAP_LOOKUP_ELEM, key, out)
        return err, out.raw[:size]

    def delete(self, key: bytes) -> int:
        return self._elem(BPF_MAP_DELETE_ELEM, key, None)

    def items(self) -> dict[bytes, bytes]:
        """Every element (key -> value), walked with BPF_MAP_GET_NEXT_KEY."""
        out: dict[bytes, bytes] = {}
        size = self.spec.key_size
        key: bytes | None = None
        while True:
            nxt = ctypes.create_string_buffer(size)
            kbuf = None if key is None else ctypes.create_string_buffer(key, size)
            attr = _ElemAttr(self.fd, 0, 0 if kbuf is None else ctypes.addressof(kbuf), ctypes.addressof(nxt), 0)
            if _bpf(BPF_MAP_GET_NEXT_KEY, attr)[0] < 0:
                return out
            key = nxt.raw
            err, value = self.lookup(key, self.spec.value_size)
            if not err:
                out[key] = value


@contextlib.contextmanager
def kernel_map(spec: KernelMap) -> Iterator[KernelMapFd]:
    """A kernel map made from ``spec`` for the block's duration."""
    with _maps({0: spec}) as fds:
        yield KernelMapFd(fds[0], spec)


def _relocate(code: bytes, fds: Mapping[int, int]) -> bytes:
    insns = decode(code)
    out: list[Instruction] = []
    for insn in insns:
        if insn.opcode == LDDW_OPCODE and insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX, PseudoSrc.MAP_VALUE,
                                                PseudoSrc.MAP_IDX_VALUE):
            src = PseudoSrc.MAP_FD if insn.src in (PseudoSrc.MAP_FD, PseudoSrc.MAP_IDX) else PseudoSrc.MAP_VALUE
            insn = replace(insn, src=src, imm=fds.get(insn.imm, -1))  # no such map: a bad descriptor
        out.append(insn)
    return encode(out)


def _load(text: bytes, prog_type: int, expected_attach_type: int = 0, prog_flags: int = 0,
          functions: Sequence[int] = ()) -> tuple[int, Verdict]:
    """BPF_PROG_LOAD: the program's descriptor (negative when refused) and the verifier's verdict.
    ``functions``: the entry slots of its functions (main first), described by BTF (see func_btf)."""
    insns = ctypes.create_string_buffer(text, len(text))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr = _ProgAttr(prog_type=prog_type, insn_cnt=len(text) // 8, insns=ctypes.addressof(insns),
                     license=ctypes.addressof(license), log_level=1, log_size=LOG_SIZE, log_buf=ctypes.addressof(log),
                     prog_flags=prog_flags, expected_attach_type=expected_attach_type)
    btf_fd = -1
    if functions:
        blob, records = func_btf(functions)
        btf_fd = _load_btf(blob)
        info = ctypes.create_string_buffer(records, len(records))
        attr.prog_btf_fd, attr.func_info_rec_size = btf_fd, 8
        attr.func_info, attr.func_info_cnt = ctypes.addressof(info), len(functions)
    try:
        fd, err = _bpf(BPF_PROG_LOAD, attr)
    finally:
        if btf_fd >= 0:
            os.close(btf_fd)
    message = log.value.decode(errors="replace")
    return fd, Verdict(True, message) if fd >= 0 else Verdict(False, message or os.strerror(err), err)


def kernel_verify(code: bytes, prog_type: int, maps: Mapping[int, KernelMap] | None = None,
                  expected_attach_type: int = 0, prog_flags: int = 0) -> Verdict:
    """Load ``code`` as a program of ``prog_type`` (enum bpf_prog_type; ``prog_flags``: its
    BPF_F_* load flags) and unload it again."""
    with _maps(maps or {}) as fds:
        fd, verdict = _load(_relocate(code, fds), prog_type, expected_attach_type, prog_flags)
        if fd >= 0:
            os.close(fd)
        return verdict


BPF_PROG_TEST_RUN = 10


class _TestRunAttr(ctypes.Structure):
    _fields_ = (("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32))


def kernel_run(code: bytes, prog_type: int, packet: bytes) -> int:
    """r0 (32 bits, as BPF_PROG_TEST_RUN reports it) of one test run of ``code`` on ``packet``;
    OSError when the kernel refuses to load or run it."""
    return kernel_run_output(code, prog_type, packet)[0]


@contextlib.contextmanager
def _on_jitbpf_cpu() -> Iterator[None]:
    """The calling thread kept meanwhile on the CPU whose id jitbpf's runs on this thread see
    (bpf_get_smp_processor_id, per-CPU maps): a test run runs where its caller does. jitbpf gives
    threads ids in turn, so the id is not always 0 (another thread may have asked first)."""
    from jitbpf.linux.maps import current_cpu

    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {current_cpu()})
    except OSError:  # not a CPU this process may use: the run goes where it may
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _test_run(fd: int, packet: bytes) -> tuple[int, bytes]:
    data = ctypes.create_string_buffer(packet, len(packet))
    out = ctypes.create_string_buffer(len(packet) + 512)
    run = _TestRunAttr(prog_fd=fd, data_size_in=len(packet), data_in=ctypes.addressof(data),
                       data_size_out=len(out), data_out=ctypes.addressof(out), repeat=1)
    with _on_jitbpf_cpu():
        ret, err = _bpf(BPF_PROG_TEST_RUN, run)
    if ret < 0:
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return int(run.retval), out.raw[: run.data_size_out]


def kernel_run_output(code: bytes, prog_type: int, packet: bytes, expected_attach_type: int = 0) -> tuple[int, bytes]:
    """r0 and the output of one test run (the packet after it; a flow dissector's keys)."""
    fd, verdict = _load(code, prog_type, expected_attach_type)
    if fd < 0:
        raise OSError(verdict.errno, verdict.log)
    try:
        return _test_run(fd, packet)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class KernelRuns:
    """A program loaded with its maps and test-run on packets in turn, the maps kept between runs."""

    verdict: Verdict
    runs: tuple[tuple[int, bytes] | int, ...] = ()  # per packet: (r0, packet after), or the run's errno
    maps: Mapping[int, dict[bytes, bytes]] = field(default_factory=dict)  # by handle: elements after the runs


DUMPABLE = frozenset({1, 2})  # hash and array maps: their elements are compared after the runs


def kernel_test_runs(code: bytes, prog_type: int, maps: Mapping[int, KernelMap],
                     packets: Sequence[bytes], functions: Sequence[int] = ()) -> KernelRuns:
    """Load ``code`` with new ``maps`` (by jitbpf handle) and run it on each of ``packets``
    (``functions``: as for ``_load``)."""
    with _maps(maps) as fds:
        fd, verdict = _load(_relocate(code, fds), prog_type, functions=functions)
        if fd < 0:
            return KernelRuns(verdict)
        try:
            runs: list[tuple[int, bytes] | int] = []
            for packet in packets:
                try:
                    runs.append(_test_run(fd, packet))
                except OSError as exc:
                    runs.append(exc.errno or 0)
        finally:
            os.close(fd)
        dumps = {handle: KernelMapFd(fds[handle], spec).items() for handle, spec in maps.items()
                 if spec.map_type in DUMPABLE}
        return KernelRuns(verdict, tuple(runs), dumps)
