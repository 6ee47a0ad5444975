"""Time-to-quality of nnU-Net v2 on CPU: validation Dice after N minutes of `nnUNetv2_train -device cpu`.

The nnU-Net counterpart of `bench/train.py --minutes` (issue #9): Task04_Hippocampus, medseg-bench's fold 0
(the same training and validation cases, written as nnU-Net's `splits_final.json`), scored with medseg-bench's
evaluator (mean foreground Dice: nanmean of Dice over the validation cases and labels 1, 2).

nnU-Net runs as users run it: `nnUNetv2_plan_and_preprocess`, then `nnUNetv2_train DATASET CONFIG 0 -device
cpu` with nnU-Net's default trainer (1000-epoch poly learning-rate schedule, 250 training + 50 validation
iterations per epoch, its augmentation, patch and batch from its plans). The only change is a generated
subclass `nnUNetTrainer_TimeBudget` (written into the nnU-Net venv's nnunetv2/training/nnUNetTrainer/variants/
folder at run time: a bench helper, not part of medseg-bench) that, at each epoch end, saves the weights when
the wall time since `on_train_start` (data-loader start-up included) first passes each budget, stops after the
largest budget, and skips nnU-Net's final validation (each snapshot is predicted below instead). A budget
passed in the middle of an epoch is snapshotted at the end of that epoch; the table gives the actual minutes.

Each snapshot predicts the validation cases with `nnUNetv2_predict ... -chk SNAPSHOT -device cpu` and
nnU-Net's default inference (mirroring test-time augmentation, tile step 0.5); its wall time is reported.

Data-augmentation workers: nnUNet_n_proc_DA=1 by default (one background worker for the training batches and
one for the validation batches, next to the training process that uses all cores through torch): on 2 cores,
more workers only compete with the network for the CPU; 0 would run augmentation serially in the training
process.

Probe mode (--probe-steps N): when no epoch fits in the budgets, training to them yields nothing to score (on
a 2-core CPU one default epoch of the 200-case plans takes about half an hour: 27 min (2d) and 29 min
(3d_fullres) projected in bench/results/nnunet_quality.md). The probe measures that instead: the same
conversion, plan/preprocess and split, then per configuration a generated subclass `nnUNetTrainer_Probe` with
nnU-Net's default plan (patch, batch, augmentation, network) runs one epoch of N training and max(1, N // 5)
validation iterations, timing each iteration (data-loader wait included; the first training iteration is
warm-up and excluded when N > 1) into probe_times.json in the fold folder. The script projects nnU-Net's
default epoch (the installed trainer's 250 training + 50 validation iterations) and the wall time of its first
epoch end (its first checkpoint, counted from on_train_start as the snapshots are) and reports, per budget,
how many epochs could have finished. Nothing is predicted or scored.

Usage:
    .venv/bin/python bench/nnunet_quality.py --minutes 5,10,15 [--configs 2d,3d_fullres] [--cases 200]
        [--workdir DIR] [--n-proc-da 1] [--output FILE]
    .venv/bin/python bench/nnunet_quality.py --probe-steps 10 [--minutes 5,10,15] [...same options]

Prints a markdown table and writes bench/results/nnunet_quality.md (atomically; --output to write elsewhere).
nnunetv2 is installed into /tmp/nnunet-venv if missing (see bench/preprocess.py). Long: about the largest
budget per configuration (at least one epoch), plus preprocessing, start-up and one prediction of the
validation cases per snapshot; the probe takes preprocessing plus, per configuration, start-up and
N + max(1, N // 5) iterations.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # medseg_bench from a checkout without installing
sys.path.insert(0, str(BENCH))  # the other bench scripts, reused below

from preprocess import DATASET_ID, NNUNET_VENV, ensure_nnunet, to_nnunet_raw  # noqa: E402
from train import SHARED, TASK, prepare  # noqa: E402

from medseg_bench.provenance import cpu_model  # noqa: E402

CONFIGS = ("2d", "3d_fullres")
REAL_MINUTES = "5,10,15"
TRAINER = "nnUNetTrainer_TimeBudget"
BUDGET_ENV = "MEDSEG_NNUNET_BUDGETS"
BUDGET_LOG = "time_budget.json"
# nnU-Net's training output lines worth echoing while it runs (it logs ~8 lines per epoch).
TRAIN_ECHO = re.compile(r"Epoch \d+$|Epoch time|Pseudo dice|time budget|Training done")


def _trainer_tail(log_attr: str, log_file: str, skipped: str) -> str:
    """Methods both generated trainers end with: skip nnU-Net's final validation, write the JSON log."""
    return f'''
    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("{skipped}")

    def write_log(self):
        path = join(self.output_folder, "{log_file}")
        with open(path + ".tmp", "w") as f:
            json.dump(self.{log_attr}, f, indent=2)
        os.replace(path + ".tmp", path)
'''


