"""A long verification shows how far it got, and Ctrl-C stops it with KeyboardInterrupt."""

from __future__ import annotations

import _thread
import io
import signal
import threading

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from jitbpf.verifier import _progress, verify


def counted_loop(iterations: int) -> bytes:
    return assemble(f"mov r0, 0\nmov r1, 0\nadd r0, r1\nadd r1, 1\njlt r1, {iterations}, -3\nexit")


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Report from the first look at the clock on, at every look."""
    monkeypatch.setattr(_progress, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr(_progress, "REPORT_SECONDS", 0.0)


@pytest.mark.usefixtures("eager")
def test_the_callback_gets_growing_counts() -> None:
    counts: list[int] = []
    result = verify(counted_loop(5000), allow_loops=True, progress=counts.append)
    assert counts, "no progress reported"
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert 0 < counts[-1] <= result.insns_processed


def test_a_short_verification_reports_nothing() -> None:
    counts: list[int] = []
    verify(counted_loop(10), allow_loops=True, progress=counts.append)
    assert counts == []


@pytest.mark.usefixtures("eager")
def test_an_interrupt_from_the_callback_reaches_the_caller() -> None:
    def stop(_count: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        verify(counted_loop(5000), allow_loops=True, progress=stop)


def test_ctrl_c_stops_a_long_verification() -> None:
    # A loop that would take the whole complexity limit to reject; the interrupt comes first.
    # (Python's own handler, which interrupt_main needs: a background job's children ignore SIGINT.)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            verify(counted_loop(10_000_000), allow_loops=True, budget=10_000_000)
    except VerifierError:
        pytest.fail("the verification ended before the interrupt arrived")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("eager")
def test_a_terminal_sees_one_line_rewritten_then_erased() -> None:
    out = Terminal()
    progress = _progress.Progress(stream=out)
    assert progress.active
    progress.tick(4096)
    progress.tick(8192)
    progress.close()
    text = out.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 3 and "8,192 instructions" in text
    assert text.endswith("\r\x1b[K")


def test_a_pipe_sees_nothing() -> None:
    out = io.StringIO()
    progress = _progress.Progress(stream=out)
    assert not progress.active
    progress.close()
    assert out.getvalue() == ""
