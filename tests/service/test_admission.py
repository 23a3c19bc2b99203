"""Admission's measurements: the drain rate over recent rounds and the margin from past errors."""

from __future__ import annotations

import pytest

from service.admission import DrainRate, Margin


def test_the_drain_rate_is_rows_over_seconds_of_the_last_rounds_that_cover_the_window() -> None:
    drain = DrainRate(window_s=3.0)
    assert drain.row_seconds is None
    drain.observe(1.0, 0)  # a round that served nothing says nothing
    assert drain.row_seconds is None
    drain.observe(1.0, 10)
    drain.observe(1.0, 30)
    assert drain.row_seconds == pytest.approx(2.0 / 40)
    drain.observe(2.0, 10)  # now 4 s of rounds: the oldest one is dropped, 3 s remain
    assert drain.row_seconds == pytest.approx(3.0 / 40)
    drain.observe(10.0, 100)  # one long round alone covers the window
    assert drain.row_seconds == pytest.approx(0.1)


def test_the_margin_covers_the_high_quantile_of_how_far_estimates_fell_short() -> None:
    margin = Margin(quantile=0.9, size=100, min_estimate_s=0.5, most=3.0, every=10)
    for _ in range(50):
        margin.observe(2.0, 1.0)  # waits shorter than expected: no margin
    assert margin.factor == 1.0
    for i in range(100):
        margin.observe(2.0, 2.0 * (1.0 + i / 100))  # ratios 1.00 .. 1.99
    assert margin.factor == pytest.approx(1.9, abs=0.02)
    for _ in range(100):
        margin.observe(0.1, 10.0)  # short estimates are noise: ignored
    assert margin.factor == pytest.approx(1.9, abs=0.02)
    for _ in range(100):
        margin.observe(1.0, 10.0)
    assert margin.factor == 3.0, "never more than most"
