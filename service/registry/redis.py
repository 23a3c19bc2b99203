"""The Redis registry: shared by every replica.

Keys, with ``t`` and ``k`` the hex of the tenant and the task id (names never appear raw in
keys) and ``p`` the prefix::

    p:ns:t:k:v:<n>     bytes of version n (immutable; the oldest beyond keep_versions are deleted)
    p:ns:t:k:vi:<n>    VersionInfo JSON of version n (for the version list; deleted with the bytes)
    p:ns:t:k:counter   last version number issued (survives deletes, so numbers are never reused)
    p:ns:t:k:current   VersionInfo JSON of the current version
    p:index            sorted set of "tenant/task" (a tenant's tasks are one range, in id order)
    p:gen:t            bumped by every put and delete of the tenant (watched by quota checks)
    p:usage:t:<hour>   hash "<task>|requests|rows|tokens" -> count, added to by every replica
                       (expires usage_retention_days after its hour)
    p:events           pub/sub channel: {"tenant": ..., "task": ..., "version": n | null}

A put or delete is one MULTI/EXEC transaction under WATCH of the task's current and counter
keys (redis-py's transaction helper): if another client changed them in between, the
transaction is retried, so compare-and-set (If-Match) is exact. A put with storage limits also
watches the tenant's ``gen`` key and reads its tasks' sizes in the same transaction, so two
replicas uploading at once cannot take a tenant over its quota. The event is published inside
the same transaction.

The layout before namespaces used ``p:task:k:...`` and a sorted set ``p:tasks`` of bare ids;
:meth:`RedisRegistry.migrate` renames each task's keys into its owner's namespace in one
transaction per task.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import OutOfMemoryError, RedisError

from service.errors import RegistryFullError, RegistryUnavailableError, TaskNotFoundError
from service.quotas import Quota
from service.registry.base import (
    HOUR_S,
    ChangeEvent,
    Registry,
    Rollout,
    RolloutMode,
    TaskState,
    UsageRecord,
    VersionInfo,
    check_if_match,
    check_storage,
    described,
    limits_storage,
    next_version,
    prunable,
    sum_usage,
)
from service.tasks import TaskRef, storage_key

T = TypeVar("T")

log = logging.getLogger(__name__)


UNKNOWN_TIME = 0.0
"""``created_at`` of a version stored before version records were kept (Redis kept no time)."""


class RedisRegistry(Registry):
    def __init__(
        self, url: str, prefix: str = "spartan", keep_versions: int = 3, usage_retention_days: int = 400
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.keep_versions = keep_versions
        self.usage_retention_days = usage_retention_days
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=10
        )
        self.channel = f"{prefix}:events"
        self.index = f"{prefix}:index"

    def _key(self, ref: TaskRef, *parts: str) -> str:
        return ":".join((self.prefix, "ns", storage_key(ref.tenant), storage_key(ref.task), *parts))

    def _event(self, ref: TaskRef, current: VersionInfo | None) -> str:
        """The announcement of ``ref``'s new state (``current`` None: deleted)."""
        version, candidate = current.state if current is not None else (None, 0)
        return json.dumps(
            {"tenant": ref.tenant, "task": ref.task, "version": version, "candidate": candidate}
        )

    async def _transaction(self, body: Callable[[Pipeline], Awaitable[T]], *watched: str) -> T:
        """Run ``body`` under WATCH of ``watched`` as one MULTI/EXEC, retried by redis-py whenever
        another client changed a watched key in between; returns what ``body`` returned."""
        result: T = await self._call(
            lambda: self._redis.transaction(body, *watched, value_from_callable=True)
        )
        return result

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except OutOfMemoryError:
            raise RegistryFullError(
                "the registry is full (Redis reached its maxmemory): nothing was stored; an operator "
                "must raise maxmemory or free memory, then retry"
            ) from None
        except RedisError as exc:
            raise RegistryUnavailableError(
                f"the Redis registry is unavailable ({type(exc).__name__})"
            ) from exc

    def _gen(self, tenant: str) -> str:
        return f"{self.prefix}:gen:{storage_key(tenant)}"

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
        def plan(current: VersionInfo | None, issued: int) -> tuple[VersionInfo, VersionInfo]:
            info = next_version(ref, current, issued, data, sha256, metadata, if_match, restored_from)
            return info, info

        return await self._store(ref, data, quota, plan)

    async def _store(
        self,
        ref: TaskRef,
        data: bytes,
        quota: Quota | None,
        plan: Callable[[VersionInfo | None, int], tuple[VersionInfo, VersionInfo]],
    ) -> VersionInfo:
        """Store ``data`` as a new version in one transaction. ``plan(current, last issued)`` gives
        the stored version's record and the task's new current record (or raises: nothing is
        written); the tenant's quota is checked in the same transaction."""
        current_key, counter_key = self._key(ref, "current"), self._key(ref, "counter")
        watched = [current_key, counter_key]
        if limits_storage(quota):
            watched.append(self._gen(ref.tenant))

        async def transaction(pipe: Pipeline) -> VersionInfo:
            raw, issued = await pipe.get(current_key), await pipe.get(counter_key)
            stored, current = plan(VersionInfo.from_json(raw) if raw else None, int(issued or 0))
            if limits_storage(quota):
                tenant_tasks = await self._read_index(pipe, *self._tenant_range(ref.tenant))
                check_storage(ref, tenant_tasks, len(data), quota)
            pipe.multi()
            pipe.incr(self._gen(ref.tenant))
            pipe.set(self._key(ref, "v", str(stored.version)), data)
            pipe.set(self._key(ref, "vi", str(stored.version)), stored.to_json())
            pipe.set(counter_key, stored.version)
            pipe.set(current_key, current.to_json())
            pipe.zadd(self.index, {str(ref): 0})
            self._prune(pipe, ref, current)
            pipe.publish(self.channel, self._event(ref, current))
            return current

        return await self._transaction(transaction, *watched)

    def _prune(self, pipe: Pipeline, ref: TaskRef, current: VersionInfo) -> None:
        """Delete the version that a write pushed out of the kept window (one per write)."""
        newest = max(current.state)
        for version in prunable([newest - self.keep_versions, newest], 1, current):
            if version > 0:
                pipe.delete(*self._version_keys(ref, version))

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
        def plan(current: VersionInfo | None, issued: int) -> tuple[VersionInfo, VersionInfo]:
            if current is None:
                raise TaskNotFoundError(f"task {ref.task!r} not found")
            candidate = next_version(ref, current, issued, data, sha256, metadata, if_match)
            rollout = Rollout(candidate.version, mode, share, candidate.created_at)
            return candidate, replace(current, rollout=rollout)

        return await self._store(ref, data, quota, plan)

    async def end_rollout(self, ref: TaskRef, promote: bool, if_match: int | None = None) -> VersionInfo:
        current_key = self._key(ref, "current")

        async def transaction(pipe: Pipeline) -> VersionInfo:
            raw = await pipe.get(current_key)
            if not raw:
                raise TaskNotFoundError(f"task {ref.task!r} not found")
            current = VersionInfo.from_json(raw)
            check_if_match(ref, current, if_match)
            if current.rollout is None:
                raise TaskNotFoundError(f"task {ref.task!r} has no candidate on trial")
            ended = replace(current, rollout=None)
            if promote:
                record = await pipe.get(self._key(ref, "vi", str(current.rollout.version)))
                if not record:
                    raise TaskNotFoundError(f"task {ref.task!r}: the candidate's version is gone")
                ended = VersionInfo.from_json(record)
            pipe.multi()
            pipe.set(current_key, ended.to_json())
            if not promote:  # never current: an aborted candidate is not kept
                pipe.delete(*self._version_keys(ref, current.rollout.version))
            pipe.publish(self.channel, self._event(ref, ended))
            return ended

        return await self._transaction(transaction, current_key)

    def _version_keys(self, ref: TaskRef, version: int) -> tuple[str, str]:
        return self._key(ref, "v", str(version)), self._key(ref, "vi", str(version))

    async def current(self, ref: TaskRef) -> VersionInfo | None:
        raw = await self._call(lambda: self._redis.get(self._key(ref, "current")))
        return VersionInfo.from_json(raw) if raw else None

    async def read(self, ref: TaskRef, version: int) -> bytes:
        data = await self._call(lambda: self._redis.get(self._key(ref, "v", str(version))))
        if not isinstance(data, bytes):
            raise TaskNotFoundError(f"task {ref.task!r} has no version {version}")
        return data

    async def versions(self, ref: TaskRef) -> builtins.list[VersionInfo]:
        current = await self.current(ref)
        if current is None:
            raise TaskNotFoundError(f"task {ref.task!r} not found")
        older = range(current.version, max(0, current.version - self.keep_versions), -1)
        numbers = [*([current.rollout.version] if current.rollout else []), *older]
        records = await self._call(lambda: self._redis.mget([self._key(ref, "vi", str(v)) for v in numbers]))
        kept = []
        for version, record in zip(numbers, records, strict=True):
            if record or version == current.version:
                kept.append(VersionInfo.from_json(record) if record else current)
                continue
            with contextlib.suppress(TaskNotFoundError):  # pruned, or stored before records were kept
                kept.append(described(ref, version, await self.read(ref, version), UNKNOWN_TIME))
        return kept

    async def _read_index(
        self, client: aioredis.Redis | Pipeline, start: str, stop: str, limit: int | None = None
    ) -> list[VersionInfo]:
        """Current versions of the index members in the lexicographic range (start, stop), read
        through ``client``: the connection, or a pipeline inside a transaction."""
        page = {"start": 0, "num": limit} if limit is not None else {}
        members = await client.zrangebylex(self.index, start, stop, **page)
        if not members:
            return []
        refs = [TaskRef.parse(_text(m)) for m in members]
        raws = await client.mget([self._key(r, "current") for r in refs])
        return [VersionInfo.from_json(raw) for raw in raws if raw]

    async def _index_page(self, start: str, stop: str, limit: int) -> list[VersionInfo]:
        return await self._call(lambda: self._read_index(self._redis, start, stop, limit))

    @staticmethod
    def _tenant_range(tenant: str, after: str | None = None) -> tuple[str, str]:
        """The index range of a tenant's tasks (after the task id ``after``); "/" sorts just
        before "0", the lowest character a task id may start with."""
        return (f"({tenant}/{after}" if after is not None else f"[{tenant}/"), f"({tenant}0"

    async def list(self, tenant: str, after: str | None = None, limit: int = 100) -> list[VersionInfo]:
        return await self._index_page(*self._tenant_range(tenant, after), limit)

    async def delete(self, ref: TaskRef, if_match: int | None = None) -> None:
        current_key = self._key(ref, "current")

        async def transaction(pipe: Pipeline) -> None:
            raw = await pipe.get(current_key)
            if not raw:
                raise TaskNotFoundError(f"task {ref.task!r} not found")
            current = VersionInfo.from_json(raw)
            check_if_match(ref, current, if_match)
            first = max(1, current.version - self.keep_versions + 1)
            pipe.multi()
            pipe.incr(self._gen(ref.tenant))
            kept = [
                *range(first, current.version + 1),
                *([current.rollout.version] if current.rollout else []),
            ]
            pipe.delete(current_key, *(key for v in kept for key in self._version_keys(ref, v)))
            pipe.zrem(self.index, str(ref))
            pipe.publish(self.channel, self._event(ref, None))

        await self._transaction(transaction, current_key)

    async def current_states(self) -> dict[TaskRef, TaskState]:
        states: dict[TaskRef, TaskState] = {}
        start = "-"
        while page := await self._index_page(start, "+", 500):
            states.update((info.ref, info.state) for info in page)
            start = f"({page[-1].ref}"
        return states

    async def _migrate_task(self, task_hex: str) -> bool:
        """Move one task of the old layout into its owner's namespace; False if already gone."""
        legacy = f"{self.prefix}:task:{task_hex}"
        current_key, counter_key = f"{legacy}:current", f"{legacy}:counter"

        async def transaction(pipe: Pipeline) -> bool:
            raw = await pipe.get(current_key)
            versions = [key async for key in pipe.scan_iter(f"{legacy}:v:*")]
            if not raw:  # moved by another migrator, or deleted (only the counter is left)
                pipe.multi()
                pipe.delete(counter_key)
                return False
            info = VersionInfo.from_json(raw)
            ref = info.ref
            if await pipe.exists(self._key(ref, "counter")):
                log.error("not migrating %s: the task already exists in its namespace; kept as it is", ref)
                return False
            pipe.multi()
            for key in versions:
                version = _text(key).rsplit(":", 1)[1]
                pipe.rename(key, self._key(ref, "v", version))
            pipe.rename(counter_key, self._key(ref, "counter"))
            pipe.rename(current_key, self._key(ref, "current"))
            pipe.zadd(self.index, {str(ref): 0})
            pipe.zrem(f"{self.prefix}:tasks", ref.task)
            pipe.publish(self.channel, self._event(ref, info))
            return True

        return await self._transaction(transaction, current_key, counter_key)

    async def migrate(self) -> int:
        pattern = f"{self.prefix}:task:*:counter"
        counters = await self._call(lambda: _collect(self._redis.scan_iter(pattern, count=500)))
        moved = 0
        for key in counters:
            task_hex = _text(key).split(":")[-2]
            moved += await self._migrate_task(task_hex)
        if moved:
            log.info("moved %d tasks of the pre-namespace layout into their owners' namespaces", moved)
        return moved

    async def events(self) -> AsyncIterator[ChangeEvent]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call(lambda: pubsub.subscribe(self.channel))
            while True:
                message = await self._call(lambda: pubsub.get_message(timeout=1.0))
                if message is None or message.get("type") != "message":
                    continue
                body = json.loads(message["data"])
                if "tenant" in body:  # not an event of the pre-namespace layout
                    ref = TaskRef(body["tenant"], body["task"])
                    yield ChangeEvent(ref, body["version"], body.get("candidate", 0))
        finally:
            await pubsub.aclose()

    def _usage_key(self, tenant: str, hour: int) -> str:
        return f"{self.prefix}:usage:{storage_key(tenant)}:{hour}"

    async def add_usage(self, records: Sequence[UsageRecord]) -> None:
        async def add() -> None:
            pipe = self._redis.pipeline(transaction=True)  # all of one flush, or none
            for r in records:
                key = self._usage_key(r.tenant, r.hour)
                for name in ("requests", "rows", "tokens"):
                    pipe.hincrby(key, f"{r.task}|{name}", getattr(r, name))
                pipe.expireat(key, (r.hour + 1) * HOUR_S + 86400 * self.usage_retention_days)
            await pipe.execute()

        await self._call(add)

    async def usage(self, tenant: str, first_hour: int, last_hour: int) -> builtins.list[UsageRecord]:
        hours = list(range(first_hour, last_hour + 1))

        async def read() -> builtins.list[dict[bytes, bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            for hour in hours:
                pipe.hgetall(self._usage_key(tenant, hour))
            result: builtins.list[dict[bytes, bytes]] = await pipe.execute()
            return result

        records = []
        for hour, fields in zip(hours, await self._call(read), strict=True):
            counts: dict[str, dict[str, int]] = {}
            for field, value in fields.items():
                task, name = field.decode().rsplit("|", 1)
                counts.setdefault(task, {})[name] = int(value)
            records += [
                UsageRecord(tenant, task, hour, c.get("requests", 0), c.get("rows", 0), c.get("tokens", 0))
                for task, c in counts.items()
            ]
        return sum_usage(records)

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def close(self) -> None:
        await self._redis.aclose()


async def _collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


def _text(value: bytes | str) -> str:
    """A key or member as text (the connection returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value
