"""A run's checkpoints: written atomically, read as tensors and plain data only (a checkpoint never runs
code), and the network weights loaded from one (`load_weights`, for evaluation and predict;
`resume_problem`, a resume's check)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO
from torch import nn

from medseg_bench.files import failure_names


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file, then rename: a kill never leaves a half-written checkpoint. Read them
    as tensors and plain data only: a checkpoint never runs code when a run resumes."""

    def load_checkpoint(self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None
                        ) -> dict[str, Any]:
        # weights_only=True whatever the caller asks: `Trainer.fit(weights_only=True)` needs Lightning 2.6
        return torch.load(path, map_location=map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        # Through a Python file: a full disk is then `[Errno 28] ... PATH`, not the zip writer's "unexpected
        # pos"; the temp file goes with it.
        with failure_names(path, tmp), open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)
        os.replace(tmp, path)


RUN_ID_KEY = "medseg_bench_run_id"  # the run a checkpoint is of (`SegmentationModule.on_save_checkpoint`)


def mapped_checkpoint(checkpoint: Path) -> Any:
    """A checkpoint's contents, tensors and plain data only, its tensors mapped from the file, not read: for
    the few plain fields beside them (its run, its steps). Raises what `torch.load` raises for a damaged
    file. The name is passed as a str: torch 2.1 maps only a str ("f must be a string filename in order to
    use mmap argument", a ValueError for a Path, which its callers took for a damaged file)."""
    return torch.load(str(checkpoint), map_location="cpu", weights_only=True, mmap=True)


def foreign_problem(checkpoint: Path, run_id: str) -> str | None:
    """Where `checkpoint` records being of another run than `run_id` (one copied into another run's
    folder), a problem naming both; None where it is of `run_id`, records none (written before 2026-12-02) or
    cannot be read (loading it says why). Mapped, not read: its tensors stay on disk."""
    try:
        state = mapped_checkpoint(checkpoint)
    except Exception:  # noqa: BLE001 - a damaged checkpoint: loading it says so
        return None
    return _foreign_in(state, checkpoint, run_id)


def _foreign_in(state: Any, checkpoint: Path, run_id: str) -> str | None:
    """`foreign_problem` of `checkpoint` from its contents, `state`."""
    other = state.get(RUN_ID_KEY) if isinstance(state, dict) else None
    if not isinstance(other, str) or other == run_id:
        return None
    return f"{checkpoint}: the weights of run {other}, not of run {run_id}, whose folder it is in"


def resume_problem(net: nn.Module, checkpoint: Path, run_id: str) -> str | None:
    """Why run `run_id`, whose network is `net`, cannot resume from `checkpoint`: the error `load_weights`
    gives, or `foreign_problem`'s; None where it can. One load serves both, mapped: of its tensors only the
    weights `net` takes are read, not the optimizer's state (twice their size with Adam), which Lightning's
    load of it for the resume reads next."""
    from medseg_bench.errors import DataError

    try:
        state = _load_into(net, checkpoint, mapped=True)
    except DataError as exc:
        return str(exc)
    return _foreign_in(state, checkpoint, run_id)


def load_weights(net: nn.Module, checkpoint: Path) -> nn.Module:
    """Load the network weights of a Lightning checkpoint, refusing anything but plain tensors."""
    _load_into(net, checkpoint, mapped=False)
    return net.eval()


def _load_into(net: nn.Module, checkpoint: Path, mapped: bool) -> Any:
    """`checkpoint`'s contents (its tensors mapped from the file where `mapped`, `mapped_checkpoint`), its
    network weights loaded into `net`; a DataError naming it where it is no torch archive (refused unread),
    holds more than tensors and plain data, or does not hold `net`'s weights."""
    from medseg_bench.errors import DataError, first_line

    unread = _not_torch_archive(checkpoint)
    if unread:
        raise DataError(f"{checkpoint}: not a loadable medseg-bench checkpoint ({unread}; refused unread)")
    try:
        state = _read(checkpoint, mapped)
        weights = {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
        net.load_state_dict(weights)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not our checkpoint
        first = first_line(exc)
        if first.endswith(":"):  # "Error(s) in loading state_dict for UNet:", the keys on the next line
            first = " ".join(line.strip() for line in str(exc).splitlines()[:2])
        if not any(c.isalpha() for c in first):  # a KeyError of a bare number says nothing on its own
            first = f"{type(exc).__name__} {first}"
        if "weights only load failed" in first.lower():  # torch's own text goes on to suggest turning it off
            first = ("it holds more than tensors and plain data; refused unread: every checkpoint is loaded "
                     "with weights_only=True")
        raise DataError(f"{checkpoint}: not a loadable medseg-bench checkpoint ({first[:200]})") from None
    return state


def _not_torch_archive(checkpoint: Path) -> str | None:
    """Why the file `checkpoint` is no archive torch.save writes, to refuse it unread, or None: no zip at all,
    or a zip without the records torch.load requires (every entry in one folder, which holds `data.pkl` and
    `version` or `.data/version`; any other zip got torch's own text, 'Expected hasRecord("version") to be
    true ... please report an enhancement request to PyTorch', an empty one was read as a legacy pickle and
    called "more than tensors"). None where it is no file or its listing cannot be read: torch's load says
    what is wrong with those."""
    import zipfile

    if not checkpoint.is_file():
        return None
    if not zipfile.is_zipfile(checkpoint):
        return "not a torch checkpoint archive"
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    folder = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else None
    if (folder is not None and all(name.startswith(folder) for name in names) and f"{folder}data.pkl" in names
            and {f"{folder}version", f"{folder}.data/version"} & set(names)):
        return None
    return "not a torch checkpoint archive: a zip without torch's records"


def _read(checkpoint: Path, mapped: bool) -> Any:
    """`checkpoint`'s contents, tensors and plain data only; mapped where `mapped` and the file can be. A
    mapped load that fails is tried again unmapped, and its error is the one given: a checkpoint on a file
    system that cannot map it still resumes, and a damaged one is named in an unmapped load's words."""
    if mapped:
        try:
            return mapped_checkpoint(checkpoint)
        except Exception:  # noqa: BLE001 - read unmapped below, which says what is wrong, if anything
            pass
    return torch.load(checkpoint, map_location="cpu", weights_only=True)
