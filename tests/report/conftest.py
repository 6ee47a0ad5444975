"""Fixtures for report tests: the fixed fake results dir (built once per session) and its Report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.fake_results import write_fake_results


@pytest.fixture(scope="session")
def fake_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_results(tmp_path_factory.mktemp("report") / "results")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user task files: label names and tasks come from the repository's catalog only."""
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(tmp_path / "home"))
