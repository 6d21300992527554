#!/usr/bin/env bash
# Set up the virtualenv if needed, then run the demo and the benchmark suite (the main job).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/bootstrap.sh"
cd "$root"
exec .venv/bin/python -m benchmarks "$@"
