"""The reload benchmark's summary of its samples."""

from __future__ import annotations

from benchmarks.reload_turnaround import summarize


def test_summary_of_samples() -> None:
    summary = summarize([300.0, 100.0, 200.0, 400.0, 1000.0, 150.0, 250.0, 350.0, 450.0, 500.0])
    assert summary == {"median_ms": 325.0, "p90_ms": 500.0, "min_ms": 100.0, "max_ms": 1000.0}
    assert summarize([42.0]) == {"median_ms": 42.0, "p90_ms": 42.0, "min_ms": 42.0,
                                 "max_ms": 42.0}
