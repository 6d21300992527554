"""Print how far jitbpf's verifier agrees with the kernel's verifier selftests: verdict agreement,
expected messages found, __retval agreement in both engines (``--list``: every disagreement).
``--unprivileged`` compares ``privileged=False`` with the running kernel's unprivileged loader
instead, on the programs with ``_unpriv`` annotations: as root, with unprivileged BPF enabled
(``sysctl kernel.unprivileged_bpf_disabled=0``; set it back to 2 after), the kernel's loads are
made by a child process without capabilities.
Usage: .venv/bin/python tools/kselftests.py [--list] [--known] [--unprivileged] [DATA_DIR]"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kernel import Kernel
from tests.kselftests import Verdict, build, evaluate, find_root, missing_build_tools, read_cases, unprivileged_error

UNPRIVILEGED_SYSCTL = Path("/proc/sys/kernel/unprivileged_bpf_disabled")


def _kernel_unprivileged(objdir: Path) -> int:
    """(In the child without capabilities.) Each unprivileged case's kernel verdict, as JSON."""
    kernel = Kernel.open()
    if isinstance(kernel, str):
        print(json.dumps({"error": kernel}))
        return 1
    verdicts: dict[str, bool | str] = {}
    for path in sorted(objdir.glob("verifier_*.o")):
        for case in read_cases(path):
            if case.unprivileged is not None:
                loaded = kernel.load(path, case.program, None, case.flags, case.auxiliary)
                verdicts[case.key] = loaded if isinstance(loaded, str) else True
                if not isinstance(loaded, str):
                    loaded.close()
    print(json.dumps(verdicts))
    return 0


def unprivileged(objdir: Path, listing: bool) -> int:
    """jitbpf's privileged=False against the kernel's unprivileged loader, case by case."""
    if os.geteuid() != 0 or not UNPRIVILEGED_SYSCTL.is_file() or UNPRIVILEGED_SYSCTL.read_text().strip() != "0":
        print("needs root and unprivileged BPF enabled (sysctl kernel.unprivileged_bpf_disabled=0)", file=sys.stderr)
        return 2
    child = subprocess.run(["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
                            sys.executable, __file__, "--kernel-unprivileged-child", str(objdir)],
                           capture_output=True, text=True, check=False)
    kernel = json.loads(child.stdout or "{}")
    if "error" in kernel or child.returncode:
        print(f"the child could not load programs: {kernel.get('error') or child.stderr}", file=sys.stderr)
        return 1
    agree = annotated = 0
    for path in sorted(objdir.glob("verifier_*.o")):
        for case in read_cases(path):
            expect = case.unprivileged
            if expect is None:
                continue
            error, refused = unprivileged_error(path, case), kernel[case.key]
            annotated += (refused is True) != expect.failure
            if bool(error) == (refused is not True):
                agree += 1
            elif listing:
                theirs = "accepts" if refused is True else refused
                print(f"{case.key:70} kernel: {theirs}; jitbpf: {error or 'accepts'}")
    print(f"unprivileged loader, {len(kernel)} programs: jitbpf gives the kernel's verdict on {agree}; "
          f"the kernel follows the annotation on {annotated}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", nargs="?", type=Path,
                        help="the kselftests test data (default: found beside the checkout)")
    parser.add_argument("--list", action="store_true", help="one line per disagreement: verdict and detail")
    parser.add_argument("--known", action="store_true",
                        help="print the disagreements in the format of tests/kselftests_known.txt")
    parser.add_argument("--unprivileged", action="store_true",
                        help="compare privileged=False with the kernel's unprivileged loader (see above)")
    parser.add_argument("--kernel-unprivileged-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kernel_unprivileged_child is not None:
        return _kernel_unprivileged(args.kernel_unprivileged_child)
    root = args.data or find_root()
    if root is None:
        print("no kselftests test data found (set JITBPF_KSELFTESTS_DIR)", file=sys.stderr)
        return 2
    if (why := missing_build_tools()) is not None:
        print(why, file=sys.stderr)
        return 2
    if args.unprivileged:
        return unprivileged(build(root), args.list)
    kernel = Kernel.open()
    ev = evaluate(build(root), kernel if isinstance(kernel, Kernel) else None,
                  kernel if isinstance(kernel, str) else "")
    for o in ev.outcomes:
        expect = o.case.privileged
        if args.known and expect is not None and o.kernel is not None and o.kernel == expect.failure:
            print(f"{o.case.key} | kernel-{'accepts' if o.kernel else 'rejects'} | the annotation says otherwise")
        if args.known and o.retval and not all(o.retval_agrees.values()):
            print(f"{o.case.key} | retval | r0 {o.retval}, expected {o.retval_expected}")
        if o.verdict is Verdict.AGREE:
            continue
        if args.known:
            reason = o.detail.splitlines()[0][:140] if o.detail else "the kernel rejects it"
            print(f"{o.case.key} | {o.verdict.value} | {reason}")
        elif args.list:
            label = "unavailable" if o.unavailable else o.verdict.value  # not loaded: no verdict of the verifier
            print(f"{o.case.key:70} {label:11} {o.detail[:140]}")
    if not args.known:
        print(ev.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
