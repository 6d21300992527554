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
