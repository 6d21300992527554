"""Sockets: the verifier's socket pointer types (a context's socket, the socket helpers' casts,
lookups' acquired references), the kernel's field rules for ``struct bpf_sock`` and ``struct
bpf_tcp_sock``, and what programs read at run time (the packet's own socket as the kernel's test
runs give it, a socket the caller sets, the host's sockets that lookups find), in both engines;
against the running kernel where it can load and run programs (root), skipped elsewhere."""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import ExecutionError, VerifierError
from jitbpf.linux.elf import load_elf
from jitbpf.linux.maps import ProgramArray, ReuseportSockArray, SkStorage, SockMap
from jitbpf.linux.programs import ProgType, SkAction, SkMsgMd
from jitbpf.linux.sockets import (
    AF_INET,
    AF_INET6,
    IPPROTO_UDP,
    PACKET_SOCKET,
    SOCK_DGRAM,
    Socket,
    SocketTable,
    TcpState,
    lookup,
)
from jitbpf.verifier._sock import BPF_SOCK_SIZE, BPF_TCP_SOCK_SIZE, sock_load_ok, tcp_sock_load_ok
from jitbpf.vm import VM
from tests import kernel_oracle
from tests.kernel import Kernel
from tests.support import ENGINES, c_builder, check_verdict, load, s64

KERNEL = pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
PROG_TYPES = {"socket_filter": 1, "sched_cls": 3, "xdp": 6, "cgroup_skb": 8, "lwt_in": 10, "sock_ops": 13,
              "sk_skb": 14, "sk_msg": 16}
SIZES = {1: "b", 2: "h", 4: "w", 8: "dw"}

SK = "ldxdw r1, [r1+168]\n"  # r1 = skb->sk (sock_common_or_null)
# r0 = r1's socket seen through helper N, or return 0xdead / 0xbeef where NULL comes back.
CAST = SK + "mov r0, 0xdead\njeq r1, 0, +{skip}\ncall {helper}\njeq r0, 0, +{back}\n"
LOOKUP = ("mov r2, r10\nadd r2, -16\nstdw [r10-16], 0\nstdw [r10-8], 0\nmov r3, 12\nmov r4, 0\nmov r5, 0\n"
          "call {helper}\n")


def _load_through(kind: str, off: int, size: int) -> str:
    """A tc program loading ``size`` bytes at ``off`` of skb->sk (``sock_common``), of its full
    socket (``sock``) or of its TCP socket (``tcp_sock``)."""
    load_insn = f"ldx{SIZES[size]} r0, [{'r1' if kind == 'sock_common' else 'r0'}+{off}]\n"
    if kind == "sock_common":
        return SK + "mov r0, 0\njeq r1, 0, +1\n" + load_insn + "mov r0, 0\nexit"
    helper = 95 if kind == "sock" else 96
    return SK + f"mov r0, 0\njeq r1, 0, +3\ncall {helper}\njeq r0, 0, +1\n" + load_insn + "mov r0, 0\nexit"


ACCESSES = [(kind, off, size) for kind in ("sock_common", "sock", "tcp_sock") for off in range(0, 120)
            for size in (1, 2, 4, 8) if off % size == 0]


def _rule(kind: str, off: int, size: int) -> bool:
    if kind == "tcp_sock":
        return tcp_sock_load_ok(off, size)
    return sock_load_ok(off, size, full=kind == "sock")


@pytest.mark.parametrize(("kind", "off", "size", "ok"), [
    ("sock_common", 4, 1, True),  # family: narrow from its first byte
    ("sock_common", 5, 1, False),  # ... only
    ("sock_common", 8, 4, False),  # type: a full socket's field
    ("sock", 8, 2, True),
    ("sock", 16, 2, False),  # mark: a whole u32
    ("sock_common", 27, 1, True),  # src_ip4: any aligned part
    ("sock_common", 48, 2, True),  # dst_port, a __be16
    ("sock_common", 50, 2, False),  # its padding
    ("sock_common", 76, 4, True),  # rx_queue_mapping, the last field
    ("sock_common", 80, 4, False),  # past struct bpf_sock
    ("sock_common", 0, 8, False),  # no field is 8 bytes
    ("tcp_sock", 80, 8, True),  # bytes_received: a u64
    ("tcp_sock", 80, 4, False),
    ("tcp_sock", 108, 4, True),  # icsk_retransmits, the last field
    ("tcp_sock", 112, 4, False),
    ("tcp_sock", 2, 2, False),  # every field whole
])
def test_field_rules(kind: str, off: int, size: int, ok: bool) -> None:
    assert _rule(kind, off, size) is ok
    vm = load(_load_through(kind, off, size), prog_type="sched_cls")
    check_verdict(vm, ok, f"invalid {kind} access off={off} size={size}")


