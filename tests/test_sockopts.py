"""bpf_setsockopt and bpf_getsockopt: the cases of sockopts_cases.txt run in both engines
against the answers Linux 6.18 gave (with the network settings of the host they were measured
on), and, where the kernel is available (root, libbpf, a writable cgroup v2 mount), against the
running kernel on a real connection: the same sockops program attached to a new cgroup runs when a
process in it connects over loopback, and jitbpf runs it with the host's settings read from
/proc/sys. Then the other program types that may call them, and what the verifier refuses."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jitbpf.errors import VerifierError
from jitbpf.linux.elf import load_elf
from jitbpf.linux.sockets import IPPROTO_UDP, SOCK_DGRAM, Socket
from jitbpf.linux.sockopts import SOL_IP, SOL_IPV6, SOL_SOCKET, SOL_TCP, NetSettings, OptName
from tests.kernel import Kernel, cgroup2_root, new_cgroup
from tests.support import ENGINES, c_builder

Build = Callable[[str], Path]
CASES_FILE = Path(__file__).with_name("sockopts_cases.txt")
LEVELS = {"SOL_IP": SOL_IP, "SOL_SOCKET": SOL_SOCKET, "SOL_TCP": SOL_TCP, "SOL_IPV6": SOL_IPV6}
BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_CGROUP_SOCK_OPS = 3, 3
TCP_SYN_SENT, AF_INET, AF_INET6 = 2, 2, 10
IPV6_SCENARIO = "ipv6"  # the scenario whose connection is over IPv6
EINVAL, ENOENT, EOPNOTSUPP = 22, 2, 95
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""
# At the connect callback, each case of the map `cases` (until one of length 0): set the option
# if asked, then read it back into `results`.
PROBE = """
struct kase { int level, optname, optlen, set; char value[16]; };
struct outcome { int set_ret, get_ret, ran, pad; char value[16]; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 64); __type(key, __u32);
         __type(value, struct kase); } cases SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 64); __type(key, __u32);
         __type(value, struct outcome); } results SEC(".maps");
