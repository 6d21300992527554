"""Print how many of the real-world objects load, verify, and match the kernel (``--list``: every
program's outcome). Usage: .venv/bin/python tools/realworld.py [--list] [DATA_DIR]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kernel import Kernel
from tests.realworld import build, evaluate, find_root, missing_build_tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", nargs="?", type=Path,
                        help="the realworld test data (default: found beside the checkout)")
    parser.add_argument("--list", action="store_true", help="one line per program: status and detail")
    args = parser.parse_args()
    root = args.data or find_root()
    if root is None:
        print("no realworld test data found (set JITBPF_REALWORLD_DIR)", file=sys.stderr)
        return 2
    if (why := missing_build_tools()) is not None:
        print(why, file=sys.stderr)
        return 2
    kernel = Kernel.open()
    ev = evaluate(root, build(root), kernel if isinstance(kernel, Kernel) else None,
                  kernel if isinstance(kernel, str) else "")
    if args.list:
        for o in ev.outcomes:
            print(f"{o.key:50} {o.status.value:16} {o.detail[:160]}")
    print(ev.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
