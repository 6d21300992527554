"""Every standard helper called from an assembled program, plus the native (C) entry points."""

from __future__ import annotations

import errno
import gc
import io
import os
import struct
import threading
import time
from pathlib import Path

import pytest

from jitbpf._native import native
from jitbpf.asm import assemble
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.linux.helperids import HelperId
from jitbpf.linux.host import Host, host_helpers
from jitbpf.linux.maps import (
    BPF_EXIST,
    BPF_NOEXIST,
    Array,
    DevMap,
    HashMap,
    PerCpuArray,
    PerCpuHashMap,
    PerfEventArray,
    Queue,
    RingBuf,
    SockHash,
    SockMap,
    num_cpus,
    set_current_cpu,
)
from jitbpf.linux.stdhelpers import StdContext, format_printk, standard_helpers
from jitbpf.sandbox import Pages, contained
from jitbpf.vm import VM
from tests.support import ENGINES, check_verdict, load, run, s64

HOST_IDS = {h.id for h in host_helpers(lambda: None, Host)}  # type: ignore[arg-type, return-value]
MAP_HELPERS = {HelperId.MAP_LOOKUP_ELEM, HelperId.MAP_UPDATE_ELEM, HelperId.MAP_DELETE_ELEM, HelperId.MAP_PUSH_ELEM,
               HelperId.MAP_POP_ELEM, HelperId.MAP_PEEK_ELEM, HelperId.PERF_EVENT_OUTPUT, HelperId.RINGBUF_OUTPUT,
               HelperId.RINGBUF_RESERVE, HelperId.RINGBUF_SUBMIT, HelperId.RINGBUF_DISCARD, HelperId.RINGBUF_QUERY,
               HelperId.MAP_LOOKUP_PERCPU_ELEM, HelperId.SPIN_LOCK, HelperId.SPIN_UNLOCK}


@pytest.fixture(autouse=True)
def _cpu0() -> object:
    set_current_cpu(0)
    yield
    set_current_cpu(None)


# ---------------------------------------------------------------------------------------------
# The table


def test_helper_table() -> None:
    vm = VM(assemble("mov r0, 0\nexit"))
    helpers = standard_helpers(vm)
    assert {h.id for h in helpers} >= HOST_IDS | MAP_HELPERS
    assert isinstance(vm.std, StdContext)
    for h in helpers:
        assert h.name == "bpf_" + HelperId(h.id).name.lower()  # one enum names every helper
        if h.id in HOST_IDS:
            assert h.native == 0, h.name  # answered by the Host object, in Python
            continue
        assert (h.native != 0) == (h.id in MAP_HELPERS or not h.args or h.id == HelperId.GET_CURRENT_COMM), h.name
    by_id = {h.id: h for h in helpers}
    assert by_id[HelperId.MAP_LOOKUP_ELEM].args == ("map", "key")
    assert by_id[HelperId.MAP_LOOKUP_ELEM].ret == "map_value_or_null"
    assert by_id[HelperId.RINGBUF_RESERVE].ret == "acquired_mem_or_null"


def test_standard_helpers_are_not_the_default() -> None:
    vm = VM(assemble("mov r0, 0\nexit"))
    assert vm.helpers == {} and vm.trace_log == []
    vm.use_standard_helpers()
    assert set(vm.helpers) == {h.id for h in standard_helpers(VM(assemble("exit")))}


