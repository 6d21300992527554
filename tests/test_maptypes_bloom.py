"""BLOOM_FILTER: push adds a value, peek tests it (never a false negative), nothing else; the
Python API, programs in both engines, and the kernel's map syscalls where they are available."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.errors import MapError, VerifierError
from jitbpf.linux.maps import BPF_ANY, BPF_EXIST, BPF_NOEXIST, BloomFilter, MapType, create_map
from tests import kernel_oracle
from tests.support import ENGINES, load, run, s64

PUSH_THEN_PEEK = """
    mov r1, {value}
    stxdw [r10-8], r1
    lddw r1, map:SEEN
    mov r2, r10
    add r2, -8
    mov r3, {flags}
    call 87
    jne r0, 0, +7
    mov r1, {probe}
    stxdw [r10-8], r1
    lddw r1, map:SEEN
    mov r2, r10
    add r2, -8
    call 89
    exit
"""

POP = """
    lddw r1, map:SEEN
    mov r2, r10
    add r2, -8
    call 88
    exit
"""


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, 2**64 - 1), max_size=50), st.integers(0, 15))
def test_no_false_negatives(values: set[int], map_extra: int) -> None:
    bloom = BloomFilter(value_size=8, max_entries=64, map_extra=map_extra, name="SEEN")
    for v in values:
        bloom.add(v)
    assert all(v in bloom for v in values)


def test_absent_values_test_negative_in_a_sparse_filter() -> None:
    bloom = BloomFilter(value_size=8, max_entries=1000, name="SEEN")
    for v in range(10):
        bloom.add(v)
    assert sum(v in bloom for v in range(1000, 2000)) <= 2  # a 10-entry load of a 1000-entry filter


def test_the_kernels_rules() -> None:
    bloom = BloomFilter(value_size=4, max_entries=8, name="SEEN")
    for flags in (BPF_NOEXIST, BPF_EXIST):
        with pytest.raises(MapError) as exc:
            bloom.add(1, flags)
        assert exc.value.errno == errno.EINVAL
    for args, extra in [((0, 0, 8), 0), ((4, 4, 8), 0), ((0, 4, 0), 0), ((0, 4, 8), 16)]:
        with pytest.raises(MapError) as exc:
            create_map(MapType.BLOOM_FILTER, *args, map_extra=extra)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(MapError) as exc:
        create_map(MapType.HASH, 4, 4, 8, map_extra=3)  # only bloom filters take map_extra
    assert exc.value.errno == errno.EINVAL
    assert create_map(MapType.BLOOM_FILTER, 0, 4, 8, map_extra=3).map_extra == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine", ENGINES)
def test_programs_push_and_peek(engine: str) -> None:
    bloom = BloomFilter(value_size=8, max_entries=1000, name="SEEN")
    assert run(load(PUSH_THEN_PEEK.format(value=42, probe=42, flags=BPF_ANY), bloom), engine) == 0
    assert 42 in bloom
    assert s64(run(load(PUSH_THEN_PEEK.format(value=43, probe=7, flags=BPF_ANY), bloom), engine)) == -errno.ENOENT
    assert s64(run(load(PUSH_THEN_PEEK.format(value=1, probe=1, flags=BPF_EXIST), bloom), engine)) == -errno.EINVAL
    with pytest.raises(VerifierError, match="cannot pass map_type 30 into func bpf_map_pop_elem#88"):
        run(load(POP, bloom), engine)  # as the kernel: a bloom filter goes to push and peek only


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
def test_agrees_with_the_kernel() -> None:
    ours = BloomFilter(value_size=8, max_entries=100)
    with kernel_oracle.kernel_map(kernel_oracle.KernelMap(int(MapType.BLOOM_FILTER), 0, 8, 100)) as theirs:
        for v, flags in [(1, BPF_ANY), (2, BPF_NOEXIST), (3, BPF_EXIST), (4, BPF_ANY), (5, BPF_ANY)]:
            mine = 0
            try:
                ours.add(v, flags)
            except MapError as exc:
                mine = exc.errno
            assert mine == theirs.update(b"", v.to_bytes(8, "little"), flags), v
        for v in (1, 4, 5):  # added: both say present
            assert theirs.lookup(b"", 8, v.to_bytes(8, "little"))[0] == 0 and v in ours
        for v in (2, 3):  # refused adds: absent (no false positive in so sparse a filter, on either side)
            assert theirs.lookup(b"", 8, v.to_bytes(8, "little"))[0] == errno.ENOENT and v not in ours
