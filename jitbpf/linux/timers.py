"""bpf_timer: the timer a map value holds, as the kernel's helpers keep it. A timer is
initialised for a clock, given a callback (a function of the program), started and cancelled.
A run never waits for one: a started timer stays armed until its time comes on the VM's clock
(``jitbpf.linux.clock``), which the caller moves with ``VM.advance_time``; the timers whose time
came then fire in the order of their expiry, each callback a run of its own (map, key, value as
its arguments, as the kernel's), between runs, never inside one. A callback may start its own
timer again (a periodic timer), which then fires again within the same advance if its new time
comes before the advance's end. The timers' state lives beside the maps, keyed by the address of
their ``struct bpf_timer``: the value's bytes stay as the program left them, as a kernel map dump
shows them (zero). A timer goes with its map element: deleting the element, or updating it
(which in the kernel replaces a hash map's element and frees an array value's special fields),
frees the timer, which then never fires, and which a new bpf_timer_init may set up again."""

from __future__ import annotations

import errno
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jitbpf._native import native
from jitbpf.errors import ExecutionError
from jitbpf.helpers import Helper
from jitbpf.isa import MASK64
from jitbpf.linux.clock import Clock
from jitbpf.linux.helperids import HelperId as H
from jitbpf.memory import Region
from jitbpf.sandbox import Pages

MAX_CLOCKS = 16
CLOCKS = frozenset({0, 1, 7})  # CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME
BPF_F_TIMER_ABS, BPF_F_TIMER_CPU_PIN = 1, 2
MAX_FIRINGS = 100_000  # callbacks one advance of the clock may run (a timer re-armed at once would never stop)


class CallbackRunner(Protocol):
    """What runs a timer's callback: the VM (``VM.run_async_callback``)."""

    def reachable_maps(self) -> list[Any]: ...

    def run_async_callback(self, address: int, args: tuple[int, int, int], extra: Sequence[Region], *,
                           engine: str) -> int: ...


@dataclass
class Timer:
    """One initialised timer: its map, its element's generation (jb_map_elem_gen: it changes when
    the element is freed or replaced), its clock, its callback (0: none yet), whether it is armed,
    and if so when it expires (ns of its clock) and the order it was armed in."""

    map_address: int
    generation: int
    clock: int
    callback: int = 0
    armed: bool = False
    expires: int = 0
    order: int = 0


