"""bpf_strtol, bpf_strtoul, bpf_snprintf and bpf_trace_vprintk: both engines, and the kernel's
answers (XDP test runs write what the helper returned into the packet) where it is available."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.linux.elf import load_elf
from jitbpf.linux.stdhelpers import parse_strtox
from tests.kernel import Kernel
from tests.support import c_builder

Build = Callable[[str], Path]
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
STRTOX = """
static const char input[] = %s;
SEC("xdp") int prog(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    long res = 0;
    if (data + 16 > end)
        return 0;
    long rc = %s(input, %d, %d, (void *)&res);
    __builtin_memcpy(data, &res, 8);
    __builtin_memcpy(data + 8, &rc, 8);
    return XDP_TX;
}
"""
SNPRINTF = """
static const char fmt[] = %s;
static const char word[] = "abc";
SEC("xdp") int prog(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    char out[24] = {};
    unsigned long long args[3] = {(unsigned long long)-5, (unsigned long long)word, 0xbeef};
    if (data + 32 > end)
        return 0;
    long rc = bpf_snprintf(out, %d, fmt, args, sizeof(args));
    __builtin_memcpy(data, out, 24);
    __builtin_memcpy(data + 24, &rc, 8);
    return XDP_TX;
}
"""
STRINGS = ['"123"', '"  -42xyz"', '"0x1f"', '"017"', '"-"', '"abc"', '"18446744073709551615"',
           '"18446744073709551616"', '"9223372036854775808"', '"-9223372036854775808"', '"0x"', '"\\t+5"']


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("strings"), HEADER)


def same_everywhere(path: Path, kernel: Kernel | None, rc_at: int | None = None) -> bytes:
    """The packet after the run, the same in both engines and (when available) the kernel.

    The kernel checks a constant snprintf format when it loads the program; here a bad one makes
    the helper return -EINVAL (the 8 bytes at ``rc_at``) instead."""
    prog = load_elf(path).programs["prog"]
    frame = bytes(64)
    results = {prog.run(frame, engine=engine) for engine in ("interp", "jit")}
    assert len(results) == 1, results
    (action, after), = results
    if kernel is not None:
        loaded = kernel.load(path, "prog", None)
        if isinstance(loaded, str) and rc_at is not None:
            assert int.from_bytes(after[rc_at : rc_at + 8], "little", signed=True) == -22, loaded
            return bytes(after)
        assert not isinstance(loaded, str), loaded
        try:
            ref = loaded.run(frame)
            assert ref is not None
            assert (ref.retval, ref.packet) == (int(action), after)
        finally:
            loaded.close()
    return bytes(after)


@pytest.mark.parametrize("helper", ["bpf_strtol", "bpf_strtoul"])
@pytest.mark.parametrize("base", [0, 10, 16, 8, 3])
@pytest.mark.parametrize("text", STRINGS)
def test_strtox(build: Build, kernel: Kernel | None, helper: str, base: int, text: str) -> None:
    length = len(text.encode().decode("unicode_escape")) - 2
    same_everywhere(build(STRTOX % (text, helper, max(length, 1), base)), kernel)


@pytest.mark.parametrize(("fmt", "size"), [('"%d/%s/%x"', 24), ('"%d/%s/%x"', 5), ('"%lld|%s"', 24),
                                           ('"no args"', 24), ('"%d %d %d %d"', 24), ('"%q"', 24),
                                           ('"%5s|%-4x|"', 24), ('"%d/%s/%x"', 0)])
def test_snprintf(build: Build, kernel: Kernel | None, fmt: str, size: int) -> None:
    same_everywhere(build(SNPRINTF % (fmt, size)), kernel, rc_at=24)


def test_trace_vprintk_writes_the_trace(build: Build) -> None:
    path = build("""
SEC("xdp") int prog(struct xdp_md *ctx) { bpf_printk("%d %d %d %d", 1, 2, 3, 4); return XDP_PASS; }
""")
    prog = load_elf(path).programs["prog"]
    vm = prog.vm()
    lines: list[str] = []
    assert vm.std is not None
    vm.std.emit = lines.append  # type: ignore[method-assign]
    vm.run_xdp(bytes(64))
    assert lines == ["1 2 3 4"]


@pytest.mark.parametrize(("text", "base", "want"), [
    (b"  -0x10", 0, (16, True, 7)), (b"077", 0, (0o77, False, 3)), (b"", 10, -22), (b"12", 7, -22),
    (b"99999999999999999999", 10, -34), (b"z", 16, -22),
])
def test_parse_strtox(text: bytes, base: int, want: tuple[int, bool, int] | int) -> None:
    assert parse_strtox(text, base) == want
