"""What a new user meets first: what a run printed and sent, map semantics that agree across map
types, and errors that say what to change (through the real console script where it is the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from jitbpf.asm import assemble
from jitbpf.errors import AssemblerError, MapError
from jitbpf.linux.maps import Array, HashMap, PerCpuArray
from tests.test_elf import Compiler, example_compiler

ENTRY_POINT = Path(sys.executable).parent / "jitbpf"

# An XDP program that prints, and sends the same record to a ring buffer and a perf event array.
SHOW_C = r"""
#include "jitbpf_helpers.h"

static long (*perf_output)(void *ctx, void *map, __u64 flags, void *data, __u64 size) = (void *)25;

struct event { __u32 len; __u16 proto; __u16 pad; };

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} EVENTS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 2);
} PERF SEC(".maps");

SEC("xdp")
int show(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
    struct event ev = { .len = (__u32)(data_end - data), .proto = 7 };
    bpf_printk("packet of %d bytes", ev.len);
    bpf_ringbuf_output(&EVENTS, &ev, sizeof(ev), 0);
    perf_output(ctx, &PERF, 0xffffffffULL, &ev, sizeof(ev));
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return example_compiler(tmp_path_factory)


def jitbpf(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENTRY_POINT), *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)


def record(length: int) -> str:
    return f"{length:02x} 00 00 00 07 00 00 00"


# -- what a run printed and sent ----------------------------------------------------------------


@pytest.mark.parametrize("engine", ["--interp", "--jit"])
def test_run_shows_trace_and_records(example: Compiler, engine: str) -> None:
    obj = str(example(SHOW_C))
    proc = jitbpf("run", obj, "--mem", "00 11 22 33", engine)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "r0 = 0x2 (2) XDP_PASS",
        "trace: packet of 4 bytes",
        "ringbuf EVENTS: 1 record",
        f"  0: {record(4)}",
        "perf_event_array PERF: 1 record",
        f"  0: {record(4)}",
    ]
    report = json.loads(jitbpf("run", obj, "--mem", "00 11 22 33", engine, "--json").stdout)
    assert report["trace"] == ["packet of 4 bytes"]
    hex_record = record(4).replace(" ", "")
    assert report["events"] == {"EVENTS": {"kind": "ringbuf", "count": 1, "lost": 0, "records": [hex_record]},
                                "PERF": {"kind": "perf_event_array", "count": 1, "lost": 0, "records": [hex_record]}}


def test_run_without_output_prints_r0_only(tmp_path: Path) -> None:
    (tmp_path / "prog.s").write_text("mov r0, 3\nexit\n")
    proc = jitbpf("run", str(tmp_path / "prog.s"), "--json")
    assert json.loads(proc.stdout) == {"r0": 3, "r0_hex": "0x3", "r0_signed": 3, "engine": "interp"}


def test_pcap_run_shows_trace_and_records(example: Compiler, tmp_path: Path) -> None:
    capture = tmp_path / "three.pcap"
    with capture.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for i, size in enumerate((20, 30, 40)):
            writer.writepkt(bytes(size), ts=1.0 + i)
    obj = str(example(SHOW_C))
    proc = jitbpf("run", obj, "--pcap", str(capture), "--jit")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("trace: ")] == [f"trace: packet of {n} bytes" for n in (20, 30, 40)]
    assert "ringbuf EVENTS: 3 records" in lines and "perf_event_array PERF: 3 records" in lines
    assert f"  2: {record(40)}" in lines
    report = json.loads(jitbpf("run", obj, "--pcap", str(capture), "--json").stdout)
    assert report["packets"] == 3 and len(report["trace"]) == 3 and report["events"]["EVENTS"]["count"] == 3


# -- map semantics --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Array, PerCpuArray])
def test_array_membership_and_delete(cls: type[Array]) -> None:
    a = cls(value_size=4, max_entries=4, name="A")
    a[1] = 5
    assert [i in a for i in (-1, 0, 3, 4, "1")] == [False, True, True, False, False]
    del a[1]  # arrays keep every element: del zeroes it
    assert a[1] == (0 if cls is Array else [0] * a.num_cpus)
    with pytest.raises(MapError):
        del a[4]


