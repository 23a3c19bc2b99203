"""The registry interface: where memory files live, versioned, and how changes are announced.

Tasks live in tenant namespaces: every call names a :class:`~service.tasks.TaskRef` (tenant and
task), and a tenant's calls never reach another tenant's tasks. A registry stores, per task, a
sequence of immutable versions (1, 2, 3, ...; numbers are never reused, not even after a delete)
and one *current* version. Writes are atomic: a reader sees the previous current version or the
new one, never a partial file. ``put`` takes an optional ``if_match`` version for
compare-and-set. Every change is announced as a :class:`ChangeEvent`; a replica that missed
events catches up by comparing :meth:`Registry.current_states`.

A task may have a *candidate* on trial (:class:`Rollout`, kept in the current version's record):
a version stored by :meth:`Registry.stage` that is not current, served to a share of requests
(canary) or scored beside the current one (shadow) until :meth:`Registry.end_rollout` promotes
or aborts it. Every rollout change is announced like an upload.

Registries written before namespaces existed (one global namespace, each task owned by a tenant)
are moved into their owners' namespaces by :meth:`Registry.migrate`: idempotent, one task at a
time, each move atomic, so an interrupted migration is completed by running it again.

The registry also keeps the usage ledger that billing reads (:meth:`Registry.add_usage`,
:meth:`Registry.usage`): answered requests, texts and tokens per tenant, task and hour, added by
every replica and summed on read.

Backends: :class:`~service.registry.files.FileRegistry` (a directory, the embedded default) and
:class:`~service.registry.redis.RedisRegistry` (shared by replicas).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from service.errors import StorageQuotaError, VersionConflictError
from service.quotas import Quota
from service.tasks import TaskRef

RolloutMode = Literal["canary", "shadow"]


@dataclass(frozen=True)
class Rollout:
    """A candidate version on trial beside the current one: ``canary`` serves it to a ``share``
    of the task's requests; ``shadow`` scores it on live traffic without changing any answer."""

    version: int
    mode: RolloutMode
    share: float
    started_at: float


class TaskState(NamedTuple):
    """What replicas compare to catch up: the current version and the candidate's (0: none)."""

    version: int
    candidate: int


