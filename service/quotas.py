"""Per-tenant quotas: how much a tenant may store and how fast it may send, and its engine weight.

Quotas are set by the operator in the keys file (service.keysfile; ``spartan keys quota``): a
``default`` for every tenant and per-tenant entries that override it field by field. Unset
fields are unlimited.

* ``max_tasks`` and ``max_bytes`` limit what a tenant stores: the number of its tasks and the sum
  of their current memory files' sizes (the registry keeps up to ``keep_versions`` versions of
  each, so the disk a tenant uses is at most that many times ``max_bytes``). The registry checks
  them inside the write itself (service.registry.base.check_storage), so concurrent uploads on
  several replicas cannot overshoot.
* ``rows_per_second`` with ``burst_rows``: a token bucket per tenant and per replica, charged one
  token per text; behind N replicas a tenant gets up to N times the rate.
* ``weight``: the tenant's share of the engine when tenants compete (service.fairqueue).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.errors import PayloadTooLargeError, RateLimitedError
from service.tasks import TENANT_PATTERN

TenantName = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]


class Quota(BaseModel):
    """One tenant's limits; None = unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tasks: int | None = Field(None, ge=0, description="tasks the tenant may hold")
    max_bytes: int | None = Field(None, ge=0, description="sum of the sizes of its current memory files")
    rows_per_second: float | None = Field(
        None, gt=0, description="texts per second it may send (per replica)"
    )
    burst_rows: int | None = Field(
        None, ge=1, description="texts it may send at once (default: one second's worth, at least 1)"
    )
    weight: float = Field(1.0, gt=0, le=1000, description="its share of the engine when tenants compete")

    def over(self, base: Quota) -> Quota:
        """This quota's fields that were set explicitly, the others from ``base``."""
        return base.model_copy(update={name: getattr(self, name) for name in self.model_fields_set})

    @property
    def burst(self) -> int:
        if self.burst_rows is not None:
            return self.burst_rows
        return max(1, math.ceil(self.rows_per_second or 1))


class Quotas(BaseModel):
    """The ``quotas`` section of the keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Quota = Quota()
    tenants: dict[TenantName, Quota] = Field(
        {}, description="per tenant, overriding the default field by field"
    )

    def of(self, tenant: str) -> Quota:
        entry = self.tenants.get(tenant)
        return entry.over(self.default) if entry is not None else self.default


@dataclass
class _Bucket:
    rate: float
    capacity: int
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets, one per tenant with a rate; thread-safe, bounded by the configured tenants."""

    def __init__(self, quotas: Quotas, clock: Callable[[], float] = time.monotonic) -> None:
        self.quotas = quotas  # the quotas in force; replaced by update()
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def update(self, quotas: Quotas) -> None:
        """New quotas (a reloaded keys file); buckets of changed tenants start full again."""
        with self._lock:
            old, self.quotas = self.quotas, quotas
            for tenant in [t for t in self._buckets if old.of(t) != quotas.of(t)]:
                del self._buckets[tenant]

    def admit(self, tenant: str, rows: int) -> None:
        """Charge ``rows`` tokens or raise RateLimitedError (429, with when to retry)."""
        quota = self.quotas.of(tenant)
        if quota.rows_per_second is None:
            return
        if rows > quota.burst:
            raise PayloadTooLargeError(
                f"the request has {rows} texts; tenant {tenant!r} may send at most {quota.burst} at once "
                "(its burst_rows quota)"
            )
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(quota.rows_per_second, quota.burst, quota.burst, now)
            bucket.tokens = min(bucket.capacity, bucket.tokens + (now - bucket.updated) * bucket.rate)
            bucket.updated = now
            if bucket.tokens >= rows:
                bucket.tokens -= rows
                return
            wait = (rows - bucket.tokens) / bucket.rate
        raise RateLimitedError(
            f"tenant {tenant!r} is over its rate quota of {quota.rows_per_second:g} texts per second "
            f"(burst {quota.burst}); retry in {wait:.2f} s",
            retry_after=wait,
        )