SEC("sockops") int prog(struct bpf_sock_ops *ctx) {
    if (ctx->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
        return 1;
    for (__u32 i = 0; i < 64; i++) {
        __u32 k = i;
        struct kase *c = bpf_map_lookup_elem(&cases, &k);
        struct outcome *o = bpf_map_lookup_elem(&results, &k);
        if (!c || !o || c->optlen <= 0 || c->optlen > 16)
            break;
        int len = c->optlen;
        o->ran = 1;
        if (c->set)
            o->set_ret = bpf_setsockopt(ctx, c->level, c->optname, c->value, len);
        o->get_ret = bpf_getsockopt(ctx, c->level, c->optname, o->value, len);
    }
    return 1;
}
"""


@dataclass(frozen=True)
class Case:
    level: int
    optname: int
    optlen: int
    value: bytes | None  # None: read only
    expected: tuple[int, int, str]  # the set's result, the get's, the buffer after the get (hex)

    def record(self) -> bytes:
        """The case as the probe's `cases` map holds it."""
        return struct.pack("<iiii", self.level, self.optname, self.optlen, self.value is not None) + (
            self.value or b"").ljust(16, b"\0")


def _optname(name: str) -> int:
    return int(name) if name.isdigit() else int(getattr(OptName, name))


def read_cases() -> tuple[NetSettings, dict[str, list[Case]]]:
    settings: dict[str, object] = {}
    scenarios: dict[str, list[Case]] = {}
    for line in CASES_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("net "):
            for item in line.split()[1:]:
                key, value = item.split("=")
                parts = [int(p) if p.isdigit() else p for p in value.split(",")]
                settings[key] = tuple(parts) if len(parts) > 1 else parts[0]
            continue
        head, answer = line.split("=>")
        scenario, level_name, name, optlen, *action = head.split()
        level = LEVELS[level_name] if level_name in LEVELS else int(level_name)
        optval = None if action == ["get"] else bytes.fromhex("" if action[1] == "-" else action[1])
        set_ret, get_ret, after = answer.split()
        scenarios.setdefault(scenario, []).append(Case(level, _optname(name), int(optlen), optval,
                                                       (int(set_ret), int(get_ret), "" if after == "-" else after)))
    return NetSettings(**settings), scenarios  # type: ignore[arg-type]


MEASURED, SCENARIOS = read_cases()


def outcomes(raw: dict[int, bytes], cases: list[Case]) -> list[tuple[int, int, str]]:
    out = []
    for i, case in enumerate(cases):
        set_ret, get_ret, ran, _pad = struct.unpack_from("<iiii", raw[i])
        assert ran, f"case {i} did not run"
        out.append((set_ret, get_ret, raw[i][16 : 16 + case.optlen].hex()))
    return out


def run_jitbpf(path: Path, cases: list[Case], net: NetSettings, engine: str, family: int = AF_INET
               ) -> list[tuple[int, int, str]]:
    obj = load_elf(path)
    for i, case in enumerate(cases):
        obj.maps["cases"][i] = case.record()
    vm = obj.programs["prog"].vm()
    vm.std.host.net = net
    verdict, _fields = vm.run_sock_ops(BPF_SOCK_OPS_TCP_CONNECT_CB, family=family, is_fullsock=1,
                                       state=TCP_SYN_SENT, engine=engine)
    assert verdict == 1
    return outcomes({i: obj.maps["results"][i] for i in range(len(cases))}, cases)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return c_builder(tmp_path_factory.mktemp("sockopts"), HEADER)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_answers_are_the_kernels(build: Build, scenario: str, engine: str) -> None:
    cases = SCENARIOS[scenario]
    got = run_jitbpf(build(PROBE), cases, MEASURED, engine, AF_INET6 if scenario == IPV6_SCENARIO else AF_INET)
    wrong = [(i, c, g) for i, (c, g) in enumerate(zip(cases, got, strict=True)) if c.expected != g]
    assert not wrong, wrong


def _host_settings() -> NetSettings:
    def read(name: str) -> list[str]:
        return Path("/proc/sys/net", name).read_text().split()

    return NetSettings(tcp_wmem=tuple(map(int, read("ipv4/tcp_wmem"))),  # type: ignore[arg-type]
                       tcp_rmem=tuple(map(int, read("ipv4/tcp_rmem"))),  # type: ignore[arg-type]
                       wmem_max=int(read("core/wmem_max")[0]), rmem_max=int(read("core/rmem_max")[0]),
                       wmem_default=int(read("core/wmem_default")[0]),
                       rmem_default=int(read("core/rmem_default")[0]),
                       congestion_control=read("ipv4/tcp_congestion_control")[0],
                       available_congestion_control=tuple(read("ipv4/tcp_available_congestion_control")),
                       tcp_keepalive_time=int(read("ipv4/tcp_keepalive_time")[0]),
                       tcp_keepalive_intvl=int(read("ipv4/tcp_keepalive_intvl")[0]),
                       tcp_keepalive_probes=int(read("ipv4/tcp_keepalive_probes")[0]),
                       tcp_syn_retries=int(read("ipv4/tcp_syn_retries")[0]), txrehash=int(read("core/txrehash")[0]),
                       auto_flowlabels=int(read("ipv6/auto_flowlabels")[0]))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_answers_are_the_running_kernels(build: Build, kernel: Kernel | None, scenario: str) -> None:
    if kernel is None:
        pytest.skip("the kernel reference needs root, BPF and libbpf")
    root = cgroup2_root()
    if isinstance(root, str):
        pytest.skip(f"the kernel comparison attaches to a cgroup: {root}")
    path, cases = build(PROBE), SCENARIOS[scenario]
    loaded = kernel.load(path, "prog", None)
    assert not isinstance(loaded, str), loaded
    try:
        for i, case in enumerate(cases):
            loaded.update("cases", struct.pack("<I", i), case.record())
        family, host = (AF_INET6, "::1") if scenario == IPV6_SCENARIO else (AF_INET, "127.0.0.1")
        with socket.socket(family) as server, new_cgroup(root, "jitbpf-sockopts") as cgroup, \
                loaded.attached(cgroup, BPF_CGROUP_SOCK_OPS):
            server.bind((host, 0))
            server.listen()

            def join() -> None:  # the child's own cgroup, before it connects
                (cgroup / "cgroup.procs").write_text("0")

            port = server.getsockname()[1]
            subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection(('{host}', {port}))"],
                           preexec_fn=join, check=True, timeout=60)
        reference = outcomes({int.from_bytes(k, "little"): v for k, v in loaded.maps()["results"].items()}, cases)
    finally:
        loaded.close()
    for engine in ENGINES:
        assert run_jitbpf(path, cases, _host_settings(), engine, family) == reference


# -- other contexts and refusals -------------------------------------------------------------------

ADDR_PROGRAM = """
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, int); }
    seen SEC(".maps");
SEC("cgroup/connect4") int prog(struct bpf_sock_addr *ctx) {
    int one = 1, got = 0, k;
    k = 0; int r = bpf_setsockopt(ctx, SOL_TCP_, 1, &one, sizeof(one)); bpf_map_update_elem(&seen, &k, &r, 0);
    k = 1; r = bpf_getsockopt(ctx, 1, 7, &got, sizeof(got)); bpf_map_update_elem(&seen, &k, &r, 0);
    k = 2; bpf_map_update_elem(&seen, &k, &got, 0);
    int size = 5000;
    k = 3; r = bpf_setsockopt(ctx, 1, 7, &size, sizeof(size)); bpf_map_update_elem(&seen, &k, &r, 0);
    return 1;
}
""".replace("SOL_TCP_", str(SOL_TCP))


def _seen(obj: object, n: int) -> list[int]:
    maps = obj.maps  # type: ignore[attr-defined]
    return [((int(maps["seen"][i]) & 0xFFFF_FFFF) ^ 1 << 31) - (1 << 31) for i in range(n)]  # as C's int


