"""The runtime without HTTP: single-flight registry reads, catalog sync between replicas, unknown ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from memories.backbone import Backbone
from service.engine import Engine
from service.errors import TaskNotFoundError
from service.predictions import TextInput
from service.registry.base import VersionInfo
from service.registry.files import FileRegistry
from service.runtime import Runtime
from service.settings import ServiceSettings
from service.tasks import TaskRef
from service.tenancy import Tenancy
from tests.conftest import make_memfile

T = TaskRef("acme", "t")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingFileRegistry(FileRegistry):
    """The real file registry, counting version reads and lookups of current versions."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, poll_interval=0.05)
        self.reads = 0
        self.lookups = 0

    async def read(self, ref: TaskRef, version: int) -> bytes:
        self.reads += 1
        return await super().read(ref, version)

    async def current(self, ref: TaskRef) -> VersionInfo | None:
        self.lookups += 1
        return await super().current(ref)


async def _runtime(backbone: Backbone, registry: FileRegistry) -> Runtime:
    settings = ServiceSettings(backbone=backbone.name, registry_dir=registry.root)
    runtime = Runtime(settings, backbone, registry, Engine(backbone, threads=1), Tenancy([], None))
    await runtime.start()
    return runtime


@pytest.fixture
async def pair(
    roberta_tiny: Backbone, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, Runtime, CountingFileRegistry]]:
    counting = CountingFileRegistry(tmp_path)
    first = await _runtime(roberta_tiny, FileRegistry(tmp_path, poll_interval=0.05))
    second = await _runtime(roberta_tiny, counting)
    yield first, second, counting
    await first.stop()
    await second.stop()


async def _eventually(check: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.anyio
async def test_concurrent_first_requests_read_the_registry_once(
    pair: tuple[Runtime, Runtime, CountingFileRegistry], roberta_tiny: Backbone
) -> None:
    writer, reader, counting = pair
    await writer.upload(T, make_memfile(roberta_tiny).to_bytes(), None)
    await _eventually(lambda: T in reader.catalog)
    memories = await asyncio.gather(*(reader.memory(T) for _ in range(20)))
    assert counting.reads == 1
    assert all(m is memories[0] for m in memories)
    assert (reader.cache.stats.loads, reader.cache.stats.misses) == (1, 20)


@pytest.mark.anyio
async def test_replicas_follow_each_others_writes_and_deletes(
    pair: tuple[Runtime, Runtime, CountingFileRegistry], roberta_tiny: Backbone
) -> None:
    writer, reader, _ = pair
    await writer.upload(T, make_memfile(roberta_tiny, seed=1).to_bytes(), None)
    await _eventually(lambda: T in reader.catalog)
    assert (await reader.memory(T)).version == 1
    await writer.upload(T, make_memfile(roberta_tiny, seed=2).to_bytes(), None)
    await _eventually(lambda: reader.catalog[T].version == 2)
    assert (await reader.memory(T)).version == 2
    assert reader.cache.resident() == [(T, 2)], "the old version left the cache"
    await writer.delete(T, None)
    await _eventually(lambda: T not in reader.catalog)
    assert len(reader.cache) == 0


@pytest.mark.anyio
async def test_unknown_ids_skip_the_registry_until_created_on_another_replica(
    pair: tuple[Runtime, Runtime, CountingFileRegistry], roberta_tiny: Backbone
) -> None:
    writer, reader, counting = pair
    counting.lookups = 0
    for _ in range(50):
        with pytest.raises(TaskNotFoundError):
            await reader.memory(T)
    assert counting.lookups == 1, "one registry lookup, then the negative cache answers"
    assert reader.snapshot().unknown_hits == 49
    assert reader.snapshot().unknown_ids == 1
    await writer.upload(T, make_memfile(roberta_tiny).to_bytes(), None)
    await _eventually(lambda: T not in reader.unknown)
    assert (await reader.memory(T)).version == 1, "the create on the other replica forgot the miss"


@pytest.mark.anyio
async def test_the_negative_cache_is_bounded(roberta_tiny: Backbone, tmp_path: Path) -> None:
    registry = CountingFileRegistry(tmp_path)
    settings = ServiceSettings(backbone=roberta_tiny.name, registry_dir=tmp_path, unknown_cache_size=8)
    runtime = Runtime(settings, roberta_tiny, registry, Engine(roberta_tiny, threads=1), Tenancy([], None))
    await runtime.start()
    for i in range(100):
        with pytest.raises(TaskNotFoundError):
            await runtime.resolve(TaskRef("acme", f"random-{i}"))
    assert len(runtime.unknown) == 8
    await runtime.stop()


@pytest.mark.anyio
async def test_usage_that_cannot_be_written_waits_for_the_next_flush(
    roberta_tiny: Backbone, tmp_path: Path
) -> None:
    registry = CountingFileRegistry(tmp_path / "reg")
    settings = ServiceSettings(backbone=roberta_tiny.name, registry_dir=registry.root)
    runtime = Runtime(settings, roberta_tiny, registry, Engine(roberta_tiny, threads=1), Tenancy([], None))
    await runtime.start()
    await runtime.upload(T, make_memfile(roberta_tiny).to_bytes(), None)
    await runtime.classify(T, [TextInput("one"), TextInput("two")])
    (tmp_path / "reg" / "usage").write_text("not a folder")  # every ledger write now fails
    await runtime.flush_usage()
    (tmp_path / "reg" / "usage").unlink()
    await runtime.classify(T, [TextInput("three")])
    await runtime.flush_usage()
    now = datetime.now(UTC)
    ledger = await runtime.usage_period("acme", now - timedelta(hours=1), now + timedelta(hours=1))
    assert [(t.task, t.requests, t.rows) for t in ledger.totals] == [("t", 2, 3)], "nothing lost"
    await runtime.stop()
