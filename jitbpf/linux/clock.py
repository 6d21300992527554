"""The clock a VM's programs read (bpf_ktime_get_ns and its kin) and its timers expire by.

Until the caller first moves it, the clock is the host's: the helpers read the host's clocks
(in C, from JIT code). ``VM.advance_time`` makes it virtual: it then stands still at the host's
monotonic time of that moment, and moves only by what the caller advances it, so a test decides
when time passes and timers fire. The other clocks keep their distance to the monotonic one as
it was when the clock became virtual (boot time, real time, TAI)."""

from __future__ import annotations

import time
from collections.abc import Callable

from jitbpf.errors import ExecutionError
from jitbpf.helpers import Helper
from jitbpf.isa import MASK64
from jitbpf.linux.helperids import HelperId as H

CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_TAI = 0, 1, 7, 11
CLOCK_MONOTONIC_COARSE = 6
HZ = 250  # jiffies per second (what the native bpf_jiffies64 counts too)
_CLOCKS = (CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_TAI)


class Clock:
    """One VM's clock: the host's, or virtual (``virtual``) once the caller moved it."""

    def __init__(self) -> None:
        self.virtual = False
        self._monotonic = 0  # the virtual clock's monotonic time, ns
        self._offsets: dict[int, int] = {}  # clock id -> its time less the monotonic time

    def now(self, clock: int = CLOCK_MONOTONIC) -> int:
        """The time of ``clock`` (a CLOCK_* id) in nanoseconds."""
        if clock == CLOCK_MONOTONIC_COARSE:
            clock = CLOCK_MONOTONIC
        if not self.virtual:
            return time.clock_gettime_ns(clock)
        return self._monotonic + self._offsets.get(clock, 0)

    def offset(self, clock: int) -> int:
        """How far ``clock`` is ahead of the monotonic clock (virtual clocks only)."""
        return self._offsets.get(clock, 0)

    def make_virtual(self) -> bool:
        """Stop following the host: the clock stands at the host's time now. Returns whether it
        was the host's until now."""
        if self.virtual:
            return False
        mono = time.clock_gettime_ns(CLOCK_MONOTONIC)
        self._offsets = {c: time.clock_gettime_ns(c) - mono for c in _CLOCKS}
        self._offsets[CLOCK_MONOTONIC] = 0
        self._monotonic, self.virtual = mono, True
        return True

    def set_monotonic(self, ns: int) -> None:
        """Move the virtual clock to monotonic time ``ns`` (never back)."""
        if ns < self._monotonic:
            raise ExecutionError(f"the clock goes forward only: {ns} ns is before {self._monotonic} ns")
        self._monotonic = ns

    @property
    def monotonic(self) -> int:
        return self.now(CLOCK_MONOTONIC)

    def jiffies(self) -> int:
        return self.now(CLOCK_BOOTTIME) // (1_000_000_000 // HZ)


def clock_helpers(clock: Clock) -> list[Helper]:
    """bpf_ktime_get_ns and its kin reading ``clock``, in Python for both engines (the native
    ones read the host's clocks): what a VM uses once its clock is virtual."""

    def reader(read: Callable[[], int]) -> Callable[[int, int, int, int, int], int]:
        def fn(_a: int, _b: int, _c: int, _d: int, _e: int) -> int:
            return read() & MASK64

        return fn

    def of(clock_id: int) -> Callable[[], int]:
        return lambda: clock.now(clock_id)

    return [
        Helper(H.KTIME_GET_NS, "bpf_ktime_get_ns", reader(of(CLOCK_MONOTONIC))),
        Helper(H.KTIME_GET_BOOT_NS, "bpf_ktime_get_boot_ns", reader(of(CLOCK_BOOTTIME))),
        Helper(H.KTIME_GET_COARSE_NS, "bpf_ktime_get_coarse_ns", reader(of(CLOCK_MONOTONIC))),
        Helper(H.KTIME_GET_TAI_NS, "bpf_ktime_get_tai_ns", reader(of(CLOCK_TAI))),
        Helper(H.JIFFIES64, "bpf_jiffies64", reader(clock.jiffies)),
    ]
