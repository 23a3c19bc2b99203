"""Timing several code paths against each other on a noisy host, and the ratios that follow.

Every benchmark in this project compares variants measured in one process and one run (SPARTAN vs
the bare backbone, adapters, training methods), never absolute times across runs. Two helpers
serve them all:

* :func:`interleaved` runs each variant once per round, the order rotating every round, so no
  variant always runs first and all of them share whatever the host does meanwhile;
* :func:`median_ratio` is the median over rounds of a per-round ratio: variants of one round ran
  seconds apart, so the ratio of their measurements cancels most slow drift of the host.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def interleaved(
    variants: dict[str, Callable[[], object]],
    rounds: int,
    after_round: Callable[[int, dict[str, list[float]]], None] | None = None,
    grad: bool = False,
) -> dict[str, list[float]]:
    """Seconds per call of every variant: one warm-up call each, then ``rounds`` rounds in which
    every variant runs once, the order rotating each round. Autograd is off unless ``grad``
    (training steps need it)."""
    assert rounds >= 1, f"rounds must be at least 1, got {rounds}"
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    with torch.set_grad_enabled(grad):
        for fn in variants.values():
            fn()  # warm-up: allocator, first-call paths
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                tick = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - tick)
            if after_round is not None:
                after_round(r, times)
    return times


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of ``numerators[r] / denominators[r]``, rounded to 4 places.

    For times, ``median_ratio(t_reference, t_other)`` is other's throughput over the reference's;
    for rates, ``median_ratio(rate_other, rate_reference)`` is the same quantity."""
    return round(statistics.median(n / d for n, d in zip(numerators, denominators, strict=True)), 4)
