"""What a run left to be seen besides r0: the ``bpf_trace_printk`` lines and the records programs
sent to perf event arrays and ring buffers, collected from a VM after it ran."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jitbpf.linux.maps import PerfEventArray, RingBuf

if TYPE_CHECKING:
    from jitbpf.vm import VM

RECORDS_SHOWN = 10  # records per map in the text report; the JSON has them all


@dataclass(frozen=True)
class Events:
    """The records one perf event array or ring buffer held, taken out of it in order."""

    map_name: str
    kind: str  # "perf_event_array" or "ringbuf"
    records: tuple[Any, ...]  # bytes, or what the map's ``event_type`` decodes them to
    lost: int = 0  # records a full perf ring dropped

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": len(self.records), "lost": self.lost,
                "records": [plain(r) for r in self.records]}


@dataclass(frozen=True)
class Output:
    """Trace lines (without their final newline) and event records, per map name."""

    trace: tuple[str, ...] = ()
    events: dict[str, Events] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.trace or any(e.records or e.lost for e in self.events.values()))

    def lines(self) -> list[str]:
        """The report printed after a run: ``trace: ...`` lines, then each map's records."""
        out = [f"trace: {line}" for line in self.trace]
        for name, ev in self.events.items():
            if not ev.records and not ev.lost:
                continue
            lost = f", {ev.lost} lost" if ev.lost else ""
            out.append(f"{ev.kind} {name}: {len(ev.records)} record{'s' if len(ev.records) != 1 else ''}{lost}")
            out.extend(f"  {i}: {_show(r)}" for i, r in enumerate(ev.records[:RECORDS_SHOWN]))
            if len(ev.records) > RECORDS_SHOWN:
                out.append(f"  ... {len(ev.records) - RECORDS_SHOWN} more")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"trace": list(self.trace), "events": {name: ev.to_json() for name, ev in self.events.items()}}


def trace_lines(texts: Iterable[str]) -> tuple[str, ...]:
    """``bpf_trace_printk`` outputs as lines: one per call, a final newline dropped (most formats have one)."""
    return tuple(text.removesuffix("\n") for text in texts)


def drain_events(maps: Iterable[Any]) -> dict[str, Events]:
    """Take the waiting records out of every perf event array and ring buffer among ``maps``."""
    found: dict[str, Events] = {}
    for m in maps:
        if isinstance(m, PerfEventArray):
            found[m.name] = Events(m.name, "perf_event_array", tuple(m.read_events()), m.lost)
        elif isinstance(m, RingBuf):
            found[m.name] = Events(m.name, "ringbuf", tuple(m.read_events()))
    return found


def collect(vm: VM, *, trace_from: int = 0) -> Output:
    """What ``vm``'s runs printed (from trace line ``trace_from`` on) and the records now waiting
    in its maps (taken out: a second call sees only newer ones)."""
    return Output(trace_lines(vm.trace_log[trace_from:]), drain_events(vm.maps.values()))


def plain(value: Any) -> Any:
    """A decoded value as JSON: bytes as hex, sequences as lists, dicts of plain values."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value if isinstance(value, int | float | str | bool) or value is None else repr(value)


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex(" ") or "(empty)"
    return repr(value)
