#!/usr/bin/env bash
# On the lent GPU machine (device tool: command `bash bench/gpu_run.sh`, carry [".gpu-kit"]): install
# .gpu-kit's packages beside the image's PyTorch, then run bench/gpu.py into $OUT. Arguments go to gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/medseg-site
OUT=${OUT:-bench/results/gpu}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .gpu-kit/wheels/*.whl
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    .gpu-kit/simpleitk.tar.xz "$SITE"
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, pytorch_lightning as pl, monai, SimpleITK, segmentation_models_pytorch as smp; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', pl.__version__, \
'monai', monai.__version__, 'smp', smp.__version__, 'SimpleITK', SimpleITK.Version_VersionString())"
mkdir -p "$OUT"
python3 bench/gpu.py --source .gpu-kit/Task04_Hippocampus --out "$OUT" "$@" 2>&1 | tee "$OUT/console.log"