@pytest.mark.parametrize("engine", ENGINES)
def test_a_sock_addr_program_sets_options_on_its_socket(build: Build, engine: str) -> None:
    """A UDP socket has no TCP level and the default send buffer of datagram sockets; the
    buffer a run sets is the socket's, read back by the next run and by the caller."""
    obj = load_elf(build(ADDR_PROGRAM))
    vm = obj.programs["prog"].vm()
    udp = Socket(type=SOCK_DGRAM, protocol=IPPROTO_UDP)
    vm.std.socket = udp
    assert vm.run_sock_addr(family=AF_INET, type=SOCK_DGRAM, protocol=IPPROTO_UDP, engine=engine)[0] == 1
    assert _seen(obj, 4) == [-EINVAL, 0, vm.std.host.net.wmem_default, 0]
    assert vm.std.sockets.options(udp).values[(SOL_SOCKET, OptName.SO_SNDBUF)] == 10000
    vm.run_sock_addr(family=AF_INET, type=SOCK_DGRAM, protocol=IPPROTO_UDP, engine=engine)
    assert _seen(obj, 3)[2] == 10000


OPS_PROGRAM = """
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 3); __type(key, __u32); __type(value, int); }
    seen SEC(".maps");
SEC("sockops") int prog(struct bpf_sock_ops *ctx) {
    int flags = 3, got = -1, k = 0;
    int r = bpf_setsockopt(ctx, 6, 1008, &flags, sizeof(flags));
    bpf_map_update_elem(&seen, &k, &r, 0);
    r = bpf_getsockopt(ctx, 1, 7, &got, sizeof(got));
    k = 1; bpf_map_update_elem(&seen, &k, &r, 0);
    k = 2; bpf_map_update_elem(&seen, &k, &got, 0);
    return 1;
}
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_sockops_rules_of_the_callback(build: Build, engine: str) -> None:
    """TCP_BPF_SOCK_OPS_CB_FLAGS is the context's bpf_sock_ops_cb_flags; a request socket (not a
    full one) takes no options and its reads come back zeroed; callbacks that run without the
    socket's lock (the timestamping ones, past BPF_SOCK_OPS_WRITE_HDR_OPT_CB) take none at all."""
    obj = load_elf(build(OPS_PROGRAM))
    vm = obj.programs["prog"].vm()
    _r0, fields = vm.run_sock_ops(BPF_SOCK_OPS_TCP_CONNECT_CB, family=AF_INET, is_fullsock=1, engine=engine)
    assert (fields["bpf_sock_ops_cb_flags"], _seen(obj, 3)) == (3, [0, 0, 16384])
    vm.run_sock_ops(BPF_SOCK_OPS_TCP_CONNECT_CB, family=AF_INET, is_fullsock=0, engine=engine)
    assert _seen(obj, 3) == [-EINVAL, -EINVAL, 0]
    vm.run_sock_ops(16, family=AF_INET, is_fullsock=1, engine=engine)
    assert _seen(obj, 3) == [-EOPNOTSUPP, -EOPNOTSUPP, 0]


REFUSED = [
    # a size the verifier cannot bound
    ('SEC("sockops") int prog(struct bpf_sock_ops *ctx) { char v[8] = {}; '
     "return bpf_setsockopt(ctx, 1, 7, v, ctx->remote_port); }", "unbounded memory access"),
    # not a sockops, sock_addr or cgroup/setsockopt program
    ('SEC("socket") int prog(struct __sk_buff *skb) { int v = 0; return bpf_setsockopt(skb, 1, 7, &v, 4); }',
     "bpf_setsockopt"),
    ('SEC("cgroup/getsockopt") int prog(struct bpf_sockopt *ctx) { int v = 0; '
     "struct bpf_sock *sk = ctx->sk; if (!sk) return 1; bpf_getsockopt(sk, 1, 7, &v, 4); return 1; }",
     "bpf_getsockopt"),
]


@pytest.mark.parametrize(("source", "match"), REFUSED)
def test_the_verifier_refuses(build: Build, source: str, match: str) -> None:
    obj = load_elf(build(source))
    with pytest.raises(VerifierError, match=match):
        obj.programs["prog"].vm().check()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_setsockopt_program_sets_options_on_the_calls_socket(build: Build, engine: str) -> None:
    """cgroup/setsockopt passes ctx->sk: its options are the socket's."""
    source = ('SEC("cgroup/setsockopt") int prog(struct bpf_sockopt *ctx) { int v = 1; '
              "struct bpf_sock *sk = ctx->sk; if (!sk) return 1; "
              "return bpf_setsockopt(sk, 6, 1, &v, 4) == 0; }")
    vm = load_elf(build(source)).programs["prog"].vm()
    tcp = Socket()
    vm.std.socket = tcp
    verdict, _fields, _value = vm.run_sockopt(bytes(4), level=SOL_SOCKET, optname=OptName.SO_SNDBUF, engine=engine)
    assert verdict == 1
    assert vm.std.sockets.options(tcp).values[(SOL_TCP, OptName.TCP_NODELAY)] == 1
