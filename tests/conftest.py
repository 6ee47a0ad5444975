"""Shared fixtures: an isolated MEDSEG_BENCH_HOME, small real Hippocampus tasks, synthetic MSD tasks."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SHARED_TASK = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"


@pytest.fixture(autouse=True)
def small_intensity_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint's foreground sample at 40,000 voxels per dataset, not nnU-Net's 10^8 (about 3 s per
    channel per fingerprint): tiny test cases need no more. Commands run in a subprocess draw the full
    sample."""
    monkeypatch.setattr("medseg_bench.data.fingerprint.FOREGROUND_VOXELS_FOR_STATS", 40_000)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MEDSEG_BENCH_HOME for the test."""
    path = tmp_path / "home"
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(path))
    monkeypatch.delenv("MEDSEG_BENCH_MIRROR", raising=False)
    return path


@pytest.fixture
def softmax_only_loss(monkeypatch: pytest.MonkeyPatch) -> str:
    """A loss registered for this test only, with no region form: every real loss has one, so this keeps
    the refusal of `target: regions` for a loss without one tested (`losses.region_loss_problem`)."""
    from medseg_bench.losses import LOSSES, dice_ce

    def softmax_only(num_classes: int, class_weights: tuple[float, ...] | None = None) -> object:
        """A softmax-only loss (a test's)."""
        return dice_ce(num_classes, class_weights)

    monkeypatch.setattr(LOSSES, "_items", {**LOSSES._items, "softmax_only": softmax_only})
    return "softmax_only"


@pytest.fixture(scope="session")
def shared_task() -> Path:
    if not (SHARED_TASK / "dataset.json").is_file():
        pytest.skip("../shared/data/Task04_Hippocampus is not available")
    return SHARED_TASK


def copy_subset(source: Path, dest: Path, num_cases: int) -> Path:
    """An MSD folder with the first `num_cases` training cases of `source` (dataset.json rewritten)."""
    meta = json.loads((source / "dataset.json").read_text())
    meta["training"] = meta["training"][:num_cases]
    meta["numTraining"] = num_cases
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for entry in meta["training"]:
        for key in ("image", "label"):
            shutil.copy(source / entry[key], dest / entry[key])
    (dest / "dataset.json").write_text(json.dumps(meta, indent=2))
    return dest


@pytest.fixture
def hippo_subset(shared_task: Path, tmp_path: Path) -> Path:
    """Ten real Hippocampus cases in MSD layout."""
    return copy_subset(shared_task, tmp_path / "src" / "Task04_Hippocampus", 10)


def write_image(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
                vector_4d: bool = False) -> None:
    """Write a (Z, Y, X) array, or a (C, Z, Y, X) array as a 4D NIfTI (channel = last image axis)."""
    import SimpleITK as sitk

    if array.ndim == 4:
        image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in array])
        image.SetSpacing((*spacing, 1.0))
    else:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def make_synthetic_task(folder: Path, num_cases: int = 6, channels: int = 1, ct: bool = False,
                        shape: tuple[int, int, int] = (12, 20, 20), seed: int = 0,
                        labels: dict[str, str] | None = None) -> Path:
    """A tiny MSD-layout task: a bright box (label 1) with a core (label 2) in noise; 4D when channels > 1."""
    rng = np.random.default_rng(seed)
    labels = labels or {"0": "background", "1": "outer", "2": "core"}
    training = []
    for i in range(num_cases):
        seg = np.zeros(shape, np.uint8)
        z0, y0, x0 = (int(rng.integers(1, s // 3)) for s in shape)
        seg[z0:z0 + shape[0] // 2, y0:y0 + shape[1] // 2, x0:x0 + shape[2] // 2] = 1
        seg[z0 + 1:z0 + shape[0] // 2 - 1, y0 + 2:y0 + shape[1] // 2 - 2, x0 + 2:x0 + shape[2] // 2 - 2] = 2
        base = rng.normal(0, 1, (channels, *shape)).astype(np.float32) + seg[None] * 2.0
        if ct:
            base = (base * 200 - 500).astype(np.int16)
        name = f"case_{i:03d}.nii.gz"
        write_image(folder / "imagesTr" / name, base if channels > 1 else base[0])
        write_image(folder / "labelsTr" / name, seg)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": folder.name, "tensorImageSize": "4D" if channels > 1 else "3D",
        "modality": {str(c): ("CT" if ct else f"MR{c}") for c in range(channels)},
        "labels": labels, "numTraining": num_cases, "numTest": 0, "training": training, "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def write_task_file(home: Path, name: str, channels: int = 1, ct: bool = False, **extra: object) -> Path:
    """Declare a custom task in $MEDSEG_BENCH_HOME/tasks/<name>.yaml."""
    import yaml

    data = {"name": name, "imaging": "CT" if ct else "MRI",
            "modalities": ["CT"] if ct else [f"MR{c}" for c in range(channels)],
            "labels": {0: "background", 1: "outer", 2: "core"},
            "tensor_image_size": "4D" if channels > 1 else "3D", **extra}
    path = home / "tasks" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


TINY_SWEEP = ["--task", "Task04_Hippocampus", "--dims", "3d", "--arch", "unet", "--loss", "dice_ce",
              "--aug", "none", "--epochs", "2", "--iters-per-epoch", "2", "--batch-size", "2"]


def finished_summary(**fields: object) -> dict[str, object]:
    """A summary.json with every field each version of run.py wrote (`finished.SUMMARY_ALWAYS_WRITTEN`), for
    hand-made finished runs: `fields` replace the defaults, except that an object for `cost` or `plan` updates
    theirs (`cost={"params": 5}` keeps the other costs)."""
    summary: dict[str, object] = {
        "run_id": "hand-made", "mean": {"dice": 0.5}, "per_label_dice": {"1": 0.5}, "num_cases": 1,
        "metric_settings": {},
        "cost": {"params": 1000, "train_time_s": 60.0, "eval_time_s": 1.0, "epochs_done": 1,
                 "time_per_epoch_s": 60.0, "peak_memory_mb": None, "device": "cpu"},
        "plan": {"patch_3d": [16, 16, 16], "batch_3d": 2, "patch_2d": [16, 16], "batch_2d": 2},
    }
    for key, value in fields.items():
        default = summary.get(key)
        merge = key in ("cost", "plan") and isinstance(value, dict) and isinstance(default, dict)
        summary[key] = {**default, **value} if merge else value  # type: ignore[dict-item]
    return summary


def dice_means(folder: Path) -> dict[str, float]:
    """summary.json's `per_label_dice` as run.py writes it from the scores in `folder`'s metrics.csv (each
    label's mean Dice), which `finished.read_finished_run` holds it to."""
    import pandas as pd

    frame = pd.read_csv(folder / "metrics.csv", dtype={"label": str, "dice": str}, keep_default_na=False)
    dice = pd.to_numeric(frame["dice"], errors="coerce")  # an empty cell, or text: none
    return {str(label): float(mean) for label, mean in dice.groupby(frame["label"]).mean().items()}


def fake_finished_run(results: Path, seed: int, task: str = "T") -> None:
    """A finished run of `task` (two cases, label 1; Dice 0.5 and seed / 10) under `results`, as run.py leaves
    it."""
    import pandas as pd

    from medseg_bench.files import write_json_atomic
    from medseg_bench.run_folder import append_event, write_status
    from medseg_bench.spec import RunSpec

    spec = RunSpec(task=task, dims="3d", arch="unet", loss="dice_ce", aug="none", seed=seed)
    folder = results / task / spec.run_id
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    frame = pd.DataFrame({"case": ["a", "b"], "label": [1, 1], "dice": [0.5, seed / 10], "ref_empty": False,
                          "pred_empty": False})
    frame.to_csv(folder / "metrics.csv", index=False)
    write_json_atomic(folder / "summary.json", finished_summary(
        run_id=spec.run_id, num_cases=2, per_label_dice=dice_means(folder)))
    write_status(folder, "done")
    append_event(folder, "done")


def fetch_subset(shared_task: Path, tmp_path: Path, num_cases: int = 6) -> Path:
    """Fetch the first `num_cases` real Hippocampus cases into $MEDSEG_BENCH_HOME (use the `home` fixture)."""
    from typer.testing import CliRunner

    from medseg_bench.cli.app import app

    src = copy_subset(shared_task, tmp_path / "src" / "Task04_Hippocampus", num_cases)
    result = CliRunner().invoke(app, ["fetch", "Task04_Hippocampus", "--source", str(src)])
    assert result.exit_code == 0, result.output
    return src


def make_anisotropic_ct_task(folder: Path, num_cases: int = 4, shape: tuple[int, int, int] = (8, 40, 40),
                             z_spacings: tuple[float, ...] = (4.0, 2.0, 5.0, 3.0), in_plane_mm: float = 0.8,
                             margin: int = 4, seed: int = 0) -> Path:
    """A tiny CT-like MSD task with thick slices (case i has slice spacing `z_spacings[i % len]`): a
    HU-valued body (an ellipsoid, label 1, core label 2) inside a zero border of `margin` voxels in-plane
    (what cropping to the non-zero region removes)."""
    rng = np.random.default_rng(seed)
    training = []
    z, y, x = np.indices(shape, dtype=np.float32)
    for i in range(num_cases):
        cy, cx = shape[1] / 2 + rng.uniform(-3, 3), shape[2] / 2 + rng.uniform(-3, 3)
        radius = 0.25 * min(shape[1:]) + rng.uniform(0, 2)
        inplane = ((y - cy) ** 2 + (x - cx) ** 2) / radius**2
        axial = ((z - (shape[0] - 1) / 2) / (shape[0] / 2.5)) ** 2
        seg = np.zeros(shape, np.uint8)
        seg[inplane + axial <= 1] = 1
        seg[inplane * 4 + axial <= 1] = 2
        image = rng.normal(-50, 20, shape) + 100.0 * seg
        image = image.astype(np.int16)
        image[:, :margin] = image[:, -margin:] = image[:, :, :margin] = image[:, :, -margin:] = 0
        name = f"ct_{i:03d}.nii.gz"
        spacing_xyz = (in_plane_mm, in_plane_mm, z_spacings[i % len(z_spacings)])
        write_image(folder / "imagesTr" / name, image, spacing=spacing_xyz)
        write_image(folder / "labelsTr" / name, seg, spacing=spacing_xyz)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": folder.name, "tensorImageSize": "3D", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "outer", "2": "core"}, "numTraining": num_cases, "numTest": 0,
            "training": training, "test": []}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """A server that accepts the request and then sends nothing until the test ends."""
    release = threading.Event()

    class Hang(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            release.wait(30)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    release.set()
    httpd.shutdown()
    httpd.server_close()


def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str] | None) -> None:
    """An `squeue` first on PATH that prints `lines` (its `%i|%T|%r` rows), or, for None, fails as squeue does
    when the controller does not answer."""
    bin_dir = tmp_path / "squeue-bin"
    bin_dir.mkdir(exist_ok=True)
    if lines is None:
        body = ("echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2\n"
                "exit 1\n")
    else:
        (bin_dir / "answer").write_text("".join(f"{line}\n" for line in lines))
        body = f"cat '{bin_dir / 'answer'}'\n"
    (bin_dir / "squeue").write_text("#!/bin/sh\n" + body)
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def save_cut_by_signal(signum: int = 15, at_write: int = 3) -> None:
    """`torch.save` into memory (as Lightning saves a checkpoint) with `signum` sent to this process at its
    `at_write`-th write: the KeyboardInterrupt the handler raises inside the write makes torch's zip writer
    raise RuntimeError ("unexpected pos ... vs ...") from its clean-up, in the interrupt's place."""
    import io
    import signal
    import time

    import torch

    class CutWrite(io.BytesIO):
        writes = 0

        def write(self, data: object) -> int:
            self.writes += 1
            if self.writes == at_write:
                os.kill(os.getpid(), signum)
                time.sleep(1)  # the handler runs here
            return super().write(data)  # type: ignore[arg-type]

    torch.save({"weight": torch.zeros(1000)}, CutWrite())
    raise AssertionError(f"{signal.Signals(signum).name} did not stop torch.save")


def postprocessing_decision(foreground: bool, applied: dict[int, bool], cases: int = 4) -> object:
    """An nnU-Net v2 postprocessing decision (postprocess.Decision) over the labels of `applied`, its records
    consistent with it: the foreground step where `foreground`, then each label whose value is True."""
    from medseg_bench.postprocess import Candidate, Decision, Mean, Step, Trial, candidate_steps

    def mean(dice: float) -> Mean:
        return Mean(dice, cases)

    candidates = []
    for step in candidate_steps(list(applied)):
        own = mean(0.7 if applied[int(step.name)] else 0.3)
        scores = {"raw": mean(0.5), "foreground": mean(0.6 if foreground else 0.4), "own": own,
                  "foreground_own": own}
        trial = Trial(scores["foreground" if foreground else "raw"], own) if len(applied) > 1 else None
        candidates.append(Candidate(step, scores, trial))
    return Decision.of(Step("foreground", "foreground", tuple(applied)), candidates)


def stand_in_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int = 2) -> object:
    """A prepared task for `run.execute_run` where a test replaces training: a plan without preprocessing
    fields, a cache without entries, one training and one held-out case, a (32, 48, 32) patch and `batch`,
    every image stored RAS, labels 0 and 1."""
    from types import SimpleNamespace

    import medseg_bench.run as run_module

    monkeypatch.setattr(run_module, "resolve_patch_and_batch", lambda *args: ((32, 48, 32), batch))
    monkeypatch.setattr(run_module, "stored_orientation", lambda *args: "RAS")
    return SimpleNamespace(plan=SimpleNamespace(preprocessing={}),
                           cache_for=lambda own_slices: tmp_path / "cache",
                           splits=[{"train": ["a"], "val": ["b"]}],
                           task=SimpleNamespace(labels={0: "background", 1: "a"}))