@KERNEL
def test_field_rules_are_the_kernels() -> None:
    differ = [(kind, off, size) for kind, off, size in ACCESSES
              if kernel_oracle.kernel_verify(assemble(_load_through(kind, off, size)), 3).accepted
              != _rule(kind, off, size)]
    assert differ == []


def _tail_call_with_reference() -> str:
    return ("mov r6, r1\n" + LOOKUP.format(helper=84) + "jeq r0, 0, +8\nmov r7, r0\nmov r1, r6\nlddw r2, map:PA\n"
            "mov r3, 0\ncall 12\nmov r1, r7\ncall 86\nmov r0, 0\nexit")


# (name, program type, program, kernel's message when it refuses it: None when it accepts)
VERDICTS: list[tuple[str, str, str, str | None]] = [
    *((f"{t} reads skb->sk", t, SK + "mov r0, 0\nexit", None)
      for t in ("socket_filter", "sched_cls", "cgroup_skb", "lwt_in", "sk_skb")),
    ("skb->sk is 8 bytes", "sched_cls", "ldxw r1, [r1+168]\nmov r0, 0\nexit",
     "invalid bpf_context access off=168 size=4"),
    ("skb->sk may be NULL", "sched_cls", SK + "ldxw r0, [r1+4]\nmov r0, 0\nexit",
     "invalid mem access 'sock_common_or_null'"),
    ("a socket is read-only", "sched_cls", SK + "jeq r1, 0, +2\nmov r2, 1\nstxw [r1+16], r2\nmov r0, 0\nexit",
     "cannot write into sock_common"),
    ("no arithmetic on a socket", "sched_cls", SK + "jeq r1, 0, +2\nadd r1, 4\nldxw r0, [r1+0]\nmov r0, 0\nexit",
     "pointer arithmetic on sock_common prohibited"),
    ("bpf_sk_fullsock may give NULL", "sched_cls",
     SK + "jeq r1, 0, +3\ncall 95\nldxw r0, [r0+8]\nmov r0, 0\nmov r0, 0\nexit",
     "invalid mem access 'sock_or_null'"),
    ("a cast of a cast", "sched_cls",
     SK + "jeq r1, 0, +4\ncall 96\njeq r0, 0, +2\nmov r1, r0\ncall 95\nmov r0, 0\nexit", None),
    ("a NULL check against a register holding 0 narrows nothing", "sched_cls",
     SK + "jeq r1, 0, +4\ncall 95\nmov r2, 0\njeq r0, r2, +1\nldxw r0, [r0+8]\nmov r0, 0\nexit",
     "invalid mem access 'sock_or_null'"),
    ("a NULL check with the pointer as the source narrows nothing", "sched_cls",
     SK + "jeq r1, 0, +4\ncall 95\nmov r2, 0\njeq r2, r0, +1\nldxw r0, [r0+8]\nmov r0, 0\nexit",
     "invalid mem access 'sock_or_null'"),
    ("a socket argument is no number", "sched_cls", "mov r1, 0\ncall 95\nmov r0, 0\nexit",
     "R1 type=scalar expected=sock_common, sock, tcp_sock, xdp_sock"),
    ("... nor a socket that may be NULL", "sched_cls", SK + "call 95\nmov r0, 0\nexit",
     "R1 type=sock_common_or_null expected=sock_common"),
    ("bpf_get_listener_sock", "sched_cls",
     CAST.format(skip=6, helper=98, back=2) + "ldxw r0, [r0+8]\nexit\n"
     "mov r0, 0\nexit\nexit", None),
    ("a lookup released", "xdp", LOOKUP.format(helper=84) + "jeq r0, 0, +2\nmov r1, r0\ncall 86\nmov r0, 0\nexit",
     None),
    ("a lookup not released", "xdp", LOOKUP.format(helper=84) + "mov r0, 0\nexit",
     "BPF_EXIT instruction in main prog would lead to reference leak"),
    ("a lookup left in r0", "sched_cls", LOOKUP.format(helper=85) + "exit",
     "BPF_EXIT instruction in main prog would lead to reference leak"),
    ("released through a spilled copy", "sched_cls", LOOKUP.format(helper=99) + "stxdw [r10-24], r0\n"
     "ldxdw r1, [r10-24]\njeq r1, 0, +1\ncall 86\nmov r0, 0\nexit", None),
    ("released through its cast", "sched_cls", LOOKUP.format(helper=99) + "jeq r0, 0, +6\nmov r6, r0\nmov r1, r0\n"
     "call 95\njeq r0, 0, +2\nmov r1, r0\ncall 86\nmov r0, 0\nexit",
     "BPF_EXIT instruction in main prog would lead to reference leak"),  # NULL from the cast: r6 is held
    ("released twice", "sched_cls", LOOKUP.format(helper=84) + "jeq r0, 0, +5\nmov r6, r0\nmov r1, r0\ncall 86\n"
     "mov r1, r6\ncall 86\nmov r0, 0\nexit", "R1 type=scalar expected=sock_common"),
    ("used after its release", "sched_cls", LOOKUP.format(helper=84) + "jeq r0, 0, +4\nmov r6, r0\nmov r1, r0\n"
     "call 86\nldxw r2, [r6+8]\nmov r0, 0\nexit", "R6 invalid mem access 'scalar'"),
    ("the context's socket is no reference", "sched_cls", SK + "jeq r1, 0, +1\ncall 86\nmov r0, 0\nexit",
     "R1 must be referenced when passed to release function"),
    ("released before the NULL check", "sched_cls", LOOKUP.format(helper=84) + "mov r1, r0\ncall 86\nmov r0, 0\nexit",
     "R1 type=sock_or_null expected=sock_common"),
    ("a tail call holding a reference", "sched_cls", _tail_call_with_reference(),
     "tail_call would lead to reference leak"),
    ("bpf_sock_ops->sk", "sock_ops", "ldxdw r1, [r1+184]\njeq r1, 0, +1\nldxw r0, [r1+8]\nmov r0, 0\nexit", None),
    ("sk_msg_md->sk is never NULL", "sk_msg", "ldxdw r1, [r1+72]\nldxw r0, [r1+8]\nmov r0, 0\nexit", None),
]


