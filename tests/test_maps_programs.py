"""Maps used by assembled programs: the seed's examples (firewall set, array, perf events, stack,
queue, LPM routes), per-CPU values, global data, and program-side map operations vs a model."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.linux.maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    Array,
    HashMap,
    LpmKey,
    LpmTrie,
    PerCpuArray,
    PerCpuHashMap,
    PerfEventArray,
    Queue,
    Stack,
    num_cpus,
    set_current_cpu,
)
from jitbpf.vm import VM
from tests.support import ENGINES, load, run, s64

XDP_DROP, XDP_PASS = 1, 2


def packet(src: str, dst: str) -> bytearray:
    """An Ethernet frame carrying an IPv4 header (addresses at offsets 26 and 30)."""
    eth = bytes(12) + b"\x08\x00"
    ip = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]) + ipaddress.IPv4Address(src).packed + \
        ipaddress.IPv4Address(dst).packed
    return bytearray(eth + ip)


@pytest.fixture(autouse=True)
def _cpu0() -> object:
    set_current_cpu(0)
    yield
    set_current_cpu(None)


FIREWALL = """
    ldxw r2, [r1+26]        ; source address, network order
    be32 r2                 ; u32::from_be
    stxw [r10-4], r2
    lddw r1, map:BLOCKED_IPS
    mov r2, r10
    add r2, -4
    call 1                  ; bpf_map_lookup_elem
    jeq r0, 0, pass
    mov r0, 1               ; XDP_DROP
    exit
pass:
    mov r0, 2               ; XDP_PASS
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_blocked_ips_firewall(engine: str) -> None:
    blocked = HashMap(key_type=ctypes.c_uint32, value_type=ctypes.c_uint8, max_entries=1024, name="BLOCKED_IPS")
    blocked.insert(int(ipaddress.IPv4Address("192.168.0.1")), 1, 0)
    blocked.insert(int(ipaddress.IPv4Address("192.168.0.2")), 1, 0)
    vm = load(FIREWALL, blocked)
    assert run(vm, engine, packet("192.168.0.1", "10.0.0.1")) == XDP_DROP
    assert run(vm, engine, packet("192.168.0.2", "10.0.0.1")) == XDP_DROP
    assert run(vm, engine, packet("192.168.0.3", "10.0.0.1")) == XDP_PASS
    del blocked[int(ipaddress.IPv4Address("192.168.0.1"))]  # user space unblocks, the program sees it
    assert run(vm, engine, packet("192.168.0.1", "10.0.0.1")) == XDP_PASS


ARRAY_INCREMENT = """
    stw [r10-4], 1          ; index 1
    lddw r1, map:ARRAY
    mov r2, r10
    add r2, -4
    call 1
    jeq r0, 0, miss
    ldxw r1, [r0]
    add r1, 1
    stxw [r0], r1           ; write through the lookup pointer
    mov r0, r1
    exit
miss:
    mov r0, -1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_array_set_get_through_a_program(engine: str) -> None:
    array = Array(value_size=4, max_entries=1024, name="ARRAY")
    array.set(1, 42, 0)
    vm = load(ARRAY_INCREMENT, array)
    assert run(vm, engine) == 43
    assert array.get(1) == 43  # Python sees the program's store
    array[1] = 100
    assert run(vm, engine) == 101


@pytest.mark.parametrize("engine", ENGINES)
def test_array_lookup_out_of_range_is_null(engine: str) -> None:
    array = Array(value_size=4, max_entries=1, name="ARRAY")
    vm = load(ARRAY_INCREMENT, array)
    assert s64(run(vm, engine)) == -1


class PacketLog(ctypes.Structure):
    _fields_ = [("src_addr", ctypes.c_uint32), ("dst_addr", ctypes.c_uint32)]


PACKET_LOG = """
    ldxw r2, [r1+26]
    be32 r2
    stxw [r10-8], r2        ; log_entry.src_addr
    ldxw r3, [r1+30]
    be32 r3
    stxw [r10-4], r3        ; log_entry.dst_addr
    lddw r2, map:EVENTS
    mov32 r3, -1            ; BPF_F_CURRENT_CPU
    mov r4, r10
    add r4, -8
    mov r5, 8
    call 25                 ; bpf_perf_event_output(ctx, &EVENTS, flags, &log_entry, 8)
    mov r0, 2
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_packet_log_perf_events(engine: str) -> None:
    events = PerfEventArray(max_entries=1024, name="EVENTS", event_type=PacketLog)
    vm = load(PACKET_LOG, events)
    flows = [("10.0.0.1", "10.0.0.2"), ("192.168.1.7", "8.8.8.8"), ("172.16.0.1", "10.1.2.3")]
    for src, dst in flows:
        assert run(vm, engine, packet(src, dst)) == XDP_PASS
    got = [(str(ipaddress.IPv4Address(e.src_addr)), str(ipaddress.IPv4Address(e.dst_addr)))
           for e in events.read_events()]
    assert got == flows
    assert events.read_events() == []
    if num_cpus() > 1:
        set_current_cpu(1)
        run(vm, engine, packet("1.2.3.4", "5.6.7.8"))
        assert events.read_events(cpu=0) == []
        assert [e.src_addr for e in events.read_events(cpu=1)] == [0x01020304]


