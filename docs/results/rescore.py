"""Re-score finished runs with the current code and compare with their metrics.csv.

Loads each run's `checkpoints/last.ckpt`, evaluates its held-out fold as a sweep would now (current cache,
inference and metrics), and prints the largest difference to the stored per-case scores. Used to check that a
pipeline-version change leaves the published Task04_Hippocampus numbers as they were:

    MEDSEG_BENCH_HOME=/tmp/home .venv/bin/python docs/results/rescore.py RESULTS/Task04_Hippocampus
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(folder: Path) -> None:
    import pandas as pd

    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.preprocess import prepare_task
    from medseg_bench.run import evaluate_fold
    from medseg_bench.settings import get_settings
    from medseg_bench.spec import RunSpec
    from medseg_bench.training import build_network, load_weights

    prepared_by_task: dict[tuple[str, int], Any] = {}
    for run in sorted(p for p in folder.iterdir() if (p / "metrics.csv").is_file()):
        data = json.loads((run / "spec.json").read_text())
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                if k not in ("run_id", "pipeline_version")}
        spec = RunSpec(**data)
        key = (spec.task, spec.num_folds)
        if key not in prepared_by_task:  # with the cache of 2D runs that keep their slices (version 11)
            prepared_by_task[key] = prepare_task(get_task(spec.task), get_settings().data_dir, spec.num_folds,
                                                 own_slices=True)
        prepared = prepared_by_task[key]
        net = load_weights(build_network(spec, prepared), run / "checkpoints" / "last.ckpt")
        new = evaluate_fold(net, spec, prepared, "cpu", spec.tta).reset_index(drop=True)
        old = pd.read_csv(run / "metrics.csv", dtype={"case": str, "label": str})
        new["label"] = new["label"].astype(str)
        columns = [c for c in old.columns if c in new.columns and c not in ("case", "label")]
        same_rows = old[["case", "label"]].equals(new[["case", "label"]])
        diff = None
        if same_rows:
            diff = (old[columns].astype(float) - new[columns].astype(float)).abs().max().max()
        print(f"{run.name}: same rows {same_rows}, largest difference over {len(columns)} metrics: {diff}",
              flush=True)


if __name__ == "__main__":  # the cache build uses a process pool (spawn): keep module import side-effect free
    main(Path(sys.argv[1]))
