"""The JSON output and docs/report-schema.md agree: every key the report writes is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

from medseg_bench.report import build_report, render

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "report-schema.md"
METRICS = ("dice", "jaccard", "hd95", "nsd")


def _generic(key: str) -> str:
    """`dice_ci_low` -> `<m>_ci_low`, `dice_label_2` -> `<m>_label_<label>`, `rank[T]` -> `rank[<task>]`."""
    if key.startswith("rank["):
        return "rank[<task>]"
    for metric in METRICS:
        if key == metric:
            return key
        if key.startswith(f"{metric}_label_"):
            return "<m>_label_<label>"
        if key.startswith(f"{metric}_"):
            return "<m>" + key[len(metric):]
    return key


def test_every_json_key_is_documented(fake_results: Path) -> None:
    data = json.loads(render(build_report(fake_results, group_by="aug"), "json"))  # type: ignore[arg-type]
    doc = SCHEMA_DOC.read_text()
    prose = re.sub(r"```.*?```", "", doc, flags=re.DOTALL)  # the fenced overview would pair backticks wrongly
    documented = set(re.findall(r"`([^`]+)`", prose))
    objects = {
        "top level": data,
        "settings": data["settings"],
        "leaderboard": data["leaderboard"][0],
        "ranking": data["ranking"][0],
        "pairs": data["significance"]["pairs"][0],
        "friedman": data["significance"]["friedman"][0],
        "groups": data["groups"][0],
        "case_scores": {k: v for k, v in data["case_scores"][0].items() if k not in METRICS},
        "provenance": data["provenance"],
        "provenance.runs": next(iter(data["provenance"]["runs"].values())),
    }
    missing = {name: sorted(k for k in obj if _generic(k) not in documented and f'"{k}"' not in doc)
               for name, obj in objects.items()}
    assert not any(missing.values()), f"undocumented keys in docs/report-schema.md: {missing}"
    assert data["schema_version"] == 1 and "(version 1)" in doc
