"""The Redis registry: shared by every replica.

Keys, with ``k`` the hex of the task id (ids never appear raw in keys) and ``p`` the prefix::

    p:task:k:v:<n>     bytes of version n (immutable; the oldest beyond keep_versions are deleted)
    p:task:k:counter   last version number issued (survives deletes, so numbers are never reused)
    p:task:k:current   VersionInfo JSON of the current version
    p:tasks            sorted set of task ids (listing in id order)
    p:events           pub/sub channel: {"task": ..., "version": n | null}

A put or delete is one MULTI/EXEC transaction under WATCH of the task's current and counter
keys (redis-py's transaction helper): if another client changed them in between, the
transaction is retried, so compare-and-set
(If-Match) and the owner check are exact. The event is published inside the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from service.errors import RegistryUnavailableError, TaskNotFoundError
from service.registry.base import ChangeEvent, Registry, VersionInfo, check_if_match, next_version
from service.tasks import storage_key

T = TypeVar("T")


class RedisRegistry(Registry):
    def __init__(self, url: str, prefix: str = "spartan", keep_versions: int = 3) -> None:
        self.url = url
        self.prefix = prefix
        self.keep_versions = keep_versions
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=10
        )
        self.channel = f"{prefix}:events"

    def _key(self, task: str, *parts: str) -> str:
        return ":".join((self.prefix, "task", storage_key(task), *parts))

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
        except RedisError as exc:
            raise RegistryUnavailableError(
                f"the Redis registry is unavailable ({type(exc).__name__})"
            ) from exc

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
        current_key, counter_key = self._key(task, "current"), self._key(task, "counter")

        async def transaction(pipe: Pipeline) -> VersionInfo:
            raw, issued = await pipe.get(current_key), await pipe.get(counter_key)
            current = VersionInfo.from_json(raw) if raw else None
            info = next_version(
                task, current, int(issued or 0), data, sha256, metadata, owner, if_match, any_owner
            )
            pipe.multi()
            pipe.set(self._key(task, "v", str(info.version)), data)
            pipe.set(counter_key, info.version)
            pipe.set(current_key, info.to_json())
            pipe.zadd(f"{self.prefix}:tasks", {task: 0})
            if info.version > self.keep_versions:
                pipe.delete(self._key(task, "v", str(info.version - self.keep_versions)))
            pipe.publish(self.channel, json.dumps({"task": task, "version": info.version}))
            return info

        return await self._transaction(transaction, current_key, counter_key)

    async def current(self, task: str) -> VersionInfo | None:
        raw = await self._call(lambda: self._redis.get(self._key(task, "current")))
        return VersionInfo.from_json(raw) if raw else None

    async def read(self, task: str, version: int) -> bytes:
        data = await self._call(lambda: self._redis.get(self._key(task, "v", str(version))))
        if not isinstance(data, bytes):
            raise TaskNotFoundError(f"task {task!r} has no version {version}")
        return data

    async def list(self, after: str | None = None, limit: int = 100) -> list[VersionInfo]:
        start = f"({after}" if after is not None else "-"
        tasks = await self._call(
            lambda: self._redis.zrangebylex(f"{self.prefix}:tasks", start, "+", start=0, num=limit)
        )
        if not tasks:
            return []
        names = [t.decode() if isinstance(t, bytes) else t for t in tasks]
        raws = await self._call(lambda: self._redis.mget([self._key(t, "current") for t in names]))
        return [VersionInfo.from_json(raw) for raw in raws if raw]

    async def delete(self, task: str, if_match: int | None = None) -> None:
        current_key = self._key(task, "current")

        async def transaction(pipe: Pipeline) -> None:
            raw = await pipe.get(current_key)
            if not raw:
                raise TaskNotFoundError(f"task {task!r} not found")
            current = VersionInfo.from_json(raw)
            check_if_match(task, current, if_match)
            first = max(1, current.version - self.keep_versions + 1)
            pipe.multi()
            pipe.delete(
                current_key, *(self._key(task, "v", str(v)) for v in range(first, current.version + 1))
            )
            pipe.zrem(f"{self.prefix}:tasks", task)
            pipe.publish(self.channel, json.dumps({"task": task, "version": None}))

        await self._transaction(transaction, current_key)

    async def current_versions(self) -> dict[str, int]:
        versions: dict[str, int] = {}
        after: str | None = None
        while page := await self.list(after, 500):
            versions.update((info.task, info.version) for info in page)
            after = page[-1].task
        return versions

    async def events(self) -> AsyncIterator[ChangeEvent]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call(lambda: pubsub.subscribe(self.channel))
            while True:
                message = await self._call(lambda: pubsub.get_message(timeout=1.0))
                if message is None or message.get("type") != "message":
                    continue
                body = json.loads(message["data"])
                yield ChangeEvent(body["task"], body["version"])
        finally:
            await pubsub.aclose()

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    async def close(self) -> None:
        await self._redis.aclose()