def test_native_entry_points_are_callable_c_functions() -> None:
    """What the JIT does: call Helper.native with raw register values, no Python involved."""
    nat = native()
    ffi = nat.ffi
    vm = VM(assemble("mov r0, 0\nexit"))
    by_id = {h.id: h for h in standard_helpers(vm)}
    sig = "uint64_t(*)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t)"
    lookup = ffi.cast(sig, by_id[HelperId.MAP_LOOKUP_ELEM].native)
    update = ffi.cast(sig, by_id[HelperId.MAP_UPDATE_ELEM].native)
    delete = ffi.cast(sig, by_id[HelperId.MAP_DELETE_ELEM].native)
    array = Array(value_size=4, max_entries=4, name="A")
    pages = Pages(4096)  # program memory: what the JIT's helpers accept pointers into
    pages.view[0:8] = (1).to_bytes(4, "little") + (77).to_bytes(4, "little")
    kaddr, vaddr = pages.address, pages.address + 4
    assert lookup(array.address, kaddr, 0, 0, 0) == array.value_address() + 8  # 8-byte value stride
    assert update(array.address, kaddr, vaddr, 0, 0) == 0
    assert array[1] == 77
    assert s64(delete(array.address, kaddr, 0, 0, 0)) == -errno.EINVAL
    h = HashMap(key_size=4, value_size=4, max_entries=4, name="H")
    assert lookup(h.address, kaddr, 0, 0, 0) == 0
    assert update(h.address, kaddr, vaddr, 0, 0) == 0
    ptr = lookup(h.address, kaddr, 0, 0, 0)
    assert h.regions()[0].base <= ptr < h.regions()[0].end
    assert ffi.cast("uint32_t *", ptr)[0] == 77
    assert delete(h.address, kaddr, 0, 0, 0) == 0
    assert s64(delete(h.address, kaddr, 0, 0, 0)) == -errno.ENOENT


@pytest.mark.skipif(not contained(), reason="no sandbox on this host: C helpers then take no pointers from JIT code")
def test_native_helpers_refuse_what_is_not_live_program_memory() -> None:
    """Called as JIT code calls them, C helpers take nothing on trust: a forged map pointer or a key,
    value or buffer outside live sandbox memory (host memory, a guard page, a freed page) fails the
    call as the kernel's helpers fail on a bad argument, and nothing there is read or written."""
    nat = native()
    ffi = nat.ffi
    vm = VM(assemble("mov r0, 0\nexit"))
    by_id = {h.id: h for h in standard_helpers(vm)}
    sig = "uint64_t(*)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t)"

    def call(hid: HelperId, *args: int) -> int:
        fn = ffi.cast(sig, by_id[hid].native)
        return s64(fn(*args, *[0] * (5 - len(args))))

    h = HashMap(key_size=4, value_size=4, max_entries=4, name="H")
    pages = Pages(4096)
    host = bytearray(b"\x01\0\0\0" * 4)
    host_addr = int(ffi.cast("uintptr_t", ffi.from_buffer(host)))
    freed = Pages(4096)
    freed_addr = freed.address
    del freed
    gc.collect()
    bad_pointers = [host_addr, pages.address + 4094, pages.address + 4096, freed_addr, 0, 1 << 40]
    for bad in bad_pointers:
        assert call(HelperId.MAP_LOOKUP_ELEM, h.address, bad) == 0
        assert call(HelperId.MAP_UPDATE_ELEM, h.address, pages.address, bad) == -errno.EFAULT
        assert call(HelperId.MAP_UPDATE_ELEM, h.address, bad, pages.address) == -errno.EFAULT
        assert call(HelperId.MAP_DELETE_ELEM, h.address, bad) == -errno.EFAULT
        assert call(HelperId.GET_CURRENT_COMM, bad, 16) == -errno.EFAULT
    assert len(h) == 0 and host == bytearray(b"\x01\0\0\0" * 4)
    for forged in (pages.address, host_addr, h.address + 8, 0):
        assert call(HelperId.MAP_LOOKUP_ELEM, forged, pages.address) == 0
        assert call(HelperId.MAP_UPDATE_ELEM, forged, pages.address, pages.address) == -errno.EINVAL
    assert call(HelperId.MAP_UPDATE_ELEM, h.address, pages.address, pages.address) == 0
    assert len(h) == 1


