"""A small, fixed results dir of well-formed run folders (what `load_results` reads), for report tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medseg_bench.spec import spec_hash_of
from tests.conftest import dice_means, finished_summary

METRIC_COLUMNS = ["dice", "jaccard", "precision", "recall", "volume_diff", "hd", "hd95", "assd", "nsd"]
# (task, dims, arch, encoder, loss, aug): quality offset, params, train seconds per run, device
CONFIGS = {
    ("Task90_Alpha", "2d", "unet", "resnet18", "dice_ce", "none"): (0.80, 14_300_000, 1800.0, "cuda"),
    ("Task90_Alpha", "3d", "unet", None, "dice_ce", "light"): (0.86, 5_600_000, 5400.0, "cuda"),
    ("Task90_Alpha", "3d", "unet", None, "dice", "none"): (0.84, 5_600_000, 3600.0, "cuda"),
    ("Task91_Beta", "2d", "unet", "resnet18", "dice_ce", "none"): (0.70, 14_300_000, 900.0, "cuda"),
    ("Task91_Beta", "3d", "unet", None, "dice_ce", "light"): (0.66, 5_600_000, 2700.0, "cuda"),
}
LABELS = {"Task90_Alpha": [1, 2], "Task91_Beta": [1]}
RUNS = {"Task90_Alpha": [(0, 0), (1, 0)], "Task91_Beta": [(0, 0), (0, 1)]}  # (fold, seed)
CASES_PER_FOLD = 6


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _metrics_rows(task: str, offset: float, fold: int, seed: int, rng: np.random.Generator) -> list[str]:
    rows = []
    for i in range(CASES_PER_FOLD):
        case = f"case_{fold * CASES_PER_FOLD + i:03d}"
        for label in LABELS[task]:
            dice = float(np.clip(offset + rng.normal(0, 0.05), 0.0, 1.0))
            ref_empty = pred_empty = False
            if task == "Task90_Alpha" and label == 2 and i == 0:
                ref_empty = True
                pred_empty = fold == 0  # both empty in fold 0 (NaN), a false positive in fold 1 (Dice 0)
                dice = float("nan") if pred_empty else 0.0
            jaccard = dice / (2 - dice) if dice == dice else float("nan")
            hd95 = float(1.0 + (1 - dice) * 20 + rng.uniform(0, 1)) if dice == dice else float("nan")
            values = {"dice": dice, "jaccard": jaccard, "precision": dice, "recall": dice,
                      "volume_diff": 1 - dice, "hd": hd95 * 1.5, "hd95": hd95, "assd": hd95 / 4,
                      "nsd": min(1.0, dice + 0.05)}
            cells = [case, str(label)]
            cells += [f"{values[m]:.4f}" if values[m] == values[m] else "" for m in METRIC_COLUMNS]
            rows.append(",".join(cells + [str(ref_empty), str(pred_empty)]))
    return rows


def write_fake_results(root: Path, seed: int = 7) -> Path:
    """Two tasks, five configurations, two runs each (folds or seeds); returns `root`."""
    rng = np.random.default_rng(seed)
    for (task, dims, arch, encoder, loss, aug), (offset, params, train_s, device) in CONFIGS.items():
        for fold, run_seed in RUNS[task]:
            arch_id = f"{arch}.{encoder}" if encoder else arch
            spec = {"task": task, "dims": dims, "arch": arch, "encoder": encoder, "loss": loss, "aug": aug,
                    "fold": fold, "num_folds": 2, "seed": run_seed, "epochs": 4,
                    "pipeline_version": 13}  # fixed: a version bump leaves the golden files as they are
            # the hash a run id ends in (an older version's spec, with fewer keys, keeps its own)
            run_id = f"{dims}-{arch_id}-{loss}-{aug}-f{fold}-s{run_seed}-{spec_hash_of(spec)}"
            folder = root / task / run_id
            _write(folder / "spec.json", json.dumps({"run_id": run_id, **spec}))
            header = ",".join(["case", "label", *METRIC_COLUMNS, "ref_empty", "pred_empty"])
            rows = _metrics_rows(task, offset, fold, run_seed, rng)
            _write(folder / "metrics.csv", "\n".join([header, *rows]) + "\n")
            cost = {"params": params, "train_time_s": train_s + fold * 60, "time_per_epoch_s": train_s / 4,
                    "peak_memory_mb": params / 10_000, "device": device, "epochs_done": 4}
            _write(folder / "summary.json", json.dumps(finished_summary(
                run_id=run_id, cost=cost, num_cases=CASES_PER_FOLD,
                per_label_dice=dice_means(folder),
                metric_settings={"empty_policy": "penalize", "nsd_tolerance_mm": 1.0, "surface": "area"})))
            _write(folder / "env.json", json.dumps({
                "versions": {"medseg-bench": "0.1.0", "torch": "2.4.0"}, "git_revision": "0123abc",
                "python": "3.11.9", "gpu": "NVIDIA A100"}))
            log = ["epoch,step,train_loss,val_dice"]
            for epoch in range(4):
                log.append(f"{epoch},{(epoch + 1) * 10 - 1},,{offset * (1 - 0.5 ** (epoch + 1)):.4f}")
                log.append(f"{epoch},{(epoch + 1) * 10 - 1},{1.2 * 0.6 ** epoch + 0.1 * (1 - offset):.4f},")
            _write(folder / "logs" / "metrics.csv", "\n".join(log) + "\n")
            _write(folder / "status.json", json.dumps({"state": "done"}))
    return root


def respecified(folder: Path, **settings: object) -> Path:
    """A fake run's folder made a run of `settings` (its spec's), as if trained with them: its own run id, in
    its spec.json, its summary.json and its folder's name (renamed; the new folder returned)."""
    spec = {k: v for k, v in json.loads((folder / "spec.json").read_text()).items() if k != "run_id"}
    spec.update(settings)
    run_id = f"{folder.name.rsplit('-', 1)[0]}-{spec_hash_of(spec)}"
    (folder / "spec.json").write_text(json.dumps({"run_id": run_id, **spec}))
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "run_id": run_id}))
    return folder.rename(folder.parent / run_id)


def with_tied_ranking(results: pd.DataFrame) -> pd.DataFrame:
    """`load_results`'s frame of the fake results with the Dice of Task91_Beta's 2D configuration 0.2 lower,
    so that by Dice no task has a tie but the ranking across tasks has one: 3d-unet-dice_ce-light first in
    both tasks (mean rank 1); 3d-unet-dice-none second in Task90_Alpha and not run on Task91_Beta (last
    there, 3), 2d-unet.resnet18-dice_ce-none third in Task90_Alpha and second in Task91_Beta: both 2.5."""
    tied = results.copy()
    tied.loc[(tied["task"] == "Task91_Beta") & (tied["dims"] == "2d"), "dice"] -= 0.2
    return tied


def drop_metric_column(folder: Path, metric: str) -> None:
    """Rewrite a run's metrics.csv without `metric`'s column, as a run scored before the metric existed."""
    path = folder / "metrics.csv"
    lines = path.read_text().splitlines()
    drop = lines[0].split(",").index(metric)
    path.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop)
                              for line in lines) + "\n")