TRAINER_SOURCE = f'''"""Generated by medseg-bench bench/nnunet_quality.py (overwritten on each run).

Not part of nnU-Net: nnU-Net's default trainer, unchanged (1000-epoch poly schedule, 250 iterations per
epoch, its augmentation, patch and batch), plus wall-clock snapshots: at each epoch end, when the wall time
since on_train_start first passes a budget (minutes, comma-separated in ${BUDGET_ENV}), the weights are saved
as checkpoint_at_<budget>min.pth in the fold folder; after the largest budget training stops
(checkpoint_final.pth is written as usual). nnU-Net's final validation is skipped: the caller predicts each
snapshot itself. Progress goes to {BUDGET_LOG} in the fold folder.
"""

import json
import os
import time
from os.path import join

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class BudgetReached(Exception):
    """Raised at the end of the epoch that passes the largest budget."""


class {TRAINER}(nnUNetTrainer):
    def on_train_start(self):
        self.budget_start = time.perf_counter()
        self.budgets = sorted(float(m) for m in os.environ["{BUDGET_ENV}"].split(","))
        self.budget_log = {{
            "budgets_min": self.budgets,
            "num_epochs": self.num_epochs,
            "num_iterations_per_epoch": self.num_iterations_per_epoch,
            "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "snapshots": [],
            "epoch_s": [],
        }}
        super().on_train_start()
        self.budget_log["setup_s"] = time.perf_counter() - self.budget_start
        self.budget_log["batch_size"] = int(self.batch_size)
        self.budget_log["patch_size"] = [int(p) for p in self.configuration_manager.patch_size]
        self.write_log()

    def on_epoch_start(self):
        self.budget_epoch_start = time.perf_counter()
        super().on_epoch_start()

    def on_epoch_end(self):
        super().on_epoch_end()  # nnU-Net's logging, checkpoint_best, progress plot; then current_epoch += 1
        now = time.perf_counter()
        self.budget_log["epoch_s"].append(now - self.budget_epoch_start)
        minutes = (now - self.budget_start) / 60
        taken = {{s["budget_min"] for s in self.budget_log["snapshots"]}}
        name = None
        for budget in self.budgets:
            if budget in taken or minutes < budget:
                continue
            if name is None:  # budgets passed in the same epoch share one snapshot
                name = f"checkpoint_at_{{budget:g}}min.pth"
                self.current_epoch -= 1  # as on_train_end: save_checkpoint stores current_epoch + 1
                self.save_checkpoint(join(self.output_folder, name))
                self.current_epoch += 1
            self.budget_log["snapshots"].append(
                {{"budget_min": budget, "checkpoint": name, "minutes": minutes, "epochs": self.current_epoch}}
            )
            self.print_to_log_file(
                f"time budget {{budget:g}} min passed at {{minutes:.2f}} min after {{self.current_epoch}} "
                f"epochs: snapshot {{name}}"
            )
        self.write_log()
        if len(self.budget_log["snapshots"]) == len(self.budgets):
            raise BudgetReached

    def run_training(self):
        try:
            super().run_training()
        except BudgetReached:
            self.on_train_end()  # checkpoint_final.pth, data-loader shutdown, as after the last epoch
''' + _trainer_tail(
    "budget_log", BUDGET_LOG, "final validation skipped (the benchmark predicts each snapshot itself)"
)

PROBE_TRAINER = "nnUNetTrainer_Probe"
PROBE_ENV = "MEDSEG_NNUNET_PROBE_STEPS"
PROBE_LOG = "probe_times.json"
PROBE_ECHO = re.compile(r"Epoch \d+$|Epoch time|probe:|Training done")

