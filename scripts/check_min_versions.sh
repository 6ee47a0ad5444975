#!/usr/bin/env bash
# The default test suite in a fresh venv (in a temp dir, removed after) holding the lowest version of every
# dependency that pyproject.toml allows: each `name>=X` of [project] dependencies, and of the test tools in
# the dev extra, is installed as `name==X`; other packages come at whatever version pip picks for them.
#   scripts/check_min_versions.sh [PYTHON]    # default python3.11; about 6 GB of disk, 17 minutes on 2 cores
# Not on PyPI for CPython 3.11: SimpleITK 2.2.0 (2.2.1 is used) and a wheel of edt 2.3.0 (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3.11}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/pip" install -q)
"${pip[@]}" --upgrade pip
pins=$("$tmp/venv/bin/python" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
on_pypi = {"SimpleITK": "2.2.1"}  # the first SimpleITK 2.2 on PyPI
tools = ("pytest>=", "hypothesis>=", "submitit>=", "edt>=")  # of the dev extra, what the suite imports
for req in project["dependencies"] + [r for r in project["optional-dependencies"]["dev"] if r.startswith(tools)]:
    name, version = re.fullmatch(r"([\w.-]+)>=([\w.]+)", req).groups()
    print(f"{name}=={on_pypi.get(name, version)}")
PY
)
"${pip[@]}" $(grep -v '^edt==' <<<"$pins") surface-distance
"${pip[@]}" wheel pbr  # edt's sdist builds against the numpy just installed
"${pip[@]}" --no-build-isolation "$(grep '^edt==' <<<"$pins")"
"${pip[@]}" --no-deps -e .
"$tmp/venv/bin/pip" list 2>/dev/null | grep -iE '^(torch|torchvision|pytorch-lightning|segmentation.models.pytorch|monai|simpleitk|numpy|scipy|pandas|pyarrow|rich|typer|pyyaml|matplotlib|einops|edt|timm|huggingface.hub|safetensors|click) '
"$tmp/venv/bin/python" -m pytest -q -rs -p no:cacheprovider  # -rs: each skipped test with its reason
