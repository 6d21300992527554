"""Verification time of a large branching program: thousands of instructions, one diamond after another."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from jitbpf.asm import assemble
from jitbpf.isa import Program
from jitbpf.verifier import verify

DIAMONDS = 1000  # if/else pairs in the default program


def branching_source(diamonds: int = DIAMONDS) -> str:
    """A program of ``diamonds`` if/else blocks whose arms leave different values and stack
    contents behind, so that the paths differ at every join (2**diamonds paths in all)."""
    lines = ["mov r6, 0", "mov r7, 0", "stdw [r10-8], 0"]
    for i in range(diamonds):
        lines += [
            f"ldxb r3, [r1+{i % 64}]",  # an unknown byte of the input
            f"jgt r3, {(i * 37) % 200 + 20}, +4",
            "add r6, r3",
            f"stxdw [r10-{16 + 8 * (i % 4)}], r6",
            "ldxdw r4, [r10-8]",
            "ja +3",
            "xor r7, r3",
            f"stb [r10-{40 + i % 8}], {i & 0xFF}",
            "and r7, 0xffff",
        ]
    lines += ["mov r0, r6", "add r0, r7", "exit"]
    return "\n".join(lines)


def run(diamonds: int = DIAMONDS, repeat: int = 3) -> dict[str, Any]:
    """Verify the branching program ``repeat`` times; report its size and the best time."""
    program = Program.from_bytes(assemble(branching_source(diamonds)))
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = verify(program)
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return {
        "instructions": len(program.insns),
        "diamonds": diamonds,
        "paths": f"2**{diamonds}",
        "seconds": round(best, 4),
        "insns_processed": result.insns_processed,
        "states_pruned": result.states_pruned,
        "insns_per_second": round(result.insns_processed / best),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--diamonds", type=int, default=DIAMONDS, help="if/else blocks in the program")
    parser.add_argument("--repeat", type=int, default=3, help="verifications to time (the best is kept)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(args.diamonds, args.repeat)
    if args.json:
        json.dump(figures, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"verified {figures['instructions']} instructions ({figures['diamonds']} diamonds, "
              f"{figures['paths']} paths) in {figures['seconds'] * 1000:.1f} ms: "
              f"{figures['insns_processed']} processed, {figures['states_pruned']} pruned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
