"""Worker pools: results in order, and a failed item leaves nothing running behind the command's error."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from medseg_bench.data.parallel import parallel_map, worker_pool


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("item 3 is bad")
    return x * x


def test_results_come_in_input_order() -> None:
    assert parallel_map(_fail_on_three, [5, 4, 2, 1, 0], workers=2) == [25, 16, 4, 1, 0]


def test_a_failed_item_stops_the_workers_and_the_pools_manager_thread() -> None:
    # shutdown(wait=False) left the pool's manager thread running: at the interpreter's exit it woke on a pipe
    # already closed, and "Exception ignored ... Bad file descriptor" with a traceback followed the command's
    # one-line error (evaluate, about 1 run in 10).
    with pytest.raises(ValueError, match="item 3 is bad"), worker_pool(2) as pool:
        assert pool is not None
        list(pool.map(_fail_on_three, range(8)))
    managers = [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread"]
    assert managers == []


_INTERRUPTED = """
import signal, sys, time
from medseg_bench.data.parallel import worker_pool

def square(x):
    return x * x

def late(*args):  # the parent stops its workers a second after Ctrl-C, not before they could print
    time.sleep(1)
    raise KeyboardInterrupt

if __name__ == "__main__":
    signal.signal(signal.SIGINT, late)  # not the workers': a spawned process starts with Python's own
    try:
        with worker_pool(2) as pool:
            assert list(pool.map(square, range(4))) == [0, 1, 4, 9]  # both workers started, now idle
            print("started", flush=True)
            time.sleep(60)  # the parent's own work: the next stage
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
"""


def test_ctrl_c_leaves_the_message_to_the_parent(tmp_path: Path) -> None:
    # Ctrl-C (SIGINT to the process group) while the cache was built: each worker printed a KeyboardInterrupt
    # traceback before the sweep's one line.
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED)
    root = str(Path(__file__).resolve().parents[2])
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env=os.environ | {"PYTHONPATH": root})
    assert process.stdout is not None and process.stdout.readline().strip() == "started"
    time.sleep(1)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr == "error: interrupted\n", stderr


def _alone(folder_and_item: tuple[str, int]) -> int:
    """How many items were being worked on at once while this one ran (marker files in a folder)."""
    import time
    from pathlib import Path

    folder, item = Path(folder_and_item[0]), folder_and_item[1]
    marker = folder / f"{item}.running"
    marker.touch()
    seen = 0
    for _ in range(20):
        seen = max(seen, len(list(folder.glob("*.running"))))
        time.sleep(0.01)
    marker.unlink()
    return seen * 100 + item


def test_at_once_bounds_the_items_worked_on_together(tmp_path: Path) -> None:
    # preprocessing a large case needs memory for several copies of it: `build_cache` lets fewer cases run
    # at once than the pool has workers
    items = [(str(tmp_path), i) for i in range(6)]
    with worker_pool(3) as pool:
        assert parallel_map(_alone, items, pool=pool, at_once=1) == [100 + i for i in range(6)]
        assert [r % 100 for r in parallel_map(_alone, items, pool=pool, at_once=2)] == list(range(6))
        assert max(parallel_map(_alone, items, pool=pool, at_once=2)) // 100 <= 2
    assert parallel_map(_alone, items[:2], workers=4, at_once=1) == [100, 101]


def test_at_once_raises_the_first_failure() -> None:
    with pytest.raises(ValueError, match="item 3 is bad"), worker_pool(2) as pool:
        parallel_map(_fail_on_three, [1, 3, 2, 4], pool=pool, at_once=1)


def test_a_pool_says_how_many_workers_it_has() -> None:
    # `build_cache` and `parallel_map` read ProcessPoolExecutor's private `_max_workers`, each with its own
    # default where it was missing (1 and 2): the count now travels with the pool
    from concurrent.futures import ThreadPoolExecutor

    from medseg_bench.data.parallel import WorkerPool, default_workers, pool_size

    with worker_pool(3) as pool:
        assert isinstance(pool, WorkerPool) and pool.workers == 3
        assert pool_size(pool, 8, 100) == 3  # the pool's, whatever else is asked
    with worker_pool(1) as none:
        assert none is None  # in-process work
    assert pool_size(None, 4, 100) == 4
    assert pool_size(None, None, 100) == default_workers(100)
    assert pool_size(None, 4, 1) == 1  # one item: no pool
    with ThreadPoolExecutor(2) as threads:  # another kind of executor: taken to have one per CPU
        assert pool_size(threads, None, 100) == (os.cpu_count() or 1)
        assert parallel_map(_fail_on_three, [5, 4], pool=threads) == [25, 16]
