"""The kernel's verifier selftests: jitbpf, as a privileged loader, accepts or rejects each program
as the running kernel does (or, without one, as the annotations and the kernel's recorded
deviations from them say), and a program with a ``__retval`` returns it in both engines. What does
not yet agree is listed in ``kselftests_known.txt``; a listed case that starts agreeing fails the
test until its line goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kernel import Kernel
from tests.kselftests import (
    Outcome,
    Verdict,
    build,
    evaluate_case,
    find_root,
    lower_registers,
    message_pattern,
    missing_build_tools,
    parse_int,
    read_cases,
    unprivileged_error,
)
from tests.realworld import MASK32

ROOT = find_root()
KNOWN_FILE = Path(__file__).parent / "kselftests_known.txt"
NO_DATA = "no kernel selftests test data (../shared/kselftests or $JITBPF_KSELFTESTS_DIR)"
# Lines about the kernel itself: where its verdict differs from the annotation.
KERNEL_LINES = {"kernel-accepts": True, "kernel-rejects": False}


def _known() -> dict[str, set[str]]:
    known: dict[str, set[str]] = {}
    for line in KNOWN_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, status, _reason = (part.strip() for part in line.split("|", 2))
            known.setdefault(key, set()).add(status)
    return known


def _objects() -> list[str]:
    return sorted(p.stem for p in (ROOT / "src").glob("verifier_*.c")) if ROOT is not None else []


@pytest.fixture(scope="module")
def objdir() -> Path:
    if ROOT is None:
        pytest.skip(NO_DATA)
    if (why := missing_build_tools()) is not None:
        pytest.skip(why)
    return build(ROOT)


def _problems(o: Outcome, known: set[str], have_kernel: bool) -> list[str]:
    problems = []
    expect = o.case.privileged
    assert expect is not None
    if have_kernel:
        kernel_says = {s for s in known if s in KERNEL_LINES}
        differs = o.kernel == expect.failure  # the kernel accepted what should fail, or the reverse
        if differs != bool(kernel_says):
            problems.append(f"the kernel {'accepts' if o.kernel else 'rejects'} it: the known list is stale")
        verdict = o.verdict
    else:
        # Without a kernel the reference is the annotation, corrected by the kernel's recorded answer.
        accepts = next((KERNEL_LINES[s] for s in known if s in KERNEL_LINES), not expect.failure)
        mine = not o.detail
        verdict = Verdict.AGREE if mine == accepts else Verdict.ACCEPTS if mine else Verdict.REJECTS
    want = next((Verdict(s) for s in known if s in ("accepts", "rejects")), Verdict.AGREE)
    if verdict is not want:
        problems.append(f"jitbpf {verdict.value}, expected {want.value} ({o.detail})")
    if o.retval:
        engines = set(o.retval.values())
        if len(engines) != 1:
            problems.append(f"the engines return different values: {o.retval}")
        elif (not all(o.retval_agrees.values())) != ("retval" in known):
            problems.append(f"r0 {o.retval}, expected {o.retval_expected:#x}"
                            + (" (listed as known)" if "retval" in known else ""))
    return problems


def _compiled(objdir: Path, name: str) -> Path:
    path = objdir / f"{name}.o"
    if not path.is_file():
        pytest.fail(f"{name}.c does not compile with {missing_build_tools() or 'clang-19'}")
    return path


@pytest.mark.skipif(ROOT is None, reason=NO_DATA)
@pytest.mark.parametrize("name", _objects())
def test_object(name: str, objdir: Path, kernel: Kernel | None) -> None:
    path, known, wrong = _compiled(objdir, name), _known(), []
    for case in read_cases(path):
        outcome = evaluate_case(path, case, kernel)
        if outcome is not None:
            wrong += [f"{case.key}: {p}" for p in _problems(outcome, known.get(case.key, set()), kernel is not None)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.skipif(ROOT is None, reason=NO_DATA)
@pytest.mark.parametrize("name", _objects())
def test_object_unprivileged(name: str, objdir: Path) -> None:
    """With ``privileged=False`` jitbpf refuses what the annotations say an unprivileged loader's
    kernel refuses (``__failure_unpriv`` and friends), accepts the rest, and names the rule as
    the kernel's log does where it can (at most the listed ``unpriv-msg`` cases differ)."""
    path, known, wrong = _compiled(objdir, name), _known(), []
    for case in read_cases(path):
        expect = case.unprivileged
        if expect is None:
            continue
        error = unprivileged_error(path, case)
        listed = known.get(case.key, set())
        verdict = "agree" if bool(error) == expect.failure else "unpriv-accepts" if not error else "unpriv-rejects"
        want = next((s for s in listed if s in ("unpriv-accepts", "unpriv-rejects")), "agree")
        if verdict != want:
            wrong.append(f"{case.key}: jitbpf {verdict}, expected {want} ({error})")
        if error and expect.failure and expect.messages:
            found = all(message_pattern(lower_registers(m)).search(error) for m in expect.messages)
            if found == ("unpriv-msg" in listed):
                wrong.append(f"{case.key}: the message {expect.messages} is {'' if found else 'not '}in "
                             f"jitbpf's error ({error})" + (" (listed as known)" if found else ""))
    assert not wrong, "\n".join(wrong)


def test_known_entries_name_real_programs() -> None:
    """Every line of the known list names a test source of the data (no stale lines)."""
    if ROOT is None:
        pytest.skip(NO_DATA)
    stale = [k for k in _known() if k.split("/", 1)[0] not in _objects()]
    assert not stale, stale


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("-1", MASK32), ("0x10", 16), ("5UL", 5), ("INT_MIN", 1 << 31), ("TEST_DATA_LEN", 64),
    ("(-2147483647 -1)", 1 << 31), ("((1) + 2)", 3),
])
def test_retval_annotations_read_as_the_kernels_runner(text: str, value: int) -> None:
    """__retval values as newer headers expand them: names, literals, and sums in parentheses."""
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["", "(1", "1 2", "x"])
def test_unreadable_retval_annotations_are_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_int(text)
