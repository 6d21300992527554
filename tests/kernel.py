"""The running kernel as a reference: load one program of an object with the system's libbpf and
test-run it (``BPF_PROG_TEST_RUN``), then read its maps back. Needs root, BPF and ``libbpf.so.1``;
``Kernel.open()`` says why not when one is missing."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Program types the kernel can test-run with a packet (enum bpf_prog_type).
PACKET_TYPES = {"socket_filter": 1, "sched_cls": 3, "sched_act": 4, "xdp": 6, "cgroup_skb": 8}
PROG_TYPE_NUMBERS = {**PACKET_TYPES, "kprobe": 2, "tracepoint": 5, "perf_event": 7}
L3_TYPES = frozenset({1, 8})  # the test run hands these the packet from the network header on
PERCPU_MAP_TYPES = frozenset({5, 6, 10})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
LOG_SIZE = 1 << 22  # the verifier log kept of a refused load: its last part
XDP_OUT_SLACK = 4096  # room in the output buffer for programs that grow the packet
RINGBUF_HDR, RINGBUF_BUSY = 8, 1 << 31  # a ring buffer sample's header, and its bit while reserved


class _TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
# libbpf's print function: one for the process, never freed (libbpf keeps the pointer whichever
# Kernel set it).
_QUIET = _PRINT_FN(lambda _level, _fmt, _args: 0)


def _declare(lib: ctypes.CDLL) -> None:
    vp, cp, i32, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
    signatures: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i32, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__next_program": (vp, [vp, vp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_program__name": (cp, [vp]),
        "bpf_program__set_autoload": (i32, [vp, ctypes.c_bool]),
        "bpf_program__set_type": (i32, [vp, i32]),
        "bpf_program__set_flags": (i32, [vp, u32]),
        "bpf_program__set_log_buf": (i32, [vp, vp, ctypes.c_size_t]),
        "bpf_program__set_log_level": (i32, [vp, u32]),
        "bpf_program__type": (i32, [vp]),
        "bpf_program__fd": (i32, [vp]),
        "bpf_map__name": (cp, [vp]),
        "bpf_map__fd": (i32, [vp]),
        "bpf_map__type": (i32, [vp]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__set_pin_path": (i32, [vp, cp]),
        "bpf_map_get_next_key": (i32, [i32, vp, vp]),
        "bpf_map_lookup_elem": (i32, [i32, vp, vp]),
        "bpf_map_update_elem": (i32, [i32, vp, vp, ctypes.c_uint64]),
        "bpf_prog_attach": (i32, [i32, i32, i32, u32]),
        "bpf_prog_detach2": (i32, [i32, i32, i32]),
        "bpf_prog_test_run_opts": (i32, [i32, ctypes.POINTER(_TestRunOpts)]),
        "libbpf_set_print": (vp, [_PRINT_FN]),
        "libbpf_num_possible_cpus": (i32, []),
        "user_ring_buffer__new": (vp, [i32, vp]),
        "user_ring_buffer__reserve": (vp, [vp, u32]),
        "user_ring_buffer__submit": (None, [vp, vp]),
        "user_ring_buffer__discard": (None, [vp, vp]),
        "user_ring_buffer__free": (None, [vp]),
    }
    for name, (res, args) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


@dataclass(frozen=True)
class KernelRun:
    """One test run: r0 (32 bits, as the kernel reports it) and the packet after."""

    retval: int
    packet: bytes


class KernelProgram:
    """One program loaded into the kernel with its own maps."""

    def __init__(self, kernel: Kernel, obj: int, prog: int, prog_type: int) -> None:
        self._k = kernel
        self._obj = obj
        self.fd = kernel.lib.bpf_program__fd(prog)
        self.prog_type = prog_type

    def run(self, frame: bytes) -> KernelRun | None:
        """Test-run on ``frame`` (an Ethernet frame); None when the kernel refuses the input."""
        data_in = ctypes.create_string_buffer(frame, len(frame))
        out = ctypes.create_string_buffer(len(frame) + XDP_OUT_SLACK)
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(data_in),
                            data_out=ctypes.addressof(out), data_size_in=len(frame), data_size_out=len(out),
                            repeat=1)
        if self._k.lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)) != 0:
            return None
        return KernelRun(opts.retval, out.raw[: opts.data_size_out])

    def maps(self) -> dict[str, dict[bytes, bytes]]:
        """Every map's contents (per-CPU maps: CPU 0's value), by name."""
        lib = self._k.lib
        out: dict[str, dict[bytes, bytes]] = {}
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            name = (lib.bpf_map__name(m) or b"").decode()
            out[name] = self._dump(lib.bpf_map__fd(m), lib.bpf_map__key_size(m), lib.bpf_map__value_size(m),
                                   lib.bpf_map__type(m) in PERCPU_MAP_TYPES)
            m = lib.bpf_object__next_map(self._obj, m)
        return out

    def _dump(self, fd: int, key_size: int, value_size: int, percpu: bool) -> dict[bytes, bytes]:
        lib = self._k.lib
        stride = (value_size + 7) & ~7
        cpus = self._k.num_cpus if percpu else 1
        key = ctypes.create_string_buffer(max(key_size, 1))
        value = ctypes.create_string_buffer(max(stride * cpus, 8))
        found: dict[bytes, bytes] = {}
        prev: ctypes.c_void_p | None = None
        while key_size and lib.bpf_map_get_next_key(fd, prev, key) == 0 and len(found) < 1 << 16:
            k = key.raw[:key_size]
            if lib.bpf_map_lookup_elem(fd, key, value) == 0:
                found[k] = value.raw[:value_size]
            saved = ctypes.create_string_buffer(k, key_size)
            prev = ctypes.c_void_p(ctypes.addressof(saved))
        return found

    def _map_fd(self, map_name: str) -> int:
        lib = self._k.lib
        m = lib.bpf_object__next_map(self._obj, None)
        while m and (lib.bpf_map__name(m) or b"").decode() != map_name:
            m = lib.bpf_object__next_map(self._obj, m)
        assert m, f"no map {map_name!r}"
        return int(lib.bpf_map__fd(m))

    def update(self, map_name: str, key: bytes, value: bytes) -> None:
        """Store ``value`` at ``key`` in the map ``map_name``."""
        k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
        assert self._k.lib.bpf_map_update_elem(self._map_fd(map_name), k, v, 0) == 0, os.strerror(ctypes.get_errno())

    @contextmanager
    def attached(self, cgroup: Path, attach_type: int) -> Iterator[None]:
        """Attached to ``cgroup`` (a cgroup v2 directory) as ``attach_type`` while the block runs."""
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert self._k.lib.bpf_prog_attach(self.fd, fd, attach_type, 0) == 0, os.strerror(ctypes.get_errno())
            try:
                yield
            finally:
                self._k.lib.bpf_prog_detach2(self.fd, fd, attach_type)
        finally:
            os.close(fd)

    def produce(self, map_name: str, samples: Sequence[bytes | None], forged_len: int | None = None) -> None:
        """Write ``samples`` into the user ring buffer ``map_name`` as libbpf's producer does
        (None: a sample reserved and discarded); ``forged_len`` replaces the last sample's length
        in its header before it is submitted (a producer that corrupts the ring)."""
        lib = self._k.lib
        m = lib.bpf_object__next_map(self._obj, None)
        while m and (lib.bpf_map__name(m) or b"").decode() != map_name:
            m = lib.bpf_object__next_map(self._obj, m)
        assert m, f"no map {map_name!r}"
        ring = lib.user_ring_buffer__new(lib.bpf_map__fd(m), None)
        assert ring, f"user_ring_buffer__new: {os.strerror(ctypes.get_errno())}"
        try:
            for data in samples:
                sample = lib.user_ring_buffer__reserve(ring, len(data or b"\0"))
                assert sample, f"user_ring_buffer__reserve: {os.strerror(ctypes.get_errno())}"
                if data is None:
                    lib.user_ring_buffer__discard(ring, sample)
                    continue
                ctypes.memmove(sample, data, len(data))
                if forged_len is not None and data is samples[-1]:
                    header = ctypes.c_uint32.from_address(sample - RINGBUF_HDR)
                    header.value = header.value & RINGBUF_BUSY | forged_len
                lib.user_ring_buffer__submit(ring, sample)
        finally:
            lib.user_ring_buffer__free(ring)

    def close(self) -> None:
        if self._obj:
            self._k.lib.bpf_object__close(self._obj)
            self._obj = 0


class Kernel:
    """The system's libbpf, bound with ctypes, quiet."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.libbpf_set_print(_QUIET)
        self.num_cpus = max(1, lib.libbpf_num_possible_cpus())

    @classmethod
    def open(cls) -> Kernel | str:
        """The kernel oracle, or the reason it is unavailable."""
        if os.geteuid() != 0:
            return "the kernel reference needs root (BPF_PROG_LOAD, BPF_PROG_TEST_RUN)"
        path = ctypes.util.find_library("bpf")
        if path is None:
            return "the kernel reference needs libbpf.so (Debian: libbpf1)"
        try:
            lib = ctypes.CDLL(path, use_errno=True)
            _declare(lib)
        except (OSError, AttributeError) as exc:
            return f"cannot use {path}: {exc}"
        return cls(lib)

    def load(self, path: Path, program: str, prog_type: str | None, flags: int = 0,
             also: Collection[str] = ()) -> KernelProgram | str:
        """``program`` of the object at ``path`` (alone but for the programs named in ``also``,
        which its maps refer to; ``flags``: its BPF_F_* load flags), or why the kernel refused it
        (with the last line of the verifier's log)."""
        loaded = self._load(path, program, prog_type, flags, also, None)
        if not isinstance(loaded, int):
            return loaded
        # Loaded again with a log, only now: a log that overflows its buffer fails the load.
        log = ctypes.create_string_buffer(LOG_SIZE)
        self._load(path, program, prog_type, flags, also, log)
        why = [line for line in log.value.decode(errors="replace").splitlines()
               if line and not line.startswith(("processed ", "verification time", "stack depth "))]
        return f"the kernel refuses it ({errno.errorcode.get(-loaded, str(loaded))})" + (f": {why[-1]}" if why else "")

    def _load(self, path: Path, program: str, prog_type: str | None, flags: int, also: Collection[str],
              log: ctypes.Array[ctypes.c_char] | None) -> KernelProgram | str | int:
        """The loaded program, why libbpf could not try, or the load's error (negative)."""
        lib = self.lib
        obj = lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            return f"libbpf cannot open the object ({errno.errorcode.get(ctypes.get_errno(), '?')})"
        chosen = 0
        p = lib.bpf_object__next_program(obj, None)
        while p:
            name = lib.bpf_program__name(p).decode()
            mine = name == program
            lib.bpf_program__set_autoload(p, mine or name in also)
            if mine:
                chosen = p
                if prog_type is not None:
                    lib.bpf_program__set_type(p, PROG_TYPE_NUMBERS[prog_type])
                if flags:
                    lib.bpf_program__set_flags(p, flags)
                if log is not None:
                    lib.bpf_program__set_log_buf(p, log, len(log))
                    lib.bpf_program__set_log_level(p, 1)
            p = lib.bpf_object__next_program(obj, p)
        m = lib.bpf_object__next_map(obj, None)
        while m:
            lib.bpf_map__set_pin_path(m, None)  # never pin: each load gets maps of its own
            m = lib.bpf_object__next_map(obj, m)
        if not chosen:
            lib.bpf_object__close(obj)
            return f"libbpf does not list a program {program!r}"
        rc = lib.bpf_object__load(obj)
        if rc != 0:
            lib.bpf_object__close(obj)
            return int(rc)
        return KernelProgram(self, obj, chosen, lib.bpf_program__type(chosen))


def cgroup2_root() -> Path | str:
    """Where cgroup v2 is mounted, or why there is none to use."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError as exc:
        return f"cannot read /proc/mounts: {exc}"
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2" and os.access(fields[1], os.W_OK):
            return Path(fields[1])
    return "no writable cgroup v2 mount"


@contextmanager
def new_cgroup(root: Path, name: str) -> Iterator[Path]:
    """A fresh cgroup below ``root``, removed afterwards (it must be empty by then)."""
    path = root / f"{name}-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


@contextmanager
def on_cpu0() -> Iterator[None]:
    """Run on CPU 0, so that per-CPU map values land where the comparison reads them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
