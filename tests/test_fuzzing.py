"""The fuzzing harness (tests/fuzz, tools/fuzz.py): it reports crashes and hangs, its generated
programs reach both engines, and a short campaign of each kind finds nothing."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from tests import kernel_oracle
from tests.fuzz.harness import MAP_HANDLES, Case, Kind, Result, campaign, make_case, save
from tests.fuzz.objects import build_corpus
from tests.fuzz.programs import xdp_program
from tests.support import LIBBPF_HEADERS

CAMPAIGNS = {Kind.PROGRAM: 80, Kind.ASM: 30, Kind.ELF: 30, Kind.PCAP: 30}  # cases of each kind


def test_crashes_and_hangs_are_findings() -> None:
    report = campaign([Case(Kind.CRASH, 1, b""), Case(Kind.HANG, 2, b""), Case(Kind.PCAP, 3, b"")], timeout=5)
    found = {r.case.kind: r.finding for r in report.findings}
    assert set(found) == {Kind.CRASH, Kind.HANG}
    assert found[Kind.CRASH].startswith("crash: signal 11")
    assert "Fatal Python error" in found[Kind.CRASH]  # the worker's own traceback comes with it
    assert found[Kind.HANG].startswith("hang")
    assert report.statuses["pcap", "ran"] == 1  # the worker that replaced them ran the next case


def test_generated_programs_reach_the_engines() -> None:
    """Unmutated, most generated programs verify: the campaign runs code, not only the verifier."""
    from tests.fuzz.harness import _run_program

    outcomes: Counter[bool] = Counter()
    for seed in range(40):
        code = assemble(xdp_program(random.Random(seed)), maps=MAP_HANDLES)
        try:
            outcomes[_run_program(code, verify=True) is not None] += 1
        except VerifierError:
            outcomes[False] += 1
    assert outcomes[True] >= 16, outcomes


def test_cases_are_made_from_their_seed() -> None:
    assert make_case(Kind.PROGRAM, 7) == make_case(Kind.PROGRAM, 7)
    assert make_case(Kind.PROGRAM, 7) != make_case(Kind.PROGRAM, 8)


def test_reproducers_round_trip(tmp_path: Path) -> None:
    case = make_case(Kind.PCAP, 5)
    path = save(Result(case, "finding", "what it found"), tmp_path)
    import json

    saved = json.loads(path.read_text())
    assert Case.from_json(saved) == case and saved["finding"] == "what it found"


@pytest.mark.parametrize("kind", list(CAMPAIGNS), ids=[k.value for k in CAMPAIGNS])
def test_short_campaign_finds_nothing(kind: Kind, tmp_path: Path) -> None:
    corpus = []
    if kind is Kind.ELF:
        if shutil.which("clang") is None or not LIBBPF_HEADERS.exists():
            pytest.skip("clang and libbpf's headers are needed (apt-get install clang libbpf-dev)")
        corpus = build_corpus(tmp_path)
    cases = (make_case(kind, seed, corpus) for seed in range(CAMPAIGNS[kind]))
    report = campaign(cases, timeout=120, out_dir=tmp_path)
    assert not report.findings, "\n\n".join(f"{r.case.kind.value} {r.case.seed}: {r.finding}" for r in report.findings)
    assert report.statuses[kind.value, "ran"] > 0, report.summary()


# A result made of where memory lies: the packet pointer's low bits stored in the array map.
ADDRESS_INTO_MAP = """
    ldxw r6, [r1+0]
    stw [r10-4], 0
    mov r2, r10
    add r2, -4
    lddw r1, map:A
    call 1
    jeq r0, 0, +3
    mov32 r6, r6            ; a privileged loader may make a number of a pointer
    and r6, 0xfff0
    stxdw [r0+0], r6
    mov r0, 2
    exit
"""


# A pointer's low byte stored as it is: the same in every jitbpf run (values lie at the same offset
# in their pages), another in the kernel's; the unprivileged rules name it.
POINTER_BYTE_INTO_MAP = """
    stw [r10-4], 0
    mov r2, r10
    add r2, -4
    lddw r1, map:A
    call 1
    jeq r0, 0, +1
    stxb [r0+7], r0
    mov r0, 2
    exit
"""


# r0 from the CPU a run is on: the kernel's test runs go where their caller is, kept on the CPU id
# that jitbpf's runs see.
CPU_ID = """
    call 8
    mov r1, 2
    jeq r0, 0, +1
    mov r1, 1
    mov r0, r1
    exit
"""


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.parametrize(("source", "status"), [(ADDRESS_INTO_MAP, "both-accept-address"),
                                                 (ADDRESS_INTO_MAP.replace("and r6, 0xfff0", "mov r6, 7"),
                                                  "both-accept"),
                                                 (POINTER_BYTE_INTO_MAP, "both-accept-address"),
                                                 (CPU_ID, "both-accept")])
def test_kernel_mode_tells_address_dependent_results_apart(source: str, status: str) -> None:
    """Where jitbpf's results and the kernel's differ only because memory lies elsewhere, the
    kernel mode says so instead of reporting a finding (a second run of jitbpf moves it)."""
    from tests.fuzz.harness import _program_case

    assert _program_case(assemble(source, maps=MAP_HANDLES), kernel=True) == status
