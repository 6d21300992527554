"""Map entries and global variables decoded through an object's BTF, in Python, in the testing
layer and in ``jitbpf run`` (text and JSON, one run and a capture)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from jitbpf import testing
from jitbpf.linux.btfvalues import TypedMap, contents, global_variables, map_types, typed_maps
from tests.test_elf import CLANG, EXAMPLES

pytestmark = pytest.mark.skipif(CLANG is None, reason="clang is not installed (apt-get install clang)")

TYPED_C = r"""
#include "jitbpf_helpers.h"

enum color { RED = 1, GREEN = 2, BLUE = -3 };
struct flow { __u32 saddr; __u16 port; __u8 proto; __u8 pad; };
struct stats {
    __u64 packets; __s32 delta; enum color last; char tag[8];
    struct { __u16 a, b; } pair; __u8 history[3]; unsigned int low : 4, high : 4;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, struct flow);
    __type(value, struct stats);
} FLOWS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __s64);
} TOTALS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4);
    __uint(key_size, 4);
    __uint(value_size, 4);
} SIZED SEC(".maps");

volatile __s32 seen = 0;
volatile enum color mood = GREEN;
const volatile char banner[6] = "hello";
volatile struct flow last_flow;

SEC("xdp")
int typed(struct xdp_md *ctx)
{
    struct flow f = { .saddr = 0x0a000001, .port = 80, .proto = 6 };
    struct stats s = { .packets = 1, .delta = -5, .last = BLUE, .tag = "abc", .pair = { 7, 8 },
                       .history = { 1, 2, 3 }, .low = 5, .high = 9 };
    __u32 k = 1, v = 0xffffffff;
    __s64 minus = -2;
    bpf_map_update_elem(&FLOWS, &f, &s, 0);
    bpf_map_update_elem(&TOTALS, &k, &minus, 0);
    bpf_map_update_elem(&SIZED, &k, &v, 0);
    seen = -1;
    last_flow = f;
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""

FLOW = {"saddr": 0x0A000001, "port": 80, "proto": 6, "pad": 0}
STATS = {"packets": 1, "delta": -5, "last": "BLUE", "tag": "abc", "pair": {"a": 7, "b": 8}, "history": [1, 2, 3],
         "low": 5, "high": 9}
GLOBALS = {"seen": -1, "mood": "GREEN", "banner": "hello", "last_flow": FLOW}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("btf") / "typed.c"
    path.write_text(TYPED_C)
    return path


@pytest.fixture(scope="module")
def ran(source: Path) -> testing.Harness:
    h = testing.harness(source, include=[EXAMPLES / "include"])
    h.run(bytes(20))
    return h


def test_map_entries_as_c_types(ran: testing.Harness) -> None:
    obj = ran.program.obj
    assert list(ran.typed("FLOWS").items()) == [(FLOW, STATS)]
    assert ran.typed("FLOWS")[next(iter(ran["FLOWS"]))] == STATS  # looked up by the map's own key
    assert list(TypedMap(obj, "TOTALS").items()) == [(0, 0), (1, -2), (2, 0)]
    assert list(TypedMap(obj, "SIZED").items()) == [(1, 0xFFFFFFFF)]  # no types declared: as the map gives them
    assert map_types(obj, "SIZED") == (None, None) and map_types(obj, "nope") == (None, None)
    assert set(typed_maps(obj)) == {"FLOWS", "TOTALS", "SIZED"}


def test_globals_as_c_types(ran: testing.Harness) -> None:
    assert ran.globals() == GLOBALS == global_variables(ran.program.obj)


def test_contents_leave_out_zeroes(ran: testing.Harness) -> None:
    found = contents(ran.program.obj)
    assert found["maps"] == {"FLOWS": [[FLOW, STATS]], "TOTALS": [[1, -2]], "SIZED": [[1, 0xFFFFFFFF]]}
    assert found["globals"] == GLOBALS


def cli(*args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "jitbpf"), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_run_prints_decoded_maps_and_globals(ran: testing.Harness, source: Path) -> None:
    obj = str(testing.compile_c(source, include=[EXAMPLES / "include"]))
    lines = cli("run", obj, "--mem", "00" * 20).splitlines()
    assert lines[:3] == ["r0 = 0x2 (2) XDP_PASS", "map FLOWS: 1 entry",
                         "  {saddr: 167772161, port: 80, proto: 6, pad: 0} -> {packets: 1, delta: -5, last: 'BLUE', "
                         "tag: 'abc', pair: {a: 7, b: 8}, history: [1, 2, 3], low: 5, high: 9}"]
    assert "global mood = 'GREEN'" in lines and "global seen = -1" in lines
    report = json.loads(cli("run", obj, "--mem", "00" * 20, "--json", "--jit"))
    assert report["maps"]["FLOWS"] == [[FLOW, STATS]] and report["globals"] == GLOBALS


def test_pcap_summary_decodes_maps(source: Path, tmp_path: Path) -> None:
    obj = str(testing.compile_c(source, include=[EXAMPLES / "include"]))
    capture = tmp_path / "two.pcap"
    with capture.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for i in range(2):
            writer.writepkt(bytes(30), ts=float(i))
    report = json.loads(cli("run", obj, "--pcap", str(capture), "--json"))
    assert report["maps"]["FLOWS"]["entries"] == [[FLOW, STATS]] and report["globals"] == GLOBALS
    text = cli("run", obj, "--pcap", str(capture), "--no-progress")
    assert "'last': 'BLUE'" in text and "global banner = 'hello'" in text
