"""What preprocessing one case needs in memory, and so how many cases the cache build works on at once.

Reading, cropping, normalising and resampling a case holds several copies of it at a time: the image as read
(float32), float64 copies of each channel and of each label's mask while they are resampled (scipy's zoom
works in float64, its spline prefilter on a copy of its own), the resampled channels before and after they
are stacked. `peak_bytes` is an upper envelope of the peak resident memory measured above a worker's own
(`bench/preprocess_memory.py`: 18 cases of 1 to 4 channels, int16/float32/float64, up- and downsampled, with
and without a separate slice axis, each after a small case that loads what a worker loads once; the envelope
is 1.13 to 2.78 times what each measured, the most where nothing is resampled). `least_bytes` counts only
arrays that are certainly held at the same time.

A case whose `least_bytes` exceeds the memory this process may use (`checks.usable_memory`: the machine's,
a container's or SLURM job's limit, `ulimit -v`) cannot be preprocessed: the cache build stops before it
starts, naming the case's image (a plan.json edited to a target spacing 10 times finer asks 1000 times the
voxels). Else at most as many cases as fit by `peak_bytes` beside every worker's own memory are worked on at
once (`cases_at_once`, through `items_at_once`, which the stages before it use too: `read_memory.py`),
however many workers there are: nnU-Net's `-np` left to the user, whose workers the kernel killed on a large
CT task. A per-process limit (`ulimit -v`) bounds each case alone, not how many run at once: each worker
process has its own; a case is held to it by `least_bytes`, all of them arrays it allocates, so a case over
it certainly fails (the worker's own address space, libraries mapped but not resident, thread arenas, is
larger than its resident memory and varies: left out, a case just under the limit may still fail).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg_bench.checks import MemoryLimit
from medseg_bench.errors import DataError

# bytes per voxel: of each channel as read, of the cropped case (all channels together), of each resampled
# channel, of the resampled case; the envelope of `bench/preprocess_memory.py`'s measurements, rounded up
PER_CHANNEL_READ, PER_CROPPED, PER_CHANNEL_RESAMPLED, PER_RESAMPLED = 9, 48, 5, 24
# a worker's own memory before it reads a case (Python, numpy, scipy, SimpleITK)
WORKER_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CaseSize:
    """A case's voxel counts through preprocessing: as read (`shape`), cropped, and resampled (z, y, x)."""

    image: Path
    channels: int
    shape: tuple[int, ...]
    cropped: tuple[int, ...]
    resampled: tuple[int, ...]

    @property
    def is_resampled(self) -> bool:
        return self.resampled != self.cropped


def peak_bytes(size: CaseSize) -> int:
    """At most the memory a worker uses while it preprocesses the case (`preprocess.preprocess_case`)."""
    read, cropped, resampled = (math.prod(s) for s in (size.shape, size.cropped, size.resampled))
    return WORKER_BYTES + (PER_CHANNEL_READ * size.channels * read + PER_CROPPED * cropped
                           + (PER_CHANNEL_RESAMPLED * size.channels + PER_RESAMPLED) * resampled)


def least_bytes(size: CaseSize) -> int:
    """Memory the case certainly holds at once while resampled: the image as read (float32) and its label map
    (uint8), the normalised crop (float32), and the resampled channels (float32) before and after they are
    stacked."""
    read, cropped, resampled = (math.prod(s) for s in (size.shape, size.cropped, size.resampled))
    stacked = 8 * size.channels * resampled if size.is_resampled else 0
    return (4 * size.channels + 1) * read + 4 * size.channels * cropped + stacked


def check_fits(size: CaseSize, memory: MemoryLimit | None, advice: str) -> None:
    """A DataError naming the case's image when it cannot be preprocessed even alone: its `least_bytes` are
    more than `memory`; `advice`: what else to do than give it more memory."""
    shown = " x ".join(str(n) for n in size.resampled)
    check_need(size.image, "preprocessing", least_bytes(size),
               f"{size.channels} channel(s), {shown} voxels at the plan's target spacing", memory, advice)


def check_need(image: Path, doing: str, need: int, what: str, memory: MemoryLimit | None,
               advice: str = "") -> None:
    """A DataError naming `image` when `doing` it ("preprocessing", "validating") needs `need` bytes at
    once, more than `memory` leaves (`MemoryLimit.available_bytes`: each limit less what the process holds of
    it; a per-process one bounds a case alone too); `what`: the sizes that
    make it so; `advice`: what else to do than give it more memory."""
    problem = need_problem(doing, need, what, memory, advice)
    if problem:
        raise DataError(f"{image}: {problem}")


def need_problem(doing: str, need: int, what: str, memory: MemoryLimit | None, advice: str = "") -> str:
    """`check_need`'s line without the image's name, "" where `need` fits: for a caller that lists the case
    as a problem rather than stopping on it (validation)."""
    if memory is None or need <= memory.available_bytes:
        return ""
    return (f"{doing} it needs at least {need / 2**30:.3g} GiB at once ({what}), more than {memory.room}; "
            "run with more memory" + (f", or {advice}" if advice else ""))


def check_all_fit(sizes: Sequence[CaseSize], memory: MemoryLimit | None, plan_file: Path) -> None:
    """A DataError naming the first case of a cache to build that cannot be preprocessed even alone
    (`check_fits`), with the plan whose target spacing to make coarser: what the cache build stops on."""
    for size in sizes:
        check_fits(size, memory, f"set a coarser \"target_spacing\" in {plan_file}")


def cases_at_once(sizes: Sequence[CaseSize], workers: int, memory: MemoryLimit | None,
                  plan_file: Path) -> int:
    """How many of the cases may be preprocessed at the same time, at most `workers`: as many of the
    largest as fit into `memory` by `peak_bytes` beside the `workers` processes' own memory (`WORKER_BYTES`
    each, working or not: a shared pool keeps all of them; at least one). A DataError naming the case's image
    when one cannot be preprocessed even alone (`least_bytes`)."""
    if not sizes or memory is None:
        return workers
    check_all_fit(sizes, memory, plan_file)
    # 8 workers, 2 of them at work: the 6 others hold their own memory too
    largest = max(peak_bytes(size) for size in sizes) - WORKER_BYTES
    return items_at_once(largest, workers, memory, workers * WORKER_BYTES)


def items_at_once(need: int, workers: int, memory: MemoryLimit | None, held: int,
                  threads: bool = False) -> int:
    """How many items needing `need` bytes each may be worked on at the same time, at most `workers` and at
    least one: as many as fit into the memory the workers share beside `held` bytes held however many are at
    work (the workers' own memory). Worker processes share `memory.shared_bytes`: a per-process limit
    (`ulimit -v`) bounds each alone, not how many (all of them where no shared limit is known); `threads`
    (one process) share every limit, a per-process one too. Either is what is left of it beside what the
    process holds already (`MemoryLimit.available_bytes`)."""
    total = None if memory is None else memory.available_bytes if threads else memory.shared_bytes
    if total is None:
        return workers
    return max(1, min(workers, (total - held) // max(1, need)))
