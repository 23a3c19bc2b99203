"""The batching-policy curve against real server processes (tiny backbone, toy texts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.curve import CurveOptions, plot_curve, run_curve
from loadtest.errors import LoadTestError


def test_curve_sweeps_each_policy_and_plots(toy_data: Path, tmp_path: Path) -> None:
    options = CurveOptions(
        data=toy_data,
        texts="toy",
        backbone="roberta-tiny-random",
        rates=(5.0, 20.0),
        seconds_per_point=2.0,
        policies={
            "batch-1": {"max_batch_size": "1"},
            "dynamic": {"max_batch_size": "8", "max_wait_ms": "20"},
        },
        tasks=2,
    )
    messages: list[str] = []
    report = run_curve(options, messages.append)
    curves = report["curves"]
    assert isinstance(curves, dict)
    for policy in ("batch-1", "dynamic"):
        points = curves[policy]["points"]
        assert [p["offered_req_per_s"] for p in points] == [5.0, 20.0]
        assert all(p["errors"] == {} and p["inst_per_min"] > 0 for p in points)
    assert all(p["mean_batch_size"] == 1 for p in curves["batch-1"]["points"])
    assert curves["dynamic"]["points"][1]["mean_batch_size"] > 1, "a 20 ms wait at 20 req/s gathers rows"
    assert len(messages) == 4, "one progress line per point"
    plot_curve(report, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_rates_must_increase(toy_data: Path) -> None:
    with pytest.raises(LoadTestError, match="increasing"):
        CurveOptions(data=toy_data, rates=(4.0, 2.0))
