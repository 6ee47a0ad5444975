"""Sweep expansion, --exclude rules, sweep files, dry-run states and cost estimates (no training here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medseg_bench.data.io import write_json_atomic
from medseg_bench.errors import UsageError
from medseg_bench.locks import RunLock
from medseg_bench.results import append_event, run_dir, run_state, write_heartbeat, write_status
from medseg_bench.spec import RunSpec
from medseg_bench.sweep.dry_run import dry_run_lines, estimate_seconds
from medseg_bench.sweep.expand import SweepRequest, expand, parse_exclude
from medseg_bench.sweep.spec_file import build_request, load_sweep_file
from tests.conftest import finished_summary

REPO = Path(__file__).resolve().parents[1]
TASK = "Task04_Hippocampus"


def _request(**kw: object) -> SweepRequest:
    return SweepRequest(tasks=[TASK], **kw)  # type: ignore[arg-type]


def test_exclude_removes_exactly_the_matching_combinations(home: Path) -> None:
    full, _ = expand(_request(archs=["unet", "deeplab"], augs=["none", "heavy"], dims=["2d"]))
    kept, notes = expand(_request(archs=["unet", "deeplabv3plus"], augs=["none", "heavy"], dims=["2d"],
                                  exclude=["arch=deeplabv3plus,aug=heavy"]))  # aliases are resolved
    assert len(full) == 4 and len(kept) == 3
    assert not any(s.arch == "deeplab" and s.aug == "heavy" for s in kept)
    assert "1 combination(s) removed by --exclude" in notes


@pytest.mark.parametrize(("rule", "message"), [
    ("arch", "'arch' is not key=value"),
    ("colour=red", "unknown key 'colour'"),
    ("arch=unte", "did you mean 'unet'"),
    ("dims=4d", "unknown dims '4d'"),
    (",", "is empty"),
    ("encoder=resnet81", r"exclude rule 'encoder=resnet81': unknown smp encoder 'resnet81'.*did you mean"),
])
def test_bad_exclude_rules(home: Path, rule: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_exclude(rule)


def test_excluding_everything_is_an_error(home: Path) -> None:
    with pytest.raises(UsageError, match="no runs"):
        expand(_request(dims=["3d"], exclude=["dims=3d"]))


def test_no_runs_says_why(home: Path) -> None:
    with pytest.raises(UsageError, match=r"no runs \(deeplab in 3d: skipped, 'deeplab' has no 3d variant"):
        expand(_request(archs=["deeplab"], dims=["3d"]))


def test_tta_only_for_augmentations_that_mirror(home: Path) -> None:
    # nnU-Net mirrors at inference only along axes it mirrored in training; a net trained without mirroring
    # is no better, often far worse, on mirrored images.
    runs, notes = expand(_request(dims=["3d"], augs=["none", "light"], tta=True))
    assert {r.aug: r.tta for r in runs} == {"none": False, "light": True}
    assert any(n.startswith("--tta with aug none: evaluated without it") for n in notes)
    plain, _ = expand(_request(dims=["3d"], augs=["none"]))
    assert [r.run_id for r in runs if r.aug == "none"] == [r.run_id for r in plain]  # the same run


def test_an_encoder_for_a_3d_only_sweep_is_said_to_be_unused(home: Path) -> None:
    _, notes = expand(_request(dims=["3d"], encoders=["resnet50"]))
    assert "--encoder resnet50: unused, the sweep has no 2D run (3D nets take no encoder)" in notes
    assert not expand(_request(dims=["2d"], encoders=["resnet50"]))[1]


def test_fcn_takes_its_own_encoders_from_a_sweep_that_names_others(home: Path) -> None:
    # fcn has torchvision's ResNet-50/101 backbones: without --encoder it runs its own default, and an encoder
    # axis it cannot take (resnet34, for the smp archs) skips those combinations with a line, not the sweep
    alone, _ = expand(_request(archs=["fcn"]))
    assert [(r.arch, r.encoder) for r in alone] == [("fcn", "resnet50")]
    runs, notes = expand(_request(archs=["fcn", "unet"], dims=["2d"], encoders=["resnet34", "resnet50"]))
    assert sorted((r.arch, r.encoder) for r in runs) == [("fcn", "resnet50"), ("unet", "resnet34"),
                                                         ("unet", "resnet50")]
    assert "fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101" in notes
    # none it can take: skipped too (as deeplab in 3D), once for all tasks; alone, the sweep has no runs
    tasks = [TASK, "Task01_BrainTumour"]
    runs, notes = expand(SweepRequest(tasks=tasks, archs=["unet", "fcn"], dims=["2d"], encoders=["resnet34"]))
    assert {(r.arch, r.encoder) for r in runs} == {("unet", "resnet34")}
    assert notes == ["fcn with --encoder resnet34: skipped, 'fcn' takes resnet50 or resnet101"]
    with pytest.raises(UsageError, match="no runs .fcn with --encoder resnet34: skipped"):
        expand(_request(archs=["fcn"], encoders=["resnet34"]))
    with pytest.raises(UsageError, match="no encoder given"):
        expand(_request(encoders=[]))


def test_a_patch_size_must_fit_every_dims_of_the_sweep(home: Path) -> None:
    # unet runs in 2D and 3D: a 3-sided patch would reach the 2D runs, which fail only once they train.
    with pytest.raises(UsageError, match="--patch-size 32,32,32 has 3 sides, but the sweep has 2d runs"):
        expand(_request(patch_size=(32, 32, 32)))
    runs, _ = expand(_request(patch_size=(32, 32, 32), dims=["3d"]))
    assert [r.patch_size for r in runs] == [(32, 32, 32)]


def test_a_batch_batchnorm_cannot_train_on_is_refused_before_anything_runs(home: Path) -> None:
    # deeplab batch-normalises its pooled image features: a batch of 1 fails at any patch
    with pytest.raises(UsageError, match="arch 'deeplab' .2d. batch-normalises globally pooled features"):
        expand(_request(archs=["unet", "deeplab"], dims=["2d"], batch_size=1))
    # smp's U-Net only at a patch whose 1/32 map is one pixel
    with pytest.raises(UsageError, match="arch 'unet' .2d. at patch 32x32 .* side of at least 64"):
        expand(_request(archs=["unet"], dims=["2d"], batch_size=1, patch_size=(32, 32)))
    runs, _ = expand(_request(archs=["unet"], dims=["2d"], batch_size=1, patch_size=(64, 32)))
    assert [r.batch_size for r in runs] == [1]
    runs, _ = expand(_request(archs=["unet", "segresnet", "pspnet"], batch_size=1))
    assert len(runs) == 4


def test_an_arch_that_cannot_take_a_tasks_channels_is_skipped_for_it(home: Path) -> None:
    from tests.conftest import write_task_file

    write_task_file(home, "TaskRGB", channels=3)
    runs, notes = expand(SweepRequest(tasks=[TASK, "TaskRGB"], archs=["unet", "vnet"], dims=["3d"]))
    assert sorted((r.task, r.arch) for r in runs) == [(TASK, "unet"), (TASK, "vnet"), ("TaskRGB", "unet")]
    assert notes == ["vnet on TaskRGB: skipped, arch 'vnet' (3d) takes 1, 2, 4, 8 or 16 input channels (its "
                     "first layer repeats them to 16), but TaskRGB has 3"]


def test_encoders_are_checked_before_anything_runs(home: Path) -> None:
    with pytest.raises(UsageError, match="unknown smp encoder 'resnet999'; did you mean 'resnet50'"):
        expand(_request(dims=["2d"], encoders=["resnet34", "resnet999"]))
    with pytest.raises(UsageError, match="encoder 'tu-convnxt_tiny'; did you mean 'tu-convnext_tiny'"):
        expand(_request(dims=["2d"], encoders=["tu-convnxt_tiny"]))
    runs, _ = expand(_request(dims=["2d"], encoders=["efficientnet-b0", "tu-convnext_tiny"]))
    assert [r.encoder for r in runs] == ["efficientnet-b0", "tu-convnext_tiny"]
    assert len(expand(_request(dims=["3d"], encoders=["resnet999"]))[0]) == 1  # 3D nets take no encoder


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


@pytest.mark.parametrize(("text", "message"), [
    ("task: T\narchs: [unet]\nepoch: 3\n", "unknown keys archs, epoch (known: task,"),
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


def test_the_default_learning_rate_given_explicitly_is_the_same_run(home: Path) -> None:
    plain, _ = expand(_request(dims=["3d"]))
    explicit, _ = expand(_request(dims=["3d"], lr=3e-3))
    other, _ = expand(_request(dims=["3d"], lr=1e-3))
    assert explicit[0].run_id == plain[0].run_id != other[0].run_id


def test_class_weights_with_the_same_ratios_are_the_same_run(home: Path) -> None:
    # Only the ratios reach the loss, so 1,2,4 and 0.5,1,2 trained the same model twice under two run ids.
    def run(weights: tuple[float, ...]) -> RunSpec:
        return expand(_request(dims=["3d"], class_weights=weights))[0][0]

    assert run((1.0, 2.0, 4.0)).run_id == run((0.5, 1.0, 2.0)).run_id == run((0.3, 0.6, 1.2)).run_id
    assert run((0.5, 1.0, 2.0)).class_weights == (1.0, 2.0, 4.0)
    assert run((0.0, 1.0, 3.0)).class_weights == (0.0, 1.0, 3.0)
    assert run((1.0, 2.0, 4.0)).run_id != run((1.0, 2.0, 3.0)).run_id
    unweighted = expand(_request(dims=["3d"]))[0][0]  # equal weights: the unweighted loss (test_losses)
    assert run((1.0, 1.0, 1.0)) == run((2.5, 2.5, 2.5)) == unweighted


def test_exclude_rules_take_whole_numbers_for_fold_and_seed(home: Path) -> None:
    assert parse_exclude("seed=00,fold=1") == {"seed": "0", "fold": "1"}
    with pytest.raises(UsageError, match="fold takes a whole number, not 'zero'"):
        parse_exclude("fold=zero")
    runs, _ = expand(_request(dims=["3d"], seeds=[0, 1], exclude=["seed=00"]))
    assert [r.seed for r in runs] == [1]
    with pytest.raises(UsageError, match=r"exclude rule 'fold=7': fold 7 does not exist, the sweep has 5 "
                                         r"folds \(0 to 4\)"):
        expand(_request(dims=["3d"], exclude=["fold=7"]))


def test_a_rule_that_removes_nothing_says_so(home: Path) -> None:
    # e.g. a rule for the other dims, or for an encoder the sweep does not use: a line, not silence
    rules = ["encoder=resnet18", "aug=none,dims=3d"]
    runs, notes = expand(_request(archs=["unet"], dims=["2d"], exclude=rules))
    assert len(runs) == 1
    assert notes == [f"exclude rule '{rule}' matches no combination of this sweep: nothing removed by it"
                     for rule in rules]


def test_shipped_sweep_files_parse() -> None:
    quick = load_sweep_file(REPO / "sweeps" / "quick.yaml")
    survey = load_sweep_file(REPO / "sweeps" / "survey.yaml")
    assert quick["tasks"] == survey["tasks"] == [TASK]
    assert set(survey["archs"]) == {"unet", "unetplusplus", "deeplab", "fpn", "dynunet", "segresnet",
                                    "swinunetr"}
    assert survey["losses"] == ["dice_ce", "focal", "tversky"]
    assert survey["augs"] == ["none", "light", "heavy"]


def _spec(seed: int = 0, **kw: object) -> RunSpec:
    return RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none", seed=seed, epochs=4,
                   **kw)  # type: ignore[arg-type]


def _finish(folder: Path, per_epoch_s: float, eval_s: float, spec: RunSpec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1,0.5,False,False\n")
    cost = {"time_per_epoch_s": per_epoch_s, "eval_time_s": eval_s}
    write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id, cost=cost))
    write_status(folder, "done")


def test_run_states(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    assert run_state(folder) == "pending"
    write_status(folder, "running")
    assert run_state(folder) == "pending"  # running, but nobody holds it and no checkpoint: starts over
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert run_state(folder) == "partial"
    with RunLock(folder) as lock:
        assert lock.acquire()
        assert run_state(folder) == "running"
    write_heartbeat(folder)  # a fresh heartbeat from this host without the lock: its process is gone
    assert run_state(folder) == "partial"
    beat = json.loads((folder / "heartbeat.json").read_text())
    write_json_atomic(folder / "heartbeat.json", {**beat, "host": "elsewhere"})
    assert run_state(folder) == "running"  # another host's fresh heartbeat counts
    write_json_atomic(folder / "heartbeat.json", {**beat, "host": "elsewhere", "time": time.time() - 3600})
    assert run_state(folder) == "partial"  # ... a stale one does not
    write_status(folder, "failed", error="boom")
    assert run_state(folder) == "failed"


def test_queued_until_an_attempt_starts(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    write_json_atomic(folder / "queued.json", {"job_id": "7_0", "time": time.time()})
    assert run_state(folder) == "queued"
    time.sleep(0.01)
    append_event(folder, "start")
    assert run_state(folder) == "pending"


def test_dry_run_states_and_cost_estimate(tmp_path: Path) -> None:
    done, partial, pending = _spec(0), _spec(1), _spec(2)
    other_arch = RunSpec(task=TASK, dims="2d", arch="deeplab", loss="dice_ce", aug="none", encoder="resnet18",
                         epochs=10)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=20.0, spec=done)
    ckpt = run_dir(tmp_path, partial) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    seconds, matched = estimate_seconds([partial, pending, other_arch], tmp_path)
    # same (dims, arch): 4 epochs x 30 s + 20 s each; the 2D deeplab run falls back to all runs: 10 x 30 + 20
    assert matched == 2 and seconds == pytest.approx(2 * (4 * 30 + 20) + (10 * 30 + 20))
    capped = estimate_seconds([_spec(3, max_minutes=1.0)], tmp_path)
    assert capped is not None and capped[0] == pytest.approx(60 + 20)
    lines = dry_run_lines([done, partial, pending], tmp_path, tmp_path / "data")
    assert [line.split()[0] for line in lines[:3]] == ["done", "partial", "pending"]
    assert "3 runs: 1 done, 1 partial, 1 pending" in lines
    assert lines[-1].startswith("cost of the 2 runs left: about 5 min on one worker (2 estimated")
    # a sweep stops at a task not fetched before it trains anything: the dry run says so, and how to fetch
    # it into that data dir (the command without --data-dir fetched into the default one)
    assert lines[-2] == (f"{tmp_path / 'data' / TASK}: task not fetched (or incomplete); the sweep would "
                         f"stop: run `medseg-bench fetch {TASK} --data-dir {tmp_path / 'data'}` first")


def test_a_dry_run_reads_each_finished_run_once_and_others_only_for_a_cost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing left to run: only the sweep's own runs are read (a results dir of a thousand other runs was
    read whole to estimate a cost of nothing). Runs left: every finished run is read, each once."""
    from medseg_bench.sweep import dry_run

    specs = [_spec(seed) for seed in range(4)]
    for spec in specs:
        _finish(run_dir(tmp_path, spec), per_epoch_s=30.0, eval_s=20.0, spec=spec)
    reads: list[Path] = []
    real = dry_run.read_finished_run
    monkeypatch.setattr(dry_run, "read_finished_run", lambda folder: reads.append(folder) or real(folder))
    lines = dry_run_lines(specs[:1], tmp_path, tmp_path / "data")
    assert lines[0].startswith("done ") and lines[-1].startswith("cost of the 0 runs left")
    assert reads == [run_dir(tmp_path, specs[0])]
    reads.clear()
    lines = dry_run_lines([specs[0], _spec(9)], tmp_path, tmp_path / "data")
    assert lines[-1].startswith("cost of the 1 run left")
    assert sorted(reads) == sorted(run_dir(tmp_path, spec) for spec in specs)


