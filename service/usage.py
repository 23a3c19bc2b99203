"""Who used what: per-tenant and per-task counters and latency, for metrics and billing.

Every classify request is recorded once by the runtime, with its outcome:

* ``ok``: answered; its texts (rows) and real tokens count, its latency is observed;
* ``rejected``: refused with 429 (the tenant's rate quota, its share of the queue, a full queue);
* ``error``: any other failure (unknown task, bad input, deadline passed, ...).

Per tenant everything is kept (tenants are bounded: they come from the keys file). Requests for
tasks that do not exist count for their tenant only. Per task, the
first ``max_task_series`` (tenant, task) pairs seen get their own series; later ones are summed
under the task name ``_other`` of their tenant, so a tenant with random task ids cannot blow up
the metrics. Counters only grow; they are per replica (Prometheus sums replicas).

Used from the event loop only; no locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from service.tasks import TaskRef

Outcome = Literal["ok", "rejected", "error"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the per-tenant latency histogram."""

OTHER_TASKS = "_other"


@dataclass
class Counts:
    requests: int = 0
    rows: int = 0
    tokens: int = 0
    rejected: int = 0
    errors: int = 0


@dataclass
class TenantUsage(Counts):
    latency_sum: float = 0.0
    latency_histogram: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))  # <= each bound


class UsageMeter:
    def __init__(self, max_task_series: int = 1000) -> None:
        self.max_task_series = max_task_series
        self.tenants: dict[str, TenantUsage] = {}
        self.tasks: dict[tuple[str, str], Counts] = {}

    def record(
        self, ref: TaskRef, outcome: Outcome, rows: int, tokens: int, seconds: float, known: bool = True
    ) -> None:
        """One classify request; ``known`` False (no such task): counted for the tenant only."""
        tenant = self.tenants.setdefault(ref.tenant, TenantUsage())
        key = (ref.tenant, ref.task)
        if key not in self.tasks and len(self.tasks) >= self.max_task_series:
            key = (ref.tenant, OTHER_TASKS)
        targets: list[Counts] = [tenant, self.tasks.setdefault(key, Counts())] if known else [tenant]
        for counts in targets:
            counts.requests += 1
            if outcome == "ok":
                counts.rows += rows
                counts.tokens += tokens
            elif outcome == "rejected":
                counts.rejected += 1
            else:
                counts.errors += 1
        if outcome == "ok":
            tenant.latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    tenant.latency_histogram[i] += 1
