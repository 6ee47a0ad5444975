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
# Versions as seen there (a package that fails to import is named, not fatal: gpu.py needs only what it uses).
python3 - <<'PY'
import importlib
for name in ("torch", "pytorch_lightning", "monai", "segmentation_models_pytorch", "SimpleITK", "edt", "pynvml"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "") or "ok")
    except Exception as exc:  # noqa: BLE001
        print(name, "FAILS:", type(exc).__name__, str(exc)[:200])
import torch
print("cuda available:", torch.cuda.is_available())
PY
mkdir -p "$OUT"
python3 bench/gpu.py --source .gpu-kit/Task04_Hippocampus --out "$OUT" "$@" 2>&1 | tee "$OUT/console.log"
