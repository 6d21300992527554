"""Verification time of loop-heavy and straight-line XDP programs, beside the running kernel's own.

Each program is verified by jitbpf and, where this process may load programs (root, bpf(2)), by
the kernel, whose log (``BPF_LOG_STATS``) says how many instructions it processed and how long
it took; the two are measured one after the other in the same run, and their ratio is the
figure the target ("within 5x of the kernel") is about.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.kernel import Kernel, KernelError, open_kernel
from jitbpf import VM, ProgType
from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from jitbpf.isa import Program
from jitbpf.verifier import ContextSpec, verify

DIAMONDS = 1000  # if/else pairs in the default branching program (9,000 instructions)
PACKET_BYTES = 1500  # bytes the packet loop may walk over
LOOP_ITERATIONS = 10_000  # iterations of the counted loop
STRAIGHT_INSNS = 4000  # size of the straight-line program
LIMIT_ITERATIONS = 333_000  # a counted loop that processes just under the kernel's 1,000,000 instructions
KERNEL_RATIO = 5.0  # the target: jitbpf's verification time / the kernel's
LIMIT_SECONDS = 10.0  # the target for a program processed up to the complexity limit


def branching_source(diamonds: int = DIAMONDS, base: str = "r1") -> str:
    """A program of ``diamonds`` if/else blocks whose arms leave different values and stack
    contents behind, so that the paths differ at every join (2**diamonds paths in all); the
    bytes it branches on are read from ``base`` (64 of them)."""
    lines = ["mov r6, 0", "mov r7, 0", "stdw [r10-8], 0"]
    for i in range(diamonds):
        lines += [
            f"ldxb r3, [{base}+{i % 64}]",  # an unknown byte of the input
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


# r2 = data, r3 = data_end; ``need`` bytes of packet proven before the body (else XDP_PASS).
def _packet_prologue(need: int) -> list[str]:
    return ["ldxw r2, [r1+0]", "ldxw r3, [r1+4]", "mov r5, r2", f"add r5, {need}", "jgt r5, r3, short"]


_SHORT = ["short:", "mov r0, 2", "exit"]


def packet_loop_source(limit: int = PACKET_BYTES) -> str:
    """A byte sum over the packet: each byte checked against data_end, at most ``limit`` bytes."""
    return "\n".join([
        "ldxw r2, [r1+0]", "ldxw r3, [r1+4]", "mov r0, 0", "mov r4, 0",
        "next:", "mov r5, r2", "add r5, 1", "jgt r5, r3, done",
        "ldxb r6, [r2+0]", "add r0, r6", "add r2, 1", "add r4, 1", f"jlt r4, {limit}, next",
        "done:", "and r0, 3", "exit"])


def counted_loop_source(iterations: int = LOOP_ITERATIONS) -> str:
    """A loop whose counter the exit test depends on: walked iteration by iteration."""
    return "\n".join(["mov r0, 0", "mov r1, 0", "next:", "add r0, r1", "add r1, 1", f"jlt r1, {iterations}, next",
                      "and r0, 3", "exit"])


def straight_source(insns: int = STRAIGHT_INSNS) -> str:
    """Straight-line code with a short forward branch every four instructions, on packet bytes."""
    lines = [*_packet_prologue(16), "mov r0, 0", "mov r6, 0"]
    i = 0
    while len(lines) < insns - 5:
        lines += [f"ldxb r4, [r2+{i % 16}]", f"jgt r4, {i % 200}, +1", f"add r6, {i % 7 + 1}", "add r0, r4"]
        i += 1
    lines += ["and r0, 3", "exit", *_SHORT]
    return "\n".join(lines)


def diamonds_source(diamonds: int = DIAMONDS) -> str:
    """``branching_source`` on 64 bytes of packet (which the kernel can load as XDP)."""
    body = branching_source(diamonds, base="r2").replace("exit", "and r0, 3\nexit")
    return "\n".join([*_packet_prologue(64), body, *_SHORT])


@dataclass(frozen=True)
class Case:
    """One program of the benchmark."""

    key: str
    title: str
    source: Callable[[int], str]  # its text, from a size
    size: int  # the size in a full run
    quick_size: int  # ... and in a smoke run (0: left out)
    allow_loops: bool


CASES = (
    Case("packet_loop", "bounded loop over a packet", packet_loop_source, PACKET_BYTES, 100, True),
    Case("counted_loop", "counted loop", counted_loop_source, LOOP_ITERATIONS, 500, True),
    Case("straight", "straight line with branches", straight_source, STRAIGHT_INSNS, 400, False),
    Case("diamonds", "chain of if/else diamonds", diamonds_source, DIAMONDS, 50, False),
    Case("limit", "loop up to the complexity limit", counted_loop_source, LIMIT_ITERATIONS, 0, True),
)


def xdp_context() -> ContextSpec:
    """What r1 points to in an XDP program, as the verifier sees it (the VM knows the program types)."""
    with VM(assemble("mov r0, 2\nexit"), prog_type=ProgType.XDP, verify=False) as vm:
        spec = vm.context_spec()
    assert spec is not None
    return spec


def _jitbpf_seconds(program: Program, case: Case, repeat: int) -> tuple[float, dict[str, Any]]:
    context = xdp_context()
    best = float("inf")
    figures: dict[str, Any] = {}
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            result = verify(program, context=context, allow_loops=case.allow_loops, budget=1_000_000)
        except VerifierError as exc:
            return time.perf_counter() - start, {"error": str(exc)}
        best = min(best, time.perf_counter() - start)
        figures = {"processed": result.insns_processed, "pruned": result.states_pruned}
    return best, figures


def _kernel_seconds(kernel: Kernel, code: bytes, repeat: int) -> dict[str, Any]:
    try:
        runs = [kernel.verification(code) for _ in range(repeat)]
    except KernelError as exc:
        return {"kernel_error": str(exc)}
    return {"kernel_seconds": min(s for s, _ in runs), "kernel_processed": runs[0][1]}


def measure(case: Case, size: int, repeat: int, kernel: Kernel | None) -> dict[str, Any]:
    """jitbpf's and (when given) the kernel's verification of one program, side by side."""
    code = assemble(case.source(size))
    program = Program.from_bytes(code)
    figures: dict[str, Any] = {"title": case.title, "instructions": len(program.insns), "size": size}
    if kernel is not None:
        figures.update(_kernel_seconds(kernel, code, repeat))
    seconds, outcome = _jitbpf_seconds(program, case, repeat)
    figures.update(outcome, seconds=round(seconds, 6))
    if "kernel_seconds" in figures and "error" not in figures:
        figures["kernel_ratio"] = round(seconds / max(figures["kernel_seconds"], 1e-6), 2)
    return figures


def run(quick: bool = False) -> dict[str, Any]:
    """Every program's figures; the kernel's, or why they are missing."""
    kernel = open_kernel()
    out: dict[str, Any] = {"kernel": "available" if isinstance(kernel, Kernel) else kernel, "programs": {}}
    for case in CASES:
        size = case.quick_size if quick else case.size
        if size:
            repeat = 1 if quick or case.key == "limit" else 3
            out["programs"][case.key] = measure(case, size, repeat, kernel if isinstance(kernel, Kernel) else None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small programs, one verification each")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(args.quick)
    if args.json:
        json.dump(figures, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"kernel: {figures['kernel']}")
    for fig in figures["programs"].values():
        kernel = (f"kernel {fig['kernel_seconds'] * 1e3:.1f} ms ({fig['kernel_processed']} processed), "
                  f"ratio {fig['kernel_ratio']:.1f}x" if "kernel_ratio" in fig else fig.get("kernel_error", ""))
        print(f"{fig['title']} ({fig['instructions']} insns): jitbpf {fig['seconds'] * 1e3:.1f} ms "
              f"({fig.get('processed', fig.get('error'))} processed); {kernel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