def test_the_estimate_scales_with_iterations_and_the_work_of_a_step(tmp_path: Path) -> None:
    # The finished run: 50 iterations of batch 2 x 40x56x40 at 30 s per epoch (0.6 s per iteration).
    done = _spec(0)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=0.0, spec=done)
    summary = json.loads((run_dir(tmp_path, done) / "summary.json").read_text())
    summary["plan"].update({"patch_3d": [40, 56, 40], "batch_3d": 2})
    write_json_atomic(run_dir(tmp_path, done) / "summary.json", summary)
    assert estimate_seconds([_spec(1)], tmp_path) == (pytest.approx(4 * 30), 1)
    assert estimate_seconds([_spec(1, iters_per_epoch=500)], tmp_path) == (pytest.approx(4 * 300), 1)
    bigger = _spec(1, batch_size=4, patch_size=(40, 56, 40))  # twice the voxels a step
    assert estimate_seconds([bigger], tmp_path) == (pytest.approx(4 * 60), 1)


def test_the_dry_run_reads_each_finished_run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Once for its state and once more for the cost estimate: every metrics.csv was parsed twice.
    import medseg_bench.results as results
    import medseg_bench.sweep.dry_run as dry_run

    done, damaged, pending = _spec(0), _spec(1), _spec(2)
    for spec in (done, damaged):
        _finish(run_dir(tmp_path, spec), per_epoch_s=30.0, eval_s=20.0, spec=spec)
    (run_dir(tmp_path, damaged) / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1\n")
    reads: list[str] = []
    real = results.read_finished_run

    def counted(folder: Path):  # type: ignore[no-untyped-def]
        reads.append(folder.name)
        return real(folder)

    monkeypatch.setattr(results, "read_finished_run", counted)
    monkeypatch.setattr(dry_run, "read_finished_run", counted)
    lines = dry_run_lines([done, damaged, pending], tmp_path, tmp_path / "data")
    assert [line.split()[0] for line in lines[:3]] == ["done", "damaged", "pending"]
    assert lines[-1].startswith("cost of the 1 run left: about 2 min on one worker (1 estimated")
    assert sorted(reads) == sorted([done.run_id, damaged.run_id])


def test_a_damaged_finished_run_is_no_basis_for_the_estimate(tmp_path: Path) -> None:
    done, damaged = _spec(0), _spec(1)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=20.0, spec=done)
    _finish(run_dir(tmp_path, damaged), per_epoch_s=30.0, eval_s=20.0, spec=damaged)
    write_json_atomic(run_dir(tmp_path, damaged) / "summary.json", {"cost": "zzz"})  # was an AttributeError
    assert estimate_seconds([_spec(2)], tmp_path) == (pytest.approx(4 * 30 + 20), 1)
    assert dry_run_lines([done, damaged], tmp_path, tmp_path / "data")[1].split()[0] == "damaged"
    # metrics.csv cut short: `status` and a sweep call it damaged; the dry run called it done and used it
    _finish(run_dir(tmp_path, damaged), per_epoch_s=300.0, eval_s=20.0, spec=damaged)
    (run_dir(tmp_path, damaged) / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1\n")
    assert estimate_seconds([_spec(2)], tmp_path) == (pytest.approx(4 * 30 + 20), 1)
    assert dry_run_lines([done, damaged], tmp_path, tmp_path / "data")[1].split()[0] == "damaged"


@pytest.mark.parametrize(("edit", "seconds"), [
    ({"iters_per_epoch": "2"}, 4 * 30 + 20), ({"dims": 3}, 4 * 30 + 20),
    ({"patch_size": ["a"]}, 4 * 30 + 20),
])
def test_a_finished_run_whose_spec_was_edited_crashes_no_estimate(tmp_path: Path, edit: dict[str, object],
                                                                  seconds: float) -> None:
    # The dry run's estimate crashed on it (exit 1, a traceback); such a run is damaged (`RunSpec.problem`).
    done, edited = _spec(0), _spec(1)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=20.0, spec=done)
    _finish(run_dir(tmp_path, edited), per_epoch_s=300.0, eval_s=20.0, spec=edited)
    spec_path = run_dir(tmp_path, edited) / "spec.json"
    write_json_atomic(spec_path, json.loads(spec_path.read_text()) | edit)
    assert estimate_seconds([_spec(2)], tmp_path) == (pytest.approx(seconds), 1)


