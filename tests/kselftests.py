"""The kernel's own verifier selftests as a measure of jitbpf's verifier: the ``kselftests`` test
data (``verifier_*.c`` files and their compile script) built with clang-19, each program's
expectations read from its BTF decl tags (``comment:test_expect_failure``, ``..._msg=``,
``comment:test_retval=``, ...), and jitbpf's verdict, error text and return value (in both engines)
compared with them, and with the running kernel's verdict when it can serve as the reference."""

from __future__ import annotations

import enum
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from jitbpf._native.build import cache_dir
from jitbpf.errors import BpfError
from jitbpf.linux.elf import RUNNERS, Btf, BtfKind, ElfProgram, load_elf
from jitbpf.linux.programs import ProgType
from jitbpf.vm import VM
from tests.kernel import Kernel
from tests.realworld import ENGINES, MASK32

ENV_VAR = "JITBPF_KSELFTESTS_DIR"  # overrides where the test data is
CLANG = "clang-19"
TEST_DATA_LEN = 64  # the zeroed packet the kernel's runner hands to __retval tests
# The symbolic __retval values of the kernel's test runner.
POINTER_VALUE = 0xBADCAFE  # bpf_misc.h: the kernel's runner takes any r0 for this one
RETVAL_NAMES = {"POINTER_VALUE": POINTER_VALUE, "TEST_DATA_LEN": TEST_DATA_LEN, "INT_MIN": -(1 << 31),
                "INT_MAX": (1 << 31) - 1, "UINT_MAX": MASK32, "_INT_MIN": -(1 << 31), "_INT_MAX": (1 << 31) - 1}
PROG_FLAGS = {"BPF_F_STRICT_ALIGNMENT": 1, "BPF_F_ANY_ALIGNMENT": 2, "BPF_F_TEST_RND_HI32": 4,
              "BPF_F_TEST_STATE_FREQ": 8, "BPF_F_SLEEPABLE": 16, "BPF_F_XDP_HAS_FRAGS": 32,
              "BPF_F_XDP_DEV_BOUND_ONLY": 64, "BPF_F_TEST_REG_INVARIANTS": 128}
TAG = "comment:"
PRIV_TAGS = frozenset({"test_expect_failure", "test_expect_success", "test_expect_msg", "test_retval",
                       "test_expect_xlated"})
# Maps the kernel's runner (prog_tests/verifier.c) fills before an object's __retval runs: key 0 of
# each holds a struct test_val { u32 index; int foo[11]; } with index = 7 * sizeof(int) and
# foo[6] = 0xabcdef12.
TEST_VAL = (28).to_bytes(4, "little") + bytes(24) + (0xABCDEF12).to_bytes(4, "little") + bytes(16)
PRESET_MAPS = {"verifier_array_access": "map_array_ro", "verifier_value_ptr_arith": "map_array_48b"}
PACKET_TYPES = frozenset({ProgType.XDP, ProgType.SCHED_CLS, ProgType.SCHED_ACT, ProgType.SOCKET_FILTER,
                          ProgType.CGROUP_SKB, ProgType.LWT_IN, ProgType.LWT_OUT, ProgType.LWT_XMIT})


