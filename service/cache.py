"""The memory cache: loaded, validated memories keyed by (tenant/task, version), bounded in bytes.

* LRU over resident bytes (the packed fp32 tensors), not over entry counts;
* pinned tasks are never evicted (they still count towards the budget);
* single-flight: concurrent misses on one key wait for the same load, so N first requests for a
  task cause exactly one registry read;
* eviction drops the cache's reference; tensors are freed once no running batch holds them, so
  a request that already has its memory finishes with it (hot swap never tears a request);
* statistics (hits, misses, evictions, loads, load failures, load seconds and their histogram,
  resident bytes) for the metrics endpoint.

The cache is used from the event loop only; it needs no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from memories.memfile import MemoryMetadata
from memories.model import PackedMemory
from service.tasks import TaskRef

Key = tuple[TaskRef, int]


@dataclass(frozen=True, eq=False)
class LoadedMemory:
    """A validated memory of one (task, version), ready for the engine."""

    ref: TaskRef
    version: int
    metadata: MemoryMetadata
    packed: PackedMemory
    nbytes: int

    @property
    def key(self) -> Key:
        return (self.ref, self.version)


Loader = Callable[[TaskRef, int], Awaitable[LoadedMemory]]


LOAD_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the load-duration histogram."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0
    load_failures: int = 0
    load_seconds: float = 0.0
    load_histogram: list[int] = field(default_factory=lambda: [0] * len(LOAD_BUCKETS))  # loads <= each bound

    def observe_load(self, seconds: float) -> None:
        self.loads += 1
        self.load_seconds += seconds
        for i, bound in enumerate(LOAD_BUCKETS):
            if seconds <= bound:
                self.load_histogram[i] += 1


class MemoryCache:
    def __init__(self, capacity_bytes: int, loader: Loader, pinned: Iterable[TaskRef] = ()) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.pinned = frozenset(pinned)
        self.stats = CacheStats()
        self._loader = loader
        self._entries: OrderedDict[Key, LoadedMemory] = OrderedDict()
        self._inflight: dict[Key, asyncio.Future[LoadedMemory]] = {}
        self._resident = 0

    @property
    def resident_bytes(self) -> int:
        return self._resident

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    async def get(self, ref: TaskRef, version: int) -> LoadedMemory:
        """The memory of (ref, version), loading it once if it is not resident."""
        key = (ref, version)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry
        self.stats.misses += 1
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[LoadedMemory] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        started = time.perf_counter()
        try:
            entry = await self._loader(ref, version)
        except BaseException as exc:
            self.stats.load_failures += 1
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            del self._inflight[key]
        self.stats.observe_load(time.perf_counter() - started)
        self._insert(key, entry)
        future.set_result(entry)
        return entry

    def prime(self, entry: LoadedMemory) -> None:
        """Insert a memory loaded elsewhere (e.g. just uploaded), so its first request is a hit."""
        if entry.key not in self._entries:
            self._insert(entry.key, entry)

    def _insert(self, key: Key, entry: LoadedMemory) -> None:
        self._entries[key] = entry
        self._resident += entry.nbytes
        for old in [k for k in self._entries if k[0] == key[0] and k[1] < key[1]]:
            self._drop(old)  # an older version of the task is never needed for new requests
        for victim in [k for k in self._entries if k != key and k[0] not in self.pinned]:
            if self._resident <= self.capacity_bytes:
                break
            self._drop(victim)
            self.stats.evictions += 1

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key)
        self._resident -= entry.nbytes

    def discard(self, ref: TaskRef) -> None:
        """Forget every version of a task (deleted, or replaced on another replica)."""
        for key in [k for k in self._entries if k[0] == ref]:
            self._drop(key)

    def resident(self) -> list[Key]:
        """Keys from least to most recently used."""
        return list(self._entries)