def test_dry_run_lines_show_every_setting_that_tells_two_runs_apart() -> None:
    from medseg_bench.sweep.dry_run import settings_text

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="light", patch_size=(32, 48, 32),
                   class_weights=(1.0, 2.5, 4.0), tta=True, postprocess=True)
    assert settings_text(spec) == ("epochs=10 iters=50 opt=adamw patch_size=32x48x32 class_weights=1,2.5,4 "
                                   "tta postprocess")


def test_dry_run_without_history_says_so(tmp_path: Path) -> None:
    assert dry_run_lines([_spec()], tmp_path, tmp_path / "data")[-1].startswith("cost: no finished runs")


def test_parallel_slots_one_gpu_each_or_cpu_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import subprocess

    import torch

    from medseg_bench.sweep import local

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert local._slots(3) == (2, ["0", "1"])  # never more jobs than GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local._slots(3) == (3, [None, None, None])
    seen: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, env, **kw: seen.append((argv, env)))
    local._start_worker(_spec(), tmp_path / "run", tmp_path, tmp_path / "data", "1", threads=4, workers=0)
    argv, env = seen[0]
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert argv[1:3] == ["-m", "medseg_bench.sweep"] and argv[argv.index("--threads") + 1] == "4"
    assert RunSpec.from_dict(json.loads(argv[argv.index("--spec") + 1])) == _spec()


