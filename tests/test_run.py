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
