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

Answered requests also go to the usage ledger that billing reads: :meth:`UsageMeter.take`
hands the counts gathered since the last flush (per tenant, task and clock hour; real task
names, never capped: only tasks that exist answer) to the runtime, which adds them to the
registry every ``usage_flush_s``; counts that could not be written are given back and go with
the next flush.

Used from the event loop only; no locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from service.errors import InvalidRequestError
from service.registry.base import HOUR_S, UsageRecord, clock_hour, sum_usage
from service.tasks import TaskRef

Outcome = Literal["ok", "rejected", "error"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the per-tenant latency histogram."""

OTHER_TASKS = "_other"

MAX_PERIOD = timedelta(days=366)


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
        self._pending: list[UsageRecord] = []  # answered requests not yet in the ledger

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
            self._pending.append(UsageRecord(ref.tenant, ref.task, clock_hour(), 1, rows, tokens))
            if len(self._pending) > 4096:  # keep it compact between flushes
                self._pending = sum_usage(self._pending)

    def take(self) -> list[UsageRecord]:
        """The ledger counts since the last take, one record per tenant, task and hour."""
        pending, self._pending = sum_usage(self._pending), []
        return pending

    def give_back(self, records: list[UsageRecord]) -> None:
        """Counts a flush could not write: they go with the next one."""
        self._pending.extend(records)


@dataclass(frozen=True)
class UsageTotal:
    task: str
    requests: int
    rows: int
    tokens: int


@dataclass(frozen=True)
class UsageHour(UsageTotal):
    hour: datetime


@dataclass(frozen=True)
class UsagePeriod:
    """A tenant's ledger over whole clock hours: per task in total and hour by hour."""

    tenant: str
    since: datetime
    until: datetime
    totals: list[UsageTotal]
    hours: list[UsageHour]


def hours_between(since: datetime | None, until: datetime | None) -> tuple[int, int]:
    """The first and last clock hour (:func:`clock_hour`) a period touches; default: the last 24 h.
    InvalidRequestError for a period without a time zone, reversed or longer than MAX_PERIOD."""
    end = until or datetime.now(UTC)
    start = since or end - timedelta(days=1)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidRequestError("give since and until with a time zone, e.g. 2026-12-03T00:00:00Z")
    if not start < end or end - start > MAX_PERIOD:
        raise InvalidRequestError(f"since must be before until, at most {MAX_PERIOD.days} days apart")
    return clock_hour(start.timestamp()), clock_hour((end - timedelta(microseconds=1)).timestamp())


def period(tenant: str, first_hour: int, last_hour: int, records: list[UsageRecord]) -> UsagePeriod:
    def at(hour: int) -> datetime:
        return datetime.fromtimestamp(hour * HOUR_S, UTC)

    per_task = sorted(sum_usage([replace(r, hour=first_hour) for r in records]), key=lambda r: r.task)
    return UsagePeriod(
        tenant,
        at(first_hour),
        at(last_hour + 1),
        [UsageTotal(r.task, r.requests, r.rows, r.tokens) for r in per_task],
        [UsageHour(r.task, r.requests, r.rows, r.tokens, at(r.hour)) for r in records],
    )
