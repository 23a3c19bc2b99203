"""The registry interface: where memory files live, versioned, and how changes are announced.

A registry stores, per task, a sequence of immutable versions (1, 2, 3, ...; numbers are never
reused, not even after a delete) and one *current* version. Writes are atomic: a reader sees the
previous current version or the new one, never a partial file. ``put`` takes an optional
``if_match`` version for compare-and-set. Every change is announced as a :class:`ChangeEvent`;
a replica that missed events catches up by comparing :meth:`Registry.current_versions`.

Backends: :class:`~service.registry.files.FileRegistry` (a directory, the embedded default) and
:class:`~service.registry.redis.RedisRegistry` (shared by replicas).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from service.errors import TaskNotFoundError, VersionConflictError


@dataclass(frozen=True)
class VersionInfo:
    """What the registry knows about one stored version (no tensor bytes)."""

    task: str
    version: int
    sha256: str
    size: int
    owner: str
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> VersionInfo:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class ChangeEvent:
    """Task ``task`` now has current version ``version`` (None: the task was deleted)."""

    task: str
    version: int | None


class Registry(ABC):
    """Versioned, atomic storage of memory files with change events."""

    @abstractmethod
    async def put(
        self,
        task: str,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        owner: str,
        if_match: int | None = None,
        any_owner: bool = False,
    ) -> VersionInfo:
        """Store ``data`` as the task's next version and make it current.

        A new task belongs to ``owner``. An existing task owned by someone else is invisible
        (TaskNotFoundError) unless ``any_owner`` (admin); its owner is kept. ``if_match``: the
        version the caller believes current (0 = the task must not exist), else
        VersionConflictError and nothing is stored.
        """

    @abstractmethod
    async def current(self, task: str) -> VersionInfo | None:
        """The current version of a task, or None."""

    @abstractmethod
    async def read(self, task: str, version: int) -> bytes:
        """The bytes of one version; TaskNotFoundError if it is gone."""

    @abstractmethod
    async def list(self, after: str | None = None, limit: int = 100) -> list[VersionInfo]:
        """Current versions ordered by task id, starting after ``after``."""

    @abstractmethod
    async def delete(self, task: str, if_match: int | None = None) -> None:
        """Remove a task and all its versions; TaskNotFoundError if absent."""

    @abstractmethod
    async def current_versions(self) -> dict[str, int]:
        """Every task's current version (the catch-up view for replicas that missed events)."""

    @abstractmethod
    def events(self) -> AsyncIterator[ChangeEvent]:
        """Changes made through any client of this registry, as they happen."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise RegistryUnavailableError unless the backend answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and stop event delivery."""


def check_if_match(task: str, current: VersionInfo | None, if_match: int | None) -> None:
    """Compare-and-set: ``if_match`` must name the current version (0 = no current version)."""
    if if_match is None:
        return
    actual = current.version if current is not None else 0
    if actual != if_match:
        raise VersionConflictError(f"task {task!r} is at version {actual}, not {if_match}")


def next_version(
    task: str,
    current: VersionInfo | None,
    last_issued: int,
    data: bytes,
    sha256: str,
    metadata: dict[str, Any],
    owner: str,
    if_match: int | None,
    any_owner: bool,
) -> VersionInfo:
    """The checks every backend makes before a put (the owner, If-Match) and the new version's
    record; ``last_issued`` is the highest version number ever issued for the task."""
    if current is not None and current.owner != owner and not any_owner:
        raise TaskNotFoundError(f"task {task!r} not found")
    check_if_match(task, current, if_match)
    return VersionInfo(
        task=task,
        version=last_issued + 1,
        sha256=sha256,
        size=len(data),
        owner=current.owner if current is not None else owner,
        created_at=time.time(),
        metadata=metadata,
    )