def test_map_helpers_check_their_arguments_in_the_interpreter() -> None:
    not_a_map = load("lddw r1, 0x12345678\nmov r2, r10\nadd r2, -4\nstw [r10-4], 0\ncall 1\nexit", verify=False)
    with pytest.raises(ExecutionError, match="not a map"):
        not_a_map.execute()
    h = HashMap(name="H")
    bad_key = load("lddw r1, map:H\nlddw r2, 0x1000\ncall 1\nexit", h, verify=False)
    with pytest.raises(ExecutionError, match="key"):
        bad_key.execute()


# ---------------------------------------------------------------------------------------------
# Maps: 1, 2, 3, 87, 88, 89

MAP_OPS = """
    mov r6, r1
    stw [r10-4], 3          ; key
    stdw [r10-16], 1234     ; value
    lddw r1, map:H
    mov r2, r10
    add r2, -4
    mov r3, r10
    add r3, -16
    mov r4, 0
    call 2                  ; update(H, &key, &value, BPF_ANY)
    stxdw [r6+0], r0
    lddw r1, map:H
    mov r2, r10
    add r2, -4
    call 1                  ; lookup
    jeq r0, 0, out
    ldxdw r1, [r0]
    stxdw [r6+8], r1
    lddw r1, map:H
    mov r2, r10
    add r2, -4
    call 3                  ; delete
    stxdw [r6+16], r0
    lddw r1, map:H
    mov r2, r10
    add r2, -4
    call 3                  ; delete again
    stxdw [r6+24], r0
out:
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_lookup_update_delete(engine: str) -> None:
    h = HashMap(key_size=4, value_size=8, max_entries=4, name="H")
    vm = load(MAP_OPS, h)
    mem = bytearray(32)
    run(vm, engine, mem)
    assert [s64(x) for x in struct.unpack("<4Q", mem)] == [0, 1234, 0, -errno.ENOENT]
    assert len(h) == 0


PERCPU_LOOKUP = """
    mov r6, r1
    stw [r10-4], 0
    lddw r1, map:P
    mov r2, r10
    add r2, -4
    ldxw r3, [r6+0]         ; the CPU, from mem
    call 195                ; bpf_map_lookup_percpu_elem
    mov r1, 0xff
    jeq r0, 0, out          ; 0xff: NULL
    ldxw r1, [r0]
out:
    stxw [r6+4], r1
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", [PerCpuArray, PerCpuHashMap])
def test_lookup_percpu_elem_reads_the_cpus_value(engine: str, kind: type) -> None:
    m = kind(value_size=4, max_entries=2, name="P") if kind is PerCpuArray else kind(
        key_size=4, value_size=4, max_entries=2, name="P")
    m[0] = [10 + c for c in range(num_cpus())]
    vm = load(PERCPU_LOOKUP, m)
    seen = []
    for cpu in (0, num_cpus() - 1, num_cpus(), 2**32 - 1):  # the last two: past the CPUs, NULL
        mem = bytearray(struct.pack("<II", cpu, 0))
        run(vm, engine, mem)
        seen.append(struct.unpack_from("<I", mem, 4)[0])
    assert seen == [10, 10 + num_cpus() - 1, 0xFF, 0xFF]


def test_lookup_percpu_elem_takes_only_percpu_maps() -> None:
    with pytest.raises(VerifierError, match="map"):
        load(PERCPU_LOOKUP, Array(value_size=4, max_entries=2, name="P")).check()


