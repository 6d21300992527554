"""The packet runner: the book's XDP firewall over a generated capture, in both engines, and the CLI entry."""

from __future__ import annotations

import io
import ipaddress
import struct
from pathlib import Path
from typing import Any

import dpkt
import pytest

from jitbpf import ElfProgram, load_elf, run_pcap
from jitbpf.errors import BpfError
from jitbpf.linux.programs import ProgType, XdpAction
from jitbpf.pcap import PcapError, cli_run_pcap, read_packets, verdict_name
from tests.test_elf import ENGINES, Compiler, example_compiler
from tests.test_programs import tcp_frame, udp_frame

BLOCKED = ("192.168.0.1", "192.168.0.2")  # the seed's BLOCKED_IPS
SOURCES = ["192.168.0.1", "192.168.0.3", "10.0.0.7", "192.168.0.2", "192.168.0.1", "172.16.5.4", "192.168.0.2"]


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    return example_compiler(tmp_path_factory)


def arp_frame() -> bytes:
    arp = dpkt.arp.ARP(sha=b"\x02" * 6, spa=b"\x0a\x00\x00\x02", tha=b"\x00" * 6, tpa=b"\x0a\x00\x00\x01")
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=arp))


def write_pcap(path: Path, frames: list[bytes], *, linktype: int = dpkt.pcap.DLT_EN10MB, ng: bool = False) -> Path:
    with path.open("wb") as f:
        writer = dpkt.pcapng.Writer(f, linktype=linktype) if ng else dpkt.pcap.Writer(f, linktype=linktype)
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + i / 1000)
    return path


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    frames = [udp_frame(src) for src in SOURCES] + [arp_frame(), tcp_frame("192.168.0.1")]
    return write_pcap(tmp_path / "capture.pcap", frames)


def firewall(example: Compiler) -> ElfProgram:
    obj = load_elf(example("xdp_firewall"))
    for ip in BLOCKED:
        obj.maps["BLOCKED_IPS"].insert(int(ipaddress.IPv4Address(ip)), 1)
    return obj.programs["xdp_firewall"]


@pytest.mark.parametrize("engine", ENGINES)
def test_seed_firewall_over_a_capture(example: Compiler, capture: Path, engine: str) -> None:
    seen: list[tuple[int, int]] = []
    summary = run_pcap(firewall(example), capture, engine=engine, progress=False,
                       on_packet=lambda i, _pkt, verdict: seen.append((i, verdict)))
    blocked = sum(src in BLOCKED for src in SOURCES) + 1  # and the TCP packet from 192.168.0.1
    assert summary.packets == len(SOURCES) + 2
    assert summary.verdicts == {"XDP_DROP": blocked, "XDP_PASS": summary.packets - blocked}
    assert summary.errors == 0
    expected = [XdpAction.DROP if src in BLOCKED else XdpAction.PASS for src in SOURCES]
    expected += [XdpAction.PASS, XdpAction.DROP]
    assert [v for _, v in seen] == expected
    report = summary.report()
    assert "XDP_DROP" in report and "XDP_PASS" in report and f"[{engine}]" in report
    assert "BLOCKED_IPS (HASH, 2/1024 entries)" in report
    assert f"{int(ipaddress.IPv4Address('192.168.0.1'))} (0xc0a80001) -> 1" in report


def test_both_engines_agree_and_a_vm_can_be_given(example: Compiler, capture: Path) -> None:
    obj = load_elf(example("socket_filter"))
    vm = obj.programs["udp_only"].vm()
    interp = run_pcap(vm, capture, engine="interp", progress=False)
    assert interp.verdicts == {"keep": len(SOURCES), "drop": 2}
    jit = run_pcap(obj.programs["udp_only"], capture, engine="jit", progress=False)
    assert jit.verdicts == interp.verdicts
    assert "proto_count" in interp.report()


def test_tc_and_cgroup_skb_over_a_capture(example: Compiler, capture: Path) -> None:
    tc = run_pcap(load_elf(example("tc_classifier")).programs["tc_filter"], capture, progress=False)
    assert tc.verdicts == {"TC_ACT_OK": len(SOURCES) + 2}
    cg = run_pcap(load_elf(example("cgroup_skb")).programs["ingress"], capture, progress=False)
    assert cg.verdicts == {"allow": len(SOURCES) + 2}


def test_non_packet_programs_are_refused(example: Compiler, capture: Path) -> None:
    with pytest.raises(BpfError, match="do not take packets"):
        run_pcap(load_elf(example("kprobe")).programs["trace_openat"], capture, progress=False)


