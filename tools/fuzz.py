"""Fuzz jitbpf out of process: generated and mutated bytecode, assembly, ELF objects (with their
CO-RE target BTF) and captures, each case in a worker under a time limit. A crash, a hang, an
exception that is not a BpfError, or the engines disagreeing is a finding; findings are saved as
reproducers (``--replay FILE`` runs one in this process, with its traceback).

Usage: .venv/bin/python tools/fuzz.py [--kind program,asm,elf,pcap] [--cases N] [--seed S]
       [--jobs J] [--timeout SECONDS] [--out DIR] [--kernel] | --replay FILE | --selfcheck
With --kernel (root, the BPF syscall), each generated program's verdict is compared with the
kernel's, and where both accept it, its return values, packets and maps: a result that differs is
a finding, a verdict that differs is counted (and kept under DIR/verdicts).
Exit status: 0 without findings, 1 with findings, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jitbpf.disasm import disassemble
from tests import kernel_oracle
from tests.fuzz.harness import FUZZ_KINDS, Case, Kind, Result, campaign, make_case, run_case
from tests.fuzz.objects import build_corpus


def _cases(kinds: list[Kind], count: int, seed: int, out_dir: Path) -> Iterator[Case]:
    corpus = build_corpus(out_dir / "objects") if Kind.ELF in kinds else []
    for i in range(count):
        yield make_case(kinds[i % len(kinds)], seed + i // len(kinds), corpus)


def _replay(path: Path, kernel: bool) -> int:
    saved = json.loads(path.read_text())
    case = Case.from_json(saved)
    print(f"{case.kind.value} case {case.seed}; saved finding: {saved.get('finding', '')}")
    print(disassemble(case.data) if case.kind is Kind.PROGRAM else f"{len(case.data)} bytes")
    print(f"now: {run_case(case, kernel=kernel)}")  # a finding raises here, with its traceback
    return 0


def _selfcheck(timeout: float) -> int:
    """The harness reports a worker's death and a hang as findings."""
    report = campaign([Case(Kind.CRASH, 0, b""), Case(Kind.HANG, 0, b"")], timeout=timeout)
    found = [r.finding.split(":")[0] for r in report.findings]
    print(report.summary())
    return 0 if sorted(found) == ["crash", "hang"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default=",".join(k.value for k in FUZZ_KINDS),
                        help="comma-separated kinds of case (default: all)")
    parser.add_argument("--cases", type=int, default=1000, help="cases in all (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a case may take (default 300)")
    parser.add_argument("--out", type=Path, help="where reproducers go (default: a temporary directory)")
    parser.add_argument("--kernel", action="store_true", help="compare programs with the kernel's verifier and runs")
    parser.add_argument("--replay", type=Path, help="run one saved reproducer in this process")
    parser.add_argument("--selfcheck", action="store_true", help="check that crashes and hangs are reported")
    args = parser.parse_args()
    if args.replay:
        return _replay(args.replay, args.kernel)
    if args.selfcheck:
        return _selfcheck(min(args.timeout, 5.0))
    try:
        kinds = [Kind(k) for k in args.kind.split(",") if k]
    except ValueError:
        parser.error(f"--kind takes some of {', '.join(k.value for k in FUZZ_KINDS)}")
    if args.kernel and not kernel_oracle.available():
        parser.error("--kernel needs root and the BPF syscall")
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="jitbpf-fuzz-"))
    start = time.monotonic()
    done = 0

    def progress(result: Result) -> None:
        nonlocal done
        done += 1
        if result.status == "finding":
            print(f"FINDING {result.case.kind.value} {result.case.seed}: {result.finding.splitlines()[0]}", flush=True)
        elif sys.stderr.isatty():
            print(f"\r{done}/{args.cases} cases", end="", file=sys.stderr, flush=True)

    report = campaign(_cases(kinds, args.cases, args.seed, out_dir), timeout=args.timeout, jobs=args.jobs,
                      out_dir=out_dir, on_result=progress, kernel=args.kernel)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(report.summary())
    print(f"{done} cases in {time.monotonic() - start:.0f} s; reproducers in {out_dir / 'findings'}"
          if report.findings else f"{done} cases in {time.monotonic() - start:.0f} s")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
