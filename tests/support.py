"""What several test modules share: the engines to run on, loading an assembled program with its
maps and the standard helpers, building C programs, and checking a packet program against the
kernel."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import MapError, VerifierError
from jitbpf.linux.elf import BtfKind, load_elf
from jitbpf.linux.maps import BpfMap
from jitbpf.vm import VM
from tests.kernel import Kernel

ENGINES = ("interp", "jit")  # every behaviour is checked in both


def load(text: str, *maps: BpfMap, **options: object) -> VM:
    """A VM of ``text`` with ``maps`` under handles 1, 2, ... (``lddw rX, map:NAME``) and the
    standard Linux helpers."""
    handles = {m.name: i + 1 for i, m in enumerate(maps)}
    vm = VM(assemble(text, maps=handles), **options)  # type: ignore[arg-type]
    for m in maps:
        vm.add_map(m, handles[m.name])
    vm.use_standard_helpers()
    return vm


def run(vm: VM, engine: str, mem: bytes | bytearray | None = None) -> int:
    return vm.execute(mem) if engine == "interp" else vm.execute_jit(mem)


def check_verdict(vm: VM, accepted: bool, match: str | None = None) -> None:
    """``vm.check()`` passes when ``accepted``, else raises a VerifierError (matching ``match``)."""
    if accepted:
        vm.check()
        return
    with pytest.raises(VerifierError, match=match):
        vm.check()


def errno_of(fn: Callable[..., object], *args: object) -> int:
    """The errno of the MapError ``fn(*args)`` raises, 0 if it succeeds."""
    try:
        fn(*args)
    except MapError as exc:
        return exc.errno
    return 0


def s64(x: int) -> int:
    """``x`` (an unsigned 64-bit result) as a signed value."""
    return x - (1 << 64) if x >> 63 else x


CLANG = shutil.which("clang")
LIBBPF_HEADERS = Path("/usr/include/bpf/bpf_core_read.h")


def c_builder(out_dir: Path, header: str) -> Callable[[str], Path]:
    """Compile C bodies (after ``header``, with a GPL license) to eBPF objects in ``out_dir``, each
    body once; skips the test when clang or libbpf's headers are missing."""
    if CLANG is None or not LIBBPF_HEADERS.exists():
        pytest.skip("clang and libbpf's headers are needed (apt-get install clang libbpf-dev)")
    clang = CLANG
    built: dict[str, Path] = {}

    def compile_source(body: str) -> Path:
        if body in built:
            return built[body]
        src = out_dir / f"p{len(built)}.c"
        src.write_text(header + body + '\nchar LICENSE[] SEC("license") = "GPL";\n')
        out = src.with_suffix(".o")
        done = subprocess.run([clang, "-target", "bpf", "-O2", "-g", "-c", str(src), "-o", str(out)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        built[body] = out
        return out

    return compile_source


def packet_run_everywhere(path: Path, frame: bytes, kernel: Kernel | None) -> tuple[int, bytes]:
    """The 32-bit return value and the packet after running the object's ``prog`` on ``frame``:
    the same in both engines and, where the kernel is available, the kernel's BPF_PROG_TEST_RUN.
    Each engine runs a fresh object (maps and timers of its own), as the kernel's run does."""
    results = set()
    for engine in ENGINES:
        retval, after = load_elf(path).programs["prog"].run(frame, engine=engine)
        results.add((int(retval) & 0xFFFF_FFFF, bytes(after)))
    assert len(results) == 1, results
    if kernel is not None:
        loaded = kernel.load(path, "prog", None)
        assert not isinstance(loaded, str), loaded
        try:
            ref = loaded.run(frame)
            assert ref is not None
            assert results == {(ref.retval & 0xFFFF_FFFF, ref.packet)}
        finally:
            loaded.close()
    (result,) = results
    return result


class BtfBuilder:
    """Encodes BTF type records (the kernel's format) for a hand-made target."""

    def __init__(self) -> None:
        self.types = bytearray()
        self.strings = bytearray(b"\0")
        self.count = 0

    def _name(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(self, name: str, kind: BtfKind, vlen: int, size_or_type: int, extra: bytes = b"") -> int:
        self.types += struct.pack("<III", self._name(name), kind << 24 | vlen, size_or_type) + extra
        self.count += 1
        return self.count

    def integer(self, name: str, size: int, signed: bool = False) -> int:
        return self._add(name, BtfKind.INT, 0, size, struct.pack("<I", (1 if signed else 0) << 24 | size * 8))

    def ptr(self, target: int) -> int:
        return self._add("", BtfKind.PTR, 0, target)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]]) -> int:
        rows = b"".join(struct.pack("<III", self._name(n), t, off * 8) for n, t, off in members)
        return self._add(name, BtfKind.STRUCT, len(members), size, rows)

    def proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        rows = b"".join(struct.pack("<II", self._name(n), t) for n, t in params)
        return self._add("", BtfKind.FUNC_PROTO, len(params), ret, rows)

    def func(self, name: str, proto: int) -> int:
        return self._add(name, BtfKind.FUNC, 1, proto)

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, BtfKind.TYPEDEF, 0, target)

    def blob(self) -> bytes:
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return header + bytes(self.types) + bytes(self.strings)
