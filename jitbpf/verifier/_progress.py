"""Progress of a long verification: a count of processed instructions, on a terminal or to a callback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressCallback = Callable[[int], None]  # called with the number of instructions processed so far

QUIET_SECONDS = 1.0  # a verification shorter than this reports nothing
REPORT_SECONDS = 0.2  # at most one report per this interval after that
CHECK_EVERY = 4096  # processed instructions between two looks at the clock


class Progress:
    """Reports how far a verification got once it has run for ``QUIET_SECONDS``.

    With a callback, the callback gets each count; without one, the count is written to
    ``stream`` (standard error by default) when it is a terminal, as one line rewritten in
    place and erased at the end.
    """

    def __init__(self, callback: ProgressCallback | None = None, stream: TextIO | None = None) -> None:
        self.callback = callback
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = callback is None and _isatty(self.stream)
        self.start = time.monotonic()
        self.next_report = self.start + QUIET_SECONDS
        self.shown = False  # a line is on the terminal, to be erased at the end

    @property
    def active(self) -> bool:
        """Whether anyone listens (else the walk need not look at the clock)."""
        return self.callback is not None or self.terminal

    def tick(self, processed: int) -> None:
        now = time.monotonic()
        if now < self.next_report:
            return
        self.next_report = now + REPORT_SECONDS
        if self.callback is not None:
            self.callback(processed)
            return
        self.stream.write(f"\rverifying: {processed:,} instructions processed ({now - self.start:.0f} s)")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