QUEUE_OPS = """
    mov r6, r1
    stw [r10-4], 11
    lddw r1, map:Q
    mov r2, r10
    add r2, -4
    ldxdw r3, [r6+0]        ; push flags from mem
    call 87
    stxdw [r6+8], r0
    stw [r10-8], 0
    lddw r1, map:Q
    mov r2, r10
    add r2, -8
    call 89                 ; peek
    stxdw [r6+16], r0
    ldxw r1, [r10-8]
    stxw [r6+24], r1
    lddw r1, map:Q
    mov r2, r10
    add r2, -8
    call 88                 ; pop
    stxdw [r6+32], r0
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_push_pop_peek(engine: str) -> None:
    q = Queue(value_size=4, max_entries=2, name="Q")
    vm = load(QUEUE_OPS, q)
    q.push(1)
    q.push(2)
    def once(flags: int) -> tuple[int, int, int, int]:
        mem = bytearray(struct.pack("<Q", flags) + bytes(32))
        run(vm, engine, mem)
        push_rc, peek_rc, peeked, pop_rc = struct.unpack_from("<qqI4xq", mem, 8)
        return push_rc, peek_rc, peeked, pop_rc

    assert once(0) == (-errno.E2BIG, 0, 1, 0)  # full: the push fails; peek and pop see 1
    assert once(0) == (0, 0, 2, 0)  # [2] -> [2, 11] -> pop 2
    q.push(12)  # [11, 12]: full
    assert once(BPF_EXIST) == (0, 0, 12, 0)  # BPF_EXIST drops 11, the oldest: [12, 11] -> pop 12
    assert once(4) == (-errno.EINVAL, 0, 11, 0)
    assert len(q) == 0


# ---------------------------------------------------------------------------------------------
# Memory, time, identity: 4, 112, 113, 5, 125, 118, 7, 8, 14, 15, 16

PROBE_READ = """
    mov r6, r1
    stdw [r10-8], -1
    mov r1, r10
    add r1, -8
    mov r2, 8
    {src}
    call {helper}
    stxdw [r6+16], r0
    ldxdw r1, [r10-8]
    stxdw [r6+8], r1
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("helper", [HelperId.PROBE_READ, HelperId.PROBE_READ_USER, HelperId.PROBE_READ_KERNEL])
def test_probe_read(engine: str, helper: int) -> None:
    ok = load(PROBE_READ.format(src="mov r3, r6", helper=helper))
    mem = bytearray(b"ABCDEFGH" + bytes(16))
    run(ok, engine, mem)
    assert mem[8:16] == b"ABCDEFGH" and struct.unpack_from("<q", mem, 16)[0] == 0
    fault = load(PROBE_READ.format(src="lddw r3, 0x1000", helper=helper))
    mem = bytearray(b"ABCDEFGH" + bytes(16))
    run(fault, engine, mem)
    assert mem[8:16] == bytes(8)  # zeroed on a fault, as the kernel
    assert struct.unpack_from("<q", mem, 16)[0] == -errno.EFAULT


@pytest.mark.parametrize("engine", ENGINES)
def test_clocks(engine: str) -> None:
    mono, boot, jiffies = (load(f"call {h}\nexit") for h in (5, 125, 118))
    t0 = time.monotonic_ns()
    v = run(mono, engine)
    assert t0 <= v <= time.monotonic_ns()
    b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    v = run(boot, engine)
    assert b0 <= v <= time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    j = run(jiffies, engine)
    assert abs(j - time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 4_000_000) <= 2  # HZ = 250


@pytest.mark.parametrize("engine", ENGINES)
def test_prandom(engine: str) -> None:
    vm = load("call 7\nexit")
    values = [run(vm, engine) for _ in range(32)]
    assert all(0 <= v < 1 << 32 for v in values)
    assert len(set(values)) > 16


@pytest.mark.parametrize("engine", ENGINES)
def test_smp_processor_id(engine: str) -> None:
    vm = load("call 8\nexit")
    for cpu in range(num_cpus()):
        set_current_cpu(cpu)
        assert run(vm, engine) == cpu


@pytest.mark.parametrize("engine", ENGINES)
def test_pid_tgid_uid_gid(engine: str) -> None:
    assert run(load("call 14\nexit"), engine) == os.getpid() << 32 | threading.get_native_id()
    assert run(load("call 15\nexit"), engine) == os.getgid() << 32 | os.getuid()
    results: list[int] = []
    vm = load("call 14\nexit")
    t = threading.Thread(target=lambda: results.append(run(vm, engine) & 0xFFFFFFFF))
    t.start()
    t.join()
    assert results[0] != threading.get_native_id()  # the thread id of the calling thread


