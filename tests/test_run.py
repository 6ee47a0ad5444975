"""What a finished run records about its scores."""

from __future__ import annotations

import pandas as pd
import pytest

from medseg_bench.run import summary_means


def test_summary_means_are_the_reports_case_means() -> None:
    # case a: 0.9 and 0.5; case b: 0.9 and both masks empty (NaN). The report's mean is (0.7 + 0.9) / 2 = 0.8;
    # pooling the three label rows would give 0.7667.
    rows = pd.DataFrame({"case": ["a", "a", "b", "b"], "label": [1, 2, 1, 2],
                         "dice": [0.9, 0.5, 0.9, float("nan")], "hd95": [1.0, 3.0, 2.0, float("nan")]})
    assert summary_means(rows) == {"dice": pytest.approx(0.8), "hd95": pytest.approx(2.0)}


def test_a_run_log_line_that_cannot_be_written_prints_no_traceback(tmp_path, capsys) -> None:
    import errno
    import logging

    from medseg_bench.run import _RunLog

    class _FullStream:
        def write(self, text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

    handler = _RunLog(tmp_path / "run.log", delay=True)
    handler.stream = _FullStream()  # type: ignore[assignment]
    log = logging.getLogger("medseg_bench.test_run_log")
    log.addHandler(handler)
    try:
        log.error("a line on a full disk")
    finally:
        log.removeHandler(handler)
    assert "Logging error" not in capsys.readouterr().err
