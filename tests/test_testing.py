"""The pytest testing layer (jitbpf.testing): loading C or objects, runs and their outcomes, the
BPF_PROG_TEST_RUN-shaped call, and assertion messages that show the packet and the decision."""

from __future__ import annotations

import ctypes
from pathlib import Path

import dpkt
import pytest

from jitbpf import XdpAction, testing
from jitbpf.errors import ElfError
from jitbpf.linux.programs import XdpMd
from tests.test_elf import CLANG, EXAMPLES
from tests.test_usability import SHOW_C

INCLUDE = [EXAMPLES / "include"]

# Drops frames whose first byte is 1; writes 0xee over byte 1 of frames whose first byte is 2.
BRANCHY_C = r"""
#include "jitbpf_helpers.h"

SEC("xdp")
int branchy(struct xdp_md *ctx)
{
    unsigned char *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
    if (data + 2 > data_end)
        return XDP_PASS;
    if (data[0] == 1)
        return XDP_DROP;
    if (data[0] == 2)
        data[1] = 0xee;
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""

TWO_C = r"""
#include "jitbpf_helpers.h"
SEC("xdp") int first(struct xdp_md *ctx) { return XDP_PASS; }
SEC("xdp") int second(struct xdp_md *ctx) { return XDP_DROP; }
char LICENSE[] SEC("license") = "GPL";
"""

pytestmark = pytest.mark.skipif(CLANG is None, reason="clang is not installed (apt-get install clang)")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("testing-src")
    for name, text in (("branchy", BRANCHY_C), ("two", TWO_C), ("show", SHOW_C)):
        (where / f"{name}.c").write_text(text)
    return where


@pytest.fixture(scope="module")
def branchy(sources: Path) -> testing.Harness:
    return testing.harness(sources / "branchy.c", include=INCLUDE)


def test_packet_bytes_takes_bytes_and_packet_objects() -> None:
    frame = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0806, data=b"x")
    assert testing.packet_bytes(frame) == bytes(frame)
    assert testing.packet_bytes(memoryview(b"ab")) == b"ab"
    with pytest.raises(TypeError, match="not float"):
        testing.packet_bytes(1.5)  # type: ignore[arg-type]


def test_compile_errors_are_elf_errors(sources: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (sources / "broken.c").write_text("int f( {")
    with pytest.raises(ElfError, match=r"clang failed on .*broken\.c:\n.*error"):
        testing.load(sources / "broken.c")
    with pytest.raises(ElfError, match="cannot read"):
        testing.load(sources / "missing.c")
    monkeypatch.setenv("CLANG", "no-such-clang")
    with pytest.raises(ElfError, match="compiling C needs clang"):
        testing.compile_c(sources / "branchy.c", include=INCLUDE)


def test_objects_are_compiled_once(sources: Path, tmp_path: Path) -> None:
    first = testing.compile_c(sources / "branchy.c", include=INCLUDE, out_dir=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert testing.compile_c(sources / "branchy.c", include=INCLUDE, out_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert testing.compile_c(sources / "branchy.c", include=INCLUDE, cflags=["-DX=1"], out_dir=tmp_path) != first


def test_choosing_the_program(sources: Path) -> None:
    with pytest.raises(ElfError, match=r"has 2 programs \(first, second\): name the one to test"):
        testing.harness(sources / "two.c", include=INCLUDE)
    obj = testing.load(sources / "two.c", include=INCLUDE)
    assert testing.harness(obj, "second").run(b"").verdict == "XDP_DROP"
    with pytest.raises(ValueError, match="engine must be"):
        testing.harness(obj, "first", engine="fast")


def test_outcome_and_decision(branchy: testing.Harness) -> None:
    """A drop is decided by the compare with 1, a pass of a 3 by a later compare; the JIT gives the
    same result, without the path."""
    drop, passed = branchy.run(bytes([1, 0, 0])), branchy.run(bytes([3, 0, 0]))
    testing.assert_verdict(drop, XdpAction.DROP)
    testing.assert_verdict(passed, XdpAction.PASS)
    assert drop.decision is not None and passed.decision is not None
    assert drop.decision.branch_pc is not None and passed.decision.branch_pc is not None
    assert drop.decision.branch_text.startswith(("jeq", "jne")) and ", 1, +" in drop.decision.branch_text
    assert drop.decision.taken is drop.decision.branch_text.startswith("jeq")
    assert passed.decision.branch_pc > drop.decision.branch_pc and drop.decision.exit_text == "exit"
    assert str(drop.decision).startswith(f"decided at pc {drop.decision.branch_pc} ({drop.decision.branch_text}: ")
    assert drop.ctx["data_end"] - drop.ctx["data"] == 3
    jit = testing.harness(branchy.program.obj, engine="jit").run(bytes([1, 0, 0]))
    assert (jit.retval, jit.packet, jit.decision) == (drop.retval, drop.packet, None)


def test_failure_messages_show_packet_and_decision(branchy: testing.Harness) -> None:
    outcome = branchy.run(bytes([1, 0x41, 0x42]))
    with pytest.raises(AssertionError) as info:
        testing.assert_verdict(outcome, XdpAction.PASS)
    message = str(info.value)
    assert message.startswith("expected PASS (2), got XDP_DROP\nbranchy returned XDP_DROP (r0 = 0x1)\n  decided at pc ")
    assert "packet in (3 bytes):\n    0000  01 41 42" in message and "  .AB" in message
    with pytest.raises(AssertionError, match="expected 7, got XDP_DROP"):
        testing.assert_verdict(outcome, 7)
    with pytest.raises(AssertionError, match="expected TX, got"):
        testing.assert_verdict(outcome, "TX")


def test_packet_assertions(branchy: testing.Harness) -> None:
    outcome = branchy.run(bytes([2, 0, 9]))
    testing.assert_packet(outcome, bytes([2, 0xEE, 9]))
    with pytest.raises(AssertionError) as info:
        testing.assert_packet(outcome, bytes([2, 0, 9]))
    message = str(info.value)
    assert message.startswith("packet after the run differs at byte 1 (got 3 bytes, expected 3)")
    assert "packet out (3 bytes):\n    0000  02 ee 09" in message
    frame = branchy.run(bytes([2]) + bytes(13)).parsed()  # bytes come back as a dpkt Ethernet frame
    assert isinstance(frame, dpkt.ethernet.Ethernet) and frame.dst == bytes([2, 0xEE, 0, 0, 0, 0])


def test_trace_and_events_of_one_run(sources: Path) -> None:
    with testing.harness(sources / "show.c", include=INCLUDE) as show:
        first, second = show.run(bytes(4)), show.run(bytes(6))
    assert first.trace == ("packet of 4 bytes",) and second.trace == ("packet of 6 bytes",)
    assert second.events["EVENTS"].records == (bytes([6, 0, 0, 0, 7, 0, 0, 0]),)
    testing.assert_traced(second, "of 6")
    with pytest.raises(AssertionError, match="no trace line contains 'of 5'"):
        testing.assert_traced(second, "of 5")


def test_kernel_shaped_test_run(branchy: testing.Harness) -> None:
    result = branchy.test_run(bytes([2, 0, 9, 9]), data_size_out=2, repeat=0)
    assert (result.retval, result.data_out, result.repeat) == (XdpAction.PASS, bytes([2, 0xEE]), 1)
    assert len(result.ctx_out) == ctypes.sizeof(XdpMd) and result.duration > 0
    ctx = XdpMd(ingress_ifindex=5)
    out = branchy.test_run(bytes([1, 0]), ctx_in=bytes(ctx), repeat=3)
    assert out.retval == XdpAction.DROP and XdpMd.from_buffer_copy(out.ctx_out).ingress_ifindex == 5
    with pytest.raises(ValueError, match="ctx_in has 100 bytes"):
        branchy.test_run(b"", ctx_in=bytes(100))


def test_programs_without_packets() -> None:
    with testing.harness(EXAMPLES / "kprobe.c", include=INCLUDE) as probe:
        outcome = probe.run(di=3, dx=0o100)
        assert outcome.packet is None and outcome.verdict is None
        assert probe["open_flags"][0o100] == 1
        with pytest.raises(ValueError, match="takes no packet"):
            outcome.parsed()
        with pytest.raises(AssertionError, match="takes no packet"):
            testing.assert_packet(outcome, b"")