@dataclass(frozen=True)
class VersionInfo:
    """What the registry knows about one stored version (no tensor bytes); ``owner`` is the
    tenant whose namespace holds the task."""

    task: str
    version: int
    sha256: str
    size: int
    owner: str
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    restored_from: int | None = None
    """The older version whose bytes this one holds again (a rollback), or None."""
    rollout: Rollout | None = None
    """On the current version's record only: the candidate on trial, if any."""

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.owner, self.task)

    @property
    def state(self) -> TaskState:
        return TaskState(self.version, self.rollout.version if self.rollout else 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> VersionInfo:
        fields = json.loads(raw)
        rollout = fields.pop("rollout", None)
        return cls(**fields, rollout=Rollout(**rollout) if rollout else None)


HOUR_S = 3600
"""The usage ledger's unit of time: clock hours, numbered as Unix time // HOUR_S."""


def clock_hour(timestamp: float | None = None) -> int:
    """The number of the clock hour holding ``timestamp`` (Unix time; default: now)."""
    return int((time.time() if timestamp is None else timestamp) // HOUR_S)


@dataclass(frozen=True)
class UsageRecord:
    """Answered classify requests of one task in one clock hour (``hour``: :func:`clock_hour`)."""

    tenant: str
    task: str
    hour: int
    requests: int
    rows: int
    tokens: int


@dataclass(frozen=True)
class ChangeEvent:
    """Task ``ref`` now has current version ``version`` (None: the task was deleted) and
    candidate ``candidate`` (0: none)."""

    ref: TaskRef
    version: int | None
    candidate: int = 0


class Registry(ABC):
    """Versioned, atomic storage of memory files with change events."""

    @abstractmethod
    async def put(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        if_match: int | None = None,
        quota: Quota | None = None,
        restored_from: int | None = None,
    ) -> VersionInfo:
        """Store ``data`` as the task's next version and make it current.

        ``if_match``: the version the caller believes current (0 = the task must not exist),
        else VersionConflictError and nothing is stored. ``quota``: the tenant's storage limits,
        checked (:func:`check_storage`) atomically with the write, else StorageQuotaError.
        ``restored_from``: the older version ``data`` was read from (a rollback), recorded.
        """

    @abstractmethod
    async def current(self, ref: TaskRef) -> VersionInfo | None:
        """The current version of a task, or None."""

    @abstractmethod
    async def read(self, ref: TaskRef, version: int) -> bytes:
        """The bytes of one version; TaskNotFoundError if it is gone."""

    @abstractmethod
    async def versions(self, ref: TaskRef) -> builtins.list[VersionInfo]:
        """The task's kept versions, newest first (the current one first); TaskNotFoundError if
        the task does not exist. Versions stored before version records were kept are described
        from their bytes (sha256, size, time stored; no metadata)."""

    @abstractmethod
    async def list(self, tenant: str, after: str | None = None, limit: int = 100) -> list[VersionInfo]:
        """A tenant's current versions ordered by task id, starting after the task id ``after``."""

    @abstractmethod
    async def delete(self, ref: TaskRef, if_match: int | None = None) -> None:
        """Remove a task and all its versions; TaskNotFoundError if absent."""

    @abstractmethod
    async def stage(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        mode: RolloutMode,
        share: float,
        if_match: int | None = None,
        quota: Quota | None = None,
    ) -> VersionInfo:
        """Store ``data`` as the task's next version *without* making it current: it becomes the
        candidate of a rollout (replacing any earlier candidate). Returns the current record with
        its rollout. TaskNotFoundError without a current version; ``if_match``, ``quota`` as put."""

    @abstractmethod
    async def end_rollout(self, ref: TaskRef, promote: bool, if_match: int | None = None) -> VersionInfo:
        """Promote the candidate (it becomes current) or abort the rollout (the current version
        stays; the candidate, never current, is deleted); returns the new current record.
        TaskNotFoundError when the task has no candidate."""

    @abstractmethod
    async def current_states(self) -> dict[TaskRef, TaskState]:
        """Every tenant's tasks with their current and candidate versions (the catch-up view)."""

    @abstractmethod
    def events(self) -> AsyncIterator[ChangeEvent]:
        """Changes made through any client of this registry, as they happen."""

    @abstractmethod
    async def migrate(self) -> int:
        """Move tasks of the pre-namespace layout into their owners' namespaces; returns how many
        moved (0 when there is nothing left to move). Deleted tasks of that layout, which kept
        only their version counter, are dropped."""

    @abstractmethod
    async def add_usage(self, records: Sequence[UsageRecord]) -> None:
        """Add these counts to the usage ledger (every replica adds its own; they sum). Hours
        older than the registry's ``usage_retention_days`` are dropped from the ledger."""

    @abstractmethod
    async def usage(self, tenant: str, first_hour: int, last_hour: int) -> builtins.list[UsageRecord]:
        """The tenant's ledger from ``first_hour`` to ``last_hour`` (inclusive), summed over
        replicas: one record per task and hour, ordered by hour then task."""

    async def degraded(self) -> builtins.list[str]:
        """What readiness should report while the registry still answers (e.g. a full disk)."""
        return []

    @abstractmethod
    async def ping(self) -> None:
        """Raise RegistryUnavailableError unless the backend answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and stop event delivery."""


def check_if_match(ref: TaskRef, current: VersionInfo | None, if_match: int | None) -> None:
    """Compare-and-set: ``if_match`` must name the current version (0 = no current version)."""
    if if_match is None:
        return
    actual = current.version if current is not None else 0
    if actual != if_match:
        raise VersionConflictError(f"task {ref.task!r} is at version {actual}, not {if_match}")


def next_version(
    ref: TaskRef,
    current: VersionInfo | None,
    last_issued: int,
    data: bytes,
    sha256: str,
    metadata: dict[str, Any],
    if_match: int | None,
    restored_from: int | None = None,
) -> VersionInfo:
    """The check every backend makes before a put (If-Match) and the new version's record;
    ``last_issued`` is the highest version number ever issued for the task."""
    check_if_match(ref, current, if_match)
    return VersionInfo(
        task=ref.task,
        version=last_issued + 1,
        sha256=sha256,
        size=len(data),
        owner=ref.tenant,
        created_at=time.time(),
        metadata=metadata,
        restored_from=restored_from,
    )


def prunable(stored: Sequence[int], keep: int, current: VersionInfo) -> list[int]:
    """The version numbers to delete after a write: all but the newest ``keep``, never the
    current version or the candidate."""
    protected = {current.version, current.state.candidate}
    return [v for v in sorted(stored)[:-keep] if v not in protected]


def described(ref: TaskRef, version: int, data: bytes, stored_at: float) -> VersionInfo:
    """The record of a version stored before version records were kept: what its bytes say."""
    return VersionInfo(
        task=ref.task,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        owner=ref.tenant,
        created_at=stored_at,
    )


def limits_storage(quota: Quota | None) -> bool:
    return quota is not None and (quota.max_tasks is not None or quota.max_bytes is not None)


def check_storage(ref: TaskRef, tenant_tasks: list[VersionInfo], size: int, quota: Quota | None) -> None:
    """Would storing ``size`` bytes as ``ref``'s new version keep its tenant within ``quota``?
    ``tenant_tasks``: the current versions of every task of the tenant."""
    if quota is None:
        return
    others = [info for info in tenant_tasks if info.task != ref.task]
    if quota.max_tasks is not None and len(others) + 1 > quota.max_tasks:
        raise StorageQuotaError(
            f"tenant {ref.tenant!r} holds {len(others)} tasks, its quota (max_tasks); delete one "
            "or ask the operator to raise it. Nothing was stored"
        )
    total = sum(info.size for info in others) + size
    if quota.max_bytes is not None and total > quota.max_bytes:
        raise StorageQuotaError(
            f"storing {size} bytes would take tenant {ref.tenant!r} to {total} bytes of memories, over its "
            f"quota of {quota.max_bytes} (max_bytes). Nothing was stored"
        )


def sum_usage(records: list[UsageRecord]) -> list[UsageRecord]:
    """One record per (tenant, task, hour), ordered by hour then task."""
    totals: dict[tuple[str, str, int], list[int]] = {}
    for r in records:
        counts = totals.setdefault((r.tenant, r.task, r.hour), [0, 0, 0])
        counts[0] += r.requests
        counts[1] += r.rows
        counts[2] += r.tokens
    ordered = sorted(totals.items(), key=lambda item: (item[0][2], item[0][1]))
    return [UsageRecord(tenant, task, hour, *counts) for (tenant, task, hour), counts in ordered]
