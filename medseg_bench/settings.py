"""The one place that reads the environment.

Variables:
    MEDSEG_BENCH_HOME    root of user state (default ~/.medseg-bench, also when empty): data/, tasks/, cache
                         lives in data/.
    MEDSEG_BENCH_MIRROR  base URL of an MSD mirror; `<mirror>/<Task>.tar` replaces the official URL.
    NO_COLOR             set and not empty: no colour in error lines (https://no-color.org; rich's own
                         output reads it too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = Path("results")


@dataclass(frozen=True)
class Settings:
    home: Path
    mirror: str | None
    no_color: bool = False

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def user_tasks_dir(self) -> Path:
        return self.home / "tasks"


def get_settings() -> Settings:
    """Read the environment now (cheap; tests change it between calls)."""
    home_text = os.environ.get("MEDSEG_BENCH_HOME", "")
    # empty or blank is unset (as XDG's variables): "" was the current folder, " " a folder named " "
    home = Path(home_text if home_text.strip() else "~/.medseg-bench").expanduser()
    mirror = os.environ.get("MEDSEG_BENCH_MIRROR") or None
    return Settings(home=home, mirror=mirror, no_color=bool(os.environ.get("NO_COLOR")))


def packaged_tasks_dir() -> Path:
    """Task YAML files shipped with the package (wheel) or the source checkout (editable install)."""
    return _packaged("tasks")


def packaged_sweeps_dir() -> Path:
    """The sweep files shipped with the package (`sweeps/` of the checkout; `--config quick`)."""
    return _packaged("sweeps")


def _packaged(folder: str) -> Path:
    """The checkout's top-level `folder` as the package holds it: `medseg_bench/_<folder>` in a wheel
    (pyproject.toml's force-include), else the checkout's own."""
    bundled = Path(__file__).resolve().parent / f"_{folder}"
    return bundled if bundled.is_dir() else REPO_ROOT / folder
