#!/usr/bin/env bash
# The 2D + 3D U-Net ensemble of docs/results/README.md ("Ensemble"): `make demo`'s two runs (fold 0) predict
# their 40 held-out cases with `medseg-bench predict`, alone and together, and `medseg-bench evaluate` scores
# each against the reference labels. Run from the repo root, with the results dir `make demo` wrote:
#   bash docs/results/run_ensemble.sh RESULTS_DIR [WORK_DIR]
set -euo pipefail
results=${1:?usage: run_ensemble.sh RESULTS_DIR [WORK_DIR]}/Task04_Hippocampus
work=${2:-/tmp/medseg-ensemble}
data=../shared/data/Task04_Hippocampus
bin=.venv/bin/medseg-bench
run3d=$(ls -d "$results"/3d-unet-dice_ce-none-f0-s0-* | head -1)
run2d=$(ls -d "$results"/2d-unet.resnet34-dice_ce-none-f0-s0-* | head -1)
rm -rf "$work" && mkdir -p "$work/images" "$work/refs"
# the held-out cases of fold 0 (both runs hold out the same ones), linked, not copied
.venv/bin/python - "$run3d/splits.json" "$run2d/splits.json" "$data" "$work" <<'PY'
import json, os, sys
first, second, data, work = sys.argv[1:]
held_out = json.load(open(first))["val"]
assert held_out == json.load(open(second))["val"], "the two runs hold out different cases"
for case in held_out:
    os.symlink(os.path.abspath(f"{data}/imagesTr/{case}.nii.gz"), f"{work}/images/{case}.nii.gz")
    os.symlink(os.path.abspath(f"{data}/labelsTr/{case}.nii.gz"), f"{work}/refs/{case}.nii.gz")
PY
"$bin" predict "$run3d" --images "$work/images" --out "$work/pred_3d" | tail -1
"$bin" predict "$run2d" --images "$work/images" --out "$work/pred_2d" | tail -1
"$bin" predict "$run3d" "$run2d" --images "$work/images" --out "$work/pred_ensemble" | tail -1
for name in 3d 2d ensemble; do
    "$bin" evaluate --pred "$work/pred_$name" --ref "$work/refs" --task Task04_Hippocampus \
        --output "$work/pred_$name.csv"
done
.venv/bin/python - "$work" <<'PY'
import sys
import pandas as pd
from scipy.stats import wilcoxon
work = sys.argv[1]
per_case = {}
for name in ("3d", "2d", "ensemble"):
    rows = pd.read_csv(f"{work}/pred_{name}.csv")
    rows = rows[rows["case"] != "mean"]
    per_case[name] = rows.groupby("case")[["dice", "jaccard", "hd95", "nsd"]].mean()
    means = per_case[name].mean()
    labels = rows.groupby("label")["dice"].mean()
    print(f"{name:9s} Dice {means['dice']:.4f}  Jaccard {means['jaccard']:.4f}  HD95 {means['hd95']:.2f} mm  "
          f"NSD {means['nsd']:.4f}  Dice per label {labels.iloc[0]:.4f} / {labels.iloc[1]:.4f}")
for name in ("3d", "2d"):
    better = int((per_case["ensemble"]["dice"] > per_case[name]["dice"]).sum())
    p = wilcoxon(per_case["ensemble"]["dice"], per_case[name]["dice"]).pvalue
    print(f"ensemble vs {name}: higher Dice on {better} of {len(per_case[name])} cases, Wilcoxon p = {p:.2g}")
PY