PROBE_TRAINER_SOURCE = f'''"""Written by medseg-bench bench/nnunet_quality.py --probe-steps at each run.

Not part of nnU-Net: nnU-Net's default trainer with its default plan (patch, batch, augmentation, network,
learning rate: the poly schedule's epoch-0 rate), cut to one epoch of N training and max(1, N // 5)
validation iterations (N from ${PROBE_ENV}), the way nnU-Net's own nnUNetTrainer_1epoch stops after one
epoch. Each iteration is timed from the end of the previous one (or the start of the training / validation
loop) to the end of its step, so the wait for the data loader's next batch is included. The times, the
defaults of the installed nnUNetTrainer (iterations per epoch, epochs) and the set-up time go to {PROBE_LOG}
in the fold folder. nnU-Net's final validation (prediction of the validation cases) is skipped.
"""

import json
import os
import time
from os.path import join

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {PROBE_TRAINER}(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        steps = int(os.environ["{PROBE_ENV}"])
        self.probe_log = {{
            "default_num_iterations_per_epoch": self.num_iterations_per_epoch,
            "default_num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "default_num_epochs": self.num_epochs,
            "num_iterations_per_epoch": steps,
            "num_val_iterations_per_epoch": max(1, steps // 5),
            "train_iter_s": [],
            "train_wait_s": [],
            "val_iter_s": [],
            "val_wait_s": [],
        }}
        self.num_iterations_per_epoch = steps
        self.num_val_iterations_per_epoch = max(1, steps // 5)
        self.num_epochs = 1

    def on_train_start(self):
        start = time.perf_counter()
        self.probe_log["loadavg_start"] = list(os.getloadavg())
        super().on_train_start()  # initialize (network, optimizer), data loaders, unpacking
        self.probe_log["setup_s"] = time.perf_counter() - start
        self.probe_log["batch_size"] = int(self.batch_size)
        self.probe_log["patch_size"] = [int(p) for p in self.configuration_manager.patch_size]
        self.probe_log["torch_threads"] = torch.get_num_threads()
        self.write_log()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.probe_last = time.perf_counter()

    def train_step(self, batch):
        return self.probe_timed("train", super().train_step, batch)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self.probe_last = time.perf_counter()

    def validation_step(self, batch):
        return self.probe_timed("val", super().validation_step, batch)

    def probe_timed(self, kind, step, batch):
        start = time.perf_counter()  # since probe_last: waiting for the data loader's batch
        out = step(batch)
        now = time.perf_counter()
        self.probe_log[kind + "_iter_s"].append(now - self.probe_last)
        self.probe_log[kind + "_wait_s"].append(start - self.probe_last)
        self.print_to_log_file(f"probe: {{kind}} iteration {{len(self.probe_log[kind + '_iter_s'])}}: "
                               f"{{now - self.probe_last:.2f}} s, of which data-loader wait "
                               f"{{start - self.probe_last:.2f}} s")
        self.probe_last = time.perf_counter()  # the probe's own log line is not timed
        return out

    def on_epoch_end(self):
        start = time.perf_counter()
        super().on_epoch_end()  # logging, checkpoint_best.pth, progress plot, as at the end of any epoch
        self.probe_log["epoch_end_s"] = time.perf_counter() - start
        end, begin = (self.logger.get_value(f"epoch_{{t}}_timestamps", step=-1) for t in ("end", "start"))
        self.probe_log["nnunet_epoch_time_s"] = float(end - begin)  # as nnU-Net's "Epoch time" line
        self.probe_log["loadavg_end"] = list(os.getloadavg())
        self.write_log()
''' + _trainer_tail("probe_log", PROBE_LOG, "final validation skipped (probe run)")

NNUNET_INFO = """
import importlib.metadata, json, os, nnunetv2, torch
print(json.dumps({"nnunetv2": importlib.metadata.version("nnunetv2"), "torch": torch.__version__,
                  "package": os.path.dirname(nnunetv2.__file__)}))
"""