def test_hash_map_keys_do_not_wrap() -> None:
    m = HashMap(key_size=4, value_size=4, name="H")
    with pytest.raises(MapError, match="key -1 is negative"):
        m[-1] = 1
    with pytest.raises(MapError, match="does not fit in 4 bytes"):
        m[1 << 32] = 1
    with pytest.raises(MapError, match="negative"):
        -1 in m  # noqa: B015
    m[0xFFFFFFFF] = -1  # values are two's complement
    assert dict(m.items()) == {0xFFFFFFFF: 0xFFFFFFFF}
    signed = HashMap(key_type="<i", value_size=4, name="S")
    signed[-1] = 2
    assert list(signed) == [-1]


# -- errors that say what to change -------------------------------------------------------------


@pytest.mark.parametrize(("text", "line", "column", "name"), [
    ("mov r11, 1\nexit", 1, 5, "r11"),
    ("mov r0, 1\n  add r0, r15\nexit", 2, 11, "r15"),
    ("ldxw r0, [r12+4]\nexit", 1, 11, "r12"),
    ("w11 = 1\nexit", 1, 1, "w11"),
])
def test_assembler_rejects_registers_past_r10(text: str, line: int, column: int, name: str) -> None:
    with pytest.raises(AssemblerError) as info:
        assemble(text)
    assert (info.value.line, info.value.column) == (line, column)
    assert info.value.message == f"'{name}' is not a register: eBPF has r0-r10 (w0-w10)"
    assert len(assemble(text, any_register=True)) == 8 * len(text.splitlines())  # encodable on request


def test_cli_names_the_bad_register(tmp_path: Path) -> None:
    (tmp_path / "bad.s").write_text("mov r0, 1\nmov r11, 2\nexit\n")
    proc = jitbpf("asm", str(tmp_path / "bad.s"))
    assert proc.returncode == 2
    message = "'r11' is not a register: eBPF has r0-r10 (w0-w10)"
    assert proc.stderr == f"jitbpf: error: {tmp_path / 'bad.s'}:2:5: {message}\n"


LOOP_S = "mov r0, 0\nadd r0, 1\njlt r0, 10, -2\nexit\n"


def test_loop_rejection_names_the_options(tmp_path: Path) -> None:
    (tmp_path / "loop.s").write_text(LOOP_S)
    loop = str(tmp_path / "loop.s")
    rejected = f"jitbpf: error: {loop}: at PC 2: back-edge from insn 2 to 1: jlt r0, 10, -2"
    both = " (a loop: --allow-loops accepts it if it is bounded; --no-verify skips the verifier)"
    assert jitbpf("run", loop).stderr == rejected + both + "\n"
    only_loops = " (a loop: --allow-loops accepts it if it is bounded)"  # verify has no --no-verify
    assert jitbpf("verify", loop).stderr.splitlines()[-1] == rejected + only_loops
    assert jitbpf("run", loop, "--allow-loops").stdout == "r0 = 0xa (10)\n"


def test_loop_rejection_note_in_python() -> None:
    from jitbpf.errors import VerifierError
    from jitbpf.vm import VM

    with pytest.raises(VerifierError) as info:
        VM(assemble(LOOP_S)).check()
    assert info.value.__notes__ == ["a loop: VM(..., allow_loops=True) accepts it if it is bounded, "
                                    "VM(..., verify=False) skips the verifier"]
    assert VM(assemble(LOOP_S), allow_loops=True).execute() == 10


# A child that starts a long run (or a long verification), is sent SIGINT once it is under way,
# and reports how it ended. The timeout only keeps a broken child from hanging the suite.
_INTERRUPTED = """
import os, signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background job's child starts ignoring it)
import jitbpf
what = sys.argv[1]
long_loop = jitbpf.assemble("mov r0, 0\\nadd r0, 1\\njlt r0, 0x7fffffff, -2\\nexit")
vm = jitbpf.VM(long_loop, verify=what == "verify", allow_loops=True, budget=10**12)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    vm.check() if what == "verify" else vm.execute()
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


@pytest.mark.parametrize("what", ["interp", "verify"])
def test_ctrl_c_stops_a_long_run(what: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED, what], capture_output=True, text=True, timeout=300,
                          check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "KeyboardInterrupt\n", "")
