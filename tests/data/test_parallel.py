"""Worker pools: results in order, and a failed item leaves nothing running behind the command's error."""

from __future__ import annotations

import threading

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
