"""Program types: one C example per type run through its runner in both engines, contexts, helpers, verifier hookup."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import struct
import threading
from pathlib import Path

import dpkt
import pytest

from jitbpf import load_elf
from jitbpf.asm import assemble
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.linux.programs import (
    PROGRAM_TYPES,
    BpfSock,
    CgroupDevCtx,
    PerfEventData,
    ProgType,
    PtRegs,
    SkAction,
    SkBuff,
    SkMsgMd,
    SockAddr,
    SockOps,
    TcAction,
    XdpAction,
    XdpMd,
    ethernet_packet_type,
    program_type,
    section_program_type,
)
from jitbpf.sandbox import LOW_LIMIT, Pages
from jitbpf.vm import VM
from tests import kernel_oracle
from tests.kernel import Kernel
from tests.support import c_builder, check_verdict
from tests.test_elf import ENGINES, Compiler, example_compiler


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return example_compiler(tmp_path_factory)


def udp_frame(src: str, dst: str = "10.0.0.1", dport: int = 5353, payload: bytes = b"hello") -> bytes:
    udp = dpkt.udp.UDP(sport=40000, dport=dport, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=ipaddress.IPv4Address(src).packed, dst=ipaddress.IPv4Address(dst).packed,
                    p=dpkt.ip.IP_PROTO_UDP, data=udp)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def tcp_frame(src: str = "10.0.0.2", dst: str = "10.0.0.1") -> bytes:
    tcp = dpkt.tcp.TCP(sport=1234, dport=80, flags=dpkt.tcp.TH_SYN)
    ip = dpkt.ip.IP(src=ipaddress.IPv4Address(src).packed, dst=ipaddress.IPv4Address(dst).packed,
                    p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def icmp_packet() -> bytes:
    icmp = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping"))
    return bytes(dpkt.ip.IP(src=b"\x0a\x00\x00\x02", dst=b"\x0a\x00\x00\x01", p=dpkt.ip.IP_PROTO_ICMP, data=icmp))


# -- the registry ----------------------------------------------------------------------------------


def test_context_layouts_match_the_kernel() -> None:
    sizes = {XdpMd: 24, SkBuff: 192, PtRegs: 168, PerfEventData: 184, BpfSock: 80, CgroupDevCtx: 12, SockAddr: 72,
             SockOps: 224, SkMsgMd: 80}
    for struct_type, size in sizes.items():
        assert ctypes.sizeof(struct_type) == size, struct_type.__name__
    assert (SkBuff.data.offset, SkBuff.data_end.offset, SkBuff.data_meta.offset, SkBuff.hwtstamp.offset) == (
        76, 80, 140, 184)
    assert (PtRegs.di.offset, PtRegs.ip.offset, SockOps.sk_txhash.offset, SockOps.skb_data.offset) == (
        112, 128, 164, 192)


def test_section_names_give_program_types() -> None:
    table = {
        "xdp": ProgType.XDP, "xdp.frags": ProgType.XDP, "socket": ProgType.SOCKET_FILTER, "tc": ProgType.SCHED_CLS,
        "classifier": ProgType.SCHED_CLS, "tc/ingress": ProgType.SCHED_CLS, "kprobe/do_sys_open": ProgType.KPROBE,
        "kretprobe/x": ProgType.KPROBE, "uprobe/lib:fn": ProgType.KPROBE, "perf_event": ProgType.PERF_EVENT,
        "cgroup_skb/ingress": ProgType.CGROUP_SKB, "cgroup_skb/egress": ProgType.CGROUP_SKB,
        "cgroup/sock": ProgType.CGROUP_SOCK, "cgroup/post_bind4": ProgType.CGROUP_SOCK,
        "cgroup/dev": ProgType.CGROUP_DEVICE, "cgroup/connect4": ProgType.CGROUP_SOCK_ADDR,
        "cgroup/sendmsg6": ProgType.CGROUP_SOCK_ADDR, "sockops": ProgType.SOCK_OPS,
        "sk_skb/stream_verdict": ProgType.SK_SKB, "sk_skb": ProgType.SK_SKB, "sk_msg": ProgType.SK_MSG,
        "sk_lookup": ProgType.SK_LOOKUP, "flow_dissector": ProgType.FLOW_DISSECTOR,
        "sk_reuseport": ProgType.SK_REUSEPORT,
        "tracepoint/syscalls/sys_enter_openat": ProgType.TRACEPOINT, "raw_tp/sched_switch": ProgType.RAW_TRACEPOINT,
        ".text": ProgType.UNSPEC, "xdpfoo": ProgType.UNSPEC, "license": ProgType.UNSPEC,
        # USDT and multi-attach probes are kprobes to libbpf (bcc's libbpf-tools use "usdt").
        "usdt": ProgType.KPROBE, "usdt/libc.so.6:libc:setjmp": ProgType.KPROBE, "uprobe.s/bin:f": ProgType.KPROBE,
        "kprobe.multi/tcp_*": ProgType.KPROBE, "kretprobe.multi": ProgType.KPROBE, "ksyscall/kill": ProgType.KPROBE,
        "usdtfoo": ProgType.UNSPEC,
    }
    assert {s: section_program_type(s) for s in table} == table


def test_program_type_names() -> None:
    assert program_type("xdp") is ProgType.XDP
    assert program_type("BPF_PROG_TYPE_SCHED_CLS") is ProgType.SCHED_CLS
    assert program_type("tc") is ProgType.SCHED_CLS
    assert program_type(15) is ProgType.CGROUP_DEVICE
    with pytest.raises(ValueError, match="unknown program type"):
        program_type("nope")


def test_context_specs_for_the_verifier() -> None:
    xdp = PROGRAM_TYPES[ProgType.XDP].context_spec()
    assert xdp.size == 24 and dict(xdp.fields) == {0: "packet", 4: "packet_end", 8: "packet_meta"}
    assert xdp.writable == ()
    tc = PROGRAM_TYPES[ProgType.SCHED_CLS].context_spec()
    assert tc.fields[76] == "packet" and (8, 4) in tc.writable  # mark
    sock = PROGRAM_TYPES[ProgType.SOCKET_FILTER].context_spec()
    assert dict(sock.fields) == {168: "sock_common_or_null"}  # no packet pointers, the packet's socket
    assert all(not (off <= 76 < off + size) for off, size in sock.readable)
    assert PROGRAM_TYPES[ProgType.CGROUP_DEVICE].context_spec().ret_range == (0, 1)
    assert {off: xdp.field_size(off) for off in xdp.fields} == {0: 4, 4: 4, 8: 4}
    assert {off: tc.field_size(off) for off in tc.fields} == {76: 4, 80: 4, 140: 4, 168: 8}
    msg = PROGRAM_TYPES[ProgType.SK_MSG].context_spec()
    assert dict(msg.fields) == {0: "packet", 8: "packet_end", 72: "socket"}
    assert dict(msg.field_sizes) == {0: 8, 8: 8, 72: 8}


def test_packet_fields_are_loaded_with_their_declared_width() -> None:
    wide = "7912000000000000" "b700000001000000" "9500000000000000"  # r2 = *(u64 *)(r1 + 0); r0 = 1
    narrow = "6112000000000000" "b700000001000000" "9500000000000000"  # r2 = *(u32 *)(r1 + 0); r0 = 1
    VM(bytes.fromhex(wide), prog_type="sk_msg").check()
    VM(bytes.fromhex(narrow), prog_type="xdp").check()
    with pytest.raises(VerifierError, match="narrow"):
        VM(bytes.fromhex(narrow), prog_type="sk_msg").check()
    with pytest.raises(VerifierError, match="invalid bpf_context access off=0 size=8"):  # xdp_md fields are u32
        VM(bytes.fromhex(wide), prog_type="xdp").check()
    skb_wide = "79124c0000000000" "b700000001000000" "9500000000000000"  # r2 = *(u64 *)(r1 + 76): data, data_end
    with pytest.raises(VerifierError, match="invalid bpf_context access off=76 size=8"):
        VM(bytes.fromhex(skb_wide), prog_type="tc").check()


def test_packet_length_is_a_pointer_difference() -> None:
    # r2 = data_end; r1 = data; r2 -= r1; r0 = 2
    code = "6112040000000000" "6111000000000000" "1f12000000000000" "b700000002000000" "9500000000000000"
    VM(bytes.fromhex(code), prog_type="xdp").check()


def test_low_memory_is_below_4_gib() -> None:
    mem = Pages(100_000)
    try:
        assert mem.address + mem.size <= LOW_LIMIT
        mem.view[0:4] = b"abcd"
        assert bytes(mem.view[0:4]) == b"abcd"
    finally:
        mem.close()


# -- one example per program type ---------------------------------------------------------------------


# r0 as run_xdp gives it: an XdpAction by its low 32 bits, else that number.
XDP_RETURNS = [(0, XdpAction.ABORTED), (2, XdpAction.PASS), (4, XdpAction.REDIRECT), (5, 5),
               (0x1_0000_0003, XdpAction.TX), (0xFFFF_FFFF, 0xFFFF_FFFF)]


@pytest.mark.parametrize(("r0", "want"), XDP_RETURNS)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, list])
def test_run_xdp_result_in_every_path(r0: int, want: int, kind: type) -> None:
    """The JIT's first run_xdp binds, the following ones take the one-call native path: each
    gives what the interpreter gives, for any kind of packet (a list of ints is made bytes)."""
    vm = VM(assemble(f"lddw r0, {r0}\nexit"), prog_type=ProgType.XDP)
    frame = bytes(range(60))
    for engine in ("interp", "jit", "jit", "jit"):
        action, after = vm.run_xdp(kind(frame), engine=engine)
        assert (action, after) == (want, frame) and type(action) is type(want), engine
        assert vm.run_xdp(frame, engine=engine, rx_queue_index=1) == (want, frame)


def test_run_xdp_native_path_raises_a_failed_run() -> None:
    """A run that stops early on the native path raises its error, as the first run does."""
    vm = VM(assemble("mov r0, 0\nldxb r0, [r0+0]\nexit"), prog_type=ProgType.XDP, verify=False)
    messages = set()
    for engine in ("jit", "jit", "jit", "interp"):
        with pytest.raises(ExecutionError) as err:
            vm.run_xdp(bytes(60), engine=engine)
        messages.add((engine, str(err.value)))
    assert len(messages) == 2, messages  # one message per engine, whichever path ran


@pytest.mark.parametrize("engine", ENGINES)
def test_xdp_firewall(example: Compiler, engine: str) -> None:
    obj = load_elf(example("xdp_firewall"))
    blocked = obj.maps["BLOCKED_IPS"]
    for ip in ("192.168.0.1", "192.168.0.2"):
        blocked.insert(int(ipaddress.IPv4Address(ip)), 1)
    vm = obj.programs["xdp_firewall"].vm()
    for src, want in (("192.168.0.1", XdpAction.DROP), ("192.168.0.2", XdpAction.DROP),
                      ("192.168.0.3", XdpAction.PASS), ("10.1.2.3", XdpAction.PASS)):
        frame = udp_frame(src)
        action, after = vm.run_xdp(frame, engine=engine)
        assert action is want, src
        assert after == frame
    assert vm.run_xdp(b"\x00" * 10, engine=engine)[0] is XdpAction.PASS  # too short for Ethernet


@pytest.mark.parametrize("engine", ENGINES)
def test_xdp_adjust_head_and_tail(example: Compiler, engine: str) -> None:
    obj = load_elf(example("xdp_adjust"))
    frame = udp_frame("10.9.9.9", payload=b"x" * 100)
    action, pushed = obj.programs["xdp_vlan_push"].vm().run_xdp(frame, engine=engine)
    assert action is XdpAction.TX
    assert pushed == frame[:12] + b"\x81\x00\x00\x2a" + frame[12:]
    action, cut = obj.programs["xdp_truncate"].vm().run_xdp(frame, engine=engine)
    assert action is XdpAction.PASS and cut == frame[:64]
    action, same = obj.programs["xdp_truncate"].vm().run_xdp(frame[:50], engine=engine)
    assert action is XdpAction.PASS and same == frame[:50]


LD_ABS_HOLDING_A_RECORD = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
unsigned long long load_byte(void *skb, unsigned long long off) asm("llvm.bpf.load.byte");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } rb SEC(".maps");
SEC("socket") int prog(struct __sk_buff *skb) {
    unsigned char *e = bpf_ringbuf_reserve(&rb, 8, 0);
    if (!e)
        return 0;
    e[0] = load_byte(skb, 9);  /* may end the program with the record still reserved */
    bpf_ringbuf_submit(e, 0);
    return 1;
}
"""