@pytest.mark.parametrize("engine", ENGINES)
def test_packet_log_async_reader_and_poll(engine: str) -> None:
    events = PerfEventArray(name="EVENTS", event_type=PacketLog)
    vm = load(PACKET_LOG, events)

    async def produce_and_read() -> list[int]:
        async def produce() -> None:
            for i in range(5):
                run(vm, engine, packet(f"10.0.0.{i}", "10.9.9.9"))
                await asyncio.sleep(0)

        task = asyncio.create_task(produce())
        seen: list[int] = []
        async for event in events:
            seen.append(event.src_addr & 0xFF)
            if len(seen) == 5:
                break
        await task
        return seen

    assert asyncio.run(asyncio.wait_for(produce_and_read(), 10)) == [0, 1, 2, 3, 4]
    run(vm, engine, packet("10.0.0.9", "10.9.9.9"))
    assert [e.src_addr & 0xFF for e in events.poll(timeout=1.0)] == [9]


@pytest.mark.parametrize("engine", ENGINES)
def test_full_perf_ring_counts_lost_records(engine: str) -> None:
    events = PerfEventArray(name="EVENTS", buffer_size=4096)
    vm = load(PACKET_LOG, events)
    for _ in range(300):  # 16 bytes per record: 256 fit
        run(vm, engine, packet("1.1.1.1", "2.2.2.2"))
    assert len(events.read_events()) + events.lost == 300
    assert events.lost > 0


PUSH_SOURCE = """
    ldxw r2, [r1+26]
    be32 r2
    stxw [r10-4], r2
    lddw r1, map:STACK
    mov r2, r10
    add r2, -4
    mov r3, 0
    call 87                 ; bpf_map_push_elem
    exit
"""

POP = """
    stw [r10-4], 0
    lddw r1, map:QUEUE
    mov r2, r10
    add r2, -4
    call {helper}
    jne r0, 0, empty
    ldxw r0, [r10-4]
    exit
empty:
    mov r0, -1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_stack_pushed_by_program_popped_by_python(engine: str) -> None:
    stack = Stack(value_size=4, max_entries=2, name="STACK")
    vm = load(PUSH_SOURCE, stack)
    assert run(vm, engine, packet("10.0.0.1", "1.1.1.1")) == 0
    assert run(vm, engine, packet("10.0.0.2", "1.1.1.1")) == 0
    assert s64(run(vm, engine, packet("10.0.0.3", "1.1.1.1"))) == -errno.E2BIG
    assert stack.pop() == int(ipaddress.IPv4Address("10.0.0.2"))
    assert stack.pop() == int(ipaddress.IPv4Address("10.0.0.1"))


@pytest.mark.parametrize("engine", ENGINES)
def test_queue_pushed_by_python_popped_by_program(engine: str) -> None:
    queue = Queue(value_size=4, max_entries=8, name="QUEUE")
    pop, peek = load(POP.format(helper=88), queue), load(POP.format(helper=89), queue)
    for v in (5, 6, 7):
        queue.push(v)
    assert run(peek, engine) == 5
    assert [run(pop, engine) for _ in range(3)] == [5, 6, 7]
    assert s64(run(pop, engine)) == -1
    assert len(queue) == 0


LPM_ROUTE = """
    ldxw r2, [r1+30]        ; destination, network order: the trie compares bytes
    stw [r10-8], 32         ; key.prefixlen
    stxw [r10-4], r2        ; key.data
    lddw r1, map:ROUTES
    mov r2, r10
    add r2, -8
    call 1
    jeq r0, 0, none
    ldxb r0, [r0]
    exit
none:
    mov r0, 0
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_lpm_routes_from_a_program(engine: str) -> None:
    routes = LpmTrie(key_size=8, value_size=1, max_entries=1024, name="ROUTES")
    routes.insert(LpmKey(8, int(ipaddress.IPv4Address("10.0.0.0"))), 1, 0)
    routes.insert(LpmKey(16, int(ipaddress.IPv4Address("10.11.0.0"))), 2, 0)
    vm = load(LPM_ROUTE, routes)
    assert run(vm, engine, packet("1.1.1.1", "10.11.1.1")) == 2
    assert run(vm, engine, packet("1.1.1.1", "10.1.1.1")) == 1
    assert run(vm, engine, packet("1.1.1.1", "11.1.1.1")) == 0


