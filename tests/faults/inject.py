"""Run the medseg-bench CLI with one fault injected at a named point (used by tests/faults only).

    python tests/faults/inject.py POINT sweep ...

POINT is one of:
    kill-checkpoint   SIGKILL this process halfway through writing the 2nd last.ckpt's temp file
    kill-metrics      SIGKILL halfway through writing the first run's metrics.csv temp file
    kill-summary      SIGKILL halfway through writing the first run's summary.json temp file
    enospc-summary    every JSON write into the second run's folder fails with ENOSPC once it has
                      metrics.csv (disk full), from then on
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any


def _die_half_written(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    import io
    import json

    import medseg_bench.checkpoints as checkpoints
    import medseg_bench.run as run
    import medseg_bench.run_folder as run_folder

    if point == "kill-checkpoint":
        calls = {"n": 0}
        original = checkpoints.AtomicCheckpointIO.save_checkpoint

        def save(self: Any, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            calls["n"] += Path(path).name == "last.ckpt"
            if calls["n"] == 2 and Path(path).name == "last.ckpt":
                import torch

                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                target = Path(path)
                _die_half_written(target.with_name(f".{target.name}.tmp"), buffer.getvalue())
            original(self, checkpoint, path, storage_options)

        checkpoints.AtomicCheckpointIO.save_checkpoint = save  # type: ignore[method-assign]
    elif point == "kill-metrics":
        def write_csv(frame: Any, path: Path) -> None:
            _die_half_written(path.with_name(f".{path.name}.tmp"), frame.to_csv(index=False).encode())

        run.write_csv_atomic = write_csv  # type: ignore[assignment]
    elif point == "kill-summary":
        original_json = run.write_json_atomic

        def write_json(path: Path, data: object) -> None:
            if path.name == "summary.json":
                _die_half_written(path.with_name(f".{path.name}.tmp"), json.dumps(data, default=str).encode())
            original_json(path, data)

        run.write_json_atomic = write_json  # type: ignore[assignment]
    elif point == "enospc-summary":
        folders: list[Path] = []

        def guard(original: Any) -> Any:
            def write(path: Path, data: object) -> None:
                folder = Path(path).parent
                if path.name == "spec.json" and folder not in folders:
                    folders.append(folder)
                if len(folders) >= 2 and folder == folders[1] and (folder / "metrics.csv").is_file():
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                original(path, data)
            return write

        run.write_json_atomic = guard(run.write_json_atomic)  # type: ignore[assignment]
        run_folder.write_json_atomic = guard(run_folder.write_json_atomic)  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown injection point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from medseg_bench.cli.app import app

    sys.argv = ["medseg-bench", *sys.argv[2:]]
    app()
