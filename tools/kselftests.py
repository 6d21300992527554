"""Print how far jitbpf's verifier agrees with the kernel's verifier selftests: verdict agreement,
expected messages found, __retval agreement in both engines (``--list``: every disagreement).
Usage: .venv/bin/python tools/kselftests.py [--list] [--known] [DATA_DIR]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kernel import Kernel
from tests.kselftests import Verdict, build, evaluate, find_root, missing_build_tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", nargs="?", type=Path,
                        help="the kselftests test data (default: found beside the checkout)")
    parser.add_argument("--list", action="store_true", help="one line per disagreement: verdict and detail")
    parser.add_argument("--known", action="store_true",
                        help="print the disagreements in the format of tests/kselftests_known.txt")
    args = parser.parse_args()
    root = args.data or find_root()
    if root is None:
        print("no kselftests test data found (set JITBPF_KSELFTESTS_DIR)", file=sys.stderr)
        return 2
    if (why := missing_build_tools()) is not None:
        print(why, file=sys.stderr)
        return 2
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