PERCPU_COUNT = """
    stw [r10-4], 0
    lddw r1, map:COUNTS
    mov r2, r10
    add r2, -4
    call 1
    jeq r0, 0, out
    mov r1, 1
    lock add [r0], r1
    ldxdw r0, [r0]
out:
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_percpu_array_counts_per_cpu(engine: str) -> None:
    counts = PerCpuArray(value_size=8, max_entries=1, name="COUNTS")
    vm = load(PERCPU_COUNT, counts)
    runs = [3, 5] + [1] * (num_cpus() - 2)
    for cpu, n in enumerate(runs[: num_cpus()]):
        set_current_cpu(cpu)
        for i in range(n):
            assert run(vm, engine) == i + 1
    assert counts[0] == runs[: num_cpus()]


PROGRAM_UPDATE = """
    mov r6, r1
    lddw r1, map:H
    mov r2, r6              ; key: mem[0:4]
    mov r3, r6
    add r3, 4               ; value: mem[4:12]
    ldxdw r4, [r6+12]       ; flags: mem[12:20]
    call 2
    exit
"""
PROGRAM_DELETE = """
    mov r2, r1
    lddw r1, map:H
    call 3
    exit
"""
PROGRAM_LOOKUP = """
    mov r2, r1
    lddw r1, map:H
    call 1
    jeq r0, 0, miss
    ldxdw r0, [r0]
    exit
miss:
    mov r0, -1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_percpu_hash_program_updates_only_its_cpu(engine: str) -> None:
    h = PerCpuHashMap(key_size=4, value_size=8, max_entries=4, name="H")
    update, lookup = load(PROGRAM_UPDATE, h), load(PROGRAM_LOOKUP, h)
    set_current_cpu(num_cpus() - 1)
    assert run(update, engine, struct.pack("<IQQ", 7, 99, BPF_ANY)) == 0
    assert h[7] == [0] * (num_cpus() - 1) + [99]
    assert run(lookup, engine, struct.pack("<I", 7)) == 99
    set_current_cpu(0)
    assert run(lookup, engine, struct.pack("<I", 7)) == (99 if num_cpus() == 1 else 0)


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["update", "delete", "lookup"]), st.integers(0, 9),
                              st.integers(0, 2**62), st.sampled_from([BPF_ANY, BPF_NOEXIST, BPF_EXIST, 5])),
                    max_size=30))
def test_program_hash_operations_match_a_dict(engine: str, ops: list[tuple[str, int, int, int]]) -> None:
    cap = 5
    h = HashMap(key_size=4, value_size=8, max_entries=cap, name="H")
    update, delete, lookup = load(PROGRAM_UPDATE, h), load(PROGRAM_DELETE, h), load(PROGRAM_LOOKUP, h)
    model: dict[int, int] = {}
    for op, key, value, flags in ops:
        if op == "update":
            want = 0
            if flags > BPF_EXIST:
                want = -errno.EINVAL
            elif flags == BPF_NOEXIST and key in model:
                want = -errno.EEXIST
            elif flags == BPF_EXIST and key not in model:
                want = -errno.ENOENT
            elif key not in model and len(model) >= cap:
                want = -errno.E2BIG
            assert s64(run(update, engine, struct.pack("<IQQ", key, value, flags))) == want
            if want == 0:
                model[key] = value
        elif op == "delete":
            want = 0 if key in model else -errno.ENOENT
            assert s64(run(delete, engine, struct.pack("<I", key))) == want
            model.pop(key, None)
        else:
            assert s64(run(lookup, engine, struct.pack("<I", key))) == model.get(key, -1)
    assert dict(h.items()) == model


