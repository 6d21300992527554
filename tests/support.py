"""What several test modules share: the engines to run on, and loading an assembled program with
its maps and the standard helpers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import MapError
from jitbpf.maps import BpfMap
from jitbpf.vm import VM

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
    """Compile C bodies (after ``header``, with a GPL license) to eBPF objects in ``out_dir``;
    skips the test when clang or libbpf's headers are missing."""
    if CLANG is None or not LIBBPF_HEADERS.exists():
        pytest.skip("clang and libbpf's headers are needed (apt-get install clang libbpf-dev)")
    clang = CLANG

    def compile_source(body: str) -> Path:
        src = out_dir / f"p{len(list(out_dir.iterdir()))}.c"
        src.write_text(header + body + '\nchar LICENSE[] SEC("license") = "GPL";\n')
        out = src.with_suffix(".o")
        done = subprocess.run([clang, "-target", "bpf", "-O2", "-g", "-c", str(src), "-o", str(out)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return out

    return compile_source