def test_a_skipped_run_says_when_the_plan_changed_since_it_trained(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medseg_bench.data.plan import preprocessing_of
    from medseg_bench.sweep.worker import plan_changed_since

    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none")
    trained = {"patch_3d": [40, 56, 40], "batch_3d": 2, "target_spacing": [1.0, 1.0, 1.0],
               "normalization": "per_channel", "crop_to_nonzero": True}
    write_json_atomic(tmp_path / "summary.json", {"plan": trained})
    same = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=2, preprocessing=preprocessing_of(trained))
    edited = SimpleNamespace(patch_3d=(32, 48, 32), batch_3d=4, preprocessing=preprocessing_of(trained))
    assert plan_changed_since(spec, same, tmp_path) is None
    assert plan_changed_since(spec, None, tmp_path) is None  # no plan yet: nothing to compare
    assert plan_changed_since(spec, edited, tmp_path) == (
        "trained with patch 40x56x40, batch 2; the plan now says 32x48x32, batch 4: "
        "--patch-size/--batch-size train those as runs of their own")
    fixed = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none", patch_size=(40, 56, 40),
                    batch_size=2)
    assert plan_changed_since(fixed, edited, tmp_path) is None  # its spec fixed both: the plan played no part
    # Another target spacing (another cache): a note whatever the spec fixed, since no flag trains it anew.
    spaced = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=2,
                             preprocessing=preprocessing_of(trained | {"target_spacing": [1.5, 1.5, 1.5]}))
    note = ("trained with target spacing 1x1x1 mm, plan.json now 1.5x1.5x1.5 mm: it keeps its result (the "
            "report shows the two apart); sweep into another --results-dir, or move its folder away, to "
            "train it on the new plan")
    assert plan_changed_since(spec, spaced, tmp_path) == note
    assert plan_changed_since(fixed, spaced, tmp_path) == note
    masked = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=2,
                             preprocessing=preprocessing_of(trained | {"crop_to_nonzero": False}))
    assert plan_changed_since(spec, masked, tmp_path).startswith(
        "trained with crop_to_nonzero other than plan.json's now: it keeps its result")


