"""Run a picklable function over items in worker processes, with an optional rich progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers(num_items: int) -> int:
    return max(1, min(num_items, os.cpu_count() or 1, 8))


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A pool of `workers` spawned processes to share between stages (None for in-process work)."""
    if workers <= 1:
        yield None
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork is unsafe with threads (ITK, torch)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield pool


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int | None = None,
    progress: bool = False,
    description: str = "",
    pool: Executor | None = None,
) -> list[R]:
    """`[fn(x) for x in items]` in worker processes (`pool`, else a pool of `workers`; in-process when 1).

    Results come in input order. Work is handed out in chunks so that small items (a 40 kB Hippocampus case)
    do not drown in inter-process overhead.
    """
    if pool is None:
        with worker_pool(1 if len(items) <= 1 else workers or default_workers(len(items))) as own:
            return _map(fn, items, own, progress, description)
    return _map(fn, items, pool, progress, description)


def _map(
    fn: Callable[[T], R], items: Sequence[T], pool: Executor | None, progress: bool, description: str
) -> list[R]:
    from rich.progress import Progress

    results: list[R] = []
    with Progress(transient=True, disable=not progress) as bar:
        task_id = bar.add_task(description or f"{len(items)} items", total=len(items))
        if pool is None:
            for item in items:
                results.append(fn(item))
                bar.advance(task_id)
            return results
        workers = getattr(pool, "_max_workers", 2)
        chunk = max(1, min(16, len(items) // (workers * 4)))
        for result in pool.map(fn, items, chunksize=chunk):
            results.append(result)
            bar.advance(task_id)
    return results
