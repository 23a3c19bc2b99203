"""What the engine's deadline-aware admission measures: how fast the queue drains, how far its
estimates were off, and per tenant how they compared with the waits that followed.

The engine refuses a request (429) when the rows before its last one would take longer than its
deadline leaves (service.engine). The rows come from the queue (service.fairqueue); the seconds
per row and the margin on top come from here:

* :class:`DrainRate`: the engine's wall seconds per row served over its last few seconds of
  rounds, not one round (a round of one small batch for a light tenant costs more per row than
  a round of full ones, and the drain over a request's wait is the average of many rounds);
* :class:`Margin`: the high quantile of wait / estimate over recent admitted requests, so that
  whatever the estimate misses (Poisson bursts, rounds handed back, a CPU shared with the event
  loop) is measured and covered instead of ending in 504s;
* :class:`AdmissionStats`: per tenant, the expected and the actual waits, for the metrics.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass


class DrainRate:
    """Seconds per row over the most recent rounds that together last at least ``window_s``."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self._rounds: deque[tuple[float, int]] = deque()  # (wall seconds, rows served)
        self._seconds = 0.0
        self._rows = 0

    @property
    def row_seconds(self) -> float | None:
        """None until a round has served a row."""
        return self._seconds / self._rows if self._rows else None

    def observe(self, seconds: float, rows: int) -> None:
        if not rows:
            return
        self._rounds.append((seconds, rows))
        self._seconds += seconds
        self._rows += rows
        while len(self._rounds) > 1 and self._seconds - self._rounds[0][0] >= self.window_s:
            old_seconds, old_rows = self._rounds.popleft()
            self._seconds -= old_seconds
            self._rows -= old_rows


class Margin:
    """The factor admission multiplies its estimate by: the ``quantile`` of wait / estimate over
    the last ``size`` requests whose estimate was at least ``min_estimate_s`` (shorter ones are
    mostly noise), between 1 and ``most``; recomputed every ``every`` requests."""

    def __init__(
        self,
        quantile: float = 0.99,
        size: int = 512,
        min_estimate_s: float = 0.5,
        most: float = 4.0,
        every: int = 32,
    ) -> None:
        assert 0.5 <= quantile < 1.0, f"quantile must be in [0.5, 1), got {quantile}"
        self.quantile = quantile
        self.min_estimate_s = min_estimate_s
        self.most = most
        self.every = every
        self.factor = 1.0
        self._ratios: deque[float] = deque(maxlen=size)
        self._since = 0

    def observe(self, estimate: float, wait: float) -> None:
        """One admitted request: what it was expected to wait, and what it waited (until its
        answer, or until its deadline when it was late)."""
        if estimate < self.min_estimate_s:
            return
        self._ratios.append(wait / estimate)
        self._since += 1
        if self._since >= self.every and len(self._ratios) >= self.every:
            self._since = 0
            cuts = statistics.quantiles(self._ratios, n=100, method="inclusive")
            self.factor = min(self.most, max(1.0, cuts[round(100 * self.quantile) - 1]))


@dataclass
class AdmissionStats:
    """One tenant's admitted requests that had an estimate: the wait admission expected against
    the wait that followed, to tell a wrong estimate from a slow engine (written on the event
    loop, read by the metrics scrape)."""

    admitted: int = 0
    late: int = 0  # admitted, then not answered before the deadline (504)
    left_seconds: float = 0.0  # summed: time to the deadline at admission
    estimate_seconds: float = 0.0  # summed: the wait admission expected (before the margin)
    wait_seconds: float = 0.0  # summed: admission -> every row answered (or the deadline)
    late_estimate_seconds: float = 0.0  # the expected wait of the late ones only
    late_left_seconds: float = 0.0  # and their time to the deadline at admission

    def record(self, left: float, estimate: float, wait: float, late: bool) -> None:
        self.admitted += 1
        self.left_seconds += left
        self.estimate_seconds += estimate
        self.wait_seconds += wait
        if late:
            self.late += 1
            self.late_estimate_seconds += estimate
            self.late_left_seconds += left
