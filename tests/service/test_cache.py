"""The byte-bounded LRU cache: hits, eviction order, pinning, single-flight, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from memories.memfile import MemoryMetadata
from service.cache import LoadedMemory, MemoryCache

MB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _loaded(task: str, version: int, nbytes: int) -> LoadedMemory:
    meta: Any = MemoryMetadata.model_construct()
    packed: Any = None  # the cache never looks inside; it only counts nbytes
    return LoadedMemory(task, version, meta, packed, nbytes)


class CountingLoader:
    def __init__(self, nbytes: int = MB, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.nbytes, self.delay, self.fail = nbytes, delay, fail

    async def __call__(self, task: str, version: int) -> LoadedMemory:
        self.calls.append((task, version))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("registry read failed")
        return _loaded(task, version, self.nbytes)


@pytest.mark.anyio
async def test_hit_after_miss() -> None:
    loader = CountingLoader()
    cache = MemoryCache(10 * MB, loader)
    first = await cache.get("a", 1)
    assert await cache.get("a", 1) is first
    assert (cache.stats.hits, cache.stats.misses, cache.stats.loads, loader.calls) == (1, 1, 1, [("a", 1)])
    assert cache.resident_bytes == MB


@pytest.mark.anyio
async def test_evicts_least_recently_used_by_bytes() -> None:
    cache = MemoryCache(3 * MB, CountingLoader())
    for task in "abc":
        await cache.get(task, 1)
    await cache.get("a", 1)  # a becomes most recent
    await cache.get("d", 1)
    assert cache.resident() == [("c", 1), ("a", 1), ("d", 1)]
    assert cache.stats.evictions == 1
    assert cache.resident_bytes == 3 * MB


@pytest.mark.anyio
async def test_pinned_tasks_are_never_evicted() -> None:
    cache = MemoryCache(2 * MB, CountingLoader(), pinned=["a"])
    await cache.get("a", 1)
    for task in "bcdef":
        await cache.get(task, 1)
    assert ("a", 1) in cache
    assert cache.resident() == [("a", 1), ("f", 1)]


@pytest.mark.anyio
async def test_new_version_replaces_old_one() -> None:
    cache = MemoryCache(10 * MB, CountingLoader())
    await cache.get("a", 1)
    await cache.get("a", 2)
    assert cache.resident() == [("a", 2)]
    assert cache.stats.evictions == 0, "replacing a version is not an eviction"
    cache.prime(_loaded("a", 3, MB))
    assert cache.resident() == [("a", 3)]
    cache.discard("a")
    assert len(cache) == 0
    assert cache.resident_bytes == 0


@pytest.mark.anyio
async def test_concurrent_misses_cause_one_load() -> None:
    loader = CountingLoader(delay=0.05)
    cache = MemoryCache(10 * MB, loader)
    results = await asyncio.gather(*(cache.get("a", 1) for _ in range(20)))
    assert loader.calls == [("a", 1)]
    assert all(r is results[0] for r in results)
    assert cache.stats.loads == 1


@pytest.mark.anyio
async def test_failed_load_reaches_every_waiter_and_is_retried_later() -> None:
    loader = CountingLoader(delay=0.02, fail=True)
    cache = MemoryCache(10 * MB, loader)
    results = await asyncio.gather(*(cache.get("a", 1) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(loader.calls) == 1
    assert cache.stats.load_failures == 1
    loader.fail = False
    await cache.get("a", 1)
    assert len(loader.calls) == 2
    assert len(cache) == 1