COMM = """
    mov r6, r1
    mov r1, r6
    mov r2, {size}
    call 16
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_get_current_comm(engine: str) -> None:
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_bytes().strip()
    mem = bytearray(b"\xff" * 16)
    assert run(load(COMM.format(size=16)), engine, mem) == 0
    assert mem == comm[:15].ljust(16, b"\0")
    mem = bytearray(b"\xff" * 16)
    assert run(load(COMM.format(size=4)), engine, mem) == 0
    assert mem[:4] == comm[:3] + b"\0" and mem[4:] == b"\xff" * 12


# ---------------------------------------------------------------------------------------------
# trace_printk: 6

PRINTK = """
    mov r6, r1
    mov r1, r6
    mov r2, {size}
    mov r3, -5
    mov r4, 255
    mov r5, r6
    add r5, {string}
    call 6
    exit
"""


def printk_mem(fmt: bytes) -> tuple[bytearray, int, int]:
    mem = bytearray(fmt + b"\0")
    string_at = len(mem)
    mem += b"hello\0"
    return mem, len(fmt) + 1, string_at


@pytest.mark.parametrize("engine", ENGINES)
def test_trace_printk(engine: str) -> None:
    mem, size, string_at = printk_mem(b"d=%d x=%x s=%s lld=%lld\n")
    vm = load(PRINTK.format(size=size, string=string_at))
    stream = io.StringIO()
    vm.std.trace_stream = stream
    n = run(vm, engine, mem)
    # Only three arguments: %lld has none left, which the kernel rejects.
    assert s64(n) == -errno.EINVAL and vm.trace_log == []
    mem, size, string_at = printk_mem(b"d=%d x=%x s=%s\n")
    vm = load(PRINTK.format(size=size, string=string_at))
    vm.std.trace_stream = stream
    n = run(vm, engine, mem)
    assert vm.trace_log == ["d=-5 x=ff s=hello\n"]
    assert n == len("d=-5 x=ff s=hello\n")
    assert stream.getvalue() == "d=-5 x=ff s=hello\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_trace_printk_rejects_bad_formats(engine: str) -> None:
    for fmt in (b"%q", b"%d %d %d %d", b"50%"):
        mem, size, string_at = printk_mem(fmt)
        vm = load(PRINTK.format(size=size, string=string_at))
        assert s64(run(vm, engine, mem)) == -errno.EINVAL, fmt
    mem = bytearray(b"no nul")
    vm = load(PRINTK.format(size=len(mem), string=0))
    assert s64(run(vm, engine, mem)) == -errno.EINVAL


def test_format_printk() -> None:
    def read(addr: int) -> str:
        return {1: "abc"}.get(addr, "")

    assert format_printk("%d %i %u", [-1 & (1 << 64) - 1, 7, -1 & (1 << 64) - 1], read) == "-1 7 4294967295"
    assert format_printk("%ld %lu %llx", [-2 & (1 << 64) - 1] * 3, read) == \
        "-2 18446744073709551614 fffffffffffffffe"
    assert format_printk("%5d|%-4x|%08X", [42, 10, 0xBEEF], read) == "   42|a   |0000BEEF"
    assert format_printk("%c%c", [65, 0x142], read) == "AB"
    assert format_printk("%s %s %%", [1, 2], read) == "abc  %"
    assert format_printk("%hhd %hd", [0xFF, 0x8000], read) == "-1 -32768"
    assert format_printk("%p", [0x1234], read) == "0x1234"
    assert format_printk("%px", [0x1234], read) == "0000000000001234"

    def read_bytes(addr: int, size: int) -> bytes:
        return bytes(range(addr, addr + size))

    assert format_printk("%pI4 %pi4", [1, 8], read, read_bytes=read_bytes) == "1.2.3.4 008.009.010.011"
    assert format_printk("%pI6", [0], read, read_bytes=read_bytes) == \
        "0001:0203:0405:0607:0809:0a0b:0c0d:0e0f"
    assert format_printk("%pi6", [0], read, read_bytes=read_bytes) == "000102030405060708090a0b0c0d0e0f"
    assert format_printk("%pI4", [1], read) is None  # no way to read the address
    assert format_printk("%.2s", [1], read) == "ab"
    assert format_printk("%d", [], read) is None
    assert format_printk("%y", [1], read) is None


# ---------------------------------------------------------------------------------------------
# Events: 25, 130-134

PERF_INDEX = """
    mov r6, r1
    stdw [r10-8], 42
    lddw r2, map:EVENTS
    ldxdw r3, [r6+0]
    mov r4, r10
    add r4, -8
    mov r5, 8
    call 25
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_perf_event_output_flags(engine: str) -> None:
    events = PerfEventArray(max_entries=num_cpus() + 1, name="EVENTS", event_type="<Q")
    vm = load(PERF_INDEX, events)
    assert run(vm, engine, struct.pack("<Q", 0)) == 0
    assert events.read_events() == [42]
    assert s64(run(vm, engine, struct.pack("<Q", num_cpus()))) == -errno.ENOENT  # no ring at that index
    assert s64(run(vm, engine, struct.pack("<Q", num_cpus() + 1))) == -errno.E2BIG
    assert s64(run(vm, engine, struct.pack("<Q", 1 << 40))) == -errno.EINVAL  # ctx bytes: not a packet program


