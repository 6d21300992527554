"""The helpers that ask the host (jitbpf.linux.host): checksums, the routing table, the current task,
strings from kernel memory; each in both engines, against an independent model where there is one."""

from __future__ import annotations

import ipaddress
import random
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitbpf.asm import assemble
from jitbpf.linux.host import AF_INET, AF_INET6, FibResult, Host, Interface, csum_diff
from jitbpf.linux.programs import ProgType, XdpAction
from jitbpf.vm import VM
from tests import kernel_oracle
from tests.support import ENGINES, load, run, s64

EINVAL, EFAULT, EPERM, ENOENT, EAFNOSUPPORT = 22, 14, 1, 2, 97

# r0 = bpf_csum_diff(mem, 8, mem + 8, 8, seed = mem[16..24])
CSUM_DIFF = """
    mov r6, r1
    ldxdw r5, [r6+16]
    mov r2, {old}
    mov r3, r6
    add r3, 8
    mov r4, {new}
    call 28
    exit
"""


def rfc1071(data: bytes) -> int:
    """The one's complement sum of 16-bit little-endian words (RFC 1071, before the complement)."""
    total = sum(int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fold16(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


@settings(max_examples=200, deadline=None)
@given(old=st.binary(min_size=8, max_size=8), new=st.binary(min_size=8, max_size=8),
       seed=st.integers(0, 2**32 - 1))
def test_csum_diff_is_the_internet_checksum_delta(old: bytes, new: bytes, seed: int) -> None:
    # Folded to 16 bits, seed + diff(old, new) + sum(old) is seed + sum(new) (RFC 1624's update rule).
    diff = csum_diff(old, new, seed)
    assert diff >> 16 == 0  # folded, as Linux 6.12 and later return it
    # One's complement arithmetic: 0 and 0xffff are the same number.
    assert fold16(fold16(diff) + rfc1071(old)) % 0xFFFF == fold16(fold16(seed) + rfc1071(new)) % 0xFFFF


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("old", "new"), [(8, 8), (0, 8), (8, 0), (0, 0), (6, 8), (8, 3)])
def test_csum_diff_in_both_engines(engine: str, old: int, new: int) -> None:
    mem = bytearray(bytes(range(1, 17)) + struct.pack("<Q", 0x1234))
    vm = load(CSUM_DIFF.format(old=old, new=new))
    assert run(vm, engine, mem) == csum_diff(bytes(mem[:old]), bytes(mem[8 : 8 + new]), 0x1234)


# Words whose sums carry, wrap to the two zeros of one's complement, or are plain.
WORDS = (0, 1, 0xFFFF, 0xFFFF_0000, 0x8000_0000, 0xFFFF_FFFF, 0x1234_5678, 0xDEAD_BEEF)


def test_csum_diff_is_the_kernels() -> None:
    """bpf_csum_diff on the kernel's own test runs: every size (the kernel takes any since 6.12),
    sums that carry and seeds wider than 32 bits."""
    if not kernel_oracle.available():
        pytest.skip("the kernel reference needs root and the BPF syscall")
    rng = random.Random(5)
    for _ in range(60):
        words = [rng.choice(WORDS) for _ in range(8)]
        stack = b"".join(w.to_bytes(4, "little") for w in words)  # fp-32 .. fp-1
        old, new = rng.choice((0, 2, 3, 4, 8, 12, 16)), rng.choice((0, 1, 4, 6, 8, 12))
        seed = rng.choice((0, 1, 0xFFFF, 0xFFFF_FFFF, 0x12_3456_7890, rng.getrandbits(64)))
        code = assemble("\n".join([*(f"stw [r10{4 * i - 32:+d}], {w - (w >> 31 << 32)}" for i, w in enumerate(words)),
                                    "mov r1, r10", "add r1, -32", f"mov r2, {old}", "mov r3, r10", "add r3, -12",
                                    f"mov r4, {new}", f"lddw r5, {seed}", "call 28", "exit"]))
        want = kernel_oracle.kernel_run_output(code, 6, bytes(64))[0]
        assert want == csum_diff(stack[:old], stack[20:20 + new], seed), (words, old, new, seed)
        with VM(code, prog_type="xdp") as vm:
            vm.use_standard_helpers()
            assert {vm.run_xdp(bytes(64), engine=e)[0] for e in ENGINES} == {want}


def _fib_program() -> str:
    """XDP: copy the first 64 packet bytes (a struct bpf_fib_lookup) to the stack, call
    bpf_fib_lookup, write the struct back and return XDP_PASS with r0 in the packet's bytes 64..72."""
    copy_in = "\n".join(f"ldxdw r5, [r2+{i}]\nstxdw [r10-{64 - i}], r5" for i in range(0, 64, 8))
    copy_out = "\n".join(f"ldxdw r5, [r10-{64 - i}]\nstxdw [r7+{i}], r5" for i in range(0, 64, 8))
    return f"""
    mov r6, r1
    ldxw r2, [r1+0]
    ldxw r3, [r1+4]
    mov r4, r2
    add r4, 72
    jgt r4, r3, out
    mov r7, r2
    {copy_in}
    mov r1, r6
    mov r2, r10
    add r2, -64
    mov r3, 64
    mov r4, 0
    call 69
    stxdw [r7+64], r0
    {copy_out}
out:
    mov r0, 2
    exit
"""


def _params(family: int, dst: str, ifindex: int = 1, tot_len: int = 100, src: str = "") -> bytes:
    addr = ipaddress.ip_address(dst).packed.ljust(16, b"\0")
    source = ipaddress.ip_address(src).packed.ljust(16, b"\0") if src else bytes(16)
    return struct.pack("<BBHHHII16s16sI6s6s", family, 6, 0, 0, tot_len, ifindex, 0, source, addr, 0,
                       bytes(6), bytes(6)) + bytes(8)


def _fib(engine: str, host: Host, packet: bytes) -> tuple[int, bytes]:
    vm = load(_fib_program(), prog_type="xdp")
    vm.std.host = host
    action, out = vm.run_xdp(packet, engine=engine)
    assert action is XdpAction.PASS
    return s64(int.from_bytes(out[64:72], "little")), out[:64]


@pytest.mark.parametrize("engine", ENGINES)
def test_fib_lookup_default_host_does_not_forward(engine: str) -> None:
    assert _fib(engine, Host(), _params(AF_INET, "10.0.0.2"))[0] == FibResult.FWD_DISABLED


@pytest.mark.parametrize("engine", ENGINES)
def test_fib_lookup_routes(engine: str) -> None:
    host = Host(interfaces={1: Interface(forwarding=True)})
    host.add_route("10.0.0.0/8", 3, smac=b"\x02" * 6, dmac=b"\x04" * 6, mtu=1400)
    host.add_route("10.1.0.0/16", 4, result=FibResult.BLACKHOLE)
    host.add_route("2001:db8::/32", 5, dmac=None)
    rc, out = _fib(engine, host, _params(AF_INET, "10.0.0.2"))
    assert rc == FibResult.SUCCESS
    assert int.from_bytes(out[8:12], "little") == 3 and out[52:58] == b"\x02" * 6 and out[58:64] == b"\x04" * 6
    assert int.from_bytes(out[6:8], "little") == 1400  # mtu_result
    assert _fib(engine, host, _params(AF_INET, "10.1.2.3"))[0] == FibResult.BLACKHOLE  # longest prefix
    assert _fib(engine, host, _params(AF_INET, "192.168.0.1"))[0] == FibResult.NOT_FWDED
    assert _fib(engine, host, _params(AF_INET, "10.0.0.2", tot_len=1500))[0] == FibResult.FRAG_NEEDED
    assert _fib(engine, host, _params(AF_INET6, "2001:db8::1"))[0] == FibResult.NO_NEIGH
    assert _fib(engine, host, _params(AF_INET, "10.0.0.2", ifindex=9))[0] == -19  # ENODEV
    assert _fib(engine, host, _params(7, "10.0.0.2"))[0] == -EAFNOSUPPORT


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("src", "dst"), [("2001:db8::1", "ff02::1:ff00:1"), ("fe80::1", "2001:db8::2"),
                                          ("2001:db8::1", "::1")])