def test_an_interrupted_run_resumes_only_with_the_setup_it_started_with(tmp_path: Path) -> None:
    # An edited plan.json or splits file once let a resumed run mix two setups under one run id (and score
    # held-out cases it had trained on), and record the new ones as if they had held throughout.
    from types import SimpleNamespace

    from medseg_bench.sweep.worker import setup_problem

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    split = {"train": ["a", "b", "c"], "val": ["d"]}
    plan = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=4, patch_2d=(64, 64), batch_2d=32)
    prepared = SimpleNamespace(plan=plan, splits=[split])
    write_json_atomic(tmp_path / "splits.json", split)
    write_json_atomic(tmp_path / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4})
    assert setup_problem(spec, prepared, tmp_path) is None
    plan.batch_3d = 2
    assert setup_problem(spec, prepared, tmp_path) == (
        f"{tmp_path / 'setup.json'}: the run started with patch 40x56x40, batch 4; plan.json now gives "
        "40x56x40, batch 2: restore plan.json, or delete the run folder to start over")
    assert setup_problem(RunSpec(**{**spec.to_dict(), "batch_size": 4}), prepared, tmp_path) is None
    plan.batch_3d = 4
    prepared.splits = [{"train": ["a", "b", "d"], "val": ["c"]}]
    problem = setup_problem(spec, prepared, tmp_path)
    assert problem is not None and problem.startswith(
        f"{tmp_path / 'splits.json'}: the run started with another split of fold 0 than the task's splits "
        "file gives now (2 held-out cases differ)")
    # plan.json's target spacing edited: the run would go on training, and be scored, on another cache
    from medseg_bench.data.plan import preprocessing_of

    prepared.splits = [split]
    plan.preprocessing = preprocessing_of({"target_spacing": [1.0, 1.0, 1.0], "normalization": "per_channel"})
    write_json_atomic(tmp_path / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4,
                                                "preprocessing": plan.preprocessing})
    assert setup_problem(spec, prepared, tmp_path) is None
    plan.preprocessing = plan.preprocessing | {"target_spacing": [1.5, 1.5, 1.5]}
    assert setup_problem(spec, prepared, tmp_path) == (
        f"{tmp_path / 'setup.json'}: the run started with target spacing 1x1x1 mm, plan.json now 1.5x1.5x1.5 "
        "mm: restore plan.json, or delete the run folder to start over")


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("setup.json", "{", "not valid JSON"),
    ("setup.json", "[]", "not a JSON object"),
    ("setup.json", "{}", 'not an object with "patch_size", a list of positive whole numbers, and '
     '"batch_size", a positive whole number'),
    ("setup.json", '{"patch_size": "40x56x40", "batch_size": 4}', 'not an object with "patch_size"'),
    ("setup.json", '{"patch_size": [40, 56, 40], "batch_size": "4"}', 'not an object with "patch_size"'),
    ("splits.json", "", "not valid JSON"),
    ("splits.json", '{"train": ["a"]}', 'not an object with "train" and "val", each a list of case ids'),
    ("splits.json", '{"train": ["a"], "val": 5}', 'not an object with "train" and "val"'),
])
def test_an_interrupted_run_whose_setup_record_is_damaged_never_resumes_unguarded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str, problem: str) -> None:
    # A setup.json that could not be read counted as none: the run resumed with the plan's new patch and
    # batch, and its summary recorded them as if they had held throughout (a splits.json: another split).
    from types import SimpleNamespace

    import medseg_bench.run as run_module
    from medseg_bench.results import read_events, read_status
    from medseg_bench.sweep import worker

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    split = {"train": ["a", "b", "c"], "val": ["d"]}
    prepared = SimpleNamespace(plan=SimpleNamespace(patch_3d=(32, 48, 32), batch_3d=2), splits=[split])
    folder = run_dir(tmp_path, spec)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")  # interrupted after an epoch: it would resume
    write_json_atomic(folder / "splits.json", split)
    write_json_atomic(folder / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4})
    (folder / name).write_text(text)
    expected = f"{folder / name}: {problem}"
    advice = "resumes only with it: restore the file, or delete the run folder to train from scratch"
    found = worker.setup_problem(spec, prepared, folder)
    assert found is not None and found.startswith(expected) and found.endswith(advice)
    trained: list[RunSpec] = []
    monkeypatch.setattr(worker, "checkpoint_problem", lambda *args: None)
    monkeypatch.setattr(run_module, "execute_run", lambda spec, *rest: trained.append(spec) or {})
    outcome = worker.run_one(spec, prepared, tmp_path)  # type: ignore[arg-type]
    assert outcome.kind == "failed" and outcome.error == found and trained == []
    status = read_status(folder)
    assert status["state"] == "failed" and status["error"] == found
    assert [e["event"] for e in read_events(folder)] == ["failed"]
    assert f"ERROR not resumed: {found}" in (folder / "run.log").read_text()
    assert (folder / name).read_text() == text  # left for the user to restore