RINGBUF_PROGRAM = """
    mov r6, r1
    stdw [r10-8], 7
    lddw r1, map:RB
    mov r2, r10
    add r2, -8
    mov r3, 8
    mov r4, 0
    call 130                ; output 8 bytes
    stxdw [r6+0], r0
    lddw r1, map:RB
    mov r2, 16
    mov r3, 0
    call 131                ; reserve 16
    jeq r0, 0, fail
    stdw [r0+0], 8
    stdw [r0+8], 9
    mov r1, r0
    mov r2, 0
    call 132                ; submit
    lddw r1, map:RB
    mov r2, 8
    mov r3, 0
    call 131                ; reserve 8
    jeq r0, 0, fail
    stdw [r0+0], 10
    mov r1, r0
    mov r2, 0
    call 133                ; discard
    lddw r1, map:RB
    mov r2, 0
    call 134                ; BPF_RB_AVAIL_DATA
    stxdw [r6+8], r0
    lddw r1, map:RB
    mov r2, 1
    call 134                ; BPF_RB_RING_SIZE
    stxdw [r6+16], r0
    mov r0, 0
    exit
fail:
    mov r0, 1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_ringbuf_output_reserve_submit_discard_query(engine: str) -> None:
    rb = RingBuf(max_entries=4096, name="RB")
    # The verifier types a reservation as a value of the ring's map (value_size 0), so stores
    # into it are not provable yet: run unverified.
    vm = load(RINGBUF_PROGRAM, rb, verify=False)
    mem = bytearray(24)
    assert run(vm, engine, mem) == 0
    out, avail, size = struct.unpack("<qQQ", mem)
    assert out == 0 and size == 4096
    assert avail == 16 + 24 + 16  # three records of header + data, 8-aligned
    assert rb.read_events() == [struct.pack("<Q", 7), struct.pack("<QQ", 8, 9)]
    assert rb.avail_data == 0


RING_FILL = """
    mov r6, r1
    lddw r1, map:RB
    mov r2, r6
    mov r3, 1000
    mov r4, 0
    call 130
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_ringbuf_full_and_wraparound(engine: str) -> None:
    rb = RingBuf(max_entries=4096, name="RB")
    vm = load(RING_FILL, rb)
    record = bytearray(struct.pack("<Q", 1000) + bytes(992))
    results = [s64(run(vm, engine, record)) for _ in range(5)]
    assert results == [0, 0, 0, 0, -errno.EAGAIN]  # 4 x 1008 bytes fit in 4096
    assert len(rb.read_events()) == 4
    for i in range(12):  # records now straddle the end of the ring: fillers keep them whole
        record[8] = i
        assert run(vm, engine, record) == 0
        (event,) = rb.read_events()
        assert len(event) == 1000 and event[0] == 1000 % 256 and event[8] == i


