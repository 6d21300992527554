#!/usr/bin/env bash
# Set up the virtualenv if needed, then run the whole test suite plus the lint and type gates.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/bootstrap.sh"
cd "$root"
.venv/bin/ruff check jitbpf tests benchmarks tools examples
.venv/bin/python -m mypy jitbpf benchmarks tests examples
.venv/bin/python -m pytest -q "$@"