class Timers:
    """The initialised timers of one VM's maps, by the address of their ``struct bpf_timer``,
    and the clock they expire by."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.by_address: dict[int, Timer] = {}
        self.lock = threading.Lock()
        self.clock = clock if clock is not None else Clock()
        self.running = 0  # the timer whose callback runs now (0: none)
        self._order = itertools.count()
        self._key_pages: Pages | None = None  # where a firing timer's key is given to its callback

    def _live(self, timer: int) -> Timer | None:
        """The timer at address ``timer``, unless its element was freed since (then it is gone);
        the lock is held."""
        found = self.by_address.get(timer)
        if found is not None and native().lib.jb_map_elem_gen(found.map_address, timer) != found.generation:
            del self.by_address[timer]
            return None
        return found

    def armed(self) -> dict[int, Timer]:
        """The live armed timers, by address."""
        with self.lock:
            return {a: t for a in list(self.by_address) if (t := self._live(a)) is not None and t.armed}

    def _next_due(self, until: int) -> tuple[int, int, Timer] | None:
        """The armed timer that expires first, no later than monotonic time ``until``: (its
        expiry on the monotonic clock, its address, it), or None."""
        best: tuple[int, int, int, Timer] | None = None
        for address, t in self.armed().items():
            due = max(t.expires - self.clock.offset(t.clock), 0)
            if due <= until and (best is None or (due, t.order) < best[:2]):
                best = (due, t.order, address, t)
        return None if best is None else (best[0], best[2], best[3])

    def advance(self, vm: CallbackRunner, ns: int, *, engine: str = "interp") -> int:
        """Move the clock ``ns`` nanoseconds on, firing each timer whose time comes, in order,
        the clock standing at its expiry while its callback runs in ``engine``. Returns how many
        callbacks ran."""
        if ns < 0:
            raise ExecutionError(f"time goes forward only: cannot advance the clock by {ns} ns")
        if self.running:
            raise ExecutionError("advance_time() was called from a timer's callback: timers fire between runs")
        self.clock.make_virtual()
        until = self.clock.monotonic + ns
        fired = 0
        while (due := self._next_due(until)) is not None:
            if fired == MAX_FIRINGS:
                raise ExecutionError(f"timers fired {MAX_FIRINGS} times in one advance of the clock: a callback "
                                     "that starts its timer again at once never lets time move on")
            when, address, t = due
            self.clock.set_monotonic(max(when, self.clock.monotonic))
            t.armed = False
            self._fire(vm, address, t, engine)
            fired += 1
        self.clock.set_monotonic(until)
        return fired

    def _fire(self, vm: CallbackRunner, address: int, t: Timer, engine: str) -> None:
        """Run ``t``'s callback with its map, its element's key and its value, as the kernel does."""
        bpf_map = next((m for m in vm.reachable_maps() if m.address == t.map_address), None)
        if bpf_map is None or bpf_map.timer_off is None:
            return  # its map left the VM: nothing holds the timer any more
        size = max(bpf_map.key_size, 1)
        if self._key_pages is None or self._key_pages.size < size:
            self._key_pages = Pages(size)  # program memory (JIT code reads it unchecked where proven)
        pages = self._key_pages
        if not native().lib.jb_map_elem_key(t.map_address, address, native().ffi.cast("uint8_t *", pages.address)):
            return  # its element is gone (the generation check missed nothing: no callback runs)
        region = Region(pages.address, size, pages.view[:size], False, "timer key")
        self.running = address
        try:
            vm.run_async_callback(t.callback, (t.map_address, region.base, address - bpf_map.timer_off), [region],
                                  engine=engine)
        finally:
            self.running = 0
            region.view.release()

    def helpers(self) -> list[Helper]:
        """bpf_timer_init, bpf_timer_set_callback, bpf_timer_start and bpf_timer_cancel on these timers."""

        def err(code: int) -> int:
            return -code & MASK64

        def init(timer: int, map_address: int, flags: int, _d: int, _e: int) -> int:
            clock = flags & (MAX_CLOCKS - 1)
            if flags & MASK64 >= MAX_CLOCKS or clock not in CLOCKS:
                return err(errno.EINVAL)
            with self.lock:
                if self._live(timer) is not None:
                    return err(errno.EBUSY)
                self.by_address[timer] = Timer(map_address, native().lib.jb_map_elem_gen(map_address, timer), clock)
            return 0

        def on_timer(timer: int, change: Callable[[Timer], int]) -> int:
            with self.lock:
                found = self._live(timer)
                return err(errno.EINVAL) if found is None else change(found)

        def set_callback(timer: int, callback: int, _c: int, _d: int, _e: int) -> int:
            def give(t: Timer) -> int:
                t.callback = callback
                return 0

            return on_timer(timer, give)

        def start(timer: int, nsecs: int, flags: int, _d: int, _e: int) -> int:
            if flags & ~(BPF_F_TIMER_ABS | BPF_F_TIMER_CPU_PIN) & MASK64:
                return err(errno.EINVAL)

            def arm(t: Timer) -> int:
                if not t.callback:
                    return err(errno.EINVAL)
                base = 0 if flags & BPF_F_TIMER_ABS else self.clock.now(t.clock)
                t.armed, t.expires, t.order = True, base + (nsecs & MASK64), next(self._order)
                return 0

            return on_timer(timer, arm)

        def cancel(timer: int, _b: int, _c: int, _d: int, _e: int) -> int:
            def stop(t: Timer) -> int:
                if timer == self.running:
                    return err(errno.EDEADLK)  # a callback cannot cancel its own timer (the kernel's)
                # It also forgets the callback, as the kernel's does: a start needs a new one.
                was, t.armed, t.callback = t.armed, False, 0
                return int(was)  # 1: it was armed

            return on_timer(timer, stop)

        return [
            Helper(H.TIMER_INIT, "bpf_timer_init", init, ("timer", "map", "scalar")),
            Helper(H.TIMER_SET_CALLBACK, "bpf_timer_set_callback", set_callback, ("timer", "async_callback")),
            Helper(H.TIMER_START, "bpf_timer_start", start, ("timer", "scalar", "scalar")),
            Helper(H.TIMER_CANCEL, "bpf_timer_cancel", cancel, ("timer",)),
        ]
