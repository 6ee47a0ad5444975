#!/usr/bin/env bash
# The CPU-sized subset of sweeps/survey.yaml published in docs/results/hippocampus_cpu.md: Task04_Hippocampus
# (the 200 shared cases), fold 0 of 5, seed 0, AdamW, 8 epochs x 50 iterations per run. Run from the repo root:
#   bash docs/results/run_cpu_survey.sh [RESULTS_DIR]
set -euo pipefail
results=${1:-results/cpu-survey}
bin=.venv/bin/medseg-bench
common=(--task Task04_Hippocampus --folds 0 --seed 0 --epochs 8 --iters-per-epoch 50 --optimizer adamw
        --results-dir "$results")
"$bin" fetch Task04_Hippocampus --source ../shared/data/Task04_Hippocampus
# Losses and augmentation, on the 3D U-Net (Dice + CE, no augmentation is the baseline row).
"$bin" sweep "${common[@]}" --arch unet --dims 3d --loss dice_ce,focal,tversky --aug none
"$bin" sweep "${common[@]}" --arch unet --dims 3d --loss dice_ce --aug light,heavy,nnunet
# Architectures, Dice + CE, no augmentation (2D: smp with a ResNet-34 encoder; 3D: MONAI).
# DynUNet (nnU-Net's configuration, deep supervision) needs ~9 min per 50-iteration epoch on this CPU: left out.
"$bin" sweep "${common[@]}" --arch unet --dims 2d --loss dice_ce --aug none
"$bin" sweep "${common[@]}" --arch segresnet --dims 3d --loss dice_ce --aug none
"$bin" sweep "${common[@]}" --arch deeplab --dims 2d --loss dice_ce --aug none
"$bin" report --results-dir "$results" --format markdown --output docs/results/hippocampus_cpu.md
"$bin" report --results-dir "$results" --format html --output docs/results/hippocampus_cpu.html
