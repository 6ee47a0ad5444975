#!/usr/bin/env bash
# Build .gpu-kit/ (git-ignored) for `bench/gpu_run.sh` on the lent GPU machine (see docs/results/README.md):
# the 200 shared Hippocampus cases and wheels of what that machine's image lacks (it has PyTorch, Lightning,
# numpy, pandas, typer, rich, ...; no MONAI, segmentation-models-pytorch, SimpleITK, edt), at the versions
# installed in .venv, for Python 3.12 on x86-64. SimpleITK's wheel (53 MB) would push the call over the
# device's 64 MiB transfer limit, so it travels unpacked and xz-compressed (about 28 MB). Run it here, once.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
SHARED=../shared/data/Task04_Hippocampus
PY=.venv/bin/python
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
download() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$1" "$2"
}
mkdir -p "$KIT/wheels"
if [ ! -f "$KIT/Task04_Hippocampus/dataset.json" ]; then
    cp -r "$SHARED" "$KIT/Task04_Hippocampus.tmp" && mv "$KIT/Task04_Hippocampus.tmp" "$KIT/Task04_Hippocampus"
fi
for pkg in monai segmentation-models-pytorch edt; do
    download "$KIT/wheels" "$pkg==$(version "$pkg")"
done
if [ ! -f "$KIT/simpleitk.tar.xz" ]; then
    tmp=$(mktemp -d)
    download "$tmp" "SimpleITK==$(version SimpleITK)"
    mkdir "$tmp/site" && (cd "$tmp/site" && unzip -q "$tmp"/*.whl)
    tar -C "$tmp/site" -cf - . | xz -9 -T0 > "$KIT/simpleitk.tar.xz.tmp"
    mv "$KIT/simpleitk.tar.xz.tmp" "$KIT/simpleitk.tar.xz"
    rm -rf "$tmp"
fi
ls -l "$KIT/wheels" "$KIT/simpleitk.tar.xz"
echo "kit: $(du -sm "$KIT" | cut -f1) MiB, tracked files: $(git ls-files -z | du -cm --files0-from=- | tail -1 | cut -f1) MiB (limit 64 MiB together)"
