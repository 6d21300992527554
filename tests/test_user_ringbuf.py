"""BPF_MAP_TYPE_USER_RINGBUF: samples produced from Python (libbpf's user_ring_buffer__reserve
/submit in the kernel's runs) and drained by a program with bpf_user_ringbuf_drain, whose callback
gets each sample as a dynptr and stops the drain by returning 1; the counts, the
helpers' results on that dynptr and the flags' errors in both engines and in the kernel's
BPF_PROG_TEST_RUN where it is available; and the verifier's rules for the callback, checked
against the kernel."""

from __future__ import annotations

import ctypes
import errno
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from jitbpf.errors import MapError, VerifierError
from jitbpf.linux.elf import load_elf
from jitbpf.linux.maps import UserRingBuf
from tests.kernel import Kernel
from tests.support import ENGINES, c_builder, load
from tests.test_skb_room_helpers import UDP4

Build = Callable[[str], Path]
RINGBUF_HDR, RINGBUF_BUSY = 8, 1 << 31  # a sample's header, and its bit while reserved
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
TEMPLATE = """
struct { __uint(type, BPF_MAP_TYPE_USER_RINGBUF); __uint(max_entries, 4096); } urb SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } rb SEC(".maps");
struct acc { long sum, short_, wr, slice; };
static long add(struct bpf_dynptr *d, void *ctx) {
    struct acc *a = ctx;
    long v = 0;
    %s;
    if (bpf_dynptr_read(&v, sizeof(v), d, 0, 0)) {
        a->short_ += 1;
        return 0;
    }
    a->sum += v;
    a->wr = bpf_dynptr_write(d, 0, &v, 1, 0);
    a->slice = bpf_dynptr_data(d, 0, 8) != 0;
    return v == 99;
}
SEC("tc") int prog(struct __sk_buff *skb) {
    struct acc a = {};
    long n = bpf_user_ringbuf_drain(&%s, add, &a, %s);
    long m = bpf_user_ringbuf_drain(&urb, add, &a, 0);
    return (n & 63) << 24 | (m & 63) << 18 | (a.short_ & 7) << 15 | (a.wr & 63) << 9 | a.slice << 8 | (a.sum & 0xff);
}
"""


def sample(v: int) -> bytes:
    return struct.pack("<q", v)


# (samples, None for one reserved and discarded; the first drain's flags)
RUNS: list[tuple[Sequence[bytes | None], str]] = [
    ([sample(1), sample(2), sample(3)], "0"),
    ([sample(1), sample(99), sample(5)], "0"),  # the callback stops the first drain at 99
    ([sample(1), None, sample(2)], "0"),  # a discarded sample is skipped, not counted
    ([b"abc", sample(4)], "0"),  # too short for an 8-byte read: -E2BIG
    ([], "0"),
    ([sample(7)], "BPF_RB_NO_WAKEUP"),
    ([sample(7)], "4"),  # unknown flags: -EINVAL, and the second drain takes the sample
]
# (callback statement, program's map, what jitbpf's message says, the kernel's last line when it differs)
REFUSED = [
    ("return 2", "urb", "At callback return the register r0", "At callback return the register R0"),
    ("*(long *)d = 0", "urb", "invalid mem access 'dynptr_ptr'", None),
    ("bpf_ringbuf_submit_dynptr(d, 0)", "urb", "cannot release unowned const bpf_dynptr", None),
    ("", "rb", "cannot pass map_type 27 into func bpf_user_ringbuf_drain#209", None),
]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    compile_c = c_builder(tmp_path_factory.mktemp("user_ringbuf"), HEADER)
    return lambda statement="", ring="urb", flags="0": compile_c(TEMPLATE % (statement, ring, flags))


def run_everywhere(path: Path, samples: Sequence[bytes | None], kernel: Kernel | None,
                   forged_len: int | None = None) -> int:
    """r0 of one run after ``samples`` were produced: the same in both engines (each with a fresh
    object) and, where it is available, in the kernel; ``forged_len`` replaces the last sample's
    length in its header before it is submitted."""
    results = set()
    for engine in ENGINES:
        obj = load_elf(path)
        ring = obj.maps["urb"]
        assert isinstance(ring, UserRingBuf)
        for data in samples:
            record = ring.reserve(len(data or b"\0"))
            if data is None:
                record.discard()
            else:
                record.data[:] = data
                if forged_len is not None and data is samples[-1]:
                    header = ctypes.c_uint32.from_address(record.address - RINGBUF_HDR)
                    header.value = header.value & RINGBUF_BUSY | forged_len
                record.submit()
        retval, _ = obj.programs["prog"].run(UDP4, engine=engine)
        results.add(int(retval) & 0xFFFF_FFFF)
    assert len(results) == 1, results
    (result,) = results
    if kernel is not None:
        loaded = kernel.load(path, "prog", None)
        assert not isinstance(loaded, str), loaded
        try:
            loaded.produce("urb", samples, forged_len)
            ref = loaded.run(UDP4)
            assert ref is not None
            assert ref.retval == result
        finally:
            loaded.close()
    return result


