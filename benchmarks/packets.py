"""Realistic Ethernet frames for the packet-filter workload: TCP to and from port 80, HTTPS, DNS, IPv6."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
PROTO_TCP = 6
PROTO_UDP = 17


@dataclass(frozen=True)
class Packet:
    """One frame and whether the filter (IPv4, TCP, first fragment, destination port 80) accepts it."""

    name: str  # what it is, for messages
    frame: bytes  # Ethernet header onwards, no FCS
    accept: int  # expected filter result


def _checksum(header: bytes) -> int:
    total = int(sum(struct.unpack(f"!{len(header) // 2}H", header)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ethernet(ethertype: int) -> bytes:
    return bytes.fromhex("02005e1000fe") + bytes.fromhex("0242ac110002") + struct.pack("!H", ethertype)


def _ipv4(proto: int, payload_len: int, *, options: bytes = b"", frag: int = 0x4000) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + payload_len, 0x1C46, frag, 64, proto, 0,
                         bytes([10, 0, 0, 2]), bytes([93, 184, 216, 34])) + options
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:]


def _tcp(sport: int, dport: int, flags: int, options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 0x6B8B4567, 0, offset << 4, flags, 64240, 0, 0) + options


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _ipv4_frame(proto: int, l4: bytes, *, options: bytes = b"", frag: int = 0x4000) -> bytes:
    return _ethernet(ETH_IPV4) + _ipv4(proto, len(l4), options=options, frag=frag) + l4


def packet_mix() -> list[Packet]:
    """Eight frames of 71 to 1514 bytes, three accepted; they fail the ethertype, protocol, fragment and port checks."""
    syn_options = bytes.fromhex("020405b40402080a0001e2400000000001030307")  # MSS, SACK, timestamps, WS
    get = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: jitbpf\r\nAccept: */*\r\n\r\n"
    dns = bytes.fromhex("a1b201000001000000000000076578616d706c6503636f6d0000010001")
    return [
        Packet("TCP SYN to :80", _ipv4_frame(PROTO_TCP, _tcp(51234, 80, 0x02, syn_options)), 1),
        Packet("HTTP GET, full-size frame", _ipv4_frame(PROTO_TCP, _tcp(51234, 80, 0x18) + get.ljust(1460, b"x")), 1),
        Packet("TLS to :443", _ipv4_frame(PROTO_TCP, _tcp(51236, 443, 0x18) + bytes(536)), 0),
        Packet("DNS query", _ipv4_frame(PROTO_UDP, _udp(53124, 53, dns)), 0),
        Packet("HTTP response from :80", _ipv4_frame(PROTO_TCP, _tcp(80, 51234, 0x10) + bytes(1460)), 0),
        Packet("IPv4 with options, to :80", _ipv4_frame(PROTO_TCP, _tcp(51238, 80, 0x10) + bytes(200),
                                                        options=bytes.fromhex("94040000")), 1),
        # A later fragment: what sits where the ports would be is payload (here it reads as port 80).
        Packet("later fragment", _ipv4_frame(PROTO_TCP, _tcp(51240, 80, 0x10) + bytes(100), frag=0x00B9), 0),
        Packet("IPv6 TCP to :80", _ethernet(ETH_IPV6) + bytes(40) + _tcp(51240, 80, 0x02), 0),
    ]
