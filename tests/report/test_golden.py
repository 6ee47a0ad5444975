"""Golden files: markdown, CSV and LaTeX of the fixed fake results dir must not change by accident.

After an intended change, regenerate with `UPDATE_GOLDEN=1 pytest tests/report/test_golden.py` and review
the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medseg_bench.report import build_report, render

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "report.md": ("markdown", {}),
    "report.csv": ("csv", {}),
    "report.tex": ("latex", {}),
    "report_hd95_top2_by_loss.md": ("markdown", {"metric": "hd95", "top": 2, "group_by": "loss"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(fake_results: Path, name: str) -> None:
    fmt, options = CASES[name]
    text = render(build_report(fake_results, **options), fmt)
    assert isinstance(text, str)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 to accept)"
