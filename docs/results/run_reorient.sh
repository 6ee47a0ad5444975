#!/usr/bin/env bash
# `predict --reorient` of docs/results/README.md ("An image stored otherwise"): the 40 held-out cases of
# `make demo`'s 3D U-Net (fold 0), images and labels stored LPS instead of MSD's RAS (the same scans, their x
# and y axes reversed in the array, by SimpleITK's DICOMOrient), predicted as stored and with --reorient, and
# scored by `medseg-bench evaluate` against the LPS labels. Run from the repo root, with the results dir and
# home `make demo` used (the run's training orientation comes from its setup.json, or the fetched task):
#   MEDSEG_BENCH_HOME=HOME bash docs/results/run_reorient.sh RESULTS_DIR [WORK_DIR]
set -euo pipefail
results=${1:?usage: run_reorient.sh RESULTS_DIR [WORK_DIR]}/Task04_Hippocampus
work=${2:-/tmp/medseg-reorient}
data=../shared/data/Task04_Hippocampus
bin=.venv/bin/medseg-bench
run=$(ls -d "$results"/3d-unet-dice_ce-none-f0-s0-* | head -1)
rm -rf "$work" && mkdir -p "$work/images" "$work/labels"
.venv/bin/python - "$run/splits.json" "$data" "$work" <<'PY'
import json, sys
import SimpleITK as sitk
splits, data, work = sys.argv[1:]
for case in json.load(open(splits))["val"]:
    for folder, out in (("imagesTr", "images"), ("labelsTr", "labels")):
        image = sitk.ReadImage(f"{data}/{folder}/{case}.nii.gz")
        sitk.WriteImage(sitk.DICOMOrient(image, "LPS"), f"{work}/{out}/{case}.nii.gz")
PY
"$bin" predict "$run" --images "$work/images" --out "$work/as_stored" 2>/dev/null | tail -1
"$bin" predict "$run" --images "$work/images" --out "$work/reoriented" --reorient | tail -1
for name in as_stored reoriented; do
    "$bin" evaluate --pred "$work/$name" --ref "$work/labels" --task Task04_Hippocampus --output "$work/$name.csv"
done
.venv/bin/python - "$work" "$run/metrics.csv" <<'PY'
import sys
import pandas as pd
work, own = sys.argv[1:]
for name, path in (("run's own (RAS)", own), ("LPS as stored", f"{work}/as_stored.csv"),
                   ("LPS --reorient", f"{work}/reoriented.csv")):
    rows = pd.read_csv(path)
    rows = rows[rows["case"] != "mean"]
    labels = rows.groupby("label")["dice"].mean()
    means = rows.groupby("case")[["dice", "hd95"]].mean().mean()
    print(f"{name:16s} Dice {means['dice']:.4f}  HD95 {means['hd95']:.2f} mm  "
          f"Dice per label {labels.iloc[0]:.4f} / {labels.iloc[1]:.4f}")
PY