RING_LEAK = """
    lddw r1, map:RB
    mov r2, 16
    mov r3, 0
    call 131                ; reserve 16, never submitted
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("engine", [*ENGINES, "batch"])
def test_ringbuf_record_left_reserved_is_discarded_when_the_run_ends(engine: str) -> None:
    rb = RingBuf(max_entries=4096, name="RB")
    with pytest.raises(VerifierError, match=r"Unreleased reference id=[0-9]+ alloc_insn=4"):
        load(RING_LEAK, rb).check()
    leak = load(RING_LEAK, rb, verify=False)
    for _ in range(3):  # in memory, every time (the bare JIT path after the first run)
        if engine == "batch":
            assert list(leak.execute_batch([bytearray(8)] * 2)) == [0, 0]
        else:
            assert run(leak, engine, bytearray(8)) == 0
        assert rb.read_events() == []
    fill = load(RING_FILL, rb)
    record = bytearray(struct.pack("<Q", 1000) + bytes(992))
    assert run(fill, engine if engine != "batch" else "jit", record) == 0  # the ring is not blocked
    assert [len(e) for e in rb.read_events()] == [1000] and rb.avail_data == 0


def test_ringbuf_submit_of_a_bad_pointer_is_an_error() -> None:
    rb = RingBuf(max_entries=4096, name="RB")
    vm = load("mov r1, r10\nadd r1, -8\nmov r2, 0\ncall 132\nmov r0, 0\nexit", rb, verify=False)
    with pytest.raises(ExecutionError, match="not a reserved"):
        vm.execute()


# ---------------------------------------------------------------------------------------------
# Redirects and socket maps: 51, 52, 53, 60

REDIRECT_MAP = """
    lddw r1, map:TX
    mov r2, {key}
    mov r3, {flags}
    call 51
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_redirect_map(engine: str) -> None:
    tx = DevMap(max_entries=4, name="TX")
    tx[1] = 7
    vm = load(REDIRECT_MAP.format(key=1, flags=0), tx)
    assert run(vm, engine) == 4  # XDP_REDIRECT
    assert vm.std.redirect.target == 7 and vm.std.redirect.key == 1
    vm.std.clear_redirect()
    assert run(load(REDIRECT_MAP.format(key=2, flags=2), tx), engine) == 2  # missing: the flags' action
    assert run(load(REDIRECT_MAP.format(key=1, flags=0x100), tx), engine) == 0  # bad flags: XDP_ABORTED
    assert vm.std.redirect is None


