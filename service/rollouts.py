"""Canary and shadow trials of a candidate version: which version serves a request, and how the
candidate compares with the current version on live traffic.

A task's rollout (service.registry.base.Rollout) names its candidate and mode:

* ``canary``: a ``share`` of the task's requests is served by the candidate; each of those is also
  scored by the current version in the background, so the two can be compared on the same texts;
* ``shadow``: every request is served by the current version and also scored by the candidate
  in the background; no answer changes.

Background scores go through the engine like any request (the tenant's own queue share), at most
``max_in_flight`` at a time per replica; beyond that a comparison is skipped (counted), never
queued. :class:`TrialStats` keeps, per task and candidate, what each arm served and its latency,
and the agreement: the share of rows with the same label and the mean absolute difference of the
probabilities (of the value, for a regression). Numbers are per replica (metrics sum replicas).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.predictions import Prediction
from service.registry.base import Rollout

Arm = Literal["current", "candidate"]


@dataclass
class ArmStats:
    requests: int = 0
    latency_seconds: float = 0.0

    def record(self, seconds: float) -> None:
        self.requests += 1
        self.latency_seconds += seconds

    @property
    def mean_latency_s(self) -> float | None:
        return self.latency_seconds / self.requests if self.requests else None


def _arms() -> dict[Arm, ArmStats]:
    return {"current": ArmStats(), "candidate": ArmStats()}


@dataclass
class TrialStats:
    """One candidate's trial on this replica."""

    candidate: int
    served: dict[Arm, ArmStats] = field(
        default_factory=lambda: {"current": ArmStats(), "candidate": ArmStats()}
    )
    scored: dict[Arm, ArmStats] = field(
        default_factory=lambda: {"current": ArmStats(), "candidate": ArmStats()}
    )
    compared_rows: int = 0
    agreeing_rows: int = 0
    difference_sum: float = 0.0
    skipped: int = 0
    failed: int = 0

    def compare(self, current: Sequence[Prediction], candidate: Sequence[Prediction]) -> None:
        for mine, theirs in zip(current, candidate, strict=True):
            self.compared_rows += 1
            self.agreeing_rows += mine.label == theirs.label
            self.difference_sum += difference(mine, theirs)

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.compared_rows if self.compared_rows else None

    @property
    def mean_difference(self) -> float | None:
        return self.difference_sum / self.compared_rows if self.compared_rows else None


def difference(a: Prediction, b: Prediction) -> float:
    """Mean absolute difference of two predictions' probabilities over the union of their labels
    (a label one of them lacks counts as probability 0); of their values for a regression."""
    if a.scores is None or b.scores is None:
        return abs((a.value or 0.0) - (b.value or 0.0))
    labels = a.scores.keys() | b.scores.keys()
    return sum(abs(a.scores.get(label, 0.0) - b.scores.get(label, 0.0)) for label in labels) / len(labels)


def serving_arm(rollout: Rollout | None, draw: float | None = None) -> Arm:
    """Which version serves a request: the candidate for a canary's share, else the current."""
    if rollout is None or rollout.mode != "canary":
        return "current"
    return "candidate" if (random.random() if draw is None else draw) < rollout.share else "current"


def scores_other_arm(rollout: Rollout | None, served: Arm) -> bool:
    """Whether the other version scores this request in the background: every request of a
    shadow trial, and a canary's requests that the candidate served."""
    if rollout is None:
        return False
    return rollout.mode == "shadow" or served == "candidate"
