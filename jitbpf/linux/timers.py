"""bpf_timer: the timer a map value holds, as the kernel's helpers keep it. A timer is
initialised for a clock, given a callback (a function of the program), started and cancelled; a
run never waits for one, so a started timer stays armed (its callback would run later, outside
the run, as the kernel's do) until cancelled. The timers' state lives beside the maps, keyed by
the address of their ``struct bpf_timer``: the value's bytes stay as the program left them, as a
kernel map dump shows them (zero). A timer goes with its map element: deleting the element, or
updating it (which in the kernel replaces a hash map's element and frees an array value's special
fields), frees the timer, which a new bpf_timer_init may then set up again."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass

from jitbpf._native import native
from jitbpf.helpers import Helper
from jitbpf.isa import MASK64
from jitbpf.linux.helperids import HelperId as H

MAX_CLOCKS = 16
CLOCKS = frozenset({0, 1, 7})  # CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME
BPF_F_TIMER_ABS, BPF_F_TIMER_CPU_PIN = 1, 2


@dataclass
class Timer:
    """One initialised timer: its map, its element's generation (jb_map_elem_gen: it changes when
    the element is freed or replaced), its clock, its callback (0: none yet) and whether it is armed."""

    map_address: int
    generation: int
    clock: int
    callback: int = 0
    armed: bool = False


class Timers:
    """The initialised timers of one VM's maps, by the address of their ``struct bpf_timer``."""

    def __init__(self) -> None:
        self.by_address: dict[int, Timer] = {}
        self.lock = threading.Lock()

    def _live(self, timer: int) -> Timer | None:
        """The timer at address ``timer``, unless its element was freed since (then it is gone);
        the lock is held."""
        found = self.by_address.get(timer)
        if found is not None and native().lib.jb_map_elem_gen(found.map_address, timer) != found.generation:
            del self.by_address[timer]
            return None
        return found

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

        def start(timer: int, _nsecs: int, flags: int, _d: int, _e: int) -> int:
            if flags & ~(BPF_F_TIMER_ABS | BPF_F_TIMER_CPU_PIN) & MASK64:
                return err(errno.EINVAL)

            def arm(t: Timer) -> int:
                if not t.callback:
                    return err(errno.EINVAL)
                t.armed = True
                return 0

            return on_timer(timer, arm)

        def cancel(timer: int, _b: int, _c: int, _d: int, _e: int) -> int:
            def stop(t: Timer) -> int:
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
