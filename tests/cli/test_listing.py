"""`medseg-bench list`: every registered entry, and the docs that list them by hand name each one too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg_bench.augment import AUGS
from medseg_bench.cli.app import app
from medseg_bench.losses import LOSSES, REGION_LOSSES
from medseg_bench.metrics import METRIC_NAMES
from medseg_bench.models import ARCHS

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _registered(what: str) -> list[str]:
    if what == "archs":
        return [name for arch in ARCHS for name in (arch, *ARCHS.aliases_of(arch))]
    return {"losses": list(LOSSES), "augs": list(AUGS), "metrics": list(METRIC_NAMES)}[what]


@pytest.mark.parametrize("what", ["archs", "losses", "augs", "metrics"])
def test_list_shows_every_registered_entry(what: str) -> None:
    result = runner.invoke(app, ["list", what], terminal_width=200)
    assert result.exit_code == 0, result.output
    listed = set(re.findall(r"[\w-]+", result.output))
    assert [name for name in _registered(what) if name not in listed] == []


def test_list_losses_shows_each_loss_s_region_form(softmax_only_loss: str) -> None:
    result = runner.invoke(app, ["list", "losses"], terminal_width=300)
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ ")}
    assert "Soft Dice over the sigmoid region channels + binary cross-entropy" in lines["dice_ce"]
    for name, region_form in REGION_LOSSES.items():
        description = (region_form.__doc__ or "").strip().splitlines()[0]
        assert description and description in lines[name], (name, lines[name])
    assert lines[softmax_only_loss].rstrip(" │").endswith("-")  # a loss without one (this test's)


def test_the_readme_names_every_arch_loss_and_augmentation_preset() -> None:
    # What a contributor adds in one place must still be named where the README lists them by hand.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("### Architectures, losses, augmentation, training options")
    section = readme[start:readme.index("\n### ", start + 1)]
    words = set(re.findall(r"\w+", section))
    missing = {what: [n for n in _registered(what) if n not in words] for what in ("archs", "losses", "augs")}
    assert missing == {"archs": [], "losses": [], "augs": []}


def test_docs_metrics_has_a_row_for_every_metric() -> None:
    table = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
    assert rows == list(METRIC_NAMES)  # in column order


def test_the_metrics_csv_columns_written_out_in_the_docs_are_a_runs() -> None:
    # README and docs/metrics.md spell out a run's metrics.csv header; a metric added to the registry adds a
    # column there (and to the empty-mask table's header) that the docs must name too.
    header = ",".join(["case", "label", *METRIC_NAMES, "ref_empty", "pred_empty"])
    for path in (ROOT / "README.md", ROOT / "docs" / "metrics.md"):
        spelled = re.findall(r"`(case,label,[\w,]+)`", path.read_text(encoding="utf-8"))
        assert spelled and set(spelled) == {header}, path
    metrics_md = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    empty_table = next(line for line in metrics_md.splitlines() if line.startswith("| case | dice"))
    assert set(re.findall(r"\w+", empty_table)) >= set(METRIC_NAMES)



def test_a_task_file_in_a_folder_named_like_markup_is_shown_as_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # rich read "[red]" in the path as markup: the `from` column lost it (and coloured the rest of it).
    from tests.conftest import write_task_file

    monkeypatch.chdir(tmp_path)  # a short, relative home: its path fits its column
    monkeypatch.setenv("MEDSEG_BENCH_HOME", "h [red]x")
    write_task_file(Path("h [red]x"), "Task93_Mine")
    result = CliRunner().invoke(app, ["list", "tasks"])
    assert result.exit_code == 0, result.output
    assert "h [red]x/tasks/Task93_Mine.yaml" in result.output


def test_a_typo_in_what_to_list_gets_did_you_mean() -> None:
    # typer said "Invalid value for 'what': Value error, 'task' is not one of ..."
    result = CliRunner().invoke(app, ["list", "task"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: unknown list 'task'; did you mean 'tasks'?"
    listed = "tasks, archs, encoders, losses, augs, metrics"
    for args, said in ((["list", "foo"], f"unknown list 'foo'; choose from {listed}"),
                       (["list"], f"say what to list: {listed}")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.output.strip() == f"error: {said}"