def run_logged(cmd: list[str], env: dict[str, str], log: Path, echo: re.Pattern | None = None) -> float:
    """Run `cmd` (no shell) with its output in `log` (lines matching `echo` also printed); wall seconds.

    Fails loudly with the command's last output lines."""
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with (
        log.open("w") as out,
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            tail.append(line)
            if echo is not None and echo.search(line.rstrip()):
                print(f"    {line.rstrip()}", flush=True)
        code = proc.wait()
    if code != 0:
        sys.exit(f"{' '.join(cmd)}\nfailed ({code}); full output in {log}; last lines:\n{''.join(tail)}")
    return time.perf_counter() - start


def nnunet_info(venv: Path) -> dict[str, str]:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", NNUNET_INFO], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"cannot import nnunetv2 from {venv}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def install_trainer(package: Path, name: str = TRAINER, source: str = TRAINER_SOURCE) -> Path:
    path = package / "training" / "nnUNetTrainer" / "variants" / f"{name}.py"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(source)
    tmp.replace(path)
    return path


def write_splits(preprocessed: Path, split: dict[str, list[str]], nnunet_cases: set[str]) -> None:
    """medseg-bench's fold 0 as nnU-Net's only fold (its case ids are nnU-Net's identifiers)."""
    unknown = sorted((set(split["train"]) | set(split["val"])) - nnunet_cases)
    if unknown:
        sys.exit(f"split cases missing from nnU-Net's dataset: {', '.join(unknown[:5])}")
    (preprocessed / "splits_final.json").write_text(
        json.dumps([{"train": sorted(split["train"]), "val": sorted(split["val"])}], indent=2)
    )


def mean_fg_dice(pred_dir: Path, ref_dir: Path, labels: list[int], val: list[str]) -> float:
    """Mean foreground Dice with medseg-bench's evaluator (as bench/train.py --minutes): nanmean over cases
    and labels (NaN only where both masks are empty)."""
    import numpy as np

    from medseg_bench.metrics import evaluate_folders

    # ref_dir is the whole labelsTr; the predictions are the validation cases only (checked just below).
    frame = evaluate_folders(pred_dir, ref_dir, labels, workers=os.cpu_count() or 1, allow_missing=True)
    if sorted(set(frame["case"])) != sorted(val):
        sys.exit(f"{pred_dir}: predictions do not match the {len(val)} validation cases")
    return float(np.nanmean(frame["dice"].to_numpy(dtype=float)))


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def fmt_load(load: list[float] | tuple[float, ...]) -> str:
    return " / ".join(f"{x:.1f}" for x in load)


def run_probe(
    args: argparse.Namespace,
    configs: list[str],
    budgets: list[float],
    work: Path,
    env: dict[str, str],
    ctx: dict,
) -> str:
    """--probe-steps: one short epoch per configuration with nnU-Net's default plan; time the iterations,
    project nnU-Net's default epoch and its first checkpoint, compare with the budgets; the report."""
    steps = args.probe_steps
    bin_dir, dataset, split, logs = ctx["bin_dir"], ctx["dataset"], ctx["split"], ctx["logs"]
    env = dict(env, **{PROBE_ENV: str(steps)})
    rows, detail_rows, firsts = [], [], {}
    defaults = None
    for config in configs:
        print(f"nnUNetv2_train {DATASET_ID} {config} 0 -tr {PROBE_TRAINER} -device cpu ...", flush=True)
        train_cmd = [str(bin_dir / "nnUNetv2_train"), str(DATASET_ID), config, "0", "-tr", PROBE_TRAINER]
        train_s = run_logged([*train_cmd, "-device", "cpu"], env, logs / f"probe_{config}.log", PROBE_ECHO)
        fold_dir = work / "nnUNet_results" / dataset / f"{PROBE_TRAINER}__nnUNetPlans__{config}" / "fold_0"
        log = json.loads((fold_dir / PROBE_LOG).read_text())
        train_times, val_times = log["train_iter_s"], log["val_iter_s"]
        if len(train_times) != steps or len(val_times) != max(1, steps // 5):
            sys.exit(
                f"{fold_dir / PROBE_LOG}: expected {steps} training, {max(1, steps // 5)} validation times"
            )
        kept = train_times[1:] if len(train_times) > 1 else train_times  # the first one is warm-up
        train_it, val_it = statistics.fmean(kept), statistics.fmean(val_times)
        n_train, n_val = log["default_num_iterations_per_epoch"], log["default_num_val_iterations_per_epoch"]
        defaults = (n_train, n_val, log["default_num_epochs"])
        epoch_s = n_train * train_it + n_val * val_it
        # nnU-Net's clock as the full mode's: from on_train_start; first checkpoint = end of epoch 1
        first_s = log["setup_s"] + epoch_s + log["epoch_end_s"]
        firsts[config] = first_s
        done = [
            0 if b * 60 < first_s else 1 + int((b * 60 - first_s) // (epoch_s + log["epoch_end_s"]))
            for b in budgets
        ]
        rows.append(
            f"| {config} | {'x'.join(map(str, log['patch_size']))} | {log['batch_size']} | {train_it:.2f} | "
            f"{val_it:.2f} | {epoch_s / 60:.1f} | {' / '.join(map(str, done))} |"
        )
        print(rows[-1], flush=True)

        def times(values: list[float], waits: list[float]) -> str:
            return ", ".join(f"{t:.2f} ({w:.2f})" for t, w in zip(values, waits, strict=True))

        detail_rows.append(
            f"| {config} | {len(kept)} of {len(train_times)}: {times(train_times, log['train_wait_s'])} | "
            f"{times(val_times, log['val_wait_s'])} | {log['setup_s']:.1f} | {log['epoch_end_s']:.1f} | "
            f"{log['nnunet_epoch_time_s']:.1f} | {first_s / 60:.1f} | {train_s:.0f} | "
            f"{fmt_load(log['loadavg_start'])} -> {fmt_load(log['loadavg_end'])} | {log['torch_threads']} |"
        )
    assert defaults is not None
    n_train, n_val, n_epochs = defaults
    load_end = os.getloadavg()
    num_cases, total_cases, info = ctx["num_cases"], ctx["total_cases"], ctx["info"]
    command = (
        f".venv/bin/python bench/nnunet_quality.py --probe-steps {steps} --minutes {args.minutes} "
        f"--configs {','.join(configs)} --cases {num_cases}"
        + (f" --n-proc-da {args.n_proc_da}" if args.n_proc_da != 1 else "")
    )
    full = (
        num_cases == total_cases
        and budgets == [5.0, 10.0, 15.0]
        and configs == list(CONFIGS)
        and args.n_proc_da == 1
    )
    budgets_text = " / ".join(f"{b:g}" for b in budgets)
    if all(first_s > budgets[-1] * 60 for first_s in firsts.values()):
        consequence = (
            f"nnU-Net v2 with its default plan finishes no epoch, so has no checkpoint to score, within "
            f"{budgets[-1]:g} minutes on this machine (first checkpoint projected at "
            + ", ".join(f"{c} {s / 60:.0f} min" for c, s in firsts.items())
            + " after on_train_start; the full mode would train each configuration that long before its "
            "first, and only, snapshot)."
        )
    else:
        parts = []
        for c, s in firsts.items():
            within = [f"{b:g}" for b in budgets if b * 60 >= s]
            parts.append(
                f"{c} at {s / 60:.1f} min, within the {', '.join(within)} min budget(s)"
                if within
                else f"{c} at {s / 60:.1f} min, after the {budgets[-1]:g} min budget: no checkpoint to score"
            )
        consequence = f"projected first epoch end (nnU-Net's first checkpoint): {'; '.join(parts)}."
    lines = [
        f"# nnU-Net v2 probe mode (--probe-steps {steps}): CPU seconds per iteration and projected first "
        f"epoch vs. {budgets_text} min budgets (Task04_Hippocampus, fold 0)",
        "",
        *(
            []
            if full
            else [
                f"**Smoke / partial run, not the benchmark figures**: `{command}`. The benchmark's probe "
                f"is `.venv/bin/python bench/nnunet_quality.py --probe-steps N --minutes {REAL_MINUTES}` on "
                f"all {total_cases} cases. nnU-Net caps its batch at 5% of the dataset's voxels, so a subset "
                "of the cases trains with smaller batches and shorter iterations than all of them.",
                "",
            ]
        ),
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"host: {platform.node()}, {cpu_model()} "
        f"({os.cpu_count()} CPUs, shared with other jobs); load average (1 / 5 / 15 min) "
        f"{fmt_load(ctx['load_start'])} at the start, {fmt_load(load_end)} at the end; nnunetv2 "
        f"{info['nnunetv2']}, torch {info['torch']}; {num_cases} cases, medseg-bench's fold 0 "
        f"({len(split['train'])} training / {len(split['val'])} validation cases) as nnU-Net's "
        "splits_final.json; nnUNet_n_proc_DA="
        f"{args.n_proc_da}.",
        "",
        f"Not a training run: the generated subclass `{PROBE_TRAINER}` keeps nnU-Net's default plan and "
        "trainer (patch, batch, augmentation, network, loss, optimizer; learning rate of the poly schedule's "
        f"first epoch) but stops after one epoch of {steps} training and {max(1, steps // 5)} validation "
        "iterations. Each iteration is timed from the end of the previous one to the end of its step, so the "
        "wait for the data loader's next batch is included (shown apart in the details); seconds per "
        "training iteration = mean over the "
        + ("training iterations after the first (warm-up, excluded)" if steps > 1 else "1 training iteration")
        + ", per validation iteration = mean over all validation iterations. Projected epoch = "
        f"{n_train} x training + {n_val} x validation iteration (the installed nnUNetTrainer's "
        f"num_iterations_per_epoch / num_val_iterations_per_epoch; {n_epochs} epochs by default). "
        "Epochs done by a budget = epochs whose end (checkpoint) falls within it, counting from "
        "on_train_start as the full mode's snapshots do: the first ends after the measured set-up "
        "(initialisation, data loaders, unpacking) + projected epoch + measured epoch-end work "
        "(checkpoint_best.pth, progress plot), each further one an epoch + epoch-end work later.",
        "",
        "| nnU-Net configuration | patch | batch | s / training iteration | s / validation iteration | "
        f"projected epoch (min) | epochs done by {budgets_text} min |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Consequence: {consequence}",
        "",
        "Details:",
        "",
        "| nnU-Net configuration | training iterations kept of all: seconds each (data-loader wait) | "
        "validation iterations: seconds each (wait) | set-up (s) | epoch end (s) | nnU-Net's epoch time (s) "
        "| "
        "projected first checkpoint (min from on_train_start) | "
        "nnUNetv2_train probe process (s) | load average at on_train_start -> epoch end | torch threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *detail_rows,
        "",
        f"`nnUNetv2_plan_and_preprocess -c {' '.join(configs)}` ({ctx['workers']} processes): "
        f"{ctx['preprocess_s']:.0f} s.",
        "",
        f"Reproduce: `{command}` (installs nnunetv2 into /tmp/nnunet-venv once, see bench/preprocess.py).",
    ]
    report = "\n".join(lines) + "\n"
    write_atomic(args.output, report)
    print(report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default=REAL_MINUTES, help="wall-clock training budgets, e.g. 5,10,15")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="nnU-Net configurations: 2d,3d_fullres")
    parser.add_argument("--cases", type=int, default=200, help="first N of the 200 Hippocampus cases")
    parser.add_argument("--workdir", type=Path, help="keep nnU-Net's work and logs here (new/empty)")
    parser.add_argument("--n-proc-da", type=int, default=1, help="nnUNet_n_proc_DA (augmentation workers)")
    parser.add_argument("--nnunet-venv", type=Path, default=NNUNET_VENV)
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "nnunet_quality.md")
    parser.add_argument(
        "--probe-steps",
        type=int,
        default=0,
        metavar="N",
        help="probe mode: time N training + max(1, N // 5) validation iterations per configuration and "
        "project nnU-Net's default epoch against the budgets instead of training to them (default: off)",
    )
    args = parser.parse_args()
    budgets = sorted({float(m) for m in args.minutes.split(",")})
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not budgets or min(budgets) <= 0:
        sys.exit(f"--minutes must be positive numbers, got {args.minutes!r}")
    if not configs or set(configs) - set(CONFIGS):
        sys.exit(f"--configs: choose from {', '.join(CONFIGS)}; got {args.configs!r}")
    if args.probe_steps < 0:
        sys.exit(f"--probe-steps must be positive (0: off), got {args.probe_steps}")
    if not (SHARED / "dataset.json").is_file():
        sys.exit(f"{SHARED}: shared Hippocampus data not found")
    meta = json.loads((SHARED / "dataset.json").read_text())
    num_cases = min(args.cases, len(meta["training"]))
    labels = sorted(int(k) for k in meta["labels"] if int(k) > 0)

    ensure_nnunet(args.nnunet_venv)
    info = nnunet_info(args.nnunet_venv)
    if args.probe_steps:
        install_trainer(Path(info["package"]), PROBE_TRAINER, PROBE_TRAINER_SOURCE)
    else:
        install_trainer(Path(info["package"]))
    bin_dir = args.nnunet_venv / "bin"

    load_start3 = os.getloadavg()
    load_start = load_start3[0]
    if args.workdir is not None:
        if args.workdir.exists() and any(args.workdir.iterdir()):
            sys.exit(f"--workdir {args.workdir}: not empty")
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = args.workdir.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-nnunet-quality-"))
    logs = work / "logs"
    logs.mkdir()
    print(f"work folder: {work} (logs in {logs})", flush=True)
    finished = False
    try:
        home = work / "medseg_home"
        os.environ["MEDSEG_BENCH_HOME"] = str(home)
        prepared = prepare(home, num_cases)  # our import, plan, cache and splits of the first N cases
        split = prepared.splits[0]
        print(f"medseg-bench fold 0: {len(split['train'])} train / {len(split['val'])} val cases", flush=True)

        raw = work / "nnUNet_raw"
        dataset = to_nnunet_raw(home / "src" / TASK, raw)
        env = dict(
            os.environ,
            nnUNet_raw=str(raw),
            nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
            nnUNet_results=str(work / "nnUNet_results"),
            nnUNet_n_proc_DA=str(args.n_proc_da),
            PYTHONUNBUFFERED="1",
            **{BUDGET_ENV: ",".join(f"{b:g}" for b in budgets)},
        )
        workers = str(os.cpu_count() or 1)
        print(f"nnUNetv2_plan_and_preprocess -c {' '.join(configs)} ...", flush=True)
        preprocess_s = run_logged(
            [
                str(bin_dir / "nnUNetv2_plan_and_preprocess"),
                "-d",
                str(DATASET_ID),
                "-c",
                *configs,
                "-np",
                *[workers] * len(configs),
                "-npfp",
                workers,
            ],
            env,
            logs / "plan_and_preprocess.log",
        )
        print(f"  {preprocess_s:.0f} s", flush=True)
        nnunet_cases = {p.name.removesuffix(".nii.gz") for p in (raw / dataset / "labelsTr").iterdir()}
        write_splits(work / "nnUNet_preprocessed" / dataset, split, nnunet_cases)
        if args.probe_steps:
            ctx = dict(
                bin_dir=bin_dir, dataset=dataset, split=split, logs=logs, info=info, num_cases=num_cases,
                total_cases=len(meta["training"]), load_start=load_start3, workers=workers,
                preprocess_s=preprocess_s,
            )  # fmt: skip
            run_probe(args, configs, budgets, work, env, ctx)
            finished = True
            return  # the finally clause below removes a temporary work folder
        val_images = work / "val_images"
        val_images.mkdir()
        for case in split["val"]:
            name = f"{case}_0000.nii.gz"
            (val_images / name).symlink_to((raw / dataset / "imagesTr" / name).resolve())

        rows, timing_rows, notes = [], [], []
        for config in configs:
            print(f"nnUNetv2_train {DATASET_ID} {config} 0 -tr {TRAINER} -device cpu ...", flush=True)
            train_cmd = ["nnUNetv2_train", str(DATASET_ID), config, "0", "-tr", TRAINER, "-device", "cpu"]
            train_cmd[0] = str(bin_dir / train_cmd[0])
            train_s = run_logged(train_cmd, env, logs / f"train_{config}.log", TRAIN_ECHO)
            fold_dir = work / "nnUNet_results" / dataset / f"{TRAINER}__nnUNetPlans__{config}" / "fold_0"
            log = json.loads((fold_dir / BUDGET_LOG).read_text())
            snapshots = {s["budget_min"]: s for s in log["snapshots"]}
            scored: dict[str, tuple[float, float]] = {}  # checkpoint -> (Dice, prediction seconds)
            for budget in budgets:
                snap = snapshots.get(budget)
                checkpoint = snap["checkpoint"] if snap else "checkpoint_final.pth"  # ended before the budget
                if checkpoint not in scored:
                    name = checkpoint.removesuffix(".pth")
                    out = work / "predictions" / config / name
                    print(f"  nnUNetv2_predict -chk {checkpoint} ({len(split['val'])} cases) ...", flush=True)
                    predict_cmd = [
                        str(bin_dir / "nnUNetv2_predict"), "-i", str(val_images), "-o", str(out),
                        "-d", str(DATASET_ID), "-c", config, "-f", "0", "-tr", TRAINER, "-chk", checkpoint,
                        "-device", "cpu",
                    ]  # fmt: skip
                    predict_s = run_logged(predict_cmd, env, logs / f"predict_{config}_{name}.log")
                    dice = mean_fg_dice(out, raw / dataset / "labelsTr", labels, split["val"])
                    scored[checkpoint] = (dice, predict_s)
                dice, predict_s = scored[checkpoint]
                if snap is None:
                    at, epochs = "end of run", "-"
                else:
                    at = f"{snap['minutes']:.2f}"
                    if snap["epochs"] == 1:
                        at += " (no epoch finished within the budget: end of epoch 1)"
                    epochs = str(snap["epochs"])
                rows.append(f"| {config} | {budget:g} | {at} | {epochs} | {dice:.3f} |")
                print(rows[-1], f"(prediction {predict_s:.0f} s)", flush=True)
            uses = collections.Counter(s["checkpoint"] for s in log["snapshots"])
            shared = [f"{s['budget_min']:g}" for s in log["snapshots"] if uses[s["checkpoint"]] > 1]
            if shared:
                notes.append(
                    f"{config}: the budgets {', '.join(shared)} min were passed at the same epoch end and "
                    "share one snapshot."
                )
            epoch_s = log["epoch_s"]
            if len(epoch_s) > 1:
                epochs_text = f"{statistics.median(epoch_s):.0f} ({min(epoch_s):.0f}-{max(epoch_s):.0f})"
            else:
                epochs_text = f"{epoch_s[0]:.0f}" if epoch_s else "no epoch finished"
            predict_text = ", ".join(f"{seconds:.0f}" for _, seconds in scored.values())
            timing_rows.append(
                f"| {config} | {'x'.join(map(str, log['patch_size']))} / {log['batch_size']} | "
                f"{log['setup_s']:.0f} | {train_s / 60:.1f} | {epochs_text} | {predict_text} |"
            )
        finished = True
    finally:
        if not finished:
            print(f"failed: work folder and logs kept in {work}", file=sys.stderr)
        elif args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    command = (
        f".venv/bin/python bench/nnunet_quality.py --minutes {args.minutes} --configs {','.join(configs)} "
        f"--cases {num_cases}" + (f" --n-proc-da {args.n_proc_da}" if args.n_proc_da != 1 else "")
    )
    full = (
        num_cases == len(meta["training"])
        and budgets == [5.0, 10.0, 15.0]
        and configs == list(CONFIGS)
        and args.n_proc_da == 1
    )
    load = os.getloadavg()
    lines = [
        "# nnU-Net v2: validation Dice after N minutes of CPU training (Task04_Hippocampus, fold 0)",
        "",
        *(
            []
            if full
            else [
                f"**Smoke / partial run, not the benchmark figures**: `{command}`. The benchmark is "
                f"`.venv/bin/python bench/nnunet_quality.py --minutes {REAL_MINUTES}`. nnU-Net caps its "
                "batch at 5% of the dataset's voxels, so a subset of the cases trains with smaller batches "
                "and shorter epochs than all 200.",
                "",
            ]
        ),
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"host: {platform.node()}, {cpu_model()} "
        f"({os.cpu_count()} CPUs, shared with other jobs; load average {load_start:.1f} at the start, "
        f"{load[0]:.1f} at the end); "
        f"nnunetv2 {info['nnunetv2']}, torch {info['torch']}; {num_cases} cases, medseg-bench's fold 0 "
        f"({len(split['train'])} training / {len(split['val'])} validation cases) as nnU-Net's "
        "splits_final.json.",
        "",
        f"nnU-Net as users run it: `nnUNetv2_train {DATASET_ID} CONFIG 0 -device cpu` with its default "
        "trainer (1000-epoch poly learning-rate schedule, 250 training + 50 validation iterations per "
        "epoch, its augmentation, patch and batch), nnUNet_n_proc_DA="
        f"{args.n_proc_da}. The subclass `{TRAINER}` only snapshots the weights at the first epoch end after "
        "each budget (wall clock since on_train_start, data-loader start-up included; the column says when), "
        "stops after the largest budget and skips nnU-Net's final validation. Each snapshot predicts the "
        "validation cases with `nnUNetv2_predict -device cpu` (default inference: mirroring TTA, tile step "
        "0.5), scored with medseg-bench's evaluator: mean fg Dice is the nanmean of Dice over the validation "
        f"cases and labels {', '.join(map(str, labels))} (as `bench/train.py --minutes`). One run per "
        "configuration, not seeded.",
        "",
        "| nnU-Net configuration | budget (min) | snapshot at (min) | epochs done | mean fg Dice |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *[f"- Note: {n}" for n in notes],
        *([""] if notes else []),
        "Timings:",
        "",
        "| nnU-Net configuration | patch / batch | training setup (s) | nnUNetv2_train process (min) | "
        f"epoch time (s): median (min-max) | nnUNetv2_predict, {len(split['val'])} cases (s), per snapshot |",
        "|---|---|---|---|---|---|",
        *timing_rows,
        "",
        f"`nnUNetv2_plan_and_preprocess -c {' '.join(configs)}` ({workers} processes): {preprocess_s:.0f} s.",
        "",
        f"Reproduce: `{command}` (installs nnunetv2 into /tmp/nnunet-venv once, see bench/preprocess.py).",
    ]
    report = "\n".join(lines) + "\n"
    write_atomic(args.output, report)
    print(report)


if __name__ == "__main__":
    main()
