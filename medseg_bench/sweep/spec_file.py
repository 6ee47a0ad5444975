"""Sweep files (YAML): the axes and fixed settings of a sweep, declared once; command-line flags override.

    task: Task04_Hippocampus        # an axis: a name or a list of names
    dims: [2d, 3d]
    arch: [unet, deeplab]
    loss: [dice_ce, focal]
    aug: [none, heavy]
    target: [labels, regions]        # regions: as nnU-Net trains a task with regions (BraTS)
    exclude: ["arch=deeplab,aug=heavy"]
    epochs: 50                       # a fixed setting: one value
    tta: true                        # every flag of `sweep` that sets runs has its key (--class-weights:
    class_weights: [0.5, 1, 2]       # class_weights, a list)
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from medseg_bench.errors import UsageError
from medseg_bench.sweep.expand import SweepRequest
from medseg_bench.yaml_files import read_yaml_file

# file key -> SweepRequest field; axes take a value or a list, settings one value.
AXIS_KEYS = {"task": "tasks", "dims": "dims", "arch": "archs", "encoder": "encoders", "loss": "losses",
             "aug": "augs", "target": "targets", "fold": "folds", "seed": "seeds"}
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "num_folds": (int,), "epochs": (int,), "max_minutes": (int, float), "iters_per_epoch": (int,),
    "batch_size": (int,), "patch_size": (list,), "optimizer": (str,), "lr": (int, float)}
# Every other setting of a run (its --flag): a sweep file holds all that a command line can give.
FLAG_KEYS = ("pretrained", "tta", "postprocess")  # true or false
KNOWN_KEYS = (*AXIS_KEYS, *SETTING_TYPES, *FLAG_KEYS, "class_weights", "exclude")


def _as_list(path: Path, key: str, value: Any, kind: type, empty: bool = False) -> list[Any]:
    """`value`, one or a list, each of `kind`; an empty list refused unless `empty` (an axis of none made
    "the sweep expands to no runs", naming neither the file nor the key)."""
    values = value if isinstance(value, list) else [value]
    if not values and not empty:
        raise UsageError(f"{path}: '{key}' is an empty list: give it a value, or leave the key out")
    for item in values:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise UsageError(f"{path}: '{key}' takes {kind.__name__} values, not {item!r}")
    return values


def _number(path: Path, key: str, value: Any, wanted: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UsageError(f"{path}: '{key}' takes {wanted}, not {value!r}")
    return float(value)


def packaged_sweep_files() -> dict[str, Path]:
    """The sweep files shipped with the package, by name (`quick`: `quick.yaml`)."""
    from medseg_bench.settings import packaged_sweeps_dir

    folder = packaged_sweeps_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def sweep_file(config: Path) -> Path:
    """The sweep file `--config` names: the file at that path; where none is, a bare name (`quick`,
    `quick.yaml`) is the package's own sweep file of that name (an installed package has no `sweeps/`
    folder to point at). A missing file is named with the package's sweep files, so that a user of an
    installed package who copied `--config sweeps/quick.yaml` from the README learns of `--config quick`."""
    try:
        if config.is_file():
            return config
        there = config.exists() or config.is_symlink()  # a folder, a broken link: not a sweep file
    except OSError:  # a name too long, a folder not searchable: its read names the problem
        return config
    packaged = packaged_sweep_files()
    name = config.name.removesuffix(".yaml")
    if str(config) in (name, config.name) and name in packaged:
        return packaged[name]
    if there:
        return config
    if packaged:
        names = ", ".join(packaged)
        raise UsageError(f"{config}: no such sweep file (the package's own, by name: {names}; e.g. "
                         f"--config {next(iter(packaged))})")
    return config  # its read says what is wrong


def load_sweep_file(path: Path) -> dict[str, Any]:
    """SweepRequest field values from a sweep file; unknown keys and wrong types fail with exit code 2."""
    path = sweep_file(path)
    data = read_yaml_file(path, "sweep file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a sweep file is a mapping of keys to values, not {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        import difflib

        close = {key: found[0] for key in unknown
                 if (found := difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.75))}
        hint = "; did you mean " + ", ".join(f"'{close[k]}' for '{k}'" for k in unknown if k in close) \
            if close else ""
        raise UsageError(f"{path}: unknown keys {', '.join(unknown)}{hint} (known: {', '.join(KNOWN_KEYS)})")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        if key in AXIS_KEYS:
            kind = int if key in ("fold", "seed") else str
            values[AXIS_KEYS[key]] = _as_list(path, key, value, kind)
        elif key == "exclude":
            values["exclude"] = _as_list(path, key, value, str, empty=True)  # no rules
        elif key in FLAG_KEYS:
            if not isinstance(value, bool):
                raise UsageError(f"{path}: '{key}' takes true or false, not {value!r}")
            values[key] = value
        elif key == "class_weights":  # one per class, background first, as --class-weights
            weights = value if isinstance(value, list) else [value]
            if not weights:  # it was no weights (another run id), where --class-weights "" is refused
                raise UsageError(f"{path}: '{key}' is an empty list: give one number per class, or leave the "
                                 "key out")
            values[key] = tuple(_number(path, key, w, "numbers, one per class") for w in weights)
        elif float in SETTING_TYPES[key]:
            values[key] = _number(path, key, value, "one number")
        else:
            types = SETTING_TYPES[key]
            if not isinstance(value, types) or isinstance(value, bool):
                raise UsageError(f"{path}: '{key}' takes one {types[0].__name__}, not {value!r}")
            values[key] = tuple(_as_list(path, key, value, int)) if key == "patch_size" else value
    return values


def build_request(file_values: dict[str, Any], overrides: dict[str, Any]) -> SweepRequest:
    """A request from a sweep file's values and command-line values (None = not given).

    A flag replaces the file's value; `exclude` rules from both are kept.
    """
    merged = dict(file_values)
    for key, value in overrides.items():
        if value is None or (key == "exclude"):
            continue
        merged[key] = value
    merged["exclude"] = [*file_values.get("exclude", []), *(overrides.get("exclude") or [])]
    known = {f.name for f in fields(SweepRequest)}
    assert set(merged) <= known, set(merged) - known
    merged.setdefault("tasks", [])
    return SweepRequest(**merged)