def test_fib_lookup_never_forwards_link_scoped_ipv6(engine: str, src: str, dst: str) -> None:
    # Before the interface is looked at: even one that does not forward, or does not exist.
    for host, ifindex in ((Host(), 1), (Host(interfaces={1: Interface(forwarding=True)}), 1), (Host(), 9)):
        assert _fib(engine, host, _params(AF_INET6, dst, ifindex=ifindex, src=src))[0] == FibResult.NOT_FWDED


def test_fib_lookup_is_not_for_socket_filters() -> None:
    from jitbpf.errors import VerifierError

    with pytest.raises(VerifierError, match="may not call"):
        load("mov r0, 0\ncall 69\nexit", prog_type="socket_filter").check()


TASK = """
    call {helper}
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("helper", [35, 158])
def test_current_task_comes_from_the_host(engine: str, helper: int) -> None:
    vm = load(TASK.format(helper=helper), prog_type="kprobe")
    assert vm.run_kprobe(engine=engine) == 0  # the default: no task
    vm.std.host.task = 0xFFFF_8880_1234_0000
    assert vm.run_kprobe(engine=engine) == 0xFFFF_8880_1234_0000


@pytest.mark.parametrize("engine", ENGINES)
def test_send_signal_records_or_refuses(engine: str) -> None:
    vm = load("mov r1, 10\ncall 109\nexit", prog_type="kprobe")
    assert s64(vm.run_kprobe(engine=engine)) == -EPERM  # no current task
    vm.std.host.task = 1
    assert vm.run_kprobe(engine=engine) == 0 and vm.std.host.signals == [10]
    bad = load("mov r1, 99\ncall 109\nexit", prog_type="kprobe")
    bad.std.host.task = 1
    assert s64(bad.run_kprobe(engine=engine)) == -EINVAL


@pytest.mark.parametrize("engine", ENGINES)
def test_get_func_ip_reads_the_host(engine: str) -> None:
    vm = load("call 173\nexit", prog_type="kprobe")
    assert vm.run_kprobe(engine=engine) == 0  # no probed function given
    vm.std.host.func_ip = 0xFFFF_FFFF_8100_0000
    assert vm.run_kprobe(engine=engine) == 0xFFFF_FFFF_8100_0000
    from jitbpf.errors import VerifierError

    with pytest.raises(VerifierError, match="may not call"):
        load("call 173\nexit", prog_type="tracepoint").run_tracepoint(engine=engine)


NS_PID = """
    mov r1, {dev}
    mov r2, {ino}
    mov r3, r10
    add r3, -8
    mov r4, 8
    call 120
    jne r0, 0, out
    ldxdw r0, [r10-8]