def find_root() -> Path | None:
    """The test data: ``$JITBPF_KSELFTESTS_DIR``, else ``shared/kselftests`` beside the checkout."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "kselftests"
        if (candidate / "compile.sh").is_file():
            return candidate
    return None


def missing_build_tools() -> str | None:
    """Why the objects cannot be compiled here, or None."""
    if shutil.which(CLANG) is None:
        return f"cannot compile the kernel selftests: {CLANG} is missing (apt-get install clang-19 libbpf-dev)"
    if not Path("/usr/include/bpf/bpf_helpers.h").is_file():
        return "cannot compile the kernel selftests: libbpf's headers are missing (apt-get install libbpf-dev)"
    return None


def _include_dir(out: Path, root: Path) -> Path:
    """A directory D whose ``D/../../../include`` and ``D/../../../tools/include`` are the tools
    headers, as the sources' relative includes of ``linux/filter.h`` expect from their place in
    the kernel tree."""
    base = out / "include-root"
    deep = base / "a" / "b" / "c"
    deep.mkdir(parents=True, exist_ok=True)
    (base / "tools").mkdir(exist_ok=True)
    for link in (base / "include", base / "tools" / "include"):
        if not link.is_symlink():
            link.symlink_to(root / "src" / "tools_include")
    return deep


def build(root: Path, out: Path | None = None) -> Path:
    """Compile every source into ``out`` (default: a cache directory) unless all are up to date."""
    # One build directory per data directory: evaluate() reads every object of it.
    out = out or cache_dir() / "kselftests" / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted((root / "src").glob("verifier_*.c"))
    newest = max([p.stat().st_mtime for p in sources] + [(root / "compile.sh").stat().st_mtime])
    if any(not (o := out / f"{s.stem}.o").is_file() or o.stat().st_mtime < newest for s in sources):
        clang = f"{CLANG} -I{_include_dir(out, root)}"
        subprocess.run(["bash", str(root / "compile.sh")], env={**os.environ, "OUT": str(out), "CLANG": clang},
                       check=False, capture_output=True, timeout=900)
    return out


@dataclass(frozen=True)
class Expect:
    """What one loader mode (privileged or not) expects of a program."""

    failure: bool  # the verifier must reject it
    messages: tuple[str, ...] = ()  # texts the verifier's log must contain
    retval: int | None = None  # r0 of one test run, 32 bits (POINTER_VALUE: any, the engines agreeing)


@dataclass(frozen=True)
class Case:
    """One annotated program of an object."""

    object: str
    program: str
    tags: tuple[str, ...]  # the decl tags without "comment:"
    flags: int = 0  # BPF_F_* load flags
    auxiliary: tuple[str, ...] = ()  # programs of the object loaded with it (its maps refer to them)

    @property
    def key(self) -> str:
        return f"{self.object}/{self.program}"

    def values(self, name: str) -> list[str]:
        prefix = name + "="
        return [re.sub(r"^\d+=", "", t[len(prefix):]) for t in self.tags if t.startswith(prefix)]

    def has(self, name: str) -> bool:
        return any(t == name or t.startswith(name + "=") for t in self.tags)

    @property
    def privileged(self) -> Expect | None:
        """The expectations of a privileged loader; None when the kernel's runner does not load it so."""
        names = {t.split("=", 1)[0] for t in self.tags}
        if not names & PRIV_TAGS and any(n.endswith("_unpriv") for n in names):
            return None
        retvals = self.values("test_retval")
        return Expect(self.has("test_expect_failure"), tuple(self.values("test_expect_msg")),
                      parse_int(retvals[0]) if retvals else None)


    @property
    def unprivileged(self) -> Expect | None:
        """The expectations of an unprivileged loader, as the kernel's runner derives them: a
        program with an ``_unpriv`` tag is loaded so too, and what its ``_unpriv`` tags leave
        out is the privileged loader's; None for the others."""
        names = {t.split("=", 1)[0] for t in self.tags}
        if not any(n.endswith("_unpriv") for n in names):
            return None
        failure = ("test_expect_failure_unpriv" in names if names & {"test_expect_failure_unpriv",
                                                                       "test_expect_success_unpriv"}
                   else self.has("test_expect_failure"))
        messages = self.values("test_expect_msg_unpriv") or self.values("test_expect_msg")
        retvals = self.values("test_retval_unpriv") or self.values("test_retval")
        return Expect(failure, tuple(messages), parse_int(retvals[0]) if retvals else None)


def parse_int(text: str) -> int:
    """A __retval value as 32 unsigned bits: a name of the kernel's runner, or a C integer
    expression of literals, signs, sums and parentheses (newer headers expand INT_MIN to
    ``(-2147483647 -1)``)."""
    text = text.strip()
    if text in RETVAL_NAMES:
        return RETVAL_NAMES[text] & MASK32
    tokens = re.findall(r"0[xX][0-9a-fA-F]+|\d+|[-+()]|\S", re.sub(r"(?<=[0-9a-fA-F])[uUlL]+\b", "", text))
    pos = 0

    def term() -> int:
        nonlocal pos
        token = tokens[pos] if pos < len(tokens) else ""
        pos += 1
        if token in "-+" and token:
            return -term() if token == "-" else term()
        if token == "(":
            value = expression()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError(f"unbalanced __retval {text!r}")
            pos += 1
            return value
        return int(token, 0)

    def expression() -> int:
        nonlocal pos
        value = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            pos += 1
            value = value + term() if tokens[pos - 1] == "+" else value - term()
        return value

    value = expression()
    if pos != len(tokens):
        raise ValueError(f"cannot read __retval {text!r}")
    return value & MASK32


def lower_registers(message: str) -> str:
    """A kernel log text with its register names (R1) as jitbpf writes them (r1)."""
    return re.sub(r"\bR(\d+)\b", r"r\1", message)