SOCK_REDIRECT = """
    lddw r2, map:SOCKS
    mov r3, {key}
    mov r4, {flags}
    call {helper}
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("helper", [HelperId.SK_REDIRECT_MAP, HelperId.MSG_REDIRECT_MAP])
def test_sk_and_msg_redirect_map(engine: str, helper: int) -> None:
    socks = SockMap(max_entries=4, name="SOCKS")
    backend = object()
    socks[2] = backend
    vm = load(SOCK_REDIRECT.format(key=2, flags=1, helper=helper), socks)
    assert run(vm, engine) == 1  # SK_PASS
    assert vm.std.redirect.target is backend and vm.std.redirect.flags == 1
    assert run(load(SOCK_REDIRECT.format(key=3, flags=0, helper=helper), socks), engine) == 0  # SK_DROP
    assert run(load(SOCK_REDIRECT.format(key=2, flags=2, helper=helper), socks), engine) == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("helper", [HelperId.SK_REDIRECT_HASH, HelperId.MSG_REDIRECT_HASH])
def test_sk_and_msg_redirect_hash(engine: str, helper: int) -> None:
    flows = SockHash(key_size=4, max_entries=4, name="FLOWS")
    backend = object()
    flows.insert((77).to_bytes(4, "little"), backend)
    vm = load(SOCK_KEYED.format(key=77, name="FLOWS", flags=1, helper=helper), flows)
    assert run(vm, engine) == 1  # SK_PASS
    assert vm.std.redirect.target is backend and vm.std.redirect.key == (77).to_bytes(4, "little")
    assert run(load(SOCK_KEYED.format(key=78, name="FLOWS", flags=0, helper=helper), flows), engine) == 0  # SK_DROP
    assert run(load(SOCK_KEYED.format(key=77, name="FLOWS", flags=2, helper=helper), flows), engine) == 0


# A socket helper of a key on the stack: bpf_sock_map_update, bpf_sk_redirect_hash, ...
SOCK_KEYED = """
    stw [r10-4], {key}
    lddw r2, map:{name}
    mov r3, r10
    add r3, -4
    mov r4, {flags}
    call {helper}
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_sock_map_update(engine: str) -> None:
    socks = SockMap(max_entries=4, name="SOCKS")
    vm = load(SOCK_KEYED.format(key=3, name="SOCKS", flags=0, helper=53), socks)
    assert s64(run(vm, engine)) == -errno.EOPNOTSUPP  # no socket behind the context
    conn = object()
    vm.std.socket = conn
    assert run(vm, engine) == 0
    assert socks[3] is conn
    noexist = load(SOCK_KEYED.format(key=3, name="SOCKS", flags=BPF_NOEXIST, helper=53), socks)
    noexist.std.socket = object()
    assert s64(run(noexist, engine)) == -errno.EEXIST
    flows = SockHash(key_size=4, max_entries=4, name="FLOWS")
    hashed = load(SOCK_KEYED.format(key=9, name="FLOWS", flags=0, helper=70), flows)  # bpf_sock_hash_update
    hashed.std.socket = conn
    assert run(hashed, engine) == 0
    assert flows[9] is conn
    for helper, m in ((53, flows), (70, socks)):  # each takes its own map type, as in the kernel
        with pytest.raises(VerifierError, match=f"cannot pass map_type {int(m.map_type)} into func"):
            run(load(SOCK_KEYED.format(key=9, name=m.name, flags=0, helper=helper), m), engine)


@pytest.mark.parametrize(("prog_type", "helper", "allowed"), [
    ("sched_cls", 2, True), ("xdp", 3, True), ("sock_ops", 3, True), ("sock_ops", 2, False),
    ("kprobe", 3, False), ("cgroup_skb", 2, False),
])
def test_socket_maps_change_only_where_the_kernel_lets_them(prog_type: str, helper: int, allowed: bool) -> None:
    # The kernel's may_update_sockmap: types in which no socket lock can be held.
    socks = SockMap(max_entries=4, name="SOCKS")
    # an update stores the context's socket (a socket map's values are sockets)
    sk = {"sock_ops": 184}.get(prog_type, 168)
    value = f"ldxdw r3, [r1+{sk}]\njne r3, 0, +2\nmov r0, 0\nexit\n" if helper == 2 else ""
    vm = load(f"stw [r10-4], 1\n{value}lddw r1, map:SOCKS\nmov r2, r10\nadd r2, -4\nmov r4, 0\ncall {helper}\n"
              "mov r0, 0\nexit", socks, prog_type=prog_type)
    check_verdict(vm, allowed, "cannot update sockmap in this context")