out:
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_ns_current_pid_tgid(engine: str) -> None:
    vm = load(NS_PID.format(dev=4, ino=0xEFFF), prog_type="kprobe")
    vm.std.host = Host(pid=7, tgid=5, pidns_dev=4, pidns_ino=0xEFFF)
    assert vm.run_kprobe(engine=engine) == 5 << 32 | 7
    other = load(NS_PID.format(dev=4, ino=1), prog_type="kprobe")
    other.std.host = Host(pid=7, tgid=5, pidns_dev=4, pidns_ino=0xEFFF)
    assert s64(other.run_kprobe(engine=engine)) == -ENOENT


# r0 = bpf_probe_read_kernel_str(stack, size, src); the stack's first 8 bytes at mem[8..16]
PROBE_STR = """
    mov r6, r1
    mov r1, 0
    stxdw [r10-8], r1
    mov r1, r10
    add r1, -8
    mov r2, {size}
    mov r3, {src}
    call 115
    ldxdw r1, [r10-8]
    stxdw [r6+8], r1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("size", "copied", "ret"), [(8, b"abc\0", 4), (3, b"ab\0", 3), (0, b"", 0)])
def test_probe_read_kernel_str(engine: str, size: int, copied: bytes, ret: int) -> None:
    mem = bytearray(b"abc\0" + bytes(12))
    vm = load(PROBE_STR.format(size=size, src="r6"))
    assert run(vm, engine, mem) == ret
    assert bytes(mem[8:16]) == copied.ljust(8, b"\0")


@pytest.mark.parametrize("engine", ENGINES)
def test_probe_read_kernel_str_fault_zeroes_and_fails(engine: str) -> None:
    mem = bytearray(16)
    mem[8:16] = b"\xff" * 8
    vm = load(PROBE_STR.format(size=8, src="16"))
    assert s64(run(vm, engine, mem)) == -EFAULT
    assert bytes(mem[8:16]) == bytes(8)


@pytest.mark.parametrize("engine", ENGINES)
def test_current_cgroup_id_and_tai_clock(engine: str) -> None:
    """bpf_get_current_cgroup_id answers Host.cgroup_id; bpf_ktime_get_tai_ns reads CLOCK_TAI."""
    vm = load("call 80\nexit", prog_type=ProgType.KPROBE)
    assert vm.run_context(engine=engine).retval == 1  # the root cgroup, by default
    vm.std.host.cgroup_id = 4242
    assert vm.run_context(engine=engine).retval == 4242
    clock = load("call 208\nexit", prog_type=ProgType.KPROBE)
    before = time.clock_gettime_ns(time.CLOCK_TAI)
    now = int(clock.run_context(engine=engine).retval)  # type: ignore[call-overload]
    assert before <= now <= time.clock_gettime_ns(time.CLOCK_TAI)