def message_pattern(message: str) -> re.Pattern[str]:
    """An expected message as the kernel's runner matches it: text, except ``{{...}}``, a regex."""
    parts = re.split(r"\{\{(.*?)\}\}", message)
    return re.compile("".join(p if i % 2 else re.escape(p) for i, p in enumerate(parts)))


def _flags(values: Iterable[str]) -> int:
    flags = 0
    for v in values:
        for part in v.split("|"):
            part = part.strip()
            if part in PROG_FLAGS:
                flags |= PROG_FLAGS[part]
            elif re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)", part):
                flags |= int(part, 0)
            # else a flag of a newer kernel than this list knows: it changes no verdict here
    return flags


def function_tags(btf: Btf) -> dict[str, list[str]]:
    """The ``comment:`` decl tags of each function, in order, without the prefix."""
    tags: dict[str, list[str]] = {}
    for t in btf.types:
        if t.kind is BtfKind.DECL_TAG and t.name.startswith(TAG):
            target = btf.get(t.size_or_type)
            if target.kind is BtfKind.FUNC:
                tags.setdefault(target.name, []).append(t.name[len(TAG):])
    return tags


def read_cases(path: Path) -> list[Case]:
    """The annotated programs of an object (those the kernel's runner loads)."""
    obj = load_elf(path, create_maps=False)
    if obj.btf is None:
        return []
    cases = []
    tagged = function_tags(obj.btf)
    auxiliary = tuple(n for n, tags in tagged.items() if "test_auxiliary" in tags)
    for name, tags in tagged.items():
        case = Case(path.stem, name, tuple(tags))
        if name in obj.programs and name not in auxiliary:
            cases.append(Case(path.stem, name, tuple(tags), _flags(case.values("test_prog_flags")), auxiliary))
    return cases


class Verdict(enum.Enum):
    """jitbpf's answer against the expectation (and the kernel's, when there is one)."""

    AGREE = "agree"  # accepted or rejected as expected
    ACCEPTS = "accepts"  # jitbpf accepts what must be rejected
    REJECTS = "rejects"  # jitbpf rejects what must be accepted


@dataclass
class Outcome:
    """What jitbpf made of one case."""

    case: Case
    verdict: Verdict
    detail: str = ""  # jitbpf's error, when it rejected
    kernel: bool | None = None  # the kernel accepted it (None: no kernel)
    expected_failure: bool = False  # the reference's answer: the kernel's when there is one
    msg_found: bool | None = None  # every expected message appears in jitbpf's error (None: none expected)
    retval: dict[str, int | str] = field(default_factory=dict)  # per engine: r0 or the error
    retval_expected: int | None = None
    unavailable: bool = False  # jitbpf could not load it: a kfunc, map type or section it lacks


    @property
    def retval_agrees(self) -> dict[str, bool]:
        if self.retval_expected == POINTER_VALUE:  # a leaked address: any value
            return {e: isinstance(r, int) for e, r in self.retval.items()}
        return {e: r == self.retval_expected for e, r in self.retval.items()}


def _vm_of(prog: ElfProgram, flags: int = 0) -> VM:
    # A privileged loader may use bounded loops; the load flags that matter to the verifier too.
    return prog.vm(allow_loops=True, strict_alignment=bool(flags & PROG_FLAGS["BPF_F_STRICT_ALIGNMENT"]))


def _preset(path: Path, vm: VM) -> None:
    """The map contents the kernel's runner gives the programs of ``path`` (see PRESET_MAPS)."""
    name = PRESET_MAPS.get(path.stem)
    if name is not None:
        target = vm.map_by_name(name)
        target[0] = TEST_VAL[:target.value_size].ljust(target.value_size, b"\0")


def _test_run(prog: ElfProgram, vm: VM, engine: str) -> int | str:
    """r0 of one run as the kernel's runner makes it: a zeroed 64-byte packet, or a zeroed context."""
    try:
        runner = RUNNERS.get(prog.prog_type)
        if runner is None:
            r0 = vm.execute_jit() if engine == "jit" else vm.execute()
        else:
            args: tuple[object, ...] = (bytes(TEST_DATA_LEN),) if prog.prog_type in PACKET_TYPES else ()
            attach = vm.program_state.attach if vm.program_state is not None else None
            if runner == "run_tracing" and attach is not None:
                # The kernel's runner calls its test functions with its own arguments: zeros here.
                args = (0,) * (len(attach.args) - attach.has_return)
            result = getattr(vm, runner)(*args, engine=engine)
            r0 = result[0] if isinstance(result, tuple) else result
        return int(r0) & MASK32
    except BpfError as exc:
        return f"error: {exc}"


