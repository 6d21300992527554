"""Dynptrs: struct bpf_dynptr over a map value (bpf_dynptr_from_mem) or a ring buffer record
(bpf_ringbuf_reserve_dynptr), read, written and sliced, with the kernel helpers' results (-EINVAL,
-E2BIG, NULL slices) in both engines and in the kernel's BPF_PROG_TEST_RUN where it is available;
and the verifier's rules for the dynptr's stack slots (initialised before use, never read or
partly overwritten by the program, a ring buffer one a reference to give back), each with a
minimal program refused as the kernel refuses it, in the kernel's words."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.linux.dynptrs import DYNPTR_SIZE, Dynptr, DynptrKind
from jitbpf.linux.elf import load_elf
from tests.kernel import Kernel
from tests.support import ENGINES, c_builder, packet_run_everywhere
from tests.test_skb_room_helpers import UDP4

Build = Callable[[str], Path]
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
# Each result goes into 6 bits of r0 (-EINVAL: 42, -E2BIG: 57).
TEMPLATE = """
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } rb SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, int); __type(value, char[16]); }
    arr SEC(".maps");
#define R(x) (r = r * 64 + ((x) & 63))
SEC("tc") int prog(struct __sk_buff *skb) {
    int k = 0;
    char *buf = bpf_map_lookup_elem(&arr, &k), *d;
    if (!buf)
        return 1;
    struct bpf_dynptr p, q;
    char out[8] = {9, 9, 9, 9, 9, 9, 9, 9};
    long r = 0;
    %s;
    return r & 0x7fffffff;
}
"""
RUNS = [
    # reads inside the dynptr, past its end (-E2BIG), with flags (-EINVAL)
    "buf[2] = 7; R(bpf_dynptr_from_mem(buf, 16, 0, &p)); R(bpf_dynptr_read(out, 4, &p, 0, 0)); R(out[2]);"
    " R(bpf_dynptr_read(out, 4, &p, 13, 0)); R(bpf_dynptr_read(out, 4, &p, 12, 1))",
    # writes: the last bytes, one past them, with flags; the value sees them
    "R(bpf_dynptr_from_mem(buf, 16, 0, &p)); R(bpf_dynptr_write(&p, 14, out, 2, 0));"
    " R(bpf_dynptr_write(&p, 15, out, 2, 0)); R(bpf_dynptr_write(&p, 0, out, 2, 1)); R(buf[14] + buf[0])",
    # slices: inside (written through), past the end (NULL), empty at the end (not NULL)
    "R(bpf_dynptr_from_mem(buf, 16, 0, &p)); d = bpf_dynptr_data(&p, 12, 4); R(d ? (d[1] = 5, buf[13]) : 33);"
    " R(bpf_dynptr_data(&p, 13, 4) ? 34 : 35); R(bpf_dynptr_data(&p, 16, 0) ? 36 : 37)",
    # a failed bpf_dynptr_from_mem leaves a NULL dynptr, which every helper refuses; an empty one works
    "R(bpf_dynptr_from_mem(buf, 16, 1, &p)); R(bpf_dynptr_read(out, 1, &p, 0, 0));"
    " R(bpf_dynptr_write(&p, 0, out, 1, 0));"
    " R(bpf_dynptr_from_mem(buf, 0, 0, &q)); R(bpf_dynptr_read(out, 1, &q, 0, 0))",
    # ring buffer records: reserved, written, submitted; flags, too large for the ring, beyond a dynptr
    "R(bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p)); R(bpf_dynptr_write(&p, 5, out, 4, 0));"
    " bpf_ringbuf_submit_dynptr(&p, 0);"
    " R(bpf_ringbuf_reserve_dynptr(&rb, 8, 1, &p)); bpf_ringbuf_discard_dynptr(&p, 0);"
    " R(bpf_ringbuf_reserve_dynptr(&rb, 8000, 0, &p)); bpf_ringbuf_discard_dynptr(&p, 0);"
    " R(bpf_ringbuf_reserve_dynptr(&rb, 1 << 24, 0, &p)); bpf_ringbuf_discard_dynptr(&p, 0);"
    " R(bpf_ringbuf_query(&rb, 0))",
    # a record's slice, written before the submit
    "R(bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p)); d = bpf_dynptr_data(&p, 0, 8); if (d) d[7] = 1; R(d != 0);"
    " R(bpf_dynptr_read(out, 8, &p, 0, 0)); R(out[7]); bpf_ringbuf_submit_dynptr(&p, 0); R(bpf_ringbuf_query(&rb, 0))",
    # an unreferenced dynptr may be overwritten (and is gone) or made again
    "R(bpf_dynptr_from_mem(buf, 16, 0, &p)); *(long *)&p = 0; R(bpf_dynptr_from_mem(buf, 8, 0, &p));"
    " R(bpf_dynptr_read(out, 4, &p, 6, 0)); R(bpf_dynptr_from_mem(buf, 16, 0, &p));"
    " R(bpf_dynptr_read(out, 4, &p, 6, 0))",
]
# (program, what jitbpf's message says, what the kernel's last line says when it differs)
REFUSED = [
    ("R(bpf_dynptr_read(out, 4, &p, 0, 0))", "Expected an initialized dynptr as arg #2", None),
    ("R(bpf_dynptr_data(&p, 0, 4) != 0)", "Expected an initialized dynptr as arg #0", None),
    ("bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p)", "Unreleased reference", "reference leak"),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); bpf_ringbuf_submit_dynptr(&p, 0)", "arg 1 is an unacquired reference", None),
    ("bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p); bpf_ringbuf_discard_dynptr(&p, 0); bpf_ringbuf_discard_dynptr(&p, 0)",
     "arg 1 is an unacquired reference", None),
    ("bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p); bpf_ringbuf_submit_dynptr(&p, 0);"
     " R(bpf_dynptr_read(out, 4, &p, 0, 0))",
     "Expected an initialized dynptr as arg #2", None),
    ("bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p); *(long *)&p = 0; bpf_ringbuf_submit_dynptr(&p, 0)",
     "cannot overwrite referenced dynptr", None),
    ("bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p); bpf_dynptr_from_mem(buf, 16, 0, &p); bpf_ringbuf_submit_dynptr(&p, 0)",
     "cannot overwrite referenced dynptr", None),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); r = *(long *)&p", "invalid read from stack off", None),
    ("char s[16] = {}; bpf_dynptr_from_mem(s, 16, 0, &p)", "Unsupported reg type fp for bpf_dynptr_from_mem data",
     None),
    ("bpf_dynptr_from_mem(buf, 16, 0, (struct bpf_dynptr *)((char *)&p + 4))", "cannot pass in dynptr at an offset=",
     "Dynptr has to be an uninitialized dynptr"),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); bpf_dynptr_from_mem(buf, 16, 0, &q); R(bpf_dynptr_write(&q, 0, &p, 8, 0))",
     "invalid read from stack R3 off", None),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); R(bpf_dynptr_read(&p, 8, &p, 0, 0))", "potential write to dynptr at off=",
     None),
    # slices: gone with their dynptr (submitted, or overwritten), and only as long as asked
    ("bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p); d = bpf_dynptr_data(&p, 0, 8);"
     " if (!d) { bpf_ringbuf_discard_dynptr(&p, 0); return 1; } bpf_ringbuf_submit_dynptr(&p, 0); d[0] = 1",
     "invalid mem access 'scalar'", None),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); d = bpf_dynptr_data(&p, 0, 4); if (!d) return 1; *(long *)&p = 0;"
     " r = d[0]", "invalid mem access 'scalar'", None),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); d = bpf_dynptr_data(&p, 0, 4); if (!d) return 1; r = d[4]",
     "invalid access to memory", "outside of the allowed memory range"),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); d = bpf_dynptr_data(&p, 0, 4); r = d[0]", "invalid mem access", None),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); r = bpf_dynptr_data(&p, 0, skb->len & 7) != 0", "is not a known constant",
     None),
    ("bpf_dynptr_from_mem(buf, 16, 0, &p); bpf_ringbuf_submit_dynptr(&q, 0)", "arg 1 is an unacquired reference", None),
    ("bpf_ringbuf_reserve_dynptr(&arr, 8, 0, &p); bpf_ringbuf_discard_dynptr(&p, 0)",
     "cannot pass map_type 2 into func bpf_ringbuf_reserve_dynptr#198", None),
]


# Whole programs: a dynptr handed to a function, and dynptrs made on two paths that meet again.
MAPS = TEMPLATE[: TEMPLATE.index("#define")]
# (source, r0: the byte read; the read past the shorter path's end succeeding; the record's slice)
PROGRAMS = [
    (MAPS + """
