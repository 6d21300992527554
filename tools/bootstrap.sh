#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv in .venv with every dependency, idempotently.
# PeachPy is taken from Debian's python3-peachpy package, unpacked under .venv (never into the
# system Python); elsewhere install it from its upstream git repository instead.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
stamp="$venv/.jitbpf-bootstrap"

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"

# Re-install only when the dependency list changed.
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$vpy" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    "$vpy" -m pip install --quiet --disable-pip-version-check -e "$root[test,dev]" 2> >(grep -v "^WARNING: Location" >&2)
    echo "$want" > "$stamp"
fi

# PeachPy: do nothing when it already imports.
if ! "$vpy" -c "import peachpy.x86_64" >/dev/null 2>&1; then
    dest="$venv/peachpy-deb"
    rm -rf "$dest"
    mkdir -p "$dest"
    tmp=$(mktemp -d)
    (
        cd "$tmp"
        if ! apt-get download python3-peachpy >/dev/null 2>&1; then
            if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; fi
            apt-get download python3-peachpy >/dev/null
        fi
        dpkg-deb -x python3-peachpy_*.deb "$dest"
    )
    rm -rf "$tmp"
    site=$("$vpy" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$dest/usr/lib/python3/dist-packages" > "$site/peachpy-deb.pth"
    # Byte-compile once: importing PeachPy from source costs seconds per process otherwise.
    "$vpy" -m compileall -q "$dest/usr/lib/python3/dist-packages/peachpy" >/dev/null
    "$vpy" -c "import peachpy.x86_64" || { echo "bootstrap: PeachPy does not import" >&2; exit 1; }
fi

# From Debian: clang (the ELF examples), gcc (the native benchmark references), and what the
# real-world and kernel-selftest corpora compile with (libbpf's headers, 32-bit libc stubs, clang-19).
need=""
command -v gcc >/dev/null 2>&1 || need="$need gcc"
command -v clang >/dev/null 2>&1 || need="$need clang"
for pkg in clang-19 libbpf-dev libc6-dev-i386 linux-libc-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ]; then
        { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null; } ||
            echo "bootstrap: could not install:$need (the tests that need them skip)" >&2
    else
        echo "bootstrap: please install:$need (sudo apt-get install$need)" >&2
    fi
fi

# Byte-compile the package as a regular install would (an editable one does not): every process
# that imports jitbpf would otherwise compile its sources again where bytecode is not written
# (PYTHONDONTWRITEBYTECODE), about 100 ms of each start. Up-to-date files are skipped.
"$vpy" -m compileall -q -j 0 "$root/jitbpf" "$root/benchmarks" >/dev/null