GLOBAL_DATA = """
    lddw r1, map_value:.data+4
    ldxw r0, [r1]
    stw [r1+4], 99
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_global_data_through_map_value_lddw(engine: str) -> None:
    data = Array(value_size=16, max_entries=1, name=".data", value_type=bytes)
    data[0] = struct.pack("<IIII", 1, 2, 3, 4)
    vm = load(GLOBAL_DATA, data)
    assert run(vm, engine) == 2
    assert struct.unpack("<IIII", data[0]) == (1, 2, 99, 4)


def test_map_regions_reach_the_memory_map() -> None:
    array = Array(value_size=4, max_entries=4, name="ARRAY")
    h = HashMap(name="H")
    vm = load(ARRAY_INCREMENT, array, h)
    assert [r.name for r in vm.map_regions()] == ["map ARRAY", "map H"]
    vm.execute()
    assert vm.memory.find(array.value_address(), 16) is not None
    assert vm.map_by_name("H") is h
    assert vm.map_handles() == {"ARRAY": 1, "H": 2}
    with pytest.raises(KeyError):
        vm.map_by_name("nope")


def test_add_map_handles() -> None:
    a, b = HashMap(name="A"), HashMap(name="B")
    vm = VM(assemble("mov r0, 0\nexit"))
    assert vm.add_map(a) == 1
    assert vm.add_map(a) == 1  # already there
    assert vm.add_map(b) == 2
    other = VM(assemble("mov r0, 0\nexit"))
    assert other.add_map(b) == 2  # a map keeps its handle across VMs when it can
    assert a.handle == 1 and b.handle == 2


def test_the_verifier_checks_whole_keys_and_proves_map_value_accesses() -> None:
    """The VM gives the verifier its maps: a key pointer must cover key_size bytes (the C
    helpers read them all), and loads from a value within value_size need no runtime check."""
    from jitbpf.errors import VerifierError

    m = HashMap(key_size=4, value_size=8, max_entries=4, name="H")
    short_key = "stb [r10-1], 0\nlddw r1, map:H\nmov r2, r10\nadd r2, -1\ncall 1\nmov r0, 0\nexit"
    with pytest.raises(VerifierError, match="key"):
        load(short_key, m).check()
    value_load = ("stw [r10-4], 0\nlddw r1, map:H\nmov r2, r10\nadd r2, -4\ncall 1\n"
                  "jeq r0, 0, out\nldxdw r0, [r0+0]\nout:\nexit")
    vm = load(value_load, m)
    vm.check()
    assert 7 in vm._proven  # the ldxdw from the value (lddw takes two slots)
    m[0] = 77
    assert run(vm, "jit") == run(vm, "interp") == 77


@st.composite
def _map_value_programs(draw: st.DrawFn) -> str:
    """Look a value up in a one-element array map, maybe check it against NULL, then move and
    dereference the pointer in random ways (constant and bounded variable offsets)."""
    lines = ["stw [r10-4], 0", "lddw r1, map:A", "mov r2, r10", "add r2, -4", "call 1"]
    if draw(st.integers(0, 9)):
        lines.append("jeq r0, 0, @end")
    lines += ["mov r3, r0", "mov r4, 1"]
    sizes = ("b", "h", "w", "dw")
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(("add", "load", "store", "var", "jump", "copy")))
        off = draw(st.integers(-8, 40))
        reg = draw(st.sampled_from(("r0", "r3")))
        match kind:
            case "add":
                lines.append(f"add {reg}, {draw(st.integers(-16, 24))}")
            case "load":
                lines.append(f"ldx{draw(st.sampled_from(sizes))} r4, [{reg}{off:+d}]")
            case "store":
                lines.append(f"stx{draw(st.sampled_from(sizes))} [{reg}{off:+d}], r4")
            case "var":
                lines += ["ldxb r5, [r10-4]", f"and r5, {draw(st.sampled_from((1, 7, 15, 31)))}", f"add {reg}, r5"]
            case "jump":
                lines.append(f"jgt r4, {draw(st.integers(0, 3))}, @{draw(st.integers(0, 4))}")
            case "copy":
                lines.append("mov r3, r0")
    lines += ["mov r4, 0", "mov r3, r0", "mov r0, 0", "exit"]
    out = []
    for idx, line in enumerate(lines):
        if "@end" in line:
            line = line.replace("@end", f"+{len(lines) - idx - 2}")
        elif "@" in line:
            head, skip = line.rsplit("@", 1)
            line = f"{head}+{min(int(skip), len(lines) - idx - 2)}"
        out.append(line)
    return "\n".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_map_value_programs(), st.sampled_from([8, 16, 24]))
def test_proven_map_value_accesses_never_fault(source: str, value_size: int) -> None:
    """The verifier proves accesses to map values from the VM's maps (and the JIT then checks
    them no more): every access it proves stays inside the value, in both engines. The array has
    one element of a multiple of 8 bytes, so the map's memory ends where the value does."""
    from jitbpf.errors import ExecutionError, VerifierError

    a = Array(value_size=value_size, max_entries=1, name="A")
    vm = load(source, a, allow_loops=False)
    try:
        vm.check()
    except VerifierError:
        vm.close()
        return
    try:
        for engine in ("interp", "jit"):
            try:
                run(vm, engine, bytearray(8))
            except ExecutionError as exc:
                assert exc.pc not in vm._proven, f"proven access faulted ({engine}): {exc}"
    finally:
        vm.close()
