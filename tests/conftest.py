"""Shared pytest configuration: where the conformance suites are, and the engines to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from jitbpf.conformance import ENV_VAR, find_conformance_dir


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