def test_a_run_folder_without_a_setup_record_resumes_as_before(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # No setup.json or splits.json (a run from before they were written): nothing holds its resume, as ever.
    from types import SimpleNamespace

    import medseg_bench.run as run_module
    from medseg_bench.sweep import worker

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    prepared = SimpleNamespace(plan=SimpleNamespace(patch_3d=(32, 48, 32), batch_3d=2),
                               splits=[{"train": ["a"], "val": ["b"]}])
    folder = run_dir(tmp_path, spec)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert worker.setup_problem(spec, prepared, folder) is None
    trained: list[RunSpec] = []
    monkeypatch.setattr(worker, "checkpoint_problem", lambda *args: None)
    monkeypatch.setattr(run_module, "execute_run", lambda spec, *rest: trained.append(spec) or {})
    assert worker.run_one(spec, prepared, tmp_path).kind == "done"  # type: ignore[arg-type]
    assert trained == [spec]


def _finished_run(results: Path, spec: RunSpec) -> Path:
    folder = run_dir(results, spec)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1,0.5,False,False\n")
    write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id))
    write_status(folder, "done")
    append_event(folder, "done")
    return folder


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("summary.json", {"per_label_dice": 5}, "'per_label_dice' must be an object, not 5"),
    ("summary.json", {"cost": "zzz"}, "'cost' must be an object, not \"zzz\""),
    ("summary.json", {"num_cases": "1"}, "'num_cases' must be a whole number, not \"1\""),
    ("metrics.csv", None, "dice is 'abc' in row 1, not a number"),
])
def test_a_sweep_names_a_finished_run_with_a_bad_value_and_carries_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: dict[str, object] | None,
        problem: str) -> None:
    # Such a run crashed the sweep (TypeError, AttributeError, or pyarrow's while writing the index), the
    # other runs "not reached"; it is damaged, as a run that lost a file is: named, left out, exit 6.
    import pandas as pd

    from medseg_bench.errors import ResultsError
    from medseg_bench.progress import PlainReporter
    from medseg_bench.results import INDEX_NAME
    from medseg_bench.sweep.local import run_sweep

    results = tmp_path / "results"
    specs = [_spec(seed) for seed in range(3)]
    folders = [_finished_run(results, spec) for spec in specs]
    damaged = folders[1] / name
    if damage is None:
        damaged.write_text("case,label,dice,ref_empty,pred_empty\nc,1,abc,False,False\n")
    else:
        write_json_atomic(damaged, {**json.loads(damaged.read_text()), **damage})
    before = {p.name: p.read_bytes() for p in folders[1].iterdir() if p.is_file()}
    with pytest.raises(ResultsError) as info:
        run_sweep(specs, results, tmp_path / "data", PlainReporter())
    assert str(info.value).startswith(f"{damaged}: {problem}; left as it is, not trained again")
    out, err = capsys.readouterr()
    assert f"{specs[1].run_id}: skipped (finished, but damaged: {damaged}: {problem})" in out
    assert out.count("skipped (already done)") == 2 and "sweep finished: 3 skipped" in out
    assert f"warning: {damaged}: {problem}" in err  # the index leaves it out, and says so
    assert set(pd.read_parquet(results / INDEX_NAME)["run_id"]) == {specs[0].run_id, specs[2].run_id}
    assert {p.name: p.read_bytes() for p in folders[1].iterdir() if p.is_file()} == before


