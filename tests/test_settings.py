"""`settings.py`: the environment read in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_bench.settings import get_settings


@pytest.mark.parametrize("value", ["", " ", None])
def test_an_empty_or_unset_home_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               value: str | None) -> None:
    # MEDSEG_BENCH_HOME="" (an unset shell variable in a script) put data/ in the current folder; " " in a
    # folder named " "
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("MEDSEG_BENCH_HOME", raising=False)
    else:
        monkeypatch.setenv("MEDSEG_BENCH_HOME", value)
    assert get_settings().home == tmp_path / ".medseg-bench"
    assert get_settings().data_dir == tmp_path / ".medseg-bench" / "data"


def test_home_and_mirror_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDSEG_BENCH_MIRROR", "http://127.0.0.1:8000")
    monkeypatch.setenv("NO_COLOR", "")
    settings = get_settings()
    assert settings.home == tmp_path / "home" and settings.user_tasks_dir == tmp_path / "home" / "tasks"
    assert settings.mirror == "http://127.0.0.1:8000" and not settings.no_color