def fields(result: int) -> tuple[int, ...]:
    """(first drain, second drain, short samples, the write's result, a slice given, the sum)."""
    return result >> 24 & 63, result >> 18 & 63, result >> 15 & 7, result >> 9 & 63, result >> 8 & 1, result & 0xFF


@pytest.mark.parametrize(("samples", "flags"), RUNS)
def test_matches_the_kernel(build: Callable[..., Path], kernel: Kernel | None, samples: Sequence[bytes | None],
                            flags: str) -> None:
    run_everywhere(build(flags=flags), samples, kernel)


def test_the_results(build: Callable[..., Path]) -> None:
    einval = -errno.EINVAL & 63
    # the sample's dynptr may be written and sliced
    assert fields(run_everywhere(build(), RUNS[0][0], None)) == (3, 0, 0, 0, 1, 6)
    assert fields(run_everywhere(build(), RUNS[1][0], None)) == (2, 1, 0, 0, 1, 105)
    assert fields(run_everywhere(build(), RUNS[2][0], None))[:2] == (2, 0)
    assert fields(run_everywhere(build(), RUNS[3][0], None))[:3] == (2, 0, 1)
    assert fields(run_everywhere(build(flags="4"), RUNS[6][0], None))[:2] == (einval, 1)


@pytest.mark.parametrize(("statement", "ring", "ours", "kernels"), REFUSED)
def test_the_verifier_refuses(build: Callable[..., Path], kernel: Kernel | None, statement: str, ring: str,
                              ours: str, kernels: str | None) -> None:
    path = build(statement, ring)
    with pytest.raises(VerifierError, match=re.escape(ours)):
        load_elf(path).programs["prog"].vm().check()
    if kernel is not None:
        why = kernel.load(path, "prog", None)
        assert isinstance(why, str) and (kernels or ours) in why, why


def test_the_producer_api() -> None:
    ring = UserRingBuf(max_entries=4096, name="u")
    ring.write(b"12345")
    assert ring.avail_data == 16  # an 8-byte header, the sample padded to 8
    record = ring.reserve(4000)
    with pytest.raises(MapError, match="full") as full:
        ring.reserve(200)
    assert full.value.errno == errno.ENOSPC
    record.discard()
    with pytest.raises(MapError, match="not a sample reserved here"):
        ring.submit(record)  # given back already
    with pytest.raises(MapError, match="cannot fit") as big:
        ring.reserve(4096)
    assert big.value.errno == errno.E2BIG


# A producer that forges a sample's length past what it produced: the drain fails with -EINVAL
# (after the samples before it), and the next drain again, as the kernel's do.
@pytest.mark.parametrize("forged_len", [100, 4000, 1 << 29])
def test_a_forged_header_fails_the_drain(build: Callable[..., Path], kernel: Kernel | None, forged_len: int) -> None:
    einval = -errno.EINVAL & 63
    result = run_everywhere(build(), [sample(1), sample(2)], kernel, forged_len)
    assert fields(result)[:2] == (einval, einval) and fields(result)[5] == 1


# The callback keeps a slice of its sample in the caller's stack; after the drain the caller
# uses it (its memory, once the drain consumed the sample, is the producer's again).
KEPT_SLICE = """
    stdw [r10-8], 0
    lddw r1, map:U
    lddw r2, func:cb
    mov r3, r10
    add r3, -8
    mov r4, 0
    call 209
    ldxdw r1, [r10-8]
    jeq r1, 0, out
    {use}
out:
    mov r0, 0
    exit
cb:
    mov r6, r2
    mov r2, 0
    mov r3, 8
    call 203
    jeq r0, 0, skip
    stxdw [r6+0], r0
skip:
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("use", ["ldxdw r0, [r1+0]", "stdw [r1+0], 77"])
def test_a_samples_slice_does_not_outlive_its_callback(use: str) -> None:
    """The slice was still a pointer after the drain: the JIT ran its accesses unchecked, into
    memory the producer had back (the kernel never accepts the program)."""
    vm = load(KEPT_SLICE.format(use=use), UserRingBuf(max_entries=4096, name="U"), prog_type="sched_cls")
    with pytest.raises(VerifierError, match="r1 invalid mem access 'scalar'"):
        vm.check()
    # What is left of it is a number: that may be read.
    load(KEPT_SLICE.format(use="mov r0, r1"), UserRingBuf(max_entries=4096, name="U"), prog_type="sched_cls").check()
