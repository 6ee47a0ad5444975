"""Sweeps: expand axes into run specs (`expand`), then run what is not done yet, locally (`local`) or on
SLURM (`slurm`); `worker.run_one` is how every launcher runs one run."""

from medseg_bench.sweep.expand import SweepRequest, expand
from medseg_bench.sweep.local import default_num_workers, run_sweep

__all__ = ["SweepRequest", "default_num_workers", "expand", "run_sweep"]
