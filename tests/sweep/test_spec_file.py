"""`sweep/spec_file.py`: sweep files, their values under the flags' overrides, and bad files named."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_bench.errors import UsageError
from medseg_bench.sweep.expand import expand
from medseg_bench.sweep.spec_file import build_request, load_sweep_file

TASK = "Task04_Hippocampus"


REPO = Path(__file__).resolve().parents[2]


def test_sweep_file_values_and_flag_overrides(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"task: {TASK}\ndims: 3d\nloss: [dice_ce, focal]\nseed: [0, 1]\nepochs: 3\n"
                    "max_minutes: 2\npatch_size: [16, 16, 16]\nexclude: [loss=focal]\n")
    values = load_sweep_file(path)
    assert values["losses"] == ["dice_ce", "focal"] and values["seeds"] == [0, 1]
    assert values["patch_size"] == (16, 16, 16) and values["max_minutes"] == 2.0
    request = build_request(values, {"epochs": 5, "seeds": None, "exclude": ["seed=1"]})
    assert request.epochs == 5 and request.seeds == [0, 1]  # a flag wins; an absent flag leaves the file's
    assert request.exclude == ["loss=focal", "seed=1"]  # rules from both
    runs, _ = expand(request)
    assert [(r.loss, r.seed, r.patch_size) for r in runs] == [("dice_ce", 0, (16, 16, 16))]


def test_target_is_an_axis_of_a_sweep_file(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("task: Task01_BrainTumour\ndims: 3d\ntarget: [labels, regions]\n")
    values = load_sweep_file(path)
    assert values["targets"] == ["labels", "regions"]
    runs, _ = expand(build_request(values, {}))
    assert [r.target for r in runs] == ["labels", "regions"]
    assert build_request(values, {"targets": ["regions"]}).targets == ["regions"]  # the flag wins
    path.write_text("task: Task01_BrainTumour\ntarget: 3\n")
    with pytest.raises(UsageError, match="'target' takes str values, not 3"):
        load_sweep_file(path)


@pytest.mark.parametrize(("text", "message"), [
    ("task: T\narchs: [unet]\nepoch: 3\n", "unknown keys archs, epoch; did you mean 'arch' for 'archs', "
                                            "'epochs' for 'epoch' (known: task,"),
    ("task: T\nfolds: [0, 1]\ncolour: red\n", "unknown keys colour, folds; did you mean 'fold' for 'folds' "
                                              "(known:"),
    ("task: T\nepochs: three\n", "'epochs' takes one int"),
    ("task: T\nseed: [0, x]\n", "'seed' takes int values"),
    ("- task\n", "a sweep file is a mapping"),
    # where, not PyYAML's first line alone ("while parsing a flow node"): the line and column
    ("task: [\n", "not valid YAML (line 2, column 1: expected the node content, but found '<stream end>' "
                  "(while parsing a flow node))"),
    ("task: T\nlr: fast\n", "'lr' takes one number, not 'fast'"),
    ("task: T\nclass_weights: [1, x, 2]\n", "'class_weights' takes numbers, one per class, not 'x'"),
    ("task: T\npostprocess: 1\n", "'postprocess' takes true or false, not 1"),
    # YAML keeps the last
    ("task: A\nepochs: 3\ntask: B\n", "not valid YAML (line 3, column 1: key 'task' given twice)"),
    ("\udcff\udcfe task: T\n", "not UTF-8 text"),
    # an empty axis said "the sweep expands to no runs" alone; empty class weights were no weights (another
    # run id), where --class-weights "" is refused; an empty patch size named "--patch-size" with no value
    *[(f"task: T\n{key}: []\n", f"'{key}' is an empty list: give it a value, or leave the key out")
      for key in ("seed", "arch", "loss", "aug", "fold", "dims", "patch_size")],
    ("task: []\n", "'task' is an empty list: give it a value, or leave the key out"),
    ("task: T\nclass_weights: []\n", "'class_weights' is an empty list: give one number per class, or leave "
                                      "the key out"),
])
def test_bad_sweep_files_name_the_file_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(UsageError, match="bad.yaml: ") as info:
        load_sweep_file(path)
    assert message in str(info.value)


def test_a_learning_rate_without_a_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("task: T\nlr: 1e-3\nmax_minutes: '2'\n")  # YAML 1.1 reads 1e-3 as a string
    assert load_sweep_file(path)["lr"] == 0.001 and load_sweep_file(path)["max_minutes"] == 2.0


def test_shipped_sweep_files_parse() -> None:
    quick = load_sweep_file(REPO / "sweeps" / "quick.yaml")
    survey = load_sweep_file(REPO / "sweeps" / "survey.yaml")
    assert quick["tasks"] == survey["tasks"] == [TASK]
    assert set(survey["archs"]) == {"unet", "unetplusplus", "deeplab", "fpn", "dynunet", "segresnet",
                                    "swinunetr"}
    assert survey["losses"] == ["dice_ce", "focal", "tversky"]
    assert survey["augs"] == ["none", "light", "heavy"]


def test_a_bare_name_is_the_package_s_own_sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package has no `sweeps/` folder beside the user: `--config quick` reads its own copy."""
    from medseg_bench.settings import REPO_ROOT
    from medseg_bench.sweep.spec_file import packaged_sweep_files, sweep_file

    assert set(packaged_sweep_files()) == {p.stem for p in (REPO_ROOT / "sweeps").glob("*.yaml")} >= {
        "quick", "survey"}
    monkeypatch.chdir(tmp_path)
    for name in ("quick", "quick.yaml"):
        assert load_sweep_file(Path(name)) == load_sweep_file(REPO_ROOT / "sweeps" / "quick.yaml")
    (tmp_path / "quick.yaml").write_text("epochs: 7\n")  # a file of that name here is the one meant
    assert load_sweep_file(Path("quick.yaml")) == {"epochs": 7}
    assert sweep_file(Path("quick.yaml")) == Path("quick.yaml")
    with pytest.raises(UsageError, match=r"^sweeps/quick.yaml: no such sweep file \(the package's own, by "
                                         r"name: quick, survey; e.g. --config quick\)$"):
        load_sweep_file(Path("sweeps/quick.yaml"))
    with pytest.raises(UsageError, match="^nightly: no such sweep file"):
        load_sweep_file(Path("nightly"))
    (tmp_path / "survey").mkdir()  # a folder of that name (`--results-dir survey`) is no sweep file
    assert sweep_file(Path("survey")) == packaged_sweep_files()["survey"]
    with pytest.raises(UsageError, match=r"^x+: cannot read sweep file \(File name too long\)$"):
        load_sweep_file(Path("x" * 300))  # exit 2, as before: Path.exists raised, exit 7


