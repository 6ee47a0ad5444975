"""Run a picklable function over items in worker processes, with an optional rich progress bar."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers(num_items: int) -> int:
    return max(1, min(num_items, os.cpu_count() or 1, 8))


class WorkerPool(ProcessPoolExecutor):
    """A process pool that says how many workers it has (`workers`): a caller sizes its work by them (chunks,
    cases at once), and ProcessPoolExecutor keeps that number private."""

    def __init__(self, workers: int, **kwargs: Any) -> None:
        super().__init__(max_workers=workers, **kwargs)
        self.workers = workers


def pool_size(pool: Executor | None, workers: int | None, num_items: int) -> int:
    """How many processes work on `num_items` items: `pool`'s workers (another kind of executor: one per CPU,
    an upper bound, so that what is sized by it never counts on fewer), else `workers`, else
    `default_workers`; one for a single item."""
    if pool is not None:
        return pool.workers if isinstance(pool, WorkerPool) else os.cpu_count() or 1
    return 1 if num_items <= 1 else workers or default_workers(num_items)


def _die_with_parent(parent: int, tie: bool, setup: Callable[..., object] | None = None,
                     setup_args: tuple[object, ...] = ()) -> None:
    """Pool initializer. With `tie` (Linux), the kernel kills this worker as soon as the process that started
    it dies, kill -9 included: a killed command leaves no worker behind, blocked on a dead pipe or still
    writing into a folder that the next command rebuilds. Ctrl-C (SIGINT to the terminal's process group) is
    left to the parent, which stops the workers (`worker_pool`): each worker printed its own KeyboardInterrupt
    traceback before the command's one-line error."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if tie:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux
            pass
    if os.getppid() != parent:  # the parent is already gone: nobody would read our results
        os._exit(1)
    if setup is not None:
        setup(*setup_args)


@contextmanager
def worker_pool(workers: int, setup: Callable[..., object] | None = None,
                setup_args: tuple[object, ...] = ()) -> Iterator[WorkerPool | None]:
    """A pool of `workers` spawned processes to share between stages (None for in-process work); each worker
    runs `setup(*setup_args)` first (a picklable module-level function).

    When the block raises (a failed item, Ctrl-C, SIGTERM), queued work is cancelled and the workers are
    terminated at once instead of finishing every queued item: what they write is written atomically.
    """
    if workers <= 1:
        yield None
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork is unsafe with threads (ITK, torch)
    # The kernel ties a worker to the thread that started it: only the main thread lives as long as we do.
    tie = threading.current_thread() is threading.main_thread()
    pool = WorkerPool(workers, mp_context=context, initializer=_die_with_parent,
                      initargs=(os.getpid(), tie, setup, setup_args))
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        # The pool's manager thread (shutdown forgets it): left running, it would wake at the interpreter's
        # exit on a pipe already closed and print a traceback after our one-line error.
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        if manager is not None:
            manager.join(timeout=10)
        raise
    pool.shutdown(wait=True)


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int | None = None,
    progress: bool = False,
    description: str = "",
    pool: Executor | None = None,
    at_once: int | None = None,
) -> list[R]:
    """`[fn(x) for x in items]` in worker processes (`pool`, else a pool of `workers`; in-process when 1).

    Results come in input order. Work is handed out in chunks so that small items (a 40 kB Hippocampus case)
    do not drown in inter-process overhead. `at_once`: at most that many items are worked on at the same
    time, however many workers the pool has (each item needs much memory: `preprocess.build_cache`).
    """
    count = pool_size(pool, workers, len(items))
    if pool is None:
        count = min(count, at_once or count)
        with worker_pool(count) as own:
            return _map(fn, items, own, count, progress, description, at_once)
    return _map(fn, items, pool, count, progress, description, at_once)


def _map(
    fn: Callable[[T], R], items: Sequence[T], pool: Executor | None, workers: int, progress: bool,
    description: str, at_once: int | None = None,
) -> list[R]:
    """`parallel_map` in `pool` (of `workers` processes), or in this process without one."""
    from rich.console import Console

    from medseg_bench.progress import step_bar

    results: list[R] = []
    console = Console(stderr=True)  # a bar only on a terminal: elsewhere rich left an empty line per bar
    with step_bar(description or f"{len(items)} item{'' if len(items) == 1 else 's'}", len(items), console,
                  progress and console.is_terminal) as advance:
        if pool is None:
            for item in items:
                results.append(fn(item))
                advance()
            return results
        if at_once is not None and at_once < workers:
            return _bounded(fn, items, pool, at_once, advance)
        chunk = max(1, min(16, len(items) // (workers * 4)))
        for result in pool.map(fn, items, chunksize=chunk):
            results.append(result)
            advance()
    return results


def _bounded(fn: Callable[[T], R], items: Sequence[T], pool: Executor, at_once: int,
             advance: Callable[[], object]) -> list[R]:
    """`[fn(x) for x in items]` in `pool`, never more than `at_once` items at a time (at least one), each
    handed out as the one before it finishes; the first failure is raised as soon as it is seen."""
    from concurrent.futures import FIRST_COMPLETED, Future, wait

    results: dict[int, R] = {}
    running: dict[Future[R], int] = {}
    queue = iter(enumerate(items))
    while True:
        for index, item in queue:
            running[pool.submit(fn, item)] = index
            if len(running) >= max(1, at_once):
                break
        if not running:
            return [results[i] for i in range(len(items))]
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            results[running.pop(future)] = future.result()
            advance()