def evaluate_case(path: Path, case: Case, kernel: Kernel | None) -> Outcome | None:
    """jitbpf's verdict on ``case`` as a privileged loader; None when the case has no privileged mode."""
    expect = case.privileged
    if expect is None:
        return None
    k_accepts: bool | None = None
    if kernel is not None:
        loaded = kernel.load(path, case.program, None, case.flags, case.auxiliary)
        k_accepts = not isinstance(loaded, str)
        if not isinstance(loaded, str):
            loaded.close()
    want_failure = (not k_accepts) if k_accepts is not None else expect.failure
    error = ""
    available = False
    try:
        prog = load_elf(path).programs[case.program]
        vm = _vm_of(prog, case.flags)
        available = True
        vm.check()
    except BpfError as exc:
        error = str(exc)
    accepted = not error
    verdict = Verdict.AGREE if accepted != want_failure else Verdict.ACCEPTS if accepted else Verdict.REJECTS
    out = Outcome(case, verdict, error, k_accepts, want_failure, unavailable=not available)
    if expect.failure and expect.messages and not accepted:
        out.msg_found = all(message_pattern(lower_registers(m)).search(error) for m in expect.messages)
    if accepted and expect.retval is not None:
        out.retval_expected = expect.retval
        # One VM for both engines: a program that returns a pointer returns the same address.
        _preset(path, vm)
        out.retval = {e: _test_run(prog, vm, e) for e in ENGINES}
    return out


def unprivileged_error(path: Path, case: Case) -> str:
    """jitbpf's error on ``case`` verified with an unprivileged loader's rules ("" if accepted)."""
    try:
        prog = load_elf(path).programs[case.program]
        prog.vm(allow_loops=True, privileged=False,
                strict_alignment=bool(case.flags & PROG_FLAGS["BPF_F_STRICT_ALIGNMENT"])).check()
    except BpfError as exc:
        return str(exc)
    return ""


@dataclass
class Evaluation:
    """Every outcome over the test data."""

    outcomes: list[Outcome] = field(default_factory=list)
    objects: int = 0
    kernel: str = ""  # why the kernel is not the reference, or ""

    def summary(self) -> str:
        n = len(self.outcomes)
        agree = sum(o.verdict is Verdict.AGREE for o in self.outcomes)
        msgs = [o for o in self.outcomes if o.msg_found is not None]
        rets = [o for o in self.outcomes if o.retval]
        k = [o for o in self.outcomes if o.kernel is not None]
        k_annot = sum((not o.kernel) == o.case.privileged.failure for o in k if o.case.privileged)

        def pct(a: int, b: int) -> str:
            return f"{a} of {b} ({100 * a / b:.1f}%)" if b else "0 of 0"

        lines = [f"objects: {self.objects}, programs (privileged loader): {n}",
                 f"verdict agreement: {pct(agree, n)}"
                 + (" against the kernel" if k else " against the annotations (no kernel: " + self.kernel + ")"),
                 f"  jitbpf accepts what is rejected: {sum(o.verdict is Verdict.ACCEPTS for o in self.outcomes)}",
                 f"  jitbpf rejects what is accepted: {sum(o.verdict is Verdict.REJECTS for o in self.outcomes)}",
                 "  of those, unavailable (jitbpf cannot load the object or program: kfuncs, map types, "
                 f"sections it lacks): {sum(o.unavailable and o.verdict is Verdict.REJECTS for o in self.outcomes)}",
                 "expected message found in jitbpf's error (registers as r1): "
                 f"{pct(sum(bool(o.msg_found) for o in msgs), len(msgs))}"]
        for e in ENGINES:
            lines.append(f"__retval agreement ({e}): {pct(sum(o.retval_agrees[e] for o in rets), len(rets))}")
        if k:
            lines.append(f"kernel agrees with the annotations: {pct(k_annot, len(k))}")
        return "\n".join(lines)


def evaluate(objdir: Path, kernel: Kernel | None, reason: str = "") -> Evaluation:
    ev = Evaluation(kernel=reason)
    for path in sorted(objdir.glob("verifier_*.o")):
        ev.objects += 1
        for case in read_cases(path):
            out = evaluate_case(path, case, kernel)
            if out is not None:
                ev.outcomes.append(out)
    return ev