def _vm(prog_type: str, text: str) -> VM:
    maps = [ProgramArray(max_entries=1, name="PA")] if "map:PA" in text else []
    return load(text, *maps, prog_type=prog_type)


@pytest.mark.parametrize(("name", "prog_type", "text", "message"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_verdicts(name: str, prog_type: str, text: str, message: str | None) -> None:
    vm = _vm(prog_type, text)
    if message is None:
        vm.check()
    else:
        with pytest.raises(VerifierError) as exc:
            vm.check()
        assert message.lower() in str(exc.value).lower()


@KERNEL
@pytest.mark.parametrize(("name", "prog_type", "text", "message"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_verdicts_are_the_kernels(name: str, prog_type: str, text: str, message: str | None) -> None:
    maps = {1: kernel_oracle.KernelMap(3, 4, 4, 1)} if "map:PA" in text else {}
    verdict = kernel_oracle.kernel_verify(assemble(text, maps={"PA": 1}), PROG_TYPES[prog_type], maps)
    assert verdict.accepted is (message is None)
    if message is not None:
        assert message in verdict.log


# -- run time --------------------------------------------------------------------------------------

def _ipv4(src: str, dst: str) -> bytes:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes(map(int, src.split("."))),
                     bytes(map(int, dst.split("."))))
    return bytes(12) + b"\x08\x00" + ip + bytes(20)


def _ipv6() -> bytes:
    ip = struct.pack(">IHBB16s16s", 0x6000_0000, 20, 6, 64, bytes(15) + b"\x01", bytes(15) + b"\x02")
    return bytes(12) + b"\x86\xdd" + ip + bytes(20)


FRAMES = {"ipv4": _ipv4("10.0.0.1", "10.0.0.2"), "ipv6": _ipv6(), "arp": bytes(12) + b"\x08\x06" + bytes(28)}
# bound_dev_if, family, type, protocol, src_ip4, src_ip6[3], src_port, dst_port, dst_ip4, dst_ip6[3], state,
# rx_queue_mapping
FIELDS = (0, 4, 8, 12, 24, 40, 44, 48, 52, 68, 72, 76)


def _field_of_full_socket(off: int) -> str:
    return CAST.format(skip=6, helper=95, back=2) + f"ldxw r0, [r0+{off}]\nexit\nmov r0, 0xbeef\nexit\nexit"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_packets_own_socket(engine: str) -> None:
    got = {name: [_run_tc(_field_of_full_socket(off), frame, engine) for off in FIELDS]
           for name, frame in FRAMES.items()}
    closed, no_queue = int(TcpState.CLOSE), 0xFFFF_FFFF
    assert got["ipv4"] == [0, AF_INET, 0, 0, 0x0100000A, 0, 0, 0, 0x0200000A, 0, closed, no_queue]
    assert got["ipv6"] == [0, AF_INET6, 0, 0, 0, 0x01000000, 0, 0, 0, 0x02000000, closed, no_queue]
    assert got["arp"] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, closed, no_queue]
    some = "mov r0, 1\nexit\nmov r0, 0xbeef\nexit\nexit"  # 1 for a socket, 0xbeef for NULL
    assert _run_tc(CAST.format(skip=6, helper=96, back=2) + some, FRAMES["ipv4"], engine) == 0xBEEF  # no TCP socket
    assert _run_tc(CAST.format(skip=6, helper=98, back=2) + some, FRAMES["ipv4"], engine) == 0xBEEF  # no listener


@KERNEL
def test_the_packets_own_socket_is_the_kernels() -> None:
    for frame in FRAMES.values():
        for off in FIELDS:
            code = assemble(_field_of_full_socket(off))
            assert kernel_oracle.kernel_run(code, 3, frame) == _run_tc(_field_of_full_socket(off), frame, "jit")


def _run_tc(text: str, frame: bytes, engine: str, sock: Any = None, *, given: bool = False,
            host: list[Socket] | None = None) -> int:
    vm = load(text, prog_type="sched_cls")
    if given:
        vm.std.socket = sock
    if host is not None:
        vm.std.host.sockets = host
    verdict, _packet = vm.run_tc(frame, engine=engine)  # type: ignore[arg-type]
    return int(verdict) & 0xFFFF_FFFF


SERVER = Socket(local=("10.0.0.2", 80), state=TcpState.LISTEN, mark=7)
CONNECTION = Socket(local=("10.0.0.2", 80), remote=("10.0.0.1", 1234), mark=9, priority=3,
                    tcp={"snd_cwnd": 10, "srtt_us": 250, "bytes_acked": 123_456, "icsk_retransmits": 2})


@pytest.mark.parametrize("engine", ENGINES)
def test_a_socket_the_caller_gives(engine: str) -> None:
    fields = [_run_tc(_field_of_full_socket(off), FRAMES["ipv4"], engine, CONNECTION, given=True) for off in FIELDS]
    assert fields == [0, AF_INET, 1, 6, 0x0200000A, 0, 80, 0xD204, 0x0100000A, 0, TcpState.ESTABLISHED,
                      0xFFFF_FFFF]
    tcp = CAST.format(skip=6, helper=96, back=2) + "ldxw r0, [r0+{off}]\nexit\nmov r0, 0xbeef\nexit\nexit"
    assert [_run_tc(tcp.replace("{off}", str(off)), FRAMES["ipv4"], engine, CONNECTION, given=True)
            for off in (0, 4, 108)] == [10, 250, 2]
    wide = tcp.replace("ldxw r0, [r0+{off}]", "ldxdw r0, [r0+88]")  # bytes_acked, a u64
    assert _run_tc(wide, FRAMES["ipv4"], engine, CONNECTION, given=True) == 123_456
    # no socket: NULL; any other object stands for a socket of default fields
    assert _run_tc(SK + "mov r0, r1\nexit", FRAMES["ipv4"], engine, None, given=True) == 0
    assert _run_tc(_field_of_full_socket(4), FRAMES["ipv4"], engine, object(), given=True) == AF_INET
    request = Socket(local=("10.0.0.2", 80), remote=("10.0.0.1", 99), state=TcpState.NEW_SYN_RECV, listener=SERVER)
    listener = CAST.format(skip=6, helper=98, back=2) + "ldxw r0, [r0+16]\nexit\nmov r0, 0xbeef\nexit\nexit"
    assert _run_tc(listener, FRAMES["ipv4"], engine, request, given=True) == 7  # its listener's mark
    assert _run_tc(_field_of_full_socket(4), FRAMES["ipv4"], engine, request, given=True) == 0xBEEF  # not full


def _tuple_stores(raw: bytes, at: int) -> str:
    """Instructions storing ``raw`` (padded to 8 bytes) on the stack from r10+``at``."""
    raw += bytes(-len(raw) % 8)
    return "".join(f"lddw r1, {int.from_bytes(raw[i:i + 8], 'little'):#x}\nstxdw [r10{at + i:+d}], r1\n"
                   for i in range(0, len(raw), 8))


def _lookup(tup: bytes, helper: int = 84, netns: int = -1, flags: int = 0, off: int = 44) -> str:
    """A tc program: the socket ``helper`` finds for ``tup``: its field at ``off``, released, or
    0xbeef when none."""
    at = -48
    return ("mov r6, r1\n" + _tuple_stores(tup, at) + f"mov r1, r6\nmov r2, r10\nadd r2, {at}\nmov r3, {len(tup)}\n"
            f"mov r4, {netns}\nmov r5, {flags}\ncall {helper}\njeq r0, 0, +5\nldxw r7, [r0+{off}]\nmov r1, r0\n"
            "call 86\nmov r0, r7\nexit\nmov r0, 0xbeef\nexit")


def _v4_tuple(saddr: str, daddr: str, sport: int, dport: int) -> bytes:
    return bytes(map(int, saddr.split("."))) + bytes(map(int, daddr.split("."))) + struct.pack(">HH", sport, dport)


@pytest.mark.parametrize("engine", ENGINES)
def test_lookups_find_the_hosts_sockets(engine: str) -> None:
    dns = Socket(type=SOCK_DGRAM, protocol=IPPROTO_UDP, local=("0.0.0.0", 53), state=TcpState.CLOSE, mark=5)
    v6 = Socket(family=AF_INET6, local=("::1", 443), state=TcpState.LISTEN, mark=6)
    waiting = Socket(local=("10.0.0.2", 80), remote=("10.0.0.3", 7), state=TcpState.TIME_WAIT, mark=8)
    host = [SERVER, CONNECTION, dns, v6, waiting]

    def run(text: str) -> int:
        return _run_tc(text, FRAMES["ipv4"], engine, host=host)

    mark = 16
    assert run(_lookup(_v4_tuple("10.0.0.1", "10.0.0.2", 1234, 80), off=mark)) == 9  # the connection
    assert run(_lookup(_v4_tuple("10.0.0.9", "10.0.0.2", 1234, 80), off=mark)) == 7  # else the listener
    assert run(_lookup(_v4_tuple("10.0.0.9", "10.0.0.2", 1234, 81))) == 0xBEEF  # nothing on that port
    assert run(_lookup(_v4_tuple("10.0.0.9", "10.0.0.7", 9, 53), helper=85, off=mark)) == 5  # UDP, any address
    assert run(_lookup(_v4_tuple("10.0.0.9", "10.0.0.7", 9, 53), helper=84)) == 0xBEEF  # not TCP
    v6_tuple = bytes(16) + bytes(15) + b"\x01" + struct.pack(">HH", 5, 443)
    assert run(_lookup(v6_tuple, off=mark)) == 6
    time_wait = _v4_tuple("10.0.0.3", "10.0.0.2", 7, 80)
    assert run(_lookup(time_wait, off=mark)) == 0xBEEF  # no full socket
    assert run(_lookup(time_wait, helper=99, off=72)) == TcpState.TIME_WAIT  # skc_lookup finds any
    # the kernel's argument rules: a tuple of either size, no flags, a namespace id >= -1
    assert run(_lookup(_v4_tuple("10.0.0.1", "10.0.0.2", 1234, 80)[:8])) == 0xBEEF
    assert run(_lookup(_v4_tuple("10.0.0.1", "10.0.0.2", 1234, 80), flags=1)) == 0xBEEF
    assert run(_lookup(_v4_tuple("10.0.0.1", "10.0.0.2", 1234, 80), netns=-2)) == 0xBEEF
    assert run(_lookup(_v4_tuple("10.0.0.1", "10.0.0.2", 1234, 80), netns=3)) == 0xBEEF  # another namespace


def test_lookup_prefers_an_exact_listener() -> None:
    anywhere = Socket(local=("0.0.0.0", 80), state=TcpState.LISTEN)
    found = lookup([anywhere, SERVER], 6, bytes([10, 0, 0, 1]), 5, bytes([10, 0, 0, 2]), 80)
    assert found is SERVER
    assert lookup([anywhere], 6, bytes([10, 0, 0, 1]), 5, bytes([10, 0, 0, 9]), 80) is anywhere


@pytest.mark.parametrize("engine", ENGINES)
def test_socket_storage_through_the_contexts_socket(engine: str) -> None:
    m = SkStorage(value_size=4, name="STORE")
    count = (SK + "jeq r1, 0, +10\nmov r2, r1\nlddw r1, map:STORE\nmov r3, 0\nmov r4, 1\ncall 107\njeq r0, 0, +4\n"
             "ldxw r1, [r0+0]\nadd r1, 1\nstxw [r0+0], r1\nmov r0, r1\nexit")
    vm = load(count, m, prog_type="sched_cls")
    vm.std.socket = CONNECTION
    runs = [s64(vm.run_tc(FRAMES["ipv4"], engine=engine)[0]) for _ in range(3)]  # type: ignore[arg-type]
    assert runs == [1, 2, 3] and m[CONNECTION] == 3


@pytest.mark.parametrize("engine", ENGINES)
def test_a_context_socket_field_is_always_the_runs(engine: str) -> None:
    # Whatever address a caller writes into sk_msg_md->sk, programs read the context's socket.
    vm = load("ldxdw r1, [r1+72]\nldxw r0, [r1+4]\nexit", prog_type="sk_msg")
    res = vm.run_context(SkMsgMd(sk=0xDEAD_0000), packet=b"hello", engine=engine)  # type: ignore[arg-type]
    assert res.retval == AF_INET
    sock_ops = load("ldxdw r1, [r1+184]\nmov r0, 0\njeq r1, 0, +1\nmov r0, 1\nexit", prog_type="sock_ops")
    assert sock_ops.run_sock_ops(1, engine=engine)[0] == 0  # no socket unless one is set
    sock_ops.std.socket = CONNECTION
    assert sock_ops.run_sock_ops(1, engine=engine)[0] == 1


def test_helpers_refuse_what_is_no_socket() -> None:
    vm = VM(assemble("mov r1, 4096\ncall 95\nexit"), prog_type=ProgType.SCHED_CLS, verify=False)
    with pytest.raises(ExecutionError, match="is no socket given to the program"):
        vm.run_tc(FRAMES["ipv4"])


def test_socket_table_layout() -> None:
    table = SocketTable(capacity=2)
    a, b = table.address(CONNECTION), table.address(SERVER)
    assert table.address(CONNECTION) == a and b - a == BPF_SOCK_SIZE + BPF_TCP_SOCK_SIZE
    assert table.owner_at(a) == (CONNECTION, False) and table.owner_at(a + BPF_SOCK_SIZE) == (CONNECTION, True)
    assert table.owner_at(a + 4) is None
    with pytest.raises(ExecutionError, match="more than 2 sockets"):
        table.address(object())
    assert [r.writable for r in table.regions()] == [False]
    with pytest.raises(ValueError, match="no field cwnd"):
        Socket(tcp={"cwnd": 1})
    with pytest.raises(ValueError, match="not of the socket's family"):
        Socket(family=AF_INET6, local=("10.0.0.1", 1))


@pytest.mark.parametrize("engine", ENGINES)
def test_each_packet_of_a_batch_has_its_own_socket(engine: str) -> None:
    family = SK + "mov r0, 0xdead\njeq r1, 0, +1\nldxw r0, [r1+4]\nexit"  # read in native loops by the JIT
    vm = load(family, prog_type="sched_cls")
    frames = [FRAMES["ipv4"], FRAMES["ipv6"], FRAMES["arp"]] * 3
    assert list(vm.run_batch(frames, engine=engine).results) == [AF_INET, AF_INET6, 0] * 3  # type: ignore[arg-type]
    vm.std.socket = None
    assert list(vm.run_batch(frames, engine=engine).results) == [0xDEAD] * 9  # type: ignore[arg-type]


@pytest.mark.parametrize("prog_type", ["sched_cls", "socket", "cgroup_skb"])
def test_single_runs_follow_the_socket_set_between_them(prog_type: str) -> None:
    """Single JIT runs after the first take one native call on a context kept built: a socket
    set between runs (none, one of the caller's, the packet's own again) is seen by the next."""
    inet = SK + "mov r0, 0\njeq r1, 0, +3\nldxw r2, [r1+4]\njne r2, AF_INET, +1\nmov r0, 1\nexit"
    inet = inet.replace("AF_INET", str(AF_INET))  # r0 = 1 when skb->sk is an AF_INET socket (cgroup_skb's range)
    vm, reference = load(inet, prog_type=prog_type), load(inet, prog_type=prog_type)
    run = {"sched_cls": VM.run_tc, "socket": VM.run_socket_filter, "cgroup_skb": VM.run_cgroup_skb}[prog_type]
    frame = FRAMES["ipv4"] if prog_type != "cgroup_skb" else FRAMES["ipv4"][14:]
    seen: list[int] = []
    for sock in (PACKET_SOCKET, PACKET_SOCKET, None, None, CONNECTION, PACKET_SOCKET, PACKET_SOCKET):
        vm.std.socket = reference.std.socket = sock
        got: Any = run(vm, frame, engine="jit")  # type: ignore[arg-type]
        assert got == run(reference, frame, engine="interp"), sock  # type: ignore[arg-type]
        seen.append(int(got[0] if isinstance(got, tuple) else got))
    assert seen == [1, 1, 0, 0, 1, 1, 1]


# sk_lookup, as its users write it: the socket at index 0 of a socket map takes the connection.
STEER = """
    mov r6, r1
    stw [r10-4], 0
    lddw r1, map:REDIR
    mov r2, r10
    add r2, -4
    call 1
    jeq r0, 0, drop
    mov r7, r0
    mov r1, r6
    mov r2, r7
    mov r3, {flags}
    call 124
    mov r8, r0
    mov r1, r7
    call 86
    mov r0, 1
    jeq r8, 0, done
    mov r0, 0
done:
    exit
drop:
    mov r0, 0
    exit
"""


def _steering(flags: int = 0) -> tuple[VM, SockMap]:
    redirect = SockMap(max_entries=4, name="REDIR")
    return load(STEER.format(flags=flags), redirect, prog_type="sk_lookup"), redirect


@pytest.mark.parametrize("engine", ENGINES)
def test_sk_lookup_steers_to_a_socket_of_a_socket_map(engine: str) -> None:
    vm, redirect = _steering()
    assert vm.run_sk_lookup(remote=("10.0.0.1", 5555), local=("10.0.0.2", 80), engine=engine) == (SkAction.DROP, None)
    redirect[0] = SERVER
    assert vm.run_sk_lookup(remote=("10.0.0.1", 5555), local=("10.0.0.2", 80), engine=engine) == (SkAction.PASS,
                                                                                                   SERVER)
    redirect[0] = CONNECTION  # not listening: bpf_sk_assign refuses it (-ESOCKTNOSUPPORT)
    assert vm.run_sk_lookup(engine=engine) == (SkAction.DROP, None)
    redirect[0] = Socket(family=AF_INET6, state=TcpState.LISTEN)  # a dual-stack socket takes IPv4
    assert vm.run_sk_lookup(engine=engine)[0] == SkAction.PASS
    redirect[0] = SERVER
    assert vm.run_sk_lookup(family=AF_INET6, remote=("::1", 1), local=("::2", 80), engine=engine)[0] \
        == SkAction.DROP  # an IPv4 socket cannot take IPv6
    assert _steering(flags=4)[0].run_sk_lookup(engine=engine)[0] == SkAction.DROP  # unknown flag


@pytest.mark.parametrize("engine", ENGINES)
def test_sk_lookup_context(engine: str) -> None:
    # local_port in host order, remote_port in network order, addresses in network order
    fields = {60: 53, 36: 0x3412, 40: 0x0200000A, 32: 0x01000000, 8: AF_INET6, 12: IPPROTO_UDP, 64: 3}
    for off, expected in fields.items():
        check = f"ldxw r2, [r1+{off}]\nmov r0, 0\njne r2, {expected:#x}, +1\nmov r0, 1\nexit"  # PASS if equal
        verdict, _selected = load(check, prog_type="sk_lookup").run_sk_lookup(
            family=AF_INET6 if off != 40 else AF_INET, protocol=IPPROTO_UDP, remote=("::1", 0x1234),
            local=("::1", 53) if off != 40 else ("10.0.0.2", 53), ingress_ifindex=3, engine=engine)
        assert verdict == SkAction.PASS, off
    with pytest.raises(VerifierError, match="invalid bpf_context access"):
        load("mov r2, 1\nstxw [r1+8], r2\nmov r0, 1\nexit", prog_type="sk_lookup").check()  # read-only
    with pytest.raises(VerifierError, match="should have been in"):
        load("mov r0, 2\nexit", prog_type="sk_lookup").check()  # SK_DROP or SK_PASS


@KERNEL
def test_sk_lookup_verdicts_are_the_kernels() -> None:
    for text, accepted in ((STEER.format(flags=0), True), ("mov r0, 2\nexit", False),
                           (STEER.format(flags=0).replace("    call 86\n", ""), False)):  # a reference leak
        maps = {1: kernel_oracle.KernelMap(15, 4, 8, 4)} if "REDIR" in text else {}
        verdict = kernel_oracle.kernel_verify(assemble(text, maps={"REDIR": 1}), 30, maps, expected_attach_type=36)
        assert verdict.accepted is accepted, verdict.log
        vm = load(text, SockMap(max_entries=4, name="REDIR"), prog_type="sk_lookup") if "REDIR" in text \
            else load(text, prog_type="sk_lookup")
        check_verdict(vm, accepted)


@pytest.mark.parametrize("engine", ENGINES)
def test_programs_store_sockets_in_socket_maps(engine: str) -> None:
    socks = SockMap(max_entries=2, name="SOCKS")
    store = (SK + "jeq r1, 0, none\nmov r3, r1\nstw [r10-4], 1\nlddw r1, map:SOCKS\nmov r2, r10\nadd r2, -4\n"
             "mov r4, 0\ncall 2\nexit\nnone:\nmov r0, -1\nexit")
    vm = load(store, socks, prog_type="sched_cls")
    vm.std.socket = CONNECTION
    assert _run_tc_vm(vm, engine) == 0 and socks[1] is CONNECTION
    with pytest.raises(VerifierError, match="r3 type=fp expected=sock_common"):  # a socket map holds sockets
        load(store.replace("mov r3, r1", "mov r3, r10\nadd r3, -8"), socks, prog_type="sched_cls").check()


def _run_tc_vm(vm: VM, engine: str) -> int:
    return s64(vm.run_tc(FRAMES["ipv4"], engine=engine)[0])  # type: ignore[arg-type]


# sk_reuseport: UDP packets whose first payload byte is N go to the group's socket N of a map.
PICK = """
    mov r6, r1
    ldxdw r2, [r6+0]
    ldxdw r3, [r6+8]
    mov r4, r2
    add r4, 9
    jgt r4, r3, pass
    ldxb r4, [r2+8]
    stxw [r10-4], r4
    mov r1, r6
    lddw r2, map:GROUP
    mov r3, r10
    add r3, -4
    mov r4, 0
    call 82
    jeq r0, 0, pass
    mov r0, 0
    exit
pass:
    mov r0, 1
    exit
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_sk_reuseport_selects_a_socket_of_the_group(engine: str) -> None:
    group = ReuseportSockArray(max_entries=4, name="GROUP")
    udp = [Socket(type=SOCK_DGRAM, protocol=IPPROTO_UDP, local=("0.0.0.0", 53), state=TcpState.CLOSE)
           for _ in range(2)]
    group[0], group[1] = udp
    vm = load(PICK, group, prog_type="sk_reuseport")
    vm.std.socket = udp[0]
    datagram = struct.pack(">HHHH", 9, 53, 9, 0) + b"\x01"
    assert vm.run_sk_reuseport(datagram, ip_protocol=IPPROTO_UDP, engine=engine) == (SkAction.PASS, udp[1])
    assert vm.run_sk_reuseport(datagram[:8] + b"\x03", engine=engine) == (SkAction.DROP, None)  # empty slot
    assert vm.run_sk_reuseport(datagram[:8], engine=engine) == (SkAction.PASS, None)  # too short: picked by hash
    group[1] = CONNECTION  # a TCP socket in a UDP group: -EPROTOTYPE
    assert vm.run_sk_reuseport(datagram, engine=engine) == (SkAction.DROP, None)
    with pytest.raises(VerifierError, match="cannot pass map_type 20 into func"):
        load("stw [r10-4], 0\nlddw r1, map:GROUP\nmov r2, r10\nadd r2, -4\ncall 1\nmov r0, 1\nexit", group,
             prog_type="sk_reuseport").check()  # only bpf_sk_select_reuseport takes it


# tc's bpf_sk_assign: r0 holds the error with flags (byte 0), without (byte 1), and whether no
# socket was found (bit 16). The tuple is a connection to a listener on 127.0.0.1:4321.
SK_ASSIGN_TC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tc") int prog(struct __sk_buff *skb) {
    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = t.ipv4.daddr = __builtin_bswap32(0x7f000001);
    t.ipv4.sport = __builtin_bswap16(1234);
    t.ipv4.dport = __builtin_bswap16(4321);
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 1 << 16;
    long with_flags = bpf_sk_assign(skb, sk, 1);
    long plain = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    return (with_flags & 0xff) | (plain & 0xff) << 8;
}
"""
LISTENER = Socket(local=("127.0.0.1", 4321), state=TcpState.LISTEN)


def _sk_assign_result(with_flags: int, plain: int) -> int:
    return (with_flags & 0xFF) | (plain & 0xFF) << 8


@pytest.fixture(scope="module")
def sk_assign_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return c_builder(tmp_path_factory.mktemp("sk-assign"), "")(SK_ASSIGN_TC)


@pytest.mark.parametrize("engine", ENGINES)
def test_tc_sk_assign_outside_ingress_fails_as_in_test_runs(sk_assign_object: Path, engine: str,
                                                           kernel: Kernel | None) -> None:
    prog = load_elf(sk_assign_object).programs["prog"]
    vm = prog.vm()
    vm.std.host.sockets = [LISTENER]
    verdict, _ = vm.run_tc(FRAMES["ipv4"], engine=engine)  # type: ignore[arg-type]
    assert int(verdict) == _sk_assign_result(-errno.EINVAL, -errno.EOPNOTSUPP)
    assert vm.assigned_socket is None
    if kernel is not None:
        with socket.create_server(("127.0.0.1", 4321)):
            loaded = kernel.load(sk_assign_object, "prog", None)
            assert not isinstance(loaded, str), loaded
            try:
                ref = loaded.run(FRAMES["ipv4"])
            finally:
                loaded.close()
        assert ref is not None and ref.retval == int(verdict)


@pytest.mark.parametrize("engine", ENGINES)
def test_tc_sk_assign_at_ingress_steers_the_packet(sk_assign_object: Path, engine: str) -> None:
    vm = load_elf(sk_assign_object).programs["prog"].vm()
    vm.std.host.sockets = [LISTENER]
    vm.tc_ingress = True
    verdict, _ = vm.run_tc(FRAMES["ipv4"], engine=engine)  # type: ignore[arg-type]
    assert int(verdict) == _sk_assign_result(-errno.EINVAL, 0)
    assert vm.assigned_socket is LISTENER
    vm.std.host.sockets = []
    verdict, _ = vm.run_tc(FRAMES["ipv4"], engine=engine)  # type: ignore[arg-type]
    assert int(verdict) == 1 << 16 and vm.assigned_socket is None  # each run starts without one