def test_a_sweep_with_a_failed_and_a_damaged_run_names_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Exit 5 named the failed run; the damaged one's "restore the file ..." line was never printed.
    from types import SimpleNamespace

    from medseg_bench.errors import RunError
    from medseg_bench.progress import PlainReporter
    from medseg_bench.sweep import local
    from medseg_bench.sweep.worker import Outcome

    results = tmp_path / "results"
    damaged, failing = _spec(0), _spec(1)
    (_finished_run(results, damaged) / "metrics.csv").unlink()
    monkeypatch.setattr(local, "_prepare", lambda data_dir, reporter, prepared, spec: prepared.setdefault(
        local._key(spec), SimpleNamespace()))
    monkeypatch.setattr(local, "check_runs", lambda runs, prepared_for: None)
    monkeypatch.setattr(local, "run_one", lambda spec, *args, **kwargs: Outcome("failed", error="boom"))
    with pytest.raises(RunError, match=f"1 of 2 runs failed: {failing.run_id}"):
        local.run_sweep([damaged, failing], results, tmp_path / "data", PlainReporter())
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {run_dir(results, damaged) / 'metrics.csv'}: ")
    assert "; left as it is, not trained again: restore the file" in err


def test_a_resumed_workers_display_ignores_the_earlier_attempts_heartbeat(tmp_path: Path) -> None:
    # With --jobs, a resumed run showed "epoch 1/3 loss ..." of its previous attempt from the old heartbeat.
    from types import SimpleNamespace

    from medseg_bench.sweep.local import _forward_epochs, _Job

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=3)
    folder = run_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    write_heartbeat(folder, epoch=1, epochs=3, loss=1.9, val_dice=0.1)  # the killed attempt's last beat
    seen: list[int] = []
    reporter = SimpleNamespace(epoch_end=lambda run_id, epoch, *rest: seen.append(epoch))
    job = _Job(spec, process=None, started=time.time() + 1)  # type: ignore[arg-type]
    _forward_epochs(job, tmp_path, reporter)  # type: ignore[arg-type]
    assert seen == []
    job.started = time.time() - 1
    write_heartbeat(folder, epoch=2, epochs=3, loss=1.2, val_dice=0.3)
    _forward_epochs(job, tmp_path, reporter)  # type: ignore[arg-type]
    assert seen == [2]


def test_an_attempt_that_starts_over_records_its_own_setup(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # setup.json kept the first attempt's batch after a restart from scratch (no checkpoint yet) with a new
    # plan, so the restarted run's next resume was refused, and restoring the old plan let a mix through.
    from types import SimpleNamespace

    import medseg_bench.run as run_module

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(run_module, "train", stopped)
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    plan = SimpleNamespace(patch_3d=(32, 32, 32), batch_3d=4, preprocessing={"target_spacing": [1, 1, 1]})
    prepared = SimpleNamespace(plan=plan, splits=[{"train": ["a"], "val": ["b"]}],
                               cache_for=lambda own_slices: tmp_path / "cache")  # no entries: no orientation
    for batch in (4, 2):  # a first attempt, then one from scratch after a plan edit
        plan.batch_3d = batch
        with pytest.raises(KeyboardInterrupt):
            run_module.execute_run(spec, prepared, tmp_path)  # type: ignore[arg-type]
        setup = json.loads((tmp_path / "setup.json").read_text())
        assert setup["batch_size"] == batch and setup["preprocessing"] == {"target_spacing": [1, 1, 1]}
        assert setup["orientation"] is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # now it resumes: held to batch 2
    plan.batch_3d = 4
    with pytest.raises(KeyboardInterrupt):
        run_module.execute_run(spec, prepared, tmp_path)  # type: ignore[arg-type]
    assert json.loads((tmp_path / "setup.json").read_text())["batch_size"] == 2


def test_dry_run_leaves_damaged_runs_out_of_the_work_left(tmp_path: Path) -> None:
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    folder = run_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "summary.json", {"cost": {}})
    append_event(folder, "done")  # finished, then its status.json was lost: never trained again
    lines = dry_run_lines([spec], tmp_path, tmp_path / "data")
    assert lines[0].startswith("damaged  T/") and lines[1] == "1 runs: 1 damaged"
    assert lines[-1].startswith("cost of the 0 runs left")


def test_a_2d_run_of_pipeline_version_3_keeps_slicing_the_first_axis() -> None:
    # Trained on slices along axis 0 whatever the spacing; predict and rescoring must give it the same.
    from types import SimpleNamespace

    from medseg_bench.training import run_slice_axis

    prepared = SimpleNamespace(plan=SimpleNamespace(target_spacing=(0.8, 0.8, 4.0)))
    spec = RunSpec(task="T", dims="2d", arch="unet", loss="dice_ce", aug="none")
    assert run_slice_axis(spec, prepared.plan.target_spacing) == 2
    old = RunSpec(**{**spec.to_dict(), "pipeline_version": 3})
    assert run_slice_axis(old, prepared.plan.target_spacing) == 0