def test_ld_abs_while_holding_a_reference_is_refused(tmp_path: Path, kernel: Kernel | None) -> None:
    path = c_builder(tmp_path, "")(LD_ABS_HOLDING_A_RECORD)
    with pytest.raises(VerifierError, match="would lead to reference leak"):
        load_elf(path).programs["prog"].vm().check()
    if kernel is not None:
        assert isinstance(kernel.load(path, "prog", None), str)  # the kernel refuses it too


@pytest.mark.parametrize("engine", ENGINES)
def test_socket_filter_with_ld_abs_and_legacy_map(example: Compiler, engine: str) -> None:
    obj = load_elf(example("socket_filter"))
    vm = obj.programs["udp_only"].vm()
    udp, tcp = udp_frame("10.0.0.2"), tcp_frame()
    assert vm.run_socket_filter(udp, engine=engine) == len(udp)
    assert vm.run_socket_filter(tcp, engine=engine) == 0
    assert vm.run_socket_filter(udp, engine=engine) == len(udp)
    assert vm.run_socket_filter(b"\x01\x02", engine=engine) == 0  # LD_ABS beyond the packet ends with 0
    counts = obj.maps["proto_count"]
    assert (counts[17], counts[6], counts[1]) == (2, 1, 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_tc_classifier_with_global_data(example: Compiler, engine: str) -> None:
    obj = load_elf(example("tc_classifier"))
    vm = obj.programs["tc_filter"].vm()
    dns = udp_frame("10.0.0.2", dport=53)
    verdict, after = vm.run_tc(dns, engine=engine)
    assert verdict is TcAction.SHOT and after == dns
    other = udp_frame("10.0.0.2", dport=5353)
    res = vm.run_context(dict(len=len(other), protocol=8), packet=other, engine=engine)
    assert TcAction(res.retval) is TcAction.OK
    assert res.fields()["mark"] == 0x42  # from .data
    assert res.packet is not None and res.packet[15] == 0x10 and res.packet[:15] == other[:15]  # TOS stamped
    dropped, passed = (int.from_bytes(obj.variable(n), "little") for n in ("dropped", "passed"))
    assert (dropped, passed) == (1, 1)
    with pytest.raises(TypeError):  # .rodata is frozen once a program is verified, as libbpf freezes it
        obj.variable("blocked_port")[:] = struct.pack("<H", 5353)
    fresh = load_elf(example("tc_classifier"))
    fresh.variable("blocked_port")[:] = struct.pack("<H", 5353)  # configure before loading, as with libbpf
    vm2 = fresh.programs["tc_filter"].vm()
    assert vm2.run_tc(other, engine=engine)[0] is TcAction.SHOT


@pytest.mark.parametrize("engine", ENGINES)
def test_kprobe(example: Compiler, engine: str) -> None:
    obj = load_elf(example("kprobe"))
    vm = obj.programs["trace_openat"].vm()
    assert vm.run_kprobe([-100 & (2**64 - 1), 0x1000, 0o101], engine=engine) == 0
    assert vm.run_kprobe({"di": 3, "dx": 0o101}, engine=engine) == 0
    assert vm.run_kprobe([5, 0, 0], engine=engine) == 0
    assert obj.maps["open_flags"][0o101] == 2 and obj.maps["open_flags"][0] == 1
    assert obj.maps["last_dfd"][os.getpid()] == 5


@pytest.mark.parametrize("engine", ENGINES)
def test_perf_event(example: Compiler, engine: str) -> None:
    obj = load_elf(example("perf_event"))
    vm = obj.programs["on_sample"].vm()
    vm.run_perf_event({"ip": 0xFFFF_FFFF_8100_0000}, sample_period=1000, engine=engine)
    vm.run_perf_event({"ip": 0x4000}, sample_period=500, addr=7, engine=engine)
    samples = obj.maps["samples"]
    assert (samples[0], samples[1], samples[2]) == (1500, 0x4000, 2)


@pytest.mark.parametrize("engine", ENGINES)
def test_cgroup_skb(example: Compiler, engine: str) -> None:
    obj = load_elf(example("cgroup_skb"))
    vm = obj.programs["ingress"].vm()
    ip_udp = udp_frame("10.0.0.2")[14:]
    assert vm.run_cgroup_skb(icmp_packet(), engine=engine) == 0
    assert vm.run_cgroup_skb(ip_udp, engine=engine) == 1
    allowed, denied = (int.from_bytes(obj.variable(n), "little") for n in ("allowed_bytes", "denied_packets"))
    assert (allowed, denied) == (len(ip_udp), 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_cgroup_sock(example: Compiler, engine: str) -> None:
    vm = load_elf(example("cgroup_sock")).programs["sock_create"].vm()
    assert vm.run_cgroup_sock(family=2, type=3, protocol=1, engine=engine)[0] == 0
    verdict, sock = vm.run_cgroup_sock(family=2, type=1, protocol=6, engine=engine)
    assert verdict == 1 and sock["mark"] == 0x77
    verdict, sock = vm.run_cgroup_sock(family=2, type=2, protocol=17, engine=engine)
    assert verdict == 1 and sock["mark"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_cgroup_device(example: Compiler, engine: str) -> None:
    vm = load_elf(example("cgroup_dev")).programs["dev_policy"].vm()
    run = vm.run_cgroup_device
    assert [run(1, m, engine=engine) for m in (3, 5, 9, 1)] == [1, 1, 1, 0]
    assert run(4, 1, access=2, engine=engine) == 1  # read a tty
    assert run(4, 1, access=4, engine=engine) == 0  # write it
    assert run(8, 0, dev_type=1, engine=engine) == 0  # block device


@pytest.mark.parametrize("engine", ENGINES)
def test_cgroup_sock_addr(example: Compiler, engine: str) -> None:
    vm = load_elf(example("sock_addr")).programs["connect_redirect"].vm()

    def be32(ip: str) -> int:
        return int.from_bytes(ipaddress.IPv4Address(ip).packed, "little")

    def be16(port: int) -> int:
        return int.from_bytes(port.to_bytes(2, "big"), "little")

    verdict, addr = vm.run_sock_addr(user_family=2, user_ip4=be32("10.0.0.1"), user_port=be16(80), engine=engine)
    assert verdict == 1 and (addr["user_ip4"], addr["user_port"]) == (be32("127.0.0.1"), be16(8080))
    verdict, addr = vm.run_sock_addr(user_family=2, user_ip4=be32("10.0.0.7"), user_port=be16(80), engine=engine)
    assert verdict == 1 and addr["user_ip4"] == be32("10.0.0.7")
    assert vm.run_sock_addr(user_family=2, user_ip4=be32("10.0.0.1"), user_port=be16(23), engine=engine)[0] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_sock_ops(example: Compiler, engine: str) -> None:
    obj = load_elf(example("sockops"))
    vm = obj.programs["tune"].vm()
    verdict, ops = vm.run_sock_ops(1, engine=engine)  # BPF_SOCK_OPS_TIMEOUT_INIT
    assert verdict == 1 and ops["args"][0] == 10
    assert vm.run_sock_ops(2, engine=engine)[1]["args"][0] == 40  # RWND_INIT
    _, ops = vm.run_sock_ops(4, engine=engine)  # ACTIVE_ESTABLISHED_CB
    assert ops["bpf_sock_ops_cb_flags"] == 1
    assert (obj.maps["op_count"][1], obj.maps["op_count"][2], obj.maps["op_count"][4]) == (1, 1, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_sk_skb(example: Compiler, engine: str) -> None:
    obj = load_elf(example("sk_skb"))
    parser, verdict = obj.programs["parser"].vm(), obj.programs["verdict"].vm()
    assert parser.run_sk_skb(b"0123456789", engine=engine)[0] == 10
    assert verdict.run_sk_skb(b"DROP this", engine=engine)[0] is SkAction.DROP
    assert verdict.run_sk_skb(b"keep this", engine=engine) == (SkAction.PASS, b"keep this")
    assert verdict.run_sk_skb(b"DR", engine=engine)[0] is SkAction.PASS


@pytest.mark.parametrize("engine", ENGINES)
def test_sk_msg(example: Compiler, engine: str) -> None:
    vm = load_elf(example("sk_msg")).programs["msg_verdict"].vm()
    assert vm.run_sk_msg(b"BLOCKED message", engine=engine) is SkAction.DROP
    assert vm.run_sk_msg(b"fine message", engine=engine) is SkAction.PASS
    res = vm.run_context({"size": 4}, packet=b"data", engine=engine)
    assert res.extras == {"msg_apply_bytes": 4}


@pytest.mark.parametrize("engine", ENGINES)
def test_tail_calls_keep_the_program_types_context(example: Compiler, engine: str) -> None:
    obj = load_elf(example("xdp_tail_call"))
    vm = obj.programs["xdp_dispatch"].vm()
    udp = udp_frame("10.0.0.2")
    assert vm.run_xdp(udp, engine=engine) == (XdpAction.TX, udp[:-4])  # the stage's adjust_tail saw the packet
    assert vm.run_xdp(bytes(12) + b"\x08\x00" + icmp_packet(), engine=engine)[0] is XdpAction.DROP
    assert vm.run_xdp(tcp_frame(), engine=engine)[0] is XdpAction.PASS  # empty slot: falls through


# -- the verifier sees each type's context ------------------------------------------------------


def test_unchecked_packet_access_is_rejected(example: Compiler) -> None:
    source = """
#include "jitbpf_helpers.h"
SEC("xdp") int prog(struct xdp_md *ctx) { unsigned char *p = (void *)(long)ctx->data; return p[20]; }
"""
    vm = load_elf(example(source)).programs["prog"].vm()
    with pytest.raises(VerifierError):
        vm.check()


def test_writing_a_read_only_context_field_is_rejected(example: Compiler) -> None:
    source = """
#include "jitbpf_helpers.h"
SEC("cgroup/dev") int prog(struct bpf_cgroup_dev_ctx *ctx) { ctx->major = 1; return 1; }
"""
    with pytest.raises(VerifierError):
        load_elf(example(source)).programs["prog"].vm().check()


def test_helpers_of_other_program_types_are_rejected(example: Compiler) -> None:
    source = """
#include "jitbpf_helpers.h"
SEC("xdp") int prog(struct xdp_md *ctx) { char b[4]; return bpf_skb_load_bytes(ctx, 0, b, 4) ? 1 : 2; }
"""
    vm = load_elf(example(source)).programs["prog"].vm()
    with pytest.raises(VerifierError, match="program type xdp may not call helper bpf_skb_load_bytes#26"):
        vm.check()


def test_adjust_head_stays_within_the_headroom(example: Compiler) -> None:
    source = """
#include "jitbpf_helpers.h"
SEC("xdp") int prog(struct xdp_md *ctx) { return bpf_xdp_adjust_head(ctx, -(int)ctx->rx_queue_index) ? 0 : 2; }
"""
    vm = load_elf(example(source)).programs["prog"].vm()
    frame = bytes(64)
    assert vm.run_xdp(frame, rx_queue_index=256) == (XdpAction.PASS, bytes(256) + frame)
    assert vm.run_xdp(frame, rx_queue_index=257)[0] is XdpAction.ABORTED  # beyond the 256-byte headroom


def test_runner_of_the_wrong_type(example: Compiler) -> None:
    vm = load_elf(example("cgroup_dev")).programs["dev_policy"].vm()
    with pytest.raises(ExecutionError, match="not a xdp program"):
        vm.run_xdp(b"")
    with pytest.raises(ExecutionError, match="no program type"):
        VM(b"\xb7\x00\x00\x00\x00\x00\x00\x00\x95\x00\x00\x00\x00\x00\x00\x00").run_context()
    with pytest.raises(ValueError, match="no field"):
        vm.run_context({"nope": 1})


def test_threads_have_their_own_packet_memory(example: Compiler) -> None:
    obj = load_elf(example("xdp_firewall"))
    obj.maps["BLOCKED_IPS"].insert(int(ipaddress.IPv4Address("192.168.0.1")), 1)
    vm = obj.programs["xdp_firewall"].vm()
    failures: list[str] = []

    def worker(src: str, want: XdpAction) -> None:
        for _ in range(200):
            action, _ = vm.run_xdp(udp_frame(src))
            if action is not want:
                failures.append(src)

    threads = [threading.Thread(target=worker, args=a)
               for a in (("192.168.0.1", XdpAction.DROP), ("192.168.0.9", XdpAction.PASS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.parametrize(("prog_type", "section", "r0", "accepted"), [
    ("cgroup_sock_addr", "cgroup/connect4", 1, True),
    ("cgroup_sock_addr", "cgroup/connect4", 2, False),  # the program type's [0, 1]
    ("cgroup_sock_addr", "cgroup/bind6", 3, True),  # bind may also allow a privileged port
    ("cgroup_sock_addr", "cgroup/bind4", 4, False),
    ("cgroup_sock_addr", "cgroup/recvmsg4", 1, True),
    ("cgroup_sock_addr", "cgroup/recvmsg4", 0, False),  # these hooks may not refuse
    ("cgroup_sock_addr", "cgroup/getsockname_unix", 0, False),
    ("cgroup_skb", "cgroup_skb/egress", 3, True),  # egress may also ask for congestion notification
    ("cgroup_skb", "cgroup_skb/ingress", 3, False),
    ("cgroup_skb", None, 2, False),
])
def test_an_attach_type_narrows_what_programs_return(prog_type: str, section: str | None, r0: int,
                                                      accepted: bool) -> None:
    vm = VM(assemble(f"mov r0, {r0}\nexit"), prog_type=prog_type, attach=section)
    check_verdict(vm, accepted, "should have been in")


@pytest.mark.parametrize("engine", ENGINES)
def test_sk_lookup(example: Compiler, engine: str) -> None:
    from jitbpf.linux.sockets import Socket, TcpState

    obj = load_elf(example("sk_lookup"))
    vm = obj.programs["steer"].vm()
    server = Socket(local=("0.0.0.0", 7000), state=TcpState.LISTEN)
    assert vm.run_sk_lookup(local=("10.0.0.2", 7007), engine=engine) == (SkAction.DROP, None)  # nothing to go to
    obj["listener"][0] = server
    assert vm.run_sk_lookup(local=("10.0.0.2", 7007), engine=engine) == (SkAction.PASS, server)
    assert vm.run_sk_lookup(local=("10.0.0.2", 22), engine=engine) == (SkAction.PASS, None)  # the usual lookup
    assert vm.run_sk_lookup(protocol=17, local=("10.0.0.2", 7007), engine=engine) == (SkAction.PASS, None)


@pytest.mark.parametrize(("section", "insn", "accepted"), [
    ("cgroup/sock_create", "ldxw r0, [r1+16]", True),  # mark, at creation
    ("cgroup/sock_create", "stxw [r1+16], r2", True),
    ("cgroup/sock_create", "ldxw r0, [r1+44]", False),  # src_port: not bound yet
    ("cgroup/post_bind4", "ldxw r0, [r1+24]", True),  # src_ip4 after an IPv4 bind
    ("cgroup/post_bind4", "ldxw r0, [r1+28]", False),  # src_ip6
    ("cgroup/post_bind6", "ldxw r0, [r1+28]", True),
    ("cgroup/post_bind6", "ldxw r0, [r1+44]", True),
    ("cgroup/post_bind6", "ldxw r0, [r1+16]", False),  # mark: only at creation and release
    (None, "ldxw r0, [r1+44]", False),  # the kernel's default attach type: creation
])
def test_an_attach_type_narrows_the_socket_cgroup_sock_programs_see(section: str | None, insn: str,
                                                                     accepted: bool) -> None:
    vm = VM(assemble(f"mov r2, 1\n{insn}\nmov r0, 1\nexit"), prog_type="cgroup_sock", attach=section)
    check_verdict(vm, accepted, "invalid bpf_context access")


@pytest.mark.parametrize("engine", ENGINES)
def test_flow_dissector(example: Compiler, engine: str) -> None:
    vm = load_elf(example("flow_dissector")).programs["dissect"].vm()
    verdict, keys = vm.run_flow_dissector(udp_frame("10.0.0.2"), engine=engine)
    assert verdict == 0 and (keys.nhoff, keys.thoff, keys.addr_proto, keys.ip_proto) == (14, 34, 0x0800, 17)
    assert keys.ipv4_src == int.from_bytes(ipaddress.ip_address("10.0.0.2").packed, "little")
    assert keys.n_proto == 0x0008 and keys.dport != 0  # network order, as the frame holds them
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert vm.run_flow_dissector(arp, engine=engine)[0] == 2  # BPF_DROP: not IPv4
    assert vm.run_flow_dissector(udp_frame("10.0.0.2")[:20], engine=engine)[0] == 2  # cut short


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
def test_flow_dissector_keys_are_the_kernels(example: Compiler) -> None:
    prog = load_elf(example("flow_dissector")).programs["dissect"]
    vm = prog.vm()
    for frame in (udp_frame("10.0.0.2"), tcp_frame(), bytes(12) + b"\x08\x06" + bytes(28)):
        r0, out = kernel_oracle.kernel_run_output(prog.code, int(ProgType.FLOW_DISSECTOR), frame, 17)
        for engine in ("interp", "jit"):
            verdict, keys = vm.run_flow_dissector(frame, engine=engine)
            assert verdict == r0
            if r0 == 0:
                assert bytes(keys) == out


PKT_TYPE_FRAMES = {  # Ethernet destination -> skb->pkt_type on the test run's loopback device
    "000000000000": 0,  # the device's own address: PACKET_HOST
    "ffffffffffff": 2,  # broadcast, which the loopback does not have: PACKET_MULTICAST
    "01005e000001": 2,
    "020000000002": 3,  # PACKET_OTHERHOST
}


@pytest.mark.parametrize("section", ["tc", "socket"])
def test_pkt_type_follows_the_ethernet_destination(tmp_path: Path, kernel: Kernel | None, section: str) -> None:
    path = c_builder(tmp_path, "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n")(
        f'SEC("{section}") int prog(struct __sk_buff *skb) {{ return skb->pkt_type + 100; }}\n')
    loaded = kernel.load(path, "prog", None) if kernel is not None else None
    assert not isinstance(loaded, str), loaded
    try:
        for dst, pkt_type in PKT_TYPE_FRAMES.items():
            frame = bytes.fromhex(dst) + bytes(6) + b"\x08\x00" + bytes(46)
            for engine in ("interp", "jit"):
                ran_here = load_elf(path).programs["prog"].run(frame, engine=engine)
                assert int(ran_here[0] if isinstance(ran_here, tuple) else ran_here) == pkt_type + 100
            if loaded is not None:
                ran = loaded.run(frame)
                assert ran is not None and ran.retval == pkt_type + 100
    finally:
        if loaded is not None:
            loaded.close()


def test_cgroup_skb_takes_the_pkt_type_of_its_frame(tmp_path: Path, kernel: Kernel | None) -> None:
    """A cgroup_skb run starts at the network header: the Ethernet destination's packet type,
    which the kernel's test run derives as for tc, comes as the pkt_type field."""
    body = "return skb->pkt_type == %d;"
    build = c_builder(tmp_path, "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n")
    for dst, pkt_type in PKT_TYPE_FRAMES.items():
        frame = bytes.fromhex(dst) + bytes(6) + b"\x08\x00" + bytes.fromhex("45000014000000004011") + bytes(10)
        assert ethernet_packet_type(frame) == pkt_type
        for guess in range(4):
            path = build(f'SEC("cgroup_skb/ingress") int prog(struct __sk_buff *skb) {{ {body % guess} }}\n')
            vm = load_elf(path).programs["prog"].vm()
            for engine in ("interp", "jit"):
                assert vm.run_cgroup_skb(frame[14:], engine=engine, pkt_type=ethernet_packet_type(frame)) == (
                    guess == pkt_type)
            if kernel is not None:
                loaded = kernel.load(path, "prog", None)
                assert not isinstance(loaded, str), loaded
                try:
                    ran = loaded.run(frame)
                    assert ran is not None and ran.retval == (guess == pkt_type), (dst, guess)
                finally:
                    loaded.close()


@pytest.mark.parametrize(("load", "refused"), [("ldxw r0, [r1+12]", False), ("ldxb r0, [r1+12]", True),
                                              ("ldxh r0, [r1+14]", True), ("ldxw r0, [r1+13]", True)])
def test_an_xdp_context_field_is_read_whole(load: str, refused: bool) -> None:
    """As the kernel's xdp_md: ingress_ifindex and the others are read as 4 bytes, or not at all."""
    vm = VM(assemble(f"{load}\nmov r0, 2\nexit"), prog_type=ProgType.XDP)
    if refused:
        with pytest.raises(VerifierError, match="invalid bpf_context access"):
            vm.check()
    else:
        vm.check()
