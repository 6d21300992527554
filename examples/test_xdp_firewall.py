"""An example of unit-testing an eBPF program with pytest: the XDP firewall of xdp_firewall.c,
compiled once for this module, fed packets built with dpkt (or scapy, when it is installed).

Run it with ``pytest examples/test_xdp_firewall.py``; it needs clang, no root and no kernel.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import dpkt
import pytest

from jitbpf import XdpAction, testing

HERE = Path(__file__).resolve().parent
BLOCKED = "192.168.0.1"

if shutil.which("clang") is None:
    pytest.skip("clang is needed to build xdp_firewall.c (apt-get install clang)", allow_module_level=True)

# Built once for the module; each test gets the same program, maps included.
firewall = testing.fixture(HERE / "xdp_firewall.c", include=[HERE / "include"])


def udp_from(src: str) -> dpkt.ethernet.Ethernet:
    udp = dpkt.udp.UDP(sport=40000, dport=53, data=b"query")
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=ipaddress.IPv4Address(src).packed, dst=ipaddress.IPv4Address("10.0.0.1").packed,
                    p=dpkt.ip.IP_PROTO_UDP, data=udp)
    ip.len = len(ip)
    return dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)


@pytest.fixture(autouse=True)
def blocklist(firewall: testing.Harness) -> None:
    blocked = firewall["BLOCKED_IPS"]
    blocked.clear()
    blocked[int(ipaddress.IPv4Address(BLOCKED))] = 1


def test_drops_a_blocked_source(firewall: testing.Harness) -> None:
    outcome = firewall.run(udp_from(BLOCKED))
    testing.assert_verdict(outcome, XdpAction.DROP)


def test_passes_other_sources_unchanged(firewall: testing.Harness) -> None:
    packet = udp_from("10.9.8.7")
    outcome = firewall.run(packet)
    testing.assert_verdict(outcome, "XDP_PASS")
    testing.assert_packet(outcome, packet)
    assert outcome.parsed().data.src == packet.data.src  # re-parsed as the dpkt class it was given as


@pytest.mark.parametrize("frame", [b"", b"\x00" * 13, bytes(udp_from(BLOCKED))[:20]], ids=["empty", "short", "cut"])
def test_passes_what_it_cannot_parse(firewall: testing.Harness, frame: bytes) -> None:
    testing.assert_verdict(firewall.run(frame), XdpAction.PASS)


def test_non_ip_frames_pass(firewall: testing.Harness) -> None:
    arp = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=b"\0" * 28)
    testing.assert_verdict(firewall.run(arp), XdpAction.PASS)


def test_kernel_style_test_run(firewall: testing.Harness) -> None:
    """The BPF_PROG_TEST_RUN shape: data in, data out, context, repeat and the mean duration."""
    result = firewall.test_run(bytes(udp_from(BLOCKED)), repeat=50)
    assert result.retval == XdpAction.DROP and result.repeat == 50 and result.duration > 0
    assert result.data_out == bytes(udp_from(BLOCKED))


def test_with_scapy() -> None:
    scapy = pytest.importorskip("scapy.all")
    with testing.harness(HERE / "xdp_firewall.c", include=[HERE / "include"]) as fw:
        fw["BLOCKED_IPS"][int(ipaddress.IPv4Address(BLOCKED))] = 1
        packet = scapy.Ether() / scapy.IP(src=BLOCKED, dst="10.0.0.1") / scapy.UDP(dport=53)
        testing.assert_verdict(fw.run(packet), XdpAction.DROP)
