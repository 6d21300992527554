"""Shared pytest configuration: where the conformance suites are, and the kernel as a reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from jitbpf.conformance import ENV_VAR, find_conformance_dir
from tests.kernel import Kernel


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--conformance-dir",
        default=None,
        help=f"directory holding the bpf_conformance and uBPF .data files "
        f"(default: ${ENV_VAR} or ../shared/conformance)",
    )


def conformance_root(config: pytest.Config) -> Path | None:
    given = config.getoption("--conformance-dir")
    if given:
        return Path(given) if Path(given).is_dir() else None
    return find_conformance_dir()


@pytest.fixture(scope="session")
def kernel() -> Kernel | None:
    """The running kernel's BPF syscall as a reference, or None where it is not available (not
    root, no BPF): tests then compare jitbpf's engines with each other only."""
    found = Kernel.open()
    return found if isinstance(found, Kernel) else None


@pytest.fixture(autouse=True)
def main_thread_on_cpu0() -> None:
    """jitbpf gives each thread a CPU id in turn on first use: the tests' own thread keeps id 0,
    where comparisons with the kernel (pinned to CPU 0) read per-CPU values and processor ids,
    whichever thread asked first."""
    from jitbpf.errors import MapError
    from jitbpf.linux.maps import current_cpu, set_current_cpu

    try:
        if current_cpu() != 0:
            set_current_cpu(0)
    except MapError:  # no native library (no C compiler): nothing runs per CPU
        pass
