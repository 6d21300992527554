"""The running kernel's JIT as a reference column: load eBPF bytecode with ``BPF_PROG_LOAD`` and time
it with ``BPF_PROG_TEST_RUN`` (``repeat``), through the bpf(2) system call. Needs root (or
CAP_BPF) and a kernel with BPF; ``open_kernel()`` says why not when it cannot."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
from dataclasses import dataclass

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_PROG_LOAD = 5
_PROG_TEST_RUN = 10
PROG_TYPE_XDP = 6
_LOG_SIZE = 1 << 20
_LOG_STATS = 4  # BPF_LOG_STATS: the log ends with the verifier's own counts and time
_STATS = re.compile(r"processed (\d+) insns.*?verification time (\d+) usec|verification time (\d+) usec.*?"
                    r"processed (\d+) insns", re.S)


class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint8 * 96)]  # later fields, zero


class _TestRun(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class KernelError(Exception):
    """The kernel refused (or cannot do) what was asked."""


@dataclass(frozen=True)
class Kernel:
    """The bpf(2) system call of this machine."""

    libc: ctypes.CDLL
    number: int

    def _bpf(self, cmd: int, attr: ctypes.Structure) -> int:
        ret = int(self.libc.syscall(self.number, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
        if ret < 0:
            err = ctypes.get_errno()
            raise KernelError(f"bpf({cmd}): {os.strerror(err)}")
        return ret

    def load(self, code: bytes, prog_type: int = PROG_TYPE_XDP) -> int:
        """A program fd (close it with ``os.close``); the verifier's log in the error if refused."""
        insns = ctypes.create_string_buffer(code, len(code))
        license_ = ctypes.create_string_buffer(b"GPL")
        attr = _ProgLoad(prog_type=prog_type, insn_cnt=len(code) // 8, insns=ctypes.addressof(insns),
                         license=ctypes.addressof(license_))
        try:
            return self._bpf(_PROG_LOAD, attr)
        except KernelError as exc:
            # Again with the log, for the reason (a log too small for the whole walk is cut).
            log = ctypes.create_string_buffer(_LOG_SIZE)
            attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log)
            with contextlib.suppress(KernelError):
                os.close(self._bpf(_PROG_LOAD, attr))
            tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise KernelError(f"{exc}: {' / '.join(tail)}") from None

    def verification(self, code: bytes, prog_type: int = PROG_TYPE_XDP) -> tuple[float, int]:
        """How long the kernel's verifier took over ``code`` (seconds, as it measures itself) and
        how many instructions it processed; KernelError if it refuses the program."""
        insns = ctypes.create_string_buffer(code, len(code))
        license_ = ctypes.create_string_buffer(b"GPL")
        log = ctypes.create_string_buffer(1 << 16)
        attr = _ProgLoad(prog_type=prog_type, insn_cnt=len(code) // 8, insns=ctypes.addressof(insns),
                         license=ctypes.addressof(license_), log_level=_LOG_STATS, log_size=len(log),
                         log_buf=ctypes.addressof(log))
        try:
            os.close(self._bpf(_PROG_LOAD, attr))
        except KernelError as exc:
            tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise KernelError(f"{exc}: {' / '.join(tail)}") from None
        found = _STATS.search(log.value.decode(errors="replace"))
        if found is None:
            raise KernelError("the kernel's log has no verification statistics")
        processed, usec = (found[1], found[2]) if found[1] else (found[4], found[3])
        return int(usec) * 1e-6, int(processed)

    def test_run(self, fd: int, data: bytes, repeat: int) -> tuple[int, int]:
        """(r0, mean nanoseconds per run over ``repeat`` runs)."""
        buf = ctypes.create_string_buffer(data, len(data))
        attr = _TestRun(prog_fd=fd, data_size_in=len(data), data_in=ctypes.addressof(buf), repeat=repeat)
        self._bpf(_PROG_TEST_RUN, attr)
        return int(attr.retval), int(attr.duration)


def open_kernel() -> Kernel | str:
    """The kernel's BPF, or the reason it cannot be used here."""
    number = _SYS_BPF.get(platform.machine())
    if number is None or platform.system() != "Linux":
        return f"no bpf(2) on {platform.system()}/{platform.machine()}"
    if os.geteuid() != 0:
        return "needs root (BPF_PROG_LOAD and BPF_PROG_TEST_RUN)"
    kernel = Kernel(ctypes.CDLL(None, use_errno=True), number)
    try:
        os.close(kernel.load(bytes.fromhex("b700000000000000" "9500000000000000")))
    except KernelError as exc:
        return f"the kernel refuses BPF programs ({exc})"
    except OSError as exc:
        return f"no BPF here ({errno.errorcode.get(exc.errno or 0, exc)})"
    return kernel
