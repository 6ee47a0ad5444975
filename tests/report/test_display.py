"""Format-independent report text."""

from __future__ import annotations

from medseg_bench.report.display import _p_relation


def test_a_p_value_reads_as_prose() -> None:
    assert _p_relation(0.0123) == "= 0.0123"
    assert _p_relation(1e-9) == "< 0.0001"  # once "p = < 0.0001"
