"""Fixtures for the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def report(qmix_run, noisy_digits, tmp_path_factory) -> Path:
    """The Parquet report of `qmix_run` on `noisy_digits` (alone in its folder), for the commands that read one."""
    from qmix_cli.api import audit

    out = tmp_path_factory.mktemp("report") / "report.parquet"
    audit(noisy_digits, run=qmix_run.run_dir, out=out, quiet=True)
    return out
