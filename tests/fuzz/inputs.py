"""Test frames, and mutants of the other inputs users hand to jitbpf: assembly text and packet
captures (pcap and pcapng)."""

from __future__ import annotations

import random
import struct

from tests.fuzz.objects import flip_bytes


def _frame(ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex("02000000000102000000000208") + bytes([ethertype & 0xFF]) + payload


def _ipv4(proto: int, body: bytes, ttl: int = 64) -> bytes:
    return (bytes([0x45, 0]) + struct.pack(">H", 20 + len(body)) + bytes(4) + bytes([ttl, proto]) + bytes(2)
            + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + body)


# Frames of every length class the generated programs' bounds checks meet: empty, shorter than a
# header, headers only, and a full-size frame.
FRAMES: tuple[bytes, ...] = (
    b"",
    b"\x01\x02\x03",
    _frame(0x00, _ipv4(17, struct.pack(">HHHH", 53, 53, 8, 0))),
    _frame(0x00, _ipv4(6, bytes(20), ttl=1)),
    _frame(0xDD, bytes(range(256)) * 2),
    _frame(0x00, _ipv4(17, bytes(1400))) + bytes(52),
)

TOKENS = ("r0", "r1", "r10", "r11", "[r1+0]", "[r10-512]", "[r10+8]", "0x7fffffff", "-1", "+65535", "exit",
          "call", "lddw", "map:A", "func:x", "label:", ",", "ja", "lock", "goto", "*(u64 *)", "=", "if", "0",
          "\x00", "\u00e9", "#", ";", "\n")


def mutate_text(rng: random.Random, text: str) -> str:
    """Assembly text with tokens inserted, characters deleted, or lines swapped or duplicated."""
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        match rng.randrange(4):
            case 0:
                words = lines[i].split(" ")
                words.insert(rng.randrange(len(words) + 1), rng.choice(TOKENS))
                lines[i] = " ".join(words)
            case 1 if lines[i]:
                j = rng.randrange(len(lines[i]))
                lines[i] = lines[i][:j] + lines[i][j + 1:]
            case 2:
                j = rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            case _:
                lines.insert(i, lines[rng.randrange(len(lines))])
    return "\n".join(lines)


def capture(frames: tuple[bytes, ...], pcapng: bool) -> bytes:
    """``frames`` as a little-endian pcap (Ethernet), or a pcapng with one interface."""
    if not pcapng:
        out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        for i, frame in enumerate(frames):
            out += struct.pack("<IIII", i, 0, len(frame), len(frame)) + frame
        return out
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 65535) + struct.pack("<I", 20)
    out = shb + idb
    for i, frame in enumerate(frames):
        padded = frame + bytes(-len(frame) % 4)
        size = 32 + len(padded)
        out += struct.pack("<IIIIIII", 6, size, 0, 0, i, len(frame), len(frame)) + padded + struct.pack("<I", size)
    return out


def mutate_capture(rng: random.Random, data: bytes) -> bytes:
    """A capture with bytes flipped (lengths and headers included) or cut short."""
    if rng.random() < 0.2:
        return data[:rng.randrange(len(data))]
    return flip_bytes(rng, data)