@pytest.mark.parametrize(("dims", "own_slices"), [("2d", True), ("3d", False)])
def test_a_worker_and_a_slurm_job_prepare_the_cache_their_run_reads(
        dims: str, own_slices: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started by `--jobs` and a SLURM job each prepare the task themselves: a 2D run of version 11
    asks for the cache that keeps each case's slices (`<hash>-2d/` where it differs), a 3D run does not."""
    from types import SimpleNamespace

    import submitit

    from medseg_bench.errors import DataError
    from medseg_bench.sweep import local, worker
    from medseg_bench.sweep.slurm import SlurmRun

    asked: list[bool] = []

    def prepare_locked(task: str, data_dir: Path, num_folds: int, progress: bool = False,
                       own_slices: bool = False) -> None:
        asked.append(own_slices)
        raise DataError("prepared far enough")

    monkeypatch.setattr(local, "prepare_locked", prepare_locked)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7"))
    spec = RunSpec(task=TASK, dims=dims, arch="unet", loss="dice_ce", aug="none",
                   encoder="resnet18" if dims == "2d" else None)
    assert spec.own_slice_spacing is own_slices
    argv = ["--spec", json.dumps(spec.to_dict()), "--results-dir", str(tmp_path), "--data-dir", str(tmp_path)]
    assert worker.main(argv) == worker.EXIT_FAILED
    with pytest.raises(DataError, match="prepared far enough"):
        SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)()
    assert asked == [own_slices, own_slices]


@pytest.mark.parametrize("requeue_fails", [False, True])
def test_slurm_warning_signal_records_interrupted_before_the_job_is_requeued(
        requeue_fails: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM's warning signal (USR2) stops the run as Ctrl-C does; submitit's handler (checkpoint, `scontrol
    requeue`, which has SLURM kill the job KillWait seconds later) runs only once the run has recorded
    `interrupted`. A requeue that fails leaves the run interrupted, not failed: the next sweep resubmits
    it."""
    import os
    import signal
    from types import SimpleNamespace

    import submitit

    import medseg_bench.run
    from medseg_bench.results import read_events
    from medseg_bench.sweep import local
    from medseg_bench.sweep.slurm import SlurmRun

    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none")
    folder = run_dir(tmp_path, spec)
    seen_by_submitit: list[list[str]] = []

    def submitit_handler(signum: int, frame: object) -> None:
        seen_by_submitit.append([e["event"] for e in read_events(folder)])
        if requeue_fails:
            raise submitit.core.utils.UncompletedJobError("Job not requeued: timed-out too many times.")
        raise SystemExit(-1)

    def execute_run(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption
        time.sleep(5)
        raise AssertionError("the warning signal did not stop the run")

    monkeypatch.setattr(local, "prepare_locked", lambda *a, **k: SimpleNamespace(plan=None))
    monkeypatch.setattr(medseg_bench.run, "execute_run", execute_run)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7"))
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(submitit.core.utils.UncompletedJobError if requeue_fails else SystemExit):
            SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)()
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen_by_submitit == [["start", "interrupted"]]
    events = read_events(folder)
    assert events[-1]["reason"] == "SIGUSR2" and events[0]["job_id"] == "7"
    assert run_state(folder) == "pending"  # not failed (this stand-in run wrote no checkpoint)


@pytest.mark.parametrize("when", ["preparing", "training"])
def test_slurm_sigterm_stops_the_job_at_once(when: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (scancel; a preemption without the warning signal; the end of the time limit) stops the job as
    Ctrl-C does, wherever it is: submitit only logs it ('Bypassing signal SIGTERM'), so a job preparing the
    task ran on until SLURM's SIGKILL, and its run was left 'running' for the heartbeat to expire. The
    warning signal's handler (a requeue) is not called: SLURM requeues a preempted job itself."""
    import os
    import signal
    from types import SimpleNamespace

    import submitit

    import medseg_bench.run
    from medseg_bench.results import read_events
    from medseg_bench.sweep import local
    from medseg_bench.sweep.slurm import SlurmRun

    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none")
    folder = run_dir(tmp_path, spec)
    called: list[int] = []

    def terminated(*args: object, **kwargs: object) -> SimpleNamespace:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the job")

    if when == "preparing":
        monkeypatch.setattr(local, "prepare_locked", terminated)
    else:
        monkeypatch.setattr(local, "prepare_locked", lambda *a, **k: SimpleNamespace(plan=None))
        monkeypatch.setattr(medseg_bench.run, "execute_run", terminated)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7"))

    def bypass(signum: int, frame: object) -> None:  # submitit's SIGTERM handler; its USR2 one, the same
        called.append(signum)

    requeue = bypass
    previous = signal.signal(signal.SIGTERM, bypass), signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)()
        assert signal.getsignal(signal.SIGTERM) is bypass and signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGUSR2, previous[1])
    assert called == []
    events = read_events(folder)
    if when == "preparing":
        assert events == [] and run_state(folder) == "pending"
    else:
        assert [e["event"] for e in events] == ["start", "interrupted"] and events[-1]["reason"] == "SIGTERM"
        assert run_state(folder) == "pending"