def test_progress_bar_only_on_a_terminal(example: Compiler, capture: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prog = firewall(example)
    tty = Terminal()
    run_pcap(prog, capture, stream=tty)
    assert "xdp_firewall [" in tty.getvalue() and "%" in tty.getvalue()
    pipe = io.StringIO()
    run_pcap(prog, capture, stream=pipe)
    assert pipe.getvalue() == ""


def test_pcapng_raw_ip_and_sll_captures(tmp_path: Path) -> None:
    frame = udp_frame("192.168.0.1")
    ng = write_pcap(tmp_path / "a.pcapng", [frame], ng=True)
    assert [p for p, _ in read_packets(ng)] == [frame]
    raw = write_pcap(tmp_path / "raw.pcap", [frame[14:]], linktype=101)
    assert [p[12:] for p, _ in read_packets(raw)] == [frame[12:]]
    sll = write_pcap(tmp_path / "sll.pcap", [b"\x00" * 14 + b"\x08\x00" + frame[14:]], linktype=113)
    assert [p[12:] for p, _ in read_packets(sll)] == [frame[12:]]
    odd = write_pcap(tmp_path / "odd.pcap", [frame], linktype=147)
    with pytest.raises(PcapError, match="unsupported link type 147"):
        list(read_packets(odd))
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    with pytest.raises(PcapError, match="not a pcap"):
        list(read_packets(junk))


def test_cli_entry(example: Compiler, capture: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    blocked = [("BLOCKED_IPS", int(ipaddress.IPv4Address(ip)), 1) for ip in BLOCKED]
    status = cli_run_pcap(str(example("xdp_firewall")), str(capture), section="xdp", map_values=blocked,
                          progress=False, out=out, err=err)
    assert status == 0, err.getvalue()
    assert "XDP_DROP" in out.getvalue() and "XDP_PASS" in out.getvalue()
    status = cli_run_pcap(str(example("xdp_firewall")), str(capture), section="tc", out=out, err=err)
    assert status == 2 and "no program or section named 'tc'" in err.getvalue()
    status = cli_run_pcap(str(example("xdp_firewall")), str(tmp_path / "missing.pcap"), out=out, err=err)
    assert status == 2 and "missing.pcap: No such file or directory" in err.getvalue()
    status = cli_run_pcap(str(example("xdp_firewall")), str(capture), map_values=[("NOPE", 1, 1)], out=out, err=err)
    assert status == 2 and "no map named 'NOPE'" in err.getvalue()


def test_verdict_names_are_the_kernels() -> None:
    assert verdict_name(ProgType.XDP, 2) == "XDP_PASS"
    assert verdict_name(ProgType.SCHED_CLS, 0xFFFF_FFFF) == "TC_ACT_UNSPEC"  # r0 is read as a 32-bit int
    assert verdict_name(ProgType.SCHED_CLS, 2) == "TC_ACT_SHOT"
    assert verdict_name(ProgType.SK_SKB, 0) == "SK_DROP"
    assert verdict_name(ProgType.SOCKET_FILTER, 60) == "keep"
    assert verdict_name(ProgType.XDP, 9) is None and verdict_name(ProgType.KPROBE, 0) is None


def test_cut_off_and_corrupt_captures(tmp_path: Path) -> None:
    frames = [udp_frame(src) for src in SOURCES[:3]]
    whole = write_pcap(tmp_path / "whole.pcap", frames).read_bytes()
    (tmp_path / "cut.pcap").write_bytes(whole[:-5])
    heard: list[str] = []
    assert [p for p, _ in read_packets(tmp_path / "cut.pcap", warn=heard.append)] == frames[:2]
    assert heard == [f"{tmp_path / 'cut.pcap'}: the capture ends in the middle of packet 2 "
                     f"({len(frames[2]) - 5} of its {len(frames[2])} bytes); it was left out"]
    (tmp_path / "header.pcap").write_bytes(whole[:24 + 16 + len(frames[0]) + 7])
    with pytest.warns(UserWarning, match="middle of packet 1 \\(part of its header\\)"):
        assert len(list(read_packets(tmp_path / "header.pcap"))) == 1
    huge = bytearray(whole)
    huge[24 + 8 : 24 + 12] = (1 << 30).to_bytes(4, "little")
    (tmp_path / "huge.pcap").write_bytes(huge)
    with pytest.raises(PcapError, match="packet 0 at offset 0x18 claims 1073741824 bytes"):
        list(read_packets(tmp_path / "huge.pcap"))


def test_summary_json_and_final_progress(example: Compiler, capture: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    summary = run_pcap(firewall(example), capture, stream=tty, name="fw")
    last = tty.getvalue().rsplit("\r", 1)[-1]  # the bar as it stays: the whole capture read
    assert last.startswith("fw [" + "#" * 30 + "] 100.0% 9 packets") and last.endswith("\n")
    data = summary.to_json()
    assert data["program"] == "fw" and data["packets"] == 9 and data["verdicts"] == dict(summary.verdicts)
    entries = sorted(tuple(e) for e in data["maps"]["BLOCKED_IPS"]["entries"])
    assert entries == sorted((int(ipaddress.IPv4Address(ip)), 1) for ip in BLOCKED)


def test_cut_off_pcapng(tmp_path: Path) -> None:
    frames = [udp_frame(src) for src in SOURCES[:3]]
    whole = write_pcap(tmp_path / "whole.pcapng", frames, ng=True).read_bytes()
    (tmp_path / "cut.pcapng").write_bytes(whole[:-10])
    heard: list[str] = []
    assert [p for p, _ in read_packets(tmp_path / "cut.pcapng", warn=heard.append)] == frames[:2]
    assert heard == [f"{tmp_path / 'cut.pcapng'}: the capture ends in the middle of a block, after 2 packets; the rest"
                     " was left out"]


@pytest.mark.parametrize(("length", "why"), [
    (0xFFFF_FFFF, "corrupt capture"), (1 << 30, "corrupt capture"), (8, "corrupt capture"), (0, "corrupt capture"),
    (30, "not a multiple of 4"),
])
def test_corrupt_pcapng_block_lengths(tmp_path: Path, length: int, why: str) -> None:
    whole = bytearray(write_pcap(tmp_path / "whole.pcapng", [udp_frame(SOURCES[0])], ng=True).read_bytes())
    shb = int.from_bytes(whole[4:8], "little")  # the section header, then the interface description
    for at in (4, shb + 4):
        bad = bytearray(whole)
        bad[at : at + 4] = length.to_bytes(4, "little")
        path = tmp_path / "bad.pcapng"
        path.write_bytes(bad)
        with pytest.raises(PcapError, match=f"block at offset {at - 4:#x} claims {length} bytes \\({why}\\)"):
            list(read_packets(path))


def _pcapng_block(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


@pytest.mark.parametrize("option", [
    pytest.param(struct.pack("<HH", 9, 0), id="if_tsresol-empty"),
    pytest.param(struct.pack("<HH", 14, 4) + bytes(4), id="if_tsoffset-short"),
    pytest.param(struct.pack("<HH", 9, 200) + b"\x06", id="option-past-its-block"),
])
def test_pcapng_interface_options_of_the_wrong_length(tmp_path: Path, option: bytes) -> None:
    """dpkt reads these options with struct, which raised its own error through read_packets."""
    shb = _pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _pcapng_block(1, struct.pack("<HHI", 1, 0, 65535) + option + struct.pack("<HH", 0, 0))
    epb = _pcapng_block(6, struct.pack("<IIIII", 0, 0, 0, 20, 20) + bytes(20))
    path = tmp_path / "options.pcapng"
    path.write_bytes(shb + idb + epb)
    with pytest.raises(PcapError, match="corrupt capture"):
        list(read_packets(path))


def test_pcapng_block_trailer_and_byte_order(tmp_path: Path) -> None:
    whole = bytearray(write_pcap(tmp_path / "whole.pcapng", [udp_frame(SOURCES[0])], ng=True).read_bytes())
    shb = int.from_bytes(whole[4:8], "little")
    bad = bytearray(whole)
    bad[shb - 4 : shb] = (shb + 4).to_bytes(4, "little")
    (tmp_path / "trailer.pcapng").write_bytes(bad)
    with pytest.raises(PcapError, match="block at offset 0x0 ends with a length other than its"):
        list(read_packets(tmp_path / "trailer.pcapng"))
    bad = bytearray(whole)
    bad[8:12] = b"\0\0\0\0"
    (tmp_path / "order.pcapng").write_bytes(bad)
    with pytest.raises(PcapError, match="section header at offset 0x0 has no byte-order magic"):
        list(read_packets(tmp_path / "order.pcapng"))


@pytest.mark.parametrize("threads", [1, 2])
def test_jit_batches_count_what_single_runs_count(capture: Path, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of three packets (so that the capture spans several), the ARP frame's run failing
    (its broadcast address makes the program spin past its budget): the same summary as the
    interpreter's and as one JIT run per packet (what an on_packet callback asks for)."""
    from jitbpf import pcap
    from jitbpf.asm import assemble
    from jitbpf.vm import VM
    from tests.test_native_calls import SPIN_SOURCE

    monkeypatch.setattr(pcap, "BATCH_PACKETS", 3)
    seen: list[int] = []
    with VM(assemble(SPIN_SOURCE), prog_type=ProgType.XDP, verify=False, budget=1000) as vm:
        interp = run_pcap(vm, capture, engine="interp", progress=False)
        batched = run_pcap(vm, capture, engine="jit", progress=False, threads=threads)
        single = run_pcap(vm, capture, engine="jit", progress=False, on_packet=lambda i, _p, _v: seen.append(i))
    assert batched.verdicts == interp.verdicts == single.verdicts == {"XDP_PASS": 8, "error": 1}
    assert batched.first_error == interp.first_error == single.first_error
    assert batched.first_error is not None and batched.first_error.startswith("packet 7: ")
    assert seen == [0, 1, 2, 3, 4, 5, 6, 8]


def test_unreadable_header_without_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that refuses the header without saying why still gives a reason."""
    import dpkt

    def refuse(*_args: object) -> None:
        raise dpkt.dpkt.NeedData()

    monkeypatch.setattr(dpkt.pcap, "Reader", refuse)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20))
    with pytest.raises(PcapError, match=r"not a pcap or pcapng capture \(NeedData\)"):
        list(read_packets(junk))


# A program whose r0 tells packets apart: its first byte, and for cgroup_skb (which sees the
# packet from its network header) the IP version's nibble, kept in [0, 1] there.
FIRST_BYTE = {ProgType.XDP: "ldxw r2, [r1+0]\nldxw r3, [r1+4]\nmov r0, 2\nmov r4, r2\nadd r4, 1\n"
                            "jgt r4, r3, +1\nldxb r0, [r2+0]\nexit",
              ProgType.CGROUP_SKB: "ldxw r2, [r1+76]\nldxw r3, [r1+80]\nmov r0, 0\nmov r4, r2\nadd r4, 1\n"
                                   "jgt r4, r3, +3\nldxb r0, [r2+0]\nrsh r0, 6\nand r0, 1\nexit"}


def _bytes_of_capture(tmp_path: Path, frames: list[bytes], how: str) -> Path:
    """A classic capture of ``frames`` made whole, cut in a record, cut in a record header, with a
    corrupt record length, or written big-endian."""
    whole = write_pcap(tmp_path / "whole.pcap", frames).read_bytes()
    data = bytearray(whole)
    if how == "cut":
        data = data[:-5]
    elif how == "cut-header":
        data = data[:24 + sum(16 + len(f) for f in frames[:3]) + 7]
    elif how == "corrupt":
        at = 24 + sum(16 + len(f) for f in frames[:4])
        data[at + 8 : at + 12] = (1 << 30).to_bytes(4, "little")
    elif how == "big-endian":
        fields = ((4, 2), (6, 2), (8, 4), (12, 4), (16, 4), (20, 4))  # the file header's, after the magic
        data = bytearray(bytes.fromhex("a1b2c3d4"))
        data += b"".join(int.from_bytes(whole[i:i + n], "little").to_bytes(n, "big") for i, n in fields)
        at = 24
        for frame in frames:
            head = whole[at:at + 16]
            data += b"".join(int.from_bytes(head[i:i + 4], "little").to_bytes(4, "big") for i in range(0, 16, 4))
            data += frame
            at += 16 + len(frame)
    path = tmp_path / f"{how}.pcap"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("prog_type", list(FIRST_BYTE))
@pytest.mark.parametrize("how", ["whole", "cut", "cut-header", "corrupt", "big-endian"])
@pytest.mark.parametrize("limit", [None, 5])
def test_jit_reads_classic_captures_as_the_interpreter_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            prog_type: ProgType, how: str, limit: int | None) -> None:
    """The JIT's native reading of classic captures (records found in the mapped file, batches of
    three here so that a capture spans several) counts, warns and fails as the interpreter's
    reading does."""
    from jitbpf import pcap
    from jitbpf.asm import assemble
    from jitbpf.vm import VM

    monkeypatch.setattr(pcap, "BATCH_PACKETS", 3)
    frames = [udp_frame(src) for src in SOURCES] + [arp_frame(), tcp_frame("192.168.0.1"), b"\x45", b""]
    path = _bytes_of_capture(tmp_path, frames, how)
    outcomes: list[tuple[Any, ...]] = []
    for engine in ("interp", "jit"):
        with VM(assemble(FIRST_BYTE[prog_type]), prog_type=prog_type) as vm:
            try:
                s = run_pcap(vm, path, engine=engine, progress=False, limit=limit)
                outcomes.append((s.packets, s.bytes, dict(s.verdicts), s.warnings, s.errors))
            except PcapError as exc:
                outcomes.append(("refused", str(exc)))
    assert outcomes[0] == outcomes[1]
    if how == "corrupt" and limit is None:
        assert outcomes[0][0] == "refused" and "packet 4 at offset" in str(outcomes[0][1])
    elif how in ("whole", "big-endian"):
        assert outcomes[0][0] == (limit or len(frames))