def test_an_installed_package_reads_its_own_sweep_and_task_folders(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the wheel puts them (`medseg_bench/_sweeps`, `_tasks`), not the checkout's folders."""
    from medseg_bench import settings
    from medseg_bench.sweep.spec_file import packaged_sweep_files

    installed = tmp_path / "site-packages" / "medseg_bench"
    (installed / "_sweeps").mkdir(parents=True)
    (installed / "_tasks").mkdir()
    (installed / "_sweeps" / "nightly.yaml").write_text("epochs: 3\n")
    monkeypatch.setattr(settings, "__file__", str(installed / "settings.py"))
    assert settings.packaged_sweeps_dir() == installed / "_sweeps"
    assert settings.packaged_tasks_dir() == installed / "_tasks"
    monkeypatch.chdir(tmp_path)
    assert packaged_sweep_files() == {"nightly": installed / "_sweeps" / "nightly.yaml"}
    assert load_sweep_file(Path("nightly")) == {"epochs": 3}


def test_the_wheel_ships_the_sweep_files_as_the_task_files() -> None:
    from medseg_bench.settings import REPO_ROOT

    pyproject = (REPO_ROOT / "pyproject.toml").read_text()  # tomllib: Python 3.11 on
    section = pyproject.split("[tool.hatch.build.targets.wheel.force-include]\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == ['"tasks" = "medseg_bench/_tasks"', '"sweeps" = "medseg_bench/_sweeps"']
