"""Real programs written by others, unchanged: every object of the realworld test data loads, every
program verifies and runs on the test frames in both engines with the same results, and where the
kernel can be the reference, with the kernel's return values, packets and maps. What does not yet
get there is listed, with its current outcome and why, in ``realworld_known.txt``; a listed
program that improves fails the test until its line goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kernel import Kernel
from tests.realworld import (
    Entry,
    Outcome,
    Status,
    build,
    evaluate_entry,
    find_root,
    frames,
    missing_build_tools,
    read_manifest,
)

ROOT = find_root()
KNOWN_FILE = Path(__file__).parent / "realworld_known.txt"
GOOD = frozenset({Status.IDENTICAL, Status.VERIFIED})
# What a status becomes when there is no kernel to compare with.
WITHOUT_KERNEL = {Status.IDENTICAL: Status.ENGINES_AGREE, Status.KERNEL_DIFFERS: Status.ENGINES_AGREE,
                  Status.ACCEPTS_REFUSED: Status.ENGINES_AGREE, Status.BOTH_REFUSE: Status.VERIFY_ERROR}


def _known() -> dict[str, Status]:
    known: dict[str, Status] = {}
    for line in KNOWN_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, status, _reason = (part.strip() for part in line.split("|", 2))
            known[key] = Status(status)
    return known


def _entries() -> list[Entry]:
    return read_manifest(ROOT) if ROOT is not None else []


@pytest.fixture(scope="module")
def objdir() -> Path:
    if ROOT is None:
        pytest.skip("no realworld test data (../shared/realworld or $JITBPF_REALWORLD_DIR)")
    if (why := missing_build_tools()) is not None:
        pytest.skip(why)
    return build(ROOT)


def _expected(outcome: Outcome, known: dict[str, Status], have_kernel: bool) -> frozenset[Status]:
    if outcome.key in known:
        status = known[outcome.key]
        return frozenset({status if have_kernel else WITHOUT_KERNEL.get(status, status)})
    return GOOD if have_kernel else frozenset({Status.ENGINES_AGREE, Status.VERIFIED})


@pytest.mark.skipif(ROOT is None, reason="no realworld test data (../shared/realworld or $JITBPF_REALWORLD_DIR)")
@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.id)
def test_object(entry: Entry, objdir: Path, kernel: Kernel | None) -> None:
    assert ROOT is not None
    _loaded, outcomes = evaluate_entry(entry, objdir, frames(ROOT), kernel)
    known = _known()
    wrong = [f"{o.key}: {o.status.value} ({o.detail}), expected {'/'.join(sorted(s.value for s in want))}"
             for o in outcomes if o.status not in (want := _expected(o, known, kernel is not None))]
    assert not wrong, "\n".join(wrong)


def test_known_entries_name_real_programs() -> None:
    """Every line of the known list names an object of the manifest (no stale lines)."""
    if ROOT is None:
        pytest.skip("no realworld test data")
    ids = {e.id for e in _entries()}
    stale = [k for k in _known() if k.split("/", 1)[0] not in ids]
    assert not stale, stale