static __attribute__((noinline)) long use(struct bpf_dynptr *p) {
    char out[4] = {};
    long r = bpf_dynptr_read(out, 4, p, 2, 0);
    return r * 256 + out[0];
}
SEC("tc") int prog(struct __sk_buff *skb) {
    int k = 0;
    char *buf = bpf_map_lookup_elem(&arr, &k);
    struct bpf_dynptr p;
    if (!buf)
        return 1;
    buf[2] = 5;
    bpf_dynptr_from_mem(buf, 16, 0, &p);
    return use(&p) & 0xffff;
}
""", 5),
    (MAPS + """
SEC("tc") int prog(struct __sk_buff *skb) {
    int k = 0;
    char *buf = bpf_map_lookup_elem(&arr, &k), out[4];
    struct bpf_dynptr p;
    if (!buf)
        return 1;
    for (int i = 0; i < 6; i++) {
        if (skb->len > 10 + i)
            bpf_dynptr_from_mem(buf, 16, 0, &p);
        else
            bpf_dynptr_from_mem(buf, 8, 0, &p);
    }
    return bpf_dynptr_read(out, 4, &p, 6, 0) & 63;
}
""", 0),
    (MAPS + """
SEC("tc") int prog(struct __sk_buff *skb) {
    struct bpf_dynptr p;
    long r = skb->len > 10 ? bpf_ringbuf_reserve_dynptr(&rb, 16, 0, &p) : bpf_ringbuf_reserve_dynptr(&rb, 8, 0, &p);
    char *d = bpf_dynptr_data(&p, 0, 8);
    if (d)
        d[0] = 1;
    if (skb->len > 20)
        bpf_ringbuf_submit_dynptr(&p, 0);
    else
        bpf_ringbuf_discard_dynptr(&p, 0);
    return (r & 63) * 2 + (d != 0);
}
""", 1),
]


@pytest.mark.parametrize(("source", "expected"), PROGRAMS)
def test_whole_programs_match_the_kernel(tmp_path: Path, kernel: Kernel | None, source: str, expected: int) -> None:
    assert packet_run_everywhere(c_builder(tmp_path, HEADER)(source), UDP4, kernel)[0] == expected


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    compile_c = c_builder(tmp_path_factory.mktemp("dynptr"), HEADER)
    return lambda body: compile_c(TEMPLATE % body)


def test_the_layout_is_the_kernels() -> None:
    d = Dynptr(0x1000, 24, 4, DynptrKind.RINGBUF, True)
    raw = d.encode()
    assert len(raw) == DYNPTR_SIZE
    assert raw[8:12] == (24 | 2 << 28 | 1 << 31).to_bytes(4, "little")
    assert Dynptr.decode(raw) == d


@pytest.mark.parametrize("body", RUNS)
def test_matches_the_kernel(build: Build, kernel: Kernel | None, body: str) -> None:
    packet_run_everywhere(build(body), UDP4, kernel)


def fields(build: Build, body: str, n: int) -> list[int]:
    retval, _ = packet_run_everywhere(build(body), UDP4, None)
    return [retval >> (6 * (n - 1 - i)) & 63 for i in range(n)]


def test_the_results(build: Build) -> None:
    assert fields(build, RUNS[0], 5) == [0, 0, 7, 57, 42]
    assert fields(build, RUNS[1], 5) == [0, 0, 57, 42, 9]  # the write with flags wrote nothing
    assert fields(build, RUNS[2], 4) == [0, 5, 35, 36]
    assert fields(build, RUNS[3], 5) == [42, 42, 42, 0, 57]
    assert fields(build, RUNS[6], 5) == [0, 0, 57, 0, 0]


@pytest.mark.parametrize(("body", "ours", "kernels"), REFUSED)
def test_the_verifier_refuses(build: Build, kernel: Kernel | None, body: str, ours: str, kernels: str | None) -> None:
    path = build(body)
    with pytest.raises(VerifierError, match=re.escape(ours)):
        load_elf(path).programs["prog"].vm().check()
    if kernel is not None:
        why = kernel.load(path, "prog", None)
        assert isinstance(why, str) and (kernels or ours) in why, why


# A forged dynptr (the program unverified) reaches no memory the run does not hold.
FORGED = """
SEC("tc") int prog(struct __sk_buff *skb) {
    long p[2] = {0x12345678, 64 | 1 << 28};
    char out[4];
    return bpf_dynptr_read(out, 4, (struct bpf_dynptr *)p, 0, 0);
}
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_forged_dynptr_fails_the_run(tmp_path: Path, engine: str) -> None:
    path = c_builder(tmp_path, HEADER)(FORGED)
    prog = load_elf(path).programs["prog"]
    with pytest.raises(VerifierError, match=re.escape("Expected an initialized dynptr as arg #2")):
        prog.vm().check()
    with pytest.raises(ExecutionError, match="not the program's"):
        prog.vm(verify=False).run_tc(UDP4, engine=engine)
